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


def encode_jpeg2000(source: str | os.PathLike, jp2_path: str | os.PathLike, bpp: float,
                    scaling: Optional[ScalingParams] = None, bands: str | Sequence[int] = "all",
                    units: str = "auto", block: int = 1024) -> dict:
    """Encode the scaled source as 16-bit JPEG2000 targeting `bpp` bits per pixel; returns rate facts."""
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
            quality = min(100.0, 100.0 * bpp / 16.0)
            best = None
            # OpenJPEG's rate control is approximate: a few secant steps match the measured bpp within ~1 %.
            for attempt in range(6):
                tmp_jp2 = os.path.join(tmp, f"try{attempt}.jp2")
                _write_jp2(staged, tmp_jp2, quality)
                got = os.path.getsize(tmp_jp2) * 8 / pixels
                if best is None or abs(got - bpp) < abs(best[1] - bpp):
                    best = (tmp_jp2, got, quality)
                if abs(got - bpp) <= 0.01 * bpp or quality >= 100.0:
                    break
                quality = min(100.0, max(1e-3, quality * bpp / got))
            os.replace(best[0], jp2_path)
            quality = best[2]
        nbytes = os.path.getsize(jp2_path)
        pixels = r.width * r.height * r.count
    return {"path": os.fspath(jp2_path), "bytes": nbytes, "bpp": nbytes * 8 / pixels, "target_bpp": bpp,
            "quality_option": quality, "scaling": scaling.to_dict()}


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
                  overwrite: bool = False) -> dict:
    """Encode at `bpp` and decode to a GeoTIFF; returns the measured rate (from the .jp2 bytes) and paths."""
    scaling = scaling or fit_scaling([source], bands=bands, units=units)
    folder = os.path.dirname(os.path.abspath(out_tif))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        jp2 = keep_jp2 or os.path.join(tmp, "twin.jp2")
        facts = encode_jpeg2000(source, jp2, bpp, scaling, bands, units)
        decode_jpeg2000(jp2, source, out_tif, scaling, bands, units, out_units, overwrite)
    facts["reconstruction"] = os.fspath(out_tif)
    if not keep_jp2:
        facts["path"] = None
    return facts
