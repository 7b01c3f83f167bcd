"""Raster I/O on real SAR files: unit decisions, windows, georeference round trips, atomic writes."""

import os
import shutil

import numpy as np
import pytest
import rasterio

from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import GeoTiffWriter, Window, mosaic_vrt, open_raster


@pytest.mark.parametrize("fixture, units, count, dtype, georef", [
    ("kerala_dn", "amplitude", 1, "uint16", "gcps"),
    ("spain_db", "db", 2, "float32", "transform"),
    ("opera_lin", "linear", 1, "float32", "transform"),
    ("tsx_complex", "complex", 1, "complex64", "none"),
])
def test_every_unit_kind_is_recognised(request, fixture, units, count, dtype, georef):
    path = request.getfixturevalue(fixture)
    with open_raster(path) as r:
        assert (r.units, r.count, r.dtype, r.georef.kind) == (units, count, dtype, georef)
        assert r.units_reason
        block = r.read(Window(0, 0, 16, 8))
        assert block.shape == (count, 8, 16)


def test_units_decided_from_values_when_the_name_says_nothing(tmp_path, spain_db, opera_lin, kerala_dn):
    expected = {spain_db: ("db", "negative"), opera_lin: ("linear", "non-negative"),
                kerala_dn: ("amplitude", "integer")}
    for src, (units, word) in expected.items():
        neutral = tmp_path / f"scene_{units}.tif".replace(units, "x")
        shutil.copy(src, neutral)
        with open_raster(neutral) as r:
            assert r.units == units, r.units_reason
            assert word in r.units_reason
        neutral.unlink()


def test_complex_reim_and_covariance_arrays(tsx_complex, sar_data):
    raw = np.load(tsx_complex)
    with open_raster(tsx_complex) as r:
        z = r.read()[0]
    np.testing.assert_array_equal(z.real, raw[..., 0])
    np.testing.assert_array_equal(z.imag, raw[..., 1])
    cov = np.load(sar_data / "s1_slc_shanghai_dualpol_cov2x2_256.npy")
    with open_raster(sar_data / "s1_slc_shanghai_dualpol_cov2x2_256.npy") as r:
        assert (r.units, r.count) == ("linear", 2)
        np.testing.assert_array_equal(r.read(Window(10, 20, 30, 40), band=2)[0], cov[20:60, 10:40, 1, 1].real)


def test_band_selection_and_window_reads_match_full_read(spain_db):
    with open_raster(spain_db, bands="2") as r:
        assert r.band_names == ["VH"]
        full = r.read()
        parts = np.zeros_like(full)
        for w in r.blocks(200):
            parts[:, w.row:w.row + w.height, w.col:w.col + w.width] = r.read(w)
    np.testing.assert_array_equal(full, parts)
    with rasterio.open(spain_db) as ds:
        np.testing.assert_array_equal(full[0], ds.read(2))


def _copy_through_writer(src_path, dst_path, block=300):
    with open_raster(src_path) as r:
        info = r.info
        with GeoTiffWriter(dst_path, r.width, r.height, r.count, r.dtype, r.georef, nodata=r.nodata,
                           band_names=r.band_names, tags=info.tags) as w:
            for win in r.blocks(block):
                w.write(r.read(win), win)


@pytest.mark.parametrize("fixture", ["kerala_dn", "spain_db", "camargue_db", "opera_lin"])
def test_georeference_survives_read_write_bit_exact(request, tmp_path, fixture):
    src_path = request.getfixturevalue(fixture)
    dst_path = tmp_path / "copy.tif"
    _copy_through_writer(src_path, dst_path)
    with rasterio.open(src_path) as a, rasterio.open(dst_path) as b:
        assert (a.crs.to_wkt() if a.crs else None) == (b.crs.to_wkt() if b.crs else None)
        assert tuple(a.transform) == tuple(b.transform)
        ga, ca = a.gcps
        gb, cb = b.gcps
        assert len(ga) == len(gb)
        assert [(g.row, g.col, g.x, g.y, g.z) for g in ga] == [(g.row, g.col, g.x, g.y, g.z) for g in gb]
        if ga:
            assert ca.to_wkt() == cb.to_wkt()
        assert (a.nodata == b.nodata) or (np.isnan(a.nodata) and np.isnan(b.nodata))
        assert a.descriptions == b.descriptions
        np.testing.assert_array_equal(a.read(), b.read())
        assert b.profile["tiled"] or b.width < 16


def test_kerala_gcps_are_all_kept(tmp_path, kerala_dn):
    _copy_through_writer(kerala_dn, tmp_path / "k.tif")
    with rasterio.open(tmp_path / "k.tif") as ds:
        gcps, crs = ds.gcps
    assert len(gcps) == 210 and crs.to_epsg() == 4326


def test_failed_write_leaves_nothing_and_keeps_existing_file(tmp_path, spain_db):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with GeoTiffWriter(target, 64, 64, 1, "float32") as w:
            w.write(np.zeros((1, 32, 64), np.float32), Window(0, 0, 64, 32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"precious")
    with pytest.raises(SarInputError, match="already exists"):
        GeoTiffWriter(target, 64, 64, 1, "float32")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "missing.tif", "file not found"),
    (lambda d: (d / "notes.tif").write_text("not a raster") and d / "notes.tif", "not a readable raster"),
    (lambda d: d, "is a folder"),
    (lambda d: (d / "bad.npy").write_bytes(b"\x93NUMPY garbage") and d / "bad.npy", "not a readable .npy"),
])
def test_bad_input_names_file_and_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(SarInputError) as err:
        open_raster(path)
    assert problem in str(err.value) and os.fspath(path) in str(err.value)


def test_missing_band_is_reported(spain_db):
    with pytest.raises(SarInputError, match=r"band\(s\) \[3\] do not exist \(the raster has 2 band"):
        open_raster(spain_db, bands="1,3")


def test_mosaic_vrt_builds_a_large_real_raster_cheaply(tmp_path, spain_db):
    vrt = mosaic_vrt(spain_db, tmp_path / "big.vrt", 2000, 1500)
    assert os.path.getsize(vrt) < 100_000
    with open_raster(vrt, units="db") as r, rasterio.open(spain_db) as src:
        assert (r.width, r.height) == (2000, 1500)
        tile = r.read(Window(512, 1024, 512, 476))[0]
        np.testing.assert_array_equal(tile, src.read(1)[:476])
