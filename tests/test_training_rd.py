"""Rate-distortion training (`--entropy-model factorized --lmbda X`) on real Sentinel-1 patches, and what the
trained model's rate means in real `.sarz` bytes: a small model (base 8, latent 16, 3 stages, 64 px patches,
a few dozen steps) keeps the module at well under a minute on 2 CPU cores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from sar_ae_core.nn.model_io import bundled_models, load_bundle
from training.cli import main
from training.evaluate import rd_loss
from training.rd import latent_rate

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--variant", "plain", "--patch-size", "64", "--stride", "32", "--base-channels", "8",
         "--latent-channels", "16", "--stages", "3", "--entropy-model", "factorized", "--mse-weight", "1",
         "--ssim-weight", "0", "--batch-size", "8", "--lr", "2e-3", "--prior-lr-mult", "10", "--warmup-steps", "3",
         "--log-interval", "1", "--val-max-patches", "12", "--no-tensorboard"]


def _rows(run: Path, split: str) -> list[dict]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


# the factorized prior on the plain model, the mean-scale hyperprior on the GDN transform
ENTROPY = {"factorized": [],
           "hyperprior": ["--entropy-model", "hyperprior", "--variant", "gdn", "--base-channels", "16",
                          "--latent-channels", "24", "--lr", "1e-3"]}


@pytest.fixture(scope="module", params=sorted(ENTROPY))
def rd_run(sar_data, tmp_path_factory, request):
    """40 RD steps on three Sen1Floods11 scenes (two train, one validation), exported as a bundle."""
    f = sar_data / "fullres"
    run = tmp_path_factory.mktemp("rd") / "run"
    steps = "40" if request.param == "factorized" else "80"
    assert main(["--data", str(f / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"),
                 str(f / "s1_iw_grd_sen1floods11_ghana_83483_vv_vh_db.tif"),
                 str(f / "s1_iw_grd_sen1floods11_india_900498_vv_vh_db.tif"), "--val-fraction", "0.34",
                 "--test-fraction", "0", *SMALL, *ENTROPY[request.param], "--lmbda", "100", "--steps", steps,
                 "--val-interval", "20", "--out-dir", str(run)]) == 0
    bundle = run.parent / "rd-small.pt"
    assert main(["export", str(run), str(bundle), "--name", "rd-small"]) == 0
    return run, str(bundle), request.param


def test_rd_loss_forms():
    d, r = torch.tensor(0.01), torch.tensor(0.5)
    assert float(rd_loss(d, r, lmbda=200.0)) == pytest.approx(200 * 0.01 + 0.5)
    assert float(rd_loss(d, r, rate_weight=0.1)) == pytest.approx(0.01 + 0.1 * 0.5)


def test_rd_training_lowers_the_loss_and_logs_estimated_and_coded_rate(rd_run):
    run = rd_run[0]
    train = _rows(run, "train")
    loss = [float(r["loss"]) for r in train]
    bpp = [float(r["bpp"]) for r in train]
    assert np.mean(loss[-5:]) < 0.8 * np.mean(loss[:5])  # lmbda * MSE + bpp falls
    assert 0 < np.mean(bpp[-5:]) < np.mean(bpp[:5])
    for r in _rows(run, "val"):  # validation: rounded latents, estimated bpp vs really range-coded bpp
        est, coded = float(r["bpp"]), float(r["bpp_coded"])
        # each 64 px patch is its own range-coded chunk: a 4-byte length field and up to 8 bytes of coder flush
        # per patch of ~150-270 bytes, so 3 % + 12 bytes per patch here (the 2 % check on whole rasters is below)
        assert 0 < est < 16 and abs(coded - est) < 0.03 * coded + 12 * 8 / 64 ** 2


def test_lmbda_needs_an_entropy_model(sar_data, tmp_path, capsys):
    f = sar_data / "fullres"
    code = main(["--data", str(f / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"), "--steps", "2",
                 "--lmbda", "100", "--out-dir", str(tmp_path / "x")])
    assert code == 2 and "run.lmbda" in capsys.readouterr().err


def test_init_from_fine_tunes_to_another_rate_point(rd_run, sar_data, tmp_path):
    """--init-from starts from trained weights (and their dB range) with a fresh schedule; a smaller lmbda lowers
    the rate."""
    run = rd_run[0]
    f = sar_data / "fullres"
    ft = tmp_path / "ft"
    # the factorized model is fine-tuned to a lower rate, the (very low-rate) hyperprior model to a higher one
    lower = rd_run[2] == "factorized"
    lmbda = "10" if lower else "3000"
    assert main(["--data", str(f / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"),
                 str(f / "s1_iw_grd_sen1floods11_ghana_83483_vv_vh_db.tif"),
                 str(f / "s1_iw_grd_sen1floods11_india_900498_vv_vh_db.tif"), "--val-fraction", "0.34",
                 "--test-fraction", "0", *SMALL, *ENTROPY[rd_run[2]], "--lmbda", lmbda, "--steps", "15", "--val-interval", "15",
                 "--init-from", str(run), "--out-dir", str(ft)]) == 0
    first = float(_rows(ft, "train")[0]["bpp"])
    assert first < 1.5 * float(_rows(run, "train")[-1]["bpp"])  # starts where the trained model was
    assert (float(_rows(ft, "val")[-1]["bpp"]) < float(_rows(run, "val")[-1]["bpp"])) == lower
    a = torch.load(ft / "best.pt", map_location="cpu", weights_only=True)
    b = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert a["scaling"] == b["scaling"] and a["config"]["run"]["init_from"] == str(run)


def _rate_models(rd_run) -> list[str]:
    """The bundled rate points with this kind of entropy model, and the small factorized model just trained (the
    small hyperprior model of 80 steps codes at ~0.05 bpp, where the few bytes each tile's range coder flushes
    are several per cent of its size: the 2 % claim is checked on the bundled models, trained for real)."""
    bundled = [p for p in bundled_models() if p.stem.startswith("sarae-q")]
    same = [str(p) for p in bundled if load_bundle(str(p)).config.entropy_model == rd_run[2]]
    return ([rd_run[1]] if rd_run[2] == "factorized" else []) + same


def test_estimated_rate_matches_the_real_latent_bytes(rd_run, spain_db, camargue_db):
    """-sum log2 p(round(y)) over the codec's tiles (the training rate term) vs the range-coded latent chunks of the
    .sarz: within 2 %; the whole file adds header, masks and chunk index (reported)."""
    models = _rate_models(rd_run)
    if not models:
        pytest.skip(f"no bundled model with a {rd_run[2]} entropy model")
    for model in models:
        for raster in (spain_db, camargue_db):
            r = latent_rate(model, raster)
            assert r["codec"] in (f"{rd_run[2]}-range", f"{rd_run[2]}-range-active")
            assert abs(r["latent_rel_diff"]) < 0.02, (model, raster, r)
            overhead = r["parts_bytes"]["masks"] + r["parts_bytes"]["header+index"]
            assert r["file_bits"] == r["latent_bits"] + 8 * overhead
            print(f"{Path(model).stem} {Path(raster).name}: estimated {r['estimated_bpp']:.4f} bpp, latents "
                  f"{r['latent_bpp']:.4f} ({100 * r['latent_rel_diff']:+.2f} %), whole file {r['file_bpp']:.4f} "
                  f"({100 * r['file_rel_diff']:+.2f} %, {overhead} B header+masks+index)")


def _cli(args: list[str], threads: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.run([sys.executable, "-m", "sar_ae_core", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_encode_decode_is_bit_exact_across_runs_and_thread_counts(rd_run, spain_db, tmp_path):
    _, bundle, kind = rd_run
    sarz = {}
    for i, threads in enumerate(("1", "2", "1")):
        sarz[i] = tmp_path / f"s{i}.sarz"
        _cli(["compress", str(spain_db), str(sarz[i]), "--model", bundle], threads)
    assert sarz[0].read_bytes() == sarz[2].read_bytes()  # same run, same bytes
    encodings = {sarz[0].read_bytes(), sarz[1].read_bytes()}
    outs = []
    for i, threads in enumerate(("1", "2", "2", "1")):
        out = tmp_path / f"r{i}.tif"
        _cli(["reconstruct", str(sarz[0]), str(out), "--model", bundle], threads)
        with rasterio.open(out) as ds:
            outs.append(ds.read())
    assert all(o.tobytes() == outs[0].tobytes() for o in outs)
    # the integer latents decoded from the file are exactly what the encoder rounded (lossless range coding)
    from sar_ae_core.coding.sarz import SarzFile

    b = load_bundle(bundle)
    with SarzFile(sarz[0]) as f:
        f.attach(b)
        lat = f.latent_tile(0, 0, 0)
    if kind == "factorized":  # (hyperprior latents are integer symbols + a predicted mean)
        assert np.array_equal(lat, np.rint(lat))
    print(f"encodings with 1 and 2 threads {'identical' if len(encodings) == 1 else 'differ'}")
    assert len(encodings) == 1


def test_quantization_gain_moves_the_rate_of_both_entropy_models(rd_run, spain_db, tmp_path):
    """The quantization gain (what `--rate` searches) on a factorized and on a hyperprior model: more bytes and a
    smaller error at a finer gain, the gain in the header, and (hyperprior) latents decoded as μ + symbol/g within
    half a step 1/g of the encoder's."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.coding.latent_coding import codec_from_params
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.quality.assess import assess_rasters

    _, bundle, kind = rd_run
    sizes, errors = [], []
    for g in (0.5, 1.0, 2.0):
        sarz, rec = tmp_path / f"g{g}.sarz", tmp_path / f"g{g}.tif"
        res = compress_raster(spain_db, sarz, model=bundle, gain=g, overwrite=True)
        reconstruct_raster(sarz, rec, units="db", model=bundle, overwrite=True)
        with SarzFile(sarz) as f:
            assert float(f.header["codec"].get("gain", 1.0)) == g
        sizes.append(res["bytes"])
        errors.append(assess_rasters(spain_db, rec)["rmse_db"])
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert errors[2] < errors[0], errors   # (the 40-step factorized model barely uses its finer latents)
    if kind == "hyperprior":
        b = load_bundle(bundle)
        rng = np.random.default_rng(0)
        y = rng.normal(0, 3, size=(b.config.latent_channels, 8, 8))
        for g in (0.5, 2.0):
            codec = codec_from_params({"id": "hyperprior-range", "gain": g}, b.tables)
            got = codec.decode(codec.encode(y), y.shape)
            assert np.abs(got - y).max() <= 0.5 / g + 1e-5
        with pytest.raises(ValueError, match="gain"):
            codec_from_params({"id": "hyperprior-range", "gain": 99.0}, b.tables)
