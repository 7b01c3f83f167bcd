"""Physics-aware augmentation of real SAR training patches (training split only; evaluation never uses it).

Every training patch is read from a real raster in its source units, turned into intensity / dB, and then:

1. **multilooking** (probability ``p_multilook``): the intensity of a k×k larger window is averaged over k×k
   blocks (k in 2, 3, 4, 6, as far as the raster allows): a smooth, high-ENL scene of the same ground (ENL × ≈k²
   for uncorrelated speckle), like the block-averaged Kerala GRD or multi-looked / geocoded products;
2. **speckle re-synthesis** (probability ``p_speckle`` of the multilooked patches): the multilooked intensity,
   an estimate of the reflectivity, times Gamma(L, 1/L) noise with L in {1, 1, 2, 4} (L = 1: Exp(1), single-look
   speckle): SLC-like statistics on real reflectivity;
3. **dB gain / offset** (``gain_db``): a constant added in dB = a calibration constant or the unknown DN scale
   of uncalibrated products;
4. a **dB window** onto [0, 1], one of
   - ``model``: the model's fixed training range (what `--scaling model` and calibrated `auto` use), after the
     gain above;
   - ``shifted``: the model's window width centred on the patch's 1st–99th percentile midpoint (what `auto`
     does for uncalibrated rasters whose range is narrower than the window);
   - ``source``: the patch's own 0.1–99.9 percentiles widened by a random margin on each side (what
     `--scaling source` fits on a whole raster: any width, from ~10 dB for smooth DN scenes to ~60 dB);
5. the dihedral flips / rotations of `training.patches`.

Values outside the window are clipped to [0, 1] as the codec does. Randomness comes from torch's generator (a
seed per item), so runs with ``--workers 0`` are reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from training.patches import PatchRef, PatchSource, SarPatchDataset, dihedral
from sar_ae_core.scaling import ScalingParams, raw_to_db, valid_mask


# ------------------------------------------------------------------------------------------------
# Building blocks (pure numpy, tested one by one)
# ------------------------------------------------------------------------------------------------
def apply_gain_db(db: np.ndarray, gain_db: float) -> np.ndarray:
    """A calibration constant / DN scale: + gain in dB (= intensity × 10^(gain/10))."""
    return db + float(gain_db)


def multilook(intensity: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Average intensity over non-overlapping k×k blocks (valid pixels only). A block is valid when at least
    half of its pixels are. Input (k·S, k·S) → output (S, S)."""
    if k == 1:
        return intensity, valid
    h, w = intensity.shape
    s_r, s_c = h // k, w // k
    i = np.where(valid, intensity, 0.0)[: s_r * k, : s_c * k].reshape(s_r, k, s_c, k)
    v = valid[: s_r * k, : s_c * k].reshape(s_r, k, s_c, k)
    n = v.sum(axis=(1, 3))
    out = i.sum(axis=(1, 3)) / np.maximum(n, 1)
    ok = n * 2 >= k * k
    return np.where(ok, out, 0.0), ok


def resynthesize_speckle(intensity: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Intensity × Gamma(L, 1/L) (unit mean; L = 1 is Exp(1), fully developed single-look speckle)."""
    return intensity * rng.gamma(float(looks), 1.0 / float(looks), size=intensity.shape)


def enl(intensity: np.ndarray, valid: Optional[np.ndarray] = None, block: int = 9) -> float:
    """Median over non-overlapping block×block cells of mean²/variance of the intensity (cells fully valid)."""
    h, w = intensity.shape
    nr, nc = h // block, w // block
    cells = intensity[: nr * block, : nc * block].reshape(nr, block, nc, block).transpose(0, 2, 1, 3)
    cells = cells.reshape(nr * nc, block * block)
    if valid is not None:
        ok = valid[: nr * block, : nc * block].reshape(nr, block, nc, block).transpose(0, 2, 1, 3)
        cells = cells[ok.reshape(nr * nc, -1).all(axis=1)]
    m, v = cells.mean(axis=1), cells.var(axis=1)
    good = v > 0
    return float(np.median(m[good] ** 2 / v[good]))


def window_to_unit(db: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """dB → [0, 1] on the window [lo, hi] (clipped), as the codec scales."""
    return np.clip((db - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


@dataclass
class AugmentConfig:
    p_multilook: float = 0.3          # probability of multilooking a patch
    looks: Sequence[int] = (2, 3, 4, 6)
    p_speckle: float = 0.5            # of the multilooked patches: re-synthesise speckle
    speckle_looks: Sequence[float] = (1.0, 1.0, 2.0, 4.0)
    gain_db: float = 4.0              # uniform gain in [-gain_db, +gain_db] (model window)
    p_model: float = 0.45             # window choice: model / shifted / source (the rest)
    p_shifted: float = 0.25
    shift_jitter_db: float = 3.0
    source_margin: float = 0.3        # source window widened by U(0, margin) × its width on each side
    min_width_db: float = 3.0


def choose_window(db: np.ndarray, valid: np.ndarray, model: ScalingParams, cfg: AugmentConfig,
                  rng: np.random.Generator) -> tuple[float, float, str, float]:
    """(lo, hi, mode, gain) of the dB window for one patch."""
    u = rng.random()
    vals = db[valid]
    if u < cfg.p_model or vals.size < 16:
        g = rng.uniform(-cfg.gain_db, cfg.gain_db)
        return model.vmin_db - g, model.vmax_db - g, "model", g  # window moved by -g == data moved by +g
    if u < cfg.p_model + cfg.p_shifted:
        p1, p99 = np.percentile(vals, [1, 99])
        mid = (p1 + p99) / 2 + rng.uniform(-cfg.shift_jitter_db, cfg.shift_jitter_db)
        half = (model.vmax_db - model.vmin_db) / 2
        return mid - half, mid + half, "shifted", 0.0
    lo, hi = np.percentile(vals, [0.1, 99.9])
    width = max(hi - lo, cfg.min_width_db)
    lo -= rng.uniform(0, cfg.source_margin) * width
    hi += rng.uniform(0, cfg.source_margin) * width
    return float(lo), float(hi), "source", 0.0


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------
def _window_histogram(r, window, noise_floor: float):
    """dB histogram of the pixels of `window` (col, row, width, height) of an open raster."""
    from sar_ae_core.io.raster import Window
    from sar_ae_core.scaling import DbHistogram

    raw = r.read(Window(*(int(v) for v in window)))
    ok = valid_mask(raw, r.units, r.nodata)
    hist = DbHistogram()
    hist.add(raw_to_db(raw[ok], r.units, noise_floor))
    return hist


class AutoScaledPatchDataset(SarPatchDataset):
    """Untouched patches, each raster scaled to [0, 1] with the dB window the codec's `--scaling auto` chooses
    for it (sar_ae_core.scaling.choose_scaling: the model's range, shifted onto uncalibrated rasters, or fitted on
    the raster): validation and test see real rasters as the codec will, and the quality filter judges each
    patch in that window (in the model's fixed window a DN or 8-bit amplitude raster is one clipped value)."""

    def __init__(self, sources: Sequence[PatchSource], scaling: ScalingParams, size: int, stride: int, quality,
                 augment: bool = False, scaling_mode: str = "auto"):
        from sar_ae_core.scaling import choose_scaling
        from sar_ae_core.io.raster import open_raster

        self.source_scaling = []
        for src in sources:
            with open_raster(src.path, bands=src.bands, units=src.units) as r:
                # a source that is part of a raster (the Kerala halves) gets the window its own pixels give it, as
                # the codec gives that part as a file: the other part (another split) never moves it
                hist = None if src.window is None else _window_histogram(r, src.window, scaling.noise_floor)
                self.source_scaling.append(choose_scaling(r, scaling, scaling_mode, hist=hist)[0])
        super().__init__(sources, scaling, size=size, stride=stride, quality=quality, augment=augment)

    def _read(self, ref: PatchRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw, inside, raster = self._read_raw(ref)
        scaled, valid = self.source_scaling[ref.source].forward(raw, raster.units, raster.nodata)
        valid &= inside
        return scaled, valid, inside


class AugmentedPatchDataset(AutoScaledPatchDataset):
    """SarPatchDataset whose items go through the physics-aware augmentation above, with the patches of each
    product category repeated so that the categories get the given shares of an epoch."""

    def __init__(self, sources: Sequence[PatchSource], scaling: ScalingParams, size: int, stride: int, quality,
                 categories: Sequence[str], shares: Optional[dict[str, float]] = None,
                 augment_cfg: Optional[AugmentConfig] = None, seed: int = 0):
        super().__init__(sources, scaling, size=size, stride=stride, quality=quality, augment=True)
        self.augment_seed = seed
        self.categories = list(categories)
        self.acfg = augment_cfg or AugmentConfig()
        self.base_index = list(self.index)
        if shares:
            self.index = balance_index(self.base_index, self.categories, shares, seed)

    def category_counts(self, index: Optional[list[PatchRef]] = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for ref in (self.index if index is None else index):
            c = self.categories[ref.source]
            out[c] = out.get(c, 0) + 1
        return out

    def augmented(self, ref: PatchRef, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """(scaled [0, 1] patch, validity, what was done) for one patch."""
        a, s = self.acfg, self.size
        raster = self._raster(ref.source)
        _, _, width, height = self.sources[ref.source].bounds(raster)
        info: dict = {"k": 1}
        k = 1
        if rng.random() < a.p_multilook:
            fits = [kk for kk in a.looks if kk * s <= max(width, height) and kk * s <= 2 * min(width, height)]
            if fits:
                k = int(rng.choice(fits))
        if k > 1:
            big = k * s
            row = int(rng.integers(0, max(height - big, 0) + 1))
            col = int(rng.integers(0, max(width - big, 0) + 1))
            raw, inside, raster = self._read_raw(ref, size=big, row=row, col=col)
        else:
            raw, inside, raster = self._read_raw(ref)
        valid = valid_mask(raw, raster.units, raster.nodata) & inside
        db = raw_to_db(np.where(valid, raw, 1), raster.units, self.scaling.noise_floor)
        if k > 1:
            intensity, valid = multilook(10.0 ** (db / 10.0), valid, k)
            info["k"] = k
            if rng.random() < a.p_speckle:
                looks = float(rng.choice(a.speckle_looks))
                intensity = resynthesize_speckle(intensity, looks, rng)
                info["speckle_looks"] = looks
            db = 10.0 * np.log10(np.maximum(intensity, self.scaling.noise_floor))
        lo, hi, mode, gain = choose_window(db, valid, self.scaling, a, rng)
        info.update(window=mode, lo=lo, hi=hi, gain=gain)
        scaled = window_to_unit(db, lo, hi)
        scaled[~valid] = 0.0
        return scaled, valid, info

    def __getitem__(self, item: int) -> dict:
        ref = self.index[item]
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rng = np.random.default_rng(seed)
        scaled, valid, _ = self.augmented(ref, rng)
        pair = dihedral(np.stack([scaled, valid.astype(np.float32)]), int(rng.integers(0, 8)))
        return {"image": torch.from_numpy(pair[:1].copy()), "mask": torch.from_numpy(pair[1:].copy()),
                "source": ref.source}


def balance_index(index: list[PatchRef], categories: Sequence[str], shares: dict[str, float],
                  seed: int = 0) -> list[PatchRef]:
    """The patches repeated per category so that category c gets ≈ shares[c] of an epoch (every patch at least
    once: the epoch is as long as the category with the most patches per share needs; categories absent from the
    data drop out and the shares are renormalised; a category without a share keeps its patches once)."""
    by_cat: dict[str, list[PatchRef]] = {}
    for ref in index:
        by_cat.setdefault(categories[ref.source], []).append(ref)
    present = {c: shares.get(c, 0.0) for c in by_cat}
    total_share = sum(present.values()) or 1.0
    n = max([len(by_cat[c]) * total_share / present[c] for c in by_cat if present[c] > 0] or [len(index)])
    rng = np.random.default_rng(seed)
    out: list[PatchRef] = []
    for cat in sorted(by_cat):
        refs = by_cat[cat]
        want = max(len(refs), int(round(present[cat] / total_share * n))) if present[cat] > 0 else len(refs)
        reps, rest = divmod(want, len(refs))
        out += refs * reps
        out += [refs[i] for i in sorted(rng.choice(len(refs), size=rest, replace=False))]
    return out
