"""The training loop: one process, or several under `torchrun` (DistributedDataParallel).

Order of work: validate the configuration, resolve and open every raster, split by scene, fit the
scaling on the training split, index the patches - all before the first step, so a bad setting stops
the run at once with a one-line message (SarInputError, exit code 2).

Then: AdamW with linear warm-up + cosine decay (per step), optional gradient clipping, optional
quantisation-aware latent noise (training.quant), validation every `val_interval` steps and at the end
(rank 0 only), `last.pt` after every validation and `best.pt` whenever the validation loss improves,
`metrics.csv`, `curves.png`, TensorBoard when installed, and `summary.json` at the end (metrics of
`best.pt` on the validation and test splits).

Resuming (`--resume RUN_DIR|CKPT`) restores model, optimizer, scheduler, step, random states and the
position in the epoch, so the run continues with exactly the same learning rate and - with
`workers 0` - the same batches and noise as an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from sar_ae_core.nn.entropy import rate_bits
from sar_ae_core.errors import SarInputError
from training.losses import CombinedLoss
from sar_ae_core.nn.model_io import select_device, weights_sha256
from sar_ae_core.nn.models import ModelConfig, build_model
from sar_ae_core.scaling import ScalingParams

from .checkpoint import (BEST, LAST, code_version, lineage_files, load_checkpoint, load_init, rng_state,
                         save_checkpoint, set_rng_state)
from .config import TrainConfig, apply_overrides, validate
from .data import PreparedData, prepare_data
from .evaluate import evaluate, rd_loss
from .quant import QuantAwareAutoencoder

CSV_COLUMNS = ["step", "epoch", "split", "lr", "loss", "loss_mse", "loss_ssim", "loss_ms_ssim", "loss_gradient",
               "bpp", "bpp_coded", "grad_norm", "psnr", "ssim", "enl_ratio", "epi", "psnr_float", "patches", "elapsed_s"]
METRIC_KEYS = ("loss", "psnr", "ssim", "enl_ratio", "epi", "psnr_float")
# Settings that may change when resuming (they do not alter what is computed at each step).
RESUMABLE_OVERRIDES = {("run", "device"), ("data", "workers"), ("run", "stop_at_step"), ("run", "time_limit_min"),
                       ("run", "tensorboard"), ("run", "log_interval")}


# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------
#: with DataLoader workers, one loader (one start of the workers) covers whole epochs of at least this many steps
LOADER_STEPS = 2000


class WarmupCosine:
    """LR factor for step k (0-based): linear warm-up to 1 over `warmup` steps, then cosine to `min_ratio`.

    A class (not a lambda) so LambdaLR.state_dict() stores its fields and a resumed run has the same
    schedule.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = int(warmup), int(total), float(min_ratio)

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / (self.warmup + 1)
        progress = min(1.0, (k - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------
@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_request: str) -> tuple[Dist, torch.device]:
    """Device from --device (model_io.select_device); under torchrun, join the process group
    (nccl on CUDA, gloo on CPU) and use cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    device = select_device(device_request)
    if device.type == "cuda":
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# Logging helpers
# --------------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.csv (rank 0), plus TensorBoard when importable."""

    def __init__(self, run_dir: Path, resume_step: Optional[int], tensorboard: bool, log: Callable):
        self.path = run_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            # drop rows written after the checkpoint we resume from (they will be written again)
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
            self._write(rows, "w")
        else:
            self._write([], "w")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log("tensorboard: not installed, logging to metrics.csv and curves.png only")

    def _write(self, rows: list[dict], mode: str) -> None:
        with open(self.path, mode, newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            if mode == "w":
                w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k, "")) for k in CSV_COLUMNS})

    def row(self, **values: Any) -> None:
        self._write([values], "a")
        if self.tb is not None:
            split, step = values["split"], int(values["step"])
            for k, v in values.items():
                if k not in ("step", "epoch", "split", "elapsed_s", "patches") and isinstance(v, (int, float)) \
                        and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) and not math.isinf(v) else f"{v:.8g}"
    return v


def _fmt_metrics(m: dict) -> str:
    bpp = f" | {m['bpp']:.3f} bpp (estimated)" if math.isfinite(m.get("bpp", math.nan)) else ""
    if math.isfinite(m.get("bpp_coded", math.nan)):
        bpp += f", {m['bpp_coded']:.3f} range-coded"
    return (f"loss {m['loss']:.5f} | PSNR {m['psnr']:.2f} dB (float latent {m['psnr_float']:.2f}) | "
            f"SSIM {m['ssim']:.4f} | ENL ratio {m['enl_ratio']:.3f} | EPI {m['epi']:.4f}{bpp} | "
            f"{m['patches']} patches")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def plan_steps(n_patches: int, world: int, batch: int, steps: Optional[int], epochs: Optional[int]) -> tuple[int, int]:
    """(steps per epoch, total steps): an epoch is one pass over the training patches by all processes."""
    per_rank = math.ceil(n_patches / world)
    spe = per_rank // batch if per_rank >= batch else 1
    candidates = [s for s in (steps, epochs * spe if epochs else None) if s]
    return spe, min(candidates)


def epoch_batches(dataset, d: Dist, batch: int, spe: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's batches of one epoch (DistributedSampler order: shuffled by seed + epoch)."""
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    if len(idx) < batch:
        return [idx]
    return [idx[i * batch:(i + 1) * batch] for i in range(spe)]


def describe_model(ae) -> dict:
    c = ae.config
    return {"parameters": ae.parameter_count(), "nominal_compression_ratio": ae.nominal_compression_ratio,
            "downsample_factor": ae.downsample_factor, "model_config": c.to_dict()}


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False, check_only: bool = False,
          resume_overrides: Optional[dict] = None, quiet: bool = False) -> dict:
    """Run (or continue) one training run; returns the summary (rank 0) or {} (other ranks)."""
    trainer = Trainer(cfg, resume, overwrite, check_only, resume_overrides, quiet)
    plan = trainer.prepare()
    if check_only:
        return plan
    trainer.build()
    trainer.fit()
    return trainer.finish()


class Trainer:
    """One training run, in the order it happens: `prepare` (configuration, resume, data, plan — every check before
    any training), `build` (model, optimizer, schedule, initial or resumed state, run folder), `fit` (the loop with
    logging, validation, checkpoints, time limit) and `finish` (best.pt on validation and test, summary.json)."""

    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False,
                 check_only: bool = False, resume_overrides: Optional[dict] = None, quiet: bool = False):
        self.ckpt = None
        if resume:
            self.ckpt = ckpt = load_checkpoint(resume, prefer=LAST)
            saved = TrainConfig.from_dict(ckpt["config"], source=ckpt["path"])
            if resume_overrides:
                bad = [f"{s}.{k}" for s, vals in resume_overrides.items() for k in vals
                       if (s, k) not in RESUMABLE_OVERRIDES and getattr(getattr(saved, s), k) != vals[k]]
                if bad:
                    allowed = ", ".join(sorted(f"{s}.{k}" for s, k in RESUMABLE_OVERRIDES))
                    raise SarInputError(ckpt["path"], f"cannot change {', '.join(bad)} when resuming (the run "
                                                      f"continues with its saved configuration; only {allowed} may "
                                                      f"change)")
            # a stop point belongs to the session that set it; the continued run goes to the end unless told again
            saved.run.stop_at_step, saved.run.time_limit_min = None, None
            if resume_overrides:
                saved = apply_overrides(saved, resume_overrides)
            cfg = saved
            cfg.run.out_dir = str(Path(ckpt["path"]).parent)
        validate(cfg)
        self.cfg, self.resume, self.overwrite, self.check_only, self.quiet = cfg, resume, overwrite, check_only, quiet
        self.d, self.device = setup_distributed(cfg.run.device)
        self.verbose = self.d.main and not quiet
        self.cuda = self.device.type == "cuda"
        self.run_dir = Path(cfg.run.out_dir)
        if not resume and not check_only and (self.run_dir / LAST).exists() and not overwrite:
            raise SarInputError(self.run_dir, f"already holds a training run ({LAST}); continue it with --resume "
                                              f"{self.run_dir} or start again with --overwrite")

    # -- feedback -------------------------------------------------------------------------------------
    def log(self, *args, **kwargs) -> None:
        if self.verbose:
            print(*args, **kwargs, flush=True)

    def say(self, msg: str) -> None:
        """A line that does not break the progress bar."""
        if self.verbose:
            from tqdm import tqdm as _tqdm

            _tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()

    # -- data (all checks before any training) --------------------------------------------------------
    def prepare(self) -> dict:
        cfg, ckpt, d = self.cfg, self.ckpt, self.d
        t0 = time.perf_counter()
        scaling = ScalingParams.from_dict(ckpt["scaling"]) if ckpt else None
        self.init = None
        # the training files of every model this run's weights come from (kept through resumes, into the bundle)
        self.lineage = list(ckpt.get("lineage_files") or []) if ckpt else []
        if cfg.run.init_from and not ckpt:
            self.init = init = load_init(cfg.run.init_from)
            self.lineage = lineage_files(init)
            ignore = {"decoder": {"decoder"}, "encoder": {"base_channels"}}.get(cfg.run.train_only, set())
            if cfg.run.train_only == "all":  # another entropy model: the transforms are copied, the prior starts fresh
                ignore = ignore | {"entropy_model", "hyper"}
            if cfg.run.train_only == "encoder" and cfg.model.decoder != "light" and \
                    cfg.model.base_channels != init["model_config"].get("base_channels"):
                raise SarInputError(init["path"], "--train-only encoder with other --base-channels needs "
                                                  "--decoder light (the mirrored decoder has the encoder's widths)")
            mine = {k: v for k, v in cfg.model.to_dict().items() if k not in ignore}
            theirs = {k: v for k, v in {**ModelConfig().to_dict(), **init["model_config"]}.items() if k not in ignore}
            if theirs != mine:
                raise SarInputError(init["path"], f"--init-from: its model {init['model_config']} differs from "
                                                  f"this run's {cfg.model.to_dict()}")
            s0, dc = init["scaling"], cfg.data
            if (s0.get("clip_method"), s0.get("clip_low"), s0.get("clip_high")) == (dc.clip_method, dc.clip_low,
                                                                                    dc.clip_high):
                scaling = ScalingParams.from_dict(s0)  # the weights were trained on this dB range
            # else: different clip settings - the range is fitted again on the training split and the model adapts
        self.data = data = prepare_data(cfg.data, scaling=scaling)
        if ckpt:
            saved_files = ckpt["data"]["files"]
            if {k: sorted(v) for k, v in saved_files.items()} != {k: sorted(v) for k, v in data.splits.items()}:
                raise SarInputError(ckpt["path"], "the data changed since this checkpoint (files per split "
                                                  "differ); start a new run instead of resuming")
        self.spe, self.total = plan_steps(len(data.train), d.world, cfg.optim.batch_size, cfg.optim.steps,
                                          cfg.optim.epochs)
        self.warmup = min(cfg.optim.warmup_steps, self.total // 5)
        self.val_interval = cfg.run.val_interval or self.spe
        _log_plan(self.log, cfg, data, d, self.device, self.spe, self.total, self.warmup, self.val_interval,
                  time.perf_counter() - t0)
        return {"data": data.describe(), "steps_per_epoch": self.spe, "total_steps": self.total}

    # -- model, optimizer, schedule, state --------------------------------------------------------------
    def build(self) -> None:
        cfg, ckpt, d, device, cuda = self.cfg, self.ckpt, self.d, self.device, self.cuda
        torch.manual_seed(cfg.run.seed)  # same initial weights in every process
        ae = build_model(cfg.model)
        if cfg.run.latent_init_gain != 1.0:
            last = [mod for mod in ae.encoder.levels.modules() if isinstance(mod, torch.nn.Conv2d)][-1]
            with torch.no_grad():
                last.weight.mul_(cfg.run.latent_init_gain)
                if last.bias is not None:
                    last.bias.mul_(cfg.run.latent_init_gain)
        if cuda:
            torch.backends.cudnn.benchmark = True
            ae = ae.to(device, memory_format=torch.channels_last)
        else:
            ae = ae.to(device)
        frozen = cfg.run.train_only == "decoder"
        net: torch.nn.Module = QuantAwareAutoencoder(ae, cfg.run.latent_noise, cfg.run.latent_bits,
                                                     decoder_only=frozen,
                                                     encoder_only=cfg.run.train_only == "encoder",
                                                     decoder_gains=None if cfg.run.decoder_gains is None
                                                     else tuple(float(v) for v in cfg.run.decoder_gains),
                                                     rounded_decoder=cfg.run.decoder_latents == "rounded")
        if d.enabled:
            if cuda:
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
                ae = net.ae
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
        if frozen:  # only the decoder learns; the encoder and entropy model stay those of --init-from
            for name, p in ae.named_parameters():
                p.requires_grad_(name.startswith("decoder."))
        if cfg.run.train_only == "encoder":  # only the encoder learns, against the frozen decoder and prior
            for name, p in ae.named_parameters():
                p.requires_grad_(name.startswith("encoder."))
        params: list = [p for p in ae.parameters() if p.requires_grad]
        if cfg.run.train_only == "all" and getattr(ae, "entropy", None) is not None and \
                cfg.optim.prior_lr_mult != 1.0:
            density = getattr(ae.entropy, "z_prior", ae.entropy)  # hyperprior: only its factorized density
            prior_ids = {id(p) for p in density.parameters()}
            params = [{"params": [p for p in ae.parameters() if id(p) not in prior_ids]},
                      {"params": list(density.parameters()), "lr": cfg.optim.lr * cfg.optim.prior_lr_mult}]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           WarmupCosine(self.warmup, self.total,
                                                                        cfg.optim.min_lr_ratio))
        self.loss_fn = CombinedLoss(cfg.loss)
        self.ae, self.net = ae, net
        self.step, self.train_time, self.best_loss, self.best_step, self.last_val = 0, 0.0, math.inf, 0, None
        if self.init is not None:
            self._load_init(frozen)
        torch.manual_seed(cfg.run.seed + 1 + d.rank)  # augmentation / noise differ between processes
        if ckpt:
            self._load_resume()
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.overwrite and not ckpt:  # nothing of the previous run may be mistaken for this one's
                for old in [LAST, BEST, "summary.json", "curves.png", "results.json", *[p.name for p in
                            self.run_dir.glob("weights_rank*.sha256")]]:
                    (self.run_dir / old).unlink(missing_ok=True)
            (self.run_dir / "config.json").write_text(cfg.to_json(), encoding="utf-8")
        _barrier(d)
        self.mlog = MetricsLog(self.run_dir, self.step if ckpt else None, cfg.run.tensorboard, self.log) \
            if d.main else None
        self._last_plot = time.perf_counter()

    def _load_init(self, frozen: bool) -> None:
        cfg, init = self.cfg, self.init
        state = init["state_dict"]
        if frozen and init["model_config"].get("decoder", "mirror") != cfg.model.decoder:
            # a different decoder starts fresh; everything else is copied
            state = {**{k: v for k, v in self.ae.state_dict().items() if k.startswith("decoder.")},
                     **{k: v for k, v in state.items() if not k.startswith("decoder.")}}
        if (init["model_config"].get("entropy_model", "none"), init["model_config"].get("hyper", "full")) != \
                (cfg.model.entropy_model, cfg.model.hyper):
            state = {**{k: v for k, v in self.ae.state_dict().items() if k.startswith("entropy.")},
                     **{k: v for k, v in state.items() if not k.startswith("entropy.")}}
        if cfg.run.train_only == "encoder":  # a narrower encoder starts from the first channels of the given one
            own = self.ae.state_dict()
            state = {k: (v[tuple(slice(0, n) for n in own[k].shape)].clone()
                         if k.startswith("encoder.") and own[k].shape != v.shape else v) for k, v in state.items()}
        if cfg.run.init_decoder_from:
            other = load_init(cfg.run.init_decoder_from)
            self.lineage = sorted(set(self.lineage) | set(lineage_files(other)))
            mine = {k: v for k, v in cfg.model.to_dict().items() if k in ("decoder", "latent_channels", "stages",
                                                                          "in_channels", "variant", "base_channels")}
            theirs = {k: v for k, v in {**ModelConfig().to_dict(), **other["model_config"]}.items() if k in mine}
            if theirs != mine:
                raise SarInputError(other["path"], f"--init-decoder-from: its decoder {theirs} differs from {mine}")
            state = {**state, **{k: v for k, v in other["state_dict"].items() if k.startswith("decoder.")}}
        self.ae.load_state_dict(state)
        self.log(f"init       : weights of {init['path']} (step {init['step']})" +
                 (f", decoder of {cfg.run.init_decoder_from}" if cfg.run.init_decoder_from else ""))

    def _load_resume(self) -> None:
        ckpt, d = self.ckpt, self.d
        self.ae.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.train_time = int(ckpt["step"]), float(ckpt.get("train_time_s", 0.0))
        self.best_loss, self.best_step = float(ckpt.get("best_val_loss", math.inf)), int(ckpt.get("best_step", 0))
        self.last_val = ckpt.get("val_metrics")
        rng = ckpt["rng"]
        if d.enabled and ckpt.get("rng_per_rank"):
            rng = ckpt["rng_per_rank"][d.rank] if d.rank < len(ckpt["rng_per_rank"]) else rng
        set_rng_state(rng)
        self.log(f"resuming   : {ckpt['path']} at step {self.step}/{self.total} (epoch {self.step // self.spe}), "
                 f"lr {self.scheduler.get_last_lr()[0]:.3e}")
        if self.step >= self.total:
            self.log("the run is already complete")

    # -- checkpoints ----------------------------------------------------------------------------------
    def payload(self, current_step: int, rng: dict, rng_all: Optional[list], val: Optional[dict]) -> dict:
        ae, data, cfg = self.ae, self.data, self.cfg
        return {
            "model_config": ae.config.to_dict(),
            "state_dict": {k: v.detach().to("cpu").clone() for k, v in ae.state_dict().items()},
            "scaling": data.scaling.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": current_step, "epoch": current_step // self.spe, "steps_per_epoch": self.spe,
            "total_steps": self.total,
            "rng": rng, "rng_per_rank": rng_all,
            "val_metrics": val, "best_val_loss": self.best_loss, "best_step": self.best_step,
            "data": data.describe(), "code": code_version(), "config": cfg.to_dict(),
            "train_time_s": self.train_time, "device": str(self.device), "world_size": self.d.world,
            "lineage_files": list(self.lineage),
        }

    def gather_rng(self) -> tuple[dict, Optional[list]]:
        mine = rng_state()
        if not self.d.enabled:
            return mine, None
        everyone: list = [None] * self.d.world
        dist.all_gather_object(everyone, mine)
        return mine, everyone

    def validate_and_save(self, current_step: int, rng: dict, rng_all: Optional[list]) -> Optional[dict]:
        if not self.d.main:
            return None
        cfg, cuda = self.cfg, self.cuda
        val = evaluate(self.ae, self.data.val, self.data.scaling, self.loss_fn, self.device, bits=cfg.run.latent_bits,
                       batch_size=cfg.run.val_batch_size, max_patches=cfg.run.val_max_patches,
                       autocast=cuda, channels_last=cuda, rate_weight=cfg.run.rate_weight, lmbda=cfg.run.lmbda)
        self.last_val = val
        improved = val["loss"] < self.best_loss
        if improved:
            self.best_loss, self.best_step = val["loss"], current_step
        self.mlog.row(step=current_step, epoch=current_step // self.spe, split="val", elapsed_s=self.train_time,
                      **val)
        self.say(f"val @ {current_step}: {_fmt_metrics(val)}{'  (best)' if improved else ''}")
        ckpt_payload = self.payload(current_step, rng, rng_all, val)
        save_checkpoint(self.run_dir / LAST, ckpt_payload)
        if improved:
            save_checkpoint(self.run_dir / BEST, ckpt_payload)
        if time.perf_counter() - self._last_plot > 60:  # a figure costs about a second: at most once a minute
            _try_plot(self.run_dir, cfg)
            self._last_plot = time.perf_counter()
        return val

    # -- loop -----------------------------------------------------------------------------------------
    def fit(self) -> None:
        from tqdm import tqdm

        cfg, d, cuda, data, spe, total = self.cfg, self.d, self.cuda, self.data, self.spe, self.total
        ae, net, optimizer, scheduler, loss_fn, device = (self.ae, self.net, self.optimizer, self.scheduler,
                                                          self.loss_fn, self.device)
        stop_at = min(total, cfg.run.stop_at_step or total)
        session_start = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not d.main or self.quiet,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        acc = torch.zeros(7, dtype=torch.float64)  # loss, mse, structural, gradient, grad norm, bpp, count
        structural = cfg.loss.structural
        has_prior = getattr(ae, "entropy", None) is not None
        stopped_reason = None
        net.train()
        try:
            while self.step < stop_at and stopped_reason is None:
                epoch, offset = self.step // spe, self.step % spe
                # with worker processes one loader spans several epochs: on a small corpus at a large batch an epoch
                # is a few dozen steps, and starting the workers for each would cost more than the steps (without
                # workers, one epoch per loader as always)
                span = max(1, math.ceil(LOADER_STEPS / spe)) if cfg.data.workers else 1
                epochs = range(epoch, max(epoch + 1, min(epoch + span, math.ceil(stop_at / spe))))
                batches = [b for e in epochs
                           for b in epoch_batches(data.train, d, cfg.optim.batch_size, spe, cfg.run.seed, e)][offset:]
                loader = DataLoader(data.train, batch_sampler=batches, num_workers=cfg.data.workers,
                                    pin_memory=cuda,
                                    generator=torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch))
                for batch in loader:
                    t_step = time.perf_counter()
                    x = batch["image"].to(device, non_blocking=True)
                    m = batch["mask"].to(device, non_blocking=True)
                    if cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    lr = scheduler.get_last_lr()[0]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                        x_hat, likelihoods = net(x)
                    loss, comps = loss_fn(x_hat.float(), x.float(), m)
                    if likelihoods is not None:  # rate-distortion: estimated bits per PIXEL from the likelihoods
                        bpp = rate_bits(likelihoods) / (x.shape[0] * x.shape[-2] * x.shape[-1])
                        loss = rd_loss(loss, bpp, cfg.run.rate_weight, cfg.run.lmbda)
                        comps["bpp"] = bpp.item()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    gnorm = torch.nn.utils.clip_grad_norm_(ae.parameters(), cfg.optim.grad_clip
                                                           if cfg.optim.grad_clip > 0 else math.inf)
                    optimizer.step()
                    scheduler.step()
                    self.step += 1
                    step = self.step
                    acc += torch.tensor([loss.item(), comps.get("mse", 0.0), comps.get(structural, 0.0),
                                         comps.get("gradient", 0.0),
                                         float(gnorm), comps.get("bpp", 0.0), 1.0], dtype=torch.float64)
                    self.train_time += time.perf_counter() - t_step
                    bar.update(1)
                    if step % cfg.run.log_interval == 0 or step == stop_at:
                        if d.enabled:
                            dist.all_reduce(acc)
                        n = acc[6].item()
                        if d.main:
                            row = {"step": step, "epoch": (step - 1) // spe, "split": "train", "lr": lr,
                                   "loss": acc[0].item() / n, "loss_mse": acc[1].item() / n,
                                   f"loss_{structural}": acc[2].item() / n, "grad_norm": acc[4].item() / n,
                                   "elapsed_s": self.train_time}
                            if cfg.loss.gradient_weight > 0:
                                row["loss_gradient"] = acc[3].item() / n
                            if has_prior:
                                row["bpp"] = acc[5].item() / n
                            self.mlog.row(**row)
                            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                        acc.zero_()
                    if cfg.run.time_limit_min and step < stop_at:
                        over = torch.tensor([float(time.perf_counter() - session_start >
                                                   60 * cfg.run.time_limit_min)])
                        if d.enabled:
                            dist.all_reduce(over, op=dist.ReduceOp.MAX)
                        if over.item() > 0:
                            stopped_reason = f"time limit of {cfg.run.time_limit_min:g} min reached"
                    if step % self.val_interval == 0 or step == stop_at or stopped_reason:
                        rng, rng_all = self.gather_rng()  # the state right after this step, before validation
                        t_val = time.perf_counter()
                        self.validate_and_save(step, rng, rng_all)
                        self.train_time += time.perf_counter() - t_val
                        _barrier(d)
                    if step >= stop_at or stopped_reason:
                        break
        except KeyboardInterrupt:
            bar.close()
            self.log(f"\ninterrupted: the last checkpoint ({self.run_dir / LAST}) can be resumed with --resume "
                     f"{self.run_dir}")
            raise
        bar.close()
        if self.step < total and stopped_reason is None:
            stopped_reason = f"stopped at step {self.step} (--stop-at)"
        self.stopped_reason = stopped_reason

    # -- wrap up --------------------------------------------------------------------------------------
    def finish(self) -> dict:
        d = self.d
        if d.enabled:
            params = {k: v for k, v in self.ae.named_parameters()}
            (self.run_dir / f"weights_rank{d.rank}.sha256").write_text(weights_sha256(params) + "\n",
                                                                       encoding="utf-8")
        summary: dict = {}
        if d.main:
            summary = _finish(self.cfg, self.data, self.ae, self.loss_fn, self.device, self.run_dir, self.step,
                              self.total, self.train_time, self.best_step, self.last_val, self.stopped_reason, d,
                              self.log)
            self.mlog.close()
        _barrier(d)
        return summary


def _try_plot(run_dir: Path, cfg: TrainConfig) -> None:
    from .plots import plot_curves

    try:
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                    title=f"{cfg.model.variant} latent {cfg.model.latent_channels} ({run_dir.name})")
    except Exception as exc:  # noqa: BLE001 - a failed figure must never stop training
        print(f"warning: could not draw curves.png ({exc})", file=sys.stderr)


def _finish(cfg, data: PreparedData, ae, loss_fn, device, run_dir: Path, step: int, total: int, train_time: float,
            best_step: int, last_val: Optional[dict], stopped_reason: Optional[str], d: Dist, log) -> dict:
    """summary.json: metrics of best.pt on validation and test (finished runs), run facts, data."""
    import json

    finished = stopped_reason is None
    best_val, test = last_val, None
    if not finished and (run_dir / BEST).exists():  # a stopped run still reports best.pt's validation, not the last
        best_val = load_checkpoint(run_dir / BEST).get("val_metrics") or last_val
    if finished and (run_dir / BEST).exists():
        best = load_checkpoint(run_dir / BEST)
        ae.load_state_dict(best["state_dict"])
        best_val = best["val_metrics"]
        test_ds = data.test()
        if test_ds is not None and len(test_ds):
            test = evaluate(ae, test_ds, data.scaling, loss_fn, device, bits=cfg.run.latent_bits,
                            batch_size=cfg.run.val_batch_size, autocast=device.type == "cuda",
                            channels_last=device.type == "cuda", rate_weight=cfg.run.rate_weight,
                            lmbda=cfg.run.lmbda)
            log(f"test (best.pt, step {best_step}): {_fmt_metrics(test)}")
    c = ae.config
    summary = {
        "status": "finished" if finished else "stopped", "stopped_reason": stopped_reason,
        "step": step, "total_steps": total, "best_step": best_step,
        "train_time_s": round(train_time, 2), "steps_per_s": round(step / train_time, 3) if train_time else None,
        "device": str(device), "world_size": d.world, "torch_threads": torch.get_num_threads(),
        **describe_model(ae),
        "bits_per_pixel_uncoded": c.latent_channels * cfg.run.latent_bits / 4 ** c.stages,
        "latent_noise": cfg.run.latent_noise, "latent_bits": cfg.run.latent_bits,
        "entropy_model": c.to_dict().get("entropy_model", "none"), "rate_weight": cfg.run.rate_weight,
        "lmbda": cfg.run.lmbda, "init_from": cfg.run.init_from,
        "val": best_val, "test": test, "last_val": last_val,
        "data": data.describe(), "scaling": data.scaling.to_dict(), "config": cfg.to_dict(), "code": code_version(),
    }
    with open(run_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=str)
    _try_plot(run_dir, cfg)
    log(f"{'finished' if finished else stopped_reason}: step {step}/{total}, {train_time / 60:.1f} min of training; "
        f"run folder {run_dir} (best.pt from step {best_step}, last.pt, metrics.csv, curves.png, summary.json)")
    if best_val:
        log(f"validation (best.pt): {_fmt_metrics(best_val)}")
    return summary


def _log_plan(log, cfg: TrainConfig, data: PreparedData, d: Dist, device, spe: int, total: int, warmup: int,
              val_interval: int, prep_s: float) -> None:
    s = data.scaling
    log(f"device     : {device}"
        + (f" ({torch.cuda.get_device_name(device)}), bf16 autocast, channels_last" if device.type == "cuda"
           else f" ({torch.get_num_threads()} threads)")
        + (f"; {d.world} processes, backend {dist.get_backend()}" if d.enabled else ""))
    for split in ("train", "val", "test"):
        names = [os.path.basename(p) for p in data.splits[split]]
        log(f"{split:<5} files: {len(names)}  {', '.join(names)}")
    log(f"scaling    : {s.clip_method} {s.clip_low:g}-{s.clip_high:g} on the training split -> "
        f"[{s.vmin_db:.2f}, {s.vmax_db:.2f}] dB ({s.pixels} px of {len(s.fitted_on)} file(s))")
    log(f"patches    : train {len(data.train)} ({data.train.size}px, stride {data.train.stride}, "
        f"{data.train.rejected} rejected), val {len(data.val)} ({data.val.rejected} rejected) "
        f"[{prep_s:.1f} s]")
    m = cfg.model
    if getattr(m, "entropy_model", "none") != "none":
        trade = (f"loss = {cfg.run.lmbda:g} x distortion + bpp" if cfg.run.lmbda is not None
                 else f"rate weight {cfg.run.rate_weight:g}")
        latent = (f"{m.entropy_model} entropy model (noise U(-1/2, 1/2)"
                  + (", the decoder on rounded latents" if cfg.run.decoder_latents == "rounded" else "")
                  + f", rounding at validation), {trade}")
        if cfg.run.init_from:
            latent += f"; weights from {cfg.run.init_from}"
    else:
        latent = f"latent noise {cfg.run.latent_noise} ({cfg.run.latent_bits} bits)"
    log(f"model      : {m.variant}{' + self-attention' if m.self_attention else ''}, base {m.base_channels}, "
        f"latent {m.latent_channels}, {m.stages} stages (nominal {4 ** m.stages / m.latent_channels:g}x); {latent}")
    log(f"schedule   : {total} steps ({spe} per epoch, batch {cfg.optim.batch_size} x {d.world}), lr "
        f"{cfg.optim.lr:g}, warm-up {warmup}, cosine to {cfg.optim.lr * cfg.optim.min_lr_ratio:.2g}, "
        f"grad clip {cfg.optim.grad_clip:g}, validation every {val_interval} steps")
