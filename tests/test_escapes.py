"""Nothing is clipped: pixels outside the network's dB window and a raster's brightest pixels come back."""

import numpy as np
import pytest
import rasterio

from sar_ae_core.coding import escapes as esc
from sar_ae_core.cli import main
from sar_ae_core.io.raster import open_raster
from sar_ae_core.scaling import raw_to_db, valid_mask


def _db_of(path, band=None):
    with open_raster(path) as r:
        raw = r.read()
        v = valid_mask(raw, r.units, r.nodata)
        return raw_to_db(np.where(v, raw, 1), r.units), v


def test_escape_frames_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    db = rng.normal(-10, 12, (256, 200))
    valid = rng.random(db.shape) > 0.1
    out = esc.out_of_window(db, valid, -25.0, 5.0)
    assert 100 < out.sum() < db.size
    frame = esc.encode_escapes(db, out, -25.0, 5.0, 0.1)
    flat, values = esc.decode_escapes(frame, db.shape, -25.0, 5.0, 0.1)
    np.testing.assert_array_equal(flat, np.flatnonzero(out))
    assert np.abs(values - db.ravel()[flat]).max() <= 0.05 + 1e-9
    # values just outside the window stay on their side of it
    tiny = np.array([[5.01, -25.01, 0.0]])
    f2 = esc.encode_escapes(tiny, esc.out_of_window(tiny, np.ones_like(tiny, bool), -25, 5), -25, 5, 0.1)
    _, v2 = esc.decode_escapes(f2, tiny.shape, -25, 5, 0.1)
    assert v2[0] >= 5 and v2[1] <= -25 and np.abs(v2 - [5.01, -25.01]).max() <= 0.05
    assert esc.encode_escapes(db, np.zeros_like(out), -25, 5, 0.1) == b""


def _zstd_frame(db, escaped, vmin, vmax, step):
    """The escape frame as format 1.0-1.2 wrote it (one zstd frame), for the reader's backward compatibility."""
    import zstandard

    flat = np.flatnonzero(escaped.ravel())
    values = db.ravel()[flat]
    above = values > vmax
    k = np.rint(np.where(above, values - vmax, vmin - values) / step) + 1
    codes = (np.where(above, 1, -1) * np.clip(k, 1, 32767)).astype("<i2")
    body = np.array([flat.size], "<u4").tobytes() + esc._varints(np.diff(flat, prepend=0)) + \
        codes.view(np.uint8).reshape(-1, 2).T.tobytes()
    return zstandard.ZstdCompressor(level=19).compress(body)


@pytest.mark.parametrize("case", ["bright_only", "dark_only", "both", "one", "dense", "chip"])
def test_rice_frames_decode_like_the_old_frames_and_are_smaller(case, spain_db):
    """The 2.0 frame gives the positions and values of the 1.0-1.2 frame (which still decodes), never in more
    bytes; on a 100 x 100 RTC chip (scattered bright and dark pixels) in under three quarters of them."""
    rng = np.random.default_rng(3)
    if case == "chip":
        from conftest import SAR_DATA

        db, valid = _db_of(SAR_DATA / "train" / "s1_opera_rtc_t137-292324-iw1_20211119_vh_lin.tif")
        db = db[0].astype(np.float64)
        vmin, vmax = -45.0, float(np.quantile(db[valid[0]], 0.999))
        out = valid[0] & ((db > vmax) | (db < vmin))
    elif case in ("bright_only", "both"):
        db, valid = _db_of(spain_db)
        db = db[0].astype(np.float64)
        above = float(np.quantile(db[valid[0]], 0.999))
        vmin = -30.0 if case == "both" else -60.0
        out = valid[0] & ((db > above) | (db < vmin))
        vmax = above
    elif case == "dark_only":
        db = rng.normal(-20, 3, (256, 256))
        vmin, vmax = -26.0, 40.0
        out = db < vmin
    elif case == "one":
        db = np.full((256, 256), -10.0)
        db[255, 255] = 31.0
        vmin, vmax = -40.0, 8.0
        out = db > vmax
    else:  # a tile mostly outside the window
        db = rng.normal(-50, 5, (256, 256))
        vmin, vmax = -45.0, 8.0
        out = db < vmin
    assert out.sum() > 0
    new = esc.encode_escapes(db, out, vmin, vmax, 0.1)
    old = _zstd_frame(db, out, vmin, vmax, 0.1)
    assert old[0] != esc.RICE_TAG
    f_new, v_new = esc.decode_escapes(new, db.shape, vmin, vmax, 0.1)
    f_old, v_old = esc.decode_escapes(old, db.shape, vmin, vmax, 0.1)
    np.testing.assert_array_equal(f_new, np.flatnonzero(out))
    np.testing.assert_array_equal(f_new, f_old)
    np.testing.assert_allclose(v_new, v_old, atol=1e-12)
    assert np.abs(v_new - db.ravel()[f_new]).max() <= 0.05 + 1e-9
    print(case, int(out.sum()), len(new), len(old))
    assert len(new) <= len(old), (len(new), len(old))
    if case in ("chip", "one", "dark_only"):  # scattered escapes: the Rice frame
        assert new[0] == esc.RICE_TAG and len(new) < (0.9 if case == "dark_only" else 0.75) * len(old), \
            (len(new), len(old))


@pytest.mark.parametrize("cut", [1, 3, 5, -1])
def test_damaged_rice_frames_are_refused(cut):
    rng = np.random.default_rng(4)
    db = rng.normal(-10, 12, (64, 64))
    out = esc.out_of_window(db, np.ones(db.shape, bool), -25.0, 5.0)
    frame = esc.encode_escapes(db, out, -25.0, 5.0, 0.1)
    with pytest.raises(ValueError):
        esc.decode_escapes(frame[:cut] if cut > 0 else frame + bytes(4), db.shape, -25.0, 5.0, 0.1)
    with pytest.raises(ValueError):  # more escapes than the tile has pixels
        esc.decode_escapes(frame, (8, 8), -25.0, 5.0, 0.1)


@pytest.mark.parametrize("damage", ["count", "positions", "bomb"])
def test_damaged_escape_frames_are_refused(damage):
    import zstandard

    shape = (16, 16)
    if damage == "count":
        body = np.array([5], "<u4").tobytes() + np.zeros(4, "<u4").tobytes()
    elif damage == "positions":
        body = np.array([1], "<u4").tobytes() + np.array([1000], "<u4").tobytes() + np.array([3], "<i2").tobytes()
    else:  # declares far more than a 16x16 tile can hold
        body = np.array([256], "<u4").tobytes() + bytes(10 ** 6)
    with pytest.raises(Exception):
        esc.decode_escapes(zstandard.ZstdCompressor().compress(body), shape, -25, 5, 0.1)


def test_bright_targets_come_back_instead_of_being_clipped(tmp_path, spain_db, default_bundle):
    """The Spain chip's VV maximum (+25.6 dB) is far above the model's +8 dB window top."""
    db, valid = _db_of(spain_db)
    results = {}
    for step in ("0.1", "0"):
        sarz, rec = tmp_path / f"s{step}.sarz", tmp_path / f"s{step}.tif"
        assert main(["compress", str(spain_db), str(sarz), "--escape-step", step]) == 0
        assert main(["reconstruct", str(sarz), str(rec), "--units", "db"]) == 0
        with rasterio.open(rec) as ds:
            out = ds.read().astype(np.float64)
        m = valid & np.isfinite(out)
        bright = m & (db >= np.quantile(db[m], 0.999))
        results[step] = (out[m].max(), np.median(np.abs(out[bright] - db[bright])), sarz.stat().st_size)
    assert db[valid].max() > 20
    assert results["0"][0] == pytest.approx(8.0, abs=0.01)          # clipped at the window's top
    assert abs(results["0.1"][0] - db[valid].max()) <= 0.05          # comes back within half a step
    assert results["0.1"][1] <= 0.05 < 1.0 < results["0"][1]
    assert results["0.1"][2] < 1.12 * results["0"][2]                 # for a few percent more bytes


def test_brightest_pixels_of_dn_data_and_windows(tmp_path, kerala_dn, tiny_bundle):
    """Uncalibrated DN: the brightest 0.1 % are kept even inside the (shifted) window; a --window decode of
    a region with escapes equals that region of the full decode."""
    sarz, full, win = tmp_path / "k.sarz", tmp_path / "k.tif", tmp_path / "w.tif"
    assert main(["compress", str(kerala_dn), str(sarz), "--model", tiny_bundle]) == 0
    assert main(["reconstruct", str(sarz), str(full), "--units", "db", "--model", tiny_bundle]) == 0
    db, valid = _db_of(kerala_dn)
    with rasterio.open(full) as ds:
        out = ds.read().astype(np.float64)
    m = valid & np.isfinite(out)
    bright = m & (db >= np.quantile(db[m], 0.999))
    assert np.median(np.abs(out[bright] - db[bright])) <= 0.05
    assert main(["reconstruct", str(sarz), str(win), "--units", "db", "--model", tiny_bundle,
                 "--window", "200", "100", "300", "260"]) == 0
    with rasterio.open(win) as ds:
        np.testing.assert_array_equal(ds.read(), out[:, 100:360, 200:500].astype(np.float32))


@pytest.mark.parametrize("args, option", [(["--escape-step", "-1"], "--escape-step"),
                                          (["--escape-step", "11"], "--escape-step"),
                                          (["--keep-brightest", "50"], "--keep-brightest")])
def test_invalid_escape_options_exit_2(tmp_path, spain_db, tiny_bundle, capsys, args, option):
    out = tmp_path / "x.sarz"
    assert main(["compress", str(spain_db), str(out), "--model", tiny_bundle, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and option in err
    assert not out.exists()
