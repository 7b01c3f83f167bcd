"""The wavelet layer's context mode (format 3.6, frame mode 5): a tile's coefficients coded subband by subband, each
detail coefficient in a class of the magnitudes of its already decoded neighbours, each class with one of a fixed
bank of tables named by one byte.

The plain wavelet frame (mode 4) codes each of three coefficient groups with a table fitted to the tile and stored
in the frame: one distribution for every coefficient of a group, wherever it lies. A smooth residual is not
stationary — where the scene has structure the coefficients of every subband are large together — so a
coefficient's neighbours in finer and coarser subbands say how large it is likely to be (the contexts of
JPEG 2000's coder and of EZW/SPIHT). Tables per class fitted and stored per tile eat that gain; here each class
names one of BANK_TABLES tables of the dead-zone-quantized Laplacian (scales log-spaced from BANK_SCALES[0] to
BANK_SCALES[-1] steps, ±BANK_SYMBOLS symbols and an escape; `wavelet_bank.npy`, part of the format), and its
symbols are reconstructed at that Laplacian's centroid of their bin — no counts, no offsets in the frame.

Order within a tile (its own coefficient positions; the phases' positions follow the band's lattice): the
approximation (one table fitted to the tile, as in mode 4: it is not zero-mean), then level 2's HH, HL, LH, then
level 1's HH, HL, LH. A detail coefficient's class counts its decoded neighbours of this tile (CONTEXTS: which
phases, at which offsets) and their mean |symbol| against CLASS_EIGHTHS (integer arithmetic: the classes are the
same on every machine); level 2's HH has one class. A phase whose classes do not pay for their bytes names one
table for all of them (SINGLE). Measured on the Kerala DN validation half (rows 0–415) after `sarae-q1` (real
frames, each band's coefficients at one step), against mode 4: VH −4.6 / −5.8 / −5.5 / −1.5 % of the wavelet
frames' bytes at steps 1.0 / 1.9 / 3.5 / 5.9 dB, VV −3.8 / −5.0 / −5.2 / −2.8 %, with the same RMSE (±0.1 % on the
test half: the Laplacian's centroids are as good as mode 4's measured ones); at 9 dB mode 4 is shorter (nearly every
coefficient zero: the approximation's table and the class bytes dominate). The encoder codes both modes and keeps
the shorter frame of each tile (`residual.encode_wavelet`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from sar_ae_core.coding.residual import MODE_WAVELET_CONTEXT as MODE
from sar_ae_core.coding.residual import WAVELET_DEADZONE
from sar_ae_core.coding.tables import decode_escaped, join_payload, split_payload

BANK_TABLES = 64
BANK_SYMBOLS = 40               # symbols −40 … +40, then the escape
BANK_SCALES = (0.02, 64.0)      # the Laplacian's scale (steps) of the first and last table, log-spaced
BANK_PRECISION = 14
EMPTY = 255                     # a class without coefficients
SINGLE = 254                    # a phase coded with one table (the next byte) whatever the classes
#: a class: how many of these its neighbours' mean |symbol| (in eighths) reaches
CLASS_EIGHTHS = (1, 3, 6, 12, 24)
N_CLASSES = len(CLASS_EIGHTHS) + 1

#: the neighbourhoods: level 2's 5 × 5 on its own lattice (±2, ±4 positions), level 1's 5 × 5 (on the Kerala DN
#: validation half against 3 × 3 ones for level 1's HL/LH and ±2 for level 2: 0.4–1.0 % fewer bytes at 1–5.9 dB)
_N8_2 = tuple((dy, dx) for dy in (-4, -2, 0, 2, 4) for dx in (-4, -2, 0, 2, 4) if (dy, dx) != (0, 0))
_N8 = tuple((dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2) if (dy, dx) != (0, 0))
#: the detail phases in coding order: (name, the phases whose decoded symbols give the context, offsets)
CONTEXTS = (
    ("hh2", (), ()),
    ("hl2", ("hh2",), _N8_2),
    ("lh2", ("hh2", "hl2"), _N8_2),
    ("hh1", ("hh2", "hl2", "lh2"), _N8),
    ("hl1", ("hh1", "hh2", "hl2", "lh2"), _N8),
    ("lh1", ("hh1", "hl1", "hh2", "hl2", "lh2"), _N8),
)


def phases(shape, row0: int, col0: int) -> dict:
    """Boolean masks of the approximation ('a') and the six detail phases over a block whose origin is on the
    wavelet's lattice."""
    r = (np.arange(shape[0]) + row0)[:, None]
    c = (np.arange(shape[1]) + col0)[None, :]
    l1 = (r % 2 == 1) | (c % 2 == 1)
    a = (r % 4 == 0) & (c % 4 == 0)
    l2 = ~l1 & ~a
    hh2 = l2 & (r % 4 == 2) & (c % 4 == 2)
    hl2 = l2 & ~hh2 & (r % 4 == 2)
    hh1 = l1 & (r % 2 == 1) & (c % 2 == 1)
    hl1 = l1 & ~hh1 & (r % 2 == 1)
    return {"a": a, "hh2": hh2, "hl2": hl2, "lh2": l2 & ~hh2 & ~hl2, "hh1": hh1, "hl1": hl1, "lh1": l1 & ~hh1 & ~hl1}


def _bank_path() -> Path:
    return Path(__file__).with_name("wavelet_bank.npy")


def make_bank(deadzone: float) -> np.ndarray:
    """The bank's integer counts (BANK_TABLES × (2·BANK_SYMBOLS + 2), each row summing to 2**BANK_PRECISION; the
    last column is the escape), as `wavelet_bank.npy` holds them (written once: the file, not this function, is the
    format)."""
    from sar_ae_core.coding.tables import _integer_counts

    out = []
    for b in bank_scales():
        k = np.abs(np.arange(-BANK_SYMBOLS, BANK_SYMBOLS + 1)).astype(np.float64)
        hi = k + 0.5 + deadzone
        lo = np.where(k == 0, 0.0, k - 0.5 + deadzone)
        p = np.where(k == 0, 1 - np.exp(-hi / b), 0.5 * (np.exp(-lo / b) - np.exp(-hi / b)))
        tail = np.exp(-(BANK_SYMBOLS + 0.5 + deadzone) / b)
        out.append(_integer_counts(np.append(p, tail), BANK_PRECISION))
    return np.stack(out).astype(np.int32)


def bank_scales() -> np.ndarray:
    return np.exp(np.linspace(np.log(BANK_SCALES[0]), np.log(BANK_SCALES[1]), BANK_TABLES))


@functools.lru_cache(maxsize=1)
def bank() -> tuple:
    """(counts, −log2 probabilities, range-coder models, centroid offsets per table) of the stored bank."""
    import constriction

    counts = np.load(_bank_path())
    if counts.shape != (BANK_TABLES, 2 * BANK_SYMBOLS + 2) or (counts.sum(1) != 1 << BANK_PRECISION).any():
        raise ValueError("the wavelet table bank is damaged")
    cost = -np.log2(counts / float(1 << BANK_PRECISION))
    models = [constriction.stream.model.Categorical(c.astype(np.float64) / float(1 << BANK_PRECISION), perfect=False)
              for c in counts]
    b = bank_scales()
    # the centroid of a Laplacian of scale b over the bin [k − ½ + dz, k + ½ + dz), less k (the same for every k ≥ 1)
    offsets = (-0.5 + WAVELET_DEADZONE) + b - 1.0 / np.expm1(1.0 / b)
    return counts, cost, models, offsets


_PAD = 4  # the neighbourhoods reach 4 positions


@functools.lru_cache(maxsize=64)
def _plan(shape: tuple, r4: int, c4: int) -> tuple:
    """Per detail phase of a block of `shape` whose origin is (r4, c4) mod 4: (its positions, flat and in raster
    order; the same in the block padded by _PAD; the padded flat index of each available neighbour, or 0 — a padding
    cell that stays 0 — where the neighbour is not available; the number of available neighbours), or None for the
    neighbourhoods of a phase without context."""
    h, w = shape
    ph = phases(shape, r4, c4)
    wp = w + 2 * _PAD
    out = []
    for name, ctx, offs in CONTEXTS:
        pos = np.flatnonzero(ph[name])
        r, c = np.divmod(pos, w)
        padded = (r + _PAD) * wp + c + _PAD
        if not ctx:
            out.append((pos, padded, None, None))
            continue
        avail = np.zeros(shape, bool)
        for other in ctx:
            avail |= ph[other]
        ok = np.pad(avail, _PAD).ravel()
        nb = np.stack([(r + _PAD + dy) * wp + c + _PAD + dx for dy, dx in offs])
        nb = np.where(ok[nb], nb, 0)
        out.append((pos, padded, nb, (nb != 0).sum(0)))
    return tuple(out)


def _classes(mag_padded: np.ndarray, nb, n) -> np.ndarray:
    """The class of each position of a phase from the mean |symbol| of its available neighbours (integers only)."""
    if nb is None:
        return np.zeros(0 if n is None else len(n), np.int64)
    s = mag_padded[nb].sum(0)
    cls = np.zeros(s.shape, np.int64)
    for t in CLASS_EIGHTHS:
        cls += (8 * s >= t * n) & (n > 0)
    return cls


def encode(block: np.ndarray, row0: int, col0: int, deadzone: float) -> tuple[bytes, np.ndarray]:
    """(frame, dequantized coefficients in steps) of one tile's coefficients (in steps)."""
    import constriction

    from sar_ae_core.coding.residual import _Group, _model, quantize

    counts, cost, models, offsets = bank()
    q = np.clip(quantize(block, 1.0, deadzone), -(1 << 26), 1 << 26)
    out = np.zeros(block.shape, np.float64)
    ph = phases(block.shape, row0, col0)
    approx = _Group(block[ph["a"]], deadzone)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(approx.idx, _model(approx.counts))
    out[ph["a"]] = approx.values()
    mag = np.pad(np.abs(q), _PAD).ravel()
    qf, of = q.ravel(), out.ravel()
    heads, escapes = [], [approx.escapes]
    esc_sym = 2 * BANK_SYMBOLS + 1
    for pos, _, nb, n in _plan(block.shape, row0 % 4, col0 % 4):
        v_all = qf[pos]
        cls = _classes(mag, nb, n) if nb is not None else np.zeros(pos.size, np.int64)
        idx = np.where(np.abs(v_all) <= BANK_SYMBOLS, v_all + BANK_SYMBOLS, esc_sym)
        hists = np.bincount(cls * (esc_sym + 1) + idx, minlength=N_CLASSES * (esc_sym + 1)).reshape(N_CLASSES, -1)
        best = [int(np.argmin(cost @ h)) if h.any() else EMPTY for h in hists]
        split_bits = sum(float(cost[t] @ h) for t, h in zip(best, hists) if t != EMPTY) + 8 * N_CLASSES
        whole = hists.sum(0)
        one = int(np.argmin(cost @ whole)) if whole.any() else EMPTY
        if one == EMPTY or float(cost[one] @ whole) + 16 <= split_bits:  # one table for the phase: two bytes
            heads += [SINGLE, one]
            groups = [(np.ones(pos.size, bool), one)]
        else:
            heads += best
            groups = [(cls == k, t) for k, t in enumerate(best)]
        for sel, t in groups:
            v = v_all[sel]
            if v.size == 0:
                continue
            i = idx[sel]
            enc.encode(i.astype(np.int32), models[t])
            escapes.append(v[i == esc_sym].astype(np.int32))
            of[pos[sel]] = np.sign(v) * (np.abs(v) + np.where(v != 0, offsets[t], 0.0))
    frame = bytes([MODE]) + approx.head + bytes(heads) + join_payload(enc, escapes)
    return frame, out


def decode(frame: bytes, shape, row0: int, col0: int) -> np.ndarray:
    """Inverse of `encode`: the dequantized coefficients (in steps) of a tile's own positions."""
    import constriction

    from sar_ae_core.coding.residual import _decode_group, _read_table, _values

    counts, cost, models, offsets = bank()
    buf = np.frombuffer(frame, np.uint8)
    if buf.size < 1 or int(buf[0]) != MODE:
        raise ValueError("not a wavelet context frame")
    lo, n, a_counts, a_offsets, used = _read_table(buf, 1)
    heads = []  # per phase: a table per class, or (SINGLE, table)
    for _ in CONTEXTS:
        if used >= buf.size:
            raise ValueError("wavelet context frame is truncated")
        n_h = 2 if buf[used] == SINGLE else N_CLASSES
        h = buf[used:used + n_h].astype(np.int64)
        if len(h) < n_h:
            raise ValueError("wavelet context frame is truncated")
        t = h[1:] if n_h == 2 else h
        if ((t >= BANK_TABLES) & (t != EMPTY)).any():
            raise ValueError("wavelet context frame names a table the bank does not have")
        heads.append(h)
        used += n_h
    dec, esc = split_payload(constriction, bytes(buf[used:]), shape[0] * shape[1])
    ph = phases(shape, row0, col0)
    out = np.zeros(shape, np.float64)
    q, k = _decode_group(dec, lo, n, a_counts, int(ph["a"].sum()), esc, 0)
    out[ph["a"]] = _values(q, a_offsets)
    mag = np.zeros((shape[0] + 2 * _PAD) * (shape[1] + 2 * _PAD), np.int64)
    of = out.ravel()
    esc_sym = 2 * BANK_SYMBOLS + 1
    for h, (pos, padded, nb, cnt) in zip(heads, _plan(tuple(shape), row0 % 4, col0 % 4)):
        if h[0] == SINGLE:
            groups = [(np.ones(pos.size, bool), int(h[1]))]
        else:
            cls = _classes(mag, nb, cnt) if nb is not None else np.zeros(pos.size, np.int64)
            groups = [(cls == c, int(t)) for c, t in enumerate(h)]
        for sel, t in groups:
            count = int(sel.sum())
            if t == EMPTY:
                if count:
                    raise ValueError("wavelet context frame leaves a class without a table")
                continue
            v, k = decode_escaped(dec, models[t], count, -BANK_SYMBOLS, esc_sym, esc, k, "wavelet ")
            of[pos[sel]] = np.sign(v) * (np.abs(v) + np.where(v != 0, offsets[t], 0.0))
            mag[padded[sel]] = np.abs(v)
    return out
