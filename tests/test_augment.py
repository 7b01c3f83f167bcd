"""Physics-aware augmentation (training/augment.py) on real SAR rasters: multilooking raises the ENL, speckle
re-synthesis gives L-look statistics, a dB gain moves the dB mean by the gain, the random dB window covers
what the codec's `--scaling source` fits, and the training dataset built from the committed split balances
the product categories."""

import numpy as np
import pytest
import torch

from training.patches import PatchFilter, PatchSource
from sar_ae_core.io.raster import Window, open_raster
from sar_ae_core.scaling import ScalingParams, raw_to_db, valid_mask
from training.augment import (AugmentConfig, AugmentedPatchDataset, AutoScaledPatchDataset, apply_gain_db,
                              balance_index, choose_window, multilook, resynthesize_speckle, window_to_unit)

MODEL = ScalingParams(vmin_db=-45.0, vmax_db=8.0, clip_method="fixed", clip_low=-45.0, clip_high=8.0)


def _intensity(path, band=1, size=512):
    with open_raster(path) as r:
        raw = r.read(Window(0, 0, min(r.width, size), min(r.height, size)), band)[0]
        valid = valid_mask(raw, r.units, r.nodata)
        db = raw_to_db(np.where(valid, raw, 1), r.units)
    return 10.0 ** (db / 10.0), valid


def _cell_enl(intensity, block):
    """mean²/variance of the intensity in non-overlapping block×block cells."""
    h, w = intensity.shape
    nr, nc = h // block, w // block
    c = intensity[: nr * block, : nc * block].reshape(nr, block, nc, block).transpose(0, 2, 1, 3)
    c = c.reshape(nr * nc, -1)
    return c.mean(axis=1) ** 2 / c.var(axis=1)


@pytest.fixture(scope="module")
def ghana(sar_data):
    """Sen1Floods11 Ghana 97059 VV: very homogeneous savanna (GRD, ENL about 6 per pixel)."""
    return _intensity(sar_data / "fullres" / "s1_iw_grd_sen1floods11_ghana_97059_vv_vh_db.tif")


def test_multilook_keeps_the_mean_and_raises_the_enl(ghana):
    intensity, valid = ghana
    ml, ok = multilook(intensity, valid, 4)
    assert ml.shape == (128, 128) and ok.all()
    np.testing.assert_allclose(ml.mean(), intensity.mean(), rtol=1e-9)  # averaging keeps the radiometry
    # same ground area: 32x32-pixel cells of the original vs 8x8 cells of the 4x4-multilooked image,
    # on the most homogeneous quarter of the cells
    e0, e1 = _cell_enl(intensity, 32), _cell_enl(ml, 8)
    sel = e0 >= np.quantile(e0, 0.75)
    gain = float(np.median(e1[sel] / e0[sel]))
    # k^2 = 16 for uncorrelated speckle; the GRD's resampled (spatially correlated) speckle and the
    # texture of the ground keep the real gain lower - but it must clearly rise
    assert 2.0 < gain < 16.5, gain
    # and rise further with more looks
    ml2, _ = multilook(intensity, valid, 2)
    assert np.median(_cell_enl(ml2, 16)[sel]) < np.median(e1[sel])


def test_multilook_masks_blocks_that_are_mostly_invalid(sar_data):
    intensity, valid = _intensity(sar_data / "train" / "airsar_flevoland_c3_c11_c22_c33_lin.npy", band=2)
    assert (~valid).sum() > 0  # C22 has exact zeros and tiny negative values
    ml, ok = multilook(intensity, valid, 2)
    v4 = valid[: ml.shape[0] * 2, : ml.shape[1] * 2].reshape(ml.shape[0], 2, ml.shape[1], 2).sum(axis=(1, 3))
    assert np.array_equal(ok, v4 >= 2)
    assert np.all(ml[ok] > 0) and np.all(ml[~ok] == 0)


def test_speckle_resynthesis_gives_l_look_statistics(ghana):
    """A 4x4-multilooked real scene (ENL > 15 on homogeneous ground) times Gamma(L, 1/L) noise measures ENL ≈ L;
    multilooking the synthetic single-look speckle (uncorrelated) by 2x2 gives ENL ≈ k² = 4."""
    intensity, valid = ghana
    refl, ok = multilook(intensity, valid, 4)
    e_ref = _cell_enl(refl, 8)
    sel = e_ref >= np.quantile(e_ref, 0.75)
    assert np.median(e_ref[sel]) > 15
    rng = np.random.default_rng(0)
    single = resynthesize_speckle(refl, 1, rng)
    four = resynthesize_speckle(refl, 4, rng)
    assert 0.8 < np.median(_cell_enl(single, 8)[sel]) < 1.2
    assert 2.8 < np.median(_cell_enl(four, 8)[sel]) < 4.4
    assert abs(single.mean() / refl.mean() - 1) < 0.03  # unit-mean noise keeps the radiometry
    back, _ = multilook(single, ok, 2)
    assert 3.2 < np.median(_cell_enl(back, 4)[sel]) < 4.8


def test_gain_moves_the_db_mean_by_the_gain(spain_db):
    intensity, _ = _intensity(spain_db)
    db = 10 * np.log10(intensity)
    for g in (-6.5, 3.7):
        shifted = apply_gain_db(db, g)
        assert abs((shifted.mean() - db.mean()) - g) < 1e-9
        np.testing.assert_allclose(10 ** (shifted / 10) / intensity, 10 ** (g / 10), rtol=1e-9)
    # in the model's window a gain moves the scaled values by g / width wherever nothing clips
    u0, u1 = window_to_unit(db, -45, 8), window_to_unit(apply_gain_db(db, 3.7), -45, 8)
    inside = (u0 > 0) & (u1 < 1)
    np.testing.assert_allclose((u1 - u0)[inside], 3.7 / 53, atol=1e-5)


def test_dn_scene_needs_the_window_augmentation(kerala_dn):
    """Kerala DN (uncalibrated amplitude, ≈40–53 dB) is one clipped value in the model's window; the 'source'
    window (patch percentiles, widened at random) keeps its contrast and clips almost nothing."""
    with open_raster(kerala_dn) as r:
        raw = r.read(Window(300, 300, 128, 128))[0]
        valid = valid_mask(raw, r.units, r.nodata)
        db = raw_to_db(np.where(valid, raw, 1), r.units)
    assert np.all(window_to_unit(db[valid], MODEL.vmin_db, MODEL.vmax_db) == 1.0)
    cfg = AugmentConfig(p_model=0.0, p_shifted=0.0)
    rng = np.random.default_rng(3)
    p01, p999 = np.percentile(db[valid], [0.1, 99.9])
    for _ in range(20):
        lo, hi, mode, _g = choose_window(db, valid, MODEL, cfg, rng)
        assert mode == "source" and lo <= p01 and hi >= p999 and hi - lo <= 1.6 * (p999 - p01) + 1e-9
        u = window_to_unit(db[valid], lo, hi)
        assert np.mean((u == 0) | (u == 1)) <= 0.002 + 1e-9 and u.std() > 0.08
    # 'shifted' = the codec's auto mode for uncalibrated rasters: the model's width centred on the data
    lo, hi, mode, _g = choose_window(db, valid, MODEL, AugmentConfig(p_model=0.0, p_shifted=1.0), rng)
    assert mode == "shifted" and hi - lo == pytest.approx(53.0) and lo < np.median(db) < hi


def test_balance_index_gives_each_category_its_share():
    from training.patches import PatchRef

    cats = ["a", "b", "c"]
    index = [PatchRef(0, 1, i, 0) for i in range(300)] + [PatchRef(1, 1, i, 0) for i in range(40)] + \
        [PatchRef(2, 1, i, 0) for i in range(5)]
    out = balance_index(index, cats, {"a": 0.5, "b": 0.3, "c": 0.2}, seed=0)
    counts = {c: sum(cats[r.source] == c for r in out) for c in cats}
    n = len(out)
    assert counts["a"] == 300  # the largest category per share is kept once, nothing dropped
    assert abs(counts["b"] / n - 0.3) < 0.01 and abs(counts["c"] / n - 0.2) < 0.01
    assert set(index) <= set(out)


def test_augmented_dataset_on_real_rasters(sar_data, kerala_dn):
    """Items are [0, 1] patches with masks, reproducible from torch's seed; held-out DN patches scaled as the
    codec's auto mode does are not one clipped value."""
    sources = [PatchSource(str(sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"), bands="1"),
               PatchSource(str(sar_data / "tsx_slc_merlin_test_256_reim.npy")),
               PatchSource(str(sar_data / "s1_opera_rtc_t137-292319-iw2_20211119_vv_lin.tif"))]
    ds = AugmentedPatchDataset(sources, MODEL, size=64, stride=64, quality=PatchFilter(0.005, 0.5),
                               categories=["grd_db", "slc_other", "rtc"],
                               shares={"grd_db": 0.5, "slc_other": 0.3, "rtc": 0.2},
                               augment_cfg=AugmentConfig(p_multilook=0.5))
    counts = ds.category_counts()
    assert counts["grd_db"] == 64 and abs(counts["rtc"] / len(ds) - 0.2) < 0.02
    torch.manual_seed(5)
    a = [ds[i] for i in range(0, len(ds), 7)]
    torch.manual_seed(5)
    b = [ds[i] for i in range(0, len(ds), 7)]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["image"].shape == (1, 64, 64) and 0 <= x["image"].min() and x["image"].max() <= 1
    modes, ks = set(), set()
    rng = np.random.default_rng(0)
    for i in range(60):
        _, _, info = ds.augmented(ds.index[i % len(ds)], rng)
        modes.add(info["window"])
        ks.add(info["k"])
    assert modes == {"model", "shifted", "source"} and len(ks) >= 3
    # the codec's auto mode only (what the candidate sarae-broad-q2 was trained with): no 'source' windows
    ds.acfg = AugmentConfig(p_model=0.65, p_shifted=0.35)
    assert {ds.augmented(ds.index[i % len(ds)], rng)[2]["window"] for i in range(40)} == {"model", "shifted"}
    val = AutoScaledPatchDataset([PatchSource(str(kerala_dn), window=(0, 0, 1280, 416))], MODEL, size=128,
                                 stride=128, quality=PatchFilter(0.005, 0.1))
    assert len(val) > 20 and all(r.row + 128 <= 416 + 127 for r in val.index)
    item = val[len(val) // 2]["image"]
    assert 0.2 < float(item.mean()) < 0.95 and float(item.std()) > 0.01
