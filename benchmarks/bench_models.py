"""Benchmark the autoencoder model zoo: parameters, MACs per pixel and CPU forward time.

For each variant x latent width (and, by default, with and without bottleneck self-attention) the
model is built at the given base width, then

* parameters are counted,
* MACs are counted with forward hooks on one 256x256 forward pass: Conv2d/Linear contribute
  ``out_elems * in_ch/groups * kH*kW`` (``out_elems * in_features`` for Linear), SelfAttention2d
  its two batched matrix products (``N*N*C_qk + N*N*C`` with N = positions); element-wise ops,
  BatchNorm, pooling and upsampling are ignored (they are memory- not compute-bound),
* the forward pass (encode + decode, eval mode, ``torch.no_grad``) is timed: 1 warm-up, then the
  median of ``--repeats`` runs.

Usage::

    python benchmarks/bench_models.py --repeats 3
    python benchmarks/bench_models.py --variants plain residual --latents 16 --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from sar_ae_core.nn.models import VARIANTS, ModelConfig, SarAutoencoder, SelfAttention2d, build_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "models.json"
DEFAULT_LATENTS = (4, 8, 16, 32, 64)


def count_macs(model: SarAutoencoder, size: int, part: str = "all", gdn: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a (1, C, size, size) input (`part`: 'all', 'encoder' or
    'decoder'; the factorized density is not run at inference and not counted; a hyperprior's h_s is counted in
    both parts, its h_a in the encoder's); `gdn`: GDN's channel sums
    (C² per position) too."""
    from sar_ae_core.nn.models import GDN

    total = 0

    def gdn_hook(mod, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * out.shape[1]

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def tconv_hook(mod: nn.ConvTranspose2d, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal total  # every input element is multiplied into a kH x kW x C_out/groups block of the output
        kh, kw = mod.kernel_size
        total += inp[0].numel() * (mod.out_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    def attn_hook(mod: SelfAttention2d, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal total
        b, c, h, w = inp[0].shape
        n = h * w
        total += b * (n * n * mod.query.out_channels + n * n * c)

    handles = []
    roots = [model if part == "all" else getattr(model, part)]
    hyper = getattr(model.config, "entropy_model", "none") == "hyperprior"
    if hyper and part != "all":
        # a hyperprior's side networks are inference too: the decoder runs h_s (μ, σ of every latent element) before
        # it can decode y, the encoder runs h_a and h_s (it codes y under the μ, σ the decoder will compute)
        roots += [model.entropy.h_s] + ([model.entropy.h_a] if part == "encoder" else [])
    modules = [m for r in roots for m in r.modules()]
    for m in modules:
        if isinstance(m, nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(tconv_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, SelfAttention2d):
            handles.append(m.register_forward_hook(attn_hook))
        elif gdn and isinstance(m, GDN):
            handles.append(m.register_forward_hook(gdn_hook))
    try:
        with torch.no_grad():
            x = torch.rand(1, model.config.in_channels, size, size)
            if hyper:
                entropy = model.entropy
                was = entropy.training
                entropy.eval()
                try:
                    model.decode(entropy(model.encode(x))[0])
                finally:
                    entropy.train(was)
            else:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def stage_macs_per_pixel(model: SarAutoencoder, size: int = 256) -> dict:
    """{'encoder': MAC per image pixel, 'decoder': ..., 'encoder_gdn': ..., 'decoder_gdn': ...}: convolutions as
    counted by count_macs, and GDN's channel sums (C² per position, a 1x1 convolution) on their own."""
    n = size * size
    out = {}
    for part in ("encoder", "decoder"):
        conv = count_macs(model, size, part)
        out[part] = conv / n
        out[f"{part}_gdn"] = (count_macs(model, size, part, gdn=True) - conv) / n
    return out


def time_forward(model: SarAutoencoder, size: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` forward passes on one patch, after one warm-up."""
    x = torch.rand(1, model.config.in_channels, size, size)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def bench_one(config: ModelConfig, size: int, repeats: int) -> dict:
    """Benchmark record for one configuration."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    macs = count_macs(model, size)
    times = time_forward(model, size, repeats)
    return {
        "variant": config.variant,
        "self_attention": config.self_attention,
        "latent_channels": config.latent_channels,
        "base_channels": config.base_channels,
        "stages": config.stages,
        "config": config.to_dict(),
        "nominal_compression_ratio": model.nominal_compression_ratio,
        "parameters": model.parameter_count(),
        "macs_per_patch": macs,
        "macs_per_pixel": macs / (size * size),
        **{f"{k}_macs_per_pixel": v for k, v in stage_macs_per_pixel(model, size).items()},
        "forward_ms_median": 1e3 * statistics.median(times),
        "forward_ms_runs": [round(1e3 * t, 3) for t in times],
    }


def bundled_macs(name: str, size: int = 256) -> dict:
    """Encoder and decoder kMAC per pixel of a bundled model (count_macs on a size² input; the decoder on all
    latent channels, as trained)."""
    from sar_ae_core.nn.model_io import load_bundle

    model = load_bundle(name, "cpu", runtime="torch").model
    px = size * size
    return {"encoder_kmac_px": round(count_macs(model, size, "encoder") / px / 1000, 2),
            "decoder_kmac_px": round(count_macs(model, size, "decoder") / px / 1000, 2),
            "counted_by": f"benchmarks/bench_models.py count_macs, {size}² input"}


def update_cards(size: int = 256) -> int:
    """Write bundled_macs into every bundled model's card (`macs`)."""
    from sar_ae_core.nn.model_io import bundled_models, resolve_model

    for name in bundled_models():
        card = resolve_model(name).with_suffix(".json")
        if not card.exists():
            continue
        d = json.loads(card.read_text())
        d["macs"] = bundled_macs(name, size)
        card.write_text(json.dumps(d, indent=2) + "\n")
        m = d["macs"]
        print(f"{Path(name).stem}: encoder {m['encoder_kmac_px']} kMAC/px, decoder {m['decoder_kmac_px']} kMAC/px")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; writes the JSON report and prints a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--latents", nargs="+", type=int, default=list(DEFAULT_LATENTS))
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="square patch side in pixels")
    ap.add_argument(
        "--self-attention", choices=("off", "on", "both"), default="both",
        help="benchmark without / with / both with and without bottleneck self-attention",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--update-cards", action="store_true",
                    help="only count the bundled models (encoder and decoder kMAC per pixel) and write the counts into "
                         "their model cards, where `compress --max-decoder-kmac` reads them")
    args = ap.parse_args(argv)
    if args.update_cards:
        return update_cards(args.size)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    sa_options = {"off": [False], "on": [True], "both": [False, True]}[args.self_attention]

    configs = [
        ModelConfig(variant=v, self_attention=sa, latent_channels=c,
                    base_channels=args.base_channels, stages=args.stages)
        for v in args.variants for sa in sa_options for c in args.latents
    ]
    if args.size % (2**args.stages):
        ap.error(f"--size must be divisible by 2**stages = {2**args.stages}")

    results = []
    print(f"{'variant':22s} {'lat':>4s} {'ratio':>6s} {'params':>10s} {'MAC/px':>9s} {'ms':>8s}")
    for cfg in configs:
        r = bench_one(cfg, args.size, args.repeats)
        results.append(r)
        name = cfg.variant + ("+sa" if cfg.self_attention else "")
        print(f"{name:22s} {cfg.latent_channels:4d} {r['nominal_compression_ratio']:6.1f} "
              f"{r['parameters']:10,d} {r['macs_per_pixel']:9,.0f} {r['forward_ms_median']:8.1f}", flush=True)

    report = {
        "meta": {
            "patch_size": [args.size, args.size],
            "repeats": args.repeats,
            "warmup": 1,
            "timing": "median wall-clock of model(x) for one patch, eval mode, torch.no_grad, CPU",
            "macs": "Conv2d/Linear out_elems*in_ch/groups*kH*kW + SelfAttention2d bmm; per pixel of input",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(results)} results to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
