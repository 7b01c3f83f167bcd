"""Residual layer: what the network's reconstruction missed, coded pixel by pixel so that quality keeps rising with
the rate, on any product.

A learned transform codes the structure of a scene well at low rates, but fully developed speckle (single-look
SLC, RTC γ0 at full resolution) is nearly white noise: the network smooths it, and past its rate points more bits
buy little. The residual layer codes r = source dB − network dB of every valid, non-escaped pixel with a uniform
scalar quantizer of step `residual_db` (a slight dead zone at the encoder) and a range coder whose table is
fitted on each tile (its counts are stored with the tile): the quantization error is at most step/2 (plus the
dead zone's 0.15 step) everywhere, and the rate rises ~1 bit per pixel per halving of the step, like a
transform codec's at high rates. Coding in the pixel domain keeps the skewed distribution of dB speckle that a
linear transform would make Gaussian (up to ~0.13 bit per pixel cheaper on single-look data).

Frame of one tile (empty when the tile has no coded pixels), little-endian::

    varint  symbol offset zigzag (the alphabet is offset … offset + n − 2, then one escape symbol)
    varint  n (alphabet size, escape included, ≤ MAX_ALPHABET)
    n × varint  integer counts summing to 2**PRECISION, each ≥ 1
    7 × int8    reconstruction offsets of the symbols −3 … +3 in 1/256 step (the centroid of each bin)
    …           range-coded symbols (tables.join_payload framing: word count, words, zstd int32 escapes)

The decoder adds step·(q + offset(q)) to the network's dB value; the escapes (out-of-window pixels) keep their own
values. Decoding needs nothing but the tile's mask chunk: no network value enters the symbols' coding, so a
reconstruction on another machine (whose floating point may differ in the last bits) decodes the same symbols.
"""

from __future__ import annotations

import numpy as np

from sar_ae_core.coding.escapes import _read_varints, _varints
from sar_ae_core.coding.tables import _integer_counts, join_payload, split_payload

RESIDUAL_MASK_ID = "packbits-zstd-escapes-residual"  # validity mask + escapes + residual layer
PRECISION = 14
MAX_ALPHABET = 1024          # symbols per tile table (escape included); rarer values go as escapes
TAIL_SYMBOLS = 8             # table symbols beyond the central percentiles kept before the tail escapes instead
OFFSET_SYMBOLS = 3           # reconstruction offsets for the symbols −3 … +3
MIN_STEP_DB, MAX_STEP_DB = 0.01, 20.0
DEADZONE = 0.0               # encoder only: |u| is rounded down after subtracting this (measured: any dead zone
                             # costs PSNR at equal bytes once the bins have centroid offsets, so none)


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def quantize(residual: np.ndarray, step: float, deadzone: float = DEADZONE) -> np.ndarray:
    """Integer symbols of residual dB values (float) with step `step`."""
    u = residual.astype(np.float64) / step
    return (np.sign(u) * np.floor(np.abs(u) + 0.5 - deadzone)).astype(np.int64)


def encode_residual(residual: np.ndarray, coded: np.ndarray, step: float, deadzone: float = DEADZONE) -> bytes:
    """The residual frame of one tile: residual dB values (any shape) of the pixels where `coded` is true."""
    import constriction

    r = residual[coded]
    if r.size == 0:
        return b""
    q = quantize(r, step, deadzone)
    q = np.clip(q, -(1 << 26), 1 << 26)  # far beyond any dB residual: keeps every number a short varint
    # the table covers the symbols between the 0.005 and 99.995 percentiles (all of them when that adds at most
    # TAIL_SYMBOLS): every table symbol costs a count and takes a minimum probability, the rare tail escapes
    lo, hi = int(q.min()), int(q.max())
    c_lo, c_hi = (int(v) for v in np.percentile(q, [0.005, 99.995], method="nearest"))
    lo, hi = (lo if c_lo - lo <= TAIL_SYMBOLS else c_lo), (hi if hi - c_hi <= TAIL_SYMBOLS else c_hi)
    if hi - lo + 2 > MAX_ALPHABET:
        half = (MAX_ALPHABET - 2) // 2
        mid = (lo + hi) // 2
        lo, hi = max(lo, mid - half), min(hi, mid + half - 1)
    n = hi - lo + 2
    idx = q - lo
    outside = (idx < 0) | (idx >= n - 1)
    escapes = q[outside].astype(np.int32)
    idx = np.where(outside, n - 1, idx)
    hist = np.bincount(idx, minlength=n).astype(np.float64)
    counts = _integer_counts(hist / hist.sum(), PRECISION)
    u = r.astype(np.float64) / step
    offsets = np.zeros(2 * OFFSET_SYMBOLS + 1, np.int8)
    for k, v in enumerate(range(-OFFSET_SYMBOLS, OFFSET_SYMBOLS + 1)):
        sel = q == v
        if sel.any():
            offsets[k] = np.int8(np.clip(np.rint(256 * float(np.mean(u[sel] - v))), -127, 127))
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(idx.astype(np.int32), _model(counts))
    head = _varints(np.array([_zigzag(lo), n] + counts.tolist(), np.int64)) + offsets.tobytes()
    return head + join_payload(enc, [escapes])


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64) / float(1 << PRECISION), perfect=False)


def decode_residual(frame: bytes, coded: np.ndarray, step: float) -> np.ndarray:
    """Inverse of encode_residual: float32 dB residuals of the tile (shape of `coded`; 0 where not coded)."""
    import constriction

    out = np.zeros(coded.shape, np.float32)
    n_coded = int(np.count_nonzero(coded))
    if not frame:
        if n_coded:
            raise ValueError("residual frame missing for a tile with coded pixels")
        return out
    if n_coded == 0:
        raise ValueError("residual frame for a tile without coded pixels")
    buf = np.frombuffer(frame, np.uint8)
    head, used = _read_varints(buf, 2)
    lo, n = _unzigzag(int(head[0])), int(head[1])
    if not 2 <= n <= MAX_ALPHABET or abs(lo) > (1 << 26):
        raise ValueError(f"residual alphabet of {n} symbols from {lo} is out of range")
    counts, k = _read_varints(buf[used:], n)
    used += k
    if counts.min() < 1 or int(counts.sum()) != 1 << PRECISION:
        raise ValueError("residual table counts are invalid")
    m = 2 * OFFSET_SYMBOLS + 1
    if used + m > buf.size:
        raise ValueError("residual frame is truncated")
    offsets = buf[used:used + m].view(np.int8).astype(np.float64) / 256.0
    dec, esc = split_payload(constriction, bytes(buf[used + m:]), n_coded)
    idx = dec.decode(_model(counts), n_coded).astype(np.int64)
    hit = idx == n - 1
    q = idx + lo
    n_esc = int(np.count_nonzero(hit))
    if n_esc:
        if n_esc > esc.size:
            raise ValueError("residual escape values missing")
        q[hit] = esc[:n_esc]
    v = q.astype(np.float64)
    near = np.abs(q) <= OFFSET_SYMBOLS
    v[near] += offsets[q[near] + OFFSET_SYMBOLS]
    out[coded] = (v * step).astype(np.float32)
    return out


def encode_chunk(mask_part: bytes, escape_frame: bytes, residual_frame: bytes) -> bytes:
    """Mask chunk of the residual layout: varint mask length, mask, varint escape-frame length, escape frame,
    residual frame."""
    return _varints(np.array([len(mask_part)])) + mask_part + _varints(np.array([len(escape_frame)])) + \
        escape_frame + residual_frame


def split_chunk(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(mask part, escape frame, residual frame) of a residual-layout mask chunk."""
    buf = np.frombuffer(payload, np.uint8)
    out, pos = [], 0
    for _ in range(2):
        if pos >= buf.size:
            raise ValueError("mask chunk is truncated")
        (n,), k = _read_varints(buf[pos:pos + 10], 1)
        pos += k
        if n > buf.size - pos:
            raise ValueError("mask chunk part longer than the chunk")
        out.append(bytes(buf[pos:pos + int(n)]))
        pos += int(n)
    if not out[0]:
        raise ValueError("mask part is empty")
    return out[0], out[1], bytes(buf[pos:])
