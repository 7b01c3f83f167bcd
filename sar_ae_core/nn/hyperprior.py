"""Mean-scale hyperprior (Ballé et al. 2018; Minnen et al. 2018 without the autoregressive context) and
its deterministic range coding, codec id 'hyperprior-range'.

The latent y gets side information z = h_a(y), coded with a factorized prior (`entropy.FactorizedPrior`).
h_s(ẑ) predicts a mean μ and a scale σ for every latent element; y is coded as the integer
round(y − μ) under a Gaussian of scale σ convolved with U(−½, ½) and decoded as ŷ = symbol + μ.
This lets the rate adapt to the local content (water, fields, towns) that one density per channel cannot.

Determinism (the classic failure of learned codecs): the encoder and the decoder must compute the same
μ and σ. Both run h_s in float64 on the CPU on the same integer ẑ, and σ is only used through the index
of its smallest tabulated scale ≥ σ (64 log-spaced scales). The coding tables themselves are integers
(16-bit, every symbol ≥ 1, one escape symbol for the tails) built once from the Gaussian at export and
stored in the model bundle. Float64 results differ between thread counts by at most a few ulps (~1e-16
relative), so a symbol or index would change only if a value fell within 1e-16 of a rounding boundary.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sar_ae_core.nn.entropy import (LIKELIHOOD_BOUND, TABLE_PRECISION, EntropyTables, FactorizedPrior, _channel_of, _integer_counts,
                      decode_grouped, encode_grouped, join_payload, split_payload)
from sar_ae_core.nn.model_config import HYPERS

SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 64.0, 64
TAIL_SIGMAS = 7.0
HYPER_DOWN = 4  # h_a halves the resolution twice


def scale_table() -> np.ndarray:
    """The tabulated scales (float64, identical on every machine: exp/log of exact constants)."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def _gaussian_mass(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(round-to-nearest-integer bin of y) for a zero-mean Gaussian of `scale` (upper tail by symmetry)."""
    v = torch.abs(y)
    upper = 0.5 * torch.erfc((v - 0.5) / (scale * math.sqrt(2)))  # P(X > |y| − ½)
    lower = 0.5 * torch.erfc((v + 0.5) / (scale * math.sqrt(2)))  # P(X > |y| + ½)
    return upper - lower


class MeanScaleHyperprior(nn.Module):
    """Hyper-analysis h_a, hyper-synthesis h_s (→ mean and scale per latent element) and a factorized prior
    over the side information z."""

    def __init__(self, latent_channels: int, hyper_channels: int = 64, z_channels: int = 32, size: str = "full"):
        super().__init__()
        # size (ModelConfig.hyper) — the decoder runs h_s, so its MACs per image pixel count (latents at 1/8):
        #   full:    64 channels, 5x5 up-convolutions, 3x3 head: ~2.2 kMAC/px (the head alone 64·192·9/64)
        #   light:   32 channels in h_a and h_s, 4x4 up-convolutions, 1x1 head: 176 MAC/px
        #   context: h_a as full; h_s as light plus a depthwise 3x3 at the latent's resolution before the 1x1 head
        #            (spatial context where the head is applied): 180.5 MAC/px
        if size not in HYPERS:
            raise ValueError(f"hyperprior size must be one of {', '.join(map(repr, HYPERS))}, got {size!r}")
        m, n = int(latent_channels), int(hyper_channels)
        s = n if size == "full" else 32
        na = 32 if size == "light" else n
        self.latent_channels, self.z_channels = m, int(z_channels)
        self.h_a = nn.Sequential(
            nn.Conv2d(m, na, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(na, na, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv2d(na, self.z_channels, 5, stride=2, padding=2))
        # each transposed convolution exactly doubles the resolution (5x5 with output padding, or 4x4)
        up = dict(kernel_size=5, stride=2, padding=2, output_padding=1) if size == "full" else \
            dict(kernel_size=4, stride=2, padding=1)
        layers = [nn.ConvTranspose2d(self.z_channels, s, **up), nn.LeakyReLU(0.2),
                  nn.ConvTranspose2d(s, s, **up), nn.LeakyReLU(0.2)]  # (created in this order: the seeded init)
        if size == "context":
            layers += [nn.Conv2d(s, s, 3, padding=1, groups=s), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(s, 2 * m, 3, padding=1) if size == "full" else nn.Conv2d(s, 2 * m, 1))
        self.h_s = nn.Sequential(*layers)
        self.z_prior = FactorizedPrior(self.z_channels)

    @staticmethod
    def pad(y: torch.Tensor) -> torch.Tensor:
        """Replicate-pad y on the bottom/right to a multiple of HYPER_DOWN (h_a's downsampling)."""
        h, w = y.shape[-2:]
        ph, pw = -h % HYPER_DOWN, -w % HYPER_DOWN
        return F.pad(y, (0, pw, 0, ph), mode="replicate") if ph or pw else y

    def mean_scale(self, z_hat: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and σ of the latent elements, cropped to the latent's (h, w); σ is kept inside the tabulated
        range [SCALE_MIN, SCALE_MAX] so that the rate term and the coder use the same densities."""
        p = self.h_s(z_hat)[..., :shape[0], :shape[1]]
        mean, s = p.chunk(2, dim=1)
        return mean, F.softplus(s).clamp(SCALE_MIN, SCALE_MAX)

    def forward(self, y: torch.Tensor, rounded_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy or quantized latents, flat likelihoods of y and z): noise in training, rounding in eval.
        `rounded_output` (training): the likelihoods of the noisy latents, the latents returned rounded around the
        predicted mean as the codec rounds them (straight-through gradient)."""
        z = self.h_a(self.pad(y))
        # rounded_output: h_s sees ẑ rounded too (straight-through), as the codec gives it
        z_hat, z_lik = self.z_prior(z, rounded_output=rounded_output and self.training)
        mean, scale = self.mean_scale(z_hat, tuple(y.shape[-2:]))
        if self.training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_hat = torch.round(y - mean) + mean
        y_lik = _gaussian_mass(y_hat - mean, scale).clamp_min(LIKELIHOOD_BOUND)
        if self.training and rounded_output:
            y_hat = y + (torch.round(y - mean) + mean - y).detach()
        return y_hat, torch.cat([y_lik.reshape(-1), z_lik.reshape(-1)])

    @torch.no_grad()
    def build_tables(self, precision: int = TABLE_PRECISION) -> "HyperTables":
        """Integer tables: the z prior's (as FactorizedPrior.build_tables) and one per tabulated scale."""
        z = copy.deepcopy(self.z_prior).cpu().float().eval().build_tables(precision=precision)
        scales = scale_table()
        offsets, counts = [], []
        for s in scales:
            r = int(math.ceil(TAIL_SIGMAS * s)) + 1
            k = np.arange(-r, r + 1, dtype=np.float64)
            pmf = np.array([0.5 * (math.erfc((abs(v) - 0.5) / (s * math.sqrt(2)))
                                   - math.erfc((abs(v) + 0.5) / (s * math.sqrt(2)))) for v in k])
            escape = max(1.0 - pmf.sum(), 0.0)
            offsets.append(-r)
            counts.append(_integer_counts(np.append(pmf, escape), precision))
        return HyperTables(z=z, scales=scales,
                           gauss=EntropyTables(np.asarray(offsets, np.int32), counts, precision))


@dataclass
class HyperTables:
    """Frozen tables of a hyperprior model: z's factorized tables, the scale grid and its Gaussian tables.
    `prior` (set when a bundle is loaded) supplies h_a and h_s."""

    z: EntropyTables
    scales: np.ndarray
    gauss: EntropyTables
    prior: "MeanScaleHyperprior | None" = None
    kind: str = "hyperprior"

    @property
    def precision(self) -> int:
        return self.z.precision

    def to_dict(self) -> dict:
        return {"kind": self.kind, "z": self.z.to_dict(), "scales": self.scales.tolist(),
                "gauss": self.gauss.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "HyperTables":
        return cls(EntropyTables.from_dict(d["z"]), np.asarray(d["scales"], np.float64),
                   EntropyTables.from_dict(d["gauss"]))


class HyperpriorRangeCodec:
    """Latent codec 'hyperprior-range': z then y in one range-coded stream, escapes in a zstd tail.

    `gain` (continuous rate control, stored in the header when not 1, as the factorized codec's): the latents are
    coded as rint(g·(y − μ)) under the tabulated Gaussian of scale g·σ and decoded as μ + symbol/g — a finer
    (g > 1) or coarser (g < 1) step around the same predicted means; the side information is not scaled."""

    id = "hyperprior-range"
    gain: float = 1.0

    def __init__(self, tables: HyperTables):
        import constriction

        if tables.prior is None:
            raise ValueError("the hyperprior tables are not attached to their model")
        self.tables = tables
        self._cs = constriction
        self.h_a = copy.deepcopy(tables.prior.h_a).cpu().double().eval()
        self.h_s = copy.deepcopy(tables.prior.h_s).cpu().double().eval()
        self.z_prior = copy.deepcopy(tables.prior.z_prior).cpu().double().eval()  # for model_bits
        cat = constriction.stream.model.Categorical
        self._zm = [cat(tables.z.probabilities(c), perfect=False) for c in range(len(tables.z.counts))]
        self._gm = [cat(tables.gauss.probabilities(c), perfect=False) for c in range(len(tables.gauss.counts))]

    def params(self) -> dict:
        p = {"id": self.id, "precision": self.tables.precision}
        if self.gain != 1.0:
            p["gain"] = self.gain
        return p

    @torch.no_grad()
    def _mean_index(self, z_hat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """μ (float64), σ (float64, of the symbols: × gain) and the table index of every latent element, from the
        integer ẑ."""
        p = self.h_s(torch.from_numpy(z_hat.astype(np.float64))[None])[0, :, :shape[0], :shape[1]]
        mean, s = p.chunk(2, dim=0)
        scale = F.softplus(s).clamp(SCALE_MIN, SCALE_MAX).numpy()
        if self.gain != 1.0:
            scale = scale * self.gain
        idx = np.searchsorted(self.tables.scales, scale, side="left")
        return mean.numpy(), scale, np.minimum(idx, len(self.tables.scales) - 1)

    @torch.no_grad()
    def _z(self, latent: np.ndarray) -> np.ndarray:
        y = MeanScaleHyperprior.pad(torch.from_numpy(latent.astype(np.float64))[None])
        return np.rint(self.h_a(y)[0].numpy()).astype(np.int64)

    def encode(self, latent: np.ndarray) -> bytes:
        """Side information and latents of one tile (C, h, w) → bytes."""
        c_n, h, w = latent.shape
        z = self._z(latent)
        mean, _, idx = self._mean_index(z, (h, w))
        u = latent.astype(np.float64) - mean
        sym = np.rint(u if self.gain == 1.0 else self.gain * u).astype(np.int64)
        enc = self._cs.stream.queue.RangeEncoder()
        escapes = encode_grouped(enc, self._zm, self.tables.z, _channel_of(z.shape), z.ravel())
        escapes += encode_grouped(enc, self._gm, self.tables.gauss, idx.ravel(), sym.ravel())
        return join_payload(enc, escapes)

    def _decode_symbols(self, payload: bytes, shape: tuple[int, int, int]):
        c_n, h, w = shape
        dec, esc = split_payload(self._cs, payload, 2 * c_n * h * w)
        zh, zw = -(-h // HYPER_DOWN), -(-w // HYPER_DOWN)
        z, k = decode_grouped(dec, self._zm, self.tables.z, _channel_of((self.tables.prior.z_channels, zh, zw)),
                              esc, 0)
        z = z.reshape(-1, zh, zw)
        mean, scale, idx = self._mean_index(z, (h, w))
        sym, k = decode_grouped(dec, self._gm, self.tables.gauss, idx.ravel(), esc, k)
        return z, sym.reshape(c_n, h, w), mean, scale

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Inverse of encode: ŷ = μ + symbol / gain (float32)."""
        _, sym, mean, _ = self._decode_symbols(payload, shape)
        return (mean + (sym if self.gain == 1.0 else sym / self.gain)).astype(np.float32)

    @torch.no_grad()
    def model_bits(self, payload: bytes, shape: tuple[int, int, int]) -> float:
        """The bits the model's likelihoods (the training rate term, with rounding) give the stored symbols."""
        z, sym, _, scale = self._decode_symbols(payload, shape)
        z_lik = self.z_prior.likelihood(torch.from_numpy(z.astype(np.float64))[None])
        y_lik = _gaussian_mass(torch.from_numpy(sym.astype(np.float64)), torch.from_numpy(scale))
        return float(-torch.log2(y_lik.clamp_min(LIKELIHOOD_BOUND)).sum()
                     - torch.log2(z_lik.clamp_min(LIKELIHOOD_BOUND)).sum())
