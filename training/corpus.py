"""The broad training corpus: every real raster of the shared data folder, its product category, its scene,
and a committed scene-level split with validation and test scenes in every category.

Categories (what the codec must hold up on, issue 11):

- ``grd_db``    calibrated GRD backscatter in dB (Sen1Floods11, BigEarthNet-S1, Camargue, W-Slovakia)
- ``grd_dn``    uncalibrated GRD digital numbers (amplitude, no sigma0 LUT: Kerala)
- ``rtc``       terrain-corrected / calibrated linear power (OPERA RTC-S1 gamma0, WHU crops)
- ``slc_other`` SLC intensity or complex, covariance arrays, other sensors (TerraSAR-X, GNLM, Umbra, UAVSAR,
                AIRSAR, Sentinel-1 SLC and dual-pol covariance)

A *scene* is one footprint of one acquisition (or of a repeat-pass pair): the VV and VH files of a scene, the
two Camargue dates of one footprint and the two UAVSAR passes always land in the same split. The only category
with a single scene (Kerala DN) is split by area: the top rows are validation, the bottom rows test, and neither
is ever trained on (the network sees DN-like data through the gain/offset and multilooking augmentations of
``training.augment``).

    python -m training.corpus                      # print the corpus table (file, category, scene, split)
    python -m training.corpus --write training/splits/broad.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CATEGORIES = ("grd_db", "grd_dn", "rtc", "slc_other")
SPLITS = ("train", "val", "test")
RASTER_SUFFIXES = (".tif", ".tiff", ".npy")
SPLIT_FORMAT = "sarae-split"
DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "broad.json"


def data_root() -> Path:
    """The shared data folder (SARAE_DATA overrides, as for the tests and benchmarks)."""
    return Path(os.environ.get("SARAE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "sar"))


def list_rasters(root: str | os.PathLike) -> list[Path]:
    """Every raster file (.tif/.tiff/.npy) in root and its sub-folders, sorted by relative path."""
    root = Path(root)
    out = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def category_of(path: str | os.PathLike) -> str:
    """Product category from the file name (the names in the data folder say sensor, product and units)."""
    name = Path(path).name.lower()
    if name.startswith("s1_") and re.search(r"_dn\.tiff?$", name):
        return "grd_dn"
    if "opera_rtc" in name or name.startswith("s1_whu_"):
        return "rtc"
    if name.endswith("_db.tif") and ("_grd" in name or "bigearthnet" in name):
        return "grd_db"
    return "slc_other"


_POL = re.compile(r"(?<![a-z0-9])(vv|vh|hh|hv)(?![a-z0-9])")
# files of one footprint that must stay together although their names differ by more than the polarisation
_SAME_FOOTPRINT = {
    # the 2015 ascending and 2017-03 descending Camargue grids are the same footprint (multi-temporal pair)
    "s1_iw_grd_camargue_20150309_asc_db": "s1_iw_grd_camargue_footprint_a",
    "s1_iw_grd_camargue_20170309_desc_db": "s1_iw_grd_camargue_footprint_a",
    # the UAVSAR repeat-pass pair (same grid, 11 days apart)
    "uavsar_grandmesa_20200201_amp": "uavsar_grandmesa_pair",
    "uavsar_grandmesa_20200212_amp": "uavsar_grandmesa_pair",
}


def scene_of(path: str | os.PathLike) -> str:
    """Scene id: the file name without extension and polarisation tokens, with known same-footprint groups merged."""
    stem = Path(path).name.lower()
    stem = re.sub(r"\.(tiff?|npy)$", "", stem)
    stem = _POL.sub("", stem.replace("-", "_"))
    stem = re.sub(r"_+", "_", stem).strip("_")
    return _SAME_FOOTPRINT.get(stem, stem)


# The split, scene by scene. Held out of every training run so far (benchmarks/bench_rd.py DEFAULT_SCENES):
# Spain 7370579, Camargue 2015, BigEarthNet 29UPU_4_55 and Kerala - they stay held out (test; Kerala val+test).
# Scenes not listed here are training scenes.
HELD_OUT: dict[str, str] = {
    # grd_db
    "s1_iw_grd_sen1floods11_spain_7370579_db": "test",
    "s1_bigearthnet_20170617t064724_29upu_4_55_db": "test",
    "s1_iw_grd_camargue_footprint_a": "test",
    "s1_grd_wslovakia_db": "test",
    "s1_iw_grd_sen1floods11_india_900498_db": "val",
    "s1_bigearthnet_20170617t064724_29upu_36_85_db": "val",
    # rtc
    "s1_whu_t113_20171021_city_lin": "test",
    "s1_opera_rtc_t137_292324_iw1_20211119_lin": "test",
    "s1_opera_rtc_t137_292324_iw2_20211119_lin": "test",
    "s1_whu_t113_20171021_hill_lin": "val",
    "s1_opera_rtc_t137_292319_iw2_20211119_lin": "val",
    "s1_opera_rtc_t137_292322_iw1_20211119_lin": "val",
    # slc_other
    "tsx_slc_merlin_test_256_reim": "test",
    "s1_slc_shanghai_dualpol_cov2x2_256": "test",
    "airsar_sanfrancisco_quadpol_cov3x3_256": "val",
}
# Kerala: one scene (VV + VH), split by area: rows [0, 416) validation, rows [416, 837) test
KERALA_SCENE = "s1_iw_grdh_kerala_20180716_dn"
KERALA_SPLIT_ROW = 416


@dataclass
class CorpusEntry:
    """One raster (or one part of it) of the corpus."""

    path: str                      # relative to the data root
    category: str
    scene: str
    split: str
    window: Optional[tuple[int, int, int, int]] = None   # (col, row, width, height), None = whole raster
    units: Optional[str] = None    # what `inspect` decided
    width: Optional[int] = None
    height: Optional[int] = None
    bands: Optional[int] = None

    def key(self) -> str:
        """Unique id of the entry: the path, plus the window when only a part is used."""
        return self.path if self.window is None else f"{self.path}#{','.join(map(str, self.window))}"

    def to_dict(self) -> dict:
        d = {"path": self.path, "category": self.category, "scene": self.scene, "split": self.split}
        if self.window is not None:
            d["window"] = list(self.window)
        for k in ("units", "width", "height", "bands"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusEntry":
        w = d.get("window")
        return cls(path=d["path"], category=d["category"], scene=d["scene"], split=d["split"],
                   window=tuple(int(v) for v in w) if w else None, units=d.get("units"), width=d.get("width"),
                   height=d.get("height"), bands=d.get("bands"))


def build_corpus(root: str | os.PathLike | None = None, inspect: bool = True) -> list[CorpusEntry]:
    """Every raster of the data folder with its category, scene and split (Kerala as two windows)."""
    root = Path(root) if root is not None else data_root()
    entries: list[CorpusEntry] = []
    for p in list_rasters(root):
        rel = p.relative_to(root).as_posix()
        cat, scene = category_of(p), scene_of(p)
        info: dict = {}
        if inspect:
            from sar_ae_core.io.raster import open_raster

            with open_raster(p) as r:
                info = {"units": r.units, "width": r.width, "height": r.height, "bands": r.count}
        if scene == KERALA_SCENE:
            w, h = info.get("width", 1280), info.get("height", 837)
            entries.append(CorpusEntry(rel, cat, scene + "_top", "val", (0, 0, w, KERALA_SPLIT_ROW), **info))
            entries.append(CorpusEntry(rel, cat, scene + "_bottom", "test",
                                       (0, KERALA_SPLIT_ROW, w, h - KERALA_SPLIT_ROW), **info))
            continue
        entries.append(CorpusEntry(rel, cat, scene, HELD_OUT.get(scene, "train"), None, **info))
    return entries


def check_split(entries: list[CorpusEntry]) -> list[str]:
    """Problems of a split (empty = fine): every category has val and test scenes, no scene in two splits,
    the test split holds no training scene, the benchmark's held-out scenes are not trained on."""
    problems = []
    split_of_scene: dict[str, set] = {}
    for e in entries:
        split_of_scene.setdefault(e.scene, set()).add(e.split)
    for scene, splits in sorted(split_of_scene.items()):
        if len(splits) > 1:
            problems.append(f"scene {scene} is in several splits: {sorted(splits)}")
    for cat in CATEGORIES:
        for split in ("val", "test"):
            if not any(e.category == cat and e.split == split for e in entries):
                problems.append(f"category {cat} has no {split} scene")
    train_paths = {e.path for e in entries if e.split == "train"}
    held = {e.path for e in entries if e.split != "train"}
    if train_paths & held:
        problems.append(f"files both trained on and held out: {sorted(train_paths & held)}")
    return problems


def write_split(entries: list[CorpusEntry], path: str | os.PathLike) -> None:
    problems = check_split(entries)
    if problems:
        raise ValueError("; ".join(problems))
    doc = {"format": SPLIT_FORMAT, "version": 1,
           "root": "paths are relative to the shared data folder (SARAE_DATA, default ../shared/data/sar)",
           "categories": list(CATEGORIES), "entries": [e.to_dict() for e in entries]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load_split(path: str | os.PathLike = DEFAULT_SPLIT) -> list[CorpusEntry]:
    from sar_ae_core.errors import SarInputError

    p = Path(path)
    if not p.is_file():
        raise SarInputError(p, "split file not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SarInputError(p, f"not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise SarInputError(p, "not a split file of this project (format tag)")
    return [CorpusEntry.from_dict(d) for d in doc["entries"]]


def resolve(entry: CorpusEntry, root: str | os.PathLike | None = None) -> str:
    """Absolute path of an entry's raster."""
    return str((Path(root) if root is not None else data_root()) / entry.path)


def write_window(entry: CorpusEntry, out_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The raster of an entry as a file the codec can read: the original when the whole raster is used, else
    the window's pixels (untouched, same dtype, units-revealing name) as a GeoTIFF in out_dir."""
    src = resolve(entry, root)
    if entry.window is None:
        return src
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    c, r, w, h = entry.window
    stem, suffix = Path(entry.path).stem, Path(entry.path).suffix
    out = Path(out_dir) / f"{stem}_r{r}-{r + h}_c{c}-{c + w}{suffix if suffix != '.npy' else '.tif'}"
    if out.is_file():
        return str(out)
    with rasterio.open(src) as ds:
        data = ds.read(window=Window(c, r, w, h))
        profile = {"driver": "GTiff", "width": w, "height": h, "count": ds.count, "dtype": data.dtype.name,
                   "compress": "deflate"}
        if ds.nodata is not None:
            profile["nodata"] = ds.nodata
        gcps, gcp_crs = ds.gcps
        if ds.crs is not None and not ds.transform.is_identity:
            profile.update(crs=ds.crs, transform=ds.window_transform(Window(c, r, w, h)))
    tmp = out.with_suffix(".part" + out.suffix)
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the GCPs are set right after creation
        dst = rasterio.open(tmp, "w", **profile)
    with dst:
        dst.write(np.ascontiguousarray(data))
        if gcps and ds.transform.is_identity:  # GCP-georeferenced source (Kerala): the GCPs moved with the window
            from rasterio.control import GroundControlPoint

            dst.gcps = ([GroundControlPoint(row=g.row - r, col=g.col - c, x=g.x, y=g.y, z=g.z) for g in gcps],
                        gcp_crs)
    os.replace(tmp, out)
    return str(out)


def table(entries: list[CorpusEntry]) -> str:
    rows = ["| file | category | scene | split | units | size |", "|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (CATEGORIES.index(e.category), SPLITS.index(e.split), e.key())):
        size = f"{e.width}x{e.height}" + (f"x{e.bands}" if (e.bands or 1) > 1 else "")
        win = f" rows {e.window[1]}-{e.window[1] + e.window[3]}" if e.window else ""
        rows.append(f"| {e.path}{win} | {e.category} | {e.scene} | {e.split} | {e.units} | {size} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="data folder (default: SARAE_DATA or ../shared/data/sar)")
    p.add_argument("--write", metavar="JSON", help="write the split file")
    args = p.parse_args(argv)
    entries = build_corpus(args.root)
    print(table(entries))
    problems = check_split(entries)
    for prob in problems:
        print("problem:", prob)
    if args.write:
        write_split(entries, args.write)
        print(f"wrote {args.write} ({len(entries)} entries)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
