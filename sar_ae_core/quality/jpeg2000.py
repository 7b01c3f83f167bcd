"""JPEG2000 reference codec: the same scaled data as the learned codec, encoded with GDAL's JP2OpenJPEG at
a requested bits per pixel, so every rate-distortion point has its JPEG2000 twin.

The [0, 1] scaled dB values are quantised to 16 bits (far below any codec error) and given to OpenJPEG,
whose QUALITY option for 16-bit data is the percentage of the uncompressed size: bpp ≈ 16 × QUALITY / 100.
The rate is always measured from the bytes of the .jp2 file on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Optional, Sequence

import numpy as np

from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import GeoTiffWriter, open_raster
from sar_ae_core.scaling import ScalingParams, fit_scaling

_LEVELS = 65535
#: the measured rate the search is content with (relative)
TOLERANCE = 0.01


def encode_jpeg2000(source: str | os.PathLike, jp2_path: str | os.PathLike, bpp: float,
                    scaling: Optional[ScalingParams] = None, bands: str | Sequence[int] = "all",
                    units: str = "auto", block: int = 1024, bracket_path: Optional[str] = None) -> dict:
    """Encode the scaled source as 16-bit JPEG2000 targeting `bpp` bits per pixel; returns rate facts (the file
    whose measured bpp is closest to the target). With `bracket_path`, where that file misses the target by more
    than TOLERANCE, the closest file on the other side of the target is written there too, and its facts are in
    "bracket" (None where the target is outside what OpenJPEG reaches): the two files bracket the target, so a
    caller can interpolate the metrics at exactly the target bytes."""
    if not bpp > 0:
        raise ValueError("bpp must be > 0")
    scaling = scaling or fit_scaling([source], bands=bands, units=units)
    with open_raster(source, bands=bands, units=units) as r:
        folder = os.path.dirname(os.path.abspath(jp2_path))
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            staged = os.path.join(tmp, "scaled.tif")
            with GeoTiffWriter(staged, r.width, r.height, r.count, "uint16", r.georef) as w:
                for win in r.blocks(block):
                    scaled, _ = scaling.forward(r.read(win), r.units, r.nodata)
                    w.write(np.rint(scaled * _LEVELS).astype(np.uint16), win)
            pixels = r.width * r.height * r.count
            best, other = _search_quality(staged, tmp, pixels, bpp)
            os.replace(best[0], jp2_path)
            bracket = None
            if bracket_path is not None and other is not None and abs(best[1] - bpp) > TOLERANCE * bpp:
                os.replace(other[0], bracket_path)
                bracket = _facts(bracket_path, pixels, bpp, other[2], scaling)
        return _facts(jp2_path, pixels, bpp, best[2], scaling) | {"bracket": bracket}


def _facts(path, pixels: int, bpp: float, quality: float, scaling: ScalingParams) -> dict:
    nbytes = os.path.getsize(path)
    return {"path": os.fspath(path), "bytes": nbytes, "bpp": nbytes * 8 / pixels, "target_bpp": bpp,
            "quality_option": quality, "scaling": scaling.to_dict()}


def _search_quality(staged: str, tmp: str, pixels: int, bpp: float, attempts: int = 12):
    """OpenJPEG's QUALITY for `bpp`: its rate control is approximate and, on small rasters, coarse (one QUALITY
    plateau can give 0.44 bpp and the next 0.52), so secant steps on the measured rate, falling back to bisection
    inside the bracket of the closest files below and above the target. Returns ((path, bpp, quality) of the file
    closest to the target, the closest one on the other side of the target or None)."""
    quality = min(100.0, 100.0 * bpp / 16.0)
    below = above = None  # (path, measured bpp, quality): the closest under / over the target
    for attempt in range(attempts):
        path = os.path.join(tmp, f"try{attempt}.jp2")
        _write_jp2(staged, path, quality)
        got = os.path.getsize(path) * 8 / pixels
        if got <= bpp:
            if below is None or got > below[1] or (got == below[1] and quality > below[2]):
                below = (path, got, quality)
        elif above is None or got < above[1] or (got == above[1] and quality < above[2]):
            above = (path, got, quality)
        if abs(got - bpp) <= TOLERANCE * bpp or (quality >= 100.0 and got < bpp):
            break
        step = min(100.0, max(1e-3, quality * bpp / got))  # secant through the origin
        if below is not None and above is not None:
            lo, hi = below[2], above[2]
            if not lo < step < hi or abs(step - quality) < 1e-9:
                step = 0.5 * (lo + hi)
            if hi - lo < 1e-6:
                break
        quality = step
    sides = [p for p in (below, above) if p is not None]
    best = min(sides, key=lambda p: abs(p[1] - bpp))
    other = next((p for p in sides if p is not best), None)
    return best, other


@contextlib.contextmanager
def _quiet():
    """Silence rasterio's not-georeferenced warning: the JPEG2000 twin is pixels only by design."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _write_jp2(staged: str, path: str, quality: float) -> None:
    """Encode a staged 16-bit GeoTIFF as JPEG2000 with OpenJPEG's QUALITY (percent of the raw size)."""
    import rasterio

    # The JPEG2000 twin carries pixels only (no GeoJP2/GML boxes): its rate is never inflated by
    # georeferencing, and decode_jpeg2000 restores the source's grid. This favours JPEG2000 slightly.
    with rasterio.open(staged) as src:
        profile = dict(driver="JP2OpenJPEG", width=src.width, height=src.height, count=src.count, dtype="uint16",
                       QUALITY=f"{quality:.6f}", REVERSIBLE="NO", GMLJP2="NO", GeoJP2="NO",
                       RESOLUTIONS=max(1, min(6, int(np.log2(min(src.width, src.height))) - 2)))
        with _quiet(), rasterio.open(path, "w", **profile) as dst:
            for _, win in src.block_windows(1):
                dst.write(src.read(window=win), window=win)


def decode_jpeg2000(jp2_path: str | os.PathLike, source: str | os.PathLike, out_path: str | os.PathLike,
                    scaling: ScalingParams, bands: str | Sequence[int] = "all", units: str = "auto",
                    out_units: str = "db", overwrite: bool = False, block: int = 1024) -> str:
    """Decode a JPEG2000 twin into a GeoTIFF on the source's grid (dB or source units; source nodata kept)."""
    import rasterio

    with open_raster(source, bands=bands, units=units) as r, _quiet(), rasterio.open(jp2_path) as jp:
        if (jp.width, jp.height, jp.count) != (r.width, r.height, r.count):
            raise SarInputError(jp2_path, "JPEG2000 file does not match the source grid")
        to_db = out_units == "db"
        dtype = "float32" if to_db else r.dtype
        nodata = float("nan") if to_db else r.nodata
        with GeoTiffWriter(out_path, r.width, r.height, r.count, dtype, r.georef, nodata=nodata,
                           band_names=r.band_names, overwrite=overwrite, inputs=(source, jp2_path),
                           tags={"SARAE_UNITS": "db" if to_db else r.units, "SARAE_CODEC": "jpeg2000"}) as w:
            for win in r.blocks(block):
                _, valid = scaling.forward(r.read(win), r.units, r.nodata)
                scaled = jp.read(window=win.to_rasterio()).astype(np.float64) / _LEVELS
                w.write(scaling.inverse(scaled, valid, "db" if to_db else r.units, dtype, nodata), win)
    return os.fspath(out_path)


def jpeg2000_twin(source: str | os.PathLike, out_tif: str | os.PathLike, bpp: float,
                  scaling: Optional[ScalingParams] = None, bands: str | Sequence[int] = "all",
                  units: str = "auto", out_units: str = "db", keep_jp2: Optional[str] = None,
                  overwrite: bool = False, bracket: bool = False) -> dict:
    """Encode at `bpp` and decode to a GeoTIFF; returns the measured rate (from the .jp2 bytes) and paths. With
    `bracket`, where the closest file misses `bpp` by more than TOLERANCE, the file on the other side of the target
    is decoded too (to `out_tif` with a `_bracket` suffix) and its facts are in "bracket" (see encode_jpeg2000)."""
    scaling = scaling or fit_scaling([source], bands=bands, units=units)
    folder = os.path.dirname(os.path.abspath(out_tif))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        jp2 = keep_jp2 or os.path.join(tmp, "twin.jp2")
        other = os.path.join(tmp, "bracket.jp2") if bracket else None
        facts = encode_jpeg2000(source, jp2, bpp, scaling, bands, units, bracket_path=other)
        decode_jpeg2000(jp2, source, out_tif, scaling, bands, units, out_units, overwrite)
        if facts["bracket"] is not None:
            stem, ext = os.path.splitext(os.fspath(out_tif))
            facts["bracket"]["reconstruction"] = decode_jpeg2000(other, source, f"{stem}_bracket{ext}", scaling,
                                                                 bands, units, out_units, overwrite=True)
            facts["bracket"]["path"] = None
    facts["reconstruction"] = os.fspath(out_tif)
    if not keep_jp2:
        facts["path"] = None
    return facts
