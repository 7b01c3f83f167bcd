"""Typed training configuration: dataclasses, JSON files and command-line overrides.

A configuration has five parts::

    {
      "data":  {...DataConfig...},     # which rasters, how to cut and split them, how to fit the dB range
      "model": {...ModelConfig...},    # sar_ae_core.nn.models.ModelConfig (variant, channels, stages, ...)
      "loss":  {...LossConfig...},     # training.losses.LossConfig (MSE / SSIM / MS-SSIM / gradient weights)
      "optim": {...OptimConfig...},    # steps/epochs, batch size, learning-rate schedule, clipping
      "run":   {...RunConfig...}       # output folder, seed, device, quantisation-aware noise, logging
    }

Every key is optional (defaults below); unknown keys are rejected with the list of valid ones.
Precedence: built-in defaults < `--config FILE` < command-line flags.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from sar_ae_core.errors import SarInputError
from training.losses import LossConfig
from sar_ae_core.nn.models import VARIANTS, ModelConfig
from sar_ae_core.io.raster import UNIT_CHOICES
from sar_ae_core.scaling import CLIP_METHODS

LATENT_NOISE = ("none", "uniform", "ste")
DECODER_LATENTS = ("noisy", "rounded")
CONFIG_VERSION = 1


@dataclass
class DataConfig:
    """Which rasters to train on and how to turn them into patches."""

    paths: list[str] = field(default_factory=list)  # files, folders, globs ('data/*_db.tif') or @list.txt
    glob: str = "*.tif,*.tiff"       # file patterns used inside folders (comma separated)
    recursive: bool = False          # also search sub-folders of folders
    units: str = "auto"              # auto | linear | amplitude | db | complex (auto decides per file)
    bands: str = "all"               # 'all' or e.g. '1,2' (each band is trained on as a single-channel image)
    patch_size: int = 256            # square patch side in pixels (multiple of 2**stages)
    stride: Optional[int] = None     # step between training patches (default: patch_size, no overlap)
    val_fraction: float = 0.15       # fraction of SCENES held out for validation (VV/VH of a scene stay together)
    test_fraction: float = 0.15      # fraction of SCENES held out for the final test
    split_seed: int = 0              # seed of the scene shuffle
    clip_method: str = "percentile"  # dB clip range fitted on the TRAINING split: percentile | sigma | fixed
    clip_low: float = 1.0            # low percentile / sigmas below the mean / fixed vmin (dB)
    clip_high: float = 99.0          # high percentile / sigmas above the mean / fixed vmax (dB)
    min_std: float = 0.02            # patch filter: minimum std of valid scaled values
    max_invalid_fraction: float = 0.1  # patch filter: maximum fraction of invalid pixels inside the raster
    augment: bool = True             # random flips / 90-degree rotations of training patches
    split_file: Optional[str] = None  # committed scene-level split (training/corpus.py, e.g. training/splits/
                                     # broad.json): replaces paths/fractions; paths relative to the data folder
    physics_augment: bool = False    # multilook / speckle / dB gain / dB window augmentation (training/augment.py)
    category_shares: Optional[dict] = None  # with a split file: share of an epoch per product category
    augment_params: Optional[dict] = None  # overrides of training.augment.AugmentConfig (e.g. window shares
                                           # {"p_model": 0.65, "p_shifted": 0.35} = no 'source' windows)
    workers: int = 0                 # DataLoader worker processes (0 = read in the training process)


@dataclass
class OptimConfig:
    """How long and how fast to train."""

    steps: Optional[int] = None      # optimizer steps (with epochs too: whichever ends first)
    epochs: Optional[int] = None     # passes over the training patches
    batch_size: int = 16             # patches per step (per process under torchrun)
    lr: float = 1e-4                 # peak learning rate (AdamW)
    warmup_steps: int = 100          # linear warm-up steps (capped at a fifth of the run)
    min_lr_ratio: float = 0.01       # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0        # AdamW weight decay
    grad_clip: float = 1.0           # clip the global gradient norm to this (0 = off)
    prior_lr_mult: float = 1.0       # learning rate of the entropy model's parameters = lr * this (its density
                                     # starts broad, init scale 10, and follows the latents slowly at lr 1e-3)


@dataclass
class RunConfig:
    """Where results go and how the run behaves."""

    out_dir: str = "runs/sarae"      # run folder: checkpoints, metrics.csv, curves.png, summary.json
    seed: int = 0                    # seed of model initialisation, data order, augmentation and noise
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    latent_noise: str = "uniform"    # none | uniform | ste: quantisation-aware training of the latent
    decoder_latents: str = "noisy"   # entropy models, joint training: the decoder is given the noisy latents the rate
                                     # is estimated on, or ('rounded') the latents rounded as the codec rounds them
                                     # (straight-through gradient; the rate term still from the noisy proxy)
    latent_bits: int = 8             # bits per latent value of the codec (step = (max-min)/(2**bits-1))
    rate_weight: float = 0.01        # models with an entropy model (model.entropy_model = factorized) only:
                                     # loss = distortion + rate_weight * estimated bits per pixel
    lmbda: Optional[float] = None    # entropy models: when set, loss = lmbda * distortion + bits per pixel
                                     # (the usual rate-distortion form; rate_weight is then ignored)
    latent_init_gain: float = 1.0    # multiply the initial weights of the encoder's last convolution (the latent) by
                                     # this: with integer rounding the latent must grow to many units before it
                                     # carries detail, which takes thousands of steps from the default init
    init_from: Optional[str] = None  # start from the weights of this checkpoint (run folder: its best.pt), e.g.
                                     # to fine-tune a trained model to another rate point; fresh optimizer/schedule
    init_decoder_from: Optional[str] = None  # then take the decoder's weights from this checkpoint/bundle (same
                                     # decoder architecture), e.g. a light decoder trained on another rate point
    train_only: str = "all"          # all | decoder: train only the decoder on the frozen, rounded latents of the
                                     # init_from model (encoder and entropy model copied; the decoder may differ)
                                     # | encoder: train only the encoder against the init_from model's frozen
                                     # decoder and entropy model (its files and this model's decode alike; the
                                     # encoder may be narrower: --base-channels, warm-started from its first
                                     # channels)
    decoder_gains: Optional[list] = None  # train_only decoder: [lo, hi] quantization gains drawn per patch
                                     # (log-uniform) for the training latents, as rate control uses them
    val_interval: Optional[int] = None  # validate every N steps (default: once per epoch) and at the end
    val_max_patches: int = 0         # cap on validation patches (0 = all)
    val_batch_size: int = 32         # patches per validation forward pass
    log_interval: int = 10           # write a training row to metrics.csv every N steps
    stop_at_step: Optional[int] = None  # stop (resumably) at this step; the LR schedule stays that of the full run
    time_limit_min: Optional[float] = None  # stop (resumably) after this many minutes of this session
    tensorboard: bool = True         # also log to TensorBoard when the package is installed


@dataclass
class TrainConfig:
    """The full configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(variant="res_cbam", base_channels=16,
                                                                    latent_channels=16, stages=4))
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    version: int = CONFIG_VERSION

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {"data": dataclasses.asdict(self.data), "model": self.model.to_dict(),
                "loss": self.loss.to_dict(), "optim": dataclasses.asdict(self.optim),
                "run": dataclasses.asdict(self.run), "version": self.version}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str] = None) -> "TrainConfig":
        """Build from a (possibly partial) dict; unknown keys and bad values raise SarInputError."""
        cfg = cls()
        return apply_overrides(cfg, d, source)

    def copy(self) -> "TrainConfig":
        return copy.deepcopy(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "run": RunConfig}


def _fail(source: Optional[str], problem: str) -> SarInputError:
    return SarInputError(source, problem)


def apply_overrides(cfg: TrainConfig, d: Mapping[str, Any], source: Optional[str] = None) -> TrainConfig:
    """Return a copy of cfg with the (nested, partial) values of `d` applied; validate types and names."""
    if not isinstance(d, Mapping):
        raise _fail(source, f"configuration must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SECTIONS) - {"version"})
    if unknown:
        raise _fail(source, f"unknown configuration section(s) {unknown}; valid sections are "
                            f"{sorted(SECTIONS)}")
    if int(d.get("version", CONFIG_VERSION)) > CONFIG_VERSION:
        raise _fail(source, f"configuration version {d['version']} is newer than this software ({CONFIG_VERSION})")
    out = cfg.copy()
    for name, klass in SECTIONS.items():
        values = d.get(name)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise _fail(source, f"section '{name}' must be an object, got {type(values).__name__}")
        valid = [f.name for f in dataclasses.fields(klass)]
        bad = sorted(set(values) - set(valid))
        if bad:
            raise _fail(source, f"unknown key(s) {bad} in section '{name}'; valid keys are {valid}")
        current = dataclasses.asdict(getattr(out, name))
        current.update(values)
        if name == "model":
            variant = current.get("variant")
            if variant not in VARIANTS:
                raise _fail(source, f"unknown model variant '{variant}' (choose from {', '.join(VARIANTS)})")
        try:
            setattr(out, name, klass(**current))
        except (TypeError, ValueError) as exc:
            raise _fail(source, f"bad value in section '{name}': {exc}") from None
    return out


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON configuration file (clear messages for missing or malformed files)."""
    if not os.path.isfile(path):
        raise SarInputError(path, "configuration file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise SarInputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check everything that can be checked without reading data; raise SarInputError naming the setting."""
    d, o, r, m = cfg.data, cfg.optim, cfg.run, cfg.model

    def bad(setting: str, problem: str) -> None:
        raise SarInputError(None, f"config: {setting} {problem}")

    def check_int(setting: str, value: Any, lo: int, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            bad(setting, f"must be an integer, got {value!r}")
        if value < lo:
            bad(setting, f"must be >= {lo}, got {value}")

    def check_num(setting: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad(setting, f"must be a finite number, got {value!r}")
        if value < lo or value > hi or (lo_open and value == lo):
            bad(setting, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")

    if not d.paths and not d.split_file:
        bad("data.paths", "is empty: give the training rasters with --data (files, folders or globs)")
    if d.split_file is not None and not os.path.isfile(d.split_file):
        bad("data.split_file", f"'{d.split_file}' does not exist")
    if isinstance(d.paths, str):
        d.paths = [d.paths]
    if d.units not in UNIT_CHOICES:
        bad("data.units", f"'{d.units}' unknown (choose from {', '.join(UNIT_CHOICES)})")
    check_int("data.patch_size", d.patch_size, 8)
    factor = 2 ** m.stages
    if d.patch_size % factor:
        bad("data.patch_size", f"{d.patch_size} must be a multiple of 2**stages = {factor} "
                               f"(e.g. {max(factor, d.patch_size // factor * factor)})")
    check_int("data.stride", d.stride, 1, optional=True)
    check_num("data.val_fraction", d.val_fraction, 0.0, 0.9, lo_open=True)
    check_num("data.test_fraction", d.test_fraction, 0.0, 0.9)
    if d.val_fraction + d.test_fraction >= 1.0:
        bad("data.val_fraction + data.test_fraction", f"must be < 1 (got {d.val_fraction + d.test_fraction})")
    if d.clip_method not in CLIP_METHODS:
        bad("data.clip_method", f"'{d.clip_method}' unknown (choose from {', '.join(CLIP_METHODS)})")
    if d.clip_method == "percentile" and not 0 <= d.clip_low < d.clip_high <= 100:
        bad("data.clip_low/clip_high", f"percentiles must satisfy 0 <= low < high <= 100 (got {d.clip_low}, "
                                       f"{d.clip_high})")
    if d.clip_method == "fixed" and not d.clip_low < d.clip_high:
        bad("data.clip_low/clip_high", f"fixed dB range needs low < high (got {d.clip_low}, {d.clip_high})")
    check_num("data.min_std", d.min_std, 0.0, 1.0)
    check_num("data.max_invalid_fraction", d.max_invalid_fraction, 0.0, 1.0)
    check_int("data.workers", d.workers, 0)

    if m.in_channels != 1:
        bad("model.in_channels", f"must be 1 (every band is trained on as a single-channel image), got "
                                 f"{m.in_channels}")

    if o.steps is None and o.epochs is None:
        bad("optim.steps/epochs", "are both unset: give --steps and/or --epochs")
    check_int("optim.steps", o.steps, 1, optional=True)
    check_int("optim.epochs", o.epochs, 1, optional=True)
    check_int("optim.batch_size", o.batch_size, 1)
    check_num("optim.lr", o.lr, 0.0, 1.0, lo_open=True)
    check_int("optim.warmup_steps", o.warmup_steps, 0)
    check_num("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)
    check_num("optim.weight_decay", o.weight_decay, 0.0)
    check_num("optim.grad_clip", o.grad_clip, 0.0)
    check_num("optim.prior_lr_mult", o.prior_lr_mult, 0.0, lo_open=True)

    if r.decoder_latents not in DECODER_LATENTS:
        bad("run.decoder_latents", f"'{r.decoder_latents}' unknown (choose from {', '.join(DECODER_LATENTS)})")
    if r.latent_noise not in LATENT_NOISE:
        bad("run.latent_noise", f"'{r.latent_noise}' unknown (choose from {', '.join(LATENT_NOISE)})")
    check_int("run.latent_bits", r.latent_bits, 1)
    check_num("run.rate_weight", r.rate_weight, 0.0)
    if r.lmbda is not None:
        check_num("run.lmbda", r.lmbda, 0.0, lo_open=True)
        if m.entropy_model == "none":
            bad("run.lmbda", "needs an entropy model (--entropy-model factorized): without one there is no rate term")
    check_num("run.latent_init_gain", r.latent_init_gain, 0.0, lo_open=True)
    if r.init_from is not None and not os.path.exists(r.init_from):
        from sar_ae_core.nn.model_io import BUNDLED_DIR

        if not (BUNDLED_DIR / f"{r.init_from}.pt").is_file():
            bad("run.init_from", f"'{r.init_from}' does not exist (give a checkpoint file, a run folder, a model "
                                 f"bundle or a bundled model name)")
    if r.init_decoder_from is not None and not os.path.exists(r.init_decoder_from):
        from sar_ae_core.nn.model_io import BUNDLED_DIR

        if not (BUNDLED_DIR / f"{r.init_decoder_from}.pt").is_file():
            bad("run.init_decoder_from", f"'{r.init_decoder_from}' does not exist")
    if r.init_decoder_from is not None and r.init_from is None:
        bad("run.init_decoder_from", "needs --init-from (the model whose encoder and entropy model are used)")
    if r.train_only not in ("all", "decoder", "encoder"):
        bad("run.train_only", f"'{r.train_only}' unknown (choose from all, decoder, encoder)")
    if r.train_only == "decoder" and r.init_from is None:
        bad("run.train_only", "'decoder' needs --init-from (the model whose encoder and entropy model are kept)")
    if r.train_only == "encoder" and r.init_from is None:
        bad("run.train_only", "'encoder' needs --init-from (the model whose decoder and entropy model are kept)")
    if r.decoder_gains is not None:
        g = r.decoder_gains
        if r.train_only != "decoder":
            bad("run.decoder_gains", "needs --train-only decoder")
        if not (isinstance(g, (list, tuple)) and len(g) == 2 and all(isinstance(v, (int, float)) for v in g)
                and 0.05 <= g[0] <= g[1] <= 16):
            bad("run.decoder_gains", f"must be two gains LO <= HI within [0.05, 16], got {g}")
    if r.latent_bits > 16:
        bad("run.latent_bits", f"must be <= 16, got {r.latent_bits}")
    check_int("run.seed", r.seed, 0)
    check_int("run.val_interval", r.val_interval, 1, optional=True)
    check_int("run.val_max_patches", r.val_max_patches, 0)
    check_int("run.val_batch_size", r.val_batch_size, 1)
    check_int("run.log_interval", r.log_interval, 1)
    check_int("run.stop_at_step", r.stop_at_step, 1, optional=True)
    if r.time_limit_min is not None:
        check_num("run.time_limit_min", r.time_limit_min, 0.0, lo_open=True)
    if not r.out_dir:
        bad("run.out_dir", "is empty")
    if not (r.device in ("auto", "cpu") or r.device == "cuda" or r.device.startswith("cuda:")):
        bad("run.device", f"'{r.device}' unknown (use auto, cpu, cuda or cuda:N)")
    return cfg
