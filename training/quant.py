"""Quantisation-aware training of the latent, matched to the codec's quantiser.

The codec quantises each latent channel of a tile with its own min/max: ``levels = 2**bits - 1``,
``step = (max - min) / levels``, ``q = round((y - min) / step)``, ``y_hat = min + q * step``.
During training the patch plays the role of the tile:

* ``uniform``: ``y + U(-step/2, step/2)`` - additive noise of one quantisation step (Ballé et al. 2017),
  a differentiable proxy of the rounding error;
* ``ste``: the real rounding in the forward pass, identity gradient in the backward pass
  (straight-through estimator);
* ``none``: the latent is left as is.

The step is computed from the current latent but detached: the network cannot shrink the noise by
changing the range through the gradient of the step itself.
"""

from __future__ import annotations

import math

import torch

from .config import LATENT_NOISE


def latent_range(y: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel minimum and quantisation step of a (B, C, h, w) latent (both detached)."""
    y = y.detach()
    lo = y.amin(dim=(-2, -1), keepdim=True)
    hi = y.amax(dim=(-2, -1), keepdim=True)
    return lo, (hi - lo) / float(2 ** bits - 1)


def quantize_latent(y: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise and dequantise like the codec (per-channel min/max, 2**bits - 1 levels); float32 result."""
    y = y.float()
    lo, step = latent_range(y, bits)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.clamp(torch.round((y - lo) / safe), 0, 2 ** bits - 1)
    return torch.where(step > 0, lo + q * step, y)


def apply_latent_noise(y: torch.Tensor, mode: str, bits: int) -> torch.Tensor:
    """Training-time latent perturbation ('none', 'uniform' or 'ste'), see the module docstring."""
    if mode == "none":
        return y
    if mode == "uniform":
        _, step = latent_range(y, bits)
        return y + (torch.rand_like(y) - 0.5) * step.to(y.dtype)
    if mode == "ste":
        return y + (quantize_latent(y, bits).to(y.dtype) - y).detach()
    raise ValueError(f"latent noise '{mode}' unknown (choose from {', '.join(LATENT_NOISE)})")


class QuantAwareAutoencoder(torch.nn.Module):
    """Wraps a SarAutoencoder so one forward (the one DDP sees) is encode -> latent noise -> decode.

    Returns ``(reconstruction, likelihoods)``. Models with a learned entropy model
    (``entropy_model='factorized'``) go through their prior instead of the min/max quantiser: noise
    U(-1/2, 1/2) while training, rounding in eval mode, and the likelihoods give the rate term (computed
    in float32 even under autocast). Other models return ``None`` likelihoods.
    """

    def __init__(self, autoencoder: torch.nn.Module, noise: str = "uniform", bits: int = 8,
                 decoder_only: bool = False, encoder_only: bool = False,
                 decoder_gains: "tuple[float, float] | None" = None, rounded_decoder: bool = False):
        super().__init__()
        self.ae = autoencoder
        # decoder_only: while training, the latents are quantized as the codec does at a quantization gain g drawn
        # per patch log-uniformly from this range (symbols rint(m + g·(y − m)) around each channel's mode m,
        # dequantized m + (q − m)/g): the decoder learns the coarser and finer latents rate control gives it
        self.decoder_gains = decoder_gains
        if decoder_gains is not None:
            prior = getattr(autoencoder, "entropy", None)
            if prior is None or not hasattr(prior, "build_tables"):
                raise ValueError("decoder gains need a factorized entropy model")
            import copy

            modes = copy.deepcopy(prior).cpu().build_tables().modes()  # (build_tables works on the CPU)
            self.register_buffer("_modes", torch.as_tensor(modes, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
        self.noise = noise
        self.bits = bits
        # joint training with a prior: the decoder gets the latents rounded as the codec rounds them (the prior's
        # `rounded_output`), straight-through, while the rate is estimated on the noisy ones ("mixed" quantization)
        self.rounded_decoder = rounded_decoder
        self.decoder_only = decoder_only
        self.encoder_only = encoder_only

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        prior = getattr(self.ae, "entropy", None)
        if self.decoder_only and prior is not None:
            # frozen encoder and prior (eval mode: no noise, rounding, as the codec does): the decoder learns on
            # exactly the latents it will be given; the likelihoods report the (constant) rate
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                self.ae.encoder.eval()
                prior.eval()
                y = self.ae.encode(x).float()
                y_hat, likelihoods = prior(y)
                if self.decoder_gains is not None and self.training:
                    lo, hi = self.decoder_gains
                    g = torch.exp(torch.empty(y.shape[0], 1, 1, 1, device=y.device).uniform_(
                        math.log(lo), math.log(hi)))
                    m = self._modes.to(y.device)
                    y_hat = m + (torch.round(m + g * (y - m)) - m) / g
            return self.ae.decode(y_hat.to(x.dtype)), likelihoods.detach()
        y = self.ae.encode(x)
        if self.encoder_only and prior is not None:
            # frozen decoder and prior: the rate from the prior's noisy proxy (as in joint training), the decoder fed
            # the rounded latents it was trained on and the codec gives it (straight-through gradient)
            with torch.autocast(x.device.type, enabled=False):
                _, likelihoods = prior(y.float())
            y_q = y + (torch.round(y) - y).detach()
            return self.ae.decode(y_q), likelihoods
        if prior is not None:
            with torch.autocast(x.device.type, enabled=False):
                if self.rounded_decoder:
                    y_hat, likelihoods = prior(y.float(), rounded_output=True)
                else:
                    y_hat, likelihoods = prior(y.float())
            return self.ae.decode(y_hat.to(y.dtype)), likelihoods
        if self.training:
            y = apply_latent_noise(y, self.noise, self.bits)
        return self.ae.decode(y), None
