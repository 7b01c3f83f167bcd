"""Side prior of a factorized model (codec 'hyper-range'): the numpy networks equal the trained torch ones, the
symbols and the reconstruction are exactly the factorized codec's, the bundled side priors save real bytes on
held-out scenes of every category, and damaged or mismatched side priors and tiles give clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from sar_ae_core.codec import compress_raster, reconstruct_raster
from sar_ae_core.coding import side as sp
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import BUNDLED_DIR, load_bundle
from training.side_prior import SidePriorNet

ROOT = Path(__file__).resolve().parents[1]


def _net(seed: int = 0) -> tuple[SidePriorNet, object]:
    b = load_bundle("sarae-q2", runtime="torch")
    torch.manual_seed(seed)
    net = SidePriorNet(np.nonzero(~b.tables.inactive())[0], b.tables.modes(), hyper=16, z_channels=8)
    return net, b


def test_numpy_networks_match_torch():
    net, b = _net()
    prior = sp.SidePrior.from_npz(net.export(b.sha256))
    y = np.random.default_rng(0).normal(0, 3, (len(prior.active), 13, 22))  # not a multiple of 4: padded
    z = prior.side(y)
    with torch.no_grad():
        zt = net.h_a(torch.nn.functional.pad(torch.from_numpy(y).float()[None], (0, 2, 0, 3), mode="replicate"))[0]
        p = net.h_s(torch.from_numpy(z).float()[None])[0, :, :13, :22]
    assert z.shape == (8, 4, 6)
    assert np.abs(zt.numpy() - z).max() <= 0.5 + 1e-4  # z is the rounded h_a output
    mean, scale = prior.mean_scale(z, (13, 22))
    c = len(prior.active)
    np.testing.assert_allclose(mean, p[:c].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scale, torch.nn.functional.softplus(p[c:]).clamp(sp.SCALE_MIN, sp.SCALE_MAX).numpy(),
                               rtol=1e-4, atol=1e-4)
    dec_macs = prior.macs_per_pixel(8)[1]
    assert 0 < dec_macs < 100  # the small test network; the shipped ones are counted in bench_models


def test_tables_cover_every_scale_and_offset():
    t = sp.gaussian_tables(16)
    assert len(t.counts) == sp.SCALE_LEVELS * sp.OFFSETS
    assert all(int(c.sum()) == 1 << 16 and c.min() >= 1 for c in t.counts)
    # the mode of table (scale 0.11, offset +7/16) is symbol 0, of a shifted wide table near its centre
    small = t.modes()[0 * sp.OFFSETS + 7]
    assert small == 0
    assert np.allclose(sp.offset_centres(), (np.arange(8) + 0.5) / 8 - 0.5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A copy of sarae-q2 (bundle, runtime bundle) with an untrained side prior beside it."""
    d = tmp_path_factory.mktemp("side")
    for suffix in (".pt", ".onnx.zip"):
        shutil.copy(BUNDLED_DIR / f"sarae-q2{suffix}", d / f"sarae-q2{suffix}")
    net, b = _net(1)
    (d / "sarae-q2.side.npz").write_bytes(net.export(b.sha256))
    return d


def _recon(path: Path, model: str, out: Path) -> np.ndarray:
    reconstruct_raster(path, out, model=model, overwrite=True)
    with rasterio.open(out) as ds:
        return ds.read()


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_hyper_range_round_trip_equals_factorized(sar_data, model_dir, tmp_path, runtime):
    src = sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"
    model = str(model_dir / "sarae-q2.pt")
    for codec, gain in (("auto", 1.0), ("hyper-range", 0.8), ("factorized-range-active", 1.0),
                        ("factorized-range-active", 0.8)):
        r = compress_raster(src, tmp_path / f"{codec}{gain}.sarz", model=model, codec=codec, gain=gain,
                            runtime=runtime, overwrite=True)
        assert r["bytes"] > 0
    from sar_ae_core.coding.sarz import SarzFile

    with SarzFile(tmp_path / "auto1.0.sarz") as f:
        assert f.header["codec"]["id"] == "hyper-range"
        assert len(f.header["codec"]["side"]) == sp.SIDE_PREFIX
    for gain in (1.0, 0.8):
        a = _recon(tmp_path / f"auto1.0.sarz" if gain == 1.0 else tmp_path / "hyper-range0.8.sarz", model,
                   tmp_path / "a.tif")
        b = _recon(tmp_path / f"factorized-range-active{gain}.sarz", model, tmp_path / "b.tif")
        np.testing.assert_array_equal(a, b)  # the same symbols, the same decoder: the same pixels


def test_trained_side_prior_saves_bytes_on_held_out_scenes(sar_data, tmp_path):
    """The shipped side priors code the same symbols in fewer bytes than the model's own tables on held-out
    scenes of several categories (whole files, headers included)."""
    if not (BUNDLED_DIR / "sarae-q2.side.npz").is_file():
        pytest.skip("no bundled side prior")
    scenes = [sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif",
              sar_data / "train" / "s1_opera_rtc_t137-292324-iw2_20211119_vv_lin.tif",
              sar_data / "s1_iw_grdh_kerala_20180716_vv_dn.tiff"]
    for src in scenes:
        if not src.exists():
            continue
        side = compress_raster(src, tmp_path / "s.sarz", model="sarae-q2", overwrite=True)
        fact = compress_raster(src, tmp_path / "f.sarz", model="sarae-q2", codec="factorized-range-adaptive",
                               overwrite=True)
        assert side["bytes"] < 0.97 * fact["bytes"], (src.name, side["bytes"], fact["bytes"])


def test_errors_name_the_problem(sar_data, model_dir, tmp_path):
    src = sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"
    model = str(model_dir / "sarae-q2.pt")
    f = tmp_path / "a.sarz"
    compress_raster(src, f, model=model, codec="hyper-range", overwrite=True)
    # the model without its side prior: the file says what it needs
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "sarae-q2.pt", bare / "sarae-q2.pt")
    with pytest.raises(SarInputError, match="side prior"):
        reconstruct_raster(f, tmp_path / "x.tif", model=str(bare / "sarae-q2.pt"), runtime="torch")
    assert not (tmp_path / "x.tif").exists()
    # another side prior beside the same model
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(model_dir / "sarae-q2.pt", other / "sarae-q2.pt")
    net, b = _net(2)
    (other / "sarae-q2.side.npz").write_bytes(net.export(b.sha256))
    with pytest.raises(SarInputError, match="coded with side prior"):
        reconstruct_raster(f, tmp_path / "x.tif", model=str(other / "sarae-q2.pt"), runtime="torch")
    # a side prior of another model, and a damaged one
    (other / "sarae-q2.side.npz").write_bytes(net.export("0" * 64))
    with pytest.raises(SarInputError, match="another model"):
        load_bundle(str(other / "sarae-q2.pt"), runtime="torch")
    (other / "sarae-q2.side.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SarInputError, match="side.npz.*not a readable side prior"):
        load_bundle(str(other / "sarae-q2.pt"), runtime="torch")
    # the CLI: exit 2, the file named
    r = subprocess.run([sys.executable, "-m", "sar_ae_core", "compress", str(src), str(tmp_path / "c.sarz"),
                        "--model", str(other / "sarae-q2.pt"), "--runtime", "torch"], capture_output=True, text=True)
    assert r.returncode == 2 and "sarae-q2.side.npz" in r.stderr
    assert not (tmp_path / "c.sarz").exists()
    # --codec hyper-range on a model without a side prior
    with pytest.raises(SarInputError, match="no side prior"):
        compress_raster(src, tmp_path / "d.sarz", model=str(bare / "sarae-q2.pt"), codec="hyper-range",
                        runtime="torch")


def test_damaged_tile_mode(model_dir):
    b = load_bundle(str(model_dir / "sarae-q2.pt"), runtime="torch")
    codec = sp.HyperRangeCodec(b.tables, b.side)
    y = np.random.default_rng(3).normal(0, 2, (96, 16, 16)).astype(np.float32)
    payload = codec.encode(y)
    assert payload[0] in (sp.MODE_FACTORIZED, sp.MODE_SIDE)
    np.testing.assert_array_equal(codec.decode(payload, y.shape), codec.dequantize(codec.quantize(y)))
    with pytest.raises(ValueError, match="unknown latent tile mode"):
        codec.decode(bytes([7]) + payload[1:], y.shape)
    with pytest.raises(ValueError, match="empty"):
        codec.decode(b"", y.shape)


def test_side_mode_round_trip_and_fallback(model_dir):
    """A tile coded with the side prior's tables decodes to the same symbols; a value at a bin edge makes the
    encoder use the factorized tables."""
    b = load_bundle(str(model_dir / "sarae-q2.pt"), runtime="torch")
    codec = sp.HyperRangeCodec(b.tables, b.side)
    rng = np.random.default_rng(4)
    y = rng.normal(0, 2, (96, 24, 20)).astype(np.float32)
    z = codec._side_of(y)
    s, tab, near = codec._tables_of(z, y.shape[1:])
    assert not near and s.shape == tab.shape == (len(b.side.active), 24, 20)
    assert tab.min() >= 0 and tab.max() < sp.SCALE_LEVELS * sp.OFFSETS
    from sar_ae_core.coding.tables import join_payload

    q = codec.quantize(y)
    enc = codec._cs.stream.queue.RangeEncoder()
    esc = sp.encode_grouped(enc, codec._zm, b.side.z, sp._channel_of(z.shape), z.ravel())
    esc.append(sp._encode_by_table(enc, codec._gm, b.side.gauss, tab.ravel(), (q[b.side.active] - s).ravel()))
    forced = bytes([sp.MODE_SIDE]) + join_payload(enc, esc)
    np.testing.assert_array_equal(codec.decode(forced, y.shape), codec.dequantize(q))
    np.testing.assert_array_equal(codec.decode(forced, y.shape, coded_only=True),
                                  codec.dequantize(q)[b.side.active])
    # a mean exactly on an offset edge: the tile falls back to the factorized tables
    codec.gain = 1.0
    mean, _ = b.side.mean_scale(z, y.shape[1:])
    edge = codec._m[b.side.active] + mean
    bump = (np.floor(edge[0, 0, 0] * 8) + 1) / 8 - edge[0, 0, 0]
    codec._m = codec._m.copy()
    codec._m[b.side.active[0]] += bump
    assert codec._tables_of(z, y.shape[1:])[2]


def test_training_cli_resume_and_export(sar_data, tmp_path):
    f = sar_data / "fullres"
    run = tmp_path / "run"
    args = ["side-prior", "--model", "sarae-q2", "--data", str(f / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"),
            str(f / "s1_iw_grd_sen1floods11_ghana_83483_vv_vh_db.tif"),
            str(f / "s1_iw_grd_sen1floods11_india_900498_vv_vh_db.tif"), "--val-fraction", "0.34",
            "--test-fraction", "0", "--patch-size", "64", "--stride", "64", "--batch-size", "4", "--lr", "1e-3",
            "--warmup-steps", "2", "--steps", "12", "--val-interval", "6", "--log-interval", "3",
            "--hyper-channels", "16", "--z-channels", "8", "--out-dir", str(run)]
    from training.cli import main

    short = args
    assert main(short) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert any(",val," in r for r in rows)
    assert main(short) == 2  # the run folder is taken: --resume it
    assert main(["side-prior", "--resume", str(run)]) == 0  # the saved configuration: 12 steps, already done
    out = tmp_path / "m.side.npz"
    assert main(["side-export", str(run), str(out)]) == 0
    prior = sp.SidePrior.from_npz(out.read_bytes())
    assert prior.config["model_sha256"] == load_bundle("sarae-q2", runtime="torch").sha256
    assert main(["side-export", str(run), str(tmp_path / "m.npz")]) == 2
    assert not (tmp_path / "m.npz").exists()
