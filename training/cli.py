"""Command line of `python -m training` (exit 0 on success, 2 on bad input, 130 when interrupted)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.models import VARIANTS
from sar_ae_core.io.raster import UNIT_CHOICES
from sar_ae_core.scaling import CLIP_METHODS

from .config import DECODER_LATENTS, LATENT_NOISE, TrainConfig, apply_overrides, load_config_file

DEFAULTS = TrainConfig()

# flag, section, key, argparse kwargs, help
FLAGS: list[tuple[str, str, str, dict, str]] = [
    # data
    ("--data", "data", "paths", {"nargs": "+", "action": "extend", "metavar": "PATH"},
     "training rasters: files, folders, globs ('dir/*_db.tif', quote them) or @FILE listing one per line; "
     "repeatable. All files are split by SCENE into train/val/test"),
    ("--glob", "data", "glob", {}, "file patterns used inside folders"),
    ("--recursive", "data", "recursive", {"action": argparse.BooleanOptionalAction}, "search sub-folders too"),
    ("--units", "data", "units", {"choices": UNIT_CHOICES}, "units of the rasters (auto decides per file)"),
    ("--bands", "data", "bands", {}, "'all' or e.g. 1,2 (each band is a single-channel training image)"),
    ("--patch-size", "data", "patch_size", {"type": int}, "patch side in pixels (multiple of 2**stages; 128 is "
                                                          "fine on CPU)"),
    ("--stride", "data", "stride", {"type": int}, "step between training patches (default: patch size)"),
    ("--val-fraction", "data", "val_fraction", {"type": float}, "fraction of scenes for validation"),
    ("--test-fraction", "data", "test_fraction", {"type": float}, "fraction of scenes for the final test"),
    ("--split-seed", "data", "split_seed", {"type": int}, "seed of the scene-level split"),
    ("--clip-method", "data", "clip_method", {"choices": CLIP_METHODS},
     "how the dB clip range is fitted on the training split"),
    ("--clip-low", "data", "clip_low", {"type": float}, "low percentile / sigmas / fixed dB"),
    ("--clip-high", "data", "clip_high", {"type": float}, "high percentile / sigmas / fixed dB"),
    ("--min-std", "data", "min_std", {"type": float}, "patch filter: minimum std of scaled values"),
    ("--max-invalid-fraction", "data", "max_invalid_fraction", {"type": float},
     "patch filter: maximum fraction of invalid pixels"),
    ("--augment", "data", "augment", {"action": argparse.BooleanOptionalAction}, "random flips/rotations"),
    ("--split-file", "data", "split_file", {"metavar": "JSON"},
     "committed scene-level split (python -m training.corpus --write FILE; e.g. training/splits/broad.json): "
     "train/val/test files with product categories, instead of --data and the fractions"),
    ("--physics-augment", "data", "physics_augment", {"action": argparse.BooleanOptionalAction},
     "physics-aware augmentation of training patches: multilooking, speckle re-synthesis, dB gain, random dB "
     "window (training/augment.py)"),
    ("--workers", "data", "workers", {"type": int}, "DataLoader worker processes"),
    # model
    ("--variant", "model", "variant", {}, f"model variant: {', '.join(VARIANTS)}"),
    ("--latent-channels", "model", "latent_channels", {"type": int},
     "latent channels (nominal ratio = 4**stages / latent)"),
    ("--base-channels", "model", "base_channels", {"type": int}, "channels of the first level (doubling, max x8)"),
    ("--stages", "model", "stages", {"type": int}, "stride-2 levels (downsampling 2**stages)"),
    ("--self-attention", "model", "self_attention", {"action": argparse.BooleanOptionalAction},
     "self-attention at the bottleneck"),
    ("--decoder", "model", "decoder", {"choices": ("mirror", "light", "separable")},
     "synthesis transform: the encoder's mirror, the light 3x3-conv + PixelShuffle decoder (~2.3 kMAC/px), or the "
     "separable one (the light decoder's first level, then depthwise-separable residual blocks; ~2.5 kMAC/px)"),
    ("--entropy-model", "model", "entropy_model", {"choices": ("none", "factorized", "hyperprior")},
     "learned entropy model of the latent: 'factorized' trains a factorized prior with a rate term "
     "(see --lmbda) for the codec's factorized-range coder; 'hyperprior' a mean-scale hyperprior "
     "(side information, codec hyperprior-range)"),
    ("--hyper", "model", "hyper", {"choices": ("full", "light", "context")},
     "hyperprior's size: 'full' (64 channels, 3x3 head, ~2.2 kMAC/px more in the decoder), 'light' (32 channels, "
     "1x1 head, 0.18 kMAC/px) or 'context' (light h_s + a depthwise 3x3 before its head, h_a as full)"),
    # loss
    ("--mse-weight", "loss", "mse_weight", {"type": float}, "weight of MSE"),
    ("--ssim-weight", "loss", "ssim_weight", {"type": float}, "weight of the structural term (1 - SSIM)"),
    ("--structural", "loss", "structural", {"choices": ("ssim", "ms_ssim")}, "structural term: ssim or ms_ssim"),
    ("--gradient-weight", "loss", "gradient_weight", {"type": float}, "weight of the Sobel-gradient L1 term"),
    # optim
    ("--steps", "optim", "steps", {"type": int}, "optimizer steps (with --epochs: whichever ends first)"),
    ("--epochs", "optim", "epochs", {"type": int}, "passes over the training patches"),
    ("--batch-size", "optim", "batch_size", {"type": int}, "patches per step and process"),
    ("--lr", "optim", "lr", {"type": float}, "peak learning rate (AdamW; linear warm-up, cosine decay)"),
    ("--warmup-steps", "optim", "warmup_steps", {"type": int}, "warm-up steps (capped at a fifth of the run)"),
    ("--min-lr-ratio", "optim", "min_lr_ratio", {"type": float}, "final LR as a fraction of --lr"),
    ("--weight-decay", "optim", "weight_decay", {"type": float}, "AdamW weight decay"),
    ("--grad-clip", "optim", "grad_clip", {"type": float}, "clip the gradient norm (0 = off)"),
    ("--prior-lr-mult", "optim", "prior_lr_mult", {"type": float},
     "learning rate of the entropy model's parameters as a multiple of --lr"),
    # run
    ("--out-dir", "run", "out_dir", {"metavar": "DIR"}, "run folder (checkpoints, metrics.csv, curves.png)"),
    ("--seed", "run", "seed", {"type": int}, "random seed"),
    ("--device", "run", "device", {}, "auto, cpu, cuda or cuda:N"),
    ("--latent-noise", "run", "latent_noise", {"choices": LATENT_NOISE},
     "quantisation-aware training: uniform noise of one quantisation step, straight-through rounding, or none"),
    ("--latent-bits", "run", "latent_bits", {"type": int}, "bits per latent value in the codec"),
    ("--decoder-latents", "run", "decoder_latents", {"choices": DECODER_LATENTS},
     "entropy models: the decoder trains on the noisy latents of the rate estimate, or on the latents rounded as "
     "the codec rounds them (straight-through; the rate still from the noise)"),
    ("--rate-weight", "run", "rate_weight", {"type": float},
     "rate-distortion trade-off for entropy models: loss + X * bits per pixel"),
    ("--lmbda", "run", "lmbda", {"type": float},
     "rate-distortion trade-off for entropy models in the usual form: loss = X * distortion + bits "
     "per pixel (replaces --rate-weight; larger X = higher rate and quality)"),
    ("--latent-init-gain", "run", "latent_init_gain", {"type": float},
     "scale the initial weights of the encoder's last convolution (larger initial latents: faster start of "
     "rate-distortion training with integer rounding)"),
    ("--init-from", "run", "init_from", {"metavar": "CKPT|RUN_DIR"},
     "start from the weights of this checkpoint (a run folder: its best.pt) or model bundle (a .pt bundle or a "
     "bundled name such as sarae-q2), e.g. to fine-tune a trained model to another --lmbda or other data; "
     "optimizer and schedule start fresh, the dB scaling is kept when the clip settings are the same"),
    ("--init-decoder-from", "run", "init_decoder_from", {"metavar": "CKPT|BUNDLE"},
     "after --init-from, take the decoder's weights from this checkpoint or bundle (same decoder architecture), "
     "e.g. start the light decoder of one rate point from another's"),
    ("--train-only", "run", "train_only", {"choices": ("all", "decoder", "encoder")},
     "'decoder': train only the decoder on the frozen, rounded latents of the --init-from model (its encoder "
     "and entropy model are copied and kept; the decoder may differ, e.g. --decoder light); 'encoder': train "
     "only the encoder against its frozen decoder and entropy model (the encoder may be narrower, "
     "--base-channels, for a light decoder: warm-started from its first channels)"),
    ("--decoder-gains", "run", "decoder_gains", {"type": float, "nargs": 2, "metavar": ("LO", "HI")},
     "with --train-only decoder: quantize the training latents at a quantization gain drawn per patch "
     "log-uniformly from LO..HI, as the codec's rate control does (validation stays at gain 1)"),
    ("--val-interval", "run", "val_interval", {"type": int}, "validate every N steps (default: every epoch)"),
    ("--val-max-patches", "run", "val_max_patches", {"type": int}, "cap on validation patches (0 = all)"),
    ("--val-batch-size", "run", "val_batch_size", {"type": int}, "patches per validation batch"),
    ("--log-interval", "run", "log_interval", {"type": int}, "training rows in metrics.csv every N steps"),
    ("--stop-at", "run", "stop_at_step", {"type": int, "metavar": "STEP"},
     "stop at this step (resumable; the LR schedule stays that of the full run)"),
    ("--time-limit", "run", "time_limit_min", {"type": float, "metavar": "MIN"},
     "stop (resumably) after MIN minutes"),
    ("--tensorboard", "run", "tensorboard", {"action": argparse.BooleanOptionalAction},
     "log to TensorBoard too (when installed)"),
]

SECTION_TITLES = {"data": "data", "model": "model (sar_ae_core.nn.models.ModelConfig)",
                  "loss": "loss (training.losses.LossConfig)", "optim": "optimisation", "run": "run"}

TRAIN_EPILOG = """\
other commands:
  python -m training export CKPT OUT.pt --name NAME    write a model bundle for the codec (fp16)
  python -m training experiments [options]             variants x latent sizes, comparison table + plots

examples:
  # check data, split and scaling without training
  python -m training --data ../shared/data/sar/fullres --patch-size 128 --steps 100 --check
  # a short CPU run
  python -m training --data ../shared/data/sar/fullres --patch-size 128 --stride 64 --batch-size 8 \\
      --steps 2000 --out-dir runs/try1
  # continue it (same step, same learning rate)
  python -m training --resume runs/try1
  # two processes (DistributedDataParallel; gloo on CPU, nccl on GPUs)
  torchrun --nproc_per_node=2 -m training --config my.json
  # write the configuration you built to a file, edit it, use it
  python -m training --data DIR --steps 500 --print-config > my.json; python -m training --config my.json

A config file is JSON with sections data/model/loss/optim/run (see training/config.py); flags override it.
Exit status: 0 success, 2 bad input (one-line message naming the file or setting), 130 interrupted.
"""


def _default(section: str, key: str):
    return getattr(getattr(DEFAULTS, section), key)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="JSON configuration file (flags override its values)")
    groups = {s: p.add_argument_group(t) for s, t in SECTION_TITLES.items()}
    for flag, section, key, kwargs, text in FLAGS:
        default = _default(section, key)
        shown = "none" if default in (None, []) else default
        kwargs = dict(kwargs)
        if "action" not in kwargs or kwargs["action"] == "extend":
            if "choices" not in kwargs:
                kwargs.setdefault("metavar", {int: "N", float: "X"}.get(kwargs.get("type"), "TEXT"))
        groups[section].add_argument(flag, dest=f"{section}__{key}", default=None,
                                     help=text if "default" in text else f"{text} (default: {shown})", **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict:
    out: dict = {}
    for name, value in vars(args).items():
        if "__" in name and value is not None:
            section, key = name.split("__", 1)
            out.setdefault(section, {})[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig()
    if args.config:
        cfg = apply_overrides(cfg, load_config_file(args.config), source=args.config)
    return apply_overrides(cfg, overrides_from_args(args))


def train_parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EPILOG,
        description="Train the SAR autoencoder on Sentinel-1 rasters. Everything (data, split, scaling, patch "
                    "sizes) is checked before the first step; progress goes to the terminal, metrics.csv, "
                    "curves.png and summary.json in the run folder.")
    add_config_flags(p)
    g = p.add_argument_group("actions")
    g.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue a run from its last.pt (or a given checkpoint)")
    g.add_argument("--overwrite", action="store_true", help="start again in a run folder that already holds a run")
    g.add_argument("--check", action="store_true", help="check configuration and data, print the plan, do not train")
    g.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    return p


def cmd_train(argv: Sequence[str]) -> int:
    from .train import train

    args = train_parser().parse_args(argv)
    if args.resume:
        if args.config:
            raise SarInputError(args.config, "--config cannot be combined with --resume (the run keeps its "
                                             "saved configuration)")
        train(TrainConfig(), resume=args.resume, resume_overrides=overrides_from_args(args))
        return 0
    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    train(cfg, overwrite=args.overwrite, check_only=args.check)
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    from .export import export_checkpoint

    p = argparse.ArgumentParser(prog="python -m training export",
                                description="Write a model bundle (sar_ae_core.nn.model_io, fp16 weights) from a "
                                            "training checkpoint, with its training data, steps, time, device and "
                                            "validation metrics in the bundle's info.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file, or a run folder (uses its best.pt)")
    p.add_argument("out", metavar="OUT.pt", help="bundle to write")
    p.add_argument("--name", required=True, help="model name stored in the bundle (e.g. sarae-default)")
    p.add_argument("--attribution", help="data attribution text stored in the bundle info")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.pt if it exists")
    p.add_argument("--measure", metavar="RASTER", help="compress/reconstruct/assess RASTER with the bundle and store "
                                                       "bpp (file bytes), PSNR, SSIM, ENL ratio, EPI in info['measured']")
    p.add_argument("--card", metavar="JSON", help="also write the model card (name, sha256 and info) to JSON")
    p.add_argument("--decodes", metavar="MODEL", help="a model whose .sarz files this one also decodes (checked: same "
                                                      "encoder and entropy tables, e.g. after --train-only decoder)")
    args = p.parse_args(argv)
    export_checkpoint(args.checkpoint, args.out, args.name, overwrite=args.overwrite, attribution=args.attribution,
                      measure_raster=args.measure, card=args.card, decodes=args.decodes)
    return 0


def cmd_experiments(argv: Sequence[str]) -> int:
    from .experiments import DEFAULT_LATENTS, DEFAULT_VARIANTS, run_experiments

    p = argparse.ArgumentParser(
        prog="python -m training experiments", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every variant x latent size with the same data and schedule, then write "
                    "comparison.md/.csv and quality_vs_compression.png into --out-dir (default runs/experiments). "
                    "Without --steps/--epochs each run gets 500 steps.")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated model variants "
                                                                          f"(default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--latents", default=",".join(map(str, DEFAULT_LATENTS)),
                   help="comma-separated latent channel counts (default 32,16,8 = nominal 8x,16x,32x at 4 stages)")
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already have results.json")
    add_config_flags(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    if args.run__out_dir is None and not (args.config and "out_dir" in load_config_file(args.config).get("run", {})):
        cfg.run.out_dir = "runs/experiments"
    if cfg.optim.steps is None and cfg.optim.epochs is None:
        cfg.optim.steps = 500
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        latents = [int(v) for v in args.latents.split(",") if v.strip()]
    except ValueError:
        raise SarInputError(None, f"--latents must be comma-separated integers, got '{args.latents}'") from None
    run_experiments(cfg, variants, latents, overwrite=args.overwrite)
    return 0


COMMANDS = {"train": cmd_train, "export": cmd_export, "experiments": cmd_experiments}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: `python -m training [train|export|experiments] ...` (train is the default)."""
    from .train import cleanup_distributed

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "train"
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    try:
        return COMMANDS[command](argv)
    except SarInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
