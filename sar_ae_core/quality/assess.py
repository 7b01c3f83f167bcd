"""Compare a reconstruction with its reference raster, streaming window by window: scalar SAR quality
metrics (PSNR, SSIM, RMSE in dB, ENL ratio, EPI) and per-pixel maps written as GeoTIFFs on the
reference's grid. Memory is bounded by the window size, not by the raster size."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sar_ae_core.quality import metrics as M
from sar_ae_core.errors import SarInputError
from sar_ae_core.progress import Progress, ProgressFn
from sar_ae_core.io.raster import GeoTiffWriter, SarRaster, Window, check_output_path, open_raster
from sar_ae_core.scaling import DbHistogram, raw_to_db, valid_mask

MAP_KINDS = ("abs_error_db", "enl_ratio", "epi")
# log10(CV) histogram for the homogeneity threshold: 0.001 decades, CV 1e-4 … 1e2
_CV_LO, _CV_HI, _CV_BINS = -4.0, 2.0, 6000


def check_same_grid(ref: SarRaster, test: SarRaster) -> None:
    """Raise SarInputError unless both rasters cover the same pixel grid (size, bands, georeference)."""
    if (ref.width, ref.height) != (test.width, test.height):
        raise SarInputError(test.path, f"grid differs from the reference: {test.width}x{test.height} px vs "
                                       f"{ref.width}x{ref.height} px in {os.path.basename(ref.path)}")
    if ref.count != test.count:
        raise SarInputError(test.path, f"has {test.count} selected band(s), the reference has {ref.count}")
    a, b = ref.georef, test.georef
    if a.kind == "transform" and b.kind == "transform":
        if not np.allclose(a.transform, b.transform, rtol=1e-9, atol=1e-12):
            raise SarInputError(test.path, f"geotransform {tuple(round(v, 9) for v in b.transform)} differs from "
                                           f"the reference's {tuple(round(v, 9) for v in a.transform)}")
    if a.crs_wkt and b.crs_wkt:
        from rasterio.crs import CRS

        if CRS.from_wkt(a.crs_wkt) != CRS.from_wkt(b.crs_wkt):
            raise SarInputError(test.path, "CRS differs from the reference's")


@dataclass
class _BandSums:
    n_pixels: int = 0
    n_valid: int = 0
    sse01: float = 0.0
    sse_db: float = 0.0
    ssim_sum: float = 0.0
    g_rt: float = 0.0
    g_rr: float = 0.0
    g_tt: float = 0.0
    hom_n: int = 0
    r1: float = 0.0
    r2: float = 0.0
    t1: float = 0.0
    t2: float = 0.0

    def result(self) -> dict:
        def enl(n, s1, s2):
            if n < 2:
                return float("nan")
            m = s1 / n
            var = s2 / n - m * m
            return m * m / var if var > 0 else float("inf")

        e_ref, e_test = enl(self.hom_n, self.r1, self.r2), enl(self.hom_n, self.t1, self.t2)
        den = math.sqrt(self.g_rr * self.g_tt)
        mse = self.sse01 / self.n_valid if self.n_valid else float("nan")
        return {
            "psnr": float("inf") if mse == 0 else (10 * math.log10(1.0 / mse) if self.n_valid else float("nan")),
            "ssim": self.ssim_sum / self.n_valid if self.n_valid else float("nan"),
            "rmse_db": math.sqrt(self.sse_db / self.n_valid) if self.n_valid else float("nan"),
            "enl_ratio": e_test / e_ref if math.isfinite(e_ref) and e_ref > 0 else float("nan"),
            "enl_reference": e_ref,
            "enl_test": e_test,
            "homogeneous_fraction": self.hom_n / self.n_pixels if self.n_pixels else 0.0,
            "epi": self.g_rt / den if den > 0 else float("nan"),
            "valid_fraction": self.n_valid / self.n_pixels if self.n_pixels else float("nan"),
        }


def _read_pair(ref: SarRaster, test: SarRaster, win: M.MapWindow, band: int):
    rows, cols = win.read
    w = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    r_raw, t_raw = ref.read(w, band)[0], test.read(w, band)[0]
    valid = valid_mask(r_raw, ref.units, ref.nodata) & valid_mask(t_raw, test.units, test.nodata)
    return raw_to_db(r_raw, ref.units), raw_to_db(t_raw, test.units), valid


def _cv_threshold(ref: SarRaster, test: SarRaster, band: int, window: int, block: int, prog: Progress) -> float:
    """Pass 1: the adaptive homogeneity threshold of metrics.homogeneous_mask, from a streaming CV histogram."""
    counts = np.zeros(_CV_BINS, np.int64)
    wins = list(M.iter_map_windows(ref.height, ref.width, block, window // 2))
    for i, win in enumerate(wins):
        r_db, _, valid = _read_pair(ref, test, win, band)
        cv, cand = M.local_cv_window(np.power(10.0, r_db / 10.0), valid, window)
        cv, cand = cv[win.core], cand[win.core]
        idx = ((np.log10(np.maximum(cv[cand], 1e-30)) - _CV_LO) / (_CV_HI - _CV_LO) * _CV_BINS).astype(np.int64)
        counts += np.bincount(np.clip(idx, 0, _CV_BINS - 1), minlength=_CV_BINS)
        prog.step((i + 1) / len(wins), "finding homogeneous areas")
    if counts.sum() == 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(counts), M.HOMOGENEOUS_QUANTILE * (counts.sum() - 1), side="right"))
    q = 10 ** (_CV_LO + (k + 0.5) * (_CV_HI - _CV_LO) / _CV_BINS)
    return M.HOMOGENEOUS_CV_FACTOR * q


def assess_rasters(reference: str | os.PathLike, test: str | os.PathLike, *, units: str = "auto",
                   test_units: Optional[str] = None, bands: str | Sequence[int] = "all",
                   test_bands: Optional[str | Sequence[int]] = None, db_range: Optional[tuple[float, float]] = None, maps_dir: Optional[str | os.PathLike] = None,
                   window: int = 15, block: int = 1024, overwrite: bool = False,
                   progress: Optional[ProgressFn] = None) -> dict:
    """Metrics of `test` against `reference` (same grid), per band and pooled, and optional GeoTIFF maps.

    PSNR/SSIM use dB scaled to [0, 1] with `db_range` or, by default, the reference's 1st–99th percentile
    range per band; RMSE and EPI use dB; the ENL ratio uses linear intensity over the reference's
    homogeneous areas (metrics.homogeneous_mask rule). Only pixels valid in both rasters count.
    `test_bands` selects the test raster's bands when they differ from the reference's (default: `bands`).
    """
    from sar_ae_core.options import int_option

    window = int_option("--window", window, 3, 101, odd=True)
    block = int_option("--block", block, 64, 16384)
    prog = Progress(progress)
    if db_range is not None and not db_range[1] > db_range[0]:
        raise SarInputError(None, f"--range needs LOW < HIGH (got {db_range[0]} {db_range[1]})")
    map_paths = {}
    if maps_dir is not None:
        if not os.path.isdir(maps_dir):
            raise SarInputError(maps_dir, "maps folder does not exist")
        map_paths = {k: check_output_path(os.path.join(maps_dir, f"{k}.tif"), overwrite, (reference, test))
                     for k in MAP_KINDS}
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(open_raster(reference, bands=bands, units=units))
        tst = stack.enter_context(open_raster(test, bands=bands if test_bands is None else test_bands,
                                              units=test_units or units))
        check_same_grid(ref, tst)
        writers = {}
        for kind, path in map_paths.items():
            where = f" ({window} px window, homogeneous areas only)" if kind == "enl_ratio" else \
                (f" ({window} px window)" if kind == "epi" else "")
            names = [f"{kind} {n or f'band {b}'}{where}" for n, b in zip(ref.band_names, ref.band_indexes)]
            writers[kind] = stack.enter_context(GeoTiffWriter(
                path, ref.width, ref.height, ref.count, "float32", ref.georef, nodata=float("nan"),
                inputs=(reference, test), band_names=names, tags={"SARAE_MAP": kind, "SARAE_REFERENCE": os.path.basename(ref.path),
                                        "SARAE_TEST": os.path.basename(tst.path), "SARAE_WINDOW": window},
                overwrite=overwrite))
        per_band = []
        n_bands = ref.count
        halo = max(M.map_halo("local_epi", window), (M.SSIM_WIN - 1) // 2)
        for b in range(1, n_bands + 1):
            bprog = prog.sub((b - 1) / n_bands, b / n_bands)
            if db_range is None:
                hist = DbHistogram()
                for w in ref.blocks(block):
                    raw = ref.read(w, b)
                    hist.add(raw_to_db(raw[valid_mask(raw, ref.units, ref.nodata)], ref.units))
                if hist.n == 0:
                    raise SarInputError(ref.path, f"band {ref.band_indexes[b - 1]} has no valid pixels")
                lo, hi = hist.percentile(1), hist.percentile(99)
                if not hi > lo:
                    raise SarInputError(ref.path, f"band {ref.band_indexes[b - 1]} is constant ({lo:.3f} dB)")
            else:
                lo, hi = float(db_range[0]), float(db_range[1])
            thr = _cv_threshold(ref, tst, b, window, block, bprog.sub(0.0, 0.3))
            sums = _BandSums()
            wins = list(M.iter_map_windows(ref.height, ref.width, block, halo))
            pass2 = bprog.sub(0.3, 1.0)
            for i, win in enumerate(wins):
                _accumulate_window(ref, tst, win, b, lo, hi, thr, window, sums, writers)
                pass2.step((i + 1) / len(wins), f"assessing band {b}/{n_bands}")
            entry = {"band": ref.band_indexes[b - 1], "name": ref.band_names[b - 1], "range_db": [lo, hi],
                     **sums.result()}
            entry["_sums"] = sums
            per_band.append(entry)
    pooled = _pool([e.pop("_sums") for e in per_band])
    pooled["enl_ratio"] = float(np.nanmean([e["enl_ratio"] for e in per_band])) if per_band else float("nan")
    return {"reference": os.fspath(reference), "test": os.fspath(test), **pooled, "bands": per_band,
            "maps": {k: os.fspath(p) for k, p in map_paths.items()}}


def _accumulate_window(ref, tst, win, band, lo, hi, thr, window, sums: _BandSums, writers) -> None:
    r_db, t_db, v = _read_pair(ref, tst, win, band)
    core = win.core
    vc = v[core]
    span = hi - lo
    r01 = (np.clip(r_db, lo, hi) - lo) / span
    t01 = (np.clip(t_db, lo, hi) - lo) / span
    sums.n_pixels += vc.size
    sums.n_valid += int(vc.sum())
    sums.sse01 += float(np.square(r01[core] - t01[core])[vc].sum())
    sums.sse_db += float(np.square(r_db[core] - t_db[core])[vc].sum())
    if v.any():
        sums.ssim_sum += float(np.nansum(M.ssim_map(r01, t01, mask=v)[core][vc]))
    gr, gt, gv = M._gradient_pair(r_db, t_db, v)
    gvc = gv[core]
    a, c = gr[core][gvc], gt[core][gvc]
    sums.g_rt += float((a * c).sum())
    sums.g_rr += float((a * a).sum())
    sums.g_tt += float((c * c).sum())
    r_lin = np.power(10.0, np.where(v, r_db, 0.0) / 10.0)
    t_lin = np.power(10.0, np.where(v, t_db, 0.0) / 10.0)
    cv, cand = M.local_cv_window(np.where(v, r_lin, np.nan), v, window)
    hom_full = cand & (cv < thr)
    hom = hom_full[core]
    rl, tl = r_lin[core][hom], t_lin[core][hom]
    sums.hom_n += int(hom.sum())
    sums.r1 += float(rl.sum())
    sums.r2 += float((rl * rl).sum())
    sums.t1 += float(tl.sum())
    sums.t2 += float((tl * tl).sum())
    if writers:
        rows, cols = win.out
        out_win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        maps = {
            "abs_error_db": M.abs_error_db_window(r_db, t_db, v),
            # the ENL ratio means something over homogeneous areas only (the pooled value's rule): NaN elsewhere
            "enl_ratio": np.where(hom_full, M.local_enl_ratio_window(r_lin, t_lin, v, window), np.nan),
            "epi": M.local_epi_window(r_db, t_db, v, window),
        }
        for kind, w in writers.items():
            w.write(maps[kind][core], out_win, band=band)


def _pool(all_sums: list[_BandSums]) -> dict:
    total = _BandSums()
    for s in all_sums:
        for k in vars(total):
            setattr(total, k, getattr(total, k) + getattr(s, k))
    out = total.result()
    for k in ("enl_reference", "enl_test"):
        out.pop(k)
    return out
