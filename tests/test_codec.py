"""Compress → .sarz → reconstruct on real rasters: georeference, nodata, rate from bytes, determinism,
window decodes, seams, damaged files and clean failure."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from sar_ae_core.cli import main
from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
from sar_ae_core.errors import Cancelled, SarInputError
from sar_ae_core.io.raster import GeoTiffWriter


def _round_trip(tmp_path, src, bundle, **kw):
    sarz, tif = tmp_path / "x.sarz", tmp_path / "x.tif"
    facts = compress_raster(src, sarz, model=bundle, device="cpu", **kw)
    reconstruct_raster(sarz, tif, model=bundle)
    return facts, sarz, tif


@pytest.mark.parametrize("fixture", ["spain_db", "kerala_dn", "camargue_db", "opera_lin"])
def test_reconstruction_keeps_georeference_units_and_rate_from_bytes(request, tmp_path, tiny_bundle, fixture):
    src = request.getfixturevalue(fixture)
    facts, sarz, tif = _round_trip(tmp_path, src, tiny_bundle)
    with rasterio.open(src) as a, rasterio.open(tif) as b:
        assert (b.width, b.height, b.count) == (a.width, a.height, a.count)
        assert b.dtypes == a.dtypes
        assert (a.crs.to_wkt() if a.crs else None) == (b.crs.to_wkt() if b.crs else None)
        assert tuple(a.transform) == tuple(b.transform)
        assert [(g.row, g.col, g.x, g.y, g.z) for g in a.gcps[0]] == [(g.row, g.col, g.x, g.y, g.z) for g in b.gcps[0]]
        if a.nodata is None:  # DN products: 0 marks no-data, and the reconstruction says so
            assert b.nodata == 0
        else:
            assert a.nodata == b.nodata or (np.isnan(a.nodata) and np.isnan(b.nodata))
        assert a.descriptions == b.descriptions
    size = os.path.getsize(sarz)
    pixels = facts["pixels"]
    assert facts["bytes"] == size and facts["bpp"] == size * 8 / pixels
    assert sarz_info(sarz)["bpp"] == size * 8 / pixels


def test_nodata_comes_back_exactly(tmp_path, tiny_bundle, kerala_dn, spain_db):
    _, _, tif = _round_trip(tmp_path, kerala_dn, tiny_bundle)
    with rasterio.open(kerala_dn) as a, rasterio.open(tif) as b:
        src, rec = a.read(1), b.read(1)
    np.testing.assert_array_equal(rec == 0, src == 0)
    assert (src == 0).sum() == 21505
    with rasterio.open(spain_db) as ds:
        data, profile = ds.read(), ds.profile
    data[:, 100:140, 200:300] = np.nan
    data[1, 400:, :50] = np.nan
    holes = tmp_path / "holes_db.tif"
    with rasterio.open(holes, "w", **profile) as dst:
        dst.write(data)
    (tmp_path / "x.sarz").unlink(), (tmp_path / "x.tif").unlink()
    _, _, tif = _round_trip(tmp_path, holes, tiny_bundle)
    with rasterio.open(tif) as b:
        np.testing.assert_array_equal(np.isnan(b.read()), np.isnan(data))


@pytest.mark.slow
def test_decoding_is_deterministic_across_runs_and_thread_counts(tmp_path, tiny_bundle, spain_db):
    sarz = tmp_path / "s.sarz"
    compress_raster(spain_db, sarz, model=tiny_bundle, device="cpu")
    outs = []
    for i, threads in enumerate(("1", "2", "2")):
        out = tmp_path / f"r{i}.tif"
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        proc = subprocess.run([sys.executable, "-m", "sar_ae_core", "reconstruct", str(sarz), str(out),
                               "--model", tiny_bundle], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with rasterio.open(out) as ds:
            outs.append(ds.read())
    assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes()


@pytest.mark.parametrize("window", [(0, 0, 512, 512), (100, 37, 300, 211), (250, 250, 20, 20), (480, 0, 32, 512)])
def test_window_decode_equals_that_window_of_the_full_decode(tmp_path, tiny_bundle, spain_db, window):
    sarz, full = tmp_path / "s.sarz", tmp_path / "full.tif"
    compress_raster(spain_db, sarz, model=tiny_bundle, device="cpu", tile=128)
    reconstruct_raster(sarz, full, model=tiny_bundle)
    reconstruct_raster(sarz, tmp_path / "win.tif", model=tiny_bundle, window=window)
    c, r, w, h = window
    with rasterio.open(full) as a, rasterio.open(tmp_path / "win.tif") as b:
        assert a.read()[:, r:r + h, c:c + w].tobytes() == b.read().tobytes()
        assert b.transform == a.transform * a.transform.translation(c, r)


def _border_ratios(db: np.ndarray, tile: int) -> list[float]:
    """Mean |gradient| across tile borders / elsewhere, for row and column borders."""
    ok = np.isfinite(db)
    ratios = []
    for axis in (0, 1):
        diff = np.abs(np.diff(db, axis=axis))
        valid = ok[1:, :] & ok[:-1, :] if axis == 0 else ok[:, 1:] & ok[:, :-1]
        border = np.zeros(diff.shape[axis], bool)
        border[tile - 1::tile] = True  # difference between pixel k*tile-1 and k*tile
        sel = np.expand_dims(border, 1 - axis)
        ratios.append(diff[valid & sel].mean() / diff[valid & ~sel].mean())
    return ratios


def test_no_seams_at_tile_borders(tmp_path, default_bundle, kerala_dn):
    sarz, tif = tmp_path / "k.sarz", tmp_path / "k.tif"
    compress_raster(kerala_dn, sarz, model=default_bundle, device="cpu", tile=128)
    reconstruct_raster(sarz, tif, units="db")
    with rasterio.open(tif) as ds:
        rec = ds.read(1).astype(np.float64)
    with rasterio.open(kerala_dn) as ds:
        dn = ds.read(1).astype(np.float64)
    orig = np.where(dn > 0, 20 * np.log10(np.maximum(dn, 1)), np.nan)
    # the same lines of the original are the yardstick: real scenes are not uniform either
    for r_rec, r_orig in zip(_border_ratios(rec, 128), _border_ratios(orig, 128)):
        assert abs(r_rec / r_orig - 1) < 0.05, (r_rec, r_orig)
        assert 0.9 < r_rec < 1.1


def _sarz(tmp_path, tiny_bundle, spain_db):
    sarz = tmp_path / "s.sarz"
    compress_raster(spain_db, sarz, model=tiny_bundle, device="cpu")
    return sarz, bytearray(sarz.read_bytes())


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) - 100], "truncated"),
    (lambda b: b[:5000], "truncated"),
    (lambda b: b"GIF89a" + b[6:], "wrong magic"),
    (lambda b: b[:8] + struct.pack("<H", 9) + b[10:], "newer than this software"),
    (lambda b: b[:2000] + bytes([b[2000] ^ 0x10]) + b[2001:], "checksum mismatch"),
    (lambda b: b[:30] + bytes([b[30] ^ 0x01]) + b[31:], "header and index checksum mismatch"),
    (lambda b: b[:len(b) - 3] + bytes([b[-3] ^ 0x01]) + b[len(b) - 2:], "checksum mismatch"),  # the footer's CRC
])
def test_damaged_files_give_exit_2_and_no_output(tmp_path, tiny_bundle, spain_db, capsys, damage, message):
    sarz, data = _sarz(tmp_path, tiny_bundle, spain_db)
    bad = tmp_path / "bad.sarz"
    bad.write_bytes(bytes(damage(data)))
    out = tmp_path / "out.tif"
    assert main(["reconstruct", str(bad), str(out), "--model", tiny_bundle]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.sarz", "s.sarz"]


def test_missing_or_different_model_is_refused(tmp_path, tiny_bundle, spain_db, capsys):
    import torch

    from sar_ae_core.nn.model_io import save_bundle
    from sar_ae_core.nn.models import ModelConfig, build_model
    from sar_ae_core.scaling import fit_scaling

    sarz, _ = _sarz(tmp_path, tiny_bundle, spain_db)
    assert main(["reconstruct", str(sarz), str(tmp_path / "o.tif")]) == 2
    assert "needs model 'tiny-test'" in capsys.readouterr().err
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_bundle(other, build_model(ModelConfig(variant="res_cbam", base_channels=8, latent_channels=8)),
                fit_scaling([spain_db]), "tiny-test")
    assert main(["reconstruct", str(sarz), str(tmp_path / "o.tif"), "--model", str(other)]) == 2
    assert "is different" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_cancel_leaves_nothing_behind(tmp_path, tiny_bundle, kerala_dn):
    calls = []

    def cancel_after_first(fraction, message):
        calls.append(fraction)
        return len(calls) < 2

    with pytest.raises(Cancelled):
        compress_raster(kerala_dn, tmp_path / "k.sarz", model=tiny_bundle, device="cpu", tile=128,
                        progress=cancel_after_first)
    assert list(tmp_path.iterdir()) == []
    compress_raster(kerala_dn, tmp_path / "k.sarz", model=tiny_bundle, device="cpu", tile=128)
    calls.clear()
    with pytest.raises(Cancelled):
        reconstruct_raster(tmp_path / "k.sarz", tmp_path / "k.tif", model=tiny_bundle, progress=cancel_after_first)
    assert [p.name for p in tmp_path.iterdir()] == ["k.sarz"]


def test_bad_inputs_exit_2_without_output(tmp_path, tiny_bundle, spain_db, capsys):
    def write(name, array, nodata=None):
        with GeoTiffWriter(tmp_path / name, array.shape[-1], array.shape[-2], 1, array.dtype.name, nodata=nodata) as w:
            w.write(array)
        return str(tmp_path / name)

    small = write("small_db.tif", np.full((8, 8), -10, np.float32))
    empty = write("empty_lin.tif", np.full((64, 64), np.nan, np.float32), nodata=float("nan"))
    cases = [(small, "needs at least 16x16"), (empty, "no valid pixels"),
             (str(tmp_path / "none.tif"), "file not found")]
    for src, message in cases:
        out = tmp_path / "o.sarz"
        assert main(["compress", src, str(out), "--model", tiny_bundle, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and src in err, err
        assert not out.exists()
    existing = tmp_path / "keep.sarz"
    existing.write_bytes(b"mine")
    assert main(["compress", str(spain_db), str(existing), "--model", tiny_bundle]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"mine"
    assert main(["compress", str(spain_db), str(tmp_path / "o.sarz"), "--model", "no-such-model"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_lin.tif", "keep.sarz", "small_db.tif"]


def test_complex_slc_and_band_selection(tmp_path, tiny_bundle, tsx_complex, spain_db):
    facts, sarz, tif = _round_trip(tmp_path, tsx_complex, tiny_bundle)
    with rasterio.open(tif) as ds:
        assert ds.dtypes == ("float32",) and ds.tags()["SARAE_UNITS"] == "complex"
        rec = ds.read(1)
    z = np.load(tsx_complex)
    zero = (z[..., 0] == 0) & (z[..., 1] == 0)
    np.testing.assert_array_equal(np.isnan(rec), zero)
    assert np.all(rec[~zero] > 0)
    info = sarz_info(sarz)
    assert info["source_units"] == "complex" and info["bands"] == 1
    f2 = compress_raster(spain_db, tmp_path / "vh.sarz", model=tiny_bundle, bands="2", device="cpu")
    assert f2["bands"] == 1 and sarz_info(tmp_path / "vh.sarz")["band_names"] == ["VH"]


def test_fewer_bits_give_fewer_bytes(tmp_path, tiny_bundle, spain_db):
    sizes = {bits: compress_raster(spain_db, tmp_path / f"b{bits}.sarz", model=tiny_bundle, bits=bits,
                                   device="cpu")["bytes"] for bits in (8, 4, 2)}
    assert sizes[8] > sizes[4] > sizes[2]
    with pytest.raises(SarInputError, match="--bits must be an integer from 1 to 16"):
        compress_raster(spain_db, tmp_path / "b0.sarz", model=tiny_bundle, bits=0)


def _rewrite_as_v10(src, dst, bundle_sha, crs_wkt):
    """The same file in the 1.0 layout: header zstd-compressed without the dictionary, every tiling field, full
    SHA-256, CRS as WKT, zstd index and the 24-byte footer (the chunks as they are)."""
    from sar_ae_core.coding.container import ContainerReader, ContainerWriter

    with ContainerReader.open(src) as r:
        assert (r.header.get("created_by") or "").startswith("sar_ae_core")
        h = dict(r.header)
        chunks = [r.chunk(i) for i in range(r.chunk_count)]
    assert "latent_height" in h["tiling"]  # restored on reading
    h["model"] = {**h["model"], "sha256": bundle_sha}
    h["georef"] = {"crs_wkt": crs_wkt, "transform": h["georef"]["transform"], "gcps": None}
    with open(dst, "wb") as fh:
        w = ContainerWriter(fh, h, version=(1, 0))
        for c in chunks:
            w.add(c)
        w.finish()


def test_format_1_0_files_still_decode_identically(tmp_path, tiny_bundle, spain_db):
    from sar_ae_core.nn.model_io import load_bundle

    facts, sarz, tif = _round_trip(tmp_path, spain_db, tiny_bundle)
    with rasterio.open(spain_db) as ds:
        wkt = ds.crs.to_wkt()
    old = tmp_path / "old.sarz"
    _rewrite_as_v10(sarz, old, load_bundle(tiny_bundle).sha256, wkt)
    assert old.stat().st_size > sarz.stat().st_size + 100  # the 1.1+ header is much smaller
    assert open(old, "rb").read(12)[8:] == bytes([1, 0, 0, 0]) and open(sarz, "rb").read(10)[8:] == bytes([3, 6])
    assert sarz_info(old)["format"] == "1.0" and sarz_info(sarz)["format"] == "3.6"
    reconstruct_raster(old, tmp_path / "old.tif", model=tiny_bundle)
    with rasterio.open(tif) as a, rasterio.open(tmp_path / "old.tif") as b:
        assert np.array_equal(a.read(), b.read(), equal_nan=True)
        assert a.crs == b.crs and a.transform == b.transform


@pytest.mark.parametrize("version", [(1, 2), (2, 0)])
def test_older_layouts_still_decode_identically(tmp_path, tiny_bundle, spain_db, version):
    """A file in the 1.1/1.2 container layout (dictionary V1, every tiling field, zstd index, 24-byte footer) or
    the 2.0 one (u16 version, u32 header length and CRC, whole zstd frame, 16-byte footer) decodes to the same
    raster as its 3.0 twin, which is smaller."""
    from sar_ae_core.coding.container import ContainerReader, ContainerWriter

    facts, sarz, tif = _round_trip(tmp_path, spain_db, tiny_bundle)
    old = tmp_path / "old.sarz"
    with ContainerReader.open(sarz) as r:
        header, chunks = r.header, [r.chunk(i) for i in range(r.chunk_count)]
    with open(old, "wb") as fh:
        w = ContainerWriter(fh, header, version=version)
        for c in chunks:
            w.add(c)
        w.finish()
    assert sarz_info(old)["format"] == "%d.%d" % version and old.stat().st_size > sarz.stat().st_size
    if version == (2, 0):
        assert old.stat().st_size - sarz.stat().st_size >= 19  # version, lengths, CRCs, zstd magic, end marker
    reconstruct_raster(old, tmp_path / "old.tif", model=tiny_bundle)
    with rasterio.open(tif) as a, rasterio.open(tmp_path / "old.tif") as b:
        assert np.array_equal(a.read(), b.read(), equal_nan=True)
        assert a.crs == b.crs and a.transform == b.transform


def test_header_and_index_stay_small(tmp_path, default_bundle):
    """A held-out 120 x 120 chip: everything but the coded tiles (header, index, footer) is under 110 bytes
    (~270 in format 1.2, ~125 in 2.0), so small rasters are not starved by the container (the CRS is stored as its EPSG code,
    the model by a SHA prefix, the header compressed with a dictionary of typical headers, derived fields left
    out)."""
    import glob

    from conftest import SAR_DATA

    chip = sorted(glob.glob(str(SAR_DATA / "s1_bigearthnet_*_VV_db.tif")))[-1]
    assert "4_55" in chip  # a test scene of training/splits/broad.json: not among the dictionary's headers
    sarz = tmp_path / "chip.sarz"
    compress_raster(chip, sarz, model=default_bundle, device="cpu")
    info = sarz_info(sarz)
    print(info["parts"])
    assert info["parts"]["header+index"] < 110, info["parts"]
    assert info["georef"] == "transform"
    with rasterio.open(chip) as ds:
        crs, transform = ds.crs, ds.transform
    reconstruct_raster(sarz, tmp_path / "chip.tif", model=default_bundle)
    with rasterio.open(tmp_path / "chip.tif") as out:
        assert out.crs.to_wkt() == crs.to_wkt() and out.transform == transform


def test_header_dictionaries_are_frozen():
    """HEADER_DICT_V1 is part of the 1.1/1.2 format, header_dict_v2.txt of 2.x and 3.x: changing either would make every
    such file unreadable."""
    import hashlib

    from sar_ae_core.coding.container import FORMAT_MAJOR, HEADER_DICT_V1, _dict_v2

    assert hashlib.sha256(HEADER_DICT_V1).hexdigest() == \
        "9a7a241587036b08a4cf92dedf3bbd8789409c5f9bca07f79a0f8504cd9bf067"
    assert hashlib.sha256(_dict_v2()).hexdigest() == \
        "6120b23aac5da0d1f63f2e83ead7da79e3320465b7a36e29caa7d971aa9962a3"
    assert FORMAT_MAJOR == 3


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["spain_db", "kerala_dn"])
def test_rate_option_hits_the_requested_file_size(request, tmp_path, fixture, capsys):
    """--rate searches the rate point and its quantization gain: the file's real bits per pixel are within
    3 % of the target from 0.25 to 3 bpp, on calibrated dB and on uncalibrated DN data."""
    src = request.getfixturevalue(fixture)
    for target in (0.25, 0.6, 1.5, 3.0):
        out = tmp_path / f"r{target}.sarz"
        assert main(["compress", str(src), str(out), "--rate", str(target)]) == 0
        info = sarz_info(out)
        assert abs(info["bpp"] / target - 1) <= 0.03, (target, info["bpp"])
        assert info["bpp"] == pytest.approx(out.stat().st_size * 8 / (info["width"] * info["height"] * info["bands"]))
        assert f"--rate {target:g}:" in capsys.readouterr().out
    rec = tmp_path / "r.tif"  # a file written with a gain decodes like any other
    assert main(["reconstruct", str(tmp_path / "r0.6.sarz"), str(rec)]) == 0
    assert [p.name for p in tmp_path.iterdir() if "rate" in p.name or ".part" in p.name] == []
    assert main(["compress", str(src), str(tmp_path / "x.sarz"), "--rate", "0.5", "--quality", "2"]) == 2
    assert "only one of" in capsys.readouterr().err and not (tmp_path / "x.sarz").exists()
    assert main(["compress", str(src), str(tmp_path / "x.sarz"), "--rate", "-1"]) == 2


@pytest.mark.slow
def test_quantization_gain_moves_rate_and_quality_continuously(tmp_path, spain_db):
    from sar_ae_core.quality.assess import assess_rasters

    rows = []
    for gain in (0.7, 1.0, 1.5):
        sarz, tif = tmp_path / f"g{gain}.sarz", tmp_path / f"g{gain}.tif"
        c = compress_raster(spain_db, sarz, model="sarae-q2", gain=gain)
        codec = sarz_info(sarz)["codec"]
        assert codec["id"] in ("factorized-range-active", "factorized-range-adaptive")
        assert codec.get("gain", 1.0) == gain
        reconstruct_raster(sarz, tif)
        rows.append((c["bpp"], assess_rasters(spain_db, tif)["psnr"]))
    assert rows[0][0] < rows[1][0] < rows[2][0]          # rate rises with the gain
    assert rows[0][1] < rows[1][1] < rows[2][1]          # and so does quality
    with pytest.raises(SarInputError, match="gain"):
        compress_raster(spain_db, tmp_path / "bad.sarz", model="sarae-q2", gain=100)


def test_auto_scaling_shifts_the_model_range_onto_uncalibrated_data(tmp_path, default_bundle, kerala_dn, spain_db):
    """GRD digital numbers are calibrated backscatter shifted by a constant in dB: 'auto' moves the model's window
    onto them and keeps its width (the contrast the network was trained on); a raster wider than the window gets a
    range fitted on itself; calibrated data keeps the model's range."""
    from sar_ae_core.scaling import choose_scaling
    from sar_ae_core.nn.model_io import load_bundle
    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.scaling import fit_scaling

    b = load_bundle(default_bundle)
    span = b.scaling.vmax_db - b.scaling.vmin_db
    with open_raster(kerala_dn) as r:
        s, why = choose_scaling(r, b.scaling)
        p = fit_scaling([r], low=1, high=99)
    assert "shifted" in why and s.vmax_db - s.vmin_db == pytest.approx(span)
    assert s.vmin_db < p.vmin_db and p.vmax_db < s.vmax_db and s.vmin_db > b.scaling.vmax_db  # DN dB are > +30
    with open_raster(spain_db) as r:
        assert choose_scaling(r, b.scaling)[0] == b.scaling
    wide = tmp_path / "wide_db.tif"
    data = np.random.default_rng(0).uniform(-70, 30, (1, 64, 64)).astype("float32")
    with rasterio.open(wide, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32") as ds:
        ds.write(data)
    with open_raster(wide) as r:
        s, why = choose_scaling(r, b.scaling)
    assert "fitted on this raster" in why and s.vmax_db - s.vmin_db > span


@pytest.mark.parametrize("value, units", [(-12.0, "db"), (0.05, "linear")])
def test_a_constant_raster_compresses_and_comes_back_constant(tmp_path, value, units):
    """A flat image is a valid image (a calm sea at the noise floor, a test pattern): no 'constant data' error."""
    from rasterio.transform import from_origin

    src = tmp_path / f"flat_{units}.tif"
    with rasterio.open(src, "w", driver="GTiff", width=300, height=260, count=1, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as ds:
        ds.write(np.full((1, 260, 300), value, np.float32))
    sarz, rec = tmp_path / "flat.sarz", tmp_path / "flat.tif"
    assert main(["compress", str(src), str(sarz), "--units", units]) == 0
    assert main(["reconstruct", str(sarz), str(rec), "--units", "db"]) == 0
    with rasterio.open(rec) as ds:
        out = ds.read(1)
    expected = value if units == "db" else 10 * np.log10(value)
    assert np.abs(out - expected).max() < 1.0 and out.std() < 0.1  # within the codec's typical error (RMSE ~1.3 dB)


def test_preflight_refuses_a_raster_too_wide_for_memory_before_any_work(tmp_path, spain_db, capsys):
    """The tile-row strip grows with the width: a raster whose strip cannot fit is refused at once, with the
    estimate, instead of swapping for hours."""
    import time

    from sar_ae_core.codec import STRIP_BYTES_PER_PX, _available_memory
    from sar_ae_core.io.raster import mosaic_vrt

    free = _available_memory()
    assert free and free > 0
    width = int(1.5 * free / (320 * STRIP_BYTES_PER_PX))
    vrt = mosaic_vrt(spain_db, tmp_path / "wide.vrt", width, 64)
    t0 = time.perf_counter()
    assert main(["compress", vrt, str(tmp_path / "w.sarz"), "--units", "db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "GiB of memory" in err and f"{width} px wide" in err
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "w.sarz").exists()
