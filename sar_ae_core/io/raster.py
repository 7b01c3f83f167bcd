"""Georeference-preserving raster I/O for SAR data: GDAL rasters through rasterio and `.npy` arrays.

Reading is window by window (never a whole scene unless asked); writing goes to a temporary file in
the target folder that is renamed into place only when complete, so a failure never leaves a partial
output nor overwrites what the user had.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from sar_ae_core.errors import SarInputError
from sar_ae_core.io.output import AtomicOutput, check_output_path  # noqa: F401 - re-exported: writers live here

from sar_ae_core.defaults import UNIT_CHOICES, UNITS  # noqa: E402,F401 - one home for the unit names
NPY_SUFFIXES = (".npy",)


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A pixel window: column/row offset and size (same meaning as rasterio's Window)."""

    col: int
    row: int
    width: int
    height: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """(row slice, column slice) for indexing a full array."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def to_rasterio(self):
        """The equivalent rasterio Window."""
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col, self.row, self.width, self.height)


def iter_blocks(width: int, height: int, block: int = 1024) -> Iterator[Window]:
    """Row-major blocks of at most block×block pixels covering a width×height raster."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


# --------------------------------------------------------------------------------------------
# Georeference
# --------------------------------------------------------------------------------------------
def _exact_epsg(wkt: str) -> Optional[str]:
    """'EPSG:n' when the WKT is exactly what that EPSG code produces (so nothing is lost), else None."""
    try:
        from rasterio.crs import CRS

        code = CRS.from_wkt(wkt).to_epsg()
        if code and CRS.from_epsg(code).to_wkt() == wkt:
            return f"EPSG:{code}"
    except Exception:  # noqa: BLE001 - any doubt: keep the WKT
        pass
    return None


@dataclass
class Georef:
    """Where a raster sits on Earth: CRS + affine transform, or ground control points with their CRS."""

    crs_wkt: Optional[str] = None
    transform: Optional[tuple[float, float, float, float, float, float]] = None
    gcps: Optional[list[tuple[float, float, float, float, float, str, str]]] = None  # row,col,x,y,z,id,info

    @property
    def kind(self) -> str:
        """'transform', 'gcps' or 'none'."""
        if self.gcps:
            return "gcps"
        return "transform" if self.transform is not None else "none"

    def to_dict(self) -> dict:
        """JSON-serialisable form (floats kept exactly: JSON round-trips IEEE doubles)."""
        return {
            "crs_wkt": self.crs_wkt,
            "transform": None if self.transform is None else list(self.transform),
            "gcps": None if self.gcps is None else [list(g) for g in self.gcps],
        }

    def to_compact(self) -> dict:
        """Smallest exact JSON form (used in `.sarz` headers): the CRS as "EPSG:n" when that code gives back
        exactly the same WKT text, else the WKT; empty entries left out. `from_dict` reads both forms."""
        out: dict = {}
        if self.crs_wkt:
            out["crs_wkt"] = self.crs_wkt
            code = _exact_epsg(self.crs_wkt)
            if code:
                out = {"crs": code}
        if self.transform is not None:
            out["transform"] = list(self.transform)
        if self.gcps:
            out["gcps"] = [list(g) for g in self.gcps]
            from sar_ae_core.io.gcps import pack_gcps

            packed = pack_gcps(self.gcps)  # the same bits in about half the header bytes (io/gcps.py)
            if packed is not None and len(packed) < len(json.dumps(out["gcps"], separators=(",", ":"))) // 2:
                out["gcps"] = packed
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Georef":
        """Inverse of to_dict and to_compact."""
        t = d.get("transform")
        g = d.get("gcps")
        if isinstance(g, str):
            from sar_ae_core.io.gcps import unpack_gcps

            g = unpack_gcps(g)
        wkt = d.get("crs_wkt")
        if not wkt and d.get("crs"):
            from rasterio.crs import CRS

            wkt = CRS.from_user_input(d["crs"]).to_wkt()
        return cls(
            crs_wkt=wkt,
            transform=None if t is None else tuple(float(v) for v in t),
            gcps=None if g is None else [
                (float(r), float(c), float(x), float(y), float(z), str(i), str(n)) for r, c, x, y, z, i, n in g
            ],
        )

    @classmethod
    def from_dataset(cls, ds) -> "Georef":
        """Read CRS/transform or GCPs from an open rasterio dataset."""
        gcps, gcp_crs = ds.gcps
        if gcps:
            return cls(
                crs_wkt=gcp_crs.to_wkt() if gcp_crs else None,
                gcps=[(g.row, g.col, g.x, g.y, g.z if g.z is not None else 0.0, g.id or "", g.info or "")
                      for g in gcps],
            )
        transform = None
        if not ds.transform.is_identity:
            transform = tuple(ds.transform)[:6]
        return cls(crs_wkt=ds.crs.to_wkt() if ds.crs else None, transform=transform)

    def window_transform(self, window: Window) -> "Georef":
        """Georeference of a sub-window (transform shifted; GCPs shifted into window pixel space)."""
        if self.kind == "transform":
            from affine import Affine

            a = Affine(*self.transform) * Affine.translation(window.col, window.row)
            return Georef(self.crs_wkt, tuple(a)[:6], None)
        if self.kind == "gcps":
            return Georef(self.crs_wkt, None, [(r - window.row, c - window.col, x, y, z, i, n)
                                               for r, c, x, y, z, i, n in self.gcps])
        return Georef(self.crs_wkt)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
@dataclass
class RasterInfo:
    """What was read: size, selected bands, dtype, decided units (and why), nodata, names, georeference."""

    path: str
    width: int
    height: int
    bands: list[int]                       # 1-based indexes of the selected bands
    dtype: str                             # dtype of the values as read (complex for SLC)
    units: str
    units_reason: str
    nodata: Optional[float]
    band_names: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    georef: Georef = field(default_factory=Georef)
    driver: str = "GTiff"

    @property
    def count(self) -> int:
        """Number of selected bands."""
        return len(self.bands)


class _GdalBackend:
    def __init__(self, path: str):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():  # GCP-only and plain arrays are normal for SAR
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(path)
        except RasterioIOError as exc:
            raise SarInputError(path, f"not a readable raster ({_short(exc)})") from None
        ds = self.ds
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.dtype = ds.dtypes[0]
        if len(set(ds.dtypes)) > 1:
            raise SarInputError(path, f"bands have different data types {sorted(set(ds.dtypes))}")
        self.nodata = ds.nodata
        self.descriptions = [d or "" for d in ds.descriptions]
        self.units_meta = [u or "" for u in ds.units]
        self.tags = dict(ds.tags())
        self.band_tags = [dict(ds.tags(i)) for i in range(1, ds.count + 1)]
        self.georef = Georef.from_dataset(ds)
        self.driver = ds.driver

    def read(self, bands: Sequence[int], window: Window) -> np.ndarray:
        try:
            return self.ds.read(list(bands), window=window.to_rasterio())
        except Exception as exc:  # noqa: BLE001 - every GDAL read error of a damaged file is the file's problem
            raise SarInputError(self.ds.name, f"cannot read pixels at {window} ({_short(exc)})") from None

    def read_decimated(self, bands: Sequence[int], max_side: int) -> np.ndarray:
        scale = max(1.0, max(self.width, self.height) / max_side)
        shape = (len(bands), max(1, int(self.height / scale)), max(1, int(self.width / scale)))
        try:
            return self.ds.read(list(bands), out_shape=shape)
        except Exception as exc:  # noqa: BLE001
            raise SarInputError(self.ds.name, f"cannot read an overview of the pixels ({_short(exc)})") from None

    def close(self):
        self.ds.close()


class _NpyBackend:
    """A `.npy` array memory-mapped and presented as (bands, rows, cols)."""

    def __init__(self, path: str, units: str):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
            raise SarInputError(path, f"not a readable .npy array ({_short(exc)})") from None
        self.path = path
        self.layout_reason = ""
        self.kind = "plain"
        if arr.ndim == 2:
            self.layout = "hw"
        elif arr.ndim == 4 and arr.shape[2] == arr.shape[3] and np.iscomplexobj(arr):
            self.layout, self.kind = "hwnn", "covariance"
            self.layout_reason = f"{arr.shape[2]}x{arr.shape[3]} covariance matrix: bands are its diagonal"
        elif arr.ndim == 3:
            small_last = arr.shape[2] <= 8 < min(arr.shape[0], arr.shape[1])
            small_first = arr.shape[0] <= 8 < min(arr.shape[1], arr.shape[2])
            if small_last:
                self.layout = "hwb"
            elif small_first:
                self.layout = "bhw"
            else:
                raise SarInputError(path, f"cannot tell bands from rows/cols in array shape {arr.shape}")
            if self.layout == "hwb" and arr.shape[2] == 2 and not np.iscomplexobj(arr):
                if units == "complex" or (units == "auto" and _looks_like_re_im(arr)):
                    self.kind = "reim"
                    self.layout_reason = "last axis of size 2 holds (real, imaginary) parts"
        else:
            raise SarInputError(path, f"unsupported array shape {arr.shape} (need rows x cols [x bands])")
        self.arr = arr
        if self.layout in ("hw",):
            self.height, self.width, self.count = arr.shape[0], arr.shape[1], 1
        elif self.layout == "bhw":
            self.count, self.height, self.width = arr.shape
        elif self.layout == "hwb":
            self.height, self.width = arr.shape[:2]
            self.count = 1 if self.kind == "reim" else arr.shape[2]
        else:  # hwnn
            self.height, self.width, self.count = arr.shape[0], arr.shape[1], arr.shape[2]
        if self.kind == "reim":
            self.dtype = "complex64"
        elif self.kind == "covariance":
            self.dtype = "float64"
        else:
            self.dtype = str(arr.dtype)
        self.nodata = None
        self.descriptions = [""] * self.count
        self.units_meta = [""] * self.count
        self.tags, self.band_tags = {}, [{} for _ in range(self.count)]
        self.georef = Georef()
        self.driver = "NPY"

    def _take(self, rows: slice, cols: slice, bands: Sequence[int]) -> np.ndarray:
        idx = [b - 1 for b in bands]
        a = self.arr
        if self.layout == "hw":
            out = np.asarray(a[rows, cols])[None]
        elif self.layout == "bhw":
            out = np.asarray(a[idx, rows, cols])
        elif self.kind == "reim":
            block = np.asarray(a[rows, cols, :], dtype=np.float32)
            out = (block[..., 0] + 1j * block[..., 1]).astype(np.complex64)[None]
        elif self.layout == "hwb":
            out = np.moveaxis(np.asarray(a[rows, cols, idx]), -1, 0)
        else:  # covariance diagonal: the intensity of each channel
            out = np.stack([np.asarray(a[rows, cols, i, i]).real for i in idx])
        return np.ascontiguousarray(out)

    def read(self, bands: Sequence[int], window: Window) -> np.ndarray:
        r, c = window.slices
        return self._take(r, c, bands)

    def read_decimated(self, bands: Sequence[int], max_side: int) -> np.ndarray:
        step = max(1, math.ceil(max(self.width, self.height) / max_side))
        return self._take(slice(None, None, step), slice(None, None, step), bands)

    def close(self):
        self.arr = None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _looks_like_re_im(arr: np.ndarray) -> bool:
    """Real/imaginary parts of SLC data are zero-mean and both signs; powers and amplitudes are not."""
    step = max(1, max(arr.shape[0], arr.shape[1]) // 256)
    sample = np.asarray(arr[::step, ::step, :], dtype=np.float64)
    sample = sample[np.isfinite(sample).all(axis=-1)]
    if sample.size == 0:
        return False
    neg = (sample < 0).mean(axis=0)
    return bool(np.all(neg > 0.2))


_UNIT_WORDS = [
    ("db", re.compile(r"(^|[^a-z])(db|decibels?)([^a-z]|$)")),
    ("amplitude", re.compile(r"(^|[^a-z])(dn|amp|amplitude|magnitude)([^a-z]|$)")),
    ("linear", re.compile(r"(^|[^a-z])(lin|linear|power|intensity|pow)([^a-z]|$)")),
]


def _units_from_text(text: str) -> Optional[str]:
    text = text.lower()
    for units, pattern in _UNIT_WORDS:
        if pattern.search(text):
            return units
    return None


def _decide_units(backend, path: str, bands: Sequence[int]) -> tuple[str, str]:
    """Decide the units of a raster from dtype, metadata, file name and values; say why."""
    dtype = np.dtype(backend.dtype) if backend.dtype != "complex_int16" else np.dtype("complex64")
    if np.issubdtype(dtype, np.complexfloating):
        return "complex", f"complex data type ({backend.dtype}): intensity = |z|^2"
    if isinstance(backend, _NpyBackend) and backend.kind == "covariance":
        return "linear", f"{backend.layout_reason}; diagonal entries are linear power"
    meta = []
    for b in bands:
        meta.append(backend.units_meta[b - 1])
        meta.append(backend.descriptions[b - 1])
        meta.extend(f"{k}={v}" for k, v in backend.band_tags[b - 1].items())
    meta.extend(f"{k}={v}" for k, v in backend.tags.items() if "unit" in k.lower() or "scale" in k.lower())
    found = _units_from_text(" ".join(meta))
    if found:
        return found, "band metadata (units/description/tags) says " + found
    found = _units_from_text(Path(path).stem.replace("-", "_"))
    if found:
        return found, f"file name '{Path(path).name}' says {found}"
    if np.issubdtype(dtype, np.integer):
        return "amplitude", f"integer data ({backend.dtype}): Sentinel-1 GRD digital numbers are amplitude"
    sample = backend.read_decimated(bands, 512).astype(np.float64)
    ok = np.isfinite(sample)
    if backend.nodata is not None and not np.isnan(backend.nodata):
        ok &= sample != backend.nodata
    values = sample[ok]
    if values.size and (values < 0).mean() > 0.005:
        return "db", f"{(values < 0).mean():.0%} of sampled values are negative: backscatter in dB"
    return "linear", "non-negative floating-point values: linear power"


class SarRaster:
    """An open SAR raster (GDAL or .npy) with selected bands and decided units; read it window by window."""

    def __init__(self, path: str | os.PathLike, bands: str | Sequence[int] = "all", units: str = "auto"):
        self.path = os.fspath(path)
        if units not in UNIT_CHOICES:
            raise SarInputError(self.path, f"unknown units '{units}' (choose from {', '.join(UNIT_CHOICES)})")
        virtual = self.path.startswith("/vsi")  # a GDAL virtual file (/vsizip/ARCHIVE/MEMBER, …): opening tells
        if not virtual and not os.path.exists(self.path):
            raise SarInputError(self.path, "file not found")
        if os.path.isdir(self.path):
            raise SarInputError(self.path, "is a folder, not a raster file")
        if self.path.lower().endswith(NPY_SUFFIXES):
            self._b = _NpyBackend(self.path, units)
        else:
            self._b = _GdalBackend(self.path)
        try:
            self.band_indexes = self._select_bands(bands)
            if units == "auto":
                self.units, self.units_reason = _decide_units(self._b, self.path, self.band_indexes)
            else:
                self.units, self.units_reason = units, "given by the user"
            if self.units != "complex" and np.issubdtype(np.dtype(self._np_dtype()), np.complexfloating):
                raise SarInputError(self.path, f"complex data ({self._b.dtype}) cannot be read as {self.units}; "
                                               "use units 'complex' or 'auto'")
        except BaseException:
            self._b.close()
            raise

    def _np_dtype(self) -> str:
        return "complex64" if self._b.dtype == "complex_int16" else self._b.dtype

    def _select_bands(self, bands) -> list[int]:
        n = self._b.count
        if bands in (None, "all"):
            return list(range(1, n + 1))
        if isinstance(bands, str):
            try:
                bands = [int(b) for b in bands.split(",") if b.strip()]
            except ValueError:
                raise SarInputError(self.path, f"bad band list '{bands}' (use 'all' or e.g. '1,2')") from None
        bands = [int(b) for b in bands]
        bad = [b for b in bands if not 1 <= b <= n]
        if bad or not bands:
            raise SarInputError(self.path, f"band(s) {bad or bands} do not exist (the raster has {n} band(s))")
        return bands

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "SarRaster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the underlying dataset."""
        if self._b is not None:
            self._b.close()

    # -- properties -----------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self._b.width

    @property
    def height(self) -> int:
        return self._b.height

    @property
    def count(self) -> int:
        return len(self.band_indexes)

    @property
    def nodata(self) -> Optional[float]:
        return self._b.nodata

    @property
    def dtype(self) -> str:
        return self._np_dtype()

    @property
    def georef(self) -> Georef:
        return self._b.georef

    @property
    def band_names(self) -> list[str]:
        """Band descriptions of the selected bands ('' when the source has none)."""
        return [self._b.descriptions[b - 1] for b in self.band_indexes]

    @property
    def info(self) -> RasterInfo:
        """Everything known about the raster without reading pixels."""
        return RasterInfo(
            path=self.path, width=self.width, height=self.height, bands=list(self.band_indexes),
            dtype=self.dtype, units=self.units, units_reason=self.units_reason, nodata=self.nodata,
            band_names=self.band_names, tags=dict(self._b.tags), georef=self.georef, driver=self._b.driver,
        )

    # -- reading --------------------------------------------------------------------------------
    def read(self, window: Optional[Window] = None, band: Optional[int] = None) -> np.ndarray:
        """Raw values of a window, shape (bands, rows, cols); `band` picks one of the selected bands (1-based)."""
        if window is None:
            window = Window(0, 0, self.width, self.height)
        bands = self.band_indexes if band is None else [self.band_indexes[band - 1]]
        try:
            return self._b.read(bands, window)
        except SarInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - GDAL/numpy errors on damaged files
            raise SarInputError(self.path, f"cannot read pixels at {window} ({_short(exc)})") from None

    def read_padded(self, row: int, col: int, size: int, band: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """A size×size window at (row, col), zero-padded beyond the raster; returns (values, inside-mask)."""
        r1, c1 = min(row + size, self.height), min(col + size, self.width)
        data = self.read(Window(col, row, c1 - col, r1 - row), band)
        out = np.zeros((data.shape[0], size, size), dtype=data.dtype)
        inside = np.zeros((size, size), dtype=bool)
        out[:, : r1 - row, : c1 - col] = data
        inside[: r1 - row, : c1 - col] = True
        return out, inside

    def blocks(self, block: int = 1024) -> Iterator[Window]:
        """Windows of at most block×block pixels covering the raster."""
        return iter_blocks(self.width, self.height, block)

    def read_decimated(self, max_side: int = 512) -> np.ndarray:
        """A reduced-resolution view (nearest) of at most max_side pixels per side, for quick statistics."""
        try:
            return self._b.read_decimated(self.band_indexes, max_side)
        except SarInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - GDAL/numpy errors on damaged files
            raise SarInputError(self.path, f"cannot read an overview of the pixels ({_short(exc)})") from None


def open_raster(path: str | os.PathLike, bands: str | Sequence[int] = "all", units: str = "auto") -> SarRaster:
    """Open a GDAL raster or .npy array for window-by-window reading (use as a context manager)."""
    return SarRaster(path, bands=bands, units=units)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
class _LibStderr:
    """Collects what GDAL's libtiff prints straight onto file descriptor 2 during a write (e.g.
    "_tiffWriteProc: File too large."), so that a failed write is one line of the project's own, naming the
    file and the cause, instead of a trail of library messages. Used around the writer's GDAL calls only."""

    def __init__(self):
        self.lines: list[str] = []
        self._buf = None  # one temporary file for all the calls of a writer (it is emptied after each)

    def __enter__(self):
        import tempfile

        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            if self._buf is None:
                self._buf = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._buf.fileno(), 2)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self._buf.tell():
            self._buf.seek(0)
            text = self._buf.read().decode("utf-8", "replace")
            self._buf.seek(0)
            self._buf.truncate()
            self.lines += [ln.strip() for ln in text.splitlines() if ln.strip()]

    def __del__(self):
        if self._buf is not None:
            self._buf.close()

    def cause(self) -> str:
        """The most telling captured line ('File too large', 'No space left on device'), or ''."""
        for ln in self.lines:
            if ":" in ln and not ln.startswith("ERROR"):
                return ln.split(":", 1)[1].strip().rstrip(".")
        return self.lines[0] if self.lines else ""


_INT_PREDICTOR = {"uint8", "int8", "uint16", "int16", "uint32", "int32"}


class GeoTiffWriter:
    """Writes a tiled, compressed GeoTIFF window by window, carrying CRS, transform or GCPs, nodata,
    band names and tags; the file appears only when the `with` block completes without error."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, count: int, dtype: str,
                 georef: Georef | None = None, nodata: Optional[float] = None,
                 band_names: Optional[Sequence[str]] = None, tags: Optional[dict] = None,
                 band_tags: Optional[Sequence[dict]] = None, overwrite: bool = False, block: int = 256,
                 compress: str = "zstd", inputs: Sequence[str | os.PathLike | None] = ()):
        self.path = os.fspath(path)
        self.width, self.height, self.count, self.dtype = width, height, count, np.dtype(dtype).name
        self.georef = georef or Georef()
        self.nodata = nodata
        self.band_names = list(band_names) if band_names else []
        self.tags = dict(tags or {})
        self.band_tags = list(band_tags) if band_tags else []
        self.block = block
        self.compress = compress
        self._lib = _LibStderr()
        self._out = AtomicOutput(self.path, overwrite, suffix=".tif", inputs=inputs, verify=self._verify)
        self._ds = None

    def __enter__(self) -> "GeoTiffWriter":
        import rasterio
        from rasterio.control import GroundControlPoint
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.crs import CRS

        try:
            tiled = self.width >= 16 and self.height >= 16
            profile = dict(driver="GTiff", width=self.width, height=self.height, count=self.count,
                           dtype=self.dtype, nodata=self.nodata, BIGTIFF="IF_SAFER")
            if self.compress != "none":
                profile["compress"] = self.compress
            if tiled:
                profile.update(tiled=True, blockxsize=min(self.block, 16 * math.ceil(self.width / 16)),
                               blockysize=min(self.block, 16 * math.ceil(self.height / 16)))
            if self.compress in ("deflate", "lzw", "zstd"):
                # lossy float reconstructions barely compress (~80-88 % at any level): zstd level 1 without the
                # floating-point predictor writes and reads ~3x faster than deflate with it (88 % vs 80 % of the
                # raw size); deflate and lzw keep it. Integers keep the horizontal predictor (cheap, it pays).
                if self.dtype.startswith("float"):
                    if self.compress != "zstd":
                        profile["predictor"] = 3
                elif self.dtype in _INT_PREDICTOR:
                    profile["predictor"] = 2
                from sar_ae_core.nn.runtime import threads

                # blocks compressed on all the codec's threads (GDAL's own pool; the bytes do not depend on it)
                profile["num_threads"] = str(threads())
                if self.compress == "deflate":
                    profile["zlevel"] = 1
                elif self.compress == "zstd":
                    profile["zstd_level"] = 1
            g = self.georef
            crs = CRS.from_wkt(g.crs_wkt) if g.crs_wkt else None
            if g.kind == "transform":
                from affine import Affine

                profile.update(crs=crs, transform=Affine(*g.transform))
            elif g.kind == "none" and crs is not None:
                profile.update(crs=crs)
            with warnings.catch_warnings(), self._lib:  # GCP-only and plain arrays are normal for SAR
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self._out.tmp, "w", **profile)
            if g.kind == "gcps":  # GCPs without a CRS (a source can have them) are written with an empty one
                self._ds.gcps = ([GroundControlPoint(row=r, col=c, x=x, y=y, z=z, id=i, info=n)
                                  for r, c, x, y, z, i, n in g.gcps], crs if crs is not None else CRS())
            for i, name in enumerate(self.band_names[: self.count], start=1):
                if name:
                    self._ds.set_band_description(i, name)
            if self.tags:
                self._ds.update_tags(**{str(k): str(v) for k, v in self.tags.items()})
            for i, bt in enumerate(self.band_tags[: self.count], start=1):
                if bt:
                    self._ds.update_tags(i, **{str(k): str(v) for k, v in bt.items()})
        except BaseException as exc:
            self._close_ds()
            self._out.discard()
            if isinstance(exc, Exception):
                raise self._failed(exc) from None
            raise
        return self

    def write(self, data: np.ndarray, window: Optional[Window] = None, band: Optional[int] = None) -> None:
        """Write (bands, rows, cols) values into a window (the whole raster when window is None);
        with `band` (1-based), write one (rows, cols) band only."""
        if window is None:
            window = Window(0, 0, self.width, self.height)
        data = data.astype(self.dtype, copy=False)
        try:
            with self._lib:
                if band is not None:
                    self._ds.write(data, band, window=window.to_rasterio())
                    return
                self._ds.write(data[None] if data.ndim == 2 else data, window=window.to_rasterio())
        except Exception as exc:  # noqa: BLE001 - GDAL reports a full disk or a size limit as an I/O error
            raise self._failed(exc) from None

    def _failed(self, exc: BaseException) -> Exception:
        from rasterio.errors import RasterioError

        if isinstance(exc, SarInputError):
            return exc
        if isinstance(exc, (RasterioError, OSError)):
            cause = self._lib.cause() or _short(exc)
            return SarInputError(self.path, f"could not be written ({cause}); nothing was written")
        return exc  # a bug, not an environment problem: surface it as it is

    def _verify(self, tmp: str) -> None:
        """GDAL logs some write failures (a full disk, a file-size limit) instead of raising them: open the
        finished file and check that every block of every band has bytes on disk, inside the file (what a failed
        flush or a cut-off file lacks). Reads the block index only, not the pixels."""
        import rasterio

        try:
            size = os.path.getsize(tmp)
            with self._lib:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = rasterio.open(tmp)
                with ds:
                    if (ds.width, ds.height, ds.count) != (self.width, self.height, self.count):
                        raise SarInputError(self.path, "could not be written completely; nothing was written")
                    for b in range(1, ds.count + 1):
                        for (i, j), _ in ds.block_windows(b):
                            offset = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b)
                            nbytes = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b)
                            if not offset or not nbytes or int(nbytes) <= 0 or int(offset) + int(nbytes) > size:
                                cause = self._lib.cause() or "disk full or write error"
                                raise SarInputError(self.path, f"could not be written ({cause}): block {i},{j} of "
                                                               f"band {b} is missing on disk; nothing was written")
        except SarInputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from None

    def _close_ds(self):
        if self._ds is not None:
            ds, self._ds = self._ds, None
            with self._lib:
                ds.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close_ds()
        except BaseException as close_exc:
            self._out.discard()
            if exc_type is None:
                raise self._failed(close_exc) from None
            return  # the original error is the one to report
        if exc_type is None:
            self._out.commit()
        else:
            self._out.discard()


def mosaic_vrt(source: str | os.PathLike, path: str | os.PathLike, width: int, height: int,
               band: int = 1) -> str:
    """Write a GDAL VRT of width×height pixels that tiles one band of `source` side by side:
    large real-data rasters for benchmarks and tests at no disk cost."""
    import rasterio
    from xml.sax.saxutils import escape

    source = os.path.abspath(os.fspath(source))
    with rasterio.open(source) as src:
        sw, sh = src.width, src.height
        dtype = {"float32": "Float32", "float64": "Float64", "uint16": "UInt16", "int16": "Int16",
                 "uint8": "Byte"}[src.dtypes[band - 1]]
        nodata = src.nodata
        transform = src.transform
        crs_wkt = src.crs.to_wkt() if src.crs else ""
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs_wkt:
        parts.append(f"<SRS>{escape(crs_wkt)}</SRS>")
        parts.append("<GeoTransform>{}, {}, {}, {}, {}, {}</GeoTransform>".format(
            transform.c, transform.a, transform.b, transform.f, transform.d, transform.e))
    parts.append(f'<VRTRasterBand dataType="{dtype}" band="1">')
    if nodata is not None:
        parts.append(f"<NoDataValue>{nodata}</NoDataValue>")
    for row in range(0, height, sh):
        for col in range(0, width, sw):
            w, h = min(sw, width - col), min(sh, height - row)
            parts.append(
                f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{escape(source)}</SourceFilename>"
                f"<SourceBand>{band}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource>')
    parts.append("</VRTRasterBand></VRTDataset>")
    with AtomicOutput(path, overwrite=True, suffix=".vrt") as out:
        with open(out.tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
    return os.fspath(path)
