"""The residual layer's wavelet mode (format 3.5): a band's residual coded in a CDF 9/7 wavelet domain that spans
the tile borders.

Where the source is smooth — block-averaged, multi-looked or geocoded products such as the uncalibrated Kerala DN
scene — what the network leaves is not white: most of its power lies at low and middle frequencies (the Kerala
validation half after `sarae-q1`: spectral flatness 0.63). The pixel modes predict from decoded neighbours, which
loses most of a transform's gain once the step is coarse; a wavelet keeps it (`benchmarks/bench_wavelet_pilot.py`:
+0.4 … +0.7 dB at the same bytes on Kerala DN at 0.5–1 bpp). Transformed tile by tile, though, the quantization error
is correlated inside a tile and independent across its border, and the reconstruction shows steps along the tile
grid (seam statistic 1.1–1.6 of the source's); over the whole band they are gone (0.98–1.04).

So the transform here is the band's (two levels: they keep the gain of four on those rasters, and reach only
`HALO` pixels), laid out in place — the coefficient of each position stays at that position: level 1's
high-pass samples on the odd rows or columns, level 2's on the odd positions of the even lattice, the approximation
on every fourth row and column — and each tile codes the coefficients at its own pixel positions (its last row and
column of tiles also the band's padding to a multiple of 4). A tile's pixels are the inverse transform of a window
of the coefficients reaching HALO pixels into its neighbours, which the decoder reads from their chunks: the same
float64 operations in the same order as the inverse over the whole band, so a `--window` decode, a full decode and
the encoder's own reconstruction agree bit for bit.

Lifting: the irreversible CDF 9/7 of JPEG 2000 Part 1 (predict α, update β, predict γ, update δ, scale ζ; nearly
orthonormal, so one step in the coefficient domain is about one step in the pixel domain), each step reading the
nearest sample of the other phase and, at the band's edges, repeating the last one (exactly invertible).
"""

from __future__ import annotations

import numpy as np

_A, _B, _G, _D, _Z = -1.586134342, -0.05298011854, 0.8829110762, 0.4435068522, 1.149604398

#: decomposition levels
LEVELS = 2
#: the band is padded (mirrored) to a multiple of this
ALIGN = 1 << LEVELS
#: how far (pixels) a tile's inverse transform reads into its neighbours' coefficients: a window this much larger on
#: every side gives the tile's pixels exactly as the whole band's inverse does (two levels of 9/7 lifting reach 12;
#: a multiple of ALIGN keeps the window on the lattice)
HALO = 16
#: coefficient groups, each with its own table per tile: level 1's high-pass, level 2's high-pass, the approximation
GROUPS = 3


def padded(shape) -> tuple[int, int]:
    """The band's shape rounded up to a multiple of ALIGN (what is transformed)."""
    return tuple(-(-int(n) // ALIGN) * ALIGN for n in shape)


def _next(s: np.ndarray) -> np.ndarray:
    return np.concatenate([s[1:], s[-1:]], 0)


def _prev(d: np.ndarray) -> np.ndarray:
    return np.concatenate([d[:1], d[:-1]], 0)


def _forward_axis0(x: np.ndarray) -> None:
    s, d = x[0::2], x[1::2]
    d += _A * (s + _next(s))
    s += _B * (d + _prev(d))
    d += _G * (s + _next(s))
    s += _D * (d + _prev(d))
    s *= _Z
    d /= _Z


def _inverse_axis0(x: np.ndarray) -> None:
    s, d = x[0::2], x[1::2]
    s /= _Z
    d *= _Z
    s -= _D * (d + _prev(d))
    d -= _G * (s + _next(s))
    s -= _B * (d + _prev(d))
    d -= _A * (s + _next(s))


def forward(x: np.ndarray) -> np.ndarray:
    """In-place-layout coefficients of x (float64, sides multiples of ALIGN)."""
    y = np.array(x, np.float64)
    for k in range(LEVELS):
        v = y[:: 1 << k, :: 1 << k]
        _forward_axis0(v)
        _forward_axis0(v.T)
    return y


def inverse(y: np.ndarray) -> np.ndarray:
    """Inverse of `forward` (also on a window of the coefficients whose origin is on the ALIGN lattice: exact
    wherever the window reaches HALO pixels beyond, or ends where the band ends)."""
    x = np.array(y, np.float64)
    for k in reversed(range(LEVELS)):
        v = x[:: 1 << k, :: 1 << k]
        _inverse_axis0(v.T)
        _inverse_axis0(v)
    return x


def groups(shape, row0: int = 0, col0: int = 0) -> list[np.ndarray]:
    """Boolean masks of the GROUPS coefficient groups over a block of `shape` whose origin (row0, col0) lies on the
    ALIGN lattice."""
    r = (np.arange(shape[0]) + row0)[:, None]
    c = (np.arange(shape[1]) + col0)[None, :]
    level1 = (r % 2 == 1) | (c % 2 == 1)
    approx = (r % ALIGN == 0) & (c % ALIGN == 0)
    return [level1, ~level1 & ~approx, approx]


def analyse(residual_steps: np.ndarray, coded: np.ndarray) -> np.ndarray:
    """The coefficients of a band's residual (in steps; 0 where not coded), mirrored to the padded shape."""
    ph, pw = padded(residual_steps.shape)
    h, w = residual_steps.shape
    x = np.pad(np.where(coded, residual_steps, 0.0), ((0, ph - h), (0, pw - w)), mode="symmetric")
    return forward(x)
