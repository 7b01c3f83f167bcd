"""The broad corpus and its committed scene-level split (training/corpus.py, training/splits/broad.json) on the
real data folder: every raster is in it, every product category has validation and test scenes never trained
on, scenes never straddle splits, the benchmark's held-out scenes stay held out, and windowed entries (the
Kerala halves) read only their own rows."""

from pathlib import Path

import numpy as np
import pytest

from training.patches import PatchFilter, PatchSource, SarPatchDataset
from sar_ae_core.io.raster import open_raster
from sar_ae_core.scaling import ScalingParams
from training.corpus import (CATEGORIES, DEFAULT_SPLIT, build_corpus, category_of, check_split, list_rasters,
                             load_split, scene_of, write_window)


@pytest.fixture(scope="module")
def committed():
    return load_split(DEFAULT_SPLIT)


def test_committed_split_lists_every_real_raster(sar_data, committed):
    on_disk = {p.relative_to(sar_data).as_posix() for p in list_rasters(sar_data)}
    assert len(on_disk) >= 51
    assert {e.path for e in committed} == on_disk
    # and it is what build_corpus gives today (the file is up to date with the code and the folder)
    fresh = build_corpus(sar_data, inspect=False)
    assert [(e.key(), e.category, e.scene, e.split) for e in fresh] == \
        [(e.key(), e.category, e.scene, e.split) for e in committed]


def test_every_category_has_val_and_test_scenes_never_trained_on(committed):
    assert check_split(committed) == []
    for cat in CATEGORIES:
        scenes = {s: {e.scene for e in committed if e.category == cat and e.split == s}
                  for s in ("train", "val", "test")}
        assert scenes["val"] and scenes["test"], cat
        assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
        assert not (scenes["val"] & scenes["test"])
    trained = {e.path for e in committed if e.split == "train"}
    assert not trained & {e.path for e in committed if e.split != "train"}
    assert {e.category for e in committed if e.split == "train"} == {"grd_db", "rtc", "slc_other"}


def test_scenes_group_polarisations_dates_of_one_footprint_and_pass_pairs(committed):
    by_path = {e.path: e for e in committed}
    split = {e.path: e.split for e in committed}
    assert split["s1_bigearthnet_20170617T064724_29UPU_4_55_VV_db.tif"] == \
        split["s1_bigearthnet_20170617T064724_29UPU_4_55_VH_db.tif"] == "test"
    assert split["fullres/s1_grd_wslovakia_vv_db.tif"] == split["fullres/s1_grd_wslovakia_vh_db.tif"]
    # the 2015 ascending and 2017-03 descending Camargue grids are one footprint
    assert by_path["s1_iw_grd_camargue_20150309_asc_vv_db.tif"].scene == \
        by_path["s1_iw_grd_camargue_20170309_desc_vv_db.tif"].scene
    assert split["train/uavsar_grandmesa_20200201_hh_amp.tif"] == split["train/uavsar_grandmesa_20200212_hh_amp.npy"]
    for e in committed:
        mates = [o for o in committed if o.scene == e.scene]
        assert {o.split for o in mates} == {e.split}


def test_benchmark_held_out_scenes_stay_held_out(committed):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rd", Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  "bench_rd.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in bench.DEFAULT_SCENES:
        entries = [e for e in committed if Path(e.path).name == name]
        assert entries and all(e.split != "train" for e in entries), name


def test_categories_and_units_of_the_real_files(sar_data, committed):
    expect_units = {"grd_db": {"db"}, "grd_dn": {"amplitude"}, "rtc": {"linear"},
                    "slc_other": {"linear", "amplitude", "complex"}}
    for e in committed:
        assert e.category in expect_units and e.units in expect_units[e.category], (e.path, e.units)
        with open_raster(sar_data / e.path) as r:  # every raster is readable and has the recorded units/size
            assert (r.units, r.width, r.height, r.count) == (e.units, e.width, e.height, e.bands), e.path
    assert category_of("s1_iw_grdh_kerala_20180716_vv_dn.tiff") == "grd_dn"
    assert category_of("umbra04_gec_tanna_yasur_20230212_amp_u8.tif") == "slc_other"
    assert category_of("s1_whu_t113_20171021_vh_city_lin.tif") == "rtc"
    assert scene_of("s1_opera_rtc_t137-292318-iw1_20211119_vv_lin.tif") == \
        scene_of("s1_opera_rtc_t137-292318-iw1_20211119_vh_lin.tif")


def test_kerala_halves_are_disjoint_and_read_only_their_rows(sar_data, committed, tmp_path):
    kerala = [e for e in committed if e.category == "grd_dn"]
    assert {e.split for e in kerala} == {"val", "test"}
    vv = sorted((e for e in kerala if "_vv_" in e.path), key=lambda e: e.window[1])
    top, bottom = vv[0].window, vv[1].window
    assert top[1] + top[3] == bottom[1] and bottom[1] + bottom[3] == vv[0].height and top[2] == vv[0].width
    scaling = ScalingParams(vmin_db=20.0, vmax_db=73.0, clip_method="fixed", clip_low=20.0, clip_high=73.0)
    path = str(sar_data / vv[0].path)
    ds = SarPatchDataset([PatchSource(path, window=top)], scaling, size=128, stride=128,
                         quality=PatchFilter(0.0, 1.0))
    assert max(r.row for r in ds.index) == top[3] - 128
    with open_raster(path) as r:
        full = r.read()[0]
    # a patch flush with the window's bottom edge equals the raster's pixels there
    ref = [r for r in ds.index if r.row == top[3] - 128][3]
    raw, inside, _ = ds._read_raw(ref)
    assert inside.all() and np.array_equal(raw, full[ref.row:ref.row + 128, ref.col:ref.col + 128])
    # a patch reaching beyond the window sees zeros (invalid) there, never the other half's pixels
    raw, inside, _ = ds._read_raw(ref, row=top[3] - 64)
    assert not inside[64:].any() and np.all(raw[64:] == 0) and inside[:64].all()
    # the test half as a file for the codec: untouched pixels, DN units still recognised
    out = write_window(vv[1], tmp_path, sar_data)
    with open_raster(out) as r:
        assert r.units == "amplitude" and (r.width, r.height) == (bottom[2], bottom[3])
        assert np.array_equal(r.read()[0], full[bottom[1]:])


@pytest.mark.slow
def test_training_from_a_split_file_with_physics_augmentation_and_a_bundle(sar_data, tmp_path):
    """`python -m training --split-file ... --physics-augment --init-from sarae-q2`: a few steps on real rasters
    of three categories; validation includes a Kerala window; the checkpoint records the windowed entry and starts
    from the bundle's weights (same architecture as sarae-q2)."""
    import json

    import torch

    from sar_ae_core.nn.model_io import load_bundle
    from training.checkpoint import load_checkpoint, load_init
    from training.cli import main
    from training.corpus import CorpusEntry, write_split

    entries = [CorpusEntry("s1_bigearthnet_20170613T165043_33UUP_87_48_VV_db.tif", "grd_db", "ben", "train"),
               CorpusEntry("train/uavsar_grandmesa_20200201_hh_amp.tif", "slc_other", "uavsar", "train"),
               CorpusEntry("s1_opera_rtc_t137-292318-iw1_20211119_vv_lin.tif", "rtc", "opera18", "train"),
               CorpusEntry("s1_iw_grd_camargue_20171210_desc_vv_db.tif", "grd_db", "cam", "val"),
               CorpusEntry("s1_iw_grdh_kerala_20180716_vv_dn.tiff", "grd_dn", "kerala_top", "val",
                           (0, 0, 1280, 416)),
               CorpusEntry("s1_opera_rtc_t137-292319-iw2_20211119_vv_lin.tif", "rtc", "opera19", "test"),
               CorpusEntry("tsx_slc_merlin_test_256_reim.npy", "slc_other", "tsx", "test"),
               CorpusEntry("s1_iw_grdh_kerala_20180716_vv_dn.tiff", "grd_dn", "kerala_bottom", "test",
                           (0, 416, 1280, 421)),
               CorpusEntry("s1_bigearthnet_20170617T064724_29UPU_36_85_VV_db.tif", "grd_db", "ben2", "test"),
               CorpusEntry("train/s1_opera_rtc_t137-292322-iw1_20211119_vv_lin.tif", "rtc", "opera22", "val"),
               CorpusEntry("airsar_sanfrancisco_quadpol_cov3x3_256.npy", "slc_other", "sf", "val")]
    split = tmp_path / "split.json"
    write_split(entries, split)
    run = tmp_path / "run"
    q2 = load_bundle("sarae-q2")
    c = q2.config
    assert main(["--split-file", str(split), "--physics-augment", "--min-std", "0.005", "--clip-method", "fixed",
                 "--clip-low", "-45", "--clip-high", "8", "--variant", c.variant, "--base-channels",
                 str(c.base_channels), "--latent-channels", str(c.latent_channels), "--stages", str(c.stages),
                 "--decoder", c.decoder, "--entropy-model", c.entropy_model, "--lmbda", "1000", "--mse-weight", "1", "--ssim-weight", "0",
                 "--init-from", "sarae-q2", "--patch-size", "64", "--stride", "64", "--batch-size", "2",
                 "--steps", "3", "--lr", "1e-5", "--warmup-steps", "0", "--val-max-patches", "6",
                 "--no-tensorboard", "--out-dir", str(run)]) == 0
    ckpt = load_checkpoint(run, prefer="last.pt")
    files = ckpt["data"]["files"]
    assert any(k.endswith("kerala_20180716_vv_dn.tiff#0,0,1280,416") for k in files["val"])
    assert len(files["train"]) == 3 and len(files["test"]) == 4
    assert ckpt["scaling"]["vmin_db"] == -45.0 and ckpt["scaling"]["vmax_db"] == 8.0
    init = load_init("sarae-q2")
    assert init["model_config"] == ckpt["model_config"]
    # three tiny steps at lr 1e-5 from the bundle: the weights stay next to sarae-q2's
    w0, w1 = init["state_dict"], ckpt["state_dict"]
    rel = max(float((w1[k].float() - w0[k]).norm() / (w0[k].norm() + 1e-12)) for k in w0 if w0[k].is_floating_point()
              and w0[k].numel() > 100)
    assert rel < 0.05
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["patches"] > 0
