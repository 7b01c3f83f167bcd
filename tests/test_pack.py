"""A training corpus that travels (training/pack.py): real rasters of every kind (dB, DN amplitude with a window,
linear power with NaN nodata, complex SLC, a covariance array) packed as dB arrays give the training the same
pixels, validity, patches and dB windows as the originals, and a run reads them with GDAL (rasterio) unimportable;
with worker processes one DataLoader spans several epochs (training/train.py LOADER_STEPS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sar_ae_core.io.raster import Window, open_raster
from sar_ae_core.scaling import raw_to_db, valid_mask
from training.corpus import CorpusEntry, load_split, write_split
from training.pack import pack_split

ROOT = Path(__file__).resolve().parents[1]

ENTRIES = [
    CorpusEntry("s1_bigearthnet_20170613T165043_33UUP_87_48_VV_db.tif", "grd_db", "ben", "train"),
    CorpusEntry("s1_iw_grdh_kerala_20180716_vv_dn.tiff", "grd_dn", "kerala_top", "val", (0, 0, 1280, 416)),
    CorpusEntry("s1_opera_rtc_t137-292318-iw1_20211119_vv_lin.tif", "rtc", "opera18", "train"),
    CorpusEntry("tsx_slc_merlin_test_256_reim.npy", "slc_other", "tsx", "train"),
    CorpusEntry("airsar_sanfrancisco_quadpol_cov3x3_256.npy", "slc_other", "sf", "val"),
    CorpusEntry("s1_iw_grd_camargue_20171210_desc_vv_db.tif", "grd_db", "cam", "val"),
    CorpusEntry("s1_iw_grdh_kerala_20180716_vv_dn.tiff", "grd_dn", "kerala_bottom", "test", (0, 416, 1280, 421)),
    CorpusEntry("s1_opera_rtc_t137-292319-iw2_20211119_vv_lin.tif", "rtc", "opera19", "test"),
    CorpusEntry("s1_slc_shanghai_dualpol_cov2x2_256.npy", "slc_other", "shanghai", "test"),
    CorpusEntry("s1_bigearthnet_20170617T064724_29UPU_36_85_VV_db.tif", "grd_db", "ben2", "test"),
    CorpusEntry("train/s1_opera_rtc_t137-292322-iw1_20211119_vv_lin.tif", "rtc", "opera22", "val"),
]


@pytest.fixture(scope="module")
def packed(sar_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("pack")
    split = base / "split.json"
    write_split(ENTRIES, split)
    res = pack_split(split, base / "pack", root=sar_data, log=lambda *a: None)
    return split, base / "pack", res


def test_every_training_and_validation_entry_comes_back_in_db(sar_data, packed):
    split, folder, res = packed
    doc = json.loads((folder / "split.json").read_text())
    kept = [e for e in ENTRIES if e.split != "test"]
    assert res["entries"] == len(kept) == len(doc["entries"]) and res["bytes"] > 0
    assert not any(e["split"] == "test" for e in doc["entries"])   # the test scenes stay behind
    for e, p in zip(kept, doc["entries"]):
        assert (p["category"], p["scene"], p["split"], p["units"]) == (e.category, e.scene, e.split, "db")
        with open_raster(sar_data / e.path) as r:
            raw = r.read(Window(*e.window)) if e.window else r.read()
            ok = valid_mask(raw, r.units, r.nodata)
            ref = raw_to_db(np.where(ok, raw, 1), r.units)
        with open_raster(folder / p["path"]) as q:   # what the training reads: units from the name, in dB
            assert q.units == "db" and (q.count, q.height, q.width) == ref.shape
            got = q.read()
        assert np.array_equal(np.isfinite(got), ok), e.path
        np.testing.assert_allclose(got[ok], ref[ok], atol=1e-4 * max(1.0, float(np.abs(ref[ok]).max())))
    # the Kerala DN window is the top half only, its dB range that of uint16 amplitudes (not a calibrated one)
    kerala = next(p for p in doc["entries"] if p["scene"] == "kerala_top")
    assert (kerala["height"], kerala["width"]) == (416, 1280)
    arr = np.load(folder / kerala["path"])
    assert 20 < np.nanpercentile(arr, 50) < 70
    # covariance: the three diagonal intensities; complex SLC: one intensity band
    assert np.load(folder / next(p["path"] for p in doc["entries"] if p["scene"] == "sf")).shape == (3, 256, 256)
    assert np.load(folder / next(p["path"] for p in doc["entries"] if p["scene"] == "tsx")).shape == (256, 256)
    # NaN nodata of the RTC chip stays invalid
    assert load_split(folder / "split.json")[0].units == "db"


def test_packed_corpus_gives_the_same_patches_and_windows(sar_data, packed, monkeypatch):
    """The validation patches (each raster in the dB window `--scaling auto` gives it) and the training patches
    the quality filter keeps are the same from the pack as from the original rasters."""
    from training.config import DataConfig
    from training.data import prepare_data

    split, folder, _ = packed

    def data(split_file, root):
        monkeypatch.setenv("SARAE_DATA", str(root))
        cfg = DataConfig(split_file=str(split_file), physics_augment=True, patch_size=64, stride=64,
                         clip_method="fixed", clip_low=-45.0, clip_high=8.0, min_std=0.005)
        return prepare_data(cfg, log=lambda *a, **k: None)

    a, b = data(split, sar_data), data(folder / "split.json", folder)
    assert len(a.train) == len(b.train) > 0 and len(a.val) == len(b.val) > 0
    assert a.train.category_counts() == b.train.category_counts()
    for i in range(len(a.val)):
        pa, pb = a.val[i], b.val[i]
        assert np.array_equal(pa["mask"].numpy(), pb["mask"].numpy())
        np.testing.assert_allclose(pa["image"].numpy(), pb["image"].numpy(), atol=2e-6)
    # the physics augmentation draws the same windows and multilooks from the same seed
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for ref_a, ref_b in zip(a.train.index[:12], b.train.index[:12]):
        xa, va, ia = a.train.augmented(ref_a, rng_a)
        xb, vb, ib = b.train.augmented(ref_b, rng_b)
        assert ia["window"] == ib["window"] and ia["k"] == ib["k"] and np.array_equal(va, vb)
        np.testing.assert_allclose(xa, xb, atol=1e-5)


def test_a_run_on_the_pack_needs_no_gdal_and_spans_epochs_with_workers(packed, tmp_path):
    """The training CLI on the pack with rasterio, GDAL and imagecodecs made unimportable (a CUDA machine without
    them): 2 DataLoader workers, an epoch of a few steps, one loader over several epochs; every planned step runs
    and the checkpoint exports."""
    _, folder, _ = packed
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys, importlib.abc\n"
        "class _Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('rasterio', 'osgeo', 'imagecodecs'):\n"
        "            raise ImportError('not installed here: ' + name)\n"
        "sys.meta_path.insert(0, _Absent())\n")
    env = {**os.environ, "SARAE_DATA": str(folder), "PYTHONPATH": f"{block}{os.pathsep}{ROOT}",
           "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import rasterio"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "not installed here" in probe.stderr
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "--split-file", str(folder / "split.json"), "--physics-augment",
           "--min-std", "0.005", "--clip-method", "fixed", "--clip-low", "-45", "--clip-high", "8",
           "--entropy-model", "factorized", "--lmbda", "1000", "--patch-size", "64", "--stride", "64",
           "--batch-size", "16", "--variant", "gdn", "--base-channels", "8", "--latent-channels", "16",
           "--stages", "3", "--decoder", "light", "--steps", "40", "--val-interval", "40", "--workers", "2",
           "--no-tensorboard", "--out-dir", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == summary["total_steps"] == 40
    import csv

    with open(run / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert int(rows[-1]["epoch"]) >= 5, "the corpus should give several epochs in 40 steps"
    assert all(np.isfinite(float(r["loss"])) for r in rows)
