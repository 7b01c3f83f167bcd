"""Patches for training: a grid over each raster, a quality filter, a lazy torch Dataset that reads
patches by window from many rasters of any size, scene-level splits and dihedral augmentation."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import SarRaster, open_raster
from sar_ae_core.scaling import ScalingParams


def patch_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: every `stride`, plus one flush with the far edge; [0] if shorter than a patch."""
    if stride <= 0 or size <= 0:
        raise ValueError("patch size and stride must be positive")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class PatchFilter:
    """Quality filter: enough texture (std of valid scaled values) and few invalid pixels inside the raster."""

    min_std: float = 0.02
    max_invalid_fraction: float = 0.1

    def accepts(self, scaled: np.ndarray, valid: np.ndarray, inside: np.ndarray) -> bool:
        """True when the patch is worth training on (padding outside the raster is not counted as invalid)."""
        n_inside = int(inside.sum())
        if n_inside == 0:
            return False
        good = valid & inside
        invalid_fraction = 1.0 - good.sum() / n_inside
        if invalid_fraction > self.max_invalid_fraction or not good.any():
            return False
        return float(scaled[good].std()) >= self.min_std


@dataclass(frozen=True)
class PatchSource:
    """One raster to sample patches from, with how to read it."""

    path: str
    units: str = "auto"
    bands: str = "all"
    window: Optional[tuple[int, int, int, int]] = None  # (col, row, width, height): use only this part

    def bounds(self, raster: SarRaster) -> tuple[int, int, int, int]:
        """(col, row, width, height) of the part used, clipped to the raster (the whole raster by default)."""
        if self.window is None:
            return 0, 0, raster.width, raster.height
        c, r, w, h = (int(v) for v in self.window)
        c, r = max(c, 0), max(r, 0)
        return c, r, max(min(w, raster.width - c), 0), max(min(h, raster.height - r), 0)


@dataclass(frozen=True)
class PatchRef:
    """Where a patch comes from: source index, band (1-based among the selected ones), row and column."""

    source: int
    band: int
    row: int
    col: int


_POL = re.compile(r"(?<![a-z0-9])(vv|vh|hh|hv)(?![a-z0-9])")


def scene_key(path: str | os.PathLike) -> str:
    """Identify the acquisition a file belongs to: its name without extension and polarisation tokens,
    so the VV and VH files of one scene always land in the same split."""
    stem = Path(path).name.lower()
    stem = re.sub(r"\.(tiff?|npy|vrt|jp2|img)$", "", stem)
    stem = _POL.sub("", stem.replace("-", "_"))
    return re.sub(r"_+", "_", stem).strip("_")


def split_scenes(paths: Sequence[str], val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0) -> dict[str, list[str]]:
    """Deterministic scene-level split into train/val/test; all files of one scene go to one subset."""
    groups: dict[str, list[str]] = {}
    for p in sorted(paths):
        groups.setdefault(scene_key(p), []).append(p)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n = len(keys)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 3:  # every subset gets at least one scene when there are enough scenes
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    n_test, n_val = min(n_test, max(n - 1, 0)), min(n_val, max(n - 1 - n_test, 0))
    subsets = {"test": keys[:n_test], "val": keys[n_test:n_test + n_val], "train": keys[n_test + n_val:]}
    return {name: [p for k in ks for p in groups[k]] for name, ks in subsets.items()}


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90° rotations of the last two axes (k in 0..7)."""
    out = np.rot90(array, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class SarPatchDataset(Dataset):
    """A map-style torch Dataset of scaled SAR patches read lazily by window from many rasters.

    The index is built from each raster's patch grid; with `prefilter` every candidate is read once
    (window by window, bounded memory) and kept if it passes the quality filter. Rasters smaller than a
    patch give one zero-padded patch whose mask marks the padding invalid.
    Items are dicts: `image` (1, S, S) float32 in [0, 1], `mask` (1, S, S) float32 (1 = valid),
    `source` (int).
    """

    def __init__(self, sources: Sequence[PatchSource | str], scaling: ScalingParams, size: int = 256,
                 stride: Optional[int] = None, quality: PatchFilter = PatchFilter(), augment: bool = False,
                 prefilter: bool = True):
        self.sources = [s if isinstance(s, PatchSource) else PatchSource(os.fspath(s)) for s in sources]
        self.scaling = scaling
        self.size = int(size)
        self.stride = int(stride or size)
        self.quality = quality
        self.augment = augment
        self._handles: dict[int, SarRaster] = {}
        self._pid = os.getpid()
        self.index: list[PatchRef] = []
        self.rejected = 0
        for i in range(len(self.sources)):
            self._index_source(i, prefilter)

    def _index_source(self, i: int, prefilter: bool) -> None:
        raster = self._raster(i)
        _, _, width, height = self.sources[i].bounds(raster)
        for band in range(1, raster.count + 1):
            for row in patch_origins(height, self.size, self.stride):
                for col in patch_origins(width, self.size, self.stride):
                    ref = PatchRef(i, band, row, col)
                    if prefilter:
                        scaled, valid, inside = self._read(ref)
                        if not self.quality.accepts(scaled, valid, inside):
                            self.rejected += 1
                            continue
                    self.index.append(ref)

    def _raster(self, i: int) -> SarRaster:
        # Dataset handles are per process: DataLoader workers re-open what they need after fork.
        if os.getpid() != self._pid:
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            s = self.sources[i]
            self._handles[i] = open_raster(s.path, bands=s.bands, units=s.units)
        return self._handles[i]

    def _read_raw(self, ref: PatchRef, size: Optional[int] = None, row: Optional[int] = None,
                  col: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, SarRaster]:
        """Raw values (source units) of a size×size window at (row, col) of the source's part (default: the
        patch), zero-padded, with the mask of pixels inside that part."""
        raster = self._raster(ref.source)
        size = self.size if size is None else int(size)
        row, col = (ref.row if row is None else row), (ref.col if col is None else col)
        c0, r0, width, height = self.sources[ref.source].bounds(raster)
        raw, inside = raster.read_padded(r0 + row, c0 + col, size, band=ref.band)
        if self.sources[ref.source].window is not None:
            inside[max(height - row, 0):, :] = False
            inside[:, max(width - col, 0):] = False
            raw = np.where(inside, raw[0], np.zeros((), raw.dtype))[None]  # nothing beyond the part is seen
        return raw[0], inside, raster

    def _read(self, ref: PatchRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw, inside, raster = self._read_raw(ref)
        scaled, valid = self.scaling.forward(raw, raster.units, raster.nodata)
        valid &= inside
        return scaled, valid, inside

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        ref = self.index[item]
        scaled, valid, _ = self._read(ref)
        pair = np.stack([scaled, valid.astype(np.float32)])
        if self.augment:
            pair = dihedral(pair, int(torch.randint(0, 8, ()).item()))
        return {"image": torch.from_numpy(pair[:1].copy()), "mask": torch.from_numpy(pair[1:].copy()),
                "source": ref.source}

    def close(self) -> None:
        """Close every open raster."""
        for r in self._handles.values():
            r.close()
        self._handles = {}

    def describe(self) -> dict:
        """Counts per source, for logs and checkpoints."""
        per = {}
        for ref in self.index:
            name = os.path.basename(self.sources[ref.source].path)
            per[name] = per.get(name, 0) + 1
        return {"patches": len(self.index), "rejected": self.rejected, "size": self.size,
                "stride": self.stride, "per_source": per}


def require_patches(dataset: SarPatchDataset, what: str) -> None:
    """Stop with a clear message when a split has no usable patch."""
    if len(dataset) == 0:
        names = ", ".join(os.path.basename(s.path) for s in dataset.sources) or "no rasters"
        raise SarInputError(None, f"no valid {what} patches in {names} (all rejected by the quality filter: "
                                  f"min std {dataset.quality.min_std}, max invalid fraction "
                                  f"{dataset.quality.max_invalid_fraction})")

