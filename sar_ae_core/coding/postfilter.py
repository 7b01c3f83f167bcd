"""The post-filter: a small linear filter the encoder fits on each band of a file's own reconstruction and stores in
the header (`postfilter`), which the decoder applies to the reconstruction in dB (the network's output plus the
residual layer, escapes in place) before it writes it — an adaptive loop filter in the sense of video coding.

The filter is 5 × 5 and point-symmetric (w(dy, dx) = w(−dy, −dx): a centre tap, 12 pair taps) plus an offset, all
integers in units of 1/SCALE (dB for the offset), so the decoder needs no float parameters: 13 multiplies and 25
additions per pixel (0.03 kMAC; with a bright gain 14 more additions, a max and a multiply). At the raster's edges
the reconstruction is mirrored (numpy's 'reflect'), the same for a window decode as for the whole raster; escaped
pixels (kept exactly) keep their values, invalid ones stay nodata.

Two fits (`fit`):

- `mse`: least squares against the source's dB values over its valid pixels (the Wiener filter of the
  reconstruction): what the networks, trained on other data, leave on this raster's spectrum;
- `enl`: the same, subject to the reconstruction keeping the source's speckle in its homogeneous areas — the ENL
  ratio of `assess` (linear intensity, pixels whose 15 × 15 coefficient of variation is below 1.5 × its 10th
  percentile) at most ENL_MAX. Minimising ‖y − Xw‖² − μ·var_H(Xw) for μ ≥ 0 (a Lagrange multiplier on the filtered
  variance in the homogeneous areas) gives the family of filters from the Wiener filter (μ = 0) towards ones that
  put the speckle contrast back; μ is searched (bisection) for the smallest that meets ENL_MAX. The family also
  has a bright gain β (format 3.4, a 15th value): the decoder adds β·max(0, x − the 5 × 5 mean) (`bright_excess`),
  which lifts the speckle peaks that set the ENL of linear intensity; each β of BRIGHT_GAINS gets its own μ, and the
  least error wins. The ENL is counted on the pixels as the decoder writes them (escapes kept, the rest clipped to
  the file's range). Where the bound holds without a filter, one is kept only if it lowers the error by more than
  MIN_ERROR_GAIN and, in `refine.add_postfilter`, lowers the EPI by at most EPI_PER_ERROR times that gain
  (`edge_fidelity`, `edges_outweigh`).

Both accumulate their normal equations window by window (memory does not grow with the raster; the homogeneous
pixels for the ENL are a fixed-stride sample of at most HOM_SAMPLE).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from sar_ae_core.errors import SarInputError

RADIUS = 2
#: the pair taps' offsets (the other half of each pair is the negated offset)
OFFSETS = tuple((dy, dx) for dy in range(-RADIUS, RADIUS + 1) for dx in range(-RADIUS, RADIUS + 1) if (dy, dx) > (0, 0))
N_TAPS = 1 + len(OFFSETS) + 1  # centre, pairs, offset
SCALE = 4096
MAX_TAP = 1 << 20          # |tap| / SCALE up to 256
MAX_OFFSET = 400 * SCALE   # dB
MAX_BRIGHT = 4 * SCALE     # the bright gain (format 3.4)
#: the bright gains the `enl` fit tries (`bright_excess`): each with its own taps and Lagrange multiplier
BRIGHT_GAINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
#: the fit `enl` keeps the ENL ratio of the homogeneous areas at most this (the quality target is 0.85–1.15)
ENL_MAX = 1.14
#: a filter the ENL bound does not need is kept only if it lowers the error by more than this share (a filter's
#: smoothing costs edge fidelity — EPI — that a hundredth of a dB does not pay for)
MIN_ERROR_GAIN = 0.005
#: ... and only if it lowers the EPI by at most this times the share of the error it takes away (0.001 EPI for 1 %
#: of the MSE, 0.04 dB): both are the quality targets' (EPI at least JPEG2000's, PSNR 0.5 dB above it)
EPI_PER_ERROR = 0.1
#: the `enl` fit's filter may cost at most this times the unfiltered reconstruction's error (0.41 dB): where the
#: bound is out of reach (a reconstruction far smoother than its source), the family is followed only so far
ENL_ERROR_CAP = 1.10
#: `auto` fits `enl` from this many bits per pixel, `mse` below (where no codec keeps speckle)
ENL_FROM_BPP = 0.5
MODES = ("auto", "enl", "mse", "off")
#: the filter is stored only where its header bytes are at most this share of the file's: a least-squares fit must
#: pay for itself in error (small rasters at low rates spend the bytes better on the latents); a fit that keeps the
#: speckle is worth a little more
MAX_SHARE = {"mse": 0.02, "enl": 0.04}
#: ... and for an `enl` filter the user asked for by name (`--post-filter enl`): keeping the speckle is their choice,
#: so small files get it too (a 100 × 100 RTC chip at 0.5 bpp: its filter is ~5 % of the file; held-out OPERA chips
#: at 0.5 bpp, ENL ratio 1.52–2.80 → 1.14–1.25 for 0.2–0.6 dB of PSNR)
MAX_SHARE_ASKED = 0.15


def resolve(mode: str, bpp: float) -> str:
    """'auto' → 'enl' from ENL_FROM_BPP bits per pixel, 'mse' below; other modes as they are."""
    return ("enl" if bpp >= ENL_FROM_BPP else "mse") if mode == "auto" else mode


def pays(mode: str, bpp: float, file_bytes: float, bands: int, header=None, asked: bool = True) -> bool:
    """Whether a filter of `mode` (resolved at `bpp`) is worth its header bytes in a file of `file_bytes`: at most
    MAX_SHARE of them, MAX_SHARE_ASKED for `enl` named by the user (`asked`)."""
    m = resolve(mode, bpp)
    share = MAX_SHARE_ASKED if mode == "enl" and asked else MAX_SHARE.get(m, 0.0)
    return m != "off" and header_bytes(header or TYPICAL_HEADER, bands) <= share * file_bytes
#: a band is filtered only with at least this many valid pixels
MIN_PIXELS = 1024
HOM_SAMPLE = 100_000
CV_WINDOW = 15


def check_mode(mode) -> str:
    from sar_ae_core.options import choice_option

    return choice_option("--post-filter", mode, MODES)


def _features(padded: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    """The filter's inputs for the h × w centre of a block padded by RADIUS: the centre and the pair sums."""
    r = RADIUS
    out = [padded[r:r + h, r:r + w]]
    for dy, dx in OFFSETS:
        out.append(padded[r + dy:r + dy + h, r + dx:r + dx + w] + padded[r - dy:r - dy + h, r - dx:r - dx + w])
    return out


def apply(padded: np.ndarray, taps, rows: int = 8) -> np.ndarray:
    """The filtered h × w centre of a float32 block padded by RADIUS on every side (mirrored at the raster's edges,
    the neighbouring pixels elsewhere), `rows` rows at a time (the temporaries stay in the CPU's cache). With a
    bright gain (taps[N_TAPS]), its part of each pixel's excess over the 5 × 5 mean is added (`bright_excess`)."""
    r = RADIUS
    h, w = padded.shape[0] - 2 * r, padded.shape[1] - 2 * r
    t = (np.asarray(taps, np.float64) / SCALE).astype(np.float32)
    bright = len(taps) > N_TAPS and taps[N_TAPS] != 0
    x = padded.astype(np.float32, copy=False)
    out = np.empty((h, w), np.float32)
    tmp = np.empty((rows, w), np.float32)
    box = np.empty((rows, w), np.float32) if bright else None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        o, tm = out[y0:y1], tmp[:y1 - y0]
        centre = x[r + y0:r + y1, r:r + w]
        np.multiply(centre, t[0], out=o)
        if bright:
            bx = box[:y1 - y0]
            bx[...] = centre
        for k, (dy, dx) in enumerate(OFFSETS):
            np.add(x[r + y0 + dy:r + y1 + dy, r + dx:r + dx + w], x[r + y0 - dy:r + y1 - dy, r - dx:r - dx + w], out=tm)
            if bright:
                bx += tm
            tm *= t[k + 1]
            o += tm
        o += t[N_TAPS - 1]
        if bright:  # bx: the 25 pixels' sum → max(0, centre − mean) · gain
            bx *= np.float32(-1.0 / (2 * RADIUS + 1) ** 2)
            bx += centre
            np.maximum(bx, 0, out=bx)
            bx *= t[N_TAPS]
            o += bx
    return out


def bright_excess(features: list[np.ndarray]) -> np.ndarray:
    """max(0, centre − the 5 × 5 mean) from `_features` (the centre and the 12 pair sums: the 25 pixels' sum).

    Why: the ENL of SAR intensity is set by its bright speckle peaks (linear intensity: its variance is the upper
    tail's), which a least-squares reconstruction in dB flattens most; lifting the peaks above the local mean puts
    the speckle contrast back at a fraction of the error a symmetric sharpening costs (single-look TerraSAR-X at 0.5
    bpp, ENL ratio at most 1.14: RMSE 4.22 dB against 4.32 for the 5 × 5 taps alone, EPI 0.873 against 0.871)."""
    total = features[0].copy()
    for f in features[1:1 + len(OFFSETS)]:
        total += f
    return np.maximum(features[0] - total / (2 * RADIUS + 1) ** 2, 0.0)


def pad_block(block: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """`block` padded by the given widths, mirrored ('reflect'): only at the raster's own edges."""
    if top or bottom or left or right:
        return np.pad(block, ((top, bottom), (left, right)), mode="reflect")
    return block


def usable(width: int, height: int) -> bool:
    return width > 2 * RADIUS and height > 2 * RADIUS


# ---------------------------------------------------------------------------------------------- header field

def _pack(taps) -> str:
    """One band's taps as text: zigzag LEB128 of (centre − SCALE, the pair taps, the offset), base85."""
    import base64

    out = bytearray()
    for i, v in enumerate(taps):
        v = int(v) - (SCALE if i == 0 else 0)
        z = (v << 1) if v >= 0 else ((-v) << 1) - 1
        while True:
            out.append((z & 0x7F) | (0x80 if z > 0x7F else 0))
            z >>= 7
            if not z:
                break
    return base64.b85encode(bytes(out)).decode("ascii")


def _unpack(text: str) -> list[int]:
    import base64

    raw = base64.b85decode(text.encode("ascii"))
    vals, z, shift = [], 0, 0
    for byte in raw:
        z |= (byte & 0x7F) << shift
        shift += 7
        if shift > 35:
            raise ValueError("a tap is too long")
        if not byte & 0x80:
            vals.append((z >> 1) if not z & 1 else -((z + 1) >> 1))
            z, shift = 0, 0
    if shift or len(vals) not in (N_TAPS, N_TAPS + 1):
        raise ValueError(f"{len(vals)} taps, not {N_TAPS} (or {N_TAPS + 1} with a bright gain)")
    vals[0] += SCALE
    return vals


def to_header(taps_per_band: list) -> list:
    """The header's `postfilter`: per band the packed taps (`_pack`, ~30 characters) or null."""
    return [None if t is None else _pack(t) for t in taps_per_band]


def from_header(h, bands: int, path: str) -> Optional[list]:
    """The taps per band (None for an unfiltered band) of a header's `postfilter`, or None without one; a malformed
    field is the file's input error."""
    if h is None:
        return None

    def bad(problem):
        raise SarInputError(path, f"header field 'postfilter' {problem} (file is damaged or not from this codec)")

    if not isinstance(h, list) or len(h) != bands:
        bad(f"must list one filter (or null) per band ({bands})")
    out = []
    for t in h:
        if t is None:
            out.append(None)
            continue
        if not isinstance(t, str) or len(t) > 200:
            bad("must hold a packed filter text per filtered band")
        try:
            taps = _unpack(t)
        except ValueError as exc:
            bad(f"cannot be unpacked ({exc})")
        if any(abs(v) > MAX_TAP for v in taps[:N_TAPS - 1]) or abs(taps[N_TAPS - 1]) > MAX_OFFSET or \
                (len(taps) > N_TAPS and not 0 <= taps[N_TAPS] <= MAX_BRIGHT):
            bad("has a tap out of range")
        out.append(taps)
    return out if any(t is not None for t in out) else None


#: a header of the size and kind the codec writes (the filter's cost is measured against it before a file exists)
TYPICAL_HEADER = {
    "codec": {"gain": 0.8133, "id": "factorized-range-adaptive", "precision": 16},
    "created_by": "sar_ae_core 0.1.0", "georef": {"crs": "EPSG:32631", "transform": [10.0, 0.0, 600000.0, 0.0, -10.0,
                                                                                     4800000.0]},
    "mask": {"above_db": 8.0, "id": "packbits-zstd-escapes", "step_db": 0.05},
    "model": {"config": {"latent_channels": 96}, "name": "sarae-q2", "sha256": "b5e52e781b64c21f"},
    "scaling": {"clip_method": "fixed", "noise_floor": 1e-10, "vmax_db": 8.0, "vmin_db": -45.0},
    "source": {"band_names": ["VV"], "bands": [1], "dtype": "float32", "height": 512, "name": "scene_vv_db.tif",
               "nodata": None, "tags": {"AREA_OR_POINT": "Area"}, "units": "db", "width": 512},
    "tiling": {"downsample": 8, "halo_cells": 2, "tile": 256},
}


def header_bytes(header: dict, bands: int) -> int:
    """The extra bytes a post-filter adds to this header (measured with typical taps, compressed as the container
    compresses headers)."""
    from sar_ae_core.coding.container import FORMAT_MAJOR, compact_header, _header_dict
    import json
    import zstandard

    def size(h):
        text = json.dumps(compact_header(h), sort_keys=True, separators=(",", ":")).encode()
        return len(zstandard.ZstdCompressor(level=19, dict_data=_header_dict(FORMAT_MAJOR), write_checksum=False,
                                            write_content_size=True, write_dict_id=False).compress(text))

    rng = np.random.default_rng(0)
    typical = [[int(v) for v in np.r_[3300 + rng.integers(0, 400), rng.integers(-300, 300, len(OFFSETS)),
                                      rng.integers(-4000, 4000)]] for _ in range(bands)]
    return size({**header, "postfilter": to_header(typical)}) - size(header)


# ---------------------------------------------------------------------------------------------------- the fit

class _Band:
    def __init__(self):
        self.A = np.zeros((N_TAPS + 1, N_TAPS + 1))  # the taps' features, then the bright excess
        self.b = np.zeros(N_TAPS + 1)
        self.n = 0
        self.yy = 0.0
        self.nh = 0
        self.hx: list[np.ndarray] = []
        self.hy: list[np.ndarray] = []
        self.hk: list[np.ndarray] = []  # which of the homogeneous sample the decoder keeps as it is


#: rasters of more pixels than this are fitted on FIT_WINDOWS tile-aligned windows spread over them (a fixed cost
#: instead of a decode of the whole raster: 14 numbers need far fewer pixels)
FIT_PIXELS = 2 << 20
FIT_WINDOWS = 8
FIT_WINDOW = 512


def fit_windows(width: int, height: int, tile: int) -> Optional[list]:
    """The windows (col, row, width, height) a large raster's filter is fitted on, or None to fit on all of it."""
    if width * height <= FIT_PIXELS:
        return None
    side = max(tile, FIT_WINDOW // tile * tile)
    w, h = min(side, width), min(side, height)
    n = int(math.ceil(math.sqrt(FIT_WINDOWS)))
    out = []
    for i in range(n):
        for j in range(n):
            if len(out) == FIT_WINDOWS:
                break
            c = int(round((width - w) * (j + 0.5) / n / tile)) * tile
            r = int(round((height - h) * (i + 0.5) / n / tile)) * tile
            out.append((min(c, width - w), min(r, height - h), w, h))
    return sorted(set(out))


def fit(source_path, pieces, source: dict, mode: str, *, block: int = 512,
        progress: Optional[Callable] = None, clip: Optional[tuple] = None) -> tuple[list, list]:
    """Taps per band (None where a band is too small or has too few valid pixels) fitted against the source on the
    reconstruction as the decoder has it before the filter (dB of every pixel), given as `pieces`: (GeoTIFF path,
    col, row[, kept]) of windows of it (the whole raster: one piece at 0, 0), `kept` a bool array (bands × the
    piece's height × width) of the pixels the decoder keeps as they are (escapes) or None; and per band whether the
    reconstruction without a filter is above the ENL bound. The kept pixels are left out of the least squares and
    enter the ENL with their own values, the filtered ones clipped to `clip` (the file's dB range) as the decoder
    clips them: the brightest 0.1 % are escapes, and a fit that counted them as filtered would put the speckle
    contrast back in them alone (single-look TerraSAR-X at 0.5 bpp: ENL ratio 1.12 on the fit's model, 1.28
    decoded). A piece's edge inside the raster has no context beyond it: the pixels within the filter's (and the
    homogeneity window's) reach of it are left out of the fit."""
    import rasterio

    from sar_ae_core.io.raster import Window, open_raster
    from sar_ae_core.quality import metrics as M
    from sar_ae_core.scaling import raw_to_db, valid_mask

    with open_raster(source_path, bands=source["bands"], units=source["units"]) as src:
        H, W, nb = src.height, src.width, src.count
        if not usable(W, H):
            return [None] * nb, [False] * nb
        halo = max(RADIUS, CV_WINDOW // 2) if mode == "enl" else RADIUS
        plan = []
        for path, c0, r0, *rest in pieces:
            with rasterio.open(path) as ds:
                pw, ph = ds.width, ds.height
            wins = list(M.iter_map_windows(ph, pw, block, halo))
            plan.append((path, c0, r0, pw, ph, wins, rest[0] if rest else None))
        steps = sum(len(x[5]) for x in plan) * (2 if mode == "enl" else 1)
        done = 0

        def tick():
            nonlocal done
            done += 1
            if progress is not None:
                progress(done / steps, "fitting")

        def inside(c0, r0, pw, ph, win, reach):
            """Core pixels with `reach` pixels of true context (the raster's mirrored edge counts as context)."""
            (cr, cc), (rr, rc) = win.core, win.read
            ys = np.arange(cr.start, cr.stop) + rr.start
            xs = np.arange(cc.start, cc.stop) + rc.start
            oky = ((ys >= reach) | (r0 == 0)) & ((ys < ph - reach) | (r0 + ph == H))
            okx = ((xs >= reach) | (c0 == 0)) & ((xs < pw - reach) | (c0 + pw == W))
            return oky[:, None] & okx[None, :]

        def source_block(c0, r0, win):
            rows, cols = win.read
            w = Window(c0 + cols.start, r0 + rows.start, cols.stop - cols.start, rows.stop - rows.start)
            raw = src.read(w)
            return raw, valid_mask(raw, src.units, src.nodata)

        thr = None
        cv_cache: dict = {}
        if mode == "enl":  # pass 1: the homogeneity threshold (assess's rule), from the source alone
            cvs = [[] for _ in range(nb)]
            for k, (path, c0, r0, pw, ph, wins, _) in enumerate(plan):
                for i, win in enumerate(wins):
                    raw, ok = source_block(c0, r0, win)
                    keep = inside(c0, r0, pw, ph, win, CV_WINDOW // 2)
                    for b in range(nb):
                        cv, cand = M.local_cv_window(np.power(10.0, raw_to_db(np.where(ok[b], raw[b], 1), src.units)
                                                              / 10.0), ok[b], CV_WINDOW)
                        usable_cv = cand[win.core] & keep
                        c = cv[win.core][usable_cv]
                        cvs[b].append(c[:: max(1, c.size // 20000)])
                        # kept for pass 2 (at most FIT_PIXELS per band): NaN where the pixel cannot be homogeneous
                        cv_cache[(k, i, b)] = np.where(usable_cv, cv[win.core], np.nan).astype(np.float32)
                    tick()
            thr = []
            for b in range(nb):
                c = np.concatenate(cvs[b]) if cvs[b] else np.zeros(0)
                thr.append(M.HOMOGENEOUS_CV_FACTOR * float(np.quantile(c, M.HOMOGENEOUS_QUANTILE)) if c.size else 0.0)
        acc = [_Band() for _ in range(nb)]
        n_px = sum(pw * ph for _, _, _, pw, ph, _, _ in plan)
        stride = max(1, int(0.2 * n_px) // HOM_SAMPLE)
        for k, (path, c0, r0, pw, ph, wins, kept) in enumerate(plan):
            with rasterio.open(path) as rec:
                for i, win in enumerate(wins):
                    raw, ok = source_block(c0, r0, win)
                    r_db = raw_to_db(np.where(ok, raw, 1), src.units)
                    rows, cols = win.read
                    x = rec.read(window=((rows.start, rows.stop), (cols.start, cols.stop))).astype(np.float64)
                    (cr, cc) = win.core
                    h, wd = cr.stop - cr.start, cc.stop - cc.start
                    # the core padded by RADIUS: the read window's pixels, mirrored where it is the piece's edge
                    top, left = cr.start - RADIUS, cc.start - RADIUS
                    keep = inside(c0, r0, pw, ph, win, RADIUS)
                    core_rows = slice(rows.start + cr.start, rows.start + cr.stop)
                    core_cols = slice(cols.start + cc.start, cols.start + cc.stop)
                    for b in range(nb):
                        fixed = None if kept is None else kept[b][core_rows, core_cols]
                        xb = pad_block(x[b], max(0, -top), max(0, (cr.stop + RADIUS) - x.shape[1]),
                                       max(0, -left), max(0, (cc.stop + RADIUS) - x.shape[2]))
                        xb = xb[max(0, top):max(0, top) + h + 2 * RADIUS, max(0, left):max(0, left) + wd + 2 * RADIUS]
                        counted = ok[b][win.core] & keep
                        v = counted if fixed is None else counted & ~fixed
                        if not counted.any():
                            continue
                        feats = _features(xb, h, wd) + [np.ones((h, wd))]
                        feats.append(bright_excess(feats))
                        X = np.stack([f[v] for f in feats], 1)
                        y = r_db[b][win.core][v]
                        a = acc[b]
                        a.A += X.T @ X
                        a.b += X.T @ y
                        a.yy += float(y @ y)
                        a.n += len(y)
                        if thr is not None and thr[b] > 0:
                            with np.errstate(invalid="ignore"):
                                hom = (cv_cache.pop((k, i, b)) < thr[b]) & counted
                            if hom.any():
                                a.nh += int(hom.sum())
                                sel = np.flatnonzero(hom.ravel())[::stride]
                                a.hx.append(np.stack([f.ravel()[sel] for f in feats], 1).astype(np.float32))
                                a.hy.append(r_db[b][win.core].ravel()[sel].astype(np.float32))
                                a.hk.append(np.zeros(len(sel), bool) if fixed is None else fixed.ravel()[sel])
                    tick()
    solved = [_solve(a, mode, clip) for a in acc]
    return [t for t, _ in solved], [c for _, c in solved]


def edge_fidelity(source_path, pieces, source: dict, taps_per_band: list, clip: Optional[tuple] = None) -> list:
    """Per band (EPI of the reconstruction without the filter, EPI with it, the MSE in dB² without and with it)
    against the source over `pieces` (as `fit` takes them; each read whole: at most FIT_PIXELS, or FIT_WINDOWS
    windows of FIT_WINDOW²), the filter applied as the decoder applies it (the piece mirrored at its edges, clipped
    to `clip`, kept pixels as they are); None for a band without taps. The sums of `metrics.epi` are pooled over the
    pieces."""
    import rasterio

    from sar_ae_core.io.raster import Window, open_raster
    from sar_ae_core.quality import metrics as M
    from sar_ae_core.scaling import raw_to_db, valid_mask

    nb = len(taps_per_band)
    sums = [np.zeros((2, 5)) for _ in range(nb)]  # (without, with) × (Σ gR·gT, Σ gR², Σ gT², Σ error², n)
    with open_raster(source_path, bands=source["bands"], units=source["units"]) as src:
        for path, c0, r0, *rest in pieces:
            kept = rest[0] if rest else None
            with rasterio.open(path) as ds:
                pre = ds.read().astype(np.float32)
            raw = src.read(Window(c0, r0, pre.shape[2], pre.shape[1]))
            ok = valid_mask(raw, src.units, src.nodata)
            ref = raw_to_db(np.where(ok, raw, 1), src.units)
            for b, taps in enumerate(taps_per_band):
                if taps is None:
                    continue
                out = apply(np.pad(pre[b], RADIUS, mode="reflect"), taps)
                if clip is not None:
                    np.clip(out, clip[0], clip[1], out=out)
                if kept is not None:
                    out[kept[b]] = pre[b][kept[b]]
                for k, test in enumerate((pre[b], out)):
                    gr, gt, gv = M._gradient_pair(ref[b].astype(np.float64), test.astype(np.float64), ok[b])
                    x, y = gr[gv], gt[gv]
                    err = (test - ref[b])[ok[b]].astype(np.float64)
                    sums[b][k] += (float(x @ y), float(x @ x), float(y @ y), float(err @ err), err.size)
    out = []
    for b, taps in enumerate(taps_per_band):
        if taps is None:
            out.append(None)
            continue
        e = [float(s[0] / math.sqrt(s[1] * s[2])) if s[1] * s[2] > 0 else float("nan") for s in sums[b]]
        m = [float(s[3] / s[4]) if s[4] else float("nan") for s in sums[b]]
        out.append((e[0], e[1], m[0], m[1]))
    return out


def edges_outweigh(fidelity) -> bool:
    """Whether a filter's loss of edge fidelity outweighs its error gain ((EPI, EPI, MSE, MSE) without and with it,
    from `edge_fidelity`): an EPI lower by more than EPI_PER_ERROR times the share of the error it takes away."""
    e0, e1, m0, m1 = fidelity
    return bool(e0 - e1 > EPI_PER_ERROR * max(0.0, (m0 - m1) / m0)) if m0 > 0 else False


def _quantized(w: np.ndarray) -> list[int]:
    q = np.rint(np.asarray(w, np.float64) * SCALE)
    q[:N_TAPS - 1] = np.clip(q[:N_TAPS - 1], -MAX_TAP, MAX_TAP)
    q[N_TAPS - 1] = np.clip(q[N_TAPS - 1], -MAX_OFFSET, MAX_OFFSET)
    if len(q) > N_TAPS:
        q[N_TAPS] = np.clip(q[N_TAPS], 0, MAX_BRIGHT)
        if q[N_TAPS] == 0:
            q = q[:N_TAPS]
    return [int(v) for v in q]


def _enl(lin: np.ndarray) -> float:
    var = float(lin.var())
    return float(lin.mean()) ** 2 / var if var > 0 else math.inf


def _solve(a: _Band, mode: str, clip: Optional[tuple] = None):
    """(taps or None, whether the reconstruction without a filter is above the ENL bound: the filter is there to
    put speckle back, not only to lower the error)."""
    w, constrained = _solve_float(a, mode, clip)
    return (None if w is None else _quantized(w)), constrained


def _solve_float(a: _Band, mode: str, clip: Optional[tuple] = None):
    """(weights: N_TAPS floats, or N_TAPS + 1 with a bright gain; or None) and whether the ENL bound needed the fit."""
    if a.n < MIN_PIXELS:
        return None, False
    n = N_TAPS
    A_ext, b_ext = a.A / a.n, a.b / a.n  # over the taps' features and the bright excess (the last column)
    A, b, Ar = A_ext[:n, :n], b_ext[:n], A_ext[:n, n]
    ridge = 1e-9 * np.trace(A) * np.eye(n)
    try:
        w0 = np.linalg.solve(A + ridge, b)
    except np.linalg.LinAlgError:
        return None, False
    if not np.all(np.isfinite(w0)):
        return None, False

    def mse(v):  # the filtered reconstruction's mean squared error (dB²) over the fitted pixels
        v = np.r_[v, 0.0] if len(v) == n else v
        return float(v @ A_ext @ v - 2 * v @ b_ext) + a.yy / a.n

    identity = np.zeros(n)
    identity[0] = 1.0
    e0 = mse(identity)

    def for_the_error(w):  # a filter the bound does not need: kept only if it lowers the error enough
        return w if w is not None and e0 - mse(w) > MIN_ERROR_GAIN * e0 else None

    if mode != "enl" or not a.hx:
        return for_the_error(w0), False
    X, y = np.concatenate(a.hx).astype(np.float64), np.concatenate(a.hy).astype(np.float64)
    if len(y) < 64:
        return w0, False
    e_ref = _enl(np.power(10.0, y / 10.0))
    if not math.isfinite(e_ref) or e_ref <= 0:
        return w0, False
    kept = np.concatenate(a.hk)
    clip_lo, clip_hi = clip if clip is not None else (-400.0, 400.0)
    Xf = X[~kept]
    if len(Xf) < 64:
        return w0, False
    Xc = Xf - Xf.mean(0)
    C_ext = Xc.T @ Xc / len(y) * (a.nh / a.n)  # the variance over the homogeneous areas, on the scale of the MSE
    C, Cr = C_ext[:n, :n], C_ext[:n, n]

    def ratio(v):
        db = np.where(kept, X[:, 0], np.clip(X[:, :len(v)] @ v, clip_lo, clip_hi))  # kept pixels: unfiltered
        return _enl(np.power(10.0, db / 10.0)) / e_ref

    needed = ratio(identity) > ENL_MAX  # the reconstruction itself smooths the homogeneous areas
    w = w0 if ratio(w0) <= ENL_MAX else _constrained(A, b, Ar, C, Cr, ridge, ratio, mse, ENL_ERROR_CAP * e0)
    if not needed:  # the bound holds without a filter: one that meets it too is for the error alone
        return for_the_error(w), False
    return (w if w is not None else w0), needed


def _constrained(A, b, Ar, C, Cr, ridge, ratio, mse, cap):
    """The least-error filter meeting ENL_MAX over the bright gains BRIGHT_GAINS, each with its multiplier μ; where
    none meets it, the one closest to it — of those whose error is at most `cap` (None if none is)."""
    best = None
    for beta in BRIGHT_GAINS:
        def solve(mu):
            try:
                M_ = A - mu * C
                np.linalg.cholesky(M_ + ridge)
                w = np.linalg.solve(M_ + ridge, b - beta * Ar + mu * beta * Cr)
            except np.linalg.LinAlgError:
                return None
            return np.r_[w, beta] if beta else w

        v = _lagrange(solve, ratio, lambda w: mse(w) <= cap)
        if v is not None and np.all(np.isfinite(v)) and mse(v) <= cap:
            meets = ratio(v) <= ENL_MAX
            key = (not meets, mse(v) if meets else ratio(v))  # meeting the bound first, then the error
            if best is None or key < best[0]:
                best = (key, v)
    return best[1] if best is not None else None


def _lagrange(solve, ratio, affordable=lambda w: True):
    """The filter of the smallest multiplier μ (bisection) whose ENL ratio meets ENL_MAX, or the one of the largest
    tried when none does (as far towards it as the family goes while `affordable`); None when not even μ = 0
    solves."""
    lo, hi, w_hi = 0.0, None, None
    w_lo = solve(0.0)
    if w_lo is None:
        return None
    if ratio(w_lo) <= ENL_MAX:
        return w_lo
    mu = 0.05
    while mu < 64:  # bracket: the smallest tried μ that meets the target
        w = solve(mu)
        if w is None:
            break
        if ratio(w) <= ENL_MAX:
            hi, w_hi = mu, w
            break
        if not affordable(w):  # short of the bound and already too costly
            break
        lo, w_lo, mu = mu, w, mu * 2
    if hi is None:
        return w_lo
    for _ in range(14):
        m = 0.5 * (lo + hi)
        w = solve(m)
        if w is not None and ratio(w) <= ENL_MAX:
            hi, w_hi = m, w
        else:
            lo = m
            if w is not None and affordable(w):
                w_lo = w
    return w_hi if affordable(w_hi) else w_lo


# ------------------------------------------------------------------------------------------------ the decoder

class RowStage:
    """Between the decoder's units and the writer: collects a band's decoded dB rows (over `decoded_region()`, the
    requested region widened by RADIUS where the raster goes on) in a buffer of one tile row plus the 2·RADIUS rows of
    context above it, filters each run of rows as soon as the rows below it are there, and hands the final rows of
    the requested region to `emit(db, valid, escaped, col, row)` (raster coordinates; in column chunks of CHUNK), the
    filtered values clipped to `clip` (the file's dB range: the source's pixels outside it are escapes, kept as they
    are). With `threaded`, the filter and the writes of a run go on the stage's own thread (on a copy of the run)
    while the decoder fills the buffer with the next tile row; `close()` waits for them. Memory: about 2 × 5 bytes
    per pixel of one tile row of the decoded width, whatever the raster's height."""

    CHUNK = 2048

    def __init__(self, taps, region, raster_width: int, raster_height: int, emit, clip=None, threaded: bool = True,
                 tile: int = 256):
        from concurrent.futures import ThreadPoolExecutor

        self.taps = taps
        self.clip = clip
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="postfilter") if threaded else None
        self.pending: list = []
        self.col0, self.row0, self.width, self.height = region
        self.W, self.H = raster_width, raster_height
        self.x0, self.x1 = max(self.col0 - RADIUS, 0), min(self.col0 + self.width + RADIUS, self.W)
        self.y0, self.y1 = max(self.row0 - RADIUS, 0), min(self.row0 + self.height + RADIUS, self.H)
        self.emit = emit
        wd = self.x1 - self.x0
        rows = tile + 2 * RADIUS
        self.db = np.zeros((rows, wd), np.float32)
        self.valid = np.zeros((rows, wd), bool)
        self.escaped = None  # float32 (NaN where none) once a row has escapes
        self.buf_start, self.buf_end = self.y0, self.y0  # raster rows held: [buf_start, buf_end)
        self.next_row = self.row0

    def decoded_region(self):
        return self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0

    def put(self, y0: int, y1: int, a: int, b: int, db, valid, escaped) -> None:
        """One decoded block (raster rows [y0, y1), columns [a, b)) of the current tile row."""
        r0, r1 = y0 - self.buf_start, y1 - self.buf_start
        c0, c1 = a - self.x0, b - self.x0
        self.db[r0:r1, c0:c1] = db
        self.valid[r0:r1, c0:c1] = valid
        if escaped is not None and self.escaped is None:
            self.escaped = np.full(self.db.shape, np.nan, np.float32)
        if self.escaped is not None:
            self.escaped[r0:r1, c0:c1] = np.nan if escaped is None else escaped
        self.buf_end = max(self.buf_end, y1)

    def row_done(self) -> None:
        """The current tile row is complete: filter and emit what has its context now."""
        last = self.buf_end >= self.y1
        end = min(self.row0 + self.height, self.buf_end if last else self.buf_end - RADIUS)
        s = self.next_row
        if end > s:
            lo, hi = s - RADIUS, end + RADIUS
            a0, a1 = max(lo, 0), min(hi, self.H)
            c_lo, c_hi = self.col0 - RADIUS, self.col0 + self.width + RADIUS
            cols = slice(max(c_lo, 0) - self.x0, min(c_hi, self.W) - self.x0)
            rows = slice(a0 - self.buf_start, a1 - self.buf_start)
            pads = (max(0, -lo), max(0, hi - self.H), max(0, -c_lo), max(0, c_hi - self.W))
            block = self.db[rows, cols]
            rs = slice(s - self.buf_start, end - self.buf_start)  # the run, the requested columns
            cs = slice(self.col0 - self.x0, self.col0 + self.width - self.x0)
            valid = self.valid[rs, cs]
            esc = None if self.escaped is None else self.escaped[rs, cs]
            if self.pool is None:
                self._process(block, pads, esc, valid, s)
            else:  # the buffer is refilled meanwhile: the job gets its own copy
                self._wait(0)
                self.pending.append(self.pool.submit(self._process, block.copy(), pads, None if esc is None else
                                                     esc.copy(), valid.copy(), s))
            self.next_row = end
        # keep the 2·RADIUS rows above the next tile row (its filter's context), at the buffer's top
        keep_from = max(self.next_row - RADIUS, self.buf_start)
        n = self.buf_end - keep_from
        k = keep_from - self.buf_start
        if n > 0 and k > 0:
            self.db[:n] = self.db[k:k + n].copy()
            self.valid[:n] = self.valid[k:k + n].copy()
            if self.escaped is not None:
                self.escaped[:n] = self.escaped[k:k + n].copy()
        self.buf_start, self.buf_end = keep_from, keep_from + max(n, 0)

    def _process(self, block, pads, esc, valid, row) -> None:
        """Filter a run (`block`: its rows with RADIUS rows of context, its columns with RADIUS columns) and emit it."""
        top, bottom, left, right = pads
        width = valid.shape[1]
        for c in range(0, width, self.CHUNK):
            c1 = min(width, c + self.CHUNK)
            # the chunk's columns with their context, from the block (which lacks the mirrored `left` columns)
            b0, b1 = c - left, c1 + 2 * RADIUS - left
            sub = block[:, max(b0, 0):min(b1, block.shape[1])]
            sub = pad_block(sub, top, bottom, max(0, -b0), max(0, b1 - block.shape[1]))
            out = apply(sub, self.taps)
            if self.clip is not None:  # non-escaped pixels lie in the file's dB range (the others are escapes)
                np.clip(out, self.clip[0], self.clip[1], out=out)
            e = None if esc is None else esc[:, c:c1]
            if e is not None:
                hit = ~np.isnan(e)
                if hit.any():
                    out[hit] = e[hit]
                else:
                    e = None
            self.emit(out, valid[:, c:c1], e, self.col0 + c, row)

    def _wait(self, keep: int = 0) -> None:
        """Until at most `keep` jobs are pending (their errors raised here)."""
        while len(self.pending) > keep:
            self.pending.pop(0).result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last writes (and raise their errors); the stage's thread ends."""
        try:
            if raise_errors:
                self._wait(0)
        finally:
            if self.pool is not None:
                for fut in self.pending:
                    fut.cancel()
                self.pool.shutdown(wait=True)
                self.pool = None
