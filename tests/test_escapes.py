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
