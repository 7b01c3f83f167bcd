"""The training package (`python -m training`) on real Sentinel-1 rasters: a tiny model (base 8, 64 px
patches, a few steps) so the whole module runs in well under a minute on 2 CPU cores."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sar_ae_core.nn.model_io import load_bundle, weights_sha256
from sar_ae_core.nn.models import build_model
from sar_ae_core.scaling import fit_scaling
from training.checkpoint import checkpoint_model, load_checkpoint, save_checkpoint
from training.cli import main
from training.config import TrainConfig
from training.data import prepare_data
from training.evaluate import evaluate
from training.quant import apply_latent_noise, quantize_latent
from training.train import WarmupCosine
from training.losses import CombinedLoss

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--patch-size", "64", "--base-channels", "8", "--latent-channels", "16", "--stages", "4",
        "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "2", "--log-interval", "1",
        "--val-max-patches", "8", "--no-tensorboard"]


def _files(sar_data: Path) -> dict[str, str]:
    f, s = sar_data / "fullres", sar_data
    return {
        "ghana_a": str(f / "s1_iw_grd_sen1floods11_ghana_53713_vv_vh_db.tif"),
        "ghana_b": str(f / "s1_iw_grd_sen1floods11_ghana_83483_vv_vh_db.tif"),
        "ghana_c": str(f / "s1_iw_grd_sen1floods11_ghana_97059_vv_vh_db.tif"),
        "india": str(f / "s1_iw_grd_sen1floods11_india_900498_vv_vh_db.tif"),
        "bolivia": str(f / "s1_iw_grd_sen1floods11_bolivia_312675_vv_vh_db.tif"),
        "pakistan": str(f / "s1_iw_grd_sen1floods11_pakistan_849790_vv_vh_db.tif"),
        "nigeria": str(f / "s1_iw_grd_sen1floods11_nigeria_812045_vv_vh_db.tif"),
        "sea_vv": str(s / "s1_opera_rtc_t137-292318-iw1_20211119_vv_lin.tif"),
        "sea_vh": str(s / "s1_opera_rtc_t137-292318-iw1_20211119_vh_lin.tif"),
    }


def _rows(run: Path, split: str) -> list[dict]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def _three_scenes(sar_data: Path) -> list[str]:
    f = _files(sar_data)
    # 3 scenes: one for validation, two for training (no test split)
    return ["--data", f["ghana_a"], f["ghana_b"], f["india"], "--val-fraction", "0.34", "--test-fraction", "0"]


LIGHT = ["--variant", "gdn", "--decoder", "light", "--entropy-model", "factorized", "--rate-weight", "0.05"]


def _light_base(sar_data: Path, tmp_path: Path, tiny: list[str], steps: int) -> tuple[Path, Path]:
    """A tiny light-decoder model trained on `_three_scenes` and exported: (its run folder, its bundle)."""
    run, bundle = tmp_path / "base", tmp_path / "base.pt"
    assert main([*_three_scenes(sar_data), *tiny, *LIGHT, "--steps", str(steps), "--val-interval", str(steps),
                 "--out-dir", str(run)]) == 0
    assert main(["export", str(run), str(bundle), "--name", "base-test"]) == 0
    return run, bundle


# --------------------------------------------------------------------------------------------
# One short real run shared by several tests
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_run(sar_data, tmp_path_factory):
    """60 steps on five scenes (Sen1Floods11 + OPERA). With split seed 0 the dark river scene (India) is
    the validation scene, so fitting the scaling on everything would move vmin by several dB."""
    f = _files(sar_data)
    run = tmp_path_factory.mktemp("short") / "run"
    files = [f["bolivia"], f["pakistan"], f["nigeria"], f["india"], f["sea_vv"], f["sea_vh"]]
    rc = main(["--data", *files, "--val-fraction", "0.2", "--test-fraction", "0.2", "--split-seed", "0",
               *TINY, "--steps", "60", "--val-interval", "30", "--out-dir", str(run)])
    assert rc == 0
    return run, files


def test_short_run_lowers_the_training_loss(short_run):
    run, _ = short_run
    train = _rows(run, "train")
    assert [int(r["step"]) for r in train] == list(range(1, 61))
    loss = [float(r["loss"]) for r in train]
    mse = [float(r["loss_mse"]) for r in train]
    first, last = np.mean(loss[:5]), np.mean(loss[-5:])
    # the total is dominated by 1 - SSIM, which moves slowly on speckle; MSE falls fast
    assert last < 0.95 * first, (first, last)
    assert np.mean(mse[-5:]) < 0.6 * np.mean(mse[:5])
    val = _rows(run, "val")
    assert [int(r["step"]) for r in val] == [30, 60]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 60
    for split in ("val", "test"):
        m = summary[split]
        assert 8 < m["psnr"] < 60 and 0 < m["ssim"] <= 1 and 0 < m["epi"] <= 1 and m["enl_ratio"] > 0, m
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_is_fitted_on_the_training_split_only(short_run):
    run, files = short_run
    ckpt = load_checkpoint(run / "last.pt")
    splits = ckpt["data"]["files"]
    names = {k: sorted(os.path.basename(p) for p in v) for k, v in splits.items()}
    assert names["val"] == ["s1_iw_grd_sen1floods11_india_900498_vv_vh_db.tif"]
    assert names["test"] and not set(names["test"]) & set(names["train"])
    scaling = ckpt["scaling"]
    assert sorted(scaling["fitted_on"]) == names["train"]
    on_train = fit_scaling(splits["train"])
    on_all = fit_scaling(files)
    assert scaling["vmin_db"] == pytest.approx(on_train.vmin_db) and scaling["vmax_db"] == pytest.approx(on_train.vmax_db)
    # the held-out scenes really would have changed the range (the test would be vacuous otherwise)
    assert abs(on_all.vmin_db - on_train.vmin_db) > 3.0


def test_checkpoint_holds_everything_and_round_trips(short_run, tmp_path):
    run, _ = short_run
    ckpt = load_checkpoint(run / "best.pt")
    for key in ("model_config", "state_dict", "scaling", "optimizer", "scheduler", "step", "epoch", "rng",
                "val_metrics", "data", "code", "config", "train_time_s", "device"):
        assert key in ckpt, key
    assert ckpt["data"]["patches"]["train"] > 0 and ckpt["data"]["patches"]["val"] > 0
    assert ckpt["code"]["sar_ae_core"] and ckpt["config"]["optim"]["steps"] == 60
    # the model rebuilt from disk reproduces the validation numbers measured in the training process
    model, scaling = checkpoint_model(ckpt)
    cfg = TrainConfig.from_dict(ckpt["config"])
    data = prepare_data(cfg.data, scaling=scaling)
    again = evaluate(model, data.val, scaling, CombinedLoss(cfg.loss), torch.device("cpu"),
                     bits=cfg.run.latent_bits, max_patches=cfg.run.val_max_patches)
    for k in ("loss", "psnr", "ssim", "epi", "enl_ratio"):
        assert again[k] == pytest.approx(ckpt["val_metrics"][k], rel=1e-5, abs=1e-6), k
    # save -> load again: bit-identical outputs on real patches
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "version", "path")}
    save_checkpoint(tmp_path / "copy.pt", payload)
    model2, _ = checkpoint_model(load_checkpoint(tmp_path / "copy.pt"))
    x = torch.stack([data.val[i]["image"] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))


def test_export_writes_a_small_bundle_the_codec_can_load(short_run, tmp_path):
    run, _ = short_run
    out = tmp_path / "tiny.pt"
    assert main(["export", str(run), str(out), "--name", "tiny-test"]) == 0
    bundle = load_bundle(out, runtime="torch")
    assert bundle.name == "tiny-test" and out.stat().st_size < 1_000_000
    ckpt = load_checkpoint(run / "best.pt")
    info = bundle.info
    assert info["training"]["steps"] == ckpt["step"]
    assert info["validation"]["psnr"] == pytest.approx(ckpt["val_metrics"]["psnr"])
    assert sorted(info["training"]["files"]["train"]) == sorted(ckpt["scaling"]["fitted_on"])
    assert bundle.scaling.vmin_db == pytest.approx(ckpt["scaling"]["vmin_db"])
    model, _ = checkpoint_model(ckpt)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((bundle.model(x) - model(x)).abs().max()) < 2e-2  # fp16 weights
        y = bundle.model.encode(x).numpy()
        x_hat = bundle.model.decode(torch.from_numpy(y)).numpy()
    # ... and its ONNX runtime bundle beside it: same model (SHA-256), same networks
    onnx_bundle = load_bundle(out, runtime="onnx")
    assert out.with_name("tiny.onnx.zip").is_file() and onnx_bundle.sha256 == bundle.sha256
    assert abs(onnx_bundle.nets.encode(x.numpy()) - y).max() < 1e-4 * max(1.0, abs(y).max())
    assert abs(onnx_bundle.nets.decode(y) - x_hat).max() < 1e-4
    assert main(["export", str(run), str(out), "--name", "tiny-test"]) == 2  # exists, no --overwrite
    # --decodes checks that the two models share encoder and tables: another model's files are refused
    assert main(["export", str(run), str(tmp_path / "x.pt"), "--name", "x", "--decodes", "sarae-q2"]) == 2
    assert not (tmp_path / "x.pt").exists()


def _as_cuda_checkpoint(src: Path, dst: Path) -> None:
    """Rewrite a torch.save zip so every storage says it was saved on 'cuda:0' (what a GPU run writes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):  # the location string is pickled once and referenced by every storage
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(name, data)


def test_checkpoint_saved_on_cuda_loads_on_cpu(short_run, tmp_path):
    """Honest check of map_location='cpu': the checkpoint's storages are re-labelled 'cuda:0' inside the
    file (exactly what torch.save records for GPU tensors). Without mapping, torch refuses to load it on
    this CPU-only machine; load_checkpoint and export must succeed."""
    run, _ = short_run
    cuda_ckpt = tmp_path / "gpu_run" / "best.pt"
    cuda_ckpt.parent.mkdir()
    _as_cuda_checkpoint(run / "best.pt", cuda_ckpt)
    seen = []
    torch.load(cuda_ckpt, weights_only=True, map_location=lambda storage, location: seen.append(location) or storage)
    assert len(seen) > 10 and set(seen) == {"cuda:0"}  # every tensor in the file now claims to live on a GPU
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_ckpt, weights_only=True)
    ckpt = load_checkpoint(cuda_ckpt)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    ref = load_checkpoint(run / "best.pt")
    assert weights_sha256(ckpt["state_dict"]) == weights_sha256(ref["state_dict"])
    assert main(["export", str(cuda_ckpt), str(tmp_path / "from_gpu.pt"), "--name", "gpu"]) == 0


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------
def test_resume_continues_at_the_saved_step_with_the_same_learning_rate(sar_data, tmp_path, capsys):
    common = [*_three_scenes(sar_data), *TINY, "--batch-size", "4", "--steps", "8", "--val-interval", "3"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main([*common, "--out-dir", str(full)]) == 0
    assert main([*common, "--out-dir", str(split), "--stop-at", "5"]) == 0
    stopped = load_checkpoint(split / "last.pt")
    assert stopped["step"] == 5 and json.loads((split / "summary.json").read_text())["status"] == "stopped"
    capsys.readouterr()
    assert main(["--resume", str(split)]) == 0
    assert "at step 5/8" in capsys.readouterr().out
    a, b = _rows(full, "train"), _rows(split, "train")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 9)]
    for ra, rb in zip(a, b):  # same learning rate at every step, same batches and noise (workers 0)
        assert float(ra["lr"]) == pytest.approx(float(rb["lr"]), rel=1e-9), ra["step"]
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5), ra["step"]
    assert float(b[5]["lr"]) < float(b[4]["lr"])  # the cosine schedule goes on where it stopped
    wa, wb = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    assert wa["step"] == wb["step"] == 8
    for k in wa["state_dict"]:
        assert torch.allclose(wa["state_dict"][k].float(), wb["state_dict"][k].float(), atol=1e-6), k
    # a finished run cannot be restarted by accident
    assert main([*common, "--out-dir", str(full)]) == 2
    assert "already holds a training run" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Distributed (torchrun, gloo on CPU)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_parameters(sar_data, tmp_path):
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun) if torchrun.exists() else sys.executable, *([] if torchrun.exists() else
           ["-m", "torch.distributed.run"]), "--standalone", "--nproc_per_node=2", "-m", "training",
           *_three_scenes(sar_data), *TINY, "--batch-size", "4", "--steps", "6", "--val-interval", "3",
           "--device", "cpu", "--out-dir", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 processes, backend gloo" in proc.stdout
    h0 = (run / "weights_rank0.sha256").read_text().strip()
    h1 = (run / "weights_rank1.sha256").read_text().strip()
    assert len(h0) == 64 and h0 == h1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6
    model = build_model(ckpt["model_config"])
    params = {k: ckpt["state_dict"][k] for k, _ in model.named_parameters()}
    assert weights_sha256(params) == h0  # rank 0 saved what both ranks hold
    torch.manual_seed(0)  # the initial weights (same seed) differ: training really changed them
    init = {k: v for k, v in build_model(ckpt["model_config"]).named_parameters()}
    assert weights_sha256(init) != h0
    # rank 0 alone writes logs: one row per step
    assert [r["step"] for r in _rows(run, "train")] == [str(s) for s in range(1, 7)]


# --------------------------------------------------------------------------------------------
# Fail fast on bad input (exit 2, one clear line, nothing trained)
# --------------------------------------------------------------------------------------------
def test_unknown_variant_exits_2_from_the_command_line(sar_data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "training", *_three_scenes(sar_data), "--steps", "5",
                           "--variant", "transformer", "--out-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model variant 'transformer'" in proc.stderr and "res_cbam" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("case", ["missing_folder", "glob_no_match", "patch_too_large", "no_valid_patches",
                                  "no_steps", "bad_patch_multiple", "one_scene"])
def test_bad_configurations_fail_fast(case, sar_data, tmp_path, capsys):
    f = _files(sar_data)
    data = _three_scenes(sar_data)
    args, expected = {
        "missing_folder": (["--data", str(tmp_path / "nope"), "--steps", "5"], "nope: no such file or folder"),
        "glob_no_match": (["--data", str(sar_data / "*.xyz"), "--steps", "5"], "pattern matched no files"),
        "patch_too_large": ([*data, "--steps", "5", "--patch-size", "1024"],
                            "patch size 1024 is larger than every raster"),
        "no_valid_patches": ([*data, "--steps", "5", "--min-std", "0.9"], "no valid training patches"),
        "no_steps": ([*data], "give --steps and/or --epochs"),
        "bad_patch_multiple": ([*data, "--steps", "5", "--patch-size", "100"], "multiple of 2**stages = 16"),
        "one_scene": (["--data", f["ghana_a"], "--steps", "5"], "validation split is empty"),
    }[case]
    out = tmp_path / "run"
    assert main([*args, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    if case == "patch_too_large":
        assert "512x512" in err  # the sizes are in the message
    assert not (out / "last.pt").exists()


def test_config_file_and_flags(sar_data, tmp_path, capsys):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"data": {"paths": ["a.tif"], "patch_size": 128}, "optim": {"steps": 5}}))
    assert main(["--config", str(cfg_file), "--steps", "7", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["steps"] == 7 and cfg["data"]["patch_size"] == 128 and cfg["optim"]["lr"] == 1e-4
    cfg_file.write_text(json.dumps({"optim": {"stepz": 5}}))
    assert main(["--config", str(cfg_file), "--print-config"]) == 2
    assert "unknown key(s) ['stepz'] in section 'optim'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Quantisation-aware training and the schedule
# --------------------------------------------------------------------------------------------
def test_latent_noise_matches_the_codec_quantiser():
    torch.manual_seed(0)
    y = torch.randn(3, 4, 8, 8) * torch.tensor([1.0, 5.0, 0.1, 2.0]).view(1, 4, 1, 1)
    step = (y.amax((2, 3), keepdim=True) - y.amin((2, 3), keepdim=True)) / 255
    q = quantize_latent(y, 8)
    assert float(((q - y).abs() / step).max()) <= 0.5 + 1e-4  # at most half a step per channel
    levels = (q - y.amin((2, 3), keepdim=True)) / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # on the 256-level grid
    noisy = apply_latent_noise(y, "uniform", 8)
    rel = (noisy - y) / step
    assert float(rel.abs().max()) <= 0.5 and float(rel.std()) == pytest.approx(1 / math.sqrt(12), rel=0.1)
    y.requires_grad_(True)
    apply_latent_noise(y, "ste", 8).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # straight-through: identity gradient


def test_warmup_cosine_schedule():
    s = WarmupCosine(warmup=10, total=110, min_ratio=0.01)
    assert s(0) == pytest.approx(1 / 11) and s(9) == pytest.approx(10 / 11)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.505)
    assert s(110) == pytest.approx(0.01)
    assert all(s(k) >= s(k + 1) for k in range(10, 110))


# --------------------------------------------------------------------------------------------
# Experiment matrix
# --------------------------------------------------------------------------------------------
def test_tiny_experiment_matrix_writes_results_table_and_plots(sar_data, tmp_path):
    out = tmp_path / "exp"
    rc = main(["experiments", "--variants", "plain,res_cbam", "--latents", "8,4", *_three_scenes(sar_data),
               *TINY, "--steps", "3", "--val-max-patches", "4", "--out-dir", str(out)])
    assert rc == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["plain_lat4", "plain_lat8", "res_cbam_lat4", "res_cbam_lat8"]
    for name in runs:
        res = json.loads((out / name / "results.json").read_text())
        assert res["step"] == 3 and res["status"] == "finished"
        assert res["nominal_compression_ratio"] == {"4": 64.0, "8": 32.0}[name.split("lat")[1]]
        assert math.isfinite(res["val"]["psnr"]) and res["val"]["patches"] == 4
    with open(out / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and {r["variant"] for r in table} == {"plain", "res_cbam"}
    md = (out / "comparison.md").read_text()
    assert md.count("\n| plain") == 2 and "val PSNR" in md
    assert (out / "quality_vs_compression.png").read_bytes()[:4] == b"\x89PNG"
    # a second invocation reuses the finished runs instead of training again
    before = hashlib.sha256((out / "plain_lat8" / "best.pt").read_bytes()).hexdigest()
    assert main(["experiments", "--variants", "plain", "--latents", "8", *_three_scenes(sar_data), *TINY,
                 "--steps", "3", "--out-dir", str(out)]) == 0
    assert hashlib.sha256((out / "plain_lat8" / "best.pt").read_bytes()).hexdigest() == before


def test_factorized_entropy_model_trains_with_a_rate_term(sar_data, tmp_path):
    """--entropy-model factorized: the prior is trained (rate term), validation reports the estimated bpp of
    integer-rounded latents, and the exported bundle carries the coding tables the range coder needs."""
    run = tmp_path / "rd"
    assert main([*_three_scenes(sar_data), *TINY, "--steps", "12", "--val-interval", "6",
                 "--entropy-model", "factorized", "--rate-weight", "0.05", "--out-dir", str(run)]) == 0
    train = _rows(run, "train")
    bpp = [float(r["bpp"]) for r in train]
    assert 0 < bpp[-1] < bpp[0]  # the rate goes down
    val = _rows(run, "val")
    assert all(0 < float(r["bpp"]) < 8 for r in val)
    ckpt = load_checkpoint(run / "best.pt")
    init = build_model(ckpt["model_config"]).state_dict()
    prior_keys = [k for k in ckpt["state_dict"] if k.startswith("entropy.")]
    assert prior_keys and any(not torch.equal(ckpt["state_dict"][k], init[k]) for k in prior_keys)
    out = tmp_path / "rd.pt"
    assert main(["export", str(run), str(out), "--name", "rd-test"]) == 0
    bundle = load_bundle(out)
    assert bundle.tables is not None and bundle.info["validation"]["bpp"] == pytest.approx(ckpt["val_metrics"]["bpp"])


def test_train_only_encoder_keeps_the_decoder_and_prior_and_its_files_decode_with_either_model(sar_data, tmp_path):
    """--train-only encoder with a narrower --base-channels (light decoder): the encoder is warm-started from the
    first channels of the given model's and trained; the decoder and entropy model stay bit for bit, so the
    exported bundle names the files it decodes (--decodes): the original's decode with it to the same pixels."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster

    base_run, base = _light_base(sar_data, tmp_path, TINY, 6)
    enc_run = tmp_path / "enc"
    narrow = [a if a != "8" else "6" for a in TINY]  # --base-channels 6
    assert main([*_three_scenes(sar_data), *narrow, *LIGHT, "--steps", "6", "--val-interval", "6",
                 "--init-from", str(base), "--train-only", "encoder", "--out-dir", str(enc_run)]) == 0
    before, after = load_checkpoint(base_run / "best.pt")["state_dict"], load_checkpoint(enc_run / "last.pt")["state_dict"]
    b16 = load_bundle(base, runtime="torch").model.state_dict()  # the bundle's fp16-rounded weights
    for k, v in after.items():
        if k.startswith("encoder."):
            assert v.shape[0] <= before[k].shape[0]
        else:
            assert torch.equal(v, b16[k]), k  # decoder and prior: exactly the exported model's
    changed = [k for k, v in after.items() if k.startswith("encoder.") and v.shape == before[k].shape
               and not torch.equal(v, before[k])]
    assert any(after[k].shape != before[k].shape for k in after if k.startswith("encoder.")) or changed
    out = tmp_path / "enc.pt"
    assert main(["export", str(enc_run), str(out), "--name", "enc-test", "--decodes", str(base)]) == 0
    new = load_bundle(out, runtime="torch")
    assert new.config.base_channels == 6 and new.decodes(load_bundle(base).sha256)
    import rasterio

    src = _files(sar_data)["ghana_a"]
    old, mine = tmp_path / "old.sarz", tmp_path / "mine.sarz"
    compress_raster(src, old, model=str(base), bands=[1])
    compress_raster(src, mine, model=str(out), bands=[1])
    px = []
    for sarz, model in ((old, base), (old, out), (mine, out)):
        tif = tmp_path / f"{sarz.stem}-{Path(model).stem}.tif"
        reconstruct_raster(sarz, tif, model=str(model), units="db")
        with rasterio.open(tif) as r:
            px.append(r.read(1))
    assert np.abs(px[0] - px[1]).max() < 1e-4  # the same decoder
    assert np.isfinite(px[2]).mean() > 0.9


def test_decoder_gains_quantize_the_training_latents_as_the_codec_does_at_a_drawn_gain(tmp_path, capsys):
    """--decoder-gains (with --train-only decoder): in training mode the decoder is given the latents quantized
    exactly as the codec's rate control does at a gain drawn per patch from the range (symbols rint(m + g(y − m))
    around each channel's mode, dequantized m + (q − m)/g); in eval mode plain rounding (gain 1)."""
    from sar_ae_core.coding.tables import FactorizedRangeCodec
    from sar_ae_core.nn.model_config import ModelConfig
    from training.quant import QuantAwareAutoencoder

    torch.manual_seed(0)
    ae = build_model(ModelConfig(variant="gdn", base_channels=8, latent_channels=8, stages=2,
                                 entropy_model="factorized", decoder="light"))
    with torch.no_grad():  # latents of a few units, so that the gain changes the symbols
        ae.encoder(torch.zeros(1, 1, 16, 16))
        for p in ae.encoder.parameters():
            p.mul_(4.0)
    net = QuantAwareAutoencoder(ae, decoder_only=True, decoder_gains=(0.4, 1.6))
    seen = []
    hook = ae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    x = torch.rand(3, 1, 32, 32)
    net.train()
    torch.manual_seed(7)
    net(x)
    torch.manual_seed(7)
    gains = torch.exp(torch.empty(3, 1, 1, 1).uniform_(math.log(0.4), math.log(1.6))).flatten().tolist()
    net.eval()
    net(x)
    hook.remove()
    with torch.no_grad():
        y = ae.encode(x).numpy().astype(np.float32)
    codec = FactorizedRangeCodec(ae.entropy.build_tables())
    assert len({round(g, 3) for g in gains}) == 3 and all(0.4 <= g <= 1.6 for g in gains)
    changed = 0
    for i, g in enumerate(gains):
        codec.gain = g
        want = codec.dequantize(codec.quantize(y[i]))
        assert np.allclose(seen[0][i].numpy(), want, atol=1e-5)  # the codec's symbols at that gain
        changed += int(not np.allclose(want, np.rint(y[i])))
    assert changed >= 2  # the gains did change the latents
    assert torch.equal(seen[1], torch.round(torch.from_numpy(y)))  # eval: gain 1
    # the option is checked: only with --train-only decoder, two gains in order
    out = tmp_path / "run"
    assert main(["--data", "x.tif", "--steps", "2", "--decoder-gains", "0.5", "1.5", "--out-dir", str(out)]) == 2
    assert "run.decoder_gains" in capsys.readouterr().err and not out.exists()
    assert main(["--data", "x.tif", "--steps", "2", "--init-from", "sarae-q2", "--train-only", "decoder",
                 "--decoder-gains", "1.5", "0.5", "--out-dir", str(out)]) == 2
    assert "LO <= HI" in capsys.readouterr().err and not out.exists()


def test_init_from_a_model_with_another_entropy_model_copies_the_transforms(sar_data, tmp_path):
    """`--init-from sarae-q2 --entropy-model hyperprior --hyper light`: the encoder and decoder start as q2's, the hyperprior
    fresh (q2 has none); after one step at a negligible learning rate the transforms are still q2's."""
    from training.checkpoint import load_init

    f = _files(sar_data)
    run = tmp_path / "hyp"
    rc = main(["--data", f["ghana_a"], f["ghana_b"], f["india"], "--val-fraction", "0.34", "--test-fraction", "0",
               "--init-from", "sarae-q2", "--entropy-model", "hyperprior", "--hyper", "light", "--lmbda", "1000",
               "--variant", "gdn", "--base-channels", "32", "--latent-channels", "96", "--stages", "3", "--decoder", "light",
               "--patch-size", "64", "--batch-size", "2", "--steps", "1", "--lr", "1e-12", "--warmup-steps", "0",
               "--val-max-patches", "2", "--no-tensorboard", "--out-dir", str(run)])
    assert rc == 0
    q2, got = load_init("sarae-q2")["state_dict"], load_checkpoint(run / "last.pt")
    assert got["model_config"]["entropy_model"] == "hyperprior" and got["model_config"]["hyper"] == "light"
    mine = got["state_dict"]
    transforms = [k for k in q2 if not k.startswith("entropy.")]
    assert transforms and all(torch.allclose(mine[k].float(), q2[k].float(), atol=1e-5) for k in transforms)
    fresh = [k for k in mine if k.startswith("entropy.") and k not in q2]
    assert fresh, "the hyperprior's own parameters"
    # transforms of another shape are still refused (only the entropy model may differ)
    assert main(["--data", f["ghana_a"], f["ghana_b"], f["india"], "--val-fraction", "0.34", "--test-fraction",
                 "0", "--init-from", "sarae-q2", "--entropy-model", "hyperprior", "--variant", "gdn",
                 "--base-channels", "16", "--latent-channels", "96", "--stages", "3", "--decoder", "light",
                 "--lmbda", "1000", "--steps", "1", "--out-dir", str(tmp_path / "bad")]) == 2


@pytest.mark.parametrize("entropy_model", ["factorized", "hyperprior"])
def test_rounded_decoder_latents_are_the_codecs_while_the_rate_stays_the_noisy_estimate(entropy_model, sar_data,
                                                                                        tmp_path):
    """--decoder-latents rounded ("mixed" quantization): in training the decoder is given the latents rounded as
    the codec rounds them (the factorized prior: round(y); the hyperprior: μ + round(y − μ) with μ from the rounded
    side information), straight-through, while the likelihoods are those of the noisy latents."""
    from sar_ae_core.nn.models import ModelConfig
    from training.quant import QuantAwareAutoencoder

    torch.manual_seed(0)
    ae = build_model(ModelConfig(variant="gdn", base_channels=8, latent_channels=16, stages=3,
                                 entropy_model=entropy_model, decoder="light"))
    x = torch.rand(2, 1, 64, 64)
    prior = ae.entropy
    prior.train()
    y = ae.encode(x) * 6.0   # latents many steps wide, as trained models have
    torch.manual_seed(1)
    noisy_hat, lik_noisy = prior(y)
    torch.manual_seed(1)
    rounded_hat, lik_rounded = prior(y, rounded_output=True)
    prior.eval()
    with torch.no_grad():
        codec_hat, lik_codec = prior(y)                  # what the codec decodes (eval: rounding)
    if entropy_model == "factorized":
        assert torch.equal(lik_noisy, lik_rounded)      # the rate term is the noisy estimate, unchanged
    else:  # the side information's rate is unchanged; the latents' uses the scales of the rounded side information
        nz = lik_noisy.numel() - y.numel()
        assert torch.equal(lik_noisy[-nz:], lik_rounded[-nz:])
    assert not torch.allclose(lik_rounded, lik_codec)     # ... not the rounded latents' likelihoods
    assert torch.allclose(rounded_hat, codec_hat, atol=1e-5)
    assert not torch.allclose(noisy_hat, codec_hat, atol=1e-3)
    # straight-through: the gradient reaches the encoder's latents unchanged
    prior.train()
    y2 = y.detach().requires_grad_(True)
    out, _ = prior(y2, rounded_output=True)
    out.sum().backward()
    assert torch.allclose(y2.grad, torch.ones_like(y2))
    # through the training wrapper and the command line
    net = QuantAwareAutoencoder(ae, rounded_decoder=True).train()
    rec, lik = net(x)
    assert rec.shape == x.shape and lik is not None
    f = _files(sar_data)
    assert main(["--data", f["ghana_a"], f["ghana_b"], f["india"], "--val-fraction", "0.34", "--test-fraction",
                 "0", *TINY, "--entropy-model", entropy_model, "--lmbda", "100", "--decoder-latents", "rounded",
                 "--steps", "3", "--out-dir", str(tmp_path / "run")]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["run"]["decoder_latents"] == "rounded"
    with pytest.raises(SystemExit) as bad:
        main(["--data", "x.tif", "--decoder-latents", "floor", "--out-dir", str(tmp_path / "bad")])
    assert bad.value.code == 2


def test_a_separable_decoder_trained_on_a_models_latents_decodes_its_files(sar_data, tmp_path):
    """--train-only decoder --decoder separable on a model's frozen latents: the exported bundle declares the files
    it decodes (--decodes); it reconstructs them (in strips with its own halo of 3 cells: the light decoder's is 2),
    and a window of the file decodes to that window of the whole."""
    import rasterio

    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.nn.model_config import decoder_halo_cells

    three = [a if a != "4" else "3" for a in TINY]  # --stages 3 (the shipped depth)
    base_run, base = _light_base(sar_data, tmp_path, three, 4)
    sep_run = tmp_path / "sep"
    sep = [a if a != "light" else "separable" for a in LIGHT]
    f = _files(sar_data)  # other scenes: what the base model saw is carried into the new bundle's card
    other = ["--data", f["ghana_c"], f["india"], f["ghana_a"], "--val-fraction", "0.34", "--test-fraction", "0"]
    assert main([*other, *three, *sep, "--steps", "6", "--val-interval", "6",
                 "--init-from", str(base), "--train-only", "decoder", "--out-dir", str(sep_run)]) == 0
    out = tmp_path / "sep.pt"
    assert main(["export", str(sep_run), str(out), "--name", "sep-test", "--decodes", str(base)]) == 0
    bundle = load_bundle(out, runtime="torch")
    own = set(bundle.info["training"]["files"]["train"])
    before = {Path(p).name for p in load_checkpoint(base_run / "best.pt")["data"]["files"]["train"]}
    assert before - own and bundle.info["training"]["lineage_files"] == sorted(before - own)
    assert load_checkpoint(sep_run / "last.pt")["lineage_files"] == sorted(before)
    assert bundle.config.decoder == "separable" and decoder_halo_cells(bundle.config) == 3
    assert bundle.decodes(load_bundle(base).sha256)
    sarz, whole = tmp_path / "s.sarz", tmp_path / "whole.tif"
    compress_raster(_files(sar_data)["ghana_a"], sarz, model=str(base), bands=[1])
    reconstruct_raster(sarz, whole, model=str(out), units="db")
    with rasterio.open(whole) as r:
        full = r.read(1)
    assert np.isfinite(full).mean() > 0.9
    for col, row, w, h in ((250, 240, 30, 40), (500, 0, 12, 512)):  # across a tile border; the last columns
        part = tmp_path / f"w{col}.tif"
        reconstruct_raster(sarz, part, model=str(out), units="db", window=(col, row, w, h))
        with rasterio.open(part) as r:
            assert np.array_equal(r.read(1), full[row:row + h, col:col + w]), (col, row)
    # its runtime bundle stores no encoder: the base model's, beside it, is byte for byte the same
    import json
    import zipfile

    from sar_ae_core.errors import SarInputError

    with zipfile.ZipFile(tmp_path / "sep.onnx.zip") as z:
        assert "encoder.onnx" not in z.namelist()
        assert json.loads(z.read("model.json"))["encoder_from"]["name"] == "base"
    a = compress_raster(_files(sar_data)["ghana_a"], tmp_path / "a.sarz", model=str(base), bands=[1], runtime="onnx")
    b = compress_raster(_files(sar_data)["ghana_a"], tmp_path / "b.sarz", model=str(out), bands=[1], runtime="onnx")
    assert a["parts"]["latents"] == b["parts"]["latents"]  # the same encoder and tables: the same latent bytes
    (tmp_path / "base.onnx.zip").rename(tmp_path / "elsewhere.zip")
    with pytest.raises(SarInputError, match="base.onnx.zip is not beside it"):
        load_bundle(out, runtime="onnx")
