"""Residual layer: what the network's reconstruction missed, coded pixel by pixel so that quality keeps rising with
the rate, on any product.

A learned transform codes the structure of a scene well at low rates, but fully developed speckle (single-look
SLC, RTC γ0 at full resolution) is nearly white noise: the network smooths it, and past its rate points more bits
buy little. The residual layer codes r = source dB − network dB of every valid, non-escaped pixel with a uniform
scalar quantizer of step `residual_db` and a range coder whose table is fitted on each tile (its counts are stored
with the tile), each symbol reconstructed at its bin's centroid: the quantization error is at most one step
everywhere, and the rate rises ~1 bit per pixel per halving of the step, like a transform codec's at high rates.
Coding in the pixel domain keeps the skewed distribution of dB speckle that a linear transform would make Gaussian
(up to ~0.13 bit per pixel cheaper on single-look data); the encoder also chooses, per table of predicted pixels,
where the bins' edges fall (`SHIFTS`, by distortion + λ·bits, `_group`): moved towards the short tail, the zero bin
holds more of the skewed pixels (single-look TerraSAR-X at steps 8–14 dB: 0.14–0.21 dB closer at the same bytes).
The decoder needs to know nothing of it.

Frame of one tile (empty when the tile has no coded pixels), little-endian::

    varint  symbol offset zigzag (the alphabet is offset … offset + n − 2, then one escape symbol)
    varint  n (alphabet size, escape included, ≤ MAX_ALPHABET)
    n × varint  integer counts summing to 2**PRECISION, each ≥ 1
    7 × int8    reconstruction offsets of the symbols −3 … +3 in 1/256 step (the centroid of each bin)
    …           range-coded symbols (tables.join_payload framing: word count, words, zstd int32 escapes)

That is mode 0 (a mode byte first). Mode 3 (checkerboard, format 3.3; mode 1 of formats 3.1–3.2 without the
edges): the black squares and the tile's edge pixels as mode 0, the other white ones predicted by a factor (int8,
1/128) times the mean of their four decoded neighbours, each half with its table. Mode 2 (three phases, format 3.2;
layout 1 of format 3.3 puts the tile's edge pixels in P0): P0 = (even row, even column) as mode 0, then P1 = (odd, odd) predicted from the decoded P0
pixels and P2 = the rest from P0 and P1 (least-squares weights per tile of the neighbour groups of `_LAYOUTS`: the
pairs along each axis and the rings further out, SAR residuals are not isotropic), each phase coded with one table
per class of its decoded neighbours' mean |symbol| (`CONTEXT_VARIANTS`), so that busy and quiet areas get their own
statistics. The encoder codes every mode and keeps the shortest frame.

The decoder adds step·(q + offset(q)) (plus the prediction) to the network's dB value; the escapes (out-of-window
pixels) keep their own values. Decoding needs nothing but the tile's mask chunk: no network value enters the symbols' coding, so a
reconstruction on another machine (whose floating point may differ in the last bits) decodes the same symbols (the
context classes of mode 2 come from the integer symbols; the predictions are IEEE sums and products in a fixed order).
"""

from __future__ import annotations

import functools

import numpy as np

from sar_ae_core.coding.escapes import _read_varints, _unzigzag, _varints, _zigzag
from sar_ae_core.coding.tables import _integer_counts, decode_escaped, join_payload, split_payload

RESIDUAL_MASK_ID = "packbits-zstd-escapes-residual"  # validity mask + escapes + residual layer
PRECISION = 14
MAX_ALPHABET = 1024          # symbols per tile table (escape included); rarer values go as escapes
TAIL_SYMBOLS = 8             # table symbols beyond the central percentiles kept before the tail escapes instead
OFFSET_SYMBOLS = 3           # reconstruction offsets for the symbols −3 … +3
MIN_STEP_DB, MAX_STEP_DB = 0.01, 60.0
MODE_PLAIN, MODE_CONTEXT = 0, 2
#: the checkerboard mode the encoder writes (format 3.3: the tile's edge pixels are black) and the one of files of
#: format 3.1–3.2 (the checkerboard alone), which the decoder still reads
MODE_CHECKERBOARD, MODE_CHECKERBOARD_32 = 3, 1
#: a band's residual in a wavelet domain spanning the tile borders (format 3.5, `coding/wavelet.py`): each tile's
#: frame holds the coefficients at its own positions, the decoder reads its neighbours' near the border
MODE_WAVELET = 4
#: … its tiles' coefficients in context classes coded with a fixed bank of tables (format 3.6,
#: `coding/wavelet_context.py`): the encoder keeps whichever of modes 4 and 5 is shorter per tile
MODE_WAVELET_CONTEXT = 5
#: … and codes only mode 5 where at least this share of a tile's detail coefficients is not zero (measured on 150 tiles
#: of Kerala DN, W-Slovakia GRD and an OPERA RTC chip at steps 0.5–16 dB: from 10 % on, mode 4 was shorter in 1 of 73
#: tiles, by 9 bytes; below 1 % it is shorter in 44 of 48)
CONTEXT_ONLY_FROM = 0.10
#: the wavelet mode's dead zone (|coefficient| in steps is rounded down after subtracting it): most coefficients of a
#: smooth residual are small, and zero costs least (JPEG 2000's quantizer has a whole step's dead zone)
WAVELET_DEADZONE = 0.15
#: mode 2's variants (layout, class thresholds on the mean |symbol| of a pixel's decoded neighbours, in quarter
#: steps), each tried and the shortest frame kept (measured on validation residuals: 5 classes instead of 3 saved
#: no more, the tables cost what the classes gain)
CONTEXT_VARIANTS = ((1, (4, 12)), (1, ()))
MAX_CLASSES = 8
#: the variant without classes (one table per phase) is tried only where the shortest frame so far spends fewer bits
#: per coded pixel than this: where the layer is thin the classes' tables cost what they save (validation residuals;
#: elsewhere it never won)
FEW_CLASSES_BELOW_BPP = 0.5
DEADZONE = 0.0               # encoder only: |u| is rounded down after subtracting this (measured: any dead zone
                             # costs PSNR at equal bytes once the bins have centroid offsets, so none)


def quantize(residual: np.ndarray, step: float, deadzone: float = DEADZONE) -> np.ndarray:
    """Integer symbols of residual dB values (float) with step `step`."""
    u = residual.astype(np.float64) / step
    return (np.sign(u) * np.floor(np.abs(u) + 0.5 - deadzone)).astype(np.int64)


class _Group:
    """The symbols of one group of pixels with their table and reconstruction offsets (encoder side). `shift` (in
    steps, encoder only): the bins' edges moved by it (symbol rint(u − shift)); the decoder reconstructs every
    symbol at its bin's centroid whatever the edges (`_group` chooses them)."""

    def __init__(self, u: np.ndarray, deadzone: float, shift: float = 0.0):
        q = np.clip(quantize(u - shift, 1.0, deadzone), -(1 << 26), 1 << 26)  # far beyond any dB residual
        # the table covers the symbols between the 0.005 and 99.995 percentiles (all of them when that adds at
        # most TAIL_SYMBOLS): every table symbol costs a count and takes a minimum probability, the tail escapes
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
        self.escapes = q[outside].astype(np.int32)
        self.idx = np.where(outside, n - 1, idx).astype(np.int32)
        hist = np.bincount(self.idx, minlength=n).astype(np.float64)
        self.counts = _integer_counts(hist / hist.sum(), PRECISION)
        # the centroid of each bin −3 … +3 (one pass: the counts and sums of u − q per symbol)
        near = np.abs(q) <= OFFSET_SYMBOLS
        k = q[near] + OFFSET_SYMBOLS
        m = 2 * OFFSET_SYMBOLS + 1
        cnt = np.bincount(k, minlength=m)
        tot = np.bincount(k, weights=(u[near] - q[near]), minlength=m)
        mean = np.divide(tot, cnt, out=np.zeros(m), where=cnt > 0)
        self.offsets = np.clip(np.rint(256 * mean), -127, 127).astype(np.int8)
        self.head = _varints(np.array([_zigzag(lo), n] + self.counts.tolist(), np.int64)) + self.offsets.tobytes()
        self.q = q

    def values(self) -> np.ndarray:
        """Reconstructed values in steps (what the decoder computes)."""
        return _values(self.q, self.offsets.astype(np.float64) / 256.0)


#: the bins' edge shifts (in steps) the encoder tries for each group of symbols: dB speckle is skewed (a long tail of
#: deep nulls below the local mean, a short one above), so edges moved towards the short tail put more of the pixels
#: in the zero bin at the same step; the decoder reconstructs at the bins' centroids either way
SHIFTS = (0.0, 0.125, 0.25, -0.125)
#: groups whose centred symbols cost fewer bits per pixel than this keep centred edges: in a sparse layer (deep nulls
#: and bright spikes only) a shift moves the rate far more than the error, and the rate search's steps lose their
#: footing (WHU city at 0.25 bpp: no step within 20 passes landed on the target)
SHIFT_FROM_BITS = 0.5
#: … and so do groups of more than this: in a dense layer the skew within one bin is small, shifts bought ≤ 0.05 dB
#: (single-look, 2 bpp) and cost 2 % RMSE on Kerala DN VV at 2 bpp (a predicted phase's values feed the predictions
#: and classes of the phases after it, which the choice of one group's edges does not see)
SHIFT_UNTIL_BITS = 1.5
#: fine bins per step of the histogram the bin edges are chosen on (the shifts fall on its edges)
_FINE = 32


def _group(u: np.ndarray, deadzone: float, shifts: bool = True) -> "_Group":
    """The _Group of `u` whose bin edges (SHIFTS) minimise distortion + λ·bits, λ = 2·ln 2 times the centred bins'
    mean squared error per pixel (the slope of the rate-distortion curve, dD/dR = −2 ln 2 · D), both computed for
    every shift from one histogram of `u` in 1/_FINE steps (its counts, sums and sums of squares: the centroids'
    error in closed form). (Measured: λ from the group's own curve at a 10 % coarser step also shifts the edges of
    the sparse layers of 0.5 bpp, which smooths the speckle of homogeneous areas for ±0.02 dB.) `shifts` False: the
    centred bins — for every group that holds the tile's edge pixels (mode 0, the checkerboard's first half, mode
    2's first phase): their bins set against those of the predicted pixels inside the tile made steps along the
    tile grid (Kerala DN at 2 bpp: the seam statistic 1.03–1.05 of the source's, the tile grid the worst of 31
    shifted grids; 1.00 with the edges' groups centred)."""
    if not shifts or u.size < 64 or len(SHIFTS) < 2 or deadzone != 0.0:
        return _Group(u, deadzone)
    f = np.floor(u * _FINE).astype(np.int64)
    lo = int(f.min())
    idx = f - lo
    if idx.max() > (1 << 22):  # a range no histogram should span (isolated huge values): centred bins
        return _Group(u, deadzone)
    cnt = np.bincount(idx).astype(np.float64)
    s1 = np.bincount(idx, weights=u)
    s2 = np.bincount(idx, weights=u * u)
    centre = (np.arange(cnt.size) + lo + 0.5) / _FINE  # every fine bin lies inside one symbol's bin

    def cost(shift: float) -> tuple[float, float]:
        """(squared error, bits) of the symbols with the bins' edges moved by `shift`."""
        q = quantize(centre - shift, 1.0)
        k = q - q.min()
        n = np.bincount(k, weights=cnt)
        a = np.bincount(k, weights=s1)
        b = np.bincount(k, weights=s2)
        sym = np.arange(n.size) + q.min()
        used = n > 0
        mean = np.divide(a, n, out=np.zeros_like(a), where=used) - sym
        c = np.where(np.abs(sym) <= OFFSET_SYMBOLS, np.clip(np.rint(256 * mean), -127, 127) / 256.0, 0.0)
        r = sym + c  # the value each symbol is reconstructed at
        return float((b - 2 * r * a + n * r * r)[used].sum()), float(-(n[used] * np.log2(n[used] / u.size)).sum())

    d0, r0 = cost(SHIFTS[0])
    if not SHIFT_FROM_BITS * u.size <= r0 <= SHIFT_UNTIL_BITS * u.size:  # sparse or dense: centred
        return _Group(u, deadzone)
    lam = 2 * np.log(2) * d0 / u.size
    best, best_j = SHIFTS[0], d0 + lam * r0
    for shift in SHIFTS[1:]:
        d, r = cost(shift)
        if d + lam * r < best_j:
            best, best_j = shift, d + lam * r
    return _Group(u, deadzone, best)


def _values(q: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    v = q.astype(np.float64)
    near = np.abs(q) <= OFFSET_SYMBOLS
    v[near] += offsets[q[near] + OFFSET_SYMBOLS]
    return v


def _neighbour_mean(values: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """Mean of the 4-neighbours' values where they are available (0 where none is), within the tile."""
    s = np.zeros(values.shape, np.float64)
    c = np.zeros(values.shape, np.int64)
    v = np.where(avail, values, 0.0)
    a = avail.astype(np.int64)
    s[1:] += v[:-1]; c[1:] += a[:-1]          # noqa: E702 - up
    s[:-1] += v[1:]; c[:-1] += a[1:]          # noqa: E702 - down
    s[:, 1:] += v[:, :-1]; c[:, 1:] += a[:, :-1]  # noqa: E702 - left
    s[:, :-1] += v[:, 1:]; c[:, :-1] += a[:, 1:]  # noqa: E702 - right
    return np.where(c > 0, s / np.maximum(c, 1), 0.0)


def _checkerboard(shape) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy + xx) % 2 == 0


@functools.lru_cache(maxsize=16)
def _tile_edge(shape) -> np.ndarray:
    """The tile's first and last rows and columns: the pixels a tile border passes by. Coded without a prediction
    (format 3.3) since a prediction from the tile's own pixels only is one-sided there: the two pixels across a
    border would be predicted from opposite sides while neighbours inside a tile share their predictors, and the
    reconstruction would show steps along the tile grid (held-out Kerala DN at 1 bpp: border steps 9 % / 6 % above
    the source's with the one-sided prediction, 3 % / 0 % with the edges coded directly, same bytes)."""
    e = np.zeros(shape, bool)
    e[0], e[-1], e[:, 0], e[:, -1] = True, True, True, True
    e.setflags(write=False)
    return e


def _black(shape, mode: int) -> np.ndarray:
    """The pixels a checkerboard frame codes first (the rest are predicted from them)."""
    black = _checkerboard(shape)
    return black | _tile_edge(tuple(shape)) if mode == MODE_CHECKERBOARD else black


def _encode_checkerboard(u: np.ndarray, coded: np.ndarray, deadzone: float, mode: int = MODE_CHECKERBOARD):
    """(checkerboard frame, its reconstructed values in steps at the coded pixels), or None where one half is empty;
    `mode` MODE_CHECKERBOARD_32 writes the frames of formats 3.1–3.2 (for their tests)."""
    import constriction

    black = _black(coded.shape, mode)
    a_sel, b_sel = coded & black, coded & ~black
    if not (a_sel.any() and b_sel.any()):
        return None
    ga = _group(u[a_sel], deadzone, shifts=False)  # the tile's edge pixels: see _group
    rec = np.zeros(coded.shape, np.float64)
    rec[a_sel] = ga.values()
    nb = _neighbour_mean(rec, a_sel)[b_sel]
    den = float(np.dot(nb, nb))
    alpha = int(np.clip(np.rint(128 * float(np.dot(u[b_sel], nb)) / den), -127, 127)) if den > 0 else 0
    gb = _group(u[b_sel] - alpha / 128.0 * nb, deadzone)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(ga.idx, _model(ga.counts))
    enc.encode(gb.idx, _model(gb.counts))
    rec[b_sel] = alpha / 128.0 * nb + gb.values()  # as decode_residual computes it
    return (bytes([mode]) + np.int8(alpha).tobytes() + ga.head + gb.head +
            join_payload(enc, [ga.escapes, gb.escapes]), rec[coded])


def encode_wavelet(block: np.ndarray, row0: int, col0: int):
    """(wavelet frame, the dequantized coefficients in steps) of the coefficients (in steps) at one tile's own
    positions, `block`, whose origin (row0, col0) in the band is on the wavelet's lattice: the shorter of the plain
    frame (mode 4) and the context frame (mode 5, `coding/wavelet_context.py`; −4 … −6 % on smooth residuals at
    steps of 1–3.5 dB, longer where nearly every coefficient is zero); only the context frame where at least
    CONTEXT_ONLY_FROM of the detail coefficients are not zero (mode 4 is then practically never shorter)."""
    from sar_ae_core.coding import wavelet_context

    ctx = wavelet_context.encode(block, row0, col0, WAVELET_DEADZONE)
    detail = ~wavelet_context.phases(block.shape, row0, col0)["a"]
    if np.mean(ctx[1][detail] != 0) >= CONTEXT_ONLY_FROM:  # a dequantized value is 0 exactly where its symbol is
        return ctx
    plain = _encode_wavelet_plain(block, row0, col0)
    return ctx if len(ctx[0]) < len(plain[0]) else plain


def _encode_wavelet_plain(block: np.ndarray, row0: int, col0: int):
    """encode_wavelet's frame mode 4: a table fitted to the tile for each of the wavelet's coefficient groups."""
    import constriction

    from sar_ae_core.coding import wavelet

    masks = wavelet.groups(block.shape, row0, col0)
    groups = [_Group(block[m], WAVELET_DEADZONE) for m in masks]
    enc = constriction.stream.queue.RangeEncoder()
    out = np.zeros(block.shape, np.float64)
    for g, m in zip(groups, masks):
        enc.encode(g.idx, _model(g.counts))
        out[m] = g.values()
    return bytes([MODE_WAVELET]) + b"".join(g.head for g in groups) + join_payload(enc, [g.escapes for g in groups]), out


def decode_wavelet(frame: bytes, shape, row0: int, col0: int) -> np.ndarray:
    """Inverse of encode_wavelet: the dequantized coefficients (in steps) of a tile's own positions."""
    import constriction

    from sar_ae_core.coding import wavelet

    buf = np.frombuffer(frame, np.uint8)
    if buf.size >= 1 and int(buf[0]) == MODE_WAVELET_CONTEXT:
        from sar_ae_core.coding import wavelet_context

        return wavelet_context.decode(frame, shape, row0, col0)
    if buf.size < 1 or int(buf[0]) != MODE_WAVELET:
        raise ValueError("a tile of a wavelet-coded band has no wavelet frame")
    masks = wavelet.groups(shape, row0, col0)
    heads, used = [], 1
    for _ in masks:
        lo, n, counts, offsets, used = _read_table(buf, used)
        heads.append((lo, n, counts, offsets))
    dec, esc = split_payload(constriction, bytes(buf[used:]), shape[0] * shape[1])
    out, k = np.zeros(shape, np.float64), 0
    for (lo, n, counts, offsets), m in zip(heads, masks):
        q, k = _decode_group(dec, lo, n, counts, int(m.sum()), esc, k)
        out[m] = _values(q, offsets)
    return out


def frame_kind(frame: bytes):
    """What a frame was coded with: (mode, number of context thresholds or None); None for an empty frame."""
    if not frame:
        return None
    return (frame[0], frame[2] if frame[0] == MODE_CONTEXT and len(frame) > 2 else None)


def encode_residual(residual: np.ndarray, coded: np.ndarray, step: float, deadzone: float = DEADZONE,
                    with_values: bool = False, context: bool = True, hint=None):
    """The residual frame of one tile: residual dB values (tile shape) of the pixels where `coded` is true. Every
    mode is coded and the shortest frame is kept (the error is the same: one step, bin centroids; `context=False`
    leaves mode 2 out — ~3× faster, a few per cent more bytes: what a rate search's first passes need). `hint`: the
    `frame_kind` that won for this tile at a nearby step — only mode 0 and that one are coded (a search's later
    passes). `with_values`: (frame, the float64 residuals the decoder will reconstruct at the coded pixels)."""
    import constriction

    if not coded.any():
        return (b"", np.zeros(0)) if with_values else b""
    u = residual.astype(np.float64) / step
    frames = []
    g = _group(u[coded], deadzone, shifts=False)  # mode 0: every coded pixel with one table
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(g.idx, _model(g.counts))
    frames.append((bytes([MODE_PLAIN]) + g.head + join_payload(enc, [g.escapes]), g.values()))
    if hint is not None:
        context = context and hint[0] == MODE_CONTEXT
    if hint is None or hint[0] == MODE_CHECKERBOARD:  # mode 3: checkerboard
        frame = _encode_checkerboard(u, coded, deadzone)
        if frame is not None:
            frames.append(frame)
    grids: dict = {}
    n_coded = int(coded.sum())
    for layout, thresholds in (CONTEXT_VARIANTS if context else ()):  # mode 2: phases predicted by their neighbours
        if hint is not None and len(thresholds) != hint[1]:
            continue
        if hint is None and not thresholds and min(len(f[0]) for f in frames) * 8 > FEW_CLASSES_BELOW_BPP * n_coded:
            continue
        if layout not in grids:
            grids[layout] = _grids(coded, layout)
        frames.append(_encode_context(u, coded, thresholds, deadzone, layout, grids[layout]))
    # the frame with the least distortion + λ·bits (λ as in _group, from mode 0's centred bins): the modes' bins
    # differ (edges, centroids), so their errors do too, a little
    uc = u[coded]
    lam = 2 * np.log(2) * float(np.square(uc - frames[0][1]).mean())
    frame, values = min(frames, key=lambda f: float(np.square(uc - f[1]).sum()) + lam * 8 * len(f[0]))
    return (frame, values * step) if with_values else frame


def _ring(a: int, b: int) -> tuple:
    """The offsets (±a, ±b)."""
    return tuple(dict.fromkeys((sy * a, sx * b) for sy in (-1, 1) for sx in (-1, 1)))


def _pair(dy: int, dx: int) -> tuple:
    return ((-dy, -dx), (dy, dx))


_DIAGONAL = _ring(1, 1)
_DIRECT = ((-1, 0), (1, 0), (0, -1), (0, 1))

#: Mode 2's phase layouts: a list of (phase, class offsets, predictor neighbour groups) in coding order. Phases by
#: (row, column) parity of the tile's pixels: "P0" (even, even), "P1" (odd, odd), "P2" the rest. Every offset of a
#: phase points to pixels of the phases before it, so the decoder has them. One predictor weight per neighbour
#: group (the mean of the group's pixels inside the tile: per axis and per ring, SAR residuals are not isotropic);
#: the class of a pixel comes from the mean |symbol| at the class offsets. (Measured on validation residuals: a
#: single weight for all four neighbours saved 1–4 % less; splitting P0 once more on its own lattice, 0–0.3 %.)
_P1_GROUPS = (_pair(1, 1), _pair(1, -1), _ring(1, 3), _ring(3, 1), _ring(3, 3))
_P2_GROUPS = (_pair(0, 1), _pair(1, 0), _ring(1, 2), _ring(2, 1), _pair(0, 3), _pair(3, 0))
#: Layout 1 (format 3.3, what the encoder writes) is layout 0 (format 3.2, still read) with the tile's edge pixels in
#: P0 (`_tile_edge`): no pixel next to a tile border is predicted from one side only.
_LAYOUTS = {0: (("P0", None, ()), ("P1", _DIAGONAL, _P1_GROUPS), ("P2", _DIRECT, _P2_GROUPS))}
_LAYOUTS[1] = _LAYOUTS[0]
_EDGES_IN_P0 = frozenset({1})


_REACH = 3  # the farthest offset of any layout


@functools.lru_cache(maxsize=16)
def _phase_masks(shape, edges: bool = False) -> dict:
    yy, xx = np.indices(shape)
    out = {"P0": (yy % 2 == 0) & (xx % 2 == 0), "P1": (yy % 2 == 1) & (xx % 2 == 1), "P2": (yy + xx) % 2 == 1}
    if edges:
        e = _tile_edge(shape)
        out = {"P0": out["P0"] | e, "P1": out["P1"] & ~e, "P2": out["P2"] & ~e}
    for m in out.values():
        m.setflags(write=False)
    return out


def _phase_mask(name: str, shape, layout: int = 0) -> np.ndarray:
    return _phase_masks(tuple(shape), layout in _EDGES_IN_P0)[name]


@functools.lru_cache(maxsize=16)
def _inside(shape) -> np.ndarray:
    h, w = shape
    inside = np.zeros((h + 2 * _REACH, w + 2 * _REACH), np.int64)
    inside[_REACH:_REACH + h, _REACH:_REACH + w] = 1
    inside = inside.ravel()
    inside.setflags(write=False)
    return inside


class _Grid:
    """A tile padded by _REACH (zeros outside), read at the pixels of one phase shifted by offsets (sums in a fixed
    order: the encoder and the decoder compute the same floats). How many of a pixel's offsets fall inside the tile
    depends on the geometry only: computed once per set of offsets."""

    def __init__(self, shape, sel: np.ndarray):
        h, w = shape
        self.stride = w + 2 * _REACH
        ys, xs = np.nonzero(sel)
        self.ys, self.xs = ys, xs
        self.n = ys.size
        self.flat = (ys + _REACH) * self.stride + xs + _REACH
        self._inside = _inside(tuple(shape))
        self._counts: dict = {}
        self._edge = None
        self.shape = shape

    def counts(self, offsets) -> np.ndarray:
        c = self._counts.get(offsets)
        if c is None:  # all of them but within _REACH of the tile's edge
            c = np.full(self.flat.size, len(offsets), np.int64)
            if self._edge is None:
                h, w = self.shape
                y, x = np.divmod(self.flat, self.stride)
                y, x = y - _REACH, x - _REACH
                self._edge = np.flatnonzero((y < _REACH) | (y >= h - _REACH) | (x < _REACH) | (x >= w - _REACH))
            e = self.flat[self._edge]
            ce = np.zeros(e.size, np.int64)
            for dy, dx in offsets:
                ce += self._inside[e + (dy * self.stride + dx)]
            c[self._edge] = ce
            self._counts[offsets] = c
        return c

    def sums(self, pad: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """(sum over `offsets` of the padded values, how many of them are inside the tile) at the phase's pixels."""
        s = pad[self.flat + (offsets[0][0] * self.stride + offsets[0][1])]
        for dy, dx in offsets[1:]:
            s = s + pad[self.flat + (dy * self.stride + dx)]
        return s, self.counts(offsets)


def _grids(coded: np.ndarray, layout: int) -> list:
    """The _Grid of every phase of `layout` for a tile's coded pixels."""
    return [_Grid(coded.shape, coded & _phase_mask(name, coded.shape, layout)) for name, _, _ in _LAYOUTS[layout]]


def _padded_zeros(shape, dtype) -> np.ndarray:
    h, w = shape
    return np.zeros((h + 2 * _REACH) * (w + 2 * _REACH), dtype)


def _unpadded(pad: np.ndarray, shape) -> np.ndarray:
    h, w = shape
    return pad.reshape(h + 2 * _REACH, w + 2 * _REACH)[_REACH:_REACH + h, _REACH:_REACH + w]


def _weights(F: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares predictor weights (normal equations with a tiny ridge; zeros where they are singular)."""
    A = F.T @ F
    try:
        return np.linalg.solve(A + 1e-9 * (np.trace(A) + 1e-12) * np.eye(len(A)), F.T @ y)
    except np.linalg.LinAlgError:
        return np.zeros(F.shape[1])


def _context(grid: _Grid, mag_pad: np.ndarray, offsets, thresholds) -> np.ndarray:
    """Class of each pixel of the phase: the mean |symbol| of its neighbours at `offsets` inside the tile (in
    quarter steps, integer arithmetic) against `thresholds`; pixels not coded count as 0."""
    s, c = grid.sums(mag_pad, offsets)
    q4 = (4 * s + c // 2) // np.maximum(c, 1)
    return np.searchsorted(np.asarray(thresholds, np.int64), q4, side="right")


def _features(grid: _Grid, rec_pad: np.ndarray, groups) -> list:
    """Per neighbour group, the mean of the reconstructed values inside the tile at the phase's pixels."""
    out = []
    for offsets in groups:
        s, c = grid.sums(rec_pad, offsets)
        out.append(s / np.maximum(c, 1))
    return out


def _encode_context(u: np.ndarray, coded: np.ndarray, thresholds, deadzone: float, layout: int = 0,
                    grids=None):
    """Mode 2 frame of one tile and its reconstructed values (in steps) at the coded pixels: the phases of
    `layout` (_LAYOUTS) in order, the first with one table, each later one predicted from the pixels before it
    (least-squares weights of its neighbour groups, in 1/128, per tile) and coded with one table per class of its
    decoded neighbours' symbol magnitudes (a class present in the tile has a table; a byte per phase flags which).
    Frame: mode, layout, number of thresholds, thresholds; per phase: its weights (int8 each), its class flags
    (the first phase: 1 or 0), its tables; then the range-coded symbols of every group in that order."""
    import constriction

    # the decoded values and symbol magnitudes so far, in the padded layout the neighbour sums read
    rec_pad, mag_pad = _padded_zeros(coded.shape, np.float64), _padded_zeros(coded.shape, np.int64)
    groups, head = [], bytearray([MODE_CONTEXT, layout, len(thresholds)]) + bytes(thresholds)
    grids = _grids(coded, layout) if grids is None else grids
    for (name, offsets, pgroups), grid in zip(_LAYOUTS[layout], grids):
        pred = np.zeros(grid.n)
        us = u[grid.ys, grid.xs]
        if offsets is None:
            parts = [np.ones(grid.n, bool)] if grid.n else []
            head += bytes([len(parts)])
        else:
            feats = _features(grid, rec_pad, pgroups)
            weights = _weights(np.stack(feats, 1), us) if grid.n else np.zeros(len(feats))
            w8 = np.clip(np.rint(128 * np.nan_to_num(weights)), -127, 127).astype(np.int8)
            for wk, f in zip(w8, feats):
                pred += float(wk) / 128.0 * f
            cls = _context(grid, mag_pad, offsets, thresholds)
            present = [k for k in range(len(thresholds) + 1) if (cls == k).any()]
            head += w8.tobytes() + bytes([sum(1 << k for k in present)])
            parts = [cls == k for k in present]
        qs, vs = np.zeros(grid.n, np.int64), np.zeros(grid.n)
        for part in parts:
            g = _group(us[part] - pred[part], deadzone, shifts=offsets is not None)
            groups.append(g)
            head += g.head
            qs[part] = g.q
            vs[part] = pred[part] + g.values()
        rec_pad[grid.flat], mag_pad[grid.flat] = vs, np.minimum(np.abs(qs), 1 << 20)
    enc = constriction.stream.queue.RangeEncoder()
    for g in groups:
        enc.encode(g.idx, _model(g.counts))
    return bytes(head) + join_payload(enc, [g.escapes for g in groups]), _unpadded(rec_pad, coded.shape)[coded]


def _decode_context(buf: np.ndarray, coded: np.ndarray) -> np.ndarray:
    """Inverse of _encode_context: the tile's values in steps (0 where not coded)."""
    import constriction

    if buf.size < 3:
        raise ValueError("residual frame is truncated")
    layout, k = int(buf[1]), int(buf[2])
    if layout not in _LAYOUTS:
        raise ValueError(f"residual context layout {layout} is unknown")
    if k >= MAX_CLASSES or buf.size < 3 + k:
        raise ValueError(f"residual context frame declares {k} thresholds")
    thresholds = [int(v) for v in buf[3:3 + k]]
    if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError("residual context thresholds are not increasing")
    used = 3 + k
    phases = []
    for name, offsets, pgroups in _LAYOUTS[layout]:
        m = len(pgroups)
        if used + m + 1 > buf.size:
            raise ValueError("residual frame is truncated")
        weights = buf[used:used + m].view(np.int8).astype(np.float64) / 128.0
        used += m
        flags = int(buf[used])
        used += 1
        if flags >> (1 if offsets is None else k + 1):
            raise ValueError("residual context flags are invalid")
        tables = []
        for _ in range(bin(flags).count("1")):
            lo, n, counts, offsets_, used = _read_table(buf, used)
            tables.append((lo, n, counts, offsets_))
        phases.append((name, offsets, pgroups, weights, flags, tables))
    n_coded = int(np.count_nonzero(coded))
    dec, esc = split_payload(constriction, bytes(buf[used:]), n_coded)
    rec_pad, mag_pad = _padded_zeros(coded.shape, np.float64), _padded_zeros(coded.shape, np.int64)
    e = 0
    for (name, offsets, pgroups, weights, flags, tables), grid in zip(phases, _grids(coded, layout)):
        pred = np.zeros(grid.n)
        if offsets is None:
            parts = [np.ones(grid.n, bool)] if grid.n else []
            found = len(parts)
        else:
            for wk, f in zip(weights, _features(grid, rec_pad, pgroups)):
                pred += float(wk) * f
            cls = _context(grid, mag_pad, offsets, thresholds)
            present = [c for c in range(k + 1) if (cls == c).any()]
            found = sum(1 << c for c in present)
            parts = [cls == c for c in present]
        if found != flags:
            raise ValueError("residual context flags do not match the tile")
        qs, vs = np.zeros(grid.n, np.int64), np.zeros(grid.n)
        for part, (lo, n, counts, offsets_) in zip(parts, tables):
            q, e = _decode_group(dec, lo, n, counts, int(part.sum()), esc, e)
            qs[part] = q
            vs[part] = pred[part] + _values(q, offsets_)
        rec_pad[grid.flat], mag_pad[grid.flat] = vs, np.minimum(np.abs(qs), 1 << 20)
    rec = _unpadded(rec_pad, coded.shape)
    return rec


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64) / float(1 << PRECISION), perfect=False)


def _read_table(buf: np.ndarray, used: int):
    """(lo, n, counts, offsets in steps, bytes used) of one group header."""
    head, k = _read_varints(buf[used:], 2)
    used += k
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
    return lo, n, counts, offsets, used + m


def _decode_group(dec, lo: int, n: int, counts, count: int, esc: np.ndarray, k: int):
    """(symbols, escapes used) of one group."""
    return decode_escaped(dec, _model(counts), count, lo, n - 1, esc, k, "residual ")


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
    mode = int(buf[0])
    if mode == MODE_PLAIN:
        lo, n, counts, offsets, used = _read_table(buf, 1)
        dec, esc = split_payload(constriction, bytes(buf[used:]), n_coded)
        q, _ = _decode_group(dec, lo, n, counts, n_coded, esc, 0)
        out[coded] = (_values(q, offsets) * step).astype(np.float32)
        return out
    if mode == MODE_CONTEXT:
        out[coded] = (_decode_context(buf, coded)[coded] * step).astype(np.float32)
        return out
    if mode not in (MODE_CHECKERBOARD, MODE_CHECKERBOARD_32) or buf.size < 2:
        raise ValueError(f"residual mode {mode} is unknown")
    alpha = float(buf[1:2].view(np.int8)[0]) / 128.0
    black = _black(coded.shape, mode)
    a_sel, b_sel = coded & black, coded & ~black
    la, na, ca, oa, used = _read_table(buf, 2)
    lb, nb_, cb, ob, used = _read_table(buf, used)
    dec, esc = split_payload(constriction, bytes(buf[used:]), n_coded)
    qa, k = _decode_group(dec, la, na, ca, int(a_sel.sum()), esc, 0)
    qb, _ = _decode_group(dec, lb, nb_, cb, int(b_sel.sum()), esc, k)
    rec = np.zeros(coded.shape, np.float64)
    rec[a_sel] = _values(qa, oa)
    pred = alpha * _neighbour_mean(rec, a_sel)[b_sel]
    rec[b_sel] = pred + _values(qb, ob)
    out[coded] = (rec[coded] * step).astype(np.float32)
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
