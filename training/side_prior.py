"""Train a side prior (sar_ae_core.coding.side) on the frozen latents of a factorized model bundle.

    python -m training side-prior --model sarae-q2 --split-file training/splits/broad.json --physics-augment \
        --steps 20000 --time-limit 60 --out-dir runs/side/q2
    python -m training side-prior --resume runs/side/q2 --time-limit 30      # continue (same data, same schedule)
    python -m training side-export runs/side/q2 sar_ae_core/models_bundled/sarae-q2.side.npz

The model's encoder runs in eval mode without gradients; its symbols rint(m + g·(y − m)) are fixed integers, so
the loss is exactly their code length under the side prior's Gaussians plus the bits of z (uniform noise on z,
the standard proxy) — the rate of the codec 'hyper-range' at the same distortion as the model's own codec. The
quantization gain g of the codec's rate control is drawn log-uniformly from [--gain-min, --gain-max] per patch,
so one side prior serves every gain. Validation (gain 1, rounded z, the untouched validation patches) reports the
side prior's bits per pixel against the model's factorized tables on the same symbols.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sar_ae_core.coding import side as sp
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.entropy import FactorizedPrior
from sar_ae_core.nn.hyperprior import _gaussian_mass

LIKELIHOOD_BOUND = 1e-9


def _sequential(layers: list) -> nn.Sequential:
    mods = []
    for layer in layers:
        if layer[0] == "conv":
            _, ci, co, k, s = layer
            mods.append(nn.Conv2d(ci, co, k, stride=s, padding=k // 2))
        elif layer[0] == "lrelu":
            mods.append(nn.LeakyReLU(0.2))
        elif layer[0] == "shuffle":
            mods.append(nn.PixelShuffle(layer[1]))
    return nn.Sequential(*mods)


class SidePriorNet(nn.Module):
    """h_a, h_s (the layer lists of sar_ae_core.coding.side.architecture) and z's factorized prior."""

    def __init__(self, active: Sequence[int], modes: np.ndarray, hyper: int = 48, z_channels: int = 16):
        super().__init__()
        self.active = [int(a) for a in active]
        self.hyper, self.z_channels = int(hyper), int(z_channels)
        arch = sp.architecture(len(self.active), hyper, z_channels)
        self.h_a, self.h_s = _sequential(arch["h_a"]), _sequential(arch["h_s"])
        self.z_prior = FactorizedPrior(self.z_channels)
        self.register_buffer("modes", torch.as_tensor(np.asarray(modes, np.float64)[self.active],
                                                      dtype=torch.float32).view(1, -1, 1, 1))

    def config(self) -> dict:
        return {"active": self.active, "hyper": self.hyper, "z_channels": self.z_channels}

    def forward(self, y: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits of the symbols, bits of z) of latents y (B, C, h, w) at per-patch gains (B,)."""
        ya = y[:, self.active] - self.modes
        h, w = ya.shape[-2:]
        ph, pw = -h % sp.DOWN, -w % sp.DOWN
        z = self.h_a(F.pad(ya, (0, pw, 0, ph), mode="replicate") if ph or pw else ya)
        z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
        z_bits = -torch.log2(self.z_prior.likelihood(z_hat).clamp_min(LIKELIHOOD_BOUND)).sum()
        p = self.h_s(z_hat)[..., :h, :w]
        mean, s = p.chunk(2, dim=1)
        scale = F.softplus(s).clamp(sp.SCALE_MIN, sp.SCALE_MAX)
        g = gain.view(-1, 1, 1, 1)
        q = torch.round(self.modes + g * ya)  # the codec's symbols (fixed integers)
        mu = self.modes + g * mean
        sig = (g * scale).clamp(sp.SCALE_MIN, sp.SCALE_MAX)
        y_bits = -torch.log2(_gaussian_mass(q - mu, sig).clamp_min(LIKELIHOOD_BOUND)).sum()
        return y_bits, z_bits

    @torch.no_grad()
    def export(self, model_sha256: str) -> bytes:
        """The side prior of the model `model_sha256` as stored beside its bundle (float32 weights, integer
        tables)."""
        import copy

        z = copy.deepcopy(self.z_prior).cpu().float().eval().build_tables()
        weights = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()
                   if k.startswith(("h_a.", "h_s."))}
        return sp._npz({**self.config(), "model_sha256": model_sha256}, weights, z, sp.gaussian_tables(z.precision), sp.scale_table())


def _parser() -> argparse.ArgumentParser:
    from .cli import add_config_flags

    p = argparse.ArgumentParser(prog="python -m training side-prior", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="factorized model bundle (bundled name or path) whose latents are coded")
    p.add_argument("--gain-min", type=float, default=0.5, help="lowest quantization gain drawn (default 0.5)")
    p.add_argument("--gain-max", type=float, default=2.0, help="highest quantization gain drawn (default 2.0)")
    p.add_argument("--hyper-channels", type=int, default=48, help="width of h_a / h_s (default 48)")
    p.add_argument("--z-channels", type=int, default=16, help="side-information channels (default 16)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_config_flags(p)
    return p


def cmd_side_prior(argv: Sequence[str]) -> int:
    from .cli import config_from_args

    args = _parser().parse_args(argv)
    resume = bool(args.resume)
    if resume:
        run_dir = Path(args.resume)
        saved = run_dir / "side_config.json"
        if not saved.is_file():
            raise SarInputError(run_dir, "is not a side-prior run folder (no side_config.json)")
        limit = args.run__time_limit_min
        args = _parser().parse_args(json.loads(saved.read_text(encoding="utf-8"))["argv"])
        if limit is not None:
            args.run__time_limit_min = limit
        argv_saved = json.loads(saved.read_text(encoding="utf-8"))["argv"]
    else:
        if not args.model:
            raise SarInputError(None, "--model is required (the factorized bundle whose latents are coded)")
        argv_saved = list(argv)
    if not 0.05 <= args.gain_min <= args.gain_max <= 16:
        raise SarInputError(None, f"--gain-min/--gain-max must satisfy 0.05 <= min <= max <= 16 "
                                  f"(got {args.gain_min}, {args.gain_max})")
    cfg = config_from_args(args)
    train_side_prior(cfg, args, argv_saved, resume=resume)
    return 0


def train_side_prior(cfg, args, argv_saved: list, resume: bool = False) -> dict:
    from sar_ae_core.nn.model_io import load_bundle

    from .data import prepare_data

    run_dir = Path(cfg.run.out_dir)
    bundle = load_bundle(args.model, runtime="torch")
    if bundle.tables is None or getattr(bundle.tables, "kind", "factorized") != "factorized":
        raise SarInputError(bundle.path, "a side prior needs a model with a factorized entropy model")
    inactive = bundle.tables.inactive()
    if not inactive.any():
        raise SarInputError(bundle.path, "a side prior codes the active channels of a model that has inactive ones")
    if not resume and (run_dir / "last.pt").exists():
        raise SarInputError(run_dir, "already holds a side-prior run (--resume it, or choose another --out-dir)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "side_config.json").write_text(json.dumps({"argv": argv_saved, "model": bundle.name,
                                                          "model_sha256": bundle.sha256}, indent=1),
                                              encoding="utf-8")
    torch.manual_seed(cfg.run.seed)
    data = prepare_data(cfg.data, scaling=bundle.scaling)
    ae = bundle.model.float().eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    active = np.nonzero(~inactive)[0]
    net = SidePriorNet(active, bundle.tables.modes(), args.hyper_channels, args.z_channels)
    density = list(net.z_prior.parameters())
    dense_ids = {id(p) for p in density}
    opt = torch.optim.Adam([{"params": [p for p in net.parameters() if id(p) not in dense_ids]},
                            {"params": density, "lr": cfg.optim.lr * 10}], lr=cfg.optim.lr)
    total = int(cfg.optim.steps or 10000)
    warm = min(int(cfg.optim.warmup_steps), total // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, warm)) * (
        cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total))))
    step, best, train_time = 0, math.inf, 0.0
    if resume:
        ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
        if ck["model_sha256"] != bundle.sha256:
            raise SarInputError(run_dir, "was trained on another model's latents")
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, best, train_time = int(ck["step"]), float(ck["best"]), float(ck["train_time"])
        torch.set_rng_state(ck["rng"])
    val_every = int(cfg.run.val_interval or 1000)
    log_path = run_dir / "metrics.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "split", "bpp", "bpp_factorized", "z_bpp", "lr", "elapsed_s"])
    lg_lo, lg_hi = math.log(args.gain_min), math.log(args.gain_max)
    batch = int(cfg.optim.batch_size)
    t_start = time.perf_counter()

    def save(name: str, val: Optional[dict]) -> None:
        payload = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                   "best": best, "train_time": train_time, "rng": torch.get_rng_state(), "val": val,
                   "config": net.config(), "model": bundle.name, "model_sha256": bundle.sha256}
        tmp = run_dir / (name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, run_dir / name)

    stopped = None
    n = len(data.train)
    acc, acc_n = 0.0, 0
    while step < total and stopped is None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.run.seed * 1000 + step // max(1, n // batch)))
        for i in range(0, n - batch + 1, batch):
            t0 = time.perf_counter()
            x = torch.stack([data.train[int(j)]["image"] for j in perm[i:i + batch]])
            with torch.no_grad():
                y = ae.encode(x).float()
            gain = torch.exp(torch.empty(x.shape[0]).uniform_(lg_lo, lg_hi))
            yb, zb = net(y, gain)
            loss = (yb + zb) / (x.shape[0] * x.shape[-2] * x.shape[-1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            train_time += time.perf_counter() - t0
            acc, acc_n = acc + loss.item(), acc_n + 1
            if step % int(cfg.run.log_interval) == 0:
                writer.writerow([step, "train", f"{acc / acc_n:.5f}", "", "", f"{sched.get_last_lr()[0]:.3e}",
                                 f"{train_time:.1f}"])
                log.flush()
                acc, acc_n = 0.0, 0
            if cfg.run.time_limit_min and time.perf_counter() - t_start > 60 * cfg.run.time_limit_min:
                stopped = f"time limit of {cfg.run.time_limit_min:g} min reached"
            if step % val_every == 0 or step >= total or stopped:
                val = validate(net, ae, bundle, data.val, batch)
                writer.writerow([step, "val", f"{val['bpp']:.5f}", f"{val['bpp_factorized']:.5f}",
                                 f"{val['z_bpp']:.5f}", f"{sched.get_last_lr()[0]:.3e}", f"{train_time:.1f}"])
                log.flush()
                print(f"step {step}/{total}: validation {val['bpp']:.4f} bpp (z {val['z_bpp']:.4f}) against "
                      f"{val['bpp_factorized']:.4f} with the factorized tables ({val['saving'] * 100:+.1f} %)",
                      flush=True)
                if val["bpp"] < best:
                    best = val["bpp"]
                    save("best.pt", val)
                save("last.pt", val)
            if step >= total or stopped:
                break
    log.close()
    print(f"{'stopped: ' + stopped if stopped else 'done'} at step {step}; best validation {best:.4f} bpp; "
          f"resume with --resume {run_dir}" if stopped else f"done at step {step}; best validation {best:.4f} bpp")
    return {"step": step, "best": best}


@torch.no_grad()
def validate(net: SidePriorNet, ae, bundle, patches, batch: int) -> dict:
    """Side-prior bits (rounded z, gain 1) and the model's factorized table bits of the same symbols, per pixel."""
    net.eval()
    tables = bundle.tables
    inactive = tables.inactive()
    y_bits = z_bits = f_bits = 0.0
    px = 0
    for i in range(0, len(patches), batch):
        x = torch.stack([patches[j]["image"] for j in range(i, min(i + batch, len(patches)))])
        y = ae.encode(x).float()
        a, b = net(y, torch.ones(x.shape[0]))
        y_bits, z_bits = y_bits + float(a), z_bits + float(b)
        q = np.rint(y.numpy()).astype(np.int64)
        for k in range(q.shape[0]):
            f_bits += sum(float(tables.symbol_bits(c, q[k, c]).sum()) for c in range(q.shape[1]) if not inactive[c])
        px += x.shape[0] * x.shape[-2] * x.shape[-1]
    net.train()
    bpp, fb = (y_bits + z_bits) / px, f_bits / px
    return {"bpp": bpp, "z_bpp": z_bits / px, "bpp_factorized": fb, "saving": 1 - bpp / fb, "patches": len(patches)}


def cmd_side_export(argv: Sequence[str]) -> int:
    from sar_ae_core.io.raster import AtomicOutput

    p = argparse.ArgumentParser(prog="python -m training side-export",
                                description="Write the side prior of a side-prior run (its best.pt) beside its "
                                            "model bundle: OUT must be NAME.side.npz for the bundle NAME.pt.")
    p.add_argument("run", metavar="RUN_DIR|CKPT", help="side-prior run folder (its best.pt) or checkpoint")
    p.add_argument("out", metavar="OUT.side.npz")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = p.parse_args(argv)
    src = Path(args.run)
    ck_path = src / "best.pt" if src.is_dir() else src
    if not ck_path.is_file():
        raise SarInputError(ck_path, "no such side-prior checkpoint")
    if not str(args.out).endswith(sp.SUFFIX):
        raise SarInputError(args.out, f"a side prior is found beside its bundle by the suffix {sp.SUFFIX}")
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    net = SidePriorNet(cfg["active"], np.zeros(max(cfg["active"]) + 1), cfg["hyper"], cfg["z_channels"])
    net.load_state_dict(ck["net"])
    data = net.export(ck["model_sha256"])
    with AtomicOutput(args.out, overwrite=args.overwrite, suffix=".npz") as out:
        Path(out.tmp).write_bytes(data)
    val = ck.get("val") or {}
    print(f"wrote {args.out} ({len(data)} bytes) for model {ck['model']} ({ck['model_sha256'][:12]}), step "
          f"{ck['step']}: validation {val.get('bpp', float('nan')):.4f} bpp against "
          f"{val.get('bpp_factorized', float('nan')):.4f} factorized")
    return 0
