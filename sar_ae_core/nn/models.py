"""Convolutional autoencoder model zoo for SAR image compression, built from one typed config.

All variants share the same skeleton: ``stages`` stride-2 levels down to a ``latent_channels``
bottleneck and a mirrored decoder ending in a sigmoid (inputs are expected normalised to [0, 1]).
Variants differ in what is inserted between the levels:

* ``plain``          - ConvBlocks only.
* ``residual``       - a ResidualBlock after every ConvBlock except the last.
* ``res_cbam``       - ``residual`` plus a CBAM on the latent (encoder end and decoder start).
* ``full_attention`` - ``residual`` plus a CBAM after every level of encoder and decoder,
  including the bottleneck.

* ``gdn``            - the transform of learned image codecs (Ballé et al. 2018): 5x5 stride-2
  convolutions with (simplified) GDN between them in the encoder, 5x5 stride-2 transposed
  convolutions with inverse GDN in the decoder, ``base_channels`` features at every level, a
  linear output clamped to [0, 1] outside training. GDN gaussianises local statistics, which is
  what an entropy-coded latent wants; per pixel it costs a fraction of the BN/LeakyReLU variants.

``decoder="light"`` replaces the decoder of any variant by the light synthesis transform
(LightDecoder): one 3x3 convolution per level at the *low* resolution followed by PixelShuffle(2),
LeakyReLU between levels, linear output clamped to [0, 1] outside training. For the shipped
3-stage, 96-channel models it costs about 2.3 kMAC per output pixel (the mirrored gdn decoder ~9).
``decoder="separable"`` (SeparableDecoder) keeps that first 3x3 convolution at the latent's resolution and spends
the rest of the same budget on depthwise-separable residual blocks at 1/4 and 1/2 resolution, where a light
decoder has one linear 3x3 convolution each: more nonlinear depth and twice the channels where the detail of
high rates is made, for 2.5 kMAC per output pixel.

``self_attention=True`` additionally puts a SAGAN-style SelfAttention2d at the bottleneck
(encoder end and decoder start) of any variant.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sar_ae_core.nn.entropy import FactorizedPrior

__all__ = [
    "VARIANTS",
    "ConvBlock",
    "DeconvBlock",
    "ResidualBlock",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "SelfAttention2d",
    "ModelConfig",
    "Encoder",
    "Decoder",
    "LightDecoder",
    "SeparableDecoder",
    "SarAutoencoder",
    "build_model",
]

from sar_ae_core.nn.model_config import DECODERS, ENTROPY_MODELS, VARIANTS, ModelConfig  # noqa: F401 - torch-free home
_RESIDUAL_VARIANTS = frozenset({"residual", "res_cbam", "full_attention"})
_NEG_SLOPE = 0.2


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ConvBlock(nn.Sequential):
    """Downsampling block: Conv2d 5x5 stride 2 (padding 2) + BatchNorm2d + LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            # bias is redundant right before BatchNorm
            nn.Conv2d(in_channels, out_channels, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(_NEG_SLOPE, inplace=True),
        )


class DeconvBlock(nn.Sequential):
    """Upsampling block by resize-convolution: nearest Upsample(x2) + Conv2d 5x5 + BN + LeakyReLU(0.2).

    A transposed convolution with stride 2 has uneven kernel overlap and produces checkerboard
    artefacts (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016);
    nearest-neighbour upsampling followed by an ordinary convolution avoids them.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(_NEG_SLOPE, inplace=True),
        )


class GDN(nn.Module):
    """Simplified generalized divisive normalization (Johnston et al. 2019, as used by Ballé et al.):
    ``y_i = x_i / (beta_i + sum_j gamma_ij |x_j|)``; ``inverse=True`` multiplies instead (IGDN).

    beta and gamma are kept non-negative by squaring stored parameters (beta bounded below by 1e-6).
    """

    def __init__(self, channels: int, inverse: bool = False, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        self.gamma_sqrt = nn.Parameter(torch.eye(channels).mul_(gamma_init).add_(1e-4).sqrt_())
        #: eval mode sums the channels element-wise in a fixed order (torch's CPU 1x1 convolutions depend on the
        #: thread count); the ONNX export turns it off: each ONNX Runtime session runs on one thread
        self.fixed_order = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) across channels at every position.

        Training uses a 1x1 convolution. Outside training the channel sum is accumulated element-wise in a
        fixed order: CPU 1x1 convolutions are matrix products whose summation order depends on the thread
        count, and the codec must give the same bits with any number of threads."""
        beta = self.beta_sqrt.pow(2).clamp_min(1e-6).to(x.dtype)
        gamma = self.gamma_sqrt.pow(2).to(x.dtype)
        c = gamma.shape[0]
        ax = torch.abs(x)
        if self.training or not self.fixed_order:
            norm = F.conv2d(ax, gamma.reshape(c, c, 1, 1), beta)
        else:
            norm = beta.reshape(1, c, 1, 1).expand_as(x).clone()
            for j in range(c):
                norm.addcmul_(gamma[:, j].reshape(1, c, 1, 1), ax[:, j:j + 1])
        return x * norm if self.inverse else x / norm


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class ResidualBlock(nn.Module):
    """Two 3x3 conv+BN layers with a (1x1-projected when channels differ) identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(_NEG_SLOPE)
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return act(x_shortcut + bn2(conv2(act(bn1(conv1(x))))))."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ChannelAttention(nn.Module):
    """SE/CBAM channel attention: shared MLP on average- and max-pooled descriptors, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        # Narrow latents (e.g. 4 channels) would otherwise get a zero-width hidden layer.
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale every channel of ``x`` by its attention weight in (0, 1)."""
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7x7 conv on the channel-wise [mean, max] maps, sigmoid gate.

    When ``keep_map`` is True the last attention map (B, 1, H, W) is stored (detached) on
    ``last_map`` so it can be visualised; it is off by default to avoid holding memory.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SpatialAttention kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.keep_map = False
        self.last_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale every position of ``x`` by its attention weight in (0, 1)."""
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        attn = torch.sigmoid(self.conv(desc))
        if self.keep_map:
            self.last_map = attn.detach()
        return x * attn


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply channel attention, then spatial attention."""
        return self.spatial(self.channel(x))


class SelfAttention2d(nn.Module):
    """SAGAN-style self-attention (Zhang et al. 2019) over all spatial positions.

    Query/key use ``channels // 8`` (at least 1) channels, value keeps ``channels``. The output is
    ``gamma * attention(x) + x`` with ``gamma`` initialised to 0, so the block starts as the
    identity and the network learns how much non-local context to mix in. Memory grows as
    (H*W)^2, which is why it is only used at the bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        qk = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + gamma * sum_j softmax_j(q_i . k_j) v_j``."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, qk)
        k = self.key(x).flatten(2)  # (B, qk, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N), rows sum to 1
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------


def _level(block: nn.Module, channels: int, residual: bool, cbam: bool) -> nn.Sequential:
    layers = [block]
    if residual:
        layers.append(ResidualBlock(channels))
    if cbam:
        layers.append(CBAM(channels))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Analysis transform: ``stages`` stride-2 levels from the image to the latent."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        residual = config.variant in _RESIDUAL_VARIANTS
        every_level = config.variant == "full_attention"
        chans = config.channels()
        levels: list[nn.Module] = []
        prev = config.in_channels
        for ch in chans:
            if config.variant == "gdn":
                levels.append(nn.Sequential(_down(prev, ch), GDN(ch)))
            else:
                levels.append(_level(ConvBlock(prev, ch), ch, residual, every_level))
            prev = ch
        # The latent is left linear (no norm/activation) so that it can take any value before
        # quantisation and the entropy model sees an unconstrained distribution.
        levels.append(nn.Conv2d(prev, config.latent_channels, 5, stride=2, padding=2))
        self.levels = nn.Sequential(*levels)
        bottleneck: list[nn.Module] = []
        if config.variant in ("res_cbam", "full_attention"):
            bottleneck.append(CBAM(config.latent_channels))
        if config.self_attention:
            bottleneck.append(SelfAttention2d(config.latent_channels))
        self.bottleneck = nn.Sequential(*bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C_in, H, W) to the latent (B, C_lat, H / 2**stages, W / 2**stages)."""
        return self.bottleneck(self.levels(x))


class Decoder(nn.Module):
    """Synthesis transform mirroring the Encoder, ending in a sigmoid so the output is in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        residual = config.variant in _RESIDUAL_VARIANTS
        every_level = config.variant == "full_attention"
        bottleneck: list[nn.Module] = []
        if config.self_attention:
            bottleneck.append(SelfAttention2d(config.latent_channels))
        if config.variant in ("res_cbam", "full_attention"):
            bottleneck.append(CBAM(config.latent_channels))
        self.bottleneck = nn.Sequential(*bottleneck)
        levels: list[nn.Module] = []
        prev = config.latent_channels
        self.clamp_output = config.variant == "gdn"
        if config.variant == "gdn":
            for ch in reversed(config.channels()):
                levels.append(nn.Sequential(_up(prev, ch), GDN(ch, inverse=True)))
                prev = ch
            levels.append(_up(prev, config.in_channels))
            self.levels = nn.Sequential(*levels)
            return
        for ch in reversed(config.channels()):
            levels.append(_level(DeconvBlock(prev, ch), ch, residual, every_level))
            prev = ch
        levels.append(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(prev, config.in_channels, 5, padding=2),
                nn.Sigmoid(),
            )
        )
        self.levels = nn.Sequential(*levels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Map a latent (B, C_lat, h, w) to an image (B, C_in, h * 2**stages, w * 2**stages)."""
        x = self.levels(self.bottleneck(y))
        if self.clamp_output and not self.training:
            x = x.clamp(0.0, 1.0)  # linear output (gdn): the loss sees it unclamped, users get [0, 1]
        return x


class LightDecoder(nn.Module):
    """Light synthesis transform: per level a 3x3 convolution at the low resolution to 4x the next level's
    channels, then PixelShuffle(2) (sub-pixel convolution, Shi et al. 2016); LeakyReLU between levels, a
    linear output clamped to [0, 1] outside training. No transposed convolutions and no work at the full
    resolution except the shuffle, so it costs ~4x less than the mirrored decoder per output pixel."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = config.latent_channels
        widths = config.light_widths()
        for i, ch in enumerate(widths):
            layers += [nn.Conv2d(prev, 4 * ch, 3, padding=1), nn.PixelShuffle(2)]
            if i < len(widths) - 1:
                layers.append(nn.LeakyReLU(_NEG_SLOPE, inplace=True))
            prev = ch
        self.levels = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = self.levels(y)
        return x if self.training else x.clamp(0.0, 1.0)


class _SeparableBlock(nn.Module):
    """x + pointwise(depthwise3x3(x)), LeakyReLU after: a residual block at 9·C + C² MAC per position."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 3, padding=1, groups=ch)
        self.pw = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.pw.weight)  # starts as the identity
        nn.init.zeros_(self.pw.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.pw(self.dw(x)), _NEG_SLOPE)


class SeparableDecoder(nn.Module):
    """The light decoder's first level (a 3x3 convolution at the latent's resolution to 4x a quarter of the latent
    channels, PixelShuffle(2)), then at every further resolution `SEPARABLE_BLOCKS` depthwise-separable residual
    blocks (`_SeparableBlock`) before a depthwise-separable up-step (depthwise 3x3, 1x1 to 4x the next channels,
    PixelShuffle(2)); the last level ends in a full 3x3 convolution to 4 x in_channels and PixelShuffle(2). Linear
    output clamped to [0, 1] outside training. 3 stages, 96 latent channels: 24 channels at 1/4 (one block), 32 at
    1/2 (two blocks), 2 495 MAC per output pixel; receptive radius < 2 latent cells (as the light decoder's)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.separable_widths()
        blocks = config.separable_blocks()
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, 4 * widths[0], 3, padding=1), nn.PixelShuffle(2)]
        for i, ch in enumerate(widths):
            layers.append(nn.LeakyReLU(_NEG_SLOPE))
            layers += [_SeparableBlock(ch) for _ in range(blocks[i])]
            if i + 1 < len(widths):
                layers += [nn.Conv2d(ch, ch, 3, padding=1, groups=ch), nn.Conv2d(ch, 4 * widths[i + 1], 1),
                           nn.PixelShuffle(2)]
            else:
                layers += [nn.Conv2d(ch, 4 * config.in_channels, 3, padding=1), nn.PixelShuffle(2)]
        self.levels = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = self.levels(y)
        return x if self.training else x.clamp(0.0, 1.0)


def _decoder(config: ModelConfig) -> nn.Module:
    if config.decoder == "light":
        return LightDecoder(config)
    if config.decoder == "separable":
        return SeparableDecoder(config)
    return Decoder(config)


# --------------------------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------------------------


class SarAutoencoder(nn.Module):
    """Fully convolutional SAR autoencoder; accepts any H, W divisible by ``2**stages``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.encoder = Encoder(config)
        self.decoder = _decoder(config)
        # Learned factorized prior over the rounded latents (rate term and entropy-coding tables).
        # (or a mean-scale hyperprior: side information predicting a mean and scale per latent element).
        self.entropy: nn.Module | None = None
        if config.entropy_model == "factorized":
            self.entropy = FactorizedPrior(config.latent_channels)
        elif config.entropy_model == "hyperprior":
            from sar_ae_core.nn.hyperprior import MeanScaleHyperprior

            self.entropy = MeanScaleHyperprior(config.latent_channels, size=config.hyper)

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction between image and latent (``2**stages``)."""
        return 2**self.config.stages

    @property
    def nominal_compression_ratio(self) -> float:
        """Ratio of image values to latent values, ``in_channels * 4**stages / latent_channels``."""
        c = self.config
        return c.in_channels * 4**c.stages / c.latent_channels

    def parameter_count(self, trainable_only: bool = False) -> int:
        """Number of parameters (optionally only those with requires_grad)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} input channel(s), got {x.shape[1]}")
        f = self.downsample_factor
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"input height and width must be divisible by 2**stages = {f}, got {h}x{w}; "
                f"pad the tile to {-(-h // f) * f}x{-(-w // f) * f}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C_in, H, W) in [0, 1] -> latent (B, C_lat, H/2**stages, W/2**stages)."""
        self._check_input(x)
        return self.encoder(x)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Latent (B, C_lat, h, w) -> reconstruction (B, C_in, h*2**stages, w*2**stages) in [0, 1]."""
        if y.dim() != 4 or y.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected a (B, {self.config.latent_channels}, h, w) latent, got shape {tuple(y.shape)}"
            )
        return self.decoder(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` through the bottleneck (no quantisation)."""
        return self.decode(self.encode(x))

    def spatial_attention_modules(self) -> dict[str, SpatialAttention]:
        """Qualified name -> SpatialAttention module, in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, SpatialAttention)}

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Spatial attention maps of one forward pass, bilinearly resized to the input size.

        Keys are module names (e.g. ``encoder.bottleneck.0.spatial``), values (B, 1, H, W) in
        [0, 1]. The pass runs in eval mode so BatchNorm statistics are not updated; the previous
        training mode and ``keep_map`` flags are restored. Empty dict for variants without CBAM.
        """
        modules = self.spatial_attention_modules()
        if not modules:
            return {}
        was_training = self.training
        saved = {n: m.keep_map for n, m in modules.items()}
        try:
            self.eval()
            for m in modules.values():
                m.keep_map = True
                m.last_map = None
            self.forward(x)
            size = tuple(x.shape[-2:])
            maps = {}
            for n, m in modules.items():
                assert m.last_map is not None, f"{n} was not run in the forward pass"
                # Bilinear interpolation is a convex combination, so values stay in [0, 1].
                maps[n] = F.interpolate(m.last_map, size=size, mode="bilinear", align_corners=False)
            return maps
        finally:
            for n, m in modules.items():
                m.keep_map = saved[n]
                m.last_map = None
            self.train(was_training)


def build_model(config: ModelConfig | Mapping[str, Any]) -> SarAutoencoder:
    """Build a SarAutoencoder from a ModelConfig or its dict form."""
    if isinstance(config, Mapping):
        config = ModelConfig.from_dict(config)
    elif not isinstance(config, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig or dict, got {type(config).__name__}")
    return SarAutoencoder(config)
