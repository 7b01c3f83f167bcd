"""Baseline codecs the benchmarks compare against, coded from the same [0, 1]-scaled dB data as the learned codec
(the scaling stored in the .sarz header), at a requested number of file bytes, decoded back to a dB GeoTIFF on the
source's grid. JPEG2000 (GDAL/OpenJPEG) lives in `sar_ae_core.quality.jpeg2000`; this adds AVIF 10-bit monochrome
(libaom via imagecodecs, installed with --no-deps: see ENVIRONMENT notes).

AVIF: single-channel input is forced lossless by imagecodecs, so grey is given as R=G=B uint16 at 10 bits
(`u16 >> 6`) with `pixelformat='400'` (a real monochrome AV1 stream); speed 6. One quality for all bands, searched
(bisection on the quality, 0-99) so that the summed file bytes are closest to the target.
"""

from __future__ import annotations

import os

import numpy as np


def _scaled_bands(source, scaling):
    from sar_ae_core.io.raster import open_raster

    with open_raster(source) as r:
        raw = r.read()
        scaled, valid = scaling.forward(raw, r.units, r.nodata)
        return scaled, valid, r.georef, r.band_names


def _avif_bytes(bands10: list[np.ndarray], quality: int) -> list[bytes]:
    import imagecodecs

    return [imagecodecs.avif_encode(np.repeat(b[..., None], 3, axis=2), level=quality, speed=6, bitspersample=10,
                                    pixelformat="400") for b in bands10]


def avif_twin(source: str | os.PathLike, out_tif: str | os.PathLike, target_bytes: int, scaling) -> list[dict]:
    """AVIF 10-bit monochrome of the scaled source around target_bytes (all bands together), decoded to dB: the
    two qualities whose files bracket the target (one when the target is outside the reachable range), so the
    caller can interpolate the metrics at exactly the target bytes. `out_tif` gets a `_q<quality>` suffix."""
    import imagecodecs

    from sar_ae_core.io.raster import GeoTiffWriter

    scaled, valid, georef, names = _scaled_bands(source, scaling)
    bands10 = [(np.rint(s * 65535).astype(np.uint16) >> 6) for s in scaled]
    lo, hi = 0, 99
    below = above = None  # (quality, bytes, blobs) just under / just over the target
    while lo <= hi:
        q = (lo + hi) // 2
        blobs = _avif_bytes(bands10, q)
        n = sum(len(b) for b in blobs)
        if n > target_bytes:
            above, hi = (q, n, blobs), q - 1
        else:
            below, lo = (q, n, blobs), q + 1
    pixels = int(np.prod(scaled.shape))
    out = []
    for q, n, blobs in [p for p in (below, above) if p is not None]:
        planes = [imagecodecs.avif_decode(b) for b in blobs]  # monochrome streams decode to (H, W)
        decoded = np.stack([(p if p.ndim == 2 else p[..., 0]).astype(np.float64) for p in planes])
        unit = np.clip(decoded * 64 / 65535, 0, 1)
        db = scaling.inverse(unit, valid, "db", "float32", float("nan"))
        tif = f"{os.fspath(out_tif)[:-4]}_q{q}.tif"
        with GeoTiffWriter(tif, db.shape[2], db.shape[1], db.shape[0], "float32", georef, nodata=float("nan"),
                           band_names=names, overwrite=True, tags={"SARAE_CODEC": "avif", "SARAE_UNITS": "db"}) as w:
            w.write(db.astype(np.float32))
        out.append({"bytes": n, "bpp": n * 8 / pixels, "quality_option": q, "reconstruction": tif})
    return out


def interpolate(points: list[dict], target_bytes: int, keys) -> dict:
    """Metrics at target_bytes, linear in log(bytes) between two bracketing points (or the one point)."""
    if len(points) == 1:
        return {k: points[0][k] for k in keys} | {"bytes": points[0]["bytes"], "interpolated": False}
    a, b = sorted(points, key=lambda p: p["bytes"])
    t = (np.log(target_bytes) - np.log(a["bytes"])) / (np.log(b["bytes"]) - np.log(a["bytes"]))
    return {k: float(a[k] + t * (b[k] - a[k])) for k in keys} | {"bytes": target_bytes, "interpolated": True}


def bd_rate(rate_a, psnr_a, rate_b, psnr_b) -> float | None:
    """Bjøntegaard delta rate (%) of curve b against curve a: mean bitrate change of b at equal PSNR over the
    overlapping PSNR range. Log-rate is interpolated over PSNR with monotone piecewise-cubic Hermite splines (PCHIP,
    as in the current BD-rate practice) rather than one cubic polynomial, which swings between 4 points that are
    not evenly spread. None with fewer than 2 points each, non-increasing PSNR, or no overlap."""
    from scipy.interpolate import PchipInterpolator

    if min(len(rate_a), len(rate_b)) < 2:
        return None
    curves = []
    for rate, psnr in ((rate_a, psnr_a), (rate_b, psnr_b)):
        order = np.argsort(np.asarray(psnr, float))
        p, r = np.asarray(psnr, float)[order], np.log(np.asarray(rate, float))[order]
        if np.any(np.diff(p) <= 0) or np.any(np.diff(r) <= 0):  # quality must rise with the rate
            return None
        curves.append((p, PchipInterpolator(p, r)))
    lo, hi = max(curves[0][0][0], curves[1][0][0]), min(curves[0][0][-1], curves[1][0][-1])
    if hi <= lo:
        return None
    grid = np.linspace(lo, hi, 201)
    avg = float(np.mean(curves[1][1](grid) - curves[0][1](grid)))  # even grid: the mean is the integral / width
    return float((np.exp(avg) - 1) * 100)


__all__ = ["avif_twin", "bd_rate", "interpolate"]
