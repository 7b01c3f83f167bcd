"""The architecture of a SAR autoencoder as one typed, validated, JSON-serialisable config (torch-free: the
ONNX Runtime path reads it without torch). The networks it describes are built by `models.py`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

VARIANTS: tuple[str, ...] = ("plain", "residual", "res_cbam", "full_attention", "gdn")
ENTROPY_MODELS: tuple[str, ...] = ("none", "factorized", "hyperprior")
DECODERS: tuple[str, ...] = ("mirror", "light", "separable")
#: sizes of the mean-scale hyperprior: "full" (64 channels, 3x3 head, ~2.2 kMAC/px in the decoder), "light" (32
#: channels, 4x4 up-convolutions, 1x1 head, 0.18 kMAC/px: with the light decoder the whole decoder stays within 2.5
#: kMAC/px) or "context" (h_a as full, h_s as light plus a depthwise 3x3 before the head, 0.18 kMAC/px)
HYPERS: tuple[str, ...] = ("full", "light", "context")
#: variants with global pooling (CBAM) or self-attention: every output pixel depends on the whole window
GLOBAL_VARIANTS = frozenset({"res_cbam", "full_attention"})


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    # bool is an int subclass; True as a channel count is always a mistake
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"ModelConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"ModelConfig.{name} must be in {lo}..{hi}, got {value}")


@dataclass
class ModelConfig:
    """Architecture of a SarAutoencoder; validated on construction, JSON-serialisable."""

    variant: Literal["plain", "residual", "res_cbam", "full_attention", "gdn"] = "res_cbam"
    self_attention: bool = False
    in_channels: int = 1
    base_channels: int = 32
    latent_channels: int = 16
    stages: int = 4
    entropy_model: Literal["none", "factorized", "hyperprior"] = "none"
    decoder: Literal["mirror", "light", "separable"] = "mirror"
    hyper: Literal["full", "light", "context"] = "full"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "ModelConfig":
        """Raise ValueError describing the first invalid field; return self when valid."""
        if self.variant not in VARIANTS:
            raise ValueError(
                f"ModelConfig.variant must be one of {', '.join(map(repr, VARIANTS))}, got {self.variant!r}"
            )
        if not isinstance(self.self_attention, bool):
            raise ValueError(
                f"ModelConfig.self_attention must be a bool, got {type(self.self_attention).__name__} "
                f"{self.self_attention!r}"
            )
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("base_channels", self.base_channels, 1, 512)
        _check_int("latent_channels", self.latent_channels, 1, 256)
        _check_int("stages", self.stages, 1, 6)
        if self.entropy_model not in ENTROPY_MODELS:
            raise ValueError(f"ModelConfig.entropy_model must be one of {', '.join(map(repr, ENTROPY_MODELS))}, "
                             f"got {self.entropy_model!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"ModelConfig.decoder must be one of {', '.join(map(repr, DECODERS))}, "
                             f"got {self.decoder!r}")
        if self.decoder == "separable" and self.stages < 2:
            raise ValueError("ModelConfig.decoder 'separable' needs stages >= 2")
        if self.hyper not in HYPERS:
            raise ValueError(f"ModelConfig.hyper must be one of {', '.join(map(repr, HYPERS))}, got {self.hyper!r}")
        return self

    def light_widths(self) -> list[int]:
        """Feature channels after each PixelShuffle level of the light decoder (low to high resolution,
        the last is the image): a quarter of the latent channels, then 16, then ``in_channels``."""
        widths = [max(8, self.latent_channels // 4)] + [16] * (self.stages - 2)
        return (widths + [self.in_channels])[-self.stages:] if self.stages > 1 else [self.in_channels]

    def separable_widths(self) -> list[int]:
        """Feature channels at each resolution of the separable decoder before the image (low to high): a quarter
        of the latent channels after the first PixelShuffle, then 32 at every further level."""
        if self.stages < 2:
            return []
        return [max(8, self.latent_channels // 4)] + [32] * (self.stages - 2)

    def separable_blocks(self) -> list[int]:
        """Residual blocks at each of `separable_widths`' resolutions: one at the first, two at the others."""
        return [1] + [2] * (self.stages - 2) if self.stages >= 2 else []

    def channels(self) -> list[int]:
        """Feature channels of the encoder levels before the latent: base*2**i capped at base*8
        (``gdn``: base at every level, as in learned image codecs)."""
        if self.variant == "gdn":
            return [self.base_channels] * (self.stages - 1)
        return [min(self.base_channels * 2**i, self.base_channels * 8) for i in range(self.stages - 1)]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields. `hyper` at its default is left out: the configs of every
        model without a smaller hyperprior stay as they were (and readable by releases before the field)."""
        d = dataclasses.asdict(self)
        if d["hyper"] == "full":
            del d["hyper"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build a validated config from a dict; unknown keys raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ModelConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        # bundles written before the field existed omit it
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"ModelConfig got unknown key(s) {unknown}; valid keys are {known}")
        return cls(**dict(data))


def decoder_halo_cells(config: ModelConfig) -> int | None:
    """Latent cells each side that fix every output pixel of the decoder (its receptive radius, rounded up),
    or None when an output pixel depends on the whole window (CBAM's global pooling, self-attention)."""
    if config.variant in GLOBAL_VARIANTS or config.self_attention:
        return None
    if config.decoder == "separable":
        # a 3x3 convolution at the latent's resolution (one cell), then at each further level one 3x3 per residual
        # block and one for the up-step (3 stages: 8 + 4·2 + 2·3 = 22 px, under 3 cells of 8)
        f = 2 ** config.stages
        reach = f + sum((f >> (i + 1)) * (n + 1) for i, n in enumerate(config.separable_blocks()))
        return -(-reach // f)
    if config.decoder == "light" or config.variant in ("gdn", "plain"):
        # one 3x3 or 5x5 (transposed) convolution per level: radius 1 + 1/2 + 1/4 + ... < 2 cells
        return 2
    # residual: two more 3x3 convolutions per level (measured radius 3.6 cells for 4 stages)
    return 4


def encoder_halo_cells(config: ModelConfig) -> int | None:
    """Latent cells of context each side that fix every latent cell of a tile's core, or None when not known to be
    finite (then tiles are encoded from windows with the default halo). gdn: one 5x5 stride-2 convolution per level
    (GDN is per position), receptive radius 2·(2**stages − 1) pixels < 2 cells."""
    if config.variant != "gdn" or config.self_attention:
        return None
    return 2
