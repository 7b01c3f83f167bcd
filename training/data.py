"""Training data: resolve file specs, check the rasters, split by scene, fit the scaling on the training
split only, and build the lazy patch datasets (all from sar_ae_core; nothing is re-implemented here)."""

from __future__ import annotations

import glob as globmod
import os
from dataclasses import dataclass, field
from typing import Optional

from sar_ae_core.errors import SarInputError
from training.patches import PatchFilter, PatchSource, SarPatchDataset, require_patches, scene_key, split_scenes
from sar_ae_core.io.raster import open_raster
from sar_ae_core.scaling import ScalingParams, fit_scaling

from .config import DataConfig

_GLOB_CHARS = set("*?[")


def resolve_files(specs: list[str], patterns: str = "*.tif,*.tiff", recursive: bool = False,
                  base: Optional[str] = None) -> list[str]:
    """Expand files, folders, globs and @list files into a sorted, de-duplicated list of absolute paths.

    A folder contributes the files matching `patterns` (comma-separated globs); `@FILE` reads one spec per
    line (blank lines and lines starting with '#' are skipped; relative paths are relative to FILE).
    Every spec must match something: a typo never silently shrinks the training set.
    """
    pats = [p.strip() for p in patterns.split(",") if p.strip()] or ["*"]
    found: list[str] = []
    for spec in specs:
        spec = os.path.expanduser(str(spec).strip())
        if not spec:
            continue
        if base and not os.path.isabs(spec) and not spec.startswith("@"):
            spec = os.path.join(base, spec)
        if spec.startswith("@"):
            list_path = spec[1:]
            if not os.path.isfile(list_path):
                raise SarInputError(list_path, "file list not found")
            with open(list_path, encoding="utf-8") as fh:
                lines = [ln.strip() for ln in fh if ln.strip() and not ln.strip().startswith("#")]
            if not lines:
                raise SarInputError(list_path, "file list is empty")
            found += resolve_files(lines, patterns, recursive, base=os.path.dirname(os.path.abspath(list_path)))
        elif os.path.isdir(spec):
            hits = []
            for pat in pats:
                hits += globmod.glob(os.path.join(spec, "**", pat) if recursive else os.path.join(spec, pat),
                                     recursive=recursive)
            hits = [h for h in hits if os.path.isfile(h)]
            if not hits:
                raise SarInputError(spec, f"no files matching {','.join(pats)} in this folder"
                                          f"{' or its sub-folders' if recursive else ''}")
            found += hits
        elif os.path.isfile(spec):
            found.append(spec)
        elif _GLOB_CHARS & set(spec):
            hits = [h for h in globmod.glob(spec, recursive=True) if os.path.isfile(h)]
            if not hits:
                raise SarInputError(spec, "pattern matched no files")
            found += hits
        else:
            raise SarInputError(spec, "no such file or folder")
    out, seen = [], set()
    for p in sorted(os.path.abspath(f) for f in found):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


@dataclass
class RasterSummary:
    path: str
    width: int
    height: int
    bands: int
    units: str

    def size(self) -> str:
        return f"{self.width}x{self.height}"


def inspect_rasters(paths: list[str], units: str, bands: str) -> list[RasterSummary]:
    """Open every raster once (cheap: no pixels read) so unreadable files fail before any work."""
    out = []
    for p in paths:
        with open_raster(p, bands=bands, units=units) as r:
            out.append(RasterSummary(p, r.width, r.height, r.count, r.units))
    return out


def check_patch_fits(summaries: list[RasterSummary], patch: int) -> None:
    """At least one raster must hold a whole patch (smaller ones are padded, but not all of them)."""
    if any(s.width >= patch and s.height >= patch for s in summaries):
        return
    sizes = ", ".join(f"{os.path.basename(s.path)} {s.size()}" for s in summaries[:8])
    more = f" and {len(summaries) - 8} more" if len(summaries) > 8 else ""
    largest = max(min(s.width, s.height) for s in summaries)
    raise SarInputError(None, f"patch size {patch} is larger than every raster (width x height: {sizes}{more}); "
                              f"use --patch-size {largest // 16 * 16 or 16} or smaller")


@dataclass
class PreparedData:
    """Splits, scaling and datasets of one run."""

    splits: dict[str, list[str]]
    scaling: ScalingParams
    train: SarPatchDataset
    val: SarPatchDataset
    rasters: list[RasterSummary] = field(default_factory=list)
    config: Optional[DataConfig] = None
    _test: Optional[SarPatchDataset] = None

    windows: dict[str, tuple] = field(default_factory=dict)     # split-file entries that use part of a raster
    categories: dict[str, str] = field(default_factory=dict)   # split-file entry → product category

    def sources(self, split: str) -> list[PatchSource]:
        return [PatchSource(_path_of(p), self.config.units, self.config.bands, self.windows.get(p))
                for p in self.splits[split]]

    def test(self) -> Optional[SarPatchDataset]:
        """The test split's patches (built on first use; None when the split is empty)."""
        if self._test is None and self.splits.get("test"):
            c = self.config
            klass = SarPatchDataset
            if c.physics_augment:
                from .augment import AutoScaledPatchDataset as klass  # noqa: N813
            self._test = klass(self.sources("test"), self.scaling, size=c.patch_size, stride=c.patch_size,
                               quality=PatchFilter(c.min_std, c.max_invalid_fraction), augment=False)
        return self._test

    def describe(self) -> dict:
        """What the run trained on: files per split, scenes, patch counts, units, scaling."""
        units = {os.path.basename(s.path): s.units for s in self.rasters}
        out = {
            "files": {k: list(v) for k, v in self.splits.items()},
            "scenes": {k: sorted({scene_key(_path_of(p)) for p in v}) for k, v in self.splits.items()},
            "units": units,
            "patch_size": self.train.size,
            "train_stride": self.train.stride,
            "val_stride": self.val.stride,
            "patches": {"train": len(self.train), "val": len(self.val)},
            "rejected": {"train": self.train.rejected, "val": self.val.rejected},
            "scaling_fitted_on": list(self.scaling.fitted_on),
        }
        if self._test is not None:
            out["patches"]["test"] = len(self._test)
            out["rejected"]["test"] = self._test.rejected
        return out


def _path_of(key: str) -> str:
    """The raster path of a split key ('PATH' or 'PATH#col,row,width,height')."""
    return key.split("#", 1)[0]


def split_from_file(split_file: str) -> tuple[dict[str, list[str]], dict[str, tuple], dict[str, str]]:
    """(files per split, windows, categories) from a committed split (training/corpus.py); a windowed entry's key
    is 'PATH#col,row,width,height'."""
    from .corpus import load_split, resolve

    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    windows, categories = {}, {}
    for e in load_split(split_file):
        path = os.path.abspath(resolve(e))
        if not os.path.isfile(path):
            raise SarInputError(path, f"listed in {split_file} but not found (set SARAE_DATA to the data folder)")
        key = path if e.window is None else f"{path}#{','.join(map(str, e.window))}"
        splits.setdefault(e.split, []).append(key)
        categories[key] = e.category
        if e.window is not None:
            windows[key] = tuple(e.window)
    if not splits["train"] or not splits["val"]:
        raise SarInputError(split_file, "the split needs training and validation entries")
    return splits, windows, categories


DEFAULT_SHARES = {"grd_db": 0.45, "slc_other": 0.43, "rtc": 0.12}


def split_files(files: list[str], cfg: DataConfig) -> dict[str, list[str]]:
    """Scene-level split (training.patches.split_scenes); every split that must exist is non-empty."""
    splits = split_scenes(files, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    n_scenes = len({scene_key(p) for p in files})
    if not splits["train"]:
        raise SarInputError(None, f"no training scene left: {n_scenes} scene(s) found; lower --val-fraction/"
                                  f"--test-fraction or add data")
    if not splits["val"]:
        raise SarInputError(None, f"the validation split is empty: {n_scenes} scene(s) found in {len(files)} "
                                  f"file(s) (VV/VH files of one scene count once); add scenes or raise "
                                  f"--val-fraction")
    return splits


def fit_training_scaling(cfg: DataConfig, train_files: list[str]) -> ScalingParams:
    """The dB clip range from the TRAINING split only (streaming statistics, sar_ae_core.scaling.fit_scaling)."""
    kwargs = {}
    if cfg.clip_method == "fixed":
        kwargs = {"vmin_db": cfg.clip_low, "vmax_db": cfg.clip_high}
    try:
        return fit_scaling(train_files, method=cfg.clip_method, low=cfg.clip_low, high=cfg.clip_high,
                           units=cfg.units, bands=cfg.bands, **kwargs)
    except ValueError as exc:
        raise SarInputError(None, f"cannot fit the scaling: {exc}") from None


def prepare_data(cfg: DataConfig, scaling: Optional[ScalingParams] = None, log=print) -> PreparedData:
    """Validate the data settings against the real files, split, fit scaling (unless given) and index patches."""
    windows, categories = {}, {}
    if cfg.split_file:
        splits, windows, categories = split_from_file(cfg.split_file)
        files = sorted({_path_of(k) for v in splits.values() for k in v})
    else:
        files = resolve_files(cfg.paths, cfg.glob, cfg.recursive)
        if not files:
            raise SarInputError(None, f"no training data: {', '.join(cfg.paths)} matched no files")
    rasters = inspect_rasters(files, cfg.units, cfg.bands)
    check_patch_fits(rasters, cfg.patch_size)
    if not cfg.split_file:
        splits = split_files(files, cfg)
    if scaling is None:
        scaling = fit_training_scaling(cfg, sorted({_path_of(k) for k in splits["train"]}))
    quality = PatchFilter(cfg.min_std, cfg.max_invalid_fraction)
    prep = PreparedData(splits=splits, scaling=scaling, train=None, val=None, rasters=rasters, config=cfg,  # type: ignore[arg-type]
                        windows=windows, categories=categories)
    stride = cfg.stride or cfg.patch_size
    if cfg.physics_augment:
        from .augment import AugmentConfig, AugmentedPatchDataset

        try:
            acfg = AugmentConfig(**(cfg.augment_params or {}))
        except TypeError as exc:
            raise SarInputError(None, f"config: data.augment_params: {exc}") from None
        shares = cfg.category_shares if cfg.category_shares is not None else (DEFAULT_SHARES if categories else None)
        prep.train = AugmentedPatchDataset(prep.sources("train"), scaling, size=cfg.patch_size, stride=stride,
                                           quality=quality, categories=[categories.get(k, "other")
                                                                        for k in splits["train"]],
                                           shares=shares, augment_cfg=acfg)
    else:
        prep.train = SarPatchDataset(prep.sources("train"), scaling, size=cfg.patch_size, stride=stride,
                                     quality=quality, augment=cfg.augment)
    require_patches(prep.train, "training")
    if cfg.physics_augment:  # held-out rasters scaled as the codec's --scaling auto does (no augmentation)
        from .augment import AutoScaledPatchDataset

        prep.val = AutoScaledPatchDataset(prep.sources("val"), scaling, size=cfg.patch_size, stride=cfg.patch_size,
                                          quality=quality)
    else:
        prep.val = SarPatchDataset(prep.sources("val"), scaling, size=cfg.patch_size, stride=cfg.patch_size,
                                   quality=quality, augment=False)
    require_patches(prep.val, "validation")
    return prep
