"""SAR scaling: source units → intensity → dB → clip → [0, 1], its exact inverse, and the validity mask.

The clip range is fitted once on training rasters (streaming histogram, bounded memory) and stored,
as a `ScalingParams`, with every model and every compressed file, so inference never re-fits it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from sar_ae_core.defaults import SCALING_CHOICES
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import UNITS, SarRaster, open_raster

SCALING_VERSION = 1
CLIP_METHODS = ("percentile", "sigma", "fixed")

# Histogram used by `fit`: 0.005 dB bins over a range that holds every physical SAR value
# (the 1e-10 noise floor is -100 dB; 16-bit DN amplitude tops out at 96.3 dB).
_HIST_LO, _HIST_HI, _HIST_STEP = -110.0, 110.0, 0.005
_HIST_BINS = int(round((_HIST_HI - _HIST_LO) / _HIST_STEP))


# --------------------------------------------------------------------------------------------
# Unit conversions (vectorised, float64 inside)
# --------------------------------------------------------------------------------------------
def valid_mask(raw: np.ndarray, units: str, nodata: Optional[float] = None) -> np.ndarray:
    """True where a raw value is usable: finite, not nodata, and > 0 unless the data are already dB."""
    valid = np.isfinite(raw)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= raw != nodata
    if units in ("linear", "amplitude"):
        valid &= raw > 0
    elif units == "complex":
        valid &= raw != 0
    return valid


def raw_to_db(raw: np.ndarray, units: str, noise_floor: float = 1e-10) -> np.ndarray:
    """Backscatter in dB from raw values: dB as is, 10·log10 of power, 20·log10 of amplitude, |z|² of complex."""
    if units == "db":
        return raw.astype(np.float64)
    if units == "linear":
        intensity = raw.astype(np.float64)
    elif units == "amplitude":
        intensity = np.square(raw.astype(np.float64))
    elif units == "complex":
        z = raw.astype(np.complex128)
        intensity = z.real ** 2 + z.imag ** 2
    else:
        raise ValueError(f"unknown units '{units}'")
    with np.errstate(invalid="ignore"):
        return 10.0 * np.log10(np.maximum(np.nan_to_num(intensity, nan=noise_floor), noise_floor))


def db_to_intensity(db: np.ndarray) -> np.ndarray:
    """Linear power from dB."""
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def db_to_raw(db: np.ndarray, units: str, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Values in the source units and dtype from dB; complex sources come back as intensity (no phase kept)."""
    dtype = np.dtype(dtype)
    if units == "db":
        out = np.asarray(db, dtype=np.float64)
    elif units in ("linear", "complex"):
        out = db_to_intensity(db)
    elif units == "amplitude":
        out = np.power(10.0, np.asarray(db, dtype=np.float64) / 20.0)
    else:
        raise ValueError(f"unknown units '{units}'")
    if np.issubdtype(dtype, np.complexfloating):
        dtype = np.dtype("float32")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # 0 marks no-data in SAR DN products, so a valid pixel never rounds down to it.
        out = np.clip(np.rint(out), max(info.min, 1), info.max)
    return out.astype(dtype)


def output_dtype(source_dtype: str, units: str) -> str:
    """Dtype of a reconstruction in the source units (complex sources become float32 intensity)."""
    dt = np.dtype("complex64" if source_dtype == "complex_int16" else source_dtype)
    return "float32" if np.issubdtype(dt, np.complexfloating) else dt.name


def output_nodata(dtype: str, nodata: Optional[float]) -> float:
    """The nodata value to write: the source's, else NaN for floats and 0 for integers."""
    if nodata is not None:
        return nodata
    return 0 if np.issubdtype(np.dtype(dtype), np.integer) else float("nan")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
@dataclass
class ScalingParams:
    """Fitted dB clip range and how it was obtained; JSON-serialisable, stored with models and files."""

    vmin_db: float
    vmax_db: float
    clip_method: str = "percentile"
    clip_low: float = 1.0          # percentile (0–100) or number of sigmas below the mean
    clip_high: float = 99.0        # percentile (0–100) or number of sigmas above the mean
    noise_floor: float = 1e-10     # linear power floor before log10
    units: str = "db"              # units of the data they were fitted on
    fitted_on: list[str] = field(default_factory=list)
    pixels: int = 0
    version: int = SCALING_VERSION

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a readable message when the parameters are inconsistent."""
        if self.clip_method not in CLIP_METHODS:
            raise ValueError(f"clip method '{self.clip_method}' unknown (choose from {', '.join(CLIP_METHODS)})")
        if not (math.isfinite(self.vmin_db) and math.isfinite(self.vmax_db)) or self.vmax_db <= self.vmin_db:
            raise ValueError(f"bad dB clip range [{self.vmin_db}, {self.vmax_db}]: need finite vmin < vmax")
        if not self.noise_floor > 0:
            raise ValueError("noise floor must be > 0")
        if self.version > SCALING_VERSION:
            raise ValueError(f"scaling parameters version {self.version} is newer than this software "
                             f"({SCALING_VERSION})")

    @property
    def span_db(self) -> float:
        """Width of the clip range in dB."""
        return self.vmax_db - self.vmin_db

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScalingParams":
        """Build from a dict, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown scaling parameter(s): {', '.join(sorted(extra))}")
        return cls(**d)

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ScalingParams":
        """Parse JSON text."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScalingParams":
        """Read from JSON."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())

    # -- transforms -------------------------------------------------------------------------------
    def db_to_unit(self, db: np.ndarray) -> np.ndarray:
        """dB → [0, 1] float32 (clipped to the range)."""
        scaled = (np.asarray(db, dtype=np.float64) - self.vmin_db) / self.span_db
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def unit_to_db(self, scaled: np.ndarray) -> np.ndarray:
        """[0, 1] → dB (float64)."""
        return np.clip(np.asarray(scaled, dtype=np.float64), 0.0, 1.0) * self.span_db + self.vmin_db

    def forward(self, raw: np.ndarray, units: str, nodata: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw values → (float32 [0, 1] with invalid pixels set to 0, boolean validity mask)."""
        scaled, valid, _ = self.forward_db(raw, units, nodata)
        return scaled, valid

    def forward_db(self, raw: np.ndarray, units: str, nodata: Optional[float] = None):
        """As `forward`, plus the unclipped dB values (float64; meaningless where invalid)."""
        valid = valid_mask(raw, units, nodata)
        db = raw_to_db(np.where(valid, raw, 1), units, self.noise_floor)
        scaled = self.db_to_unit(db)
        scaled[~valid] = 0.0
        return scaled, valid, db

    def inverse(self, scaled: np.ndarray, valid: Optional[np.ndarray] = None, units: str = "db",
                dtype: str = "float32", nodata: Optional[float] = None) -> np.ndarray:
        """[0, 1] values → dB or source units/dtype; invalid pixels become the output nodata value."""
        out = db_to_raw(self.unit_to_db(scaled), units, dtype)
        if valid is not None:
            out[~valid] = output_nodata(out.dtype.name, nodata)
        return out


# --------------------------------------------------------------------------------------------
# Fitting (streaming)
# --------------------------------------------------------------------------------------------
class DbHistogram:
    """Streaming statistics of dB values: fine histogram (for percentiles) plus count/sum/sum of squares."""

    def __init__(self):
        self.counts = np.zeros(_HIST_BINS, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, db: np.ndarray) -> None:
        """Accumulate finite dB values."""
        db = db[np.isfinite(db)].astype(np.float64, copy=False)
        if db.size == 0:
            return
        idx = np.clip(((db - _HIST_LO) / _HIST_STEP).astype(np.int64), 0, _HIST_BINS - 1)
        self.counts += np.bincount(idx, minlength=_HIST_BINS)
        self.n += db.size
        self.total += float(db.sum())
        self.total_sq += float(np.square(db).sum())
        self.min = min(self.min, float(db.min()))
        self.max = max(self.max, float(db.max()))

    def percentile(self, q: float) -> float:
        """Approximate percentile (bin centre; error ≤ 0.0025 dB)."""
        if self.n == 0:
            raise ValueError("no values")
        target = q / 100.0 * (self.n - 1)
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="right"))
        value = _HIST_LO + (min(i, _HIST_BINS - 1) + 0.5) * _HIST_STEP
        return float(min(max(value, self.min), self.max))

    @property
    def mean(self) -> float:
        return self.total / self.n

    def unit_mean(self, scaling: "ScalingParams") -> float:
        """Mean of the values scaled to [0, 1] by `scaling` (clipped; from the bin centres: error ≤ half a bin
        over the span); 0.5 without values."""
        if self.n == 0:
            return 0.5
        centres = _HIST_LO + (np.arange(_HIST_BINS) + 0.5) * _HIST_STEP
        scaled = np.clip((centres - scaling.vmin_db) / scaling.span_db, 0.0, 1.0)
        return float(np.dot(self.counts, scaled) / self.n)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.total_sq / self.n - self.mean ** 2, 0.0))


def _accumulate(raster: SarRaster, hist: DbHistogram, noise_floor: float, max_pixels: int, block: int) -> int:
    """Add one raster's valid dB values to `hist`; decimate rasters above max_pixels so memory stays bounded."""
    before = hist.n
    if raster.width * raster.height > max_pixels:
        factor = math.ceil(math.sqrt(raster.width * raster.height / max_pixels))
        raw = raster.read_decimated(max(1, math.ceil(max(raster.width, raster.height) / factor)))
        rows = max(1, (block * block) // max(raw.shape[-1], 1))  # float64 temporaries stay block-sized
        chunks: Iterable[np.ndarray] = (raw[..., r:r + rows, :] for r in range(0, raw.shape[-2], rows))
    else:
        chunks = (raster.read(w) for w in raster.blocks(block))
    bands = getattr(hist, "bands", None)
    for raw in chunks:
        valid = valid_mask(raw, raster.units, raster.nodata)
        if bands:  # a histogram per band too (raster_histogram(per_band=True))
            for b in range(raw.shape[0]):
                db = raw_to_db(raw[b][valid[b]], raster.units, noise_floor)
                hist.add(db)
                bands[b].add(db)
        else:
            hist.add(raw_to_db(raw[valid], raster.units, noise_floor))
    return hist.n - before


def fit_scaling(sources: Sequence[str | os.PathLike | SarRaster], method: str = "percentile",
                low: float = 1.0, high: float = 99.0, units: str = "auto", bands: str | Sequence[int] = "all",
                vmin_db: Optional[float] = None, vmax_db: Optional[float] = None, noise_floor: float = 1e-10,
                max_pixels_per_raster: int = 16_000_000, block: int = 1024,
                flat_ok: bool = False) -> ScalingParams:
    """Fit the dB clip range on training rasters with streaming statistics (never all pixels in memory).
    `flat_ok`: a constant raster (a valid image when it is the one being compressed) gets a 1 dB range around
    its value instead of an error.

    method 'percentile': [low, high] percentiles; 'sigma': mean − low·σ … mean + high·σ;
    'fixed': the given vmin_db/vmax_db (no pixels read).
    """
    if method not in CLIP_METHODS:
        raise ValueError(f"clip method '{method}' unknown (choose from {', '.join(CLIP_METHODS)})")
    if method == "fixed":
        if vmin_db is None or vmax_db is None:
            raise ValueError("clip method 'fixed' needs vmin_db and vmax_db")
        return ScalingParams(vmin_db=float(vmin_db), vmax_db=float(vmax_db), clip_method="fixed",
                             clip_low=float(vmin_db), clip_high=float(vmax_db), noise_floor=noise_floor,
                             units=units)
    if method == "percentile" and not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100 (got {low}, {high})")
    if not sources:
        raise ValueError("no rasters to fit the scaling on")
    hist = DbHistogram()
    names, seen_units = [], set()
    for src in sources:
        owned = not isinstance(src, SarRaster)
        raster = open_raster(src, bands=bands, units=units) if owned else src
        try:
            got = _accumulate(raster, hist, noise_floor, max_pixels_per_raster, block)
            if got == 0:
                raise SarInputError(raster.path, "no valid pixels (all nodata, NaN, infinite or <= 0)")
            names.append(os.path.basename(raster.path))
            seen_units.add(raster.units)
        finally:
            if owned:
                raster.close()
    if method == "percentile":
        lo, hi = hist.percentile(low), hist.percentile(high)
    else:
        lo, hi = hist.mean - low * hist.std, hist.mean + high * hist.std
    if not hi > lo and flat_ok:
        lo, hi = lo - 0.5, lo + 0.5
    if not hi > lo:
        raise SarInputError(names[0] if len(names) == 1 else None,
                            f"the training data are constant ({lo:.3f} dB): cannot fit a clip range")
    return ScalingParams(vmin_db=lo, vmax_db=hi, clip_method=method, clip_low=low, clip_high=high,
                         noise_floor=noise_floor, units="+".join(sorted(seen_units)), fitted_on=names,
                         pixels=hist.n)


def raster_histogram(raster: SarRaster, noise_floor: float = 1e-10, max_pixels: int = 1_000_000,
                     block: int = 1024, per_band: bool = False) -> DbHistogram:
    """Streaming dB histogram of one open raster (subsampled to about `max_pixels`): one pass serves every
    percentile a caller needs. `per_band`: also one histogram per band, as the list `bands` of the result."""
    hist = DbHistogram()
    if per_band:
        hist.bands = [DbHistogram() for _ in range(raster.count)]
    if _accumulate(raster, hist, noise_floor, max_pixels, block) == 0:
        raise SarInputError(raster.path, "no valid pixels (all nodata, NaN, infinite or <= 0)")
    return hist


def describe_raster(raster: SarRaster, noise_floor: float = 1e-10, block: int = 1024) -> dict:
    """Streaming summary of a raster in dB: per-band valid fraction, min/max and 1st/50th/99th percentiles."""
    out = []
    for b in range(1, raster.count + 1):
        hist = DbHistogram()
        n_valid = 0
        for w in raster.blocks(block):
            raw = raster.read(w, band=b)
            valid = valid_mask(raw, raster.units, raster.nodata)
            n_valid += int(valid.sum())
            hist.add(raw_to_db(raw[valid], raster.units, noise_floor))
        entry = {"band": raster.band_indexes[b - 1], "name": raster.band_names[b - 1],
                 "valid_fraction": n_valid / (raster.width * raster.height)}
        if hist.n:
            entry.update(min_db=hist.min, max_db=hist.max, p1_db=hist.percentile(1),
                         p50_db=hist.percentile(50), p99_db=hist.percentile(99))
        out.append(entry)
    return {"bands": out}


__all__ = ["ScalingParams", "fit_scaling", "valid_mask", "raw_to_db", "db_to_raw", "db_to_intensity",
           "describe_raster", "DbHistogram", "UNITS"]


def scaling_kind(chosen: ScalingParams, model_scaling: ScalingParams) -> str:
    """Which of `choose_scaling`'s ranges `chosen` is: 'model' (the model's own), 'shifted' (its width, moved onto
    an uncalibrated raster) or 'fitted' (fitted on the raster)."""
    width = model_scaling.vmax_db - model_scaling.vmin_db
    if abs(chosen.vmin_db - model_scaling.vmin_db) < 1e-6 and abs(chosen.vmax_db - model_scaling.vmax_db) < 1e-6:
        return "model"
    return "shifted" if abs((chosen.vmax_db - chosen.vmin_db) - width) < 1e-3 else "fitted"


def choose_scaling(r, model_scaling: ScalingParams, mode: str = "auto", hist=None) -> tuple[ScalingParams, str]:
    """The dB range to code a raster with, and why (see compress_raster); `hist`: the raster's dB histogram
    when the caller has it (scaling.raster_histogram), else it is read."""
    if mode not in SCALING_CHOICES:
        raise SarInputError(None, f"scaling must be auto, model or source (got '{mode}')")
    if mode == "model":
        return model_scaling, "the model's training range"
    hist = hist if hist is not None else raster_histogram(r, model_scaling.noise_floor)
    p1, p99 = hist.percentile(1), hist.percentile(99)
    if not p99 > p1:  # a flat raster: a 1 dB range around its value
        p1, p99 = p1 - 0.5, p1 + 0.5
    quick = dataclasses.replace(model_scaling, vmin_db=p1, vmax_db=p99)
    lo, hi = model_scaling.vmin_db - 1.0, model_scaling.vmax_db + 1.0
    if mode == "auto" and lo <= quick.vmin_db and quick.vmax_db <= hi:
        return model_scaling, "the model's training range (covers this raster's 1st-99th percentiles)"
    span = model_scaling.vmax_db - model_scaling.vmin_db
    if mode == "auto" and quick.vmax_db - quick.vmin_db <= span - 2.0:
        # Uncalibrated data (GRD digital numbers, SLC amplitudes) is calibrated SAR shifted by a constant in dB:
        # move the model's window onto it (centred on the 1st-99th percentiles) and keep its width, so the
        # network sees the contrast it was trained on.
        shift = (quick.vmin_db + quick.vmax_db) / 2 - (model_scaling.vmin_db + model_scaling.vmax_db) / 2
        lo, hi = round(model_scaling.vmin_db + shift, 3), round(model_scaling.vmax_db + shift, 3)  # short header
        shifted = dataclasses.replace(model_scaling, vmin_db=lo, vmax_db=hi, clip_method="fixed", clip_low=lo,
                                      clip_high=hi, fitted_on=[], pixels=0)
        return shifted, (f"the model's {span:.1f} dB range shifted by {shift:+.2f} dB onto this raster (its "
                         f"1st-99th percentiles [{quick.vmin_db:.1f}, {quick.vmax_db:.1f}] dB fall outside the "
                         f"model's range [{model_scaling.vmin_db:.1f}, {model_scaling.vmax_db:.1f}] dB)")
    fitted = fit_scaling([r], low=0.1, high=99.9, max_pixels_per_raster=4_000_000,
                         noise_floor=model_scaling.noise_floor, flat_ok=True)
    # short header numbers, rounded before they are used
    fitted = dataclasses.replace(fitted, vmin_db=round(fitted.vmin_db, 3), vmax_db=round(fitted.vmax_db, 3))
    why = "fitted on this raster (0.1-99.9 percentiles)"
    if mode == "auto":
        why += (f": its 1st-99th percentiles [{quick.vmin_db:.1f}, {quick.vmax_db:.1f}] dB fall outside the "
                f"model's range [{model_scaling.vmin_db:.1f}, {model_scaling.vmax_db:.1f}] dB")
    return fitted, why
