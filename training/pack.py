"""A training corpus that travels: the training and validation entries of a split file as plain `.npy` arrays in dB,
with a split file of their own — what a run on a machine without GDAL (rasterio) needs, in a few MB.

    .venv/bin/python -m training.pack --split-file training/splits/broad.json --out corpus_pack
    SARAE_DATA=corpus_pack python -m training --split-file corpus_pack/split.json ...

Every entry (its window, for the Kerala halves) is read once with the codec's own reader in the units the split
file records, turned into dB exactly as the codec does (`scaling.raw_to_db`, noise floor 1e-10), and written as
float32 (bands, rows, cols) — one 2-D array for one band — with NaN where the source is invalid (nodata, NaN,
zeros of amplitude or power, the covariance's zero diagonal). Complex SLC and covariance arrays become their
intensities in dB: training only ever sees dB. The arrays' dB values are the source's to float32 precision, so
patches, the validity the quality filter sees and the dB window `--scaling auto` chooses are those of the
original rasters (tests/test_pack.py checks them patch by patch). The test entries stay behind: they are never
trained or validated on.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from training.corpus import CATEGORIES, SPLIT_FORMAT, load_split, resolve

PACK_FORMAT = "sarae-corpus-pack"
NOISE_FLOOR = 1e-10  # the models' (ScalingParams.noise_floor)


def _entry_name(path: str, window) -> str:
    stem = Path(path).stem
    if window is not None:
        c, r, w, h = window
        stem += f"_r{r}-{r + h}_c{c}-{c + w}"
    # "_db" last: the codec's reader takes the units from the first unit word of the name, and dB comes first
    return stem + ("" if stem.lower().endswith("_db") else "_db") + ".npy"


def read_db(path: str, units: Optional[str], window=None) -> np.ndarray:
    """(bands, rows, cols) float32 dB of a raster (or a window COL ROW WIDTH HEIGHT of it), NaN where invalid."""
    from sar_ae_core.io.raster import Window, open_raster
    from sar_ae_core.scaling import raw_to_db, valid_mask

    with open_raster(path, units=units or "auto") as r:
        win = None if window is None else Window(*(int(v) for v in window))
        raw = r.read(win) if win is not None else r.read()
        ok = valid_mask(raw, r.units, r.nodata)
        db = raw_to_db(np.where(ok, raw, 1), r.units, NOISE_FLOOR).astype(np.float32)
    db[~ok] = np.nan
    return db


def pack_split(split_file: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val"),
               root: str | os.PathLike | None = None, log=print) -> dict:
    """Write the entries of `splits` as dB arrays in `out_dir` with `out_dir/split.json`; returns a summary."""
    entries = [e for e in load_split(split_file) if e.split in splits]
    if not entries:
        raise ValueError(f"{split_file}: no entries in the splits {list(splits)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    packed, total = [], 0
    for e in entries:
        name = _entry_name(e.path, e.window)
        if any(p["path"] == name for p in packed):
            name = name[:-4] + f"_{len(packed)}.npy"
        db = read_db(resolve(e, root), e.units, e.window)
        arr = db[0] if db.shape[0] == 1 else db
        tmp = out / (name + ".part")
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr))
        os.replace(tmp, out / name)
        total += (out / name).stat().st_size
        packed.append({"path": name, "category": e.category, "scene": e.scene, "split": e.split, "units": "db",
                       "width": int(db.shape[2]), "height": int(db.shape[1]), "bands": int(db.shape[0]),
                       "source": e.key()})
        log(f"  {e.split:5s} {e.category:9s} {name} ({db.shape[0]} x {db.shape[1]} x {db.shape[2]})")
    doc = {"format": SPLIT_FORMAT, "version": 1, "pack": PACK_FORMAT,
           "root": "paths are relative to this folder (set SARAE_DATA to it)", "source_split": os.fspath(split_file),
           "categories": list(CATEGORIES), "entries": packed}
    (out / "split.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return {"entries": len(packed), "bytes": total, "split_file": str(out / "split.json")}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--split-file", default="training/splits/broad.json")
    p.add_argument("--out", required=True, help="folder for the arrays and their split.json")
    p.add_argument("--splits", default="train,val", help="which splits to pack (default: train,val)")
    p.add_argument("--root", help="data folder (default: SARAE_DATA or ../shared/data/sar)")
    args = p.parse_args(argv)
    res = pack_split(args.split_file, args.out, [s for s in args.splits.split(",") if s], args.root)
    print(f"wrote {res['entries']} arrays ({res['bytes'] / 1e6:.1f} MB) and {res['split_file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
