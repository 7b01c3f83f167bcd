"""SAR scaling on real data: exact inverse inside the clip range, clip bounds outside, invalid → nodata,
streaming fit matching exact percentiles, and errors on unusable data."""

import json

import numpy as np
import pytest
import rasterio

from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import GeoTiffWriter, open_raster
from sar_ae_core.scaling import ScalingParams, db_to_raw, fit_scaling, raw_to_db, valid_mask


def _roundtrip(path, **kw):
    params = fit_scaling([path], **kw)
    with open_raster(path) as r:
        raw = r.read()
        scaled, valid = params.forward(raw, r.units, r.nodata)
        back = params.inverse(scaled, valid, r.units, r.dtype, r.nodata)
        units = r.units
    return params, raw, scaled, valid, back, units


@pytest.mark.parametrize("fixture", ["spain_db", "opera_lin", "kerala_dn", "camargue_db"])
def test_inverse_of_forward_is_exact_inside_the_clip_range(request, fixture):
    params, raw, scaled, valid, back, units = _roundtrip(request.getfixturevalue(fixture))
    assert scaled.dtype == np.float32 and scaled.min() >= 0 and scaled.max() <= 1
    assert back.dtype == raw.dtype
    db = raw_to_db(raw, units)
    inside = valid & (db > params.vmin_db) & (db < params.vmax_db)
    outside_lo = valid & (db < params.vmin_db)
    outside_hi = valid & (db > params.vmax_db)
    assert inside.mean() > 0.9 and outside_lo.any() and outside_hi.any()
    if np.issubdtype(raw.dtype, np.integer):
        np.testing.assert_array_equal(back[inside], raw[inside])
    else:
        # float32 precision: one float32 step of the [0, 1] value plus one of the float32 output
        eps = np.finfo(np.float32).eps
        err_db = np.abs(raw_to_db(back, units)[inside] - db[inside])
        assert err_db.max() <= eps * (params.span_db + 2 * np.abs(db[inside]).max()), err_db.max()
    lo = db_to_raw(np.array([params.vmin_db]), units, raw.dtype)[0]
    hi = db_to_raw(np.array([params.vmax_db]), units, raw.dtype)[0]
    assert np.all(back[outside_lo] == lo) and np.all(back[outside_hi] == hi)


def test_complex_slc_comes_back_as_intensity(tsx_complex):
    params, raw, scaled, valid, back, units = _roundtrip(tsx_complex)
    assert units == "complex" and back.dtype == np.float32
    intensity = np.abs(raw.astype(np.complex128)) ** 2
    db = 10 * np.log10(intensity)
    inside = valid & (db > params.vmin_db) & (db < params.vmax_db)
    np.testing.assert_allclose(back[inside], intensity[inside], rtol=2e-5)


def test_invalid_values_are_masked_and_come_back_as_nodata():
    params = ScalingParams(vmin_db=-30.0, vmax_db=5.0)
    raw = np.array([[0.1, np.nan, np.inf, -np.inf], [0.0, -0.5, -99.0, 1e-3]], dtype=np.float32)
    scaled, valid = params.forward(raw, "linear", nodata=-99.0)
    assert valid.tolist() == [[True, False, False, False], [False, False, False, True]]
    assert np.all(scaled[~valid] == 0) and np.all(np.isfinite(scaled))
    back = params.inverse(scaled, valid, "linear", "float32", nodata=-99.0)
    assert np.all(back[~valid] == -99.0)
    back_nan = params.inverse(scaled, valid, "linear", "float32", nodata=None)
    assert np.isnan(back_nan[~valid]).all()
    dn = np.array([[0, 5, 300]], dtype=np.uint16)
    s, v = params.forward(dn, "amplitude")
    assert v.tolist() == [[False, True, True]]
    out = params.inverse(s, v, "amplitude", "uint16")
    assert out[0, 0] == 0 and out[0, 1] >= 1  # valid pixels never collapse onto the DN-0 no-data value


def test_fit_percentiles_match_exact_numpy_percentiles(spain_db, opera_lin):
    params = fit_scaling([spain_db, opera_lin], low=2, high=98)
    values = []
    for p in (spain_db, opera_lin):
        with open_raster(p) as r:
            raw = r.read()
            values.append(raw_to_db(raw[valid_mask(raw, r.units, r.nodata)], r.units))
    values = np.concatenate(values)
    assert abs(params.vmin_db - np.percentile(values, 2)) < 0.01
    assert abs(params.vmax_db - np.percentile(values, 98)) < 0.01
    assert params.pixels == values.size
    assert params.fitted_on == [spain_db.name, opera_lin.name]
    sigma = fit_scaling([spain_db], method="sigma", low=3, high=3)
    with open_raster(spain_db) as r:
        v = r.read().astype(np.float64)
    assert abs(sigma.vmin_db - (v.mean() - 3 * v.std())) < 1e-6
    fixed = fit_scaling([], method="fixed", vmin_db=-25, vmax_db=5)
    assert (fixed.vmin_db, fixed.vmax_db) == (-25, 5)


def test_fit_on_a_decimated_sample_is_close(kerala_dn):
    full = fit_scaling([kerala_dn])
    sampled = fit_scaling([kerala_dn], max_pixels_per_raster=50_000)
    assert sampled.pixels < 60_000 < full.pixels
    assert abs(sampled.vmin_db - full.vmin_db) < 0.5 and abs(sampled.vmax_db - full.vmax_db) < 0.5


def test_params_json_round_trip_and_validation(tmp_path):
    p = ScalingParams(vmin_db=-31.25, vmax_db=1.5, fitted_on=["a.tif"], pixels=10)
    p.save(tmp_path / "s.json")
    assert ScalingParams.load(tmp_path / "s.json") == p
    assert json.loads(p.to_json())["version"] == 1
    with pytest.raises(ValueError, match="vmin < vmax"):
        ScalingParams(vmin_db=1.0, vmax_db=1.0)
    with pytest.raises(ValueError, match="unknown scaling parameter"):
        ScalingParams.from_dict({"vmin_db": 0, "vmax_db": 1, "colour": 3})
    with pytest.raises(ValueError, match="clip method"):
        ScalingParams(vmin_db=0, vmax_db=1, clip_method="median")


def _write(path, array, nodata=None):
    with GeoTiffWriter(path, array.shape[1], array.shape[0], 1, array.dtype.name, nodata=nodata) as w:
        w.write(array)


def test_all_nodata_and_constant_rasters_give_clear_errors(tmp_path):
    _write(tmp_path / "empty_lin.tif", np.full((40, 40), np.nan, np.float32), nodata=float("nan"))
    with pytest.raises(SarInputError, match=r"empty_lin.tif: no valid pixels"):
        fit_scaling([tmp_path / "empty_lin.tif"])
    _write(tmp_path / "neg_lin.tif", -np.ones((40, 40), np.float32))
    with pytest.raises(SarInputError, match=r"neg_lin.tif: no valid pixels"):
        fit_scaling([tmp_path / "neg_lin.tif"])
    _write(tmp_path / "flat_db.tif", np.full((40, 40), -12.0, np.float32))
    with pytest.raises(SarInputError, match=r"flat_db.tif: the training data are constant"):
        fit_scaling([tmp_path / "flat_db.tif"])
    with rasterio.open(tmp_path / "flat_db.tif") as ds:
        assert ds.read().shape == (1, 40, 40)
