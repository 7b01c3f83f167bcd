"""ONNX Runtime inference: torch-free compress/reconstruct (CLI and QGIS), thread-count independent bytes,
window decodes equal to the full decode bit for bit, files that decode on either runtime, the exported graphs
equal to the torch model, and the decoder halo that makes strip decoding exact."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from sar_ae_core.cli import main
from sar_ae_core.errors import SarInputError
from sar_ae_core.codec import compress_raster, reconstruct_raster
from sar_ae_core.nn.model_io import DEFAULT_MODEL, load_bundle
from sar_ae_core.nn.runtime import runtime_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory, sar_data):
    """A real 700 x 600 Sentinel-1 dB crop (two decode units wide, three tile rows high), single band."""
    src = sar_data / "fullres" / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"
    if not src.exists():
        src = sar_data / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"
    out = tmp_path_factory.mktemp("runtime") / "scene.tif"
    with rasterio.open(src) as r:
        data = r.read(1)
        tile = np.pad(data, [(0, max(0, 600 - data.shape[0])), (0, max(0, 700 - data.shape[1]))], mode="reflect")
        prof = r.profile | {"count": 1, "width": 700, "height": 600}
    with rasterio.open(out, "w", **prof) as w:
        w.write(tile[:600, :700], 1)
    return out


@pytest.fixture()
def no_torch(tmp_path):
    """A PYTHONPATH entry whose `torch` package cannot be imported."""
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return str(block.parent)


def _run(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "sar_ae_core", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_the_bundled_models_ship_their_onnx_export():
    bundle = load_bundle(DEFAULT_MODEL)
    assert bundle.runtime == "onnx" and bundle.model is None
    assert runtime_path(Path(load_bundle(DEFAULT_MODEL, runtime="torch").path)).is_file()
    assert bundle.sha256 == load_bundle(DEFAULT_MODEL, runtime="torch").sha256  # files name the same model


def test_compress_reconstruct_bitmap_and_info_run_without_torch(tmp_path, scene, no_torch):
    env = {**os.environ, "PYTHONPATH": no_torch}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr
    sarz, tif, bits = tmp_path / "a.sarz", tmp_path / "a.tif", tmp_path / "bits.tif"
    for args in (["compress", str(scene), str(sarz), "--rate", "0.6"], ["reconstruct", str(sarz), str(tif)],
                 ["bitmap", str(sarz), str(bits)], ["info", str(sarz)]):
        run = _run(args, env)
        assert run.returncode == 0, run.stderr[-2000:]
    with rasterio.open(scene) as a, rasterio.open(tif) as b:
        ref, rec = a.read(1).astype(float), b.read(1).astype(float)
        assert b.crs == a.crs and b.transform == a.transform
    assert np.sqrt(np.mean((ref - rec) ** 2)) < 2.0  # dB: a real reconstruction, not a blank image
    assert abs(sarz.stat().st_size * 8 / (700 * 600) - 0.6) <= 0.6 * 0.03
    run = _run(["compress", str(scene), str(tmp_path / "t.sarz"), "--runtime", "torch"], env)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "needs PyTorch" in run.stderr
    assert not (tmp_path / "t.sarz").exists()


def test_bytes_and_pixels_do_not_depend_on_the_thread_count_or_the_run(tmp_path, scene, monkeypatch):
    files, images = [], []
    for i, n in enumerate(("1", "2", "2")):
        monkeypatch.setenv("OMP_NUM_THREADS", n)
        sarz, tif = tmp_path / f"{i}.sarz", tmp_path / f"{i}.tif"
        compress_raster(scene, sarz, runtime="onnx")
        reconstruct_raster(sarz, tif, units="db", runtime="onnx")
        files.append(sarz.read_bytes())
        with rasterio.open(tif) as r:
            images.append(r.read())
    assert files[0] == files[1] == files[2]
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])


def test_a_window_decode_equals_that_window_of_the_full_decode_bit_for_bit(tmp_path, scene):
    sarz, full = tmp_path / "s.sarz", tmp_path / "full.tif"
    compress_raster(scene, sarz, runtime="onnx")
    reconstruct_raster(sarz, full, units="db")
    with rasterio.open(full) as r:
        whole = r.read(1)
    # across a decode-unit border (512 px), a tile border (256 px), the raster's last row and column
    for col, row, w, h in ((500, 250, 30, 20), (0, 0, 1, 1), (511, 255, 2, 2), (650, 560, 50, 40), (3, 300, 690, 7)):
        out = tmp_path / f"w{col}_{row}.tif"
        reconstruct_raster(sarz, out, units="db", window=(col, row, w, h))
        with rasterio.open(out) as r:
            assert np.array_equal(r.read(1), whole[row:row + h, col:col + w]), (col, row, w, h)
            assert r.transform == rasterio.open(full).window_transform(Window(col, row, w, h))


def test_files_written_by_either_runtime_decode_on_the_other(tmp_path, scene):
    out = {}
    for rt in ("onnx", "torch"):
        compress_raster(scene, tmp_path / f"{rt}.sarz", runtime=rt)
    for f in ("onnx", "torch"):
        for rt in ("onnx", "torch"):
            tif = tmp_path / f"{f}-{rt}.tif"
            reconstruct_raster(tmp_path / f"{f}.sarz", tif, units="db", runtime=rt)
            with rasterio.open(tif) as r:
                out[f, rt] = r.read(1).astype(np.float64)
    # same file, either runtime: float differences only (GDN and convolutions summed in another order)
    assert np.abs(out["onnx", "onnx"] - out["onnx", "torch"]).max() < 1e-3
    assert np.abs(out["torch", "torch"] - out["torch", "onnx"]).max() < 1e-3
    # files of either runtime: the same model and bits up to a symbol where the encoders straddle a rounding
    a, b = (tmp_path / "onnx.sarz").stat().st_size, (tmp_path / "torch.sarz").stat().st_size
    assert abs(a - b) <= 0.01 * a
    assert np.abs(out["onnx", "onnx"] - out["torch", "torch"]).mean() < 0.01


def test_the_onnx_graphs_compute_what_the_torch_model_computes():
    import onnxruntime as ort
    import torch

    from training.onnx_export import SubpixelConvTranspose, export_networks

    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        assert torch.allclose(SubpixelConvTranspose(t)(x), t(x), atol=1e-5)
    torch_bundle = load_bundle(DEFAULT_MODEL, runtime="torch")
    enc, dec = export_networks(torch_bundle.model)
    sessions = [ort.InferenceSession(b, providers=["CPUExecutionProvider"]) for b in (enc, dec)]
    img = np.random.default_rng(0).random((1, 1, 96, 64), dtype=np.float32)
    with torch.no_grad():
        y = torch_bundle.model.encode(torch.from_numpy(img)).numpy()
        x_hat = torch_bundle.model.decode(torch.from_numpy(np.round(y))).numpy()
    y_ort = sessions[0].run(None, {"image": img})[0]
    x_ort = sessions[1].run(None, {"latent": np.round(y)})[0]
    assert y_ort.shape == y.shape and np.abs(y_ort - y).max() < 1e-3 * max(1.0, np.abs(y).max())
    assert np.abs(x_ort - x_hat).max() < 1e-5


@pytest.mark.slow
def test_qgis_compress_and_reconstruct_run_without_torch(tmp_path, scene, no_torch):
    config = tmp_path / "qgis"
    subprocess.run([sys.executable, "-m", "qgis_plugin", "install", "--profile", str(config / "profiles" / "default")],
                   cwd=ROOT, check=True, capture_output=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(config),
           "GDAL_PAM_ENABLED": "NO", "HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([no_torch, sysconfig.get_paths()["purelib"]])}
    sarz, tif = tmp_path / "scene.sarz", tmp_path / "rec.tif"
    for alg, params in (("sarae:compress", [f"INPUT={scene}", f"OUTPUT={sarz}"]),
                        ("sarae:reconstruct", [f"INPUT={sarz}", "UNITS=db", f"OUTPUT={tif}"])):
        run = subprocess.run(["/usr/bin/qgis_process.bin", "--json", "run", alg, "--", *params], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-2000:]
        assert "Traceback" not in run.stderr
    assert json.loads(run.stdout)["results"]["OUTPUT"] == str(tif)
    with rasterio.open(scene) as a, rasterio.open(tif) as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        assert np.sqrt(np.mean((a.read(1).astype(float) - b.read(1).astype(float)) ** 2)) < 2.0


def test_the_active_channel_networks_compute_what_the_full_ones_compute():
    """The bundled model ships the networks on its active latent channels; the encoder's active channels are the
    full encoder's, and the decoder on the active channels (inactive ones folded into the first bias, 'valid'
    convolutions, the last two levels fused) gives the full decoder's pixels of a unit's core."""
    from sar_ae_core.nn.model_config import decoder_halo_cells

    bundle = load_bundle(DEFAULT_MODEL, runtime="onnx")
    nets, tables = bundle.nets, bundle.tables
    assert nets.active is not None and nets.active.tolist() == np.nonzero(~tables.inactive())[0].tolist()
    assert 0 < len(nets.active) < bundle.config.latent_channels
    img = np.random.default_rng(0).random((1, 1, 128, 96), dtype=np.float32)
    full = nets.encode(img)
    part = nets.encode(img, skip=tables.inactive())
    assert np.abs(part[:, nets.active] - full[:, nets.active]).max() < 1e-5
    assert not part[:, tables.inactive()].any()  # not computed
    y = np.rint(full)
    y[:, tables.inactive()] = tables.modes()[tables.inactive()][:, None, None]
    halo = decoder_halo_cells(bundle.config)
    k = halo * bundle.downsample_factor
    whole = nets.decode(y)[..., k:-k, k:-k]
    core = nets.decode_core_active(y[:, nets.active], halo)
    assert core.shape == whole.shape and np.abs(core - whole).max() < 1e-5
    assert np.array_equal(nets.decode_core(y, halo), core)  # all channels given, inactive ones at their mode
    y[:, np.nonzero(tables.inactive())[0][0]] += 1  # an inactive channel off its mode: the full decoder serves
    assert np.array_equal(nets.decode_core(y, halo), nets.decode(y)[..., k:-k, k:-k])
    with pytest.raises(ValueError):
        nets.decode_core_active(y[:, nets.active], halo + 1)


def test_files_of_the_all_channel_codec_still_decode(tmp_path, scene):
    """`--codec factorized-range` writes the stream of the first files (every channel coded); such files decode to
    the pixels of the default 'factorized-range-active' file of the same raster."""
    old, new = tmp_path / "old.sarz", tmp_path / "new.sarz"
    compress_raster(scene, old, codec="factorized-range")
    compress_raster(scene, new, codec="factorized-range-active")
    from sar_ae_core.codec import sarz_info

    assert sarz_info(old)["codec"]["id"] == "factorized-range"
    assert sarz_info(new)["codec"]["id"] == "factorized-range-active"
    # the latents are no larger (the inactive channels cost their ~0 bits no more); the longer codec id is a few
    # header bytes
    assert sarz_info(new)["parts"]["latents"] <= sarz_info(old)["parts"]["latents"]
    assert new.stat().st_size <= old.stat().st_size + 16
    px = []
    for f in (old, new):
        reconstruct_raster(f, tmp_path / f"{f.stem}.tif", units="db")
        with rasterio.open(tmp_path / f"{f.stem}.tif") as r:
            px.append(r.read(1))
    assert np.abs(px[0] - px[1]).max() < 1e-3


def test_output_compression_is_a_choice_with_the_same_pixels(tmp_path, scene, capsys):
    """reconstruct writes a zstd GeoTIFF by default; --output-compress deflate/lzw/none give the same pixels
    (none in a larger file); an unknown choice exits 2 naming the option."""
    sarz = tmp_path / "s.sarz"
    compress_raster(scene, sarz)
    px, size = {}, {}
    for c in ("none", "zstd", "deflate", "lzw"):
        tif = tmp_path / f"{c}.tif"
        args = ["reconstruct", str(sarz), str(tif)] + ([] if c == "zstd" else ["--output-compress", c])
        assert main(args) == 0
        with rasterio.open(tif) as r:
            px[c] = r.read(1)
            assert (r.compression.name.lower() if r.compression else "none") == c
        size[c] = tif.stat().st_size
    for c in ("zstd", "deflate", "lzw"):
        assert np.array_equal(px[c], px["none"], equal_nan=True) and size[c] < size["none"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["reconstruct", str(sarz), str(tmp_path / "x.tif"), "--output-compress", "jpeg"])
    assert exit_.value.code == 2
    assert "--output-compress" in capsys.readouterr().err and not (tmp_path / "x.tif").exists()
    with pytest.raises(SarInputError, match="--output-compress"):  # the library checks it too
        reconstruct_raster(sarz, tmp_path / "x.tif", output_compress="jpeg")
