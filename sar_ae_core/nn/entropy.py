"""Learned factorized prior over quantized latents (Ballé et al. 2018, "variational image compression with a
scale hyperprior", factorized-prior model) and its deterministic range coding.

Training: latents get additive uniform noise U(−½, ½) and the prior's likelihoods give the rate term.
Coding: latents are rounded to integers; each channel's probability table is computed ONCE from the
trained density (`build_tables`), turned into integer counts (16-bit precision, every symbol ≥ 1, one
escape symbol for values beyond the table) and stored with the model bundle. Encoder and decoder only
ever read those integers, so they produce identical symbols on any machine, device or thread count.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sar_ae_core.coding.tables import (LIKELIHOOD_BOUND, TABLE_PRECISION, EntropyTables, FactorizedRangeCodec,  # noqa: F401
                     _channel_of, _integer_counts, decode_grouped, encode_grouped, join_payload, split_payload)


class FactorizedPrior(nn.Module):
    """Per-channel learned density: a monotonic cumulative MLP (filters 3-3-3) per latent channel."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = int(channels)
        dims = (1,) + tuple(filters) + (1,)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of the cumulative distribution at x, shape (C, 1, N) → (C, 1, N); increasing in x."""
        logits = x
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            logits = torch.matmul(F.softplus(m), logits) + b
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """P(round(y)) under the density for a latent tensor (B, C, H, W) (mass of [y−½, y+½])."""
        b, c, h, w = y.shape
        x = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cumulative(x - 0.5)
        upper = self.logits_cumulative(x + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the flatter tail for precision
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = p.clamp_min(LIKELIHOOD_BOUND)
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    def forward(self, y: torch.Tensor, rounded_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy or rounded latents, their likelihoods): noise while training, rounding in eval mode.
        `rounded_output` (training): the likelihoods of the noisy latents, but the latents returned rounded
        (straight-through gradient), as the codec's decoder will get them."""
        if self.training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            if rounded_output:
                return y + (torch.round(y) - y).detach(), self.likelihood(y_hat)
        else:
            y_hat = torch.round(y)
        return y_hat, self.likelihood(y_hat)

    @torch.no_grad()
    def build_tables(self, tail_mass: float = 1e-6, precision: int = TABLE_PRECISION) -> "EntropyTables":
        """Integer probability tables per channel (computed once, in float64 on the CPU, then frozen)."""
        module = self.to("cpu").double()
        try:
            lo, hi = [], []
            target = math.log(2 / tail_mass - 1)
            for c in range(self.channels):
                lo.append(math.floor(_solve(module, c, -target)))
                hi.append(math.ceil(_solve(module, c, target)))
            counts = []
            for c in range(self.channels):
                k = torch.arange(lo[c], hi[c] + 1, dtype=torch.float64)
                up = module._channel_logits(c, k + 0.5)
                down = module._channel_logits(c, k - 0.5)
                sign = -torch.sign(up + down)
                pmf = torch.abs(torch.sigmoid(sign * up) - torch.sigmoid(sign * down)).numpy()
                escape = max(1.0 - pmf.sum(), 0.0)
                counts.append(_integer_counts(np.append(pmf, escape), precision))
        finally:
            self.float()
        return EntropyTables(offsets=np.asarray(lo, np.int32), counts=counts, precision=precision)

    def _channel_logits(self, c: int, x: torch.Tensor) -> torch.Tensor:
        logits = x.reshape(1, -1).to(self.matrices[0].dtype)
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            logits = torch.matmul(F.softplus(m[c]), logits) + b[c]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i][c]) * torch.tanh(logits)
        return logits.reshape(-1)


def _solve(module: FactorizedPrior, c: int, target: float) -> float:
    """x where the channel's cumulative logit equals `target` (bisection; the function is increasing)."""
    a, b = -1.0, 1.0
    while module._channel_logits(c, torch.tensor([a], dtype=torch.float64)).item() > target and a > -1e6:
        a *= 2
    while module._channel_logits(c, torch.tensor([b], dtype=torch.float64)).item() < target and b < 1e6:
        b *= 2
    for _ in range(60):
        m = 0.5 * (a + b)
        if module._channel_logits(c, torch.tensor([m], dtype=torch.float64)).item() < target:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


def rate_bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Total bits −Σ log2 p of a likelihood tensor (the rate term of rate-distortion training)."""
    return -torch.log2(likelihoods).sum()
