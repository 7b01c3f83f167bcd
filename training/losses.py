"""Reconstruction losses for training the SAR autoencoder, with optional validity masks.

All losses take ``(x_hat, x)`` as (B, C, H, W) tensors in [0, 1] (``data_range=1.0``) and return a
scalar tensor. A validity ``mask`` (1 = valid, 0 = nodata / border padding; shape (B, 1, H, W) or
(B, C, H, W), bool or float) makes the loss ignore invalid pixels:

* MSE and gradient terms average over valid pixels only;
* SSIM terms need whole windows, so they are computed on ``x_hat`` with its invalid pixels
  replaced by ``x``: those pixels then match exactly and whatever the model writes there has no
  influence on the loss (nor gradient).

Window sizes: SSIM uses the standard 11x11 Gaussian window (sigma 1.5), shrunk to the largest odd
size that fits the smaller image side. ``pytorch_msssim.ms_ssim`` needs the smaller side to exceed
``(win_size - 1) * 16`` for its 5 scales, so MS-SSIM uses the largest odd window <= 11 satisfying
that (e.g. 11 from 161 px, 7 at 128 px, 3 at 64 px); below 33 px even a 3x3 window does not fit
5 scales and MS-SSIM falls back to single-scale SSIM (and emits no error).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim
from torch import nn

__all__ = [
    "mse_loss",
    "ssim_loss",
    "ms_ssim_loss",
    "gradient_loss",
    "sobel_magnitude",
    "ssim_window_size",
    "ms_ssim_window_size",
    "apply_mask",
    "LossConfig",
    "CombinedLoss",
]

_MS_SSIM_SCALES = 5
_MAX_WIN = 11


def _check_pair(x_hat: torch.Tensor, x: torch.Tensor) -> None:
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got shape {tuple(x.shape)}")


def _valid(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Boolean validity mask broadcast to ``like``'s shape."""
    if mask.dim() != 4 or mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} is not compatible with {tuple(like.shape)}")
    if mask.shape[1] not in (1, like.shape[1]):
        raise ValueError(f"mask must have 1 or {like.shape[1]} channels, got {mask.shape[1]}")
    valid = mask if mask.dtype == torch.bool else mask > 0.5
    return valid.to(like.device).expand_as(like)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    valid = _valid(mask, values)
    # An all-invalid batch contributes 0 rather than NaN (0/0).
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)


def apply_mask(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return ``x_hat`` with pixels where ``mask`` is 0 replaced by the target ``x``."""
    if mask is None:
        return x_hat
    return torch.where(_valid(mask, x), x_hat, x)


def mse_loss(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, averaged over valid pixels when a mask is given."""
    _check_pair(x_hat, x)
    return _masked_mean((x_hat - x).square(), mask)


def ssim_window_size(height: int, width: int, max_win: int = _MAX_WIN) -> int:
    """Largest odd SSIM window <= max_win that fits in an image of the given size (at least 1)."""
    side = min(height, width, max_win)
    return max(1, side if side % 2 else side - 1)


def ms_ssim_window_size(height: int, width: int, max_win: int = _MAX_WIN) -> int | None:
    """Largest odd window <= max_win for which 5-scale MS-SSIM fits, or None if even 3 is too big."""
    side = min(height, width)
    factor = 2 ** (_MS_SSIM_SCALES - 1)
    for win in range(max_win if max_win % 2 else max_win - 1, 2, -2):
        if side > (win - 1) * factor:
            return win
    return None


def ssim_loss(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - SSIM (data_range 1, Gaussian window up to 11x11); masked pixels of x_hat are set to x."""
    _check_pair(x_hat, x)
    win = ssim_window_size(*x.shape[-2:])
    return 1.0 - _ssim(apply_mask(x_hat, x, mask), x, data_range=1.0, size_average=True, win_size=win)


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - MS-SSIM (5 scales, window shrunk to fit); falls back to 1 - SSIM below 33 px."""
    _check_pair(x_hat, x)
    win = ms_ssim_window_size(*x.shape[-2:])
    if win is None:
        return ssim_loss(x_hat, x, mask)
    return 1.0 - _ms_ssim(apply_mask(x_hat, x, mask), x, data_range=1.0, size_average=True, win_size=win)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel_magnitude(img: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude (same size as ``img``, replicate-padded borders)."""
    c = img.shape[1]
    kx = _SOBEL_X.to(img.device, img.dtype)
    weight = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), weight, groups=c)
    gx, gy = g[:, 0::2], g[:, 1::2]
    # eps keeps the sqrt differentiable in flat regions (d sqrt/du is infinite at 0).
    return torch.sqrt(gx.square() + gy.square() + eps)


def gradient_loss(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 distance between Sobel gradient magnitudes, averaged over valid pixels.

    Invalid pixels of ``x_hat`` are replaced by ``x`` first, so gradients of valid pixels next to
    a nodata edge do not see the model's output in the nodata area.
    """
    _check_pair(x_hat, x)
    diff = (sobel_magnitude(apply_mask(x_hat, x, mask)) - sobel_magnitude(x)).abs()
    return _masked_mean(diff, mask)


@dataclass
class LossConfig:
    """Weights of the combined loss ``mse_w * MSE + ssim_w * (1 - [MS-]SSIM) + grad_w * grad``."""

    mse_weight: float = 0.5
    ssim_weight: float = 0.5
    structural: Literal["ssim", "ms_ssim"] = "ssim"
    gradient_weight: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "LossConfig":
        """Raise ValueError for negative/non-numeric weights, unknown structural term or all-zero weights."""
        for name in ("mse_weight", "ssim_weight", "gradient_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"LossConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.structural not in ("ssim", "ms_ssim"):
            raise ValueError(f"LossConfig.structural must be 'ssim' or 'ms_ssim', got {self.structural!r}")
        if self.mse_weight == 0 and self.ssim_weight == 0 and self.gradient_weight == 0:
            raise ValueError("LossConfig: at least one of mse_weight, ssim_weight, gradient_weight must be > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LossConfig":
        """Build a validated config from a dict; unknown keys raise ValueError."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"LossConfig got unknown key(s) {unknown}; valid keys are {known}")
        return cls(**dict(data))


class CombinedLoss(nn.Module):
    """Weighted sum of MSE, a structural term (1-SSIM or 1-MS-SSIM) and an optional gradient term."""

    def __init__(self, config: LossConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = LossConfig()
        elif isinstance(config, Mapping):
            config = LossConfig.from_dict(config)
        self.config = config.validate()

    @property
    def weights(self) -> dict[str, float]:
        """Component name -> weight, with the same keys as the components returned by forward."""
        c = self.config
        w = {"mse": float(c.mse_weight), c.structural: float(c.ssim_weight)}
        if c.gradient_weight > 0:
            w["gradient"] = float(c.gradient_weight)
        return w

    def forward(
        self, x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(total, components)``; components are the unweighted terms as floats.

        ``total == sum(weights[k] * components[k])``. MSE and the structural term are always
        reported (computed without autograd when their weight is 0) so runs stay comparable.
        """
        structural = ssim_loss if self.config.structural == "ssim" else ms_ssim_loss
        terms = {"mse": mse_loss, self.config.structural: structural}
        if self.config.gradient_weight > 0:
            terms["gradient"] = gradient_loss
        total = x_hat.new_zeros(())
        components: dict[str, float] = {}
        for name, weight in self.weights.items():
            if weight > 0:
                value = terms[name](x_hat, x, mask)
                total = total + weight * value
            else:
                with torch.no_grad():
                    value = terms[name](x_hat, x, mask)
            components[name] = float(value.detach())
        return total, components
