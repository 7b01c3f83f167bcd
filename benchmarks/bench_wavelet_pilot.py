"""Wavelet-domain residual pilot: would the residual layer code smooth products' residuals in fewer bytes in a CDF 9/7
wavelet domain than pixel by pixel, and what does coding each 256-px tile on its own do at the tile borders?

Where the source is smooth (the block-averaged, uncalibrated Kerala DN scene), what a bundled rate point leaves is not
white: on the Kerala validation half, `sarae-q1` at gain 1 leaves a residual whose spectral flatness is 0.63 (a
transform coder's gain over pixel-by-pixel coding up to 2 dB at high rates), while on speckled products it is nearly
white. This pilot codes the residual of a real `sarae-q1` file (gain 1, no post-filter) two ways, in the codec's
256-px tiles:

- **pixel**: the shipped residual layer (`--residual-step`, every mode, real files, bytes from the file);
- **wavelet**: each tile's residual (escaped and invalid pixels as 0, the tile mirrored to a multiple of 2**levels)
  through a 4-level CDF 9/7 (lifting, float64, nearly orthonormal), uniformly quantized with a dead zone of 0.15 step,
  four groups of subbands each range-coded with its own table and bin centroids exactly as the layer codes a group
  (`coding.residual._Group`); bytes = the base file's + every tile's frame, each frame decoded again and checked
  against what the encoder reconstructed;
- **wavelet, whole band**: the same coder with 2 levels on the whole band as one block — what a transform across the
  tile borders would give (the codec's layer is coded tile by tile, so this is not a file the codec could write).

Both are scored by RMSE (dB, valid non-escaped pixels) at the same bytes (log-bytes interpolation on the pixel
curve) and by the seam statistic (mean |step| across the 256-px tile borders over the mean |step| everywhere, over
the source's: `bench_categories`' statistic at the tile grid). Nothing here is in the product: a mode whose tiles are
transformed one by one leaves steps along the tile grid; this measures how large they are.

    .venv/bin/python benchmarks/bench_wavelet_pilot.py --out benchmarks/results/wavelet_pilot.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sar_ae_core.defaults import TILE  # noqa: E402  (the codec's tiles)

DEADZONE = 0.15
PIXEL_STEPS = {"grd_dn": (5.0, 4.0, 2.5, 1.5, 1.0), "grd_db": (4.5, 3.0, 2.0, 1.2, 0.8), "rtc": (10.0, 8.0, 5.0, 3.0, 2.0),
               "slc_other": (14.0, 10.0, 6.0, 3.5, 2.2)}
WAVELET_STEPS = {"grd_dn": (3.6, 2.6, 1.8, 1.2), "grd_db": (3.6, 2.6, 1.8, 1.2), "rtc": (6.0, 4.0, 2.6, 1.8),
                 "slc_other": (8.0, 5.0, 3.2, 2.2)}

# lifting constants of the CDF 9/7 (Daubechies & Sweldens): predict α, update β, predict γ, update δ, and the scale ζ
# that makes the low-pass analysis filter sum to √2 (nearly orthonormal)
_A, _B, _G, _D, _Z = -1.586134342, -0.05298011854, 0.8829110762, 0.4435068522, 1.149604398

#: decomposition levels of a 256-px tile (its approximation band 16 × 16); smaller tiles get fewer
MAX_LEVELS = 4
#: the smallest tile side a wavelet frame is tried on (fewer levels below 64 px; none below this)
MIN_SIDE = 16
#: groups of subbands with one table each (the last one also holds every coarser level and the approximation)
GROUPS = 4


def levels_for(shape) -> int:
    """Decomposition levels for a tile of `shape` (0: no wavelet frame)."""
    side = min(shape)
    if side < MIN_SIDE:
        return 0
    return int(min(MAX_LEVELS, np.floor(np.log2(side / 4.0))))


def padded_shape(shape, levels: int) -> tuple[int, int]:
    """The tile's shape rounded up to a multiple of 2**levels (what is transformed)."""
    m = 1 << levels
    return (-(-shape[0] // m) * m, -(-shape[1] // m) * m)


def _next(s: np.ndarray) -> np.ndarray:
    return np.concatenate([s[1:], s[-1:]], 0)


def _prev(d: np.ndarray) -> np.ndarray:
    return np.concatenate([d[:1], d[:-1]], 0)


def _forward_1d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) halves of `x` along axis 0 (even length)."""
    s, d = x[0::2].copy(), x[1::2].copy()
    d += _A * (s + _next(s))
    s += _B * (d + _prev(d))
    d += _G * (s + _next(s))
    s += _D * (d + _prev(d))
    return s * _Z, d / _Z


def _inverse_1d(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    s, d = s / _Z, d * _Z
    s = s - _D * (d + _prev(d))
    d = d - _G * (s + _next(s))
    s = s - _B * (d + _prev(d))
    d = d - _A * (s + _next(s))
    x = np.empty((s.shape[0] * 2,) + s.shape[1:], np.float64)
    x[0::2], x[1::2] = s, d
    return x


def _forward_2d(x: np.ndarray) -> np.ndarray:
    s, d = _forward_1d(x)
    s2, d2 = _forward_1d(np.concatenate([s, d], 0).T)
    return np.concatenate([s2, d2], 0).T


def _inverse_2d(y: np.ndarray) -> np.ndarray:
    h, w = y.shape
    t = y.T
    rows = _inverse_1d(t[: w // 2], t[w // 2:]).T
    return _inverse_1d(rows[: h // 2], rows[h // 2:])


def forward(x: np.ndarray, levels: int) -> np.ndarray:
    """Mallat layout of `levels` decompositions of x (float64, sides multiples of 2**levels)."""
    y = np.array(x, np.float64)
    h, w = y.shape
    for k in range(levels):
        y[: h >> k, : w >> k] = _forward_2d(y[: h >> k, : w >> k])
    return y


def inverse(y: np.ndarray, levels: int) -> np.ndarray:
    """Inverse of `forward`."""
    x = np.array(y, np.float64)
    h, w = x.shape
    for k in reversed(range(levels)):
        x[: h >> k, : w >> k] = _inverse_2d(x[: h >> k, : w >> k])
    return x


def group_masks(shape, levels: int) -> list[np.ndarray]:
    """Boolean masks (Mallat layout of `shape`) of the groups of subbands (GROUPS, fewer for fewer levels), finest
    first."""
    h, w = shape
    level = np.full(shape, levels, np.int64)  # the approximation band
    for k in reversed(range(levels)):
        hh, ww = h >> k, w >> k
        band = np.zeros(shape, bool)
        band[:hh, :ww] = True
        band[: hh // 2, : ww // 2] = False
        level[band] = k
    n = min(GROUPS, levels + 1)
    return [level == g if g < n - 1 else level >= g for g in range(n)]


def analyse(u: np.ndarray, coded: np.ndarray, levels: int) -> np.ndarray:
    """The coefficients of a tile's residual `u` (in steps; 0 where not coded), mirrored to the padded shape."""
    ph, pw = padded_shape(u.shape, levels)
    x = np.pad(np.where(coded, u, 0.0), ((0, ph - u.shape[0]), (0, pw - u.shape[1])), mode="symmetric")
    return forward(x, levels)


def synthesise(coefficients: np.ndarray, levels: int, shape) -> np.ndarray:
    """The tile's residual (in steps) from its coefficients: inverse transform, cropped to `shape`."""
    return inverse(coefficients, levels)[: shape[0], : shape[1]]


def encode_tile(u: np.ndarray, coded: np.ndarray, levels: int | None = None):
    """(frame bytes, reconstructed residual in steps) of one tile (`levels`: default levels_for its shape), or
    (b"", zeros) for a tile too small."""
    import constriction

    from sar_ae_core.coding import residual as res
    from sar_ae_core.coding.tables import join_payload

    levels = levels_for(coded.shape) if levels is None else levels
    if levels == 0 or not coded.any():
        return b"", np.zeros(coded.shape)
    y = analyse(u, coded, levels)
    masks = group_masks(y.shape, levels)
    groups = [res._Group(y[m], DEADZONE) for m in masks]
    enc = constriction.stream.queue.RangeEncoder()
    rec = np.zeros(y.shape)
    for g, m in zip(groups, masks):
        enc.encode(g.idx, res._model(g.counts))
        rec[m] = g.values()
    frame = bytes([levels]) + b"".join(g.head for g in groups) + join_payload(enc, [g.escapes for g in groups])
    return frame, synthesise(rec, levels, coded.shape)


def decode_tile(frame: bytes, shape) -> np.ndarray:
    """The residual in steps of one tile from its frame."""
    import constriction

    from sar_ae_core.coding import residual as res
    from sar_ae_core.coding.tables import split_payload

    buf = np.frombuffer(frame, np.uint8)
    levels = int(buf[0])
    padded = padded_shape(shape, levels)
    masks = group_masks(padded, levels)
    heads, used = [], 1
    for _ in masks:
        lo, n, counts, offsets, used = res._read_table(buf, used)
        heads.append((lo, n, counts, offsets))
    dec, esc = split_payload(constriction, bytes(buf[used:]), padded[0] * padded[1])
    y, k = np.zeros(padded), 0
    for (lo, n, counts, offsets), m in zip(heads, masks):
        q, k = res._decode_group(dec, lo, n, counts, int(m.sum()), esc, k)
        y[m] = res._values(q, offsets)
    return synthesise(y, levels, shape)


def seam(db: np.ndarray, ok: np.ndarray) -> float | None:
    """`bench_categories`' seam statistic (tile borders against every line) of one band; None for one tile."""
    from bench_categories import _seam

    return _seam(db[None], ok[None], TILE, "all", 0)


def _files(scene: Path, tmp: Path, step):
    """(bytes, dB reconstruction) of a real sarae-q1 file, with a residual layer of `step` unless None."""
    from bench_categories import _db_valid

    f = tmp / f"p{step}.sarz"
    cmd = [sys.executable, "-m", "sar_ae_core", "compress", str(scene), str(f), "--model", "sarae-q1",
           "--post-filter", "off", "--overwrite", "--bands", "1"]
    if step is not None:
        cmd += ["--residual-step", str(step)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "sar_ae_core", "reconstruct", str(f), str(tmp / "p.tif"), "--units", "db",
                    "--overwrite"], check=True, capture_output=True, cwd=ROOT)
    db, _ = _db_valid(tmp / "p.tif")
    return os.path.getsize(f), db[0]


def run_scene(scene: Path, category: str, tmp: Path) -> dict:
    from bench_categories import _db_valid

    src, ok = _db_valid(scene)
    src, ok = src[0], ok[0]
    base_bytes, base = _files(scene, tmp, None)
    coded = ok & np.isfinite(base)
    r = np.where(coded, src - base, 0.0)
    npx = src.size
    src_seam = seam(src, ok)

    def score(rec):
        e = (rec - src)[coded]
        s = seam(np.where(ok, rec, 0.0), ok)
        return float(np.sqrt(np.mean(e ** 2))), (s / src_seam if s is not None else None)

    pixel = []
    for step in PIXEL_STEPS[category]:
        b, rec = _files(scene, tmp, step)
        rm, sm = score(rec)
        pixel.append({"step_db": step, "bytes": b, "bpp": b * 8 / npx, "rmse_db": rm, "seam_ratio_to_source": sm})
    def wavelet(block: int, levels):
        rows = []
        for step in WAVELET_STEPS[category]:
            out, nbytes = np.zeros(r.shape), base_bytes
            for y in range(0, r.shape[0], block):
                for x in range(0, r.shape[1], block):
                    t = slice(y, y + block), slice(x, x + block)
                    frame, values = encode_tile(r[t] / step, coded[t], levels)
                    if frame:
                        back = decode_tile(frame, coded[t].shape)
                        assert np.array_equal(back, values), "the decoder must give what the encoder reconstructed"
                    nbytes += len(frame)
                    out[t] = values * step
            rm, sm = score(base + np.where(coded, out, 0.0))
            rows.append({"step_db": step, "bytes": nbytes, "bpp": nbytes * 8 / npx, "rmse_db": rm,
                         "seam_ratio_to_source": sm})
        pts = sorted((math.log(p["bytes"]), p["rmse_db"]) for p in pixel)
        for w in rows:  # the pixel layer's RMSE at the same bytes (inside its range only)
            lb = math.log(w["bytes"])
            w["pixel_rmse_db_same_bytes"] = float(np.interp(lb, *zip(*pts))) if pts[0][0] <= lb <= pts[-1][0] \
                else None
            if w["pixel_rmse_db_same_bytes"]:
                w["delta_psnr_db"] = 20 * math.log10(w["pixel_rmse_db_same_bytes"] / w["rmse_db"])
        return rows

    # per tile as the codec would code it; and the whole band as one block, 2 levels (what a transform across the
    # tile borders would give: the same gain, no steps along the tile grid)
    return {"scene": scene.name, "category": category, "base_bytes": base_bytes, "pixel": pixel,
            "wavelet": wavelet(TILE, None), "wavelet_whole_2_levels": wavelet(1 << 30, 2)}


def main(argv=None) -> int:
    from bench_rd import held_out

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--min-side", type=int, default=256, help="rasters at least this large on both sides")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wavelet_pilot.json"))
    args = ap.parse_args(argv)
    import rasterio  # noqa: F401  (GDAL up before the subprocesses)

    from sar_ae_core.io.raster import open_raster

    t0 = time.perf_counter()
    rows = []
    with held_out(args.split_file, args.split, None) as (tmp, scenes):
        for scene, category in scenes:
            with open_raster(scene) as rr:
                if min(rr.width, rr.height) < args.min_side:
                    continue
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                row = run_scene(scene, category, Path(work))
            rows.append(row)
            for kind, w in [("tiles", w) for w in row["wavelet"]] + [("whole", w) for w in
                                                                        row["wavelet_whole_2_levels"]]:
                d = w.get("delta_psnr_db")
                print(f"{category:9s} {scene.name[:38]:38s} {kind} step {w['step_db']:4.1f}: {w['bpp']:.3f} bpp RMSE "
                      f"{w['rmse_db']:.3f} dB" + (f", {d:+.2f} dB against the pixel layer" if d is not None else "")
                      + (f", seam {w['seam_ratio_to_source']:.2f} (pixel layer "
                         f"{min(p['seam_ratio_to_source'] for p in row['pixel']):.2f}-"
                         f"{max(p['seam_ratio_to_source'] for p in row['pixel']):.2f})"
                         if w["seam_ratio_to_source"] is not None else ", one tile (no borders)"), flush=True)
    report = {"benchmark": "wavelet_pilot", "split_file": args.split_file, "split": args.split, "results": rows,
              "machine": platform.platform(), "seconds": time.perf_counter() - t0,
              "notes": "base: sarae-q1 at gain 1, no post-filter, real file; pixel: the shipped residual layer "
                       "(real files); wavelet: per-tile CDF 9/7 frames range-coded (real bytes, base file "
                       "included), not in the product; wavelet_whole_2_levels: the same coder, 2 levels, the "
                       "whole band as one block; delta_psnr_db: 20 log10 of the pixel layer's RMSE at the "
                       "same bytes over the wavelet's; seam_ratio_to_source: the tile-border statistic over the "
                       "source's"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
