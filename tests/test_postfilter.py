"""The post-filter (coding/postfilter.py): fitted on a file's own reconstruction, stored in its header, applied by the
decoder — on real rasters with the bundled models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from sar_ae_core.codec import compress_raster, reconstruct_raster
from sar_ae_core.coding import postfilter as pf
from sar_ae_core.coding.container import ContainerReader, ContainerWriter
from sar_ae_core.coding.sarz import SarzFile
from sar_ae_core.quality.assess import assess_rasters

from conftest import ROOT


@pytest.fixture(scope="module")
def kerala_crop(tmp_path_factory, kerala_dn):
    """The Kerala GRD DN scene's first 300 rows (uint16 amplitude, GCPs): smooth sea and land, not trained on."""
    out = tmp_path_factory.mktemp("pf") / "kerala_crop.tif"
    with rasterio.open(kerala_dn) as src:
        prof = src.profile
        prof.update(height=300)
        data = src.read(window=((0, 300), (0, src.width)))
        gcps, crs = src.gcps
    with rasterio.open(out, "w", **prof) as dst:
        dst.write(data)
        dst.gcps = (gcps, crs)
    return out


def _rmse(src, sarz, tif):
    reconstruct_raster(sarz, tif, units="db", overwrite=True)
    return assess_rasters(src, tif)


def _expected(sarz, pre_tif):
    """What the decoder must write for a filtered file: its taps applied to the unfiltered reconstruction of the whole
    raster (mirrored at the edges), clipped to the file's range, escapes kept (computed here without RowStage)."""
    with SarzFile(sarz) as f:
        taps, lo, hi, p = f.postfilter[0], f.scaling.vmin_db, f.scaling.vmax_db, f.plan
        esc = np.zeros((p.height, p.width), bool)
        for tr in range(p.tile_rows):
            for tc in range(p.tile_cols):
                _, e = f.mask_and_escapes(tr, tc, 0)
                if e is not None:
                    esc[tr * p.tile:tr * p.tile + e.shape[0], tc * p.tile:tc * p.tile + e.shape[1]] = ~np.isnan(e)
    reconstruct_raster(sarz, pre_tif, units="db", prefilter=True, overwrite=True)
    with rasterio.open(pre_tif) as ds:
        pre = ds.read(1)
    want = np.clip(pf.apply(np.pad(pre, pf.RADIUS, mode="reflect"), taps), lo, hi)
    want[esc] = pre[esc]
    return want, esc


def test_the_fitted_filter_lowers_the_error_and_the_decoder_applies_exactly_it(tmp_path, kerala_crop):
    off = compress_raster(kerala_crop, tmp_path / "off.sarz", model="sarae-q2", post_filter="off")
    on = compress_raster(kerala_crop, tmp_path / "on.sarz", model="sarae-q2", post_filter="mse")
    assert off["post_filter"] is None and on["post_filter"] == "mse"
    assert 0 < on["bytes"] - off["bytes"] < 150  # 14 integers in the header
    a_off, a_on = _rmse(kerala_crop, tmp_path / "off.sarz", tmp_path / "off.tif"), \
        _rmse(kerala_crop, tmp_path / "on.sarz", tmp_path / "on.tif")
    assert a_on["rmse_db"] < a_off["rmse_db"] * 0.995, (a_on["rmse_db"], a_off["rmse_db"])
    # the decoder's output = the stored taps applied to the unfiltered reconstruction of the whole raster (mirrored
    # at its edges), escapes kept, nodata where invalid — computed here independently of the streaming RowStage
    want, esc = _expected(tmp_path / "on.sarz", tmp_path / "pre.tif")
    assert esc.any()  # escaped pixels keep their own values
    with rasterio.open(tmp_path / "on.tif") as o, rasterio.open(tmp_path / "off.tif") as u:
        out, unf = o.read(1), u.read(1)
    valid = ~np.isnan(out)
    assert np.array_equal(valid, ~np.isnan(unf))  # validity is the file's mask, filter or not
    assert np.abs(out[valid] - want[valid]).max() < 1e-4
    assert np.abs(out[valid] - unf[valid]).max() > 0.05  # it did filter
    # a window decode is that window of the full decode, at the raster's edges and inside
    for win in ((0, 0, 200, 150), (517, 143, 300, 157), (1000, 40, 280, 7)):
        reconstruct_raster(tmp_path / "on.sarz", tmp_path / "w.tif", units="db", window=win, overwrite=True)
        c, r, w, h = win
        with rasterio.open(tmp_path / "w.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), out[r:r + h, c:c + w])


@pytest.mark.parametrize("height, width", [(16, 300), (300, 17), (261, 258), (517, 40)])
def test_odd_sizes_and_windows_decode_the_filter_exactly(tmp_path, kerala_crop, height, width):
    """Rasters whose last tile row or column is a few pixels, thinner than a tile, and windows at every edge."""
    from sar_ae_core.refine import add_postfilter

    with rasterio.open(kerala_crop) as src:
        prof = src.profile
        data = src.read(1, window=((0, min(height, 300)), (100, 100 + width)))
    data = np.tile(data, (2, 1))[:height]
    prof.update(width=width, height=height, crs=None, transform=rasterio.Affine(10, 0, 0, 0, -10, 0))
    src_path = tmp_path / "odd.tif"
    with rasterio.open(src_path, "w", **prof) as dst:
        dst.write(data, 1)
    compress_raster(src_path, tmp_path / "off.sarz", model="sarae-q1", post_filter="off")
    r = add_postfilter(tmp_path / "off.sarz", src_path, tmp_path / "on.sarz", "mse")
    if width * height < pf.MIN_PIXELS:
        assert r is None
        return
    want, _ = _expected(tmp_path / "on.sarz", tmp_path / "pre.tif")
    reconstruct_raster(tmp_path / "on.sarz", tmp_path / "on.tif", units="db")
    with rasterio.open(tmp_path / "on.tif") as ds:
        out = ds.read(1)
    ok = ~np.isnan(out)
    assert np.abs(out[ok] - want[ok]).max() < 1e-4
    for c, rr, w, h in ((0, 0, min(width, 7), min(height, 9)), (width - 5, height - 3, 5, 3),
                        (width // 3, height // 2, max(1, width // 3), max(1, height // 3))):
        reconstruct_raster(tmp_path / "on.sarz", tmp_path / "w.tif", units="db", window=(c, rr, w, h), overwrite=True)
        with rasterio.open(tmp_path / "w.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), out[rr:rr + h, c:c + w])


def test_the_enl_fit_keeps_the_speckle_that_least_squares_smooths(tmp_path, sar_data):
    """WHU hill (RTC γ0, held out): at 1 bpp the file without a filter smooths the homogeneous areas (ENL ratio
    1.26); --post-filter auto puts the speckle back into 0.85–1.15 at the same rate, and no PSNR is lost."""
    from sar_ae_core.rate import compress_to_rate

    src = sar_data / "fullres" / "s1_whu_t113_20171021_vh_hill_lin.tif"
    res = {}
    for mode in ("off", "auto"):
        r = compress_to_rate(src, tmp_path / f"{mode}.sarz", 1.0, post_filter=mode)
        assert abs(r["bpp"] - 1.0) <= 0.03
        res[mode] = (r, _rmse(src, tmp_path / f"{mode}.sarz", tmp_path / f"{mode}.tif"))
    assert res["off"][1]["enl_ratio"] > 1.18
    assert res["auto"][0]["post_filter"] == "enl"
    assert 0.85 <= res["auto"][1]["enl_ratio"] <= 1.15
    assert res["auto"][1]["psnr"] >= res["off"][1]["psnr"] - 0.05


def test_an_enl_filter_asked_for_by_name_is_kept_on_a_small_file(tmp_path, sar_data):
    """A 100 × 100 OPERA RTC chip (held out) at 0.5 bpp: 'auto' stores no filter (its bytes would be ~5 % of the
    625-byte file) and the homogeneous areas come back smoothed; `--post-filter enl` named by the user keeps the
    speckle within the bound at the same rate."""
    from sar_ae_core.rate import compress_to_rate

    src = sar_data / "train" / "s1_opera_rtc_t137-292324-iw1_20211119_vh_lin.tif"
    if not src.exists():
        pytest.skip(f"{src} not found")
    res = {}
    for mode in ("auto", "enl"):
        r = compress_to_rate(src, tmp_path / f"{mode}.sarz", 0.5, post_filter=mode, max_decoder_kmac=2.5)
        assert abs(r["bpp"] - 0.5) <= 0.03 * 0.5, (mode, r["bpp"])
        res[mode] = (r, _rmse(src, tmp_path / f"{mode}.sarz", tmp_path / f"{mode}.tif"))
    assert res["auto"][0].get("post_filter") is None
    assert res["auto"][1]["enl_ratio"] > 1.5
    assert res["enl"][0]["post_filter"] == "enl"
    assert 0.85 <= res["enl"][1]["enl_ratio"] <= 1.2


def test_single_look_speckle_enl_is_met_as_decoded_with_the_bright_gain(tmp_path, tsx_complex, monkeypatch):
    """Single-look TerraSAR-X (held out) at 0.5 bpp: the fit models what the decoder does — escaped pixels (the
    brightest 0.1 %, deep nulls) kept as they are, the rest clipped — so the decoded ENL ratio meets the bound (it
    was 1.28 where the fit counted the escapes as filtered); the bright gain reaches it at a lower error than the
    5 × 5 taps alone, and the decoder writes exactly the taps and gain applied to the unfiltered reconstruction."""
    from sar_ae_core.rate import compress_to_rate

    res = {}
    for name, gains in (("bright", pf.BRIGHT_GAINS), ("taps", (0.0,))):
        monkeypatch.setattr(pf, "BRIGHT_GAINS", gains)
        sarz = tmp_path / f"{name}.sarz"
        r = compress_to_rate(tsx_complex, sarz, 0.5)
        assert r["post_filter"] == "enl" and abs(r["bpp"] / 0.5 - 1) <= 0.03
        with SarzFile(sarz) as f:
            taps = f.postfilter[0]
        res[name] = (taps, _rmse(tsx_complex, sarz, tmp_path / f"{name}.tif"))
        assert 0.85 <= res[name][1]["enl_ratio"] <= pf.ENL_MAX + 0.01, (name, res[name][1]["enl_ratio"])
    assert len(res["bright"][0]) == pf.N_TAPS + 1 and res["bright"][0][-1] > 0
    assert len(res["taps"][0]) == pf.N_TAPS
    assert res["bright"][1]["rmse_db"] < res["taps"][1]["rmse_db"] - 0.03
    assert res["bright"][1]["epi"] > res["taps"][1]["epi"]
    want, esc = _expected(tmp_path / "bright.sarz", tmp_path / "pre.tif")
    reconstruct_raster(tmp_path / "bright.sarz", tmp_path / "db.tif", units="db", overwrite=True)
    with rasterio.open(tmp_path / "db.tif") as ds:
        got = ds.read(1)
    ok = np.isfinite(got)
    assert esc.any() and np.array_equal(got[esc & ok], want[esc & ok])
    assert np.abs(got[ok] - want[ok]).max() < 1e-3
    # a window decodes the same pixels as the whole raster, bit for bit (the 5 × 5 mean from the neighbouring units)
    reconstruct_raster(tmp_path / "bright.sarz", tmp_path / "win.tif", units="db", window=(37, 51, 100, 90),
                       overwrite=True)
    with rasterio.open(tmp_path / "win.tif") as ds:
        part = ds.read(1)
    assert np.array_equal(part, got[51:141, 37:137], equal_nan=True)


def test_a_filter_the_speckle_bound_does_not_need_keeps_the_edges(tmp_path, sar_data):
    """Dual-pol Sentinel-1 SLC covariance (held out) at 0.5 bpp: where the bound holds without a filter, none that
    lowers the edge fidelity (EPI) is kept — the file is as edge-faithful as the unfiltered one, within the bound."""
    from sar_ae_core.rate import compress_to_rate

    src = sar_data / "s1_slc_shanghai_dualpol_cov2x2_256.npy"
    out = {}
    for mode in ("off", "auto"):
        compress_to_rate(src, tmp_path / f"{mode}.sarz", 0.5, post_filter=mode)
        out[mode] = _rmse(src, tmp_path / f"{mode}.sarz", tmp_path / f"{mode}.tif")
    assert out["auto"]["epi"] >= out["off"]["epi"] - 0.001, (out["auto"]["epi"], out["off"]["epi"])
    assert 0.85 <= out["auto"]["enl_ratio"] <= 1.15


def test_small_files_get_no_filter_and_damaged_filters_are_refused(tmp_path, kerala_crop):
    with rasterio.open(kerala_crop) as src:
        prof = src.profile
        prof.update(width=64, height=64)
        small = tmp_path / "small.tif"
        with rasterio.open(small, "w", **prof) as dst:
            dst.write(src.read(window=((0, 64), (0, 64))))
    r = compress_raster(small, tmp_path / "small.sarz", model="sarae-q1")
    assert r["post_filter"] is None  # its ~80 bytes would be > 2 % of this file
    with SarzFile(tmp_path / "small.sarz") as f:
        assert f.postfilter is None and "postfilter" not in f.header
    # a filtered file whose taps are damaged (one too few, out of range, a text): exit 2 naming the field, no output
    compress_raster(kerala_crop, tmp_path / "on.sarz", model="sarae-q2", post_filter="mse")
    with ContainerReader.open(tmp_path / "on.sarz") as rd:
        header, chunks = rd.header, [rd.chunk(i) for i in range(rd.chunk_count)]
    taps = pf.from_header(header["postfilter"], 1, "x")[0]
    assert pf._unpack(pf._pack(taps)) == taps
    assert pf._unpack(pf._pack(taps + [1234])) == taps + [1234]  # with a bright gain (format 3.4)
    for bad in (pf._pack(taps)[:-5], pf._pack(taps[:-1] + [10 ** 9]), "~~~~~", [taps], {"id": "sym5"},
                [pf._pack(taps), None], pf._pack(taps + [-1]), pf._pack(taps + [pf.MAX_BRIGHT + 1]),
                pf._pack(taps + [1, 1])):
        h = {**header, "postfilter": bad}
        with open(tmp_path / "bad.sarz", "wb") as fh:
            w = ContainerWriter(fh, h)
            for c in chunks:
                w.add(c)
            w.finish()
        out = tmp_path / "bad.tif"
        p = subprocess.run([sys.executable, "-m", "sar_ae_core", "reconstruct", str(tmp_path / "bad.sarz"), str(out)],
                           capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 2 and "postfilter" in p.stderr and "bad.sarz" in p.stderr, p.stderr
        assert not out.exists()
    # a residual layer is refused on a filtered base (its residual would be against the filtered pixels)
    from sar_ae_core.errors import SarInputError
    from sar_ae_core.refine import add_residual_layer

    with pytest.raises(SarInputError, match="post-filter"):
        add_residual_layer(tmp_path / "on.sarz", kerala_crop, tmp_path / "layer.sarz", 1.0)
    assert not (tmp_path / "layer.sarz").exists()


def test_the_command_line_option(tmp_path, kerala_crop):
    for mode, want in (("off", None), ("enl", "enl")):
        out = tmp_path / f"{mode}.sarz"
        p = subprocess.run([sys.executable, "-m", "sar_ae_core", "compress", str(kerala_crop), str(out),
                            "--quality", "2", "--post-filter", mode], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        with SarzFile(out) as f:
            assert (f.postfilter is None) == (want is None)
    p = subprocess.run([sys.executable, "-m", "sar_ae_core", "compress", str(kerala_crop), str(tmp_path / "x.sarz"),
                        "--post-filter", "wiener"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--post-filter" in p.stderr and not (tmp_path / "x.sarz").exists()
    p = subprocess.run([sys.executable, "-m", "sar_ae_core", "compress", str(kerala_crop), str(tmp_path / "y.sarz"),
                        "--max-rmse-db", "2", "--post-filter", "mse"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--post-filter" in p.stderr and not (tmp_path / "y.sarz").exists()


def test_a_large_raster_is_fitted_on_windows_of_it(tmp_path, kerala_dn):
    """Above FIT_PIXELS the filter is fitted on FIT_WINDOWS tile-aligned windows (a fixed cost), and lowers the
    error of the whole raster all the same."""
    from sar_ae_core.refine import add_postfilter

    with rasterio.open(kerala_dn) as src:
        a, prof = src.read(1), src.profile
    big = np.tile(a, (2, 2))[:1500, :1500]  # 2.25 MPx: Kerala's sea and land, twice over
    assert big.size > pf.FIT_PIXELS
    prof.update(width=1500, height=1500, crs=None, transform=rasterio.Affine(10, 0, 0, 0, -10, 0))
    src_path = tmp_path / "big.tif"
    with rasterio.open(src_path, "w", **prof) as dst:
        dst.write(big, 1)
    compress_raster(src_path, tmp_path / "off.sarz", model="sarae-q2", post_filter="off")
    r = add_postfilter(tmp_path / "off.sarz", src_path, tmp_path / "on.sarz", "mse")
    wins = r["post_filter_fit_windows"]
    assert len(wins) == pf.FIT_WINDOWS and all(c % 256 == 0 and rr % 256 == 0 and c + w <= 1500 and rr + h <= 1500
                                                for c, rr, w, h in wins)
    off = _rmse(src_path, tmp_path / "off.sarz", tmp_path / "off.tif")["rmse_db"]
    on = _rmse(src_path, tmp_path / "on.sarz", tmp_path / "on.tif")["rmse_db"]
    assert on < off * 0.995, (on, off)


def test_the_enl_fit_with_and_without_kept_pixels(tmp_path, kerala_crop):
    """`fit` takes pieces with or without the decoder's kept pixels (a file without escapes has none): the same taps
    where no pixel is kept, and the kept ones left out of the least squares otherwise."""
    compress_raster(kerala_crop, tmp_path / "k.sarz", model="sarae-q2", post_filter="off")
    reconstruct_raster(tmp_path / "k.sarz", tmp_path / "pre.tif", units="db", prefilter=True)
    with SarzFile(tmp_path / "k.sarz") as f:
        source, h, w = f.header["source"], f.plan.height, f.plan.width
    none = np.zeros((1, h, w), bool)
    some = none.copy()
    some[0, ::7, ::5] = True
    plain, _ = pf.fit(kerala_crop, [(tmp_path / "pre.tif", 0, 0)], source, "enl")
    nothing_kept, _ = pf.fit(kerala_crop, [(tmp_path / "pre.tif", 0, 0, none)], source, "enl")
    kept, _ = pf.fit(kerala_crop, [(tmp_path / "pre.tif", 0, 0, some)], source, "enl")
    assert plain[0] is not None and plain == nothing_kept and kept != plain


def test_the_enl_fit_where_the_speckle_bound_is_out_of_the_family_s_reach():
    """A reconstruction far smoother than its source (here: a constant): the bound cannot be met by any filter of the
    family, the fit stops where the family ends (a positive-definite system) instead of failing."""
    rng = np.random.default_rng(0)
    a = pf._Band()
    n = 20000
    truth = 10 * np.log10(rng.gamma(1.0, 1.0, n))  # single-look speckle in dB
    feats = np.stack([np.full(n, truth.mean())] + [np.full(n, 2 * truth.mean())] * len(pf.OFFSETS)
                     + [np.ones(n)], 1) + rng.normal(0, 1e-3, (n, pf.N_TAPS))
    feats = np.c_[feats, pf.bright_excess([feats[:, k] for k in range(pf.N_TAPS)])]
    a.A, a.b, a.n, a.yy = feats.T @ feats, feats.T @ truth, n, float(truth @ truth)
    a.hx, a.hy, a.hk, a.nh = [feats.astype(np.float32)], [truth.astype(np.float32)], [np.zeros(n, bool)], n
    taps, needed = pf._solve(a, "enl")
    assert needed and taps is not None and len(taps) in (pf.N_TAPS, pf.N_TAPS + 1)
