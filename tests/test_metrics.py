"""Tests for sar_ae_core.quality.metrics (real computations, no mocks)."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sar_ae_core.quality import metrics as M

SAR_TIF = Path("/work/shared/data/sar/s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif")


def speckle(L, shape=(512, 512), seed=0):
    """Unit-mean L-look gamma intensity speckle."""
    return np.random.default_rng(seed).gamma(shape=L, scale=1.0 / L, size=shape)


@pytest.fixture(scope="module")
def sar_db():
    rasterio = pytest.importorskip("rasterio")
    if not SAR_TIF.exists():
        pytest.skip(f"missing {SAR_TIF}")
    with rasterio.open(SAR_TIF) as ds:
        a = ds.read(1).astype(np.float64)
    assert np.isfinite(a).all()
    return a


# ---------------------------------------------------------------- ENL


@pytest.mark.parametrize("L", [1, 4, 16])
def test_enl_of_gamma_speckle_whole_image(L):
    img = 7.0 * speckle(L, seed=L)
    assert M.enl(img) == pytest.approx(L, rel=0.05)


@pytest.mark.parametrize("L", [1, 4, 16])
def test_enl_via_homogeneous_mask_on_two_region_scene(L):
    scene = np.full((512, 512), 2.0)
    scene[:, 256:] = 20.0  # 10 dB step
    img = scene * speckle(L, seed=100 + L)
    hm = M.homogeneous_mask(img)
    assert hm.dtype == bool and hm.shape == img.shape
    # most of each flat region is found homogeneous ...
    assert hm[:, :200].mean() > 0.9 and hm[:, 312:].mean() > 0.9
    # ... but pixels right at the step are not
    assert hm[:, 252:260].mean() < 0.5
    for region in (scene == 2.0, scene == 20.0):
        assert M.enl(img, hm & region) == pytest.approx(L, rel=0.05)
    # mixing both means over one mask underestimates the ENL
    assert M.enl(img, hm) < 0.8 * L


def test_homogeneous_mask_absolute_threshold_and_validity():
    img = 3.0 * speckle(4, shape=(128, 128), seed=5)  # CV ~ 0.5
    assert not M.homogeneous_mask(img, cv_threshold=0.3).any()
    assert M.homogeneous_mask(img, cv_threshold=0.8)[20:-20, 20:-20].all()
    valid = np.ones(img.shape, bool)
    valid[60:64, 60:64] = False
    hm = M.homogeneous_mask(img, cv_threshold=0.8, valid=valid)
    # no pixel whose 15x15 window touches the invalid patch
    assert not hm[53:71, 53:71].any()
    assert hm[52, 52] and hm[71, 71]


def test_enl_ratio_smoothed_and_independent():
    L = 4
    ref = 5.0 * speckle(L, seed=11)
    other = 5.0 * speckle(L, seed=12)
    smooth = ndimage.uniform_filter(ref, 5)
    assert M.enl_ratio(ref, smooth) > 1.5
    assert M.enl_ratio(ref, other) == pytest.approx(1.0, rel=0.05)
    noisier = 5.0 * speckle(1, seed=13)
    assert M.enl_ratio(ref, noisier) < 0.5
    # explicit mask used as the region
    mask = np.zeros(ref.shape, bool)
    mask[:256] = True
    assert M.enl_ratio(ref, other, mask=mask) == pytest.approx(1.0, rel=0.05)


# ---------------------------------------------------------------- EPI / SSIM / MS-SSIM


def test_identical_images_give_one(sar_db):
    assert M.epi(sar_db, sar_db) == pytest.approx(1.0, abs=1e-9)
    scaled = (np.clip(sar_db, -30, 5) + 30) / 35
    assert M.ssim(scaled, scaled) == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(M.ssim_map(scaled, scaled), 1.0, atol=1e-9)
    assert M.ms_ssim(scaled, scaled) == pytest.approx(1.0, abs=1e-6)


def test_epi_and_ssim_fall_with_blur(sar_db):
    scaled = (np.clip(sar_db, -30, 5) + 30) / 35
    epis, ssims = [], []
    for sigma in (0.5, 1.0, 2.0, 4.0):
        blurred = ndimage.gaussian_filter(sar_db, sigma)
        epis.append(M.epi(sar_db, blurred))
        ssims.append(M.ssim(scaled, (np.clip(blurred, -30, 5) + 30) / 35))
    assert all(a > b for a, b in zip(epis, epis[1:])), epis
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert epis[0] < 1.0 and epis[-1] > 0.0


def test_epi_excludes_invalid_neighbourhoods(sar_db):
    blurred = ndimage.gaussian_filter(sar_db, 1.0)
    mask = np.ones(sar_db.shape, bool)
    mask[100:200, 100:200] = False
    corrupted = blurred.copy()
    corrupted[100:200, 100:200] = np.random.default_rng(1).normal(0, 50, (100, 100))
    # garbage inside the invalid area (incl. its edge gradients) is ignored
    assert M.epi(sar_db, corrupted, mask=mask) == pytest.approx(M.epi(sar_db, blurred, mask=mask), abs=1e-12)
    assert M.epi(sar_db, corrupted) < M.epi(sar_db, blurred, mask=mask)
    with_nan = blurred.copy()
    with_nan[100:200, 100:200] = np.nan
    assert M.epi(sar_db, with_nan) == pytest.approx(M.epi(sar_db, blurred, mask=mask), abs=1e-12)


def test_ssim_mask_ignores_garbage():
    rng = np.random.default_rng(3)
    ref = ndimage.gaussian_filter(rng.random((96, 96)), 2)
    test = np.clip(ref + rng.normal(0, 0.02, ref.shape), 0, 1)
    mask = np.ones(ref.shape, bool)
    mask[:, :20] = False
    garbage = test.copy()
    garbage[:, :20] = rng.random((96, 20))
    s = M.ssim(ref, test, mask=mask)
    assert s < 1.0
    assert M.ssim(ref, garbage, mask=mask) == pytest.approx(s, abs=1e-12)
    smap = M.ssim_map(ref, garbage, mask=mask)
    assert np.isnan(smap[:, :20]).all() and np.isfinite(smap[:, 20:]).all()


def test_ms_ssim_small_image_and_degradation():
    rng = np.random.default_rng(4)
    ref = ndimage.gaussian_filter(rng.random((64, 80)), 2)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    assert M.ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    assert M.ms_ssim(ref, noisy) < 0.99
    with pytest.raises(ValueError):
        M.ms_ssim(ref[:32, :32], ref[:32, :32])


# ---------------------------------------------------------------- PSNR / RMSE


def test_psnr_hand_computation_and_mask():
    a = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]])
    b = np.array([[0.1, 0.25, 0.4], [0.7, 0.9, 0.3]])
    expected = 10 * np.log10(1.0 / np.mean((a - b) ** 2))
    assert M.psnr(a, b) == pytest.approx(expected, abs=1e-9)
    assert M.psnr(a, a) == float("inf")
    assert M.psnr(a, b, data_range=2.0) == pytest.approx(expected + 20 * np.log10(2.0), abs=1e-9)
    mask = np.ones(a.shape, bool)
    mask[1, 2] = False
    expected_masked = 10 * np.log10(1.0 / np.mean((a[mask] - b[mask]) ** 2))
    assert M.psnr(a, b, mask=mask) == pytest.approx(expected_masked, abs=1e-9)
    assert expected_masked != pytest.approx(expected, abs=1e-3)
    # only the differing pixel masked -> identical on valid pixels
    only = np.zeros(a.shape, bool)
    only[0, 1] = True
    assert M.psnr(a, b, mask=only) == float("inf")
    # NaN counts as invalid
    b_nan = b.copy()
    b_nan[1, 2] = np.nan
    assert M.psnr(a, b_nan) == pytest.approx(expected_masked, abs=1e-9)


def test_rmse():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 4.0], [3.0, 100.0]])
    mask = np.array([[True, True], [True, False]])
    assert M.rmse(a, b, mask=mask) == pytest.approx(np.sqrt(4.0 / 3.0), abs=1e-12)
    assert M.rmse(a, a) == 0.0


# ---------------------------------------------------------------- maps


def test_iter_map_windows_tiles_exactly():
    h, w = 130, 75
    cover = np.zeros((h, w), int)
    for win in M.iter_map_windows(h, w, block=32, halo=7):
        (rr, rc), (cr, cc) = win.read, win.core
        assert rr.start >= 0 and rc.start >= 0 and rr.stop <= h and rc.stop <= w
        out = win.out
        assert out[0].start - rr.start == cr.start and out[1].start - rc.start == cc.start
        # halo of 7 unless clipped at the image border
        assert out[0].start - rr.start == min(7, out[0].start)
        assert rr.stop - out[0].stop == min(7, h - out[0].stop)
        cover[out] += 1
    assert (cover == 1).all()


@pytest.fixture(scope="module")
def pair_db(sar_db):
    ref = sar_db[:300, :260]
    test = ndimage.gaussian_filter(ref, 1.0) + np.random.default_rng(7).normal(0, 0.3, ref.shape)
    return ref, test


def test_abs_error_map_matches_scalar(pair_db):
    ref, test = pair_db
    m = M.abs_error_db_map(ref, test, dtype=np.float64)
    assert m.shape == ref.shape
    assert np.mean(m) == pytest.approx(np.mean(np.abs(test - ref)), rel=1e-12)
    assert np.sqrt(np.mean(m**2)) == pytest.approx(M.rmse(ref, test), rel=1e-12)
    mask = np.ones(ref.shape, bool)
    mask[:10] = False
    mm = M.abs_error_db_map(ref, test, mask=mask)
    assert mm.dtype == np.float32
    assert np.isnan(mm[:10]).all() and np.isfinite(mm[10:]).all()


def test_local_epi_map_identical_is_one(sar_db):
    m = M.local_epi_map(sar_db, sar_db, window=15)
    fin = np.isfinite(m)
    assert fin.mean() > 0.99
    assert np.allclose(m[fin], 1.0, atol=1e-6)


def test_local_epi_map_tracks_blur(pair_db):
    ref, _ = pair_db
    light = M.local_epi_map(ref, ndimage.gaussian_filter(ref, 0.5))
    heavy = M.local_epi_map(ref, ndimage.gaussian_filter(ref, 3.0))
    assert np.nanmean(heavy) < np.nanmean(light) < 1.0


def test_local_enl_ratio_map_statistics():
    L = 4
    ref = 3.0 * speckle(L, shape=(256, 256), seed=21)
    other = 3.0 * speckle(L, shape=(256, 256), seed=22)
    m = M.local_enl_ratio_map(ref, other, window=15)
    assert np.isfinite(m).all()
    assert np.median(m) == pytest.approx(1.0, rel=0.05)
    smooth = M.local_enl_ratio_map(ref, ndimage.uniform_filter(ref, 3), window=15)
    assert np.median(smooth) > 3.0
    same = M.local_enl_ratio_map(ref, ref)
    assert np.allclose(same, 1.0, atol=1e-6)


def test_local_enl_ratio_map_nan_rules():
    ref = 2.0 * speckle(1, shape=(64, 64), seed=31)
    ref[:, :20] = 5.0  # zero local variance in ref
    test = 2.0 * speckle(1, shape=(64, 64), seed=32)
    mask = np.ones(ref.shape, bool)
    mask[50:, 50:] = False
    m = M.local_enl_ratio_map(ref, test, mask=mask)
    assert np.isnan(m[:, :12]).all()  # box entirely inside the flat strip
    assert np.isnan(m[50:, 50:]).all()  # invalid pixels
    assert np.isfinite(m[:40, 30:]).all()


@pytest.mark.parametrize("name", ["abs_error_db_map", "local_epi_map", "local_enl_ratio_map"])
def test_maps_do_not_depend_on_block_size(pair_db, name):
    ref, test = pair_db
    mask = np.ones(ref.shape, bool)
    mask[37:61, 150:170] = False
    test = test.copy()
    test[5, 5] = np.nan
    if name == "local_enl_ratio_map":
        ref, test = 10 ** (ref / 10), 10 ** (test / 10)
    fn = getattr(M, name)
    small = fn(ref, test, mask=mask, block=64, dtype=np.float64)
    odd = fn(ref, test, mask=mask, block=37, dtype=np.float64)
    whole = fn(ref, test, mask=mask, block=10000, dtype=np.float64)
    assert np.isfinite(whole).mean() > 0.9
    np.testing.assert_allclose(small, whole, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(odd, whole, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert np.array_equal(np.isnan(small), np.isnan(whole))


def test_streaming_window_api_reproduces_map(pair_db):
    ref, test = pair_db
    halo = M.map_halo("local_epi", 9)
    out = np.full(ref.shape, np.nan)
    for win in M.iter_map_windows(*ref.shape, block=50, halo=halo):
        res = M.local_epi_window(ref[win.read], test[win.read], window=9)
        out[win.out] = res[win.core]
    full = M.local_epi_map(ref, test, window=9, block=None, dtype=np.float64)
    np.testing.assert_allclose(out, full, rtol=1e-12, equal_nan=True)


# ---------------------------------------------------------------- summary


def test_summarize(sar_db):
    ref = sar_db
    test = ndimage.gaussian_filter(ref, 1.0)
    mask = np.ones(ref.shape, bool)
    mask[:64] = False
    s = M.summarize(ref, test, mask, -30.0, 5.0)
    assert set(s) == {"psnr", "ssim", "rmse_db", "enl_ratio", "epi", "valid_fraction"}
    assert s["valid_fraction"] == pytest.approx(448 / 512)
    r01 = (np.clip(ref, -30, 5) + 30) / 35
    t01 = (np.clip(test, -30, 5) + 30) / 35
    assert s["psnr"] == pytest.approx(M.psnr(r01, t01, mask=mask), abs=1e-9)
    assert s["ssim"] == pytest.approx(M.ssim(r01, t01, mask=mask), abs=1e-9)
    assert s["rmse_db"] == pytest.approx(M.rmse(ref, test, mask=mask), abs=1e-12)
    assert s["epi"] == pytest.approx(M.epi(ref, test, mask=mask), abs=1e-12)
    assert 0.0 < s["ssim"] < 1.0 and 0.0 < s["epi"] < 1.0
    assert s["enl_ratio"] > 1.0  # blurring smooths speckle
    ident = M.summarize(ref, ref, None, -30.0, 5.0)
    assert ident["psnr"] == float("inf") and ident["rmse_db"] == 0.0
    assert ident["ssim"] == pytest.approx(1.0, abs=1e-9) and ident["epi"] == pytest.approx(1.0, abs=1e-9)
    assert ident["enl_ratio"] == pytest.approx(1.0, abs=1e-12) and ident["valid_fraction"] == 1.0
