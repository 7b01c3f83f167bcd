"""SAR image quality metrics: scalar scores and per-pixel maps.

Domains
-------
SAR metrics only make sense in a well defined radiometric domain, so every
function states which one it expects:

* **dB** (``10*log10(intensity)``): :func:`rmse`, :func:`epi`,
  :func:`abs_error_db_map`, :func:`local_epi_map`.
* **[0, 1]-scaled dB** (dB clipped to a display range and rescaled by the
  caller): :func:`psnr`, :func:`ssim`, :func:`ssim_map`, :func:`ms_ssim`.
* **linear intensity** (``10**(dB/10)``, *not* amplitude): :func:`enl`,
  :func:`enl_ratio`, :func:`homogeneous_mask`, :func:`local_enl_ratio_map`.

:func:`summarize` takes dB arrays and does all the conversions itself.

Masks
-----
``mask`` arguments are boolean arrays, ``True`` = valid.  Non-finite values
(NaN nodata, +-inf) are always treated as invalid, in either image, on top of
the mask.  All computations are done in float64.

Maps and bounded memory
-----------------------
The map functions (:func:`abs_error_db_map`, :func:`local_enl_ratio_map`,
:func:`local_epi_map`) process the scene window by window
(:func:`iter_map_windows`): each window is read with a halo large enough that
the kept core is identical to what a whole-image computation gives.  All
neighbourhood operators are fixed-order correlations
(:func:`scipy.ndimage.correlate1d`, :func:`scipy.ndimage.sobel`) with
``mode="reflect"``, so every output pixel depends only on its own
neighbourhood and results are bit-identical whatever the block size (a
running-sum ``uniform_filter`` would not be).  To stream from disk, loop over
:func:`iter_map_windows` yourself, read ``w.read`` from each raster, call the
matching ``*_window`` function (:func:`abs_error_db_window`,
:func:`local_enl_ratio_window`, :func:`local_epi_window`) and keep
``result[w.core]`` at ``w.out`` (halo from :func:`map_halo`).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import numpy as np
from scipy import ndimage

__all__ = [
    "psnr",
    "ssim",
    "ssim_map",
    "ms_ssim",
    "rmse",
    "homogeneous_mask",
    "local_cv_window",
    "enl",
    "enl_ratio",
    "epi",
    "MapWindow",
    "iter_map_windows",
    "map_halo",
    "abs_error_db_window",
    "local_enl_ratio_window",
    "local_epi_window",
    "abs_error_db_map",
    "local_enl_ratio_map",
    "local_epi_map",
    "summarize",
]

# SSIM constants (Wang et al. 2004).
SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Gaussian truncate so that the kernel radius is (SSIM_WIN - 1) // 2 = 5:
# scipy radius = int(truncate * sigma + 0.5) = int(3.5 * 1.5 + 0.5) = 5.
_SSIM_TRUNCATE = ((SSIM_WIN - 1) // 2) / SSIM_SIGMA

# Default adaptive homogeneity rule (see homogeneous_mask).
HOMOGENEOUS_QUANTILE = 0.10
HOMOGENEOUS_CV_FACTOR = 1.5

# Relative / absolute "is ~0" thresholds used by the local maps.
_REL_VAR_EPS = 1e-12  # local var <= eps * local mean^2  ->  treated as zero
_GRAD_EPS = 1e-12  # local mean squared gradient (dB^2/px^2) below -> flat
_MIN_WINDOW_VALID = 0.5  # local maps need >= this fraction of valid pixels


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _check_pair(ref, test) -> Tuple[np.ndarray, np.ndarray]:
    r = _as_f64(ref)
    t = _as_f64(test)
    if r.shape != t.shape:
        raise ValueError(f"shape mismatch: ref {r.shape} vs test {t.shape}")
    if r.ndim != 2:
        raise ValueError(f"expected 2-D images, got shape {r.shape}")
    return r, t


def _valid(shape, mask, *arrays) -> np.ndarray:
    """Boolean validity: mask (True = valid) AND all arrays finite."""
    v = np.ones(shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != tuple(shape):
            raise ValueError(f"mask shape {m.shape} != image shape {tuple(shape)}")
        v &= m.astype(bool)
    for a in arrays:
        v &= np.isfinite(a)
    return v


def _check_window(window: int) -> int:
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    return window


def _box_sum(a: np.ndarray, window: int) -> np.ndarray:
    """Sum over a window x window box (reflect borders), position-exact.

    Uses two fixed-order correlate1d passes instead of uniform_filter's
    running sum, so each output depends only on its own neighbourhood (exact
    block-size independence, no rounding drift along long lines).
    """
    if window == 1:
        return np.array(a, dtype=np.float64, copy=True)
    w = np.ones(window, dtype=np.float64)
    out = ndimage.correlate1d(a, w, axis=0, mode="reflect")
    return ndimage.correlate1d(out, w, axis=1, mode="reflect")


def _sobel_magnitude(a: np.ndarray) -> np.ndarray:
    gy = ndimage.sobel(a, axis=0, mode="reflect")
    gx = ndimage.sobel(a, axis=1, mode="reflect")
    return np.hypot(gx, gy)


def _gradient_pair(ref: np.ndarray, test: np.ndarray, valid: np.ndarray):
    """Sobel gradient magnitudes of both images and their validity.

    Invalid pixels are zero-filled before filtering; a gradient is valid only
    when the whole 3x3 neighbourhood is valid (reflect borders).
    """
    r = np.where(valid, ref, 0.0)
    t = np.where(valid, test, 0.0)
    gvalid = ndimage.minimum_filter(valid, size=3, mode="reflect")
    return _sobel_magnitude(r), _sobel_magnitude(t), gvalid


# --------------------------------------------------------------------------
# scalar metrics
# --------------------------------------------------------------------------


def psnr(ref, test, mask=None, data_range: float = 1.0) -> float:
    """PSNR in dB of [0,1]-scaled images (caller scales dB to [0,1]); inf if identical, NaN if no valid pixel."""
    r, t = _check_pair(ref, test)
    v = _valid(r.shape, mask, r, t)
    if not v.any():
        return float("nan")
    mse = float(np.mean((r[v] - t[v]) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(data_range) ** 2 / mse))


def rmse(ref, test, mask=None) -> float:
    """Root mean square error over valid pixels, in the input's units (dB values -> RMSE in dB)."""
    r, t = _check_pair(ref, test)
    v = _valid(r.shape, mask, r, t)
    if not v.any():
        return float("nan")
    return float(np.sqrt(np.mean((r[v] - t[v]) ** 2)))


def _fill_for_ssim(r: np.ndarray, t: np.ndarray, v: np.ndarray):
    """Fill invalid pixels of both images with ref's value (or the valid ref mean where ref itself is invalid)."""
    if v.all():
        return r, t
    fill_value = float(np.mean(r[v])) if v.any() else 0.0
    ref_fill = np.where(np.isfinite(r), r, fill_value)
    rf = np.where(v, r, ref_fill)
    tf = np.where(v, t, ref_fill)
    return rf, tf


def ssim_map(ref, test, mask=None, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel Gaussian-window SSIM map of [0,1]-scaled images (sigma 1.5, 11x11, K1 .01, K2 .03); NaN at invalid pixels.

    Invalid pixels (mask False or non-finite) are first filled in *both*
    images with the reference value (or, where the reference itself is not
    finite, with the mean of the valid reference), so they contribute a
    perfect match to the windows of neighbouring valid pixels; they are then
    set to NaN in the returned map.  Borders use ``mode="reflect"``.  Local
    (co)variances are the Gaussian-weighted population moments (no sample
    covariance correction), as in the original paper.
    """
    r, t = _check_pair(ref, test)
    v = _valid(r.shape, mask, r, t)
    r, t = _fill_for_ssim(r, t, v)

    def g(a):
        return ndimage.gaussian_filter(a, SSIM_SIGMA, mode="reflect", truncate=_SSIM_TRUNCATE)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_r = g(r)
    mu_t = g(t)
    var_r = g(r * r) - mu_r * mu_r
    var_t = g(t * t) - mu_t * mu_t
    cov = g(r * t) - mu_r * mu_t
    num = (2.0 * mu_r * mu_t + c1) * (2.0 * cov + c2)
    den = (mu_r * mu_r + mu_t * mu_t + c1) * (var_r + var_t + c2)
    out = num / den
    out[~v] = np.nan
    return out


def ssim(ref, test, mask=None, data_range: float = 1.0) -> float:
    """Mean Gaussian-window SSIM over valid pixels of [0,1]-scaled images (see ssim_map for mask handling)."""
    m = ssim_map(ref, test, mask=mask, data_range=data_range)
    fin = np.isfinite(m)
    if not fin.any():
        return float("nan")
    return float(np.mean(m[fin]))


def _ms_ssim_win_size(min_side: int) -> int:
    """Largest odd window <= 11 that pytorch_msssim accepts: min_side > (win - 1) * 16."""
    for win in range(SSIM_WIN, 2, -2):
        if min_side > (win - 1) * 16:
            return win
    raise ValueError(f"image too small for MS-SSIM (5 scales): smaller side {min_side} must be > 32")


def ms_ssim(ref, test, data_range: float = 1.0) -> float:
    """MS-SSIM (5 scales, pytorch_msssim) of [0,1]-scaled images; win_size shrinks for small images.

    The Gaussian window keeps sigma 1.5 but its size is the largest odd value
    <= 11 with ``min(H, W) > (win_size - 1) * 16`` (pytorch_msssim's
    condition for its 4 downsamplings); images with a smaller side <= 32
    raise ValueError.  No mask: inputs must be finite (fill or crop invalid
    areas first), otherwise ValueError.  Computed in float64.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    r, t = _check_pair(ref, test)
    if not (np.isfinite(r).all() and np.isfinite(t).all()):
        raise ValueError("ms_ssim needs finite inputs (no mask support): fill or crop invalid pixels first")
    win = _ms_ssim_win_size(min(r.shape))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(r))[None, None]
        y = torch.from_numpy(np.ascontiguousarray(t))[None, None]
        val = _ms_ssim(
            x, y, data_range=float(data_range), size_average=True, win_size=win, win_sigma=SSIM_SIGMA, K=(SSIM_K1, SSIM_K2)
        )
    return float(val.item())


def homogeneous_mask(
    intensity,
    window: int = 15,
    cv_threshold: Optional[float] = None,
    *,
    valid=None,
    quantile: float = HOMOGENEOUS_QUANTILE,
    cv_factor: float = HOMOGENEOUS_CV_FACTOR,
) -> np.ndarray:
    """Boolean mask of homogeneous pixels from the local coefficient of variation of LINEAR intensity.

    Local CV = std / mean of the intensity in a ``window`` x ``window`` box
    (reflect borders, population std).  A pixel is a candidate only if it is
    valid (``valid`` True and finite) and its whole window is valid and has
    a positive mean.

    Threshold rule:

    * ``cv_threshold`` given: homogeneous = CV < ``cv_threshold`` (absolute).
    * default (adaptive): homogeneous = CV < ``cv_factor`` x the
      ``quantile``-quantile (default 1.5 x the 10th percentile) of the
      candidates' CV distribution.

    Rationale: in fully developed L-look speckle the intensity CV is
    1/sqrt(L) (1.0 for single look), so no fixed threshold suits every
    product.  The low quantile estimates the pure-speckle CV level of the
    flattest areas of the scene; the factor 1.5 covers the estimation spread
    of a 15x15 CV (about +-10 % for L=1), so a truly homogeneous area is kept
    almost entirely instead of only its lowest-CV tail (which would bias the
    ENL upwards), while edges, point targets and texture (CV well above the
    speckle level) are rejected.
    """
    cv, cand = local_cv_window(intensity, valid, window)
    if not cand.any():
        return cand
    if cv_threshold is None:
        thr = float(cv_factor) * float(np.quantile(cv[cand], quantile))
    else:
        thr = float(cv_threshold)
    return cand & (cv < thr)


def local_cv_window(intensity, valid=None, window: int = 15) -> Tuple[np.ndarray, np.ndarray]:
    """Local coefficient of variation of LINEAR intensity in a window x window box, and where it is usable.

    A pixel is a candidate when it is valid and finite, its whole box is valid and the box mean is > 0.
    Keep ``[core]`` of both results when streaming (halo ``window // 2``).
    """
    window = _check_window(window)
    x = _as_f64(intensity)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    v = _valid(x.shape, valid, x)
    xf = np.where(v, x, 0.0)
    n = _box_sum(v.astype(np.float64), window)
    s1 = _box_sum(xf, window)
    s2 = _box_sum(xf * xf, window)
    full = n >= window * window - 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        cv = np.sqrt(var) / mean
    return cv, v & full & (mean > 0) & np.isfinite(cv)


def enl(intensity, mask=None) -> float:
    """Equivalent number of looks mean^2/var (population var) of LINEAR intensity over mask (None = all finite pixels).

    For fully developed L-look gamma-distributed intensity speckle ENL ~= L.
    Returns NaN with fewer than 2 valid pixels and inf for zero variance.
    Meaningful only over a homogeneous area (see homogeneous_mask); a mask
    spanning areas of different mean underestimates the ENL.
    """
    x = _as_f64(intensity)
    v = _valid(x.shape, mask, x)
    if v.sum() < 2:
        return float("nan")
    vals = x[v]
    m = float(np.mean(vals))
    var = float(np.mean((vals - m) ** 2))
    if var == 0.0:
        return float("inf")
    return m * m / var


def enl_ratio(ref_intensity, test_intensity, mask=None) -> float:
    """ENL(test)/ENL(ref) of LINEAR intensity over one mask (default: homogeneous_mask of ref); >1 smoothed, <1 noisier.

    With ``mask=None`` the region is ``homogeneous_mask(ref_intensity,
    valid=finite(test))``; a given ``mask`` is used as the region directly
    (intersected with finiteness of both images), so pass
    ``homogeneous_mask(ref, valid=...)`` to restrict to homogeneous areas.
    """
    r, t = _check_pair(ref_intensity, test_intensity)
    if mask is None:
        mask = homogeneous_mask(r, valid=np.isfinite(t))
    v = _valid(r.shape, mask, r, t)
    e_ref = enl(r, v)
    e_test = enl(t, v)
    if not np.isfinite(e_ref) or e_ref == 0.0:
        return float("nan")
    return float(e_test / e_ref)


def epi(ref, test, mask=None) -> float:
    """Edge preservation index on dB images: correlation of Sobel gradient magnitudes sum(gR*gT)/sqrt(sum(gR^2)*sum(gT^2)).

    ref and test must be in the same domain (dB recommended: the multiplicative
    speckle becomes additive, edges are contrast-normalised).  Pixels whose
    3x3 neighbourhood contains an invalid pixel are excluded.  1 for
    identical images; NaN if there is no gradient at all.
    """
    r, t = _check_pair(ref, test)
    v = _valid(r.shape, mask, r, t)
    gr, gt, gv = _gradient_pair(r, t, v)
    if not gv.any():
        return float("nan")
    a = gr[gv]
    b = gt[gv]
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if den == 0.0:
        return float("nan")
    return float(np.sum(a * b) / den)


# --------------------------------------------------------------------------
# block machinery for the maps
# --------------------------------------------------------------------------


class MapWindow(NamedTuple):
    """One processing window: ``read`` = (rows, cols) slices into the full image (core + halo), ``core`` = slices into the read window to keep."""

    read: Tuple[slice, slice]
    core: Tuple[slice, slice]

    @property
    def out(self) -> Tuple[slice, slice]:
        """Slices of the full image where ``result[core]`` goes."""
        (rr, rc), (cr, cc) = self.read, self.core
        return (
            slice(rr.start + cr.start, rr.start + cr.stop),
            slice(rc.start + cc.start, rc.start + cc.stop),
        )


def iter_map_windows(height: int, width: int, block: int = 1024, halo: int = 0) -> Iterator[MapWindow]:
    """Yield MapWindow(read_slices, core_slices) tiling a height x width image in block x block cores with a halo.

    ``read`` is the core extended by ``halo`` pixels on every side, clipped
    to the image (at the image border the operators' own reflect boundary
    applies, as for a whole-image computation); ``core`` indexes the core
    inside the read window; ``MapWindow.out`` gives the core in full-image
    coordinates.  Cores tile the image exactly once, row-major.
    """
    height, width, block, halo = int(height), int(width), int(block), int(halo)
    if block < 1:
        raise ValueError("block must be >= 1")
    if halo < 0:
        raise ValueError("halo must be >= 0")
    for r0 in range(0, height, block):
        r1 = min(r0 + block, height)
        a0 = max(r0 - halo, 0)
        a1 = min(r1 + halo, height)
        for c0 in range(0, width, block):
            c1 = min(c0 + block, width)
            b0 = max(c0 - halo, 0)
            b1 = min(c1 + halo, width)
            yield MapWindow(
                read=(slice(a0, a1), slice(b0, b1)),
                core=(slice(r0 - a0, r1 - a0), slice(c0 - b0, c1 - b0)),
            )


def map_halo(kind: str, window: int = 15) -> int:
    """Halo (pixels) a map kind ('abs_error_db', 'local_enl_ratio', 'local_epi') needs for block-independent results."""
    window = _check_window(window)
    if kind == "abs_error_db":
        return 0
    if kind == "local_enl_ratio":
        return window // 2
    if kind == "local_epi":
        return window // 2 + 1  # Sobel / 3x3 validity (1) + box (window // 2)
    raise ValueError(f"unknown map kind {kind!r}")


def abs_error_db_window(ref_db, test_db, valid=None) -> np.ndarray:
    """|test - ref| in dB for one window (float64); NaN where invalid."""
    r, t = _check_pair(ref_db, test_db)
    v = _valid(r.shape, valid, r, t)
    out = np.abs(t - r)
    out[~v] = np.nan
    return out


def local_enl_ratio_window(ref_intensity, test_intensity, valid=None, window: int = 15) -> np.ndarray:
    """Local ENL(test)/ENL(ref) of LINEAR intensity in a sliding box for one padded window (float64).

    Local mean/variance use only valid pixels of the box (reflect borders);
    NaN where the pixel is invalid, fewer than half of the box is valid, the
    ref local mean is <= 0 or the ref local variance is ~0
    (<= 1e-12 x mean^2); +inf where only the test local variance is ~0
    (completely flattened).  Keep ``[core]`` of the result (halo
    ``window // 2``).
    """
    window = _check_window(window)
    r, t = _check_pair(ref_intensity, test_intensity)
    v = _valid(r.shape, valid, r, t)
    vf = v.astype(np.float64)
    rf = np.where(v, r, 0.0)
    tf = np.where(v, t, 0.0)
    n = _box_sum(vf, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        mr = _box_sum(rf, window) / n
        mt = _box_sum(tf, window) / n
        vr = np.maximum(_box_sum(rf * rf, window) / n - mr * mr, 0.0)
        vt = np.maximum(_box_sum(tf * tf, window) / n - mt * mt, 0.0)
        ok = v & (n >= _MIN_WINDOW_VALID * window * window) & (mr > 0) & (vr > _REL_VAR_EPS * mr * mr)
        flat_t = vt <= _REL_VAR_EPS * mt * mt
        out = (mt * mt * vr) / (vt * mr * mr)
    out = np.where(flat_t, np.inf, out)
    out[~ok] = np.nan
    return out


def local_epi_window(ref_db, test_db, valid=None, window: int = 15) -> np.ndarray:
    """Local EPI on dB images for one padded window: box(gR*gT)/sqrt(box(gR^2)*box(gT^2)) of Sobel magnitudes (float64).

    Gradients whose 3x3 neighbourhood touches an invalid pixel are left out
    of the box sums; NaN where the pixel is invalid, fewer than half of the
    box has valid gradients, or either local mean squared gradient is ~0
    (<= 1e-12 dB^2).  Keep ``[core]`` of the result (halo ``window//2 + 1``).
    """
    window = _check_window(window)
    r, t = _check_pair(ref_db, test_db)
    v = _valid(r.shape, valid, r, t)
    gr, gt, gv = _gradient_pair(r, t, v)
    gr = np.where(gv, gr, 0.0)
    gt = np.where(gv, gt, 0.0)
    n = _box_sum(gv.astype(np.float64), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        srt = _box_sum(gr * gt, window) / n
        srr = _box_sum(gr * gr, window) / n
        stt = _box_sum(gt * gt, window) / n
        out = srt / np.sqrt(srr * stt)
    ok = v & (n >= _MIN_WINDOW_VALID * window * window) & (srr > _GRAD_EPS) & (stt > _GRAD_EPS)
    out[~ok] = np.nan
    return out


def _blockwise(
    fn: Callable[..., np.ndarray],
    ref,
    test,
    mask,
    halo: int,
    block: Optional[int],
    dtype,
    **kwargs,
) -> np.ndarray:
    ref_shape = tuple(np.shape(ref))
    if ref_shape != tuple(np.shape(test)):
        raise ValueError(f"shape mismatch: ref {ref_shape} vs test {tuple(np.shape(test))}")
    if len(ref_shape) != 2:
        raise ValueError(f"expected 2-D images, got shape {ref_shape}")
    if mask is not None and tuple(np.shape(mask)) != ref_shape:
        raise ValueError(f"mask shape {tuple(np.shape(mask))} != image shape {ref_shape}")
    h, w = ref_shape
    if block is None:
        block = max(h, w, 1)
    out = np.empty((h, w), dtype=dtype)
    for win in iter_map_windows(h, w, block=block, halo=halo):
        r = _as_f64(ref[win.read])
        t = _as_f64(test[win.read])
        m = None if mask is None else np.asarray(mask[win.read], dtype=bool)
        res = fn(r, t, m, **kwargs)
        out[win.out] = res[win.core]
    return out


def abs_error_db_map(
    ref_db, test_db, mask=None, block: Optional[int] = 1024, dtype=np.float32
) -> np.ndarray:
    """Per-pixel |test - ref| in dB, computed block by block; NaN where invalid (block=None: one block)."""
    return _blockwise(abs_error_db_window, ref_db, test_db, mask, map_halo("abs_error_db"), block, dtype)


def local_enl_ratio_map(
    ref_intensity, test_intensity, window: int = 15, mask=None, block: Optional[int] = 1024, dtype=np.float32
) -> np.ndarray:
    """Per-pixel local ENL(test)/ENL(ref) of LINEAR intensity in a window x window box (see local_enl_ratio_window)."""
    return _blockwise(
        local_enl_ratio_window,
        ref_intensity,
        test_intensity,
        mask,
        map_halo("local_enl_ratio", window),
        block,
        dtype,
        window=window,
    )


def local_epi_map(
    ref_db, test_db, window: int = 15, mask=None, block: Optional[int] = 1024, dtype=np.float32
) -> np.ndarray:
    """Per-pixel local EPI (correlation of Sobel gradient magnitudes) of dB images in a window x window box."""
    halo = map_halo("local_epi", window)
    return _blockwise(local_epi_window, ref_db, test_db, mask, halo, block, dtype, window=window)


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------


def summarize(ref_db, test_db, mask, low_db: float, high_db: float) -> dict:
    """Scalar metrics of a dB reconstruction: psnr/ssim (dB clipped to [low_db, high_db], scaled to [0,1]), rmse_db, enl_ratio (linear, homogeneous mask of ref), epi (dB), valid_fraction.

    ``mask`` (True = valid, or None) is combined with finiteness of both
    images; every metric uses only those pixels.  ``enl_ratio`` is computed
    over ``homogeneous_mask(10**(ref_db/10), valid=valid)`` with the default
    adaptive rule.
    """
    r, t = _check_pair(ref_db, test_db)
    low_db = float(low_db)
    high_db = float(high_db)
    if not high_db > low_db:
        raise ValueError(f"need high_db > low_db, got [{low_db}, {high_db}]")
    v = _valid(r.shape, mask, r, t)
    span = high_db - low_db
    r01 = (np.clip(r, low_db, high_db) - low_db) / span
    t01 = (np.clip(t, low_db, high_db) - low_db) / span
    with np.errstate(over="ignore", invalid="ignore"):
        r_lin = np.where(v, np.power(10.0, np.where(v, r, 0.0) / 10.0), np.nan)
        t_lin = np.where(v, np.power(10.0, np.where(v, t, 0.0) / 10.0), np.nan)
    hom = homogeneous_mask(r_lin, valid=v)
    return {
        "psnr": psnr(r01, t01, mask=v, data_range=1.0),
        "ssim": ssim(r01, t01, mask=v, data_range=1.0),
        "rmse_db": rmse(r, t, mask=v),
        "enl_ratio": enl_ratio(r_lin, t_lin, mask=hom),
        "epi": epi(r, t, mask=v),
        "valid_fraction": float(v.mean()) if v.size else float("nan"),
    }
