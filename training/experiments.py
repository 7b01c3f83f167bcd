"""Experiment matrix: model variants x latent widths on the same data and schedule.

Each run lives in `OUT/{variant}_lat{L}/` (a normal run folder) and writes `results.json`; then
`comparison.csv`, `comparison.md` and `quality_vs_compression.png` (PSNR, SSIM, EPI, ENL ratio against
the nominal compression ratio) are written to OUT. Finished runs are reused; interrupted ones resumed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.models import VARIANTS, ModelConfig

from .checkpoint import LAST
from .config import TrainConfig, validate
from .plots import plot_quality_vs_compression
from .train import train

DEFAULT_VARIANTS = ("plain", "residual", "res_cbam")
DEFAULT_LATENTS = (32, 16, 8)  # with 4 stages: nominal 8x, 16x, 32x

TABLE_COLUMNS = [
    ("variant", "variant"), ("latent_channels", "latent"), ("nominal_compression_ratio", "nominal ratio"),
    ("bits_per_pixel_uncoded", "bpp (uncoded)"), ("parameters", "parameters"), ("step", "steps"),
    ("train_time_s", "train s"), ("val.loss", "val loss"), ("val.psnr", "val PSNR"), ("val.ssim", "val SSIM"),
    ("val.enl_ratio", "val ENL ratio"), ("val.epi", "val EPI"), ("val.psnr_float", "val PSNR (float latent)"),
    ("test.psnr", "test PSNR"), ("test.ssim", "test SSIM"), ("test.enl_ratio", "test ENL ratio"),
    ("test.epi", "test EPI"),
]


def _get(r: dict, key: str):
    cur = r
    for part in key.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else "inf"
        if v.is_integer():
            return str(int(v))
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def write_tables(results: Sequence[dict], out_dir: Path) -> tuple[Path, Path]:
    csv_path, md_path = out_dir / "comparison.csv", out_dir / "comparison.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([k for k, _ in TABLE_COLUMNS])
        for r in results:
            w.writerow([_get(r, k) if _get(r, k) is not None else "" for k, _ in TABLE_COLUMNS])
    lines = ["| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(_cell(_get(r, k)) for k, _ in TABLE_COLUMNS) + " |")
    note = ("\nMetrics: means over held-out patches of best.pt (lowest validation loss), latent quantised to "
            "8 bits per value like the codec. PSNR/SSIM on the [0,1]-scaled dB range, ENL ratio on linear "
            "intensity (1 = speckle statistics kept, >1 smoothed), EPI on dB. 'bpp (uncoded)' = latent values "
            "per pixel x bits, before entropy coding.\n")
    md_path.write_text("\n".join(lines) + "\n" + note, encoding="utf-8")
    return csv_path, md_path


def run_experiments(base: TrainConfig, variants: Sequence[str] = DEFAULT_VARIANTS,
                    latents: Sequence[int] = DEFAULT_LATENTS, overwrite: bool = False, log=print) -> list[dict]:
    """Train every variant x latent combination (sequentially) and compare them."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SarInputError(None, f"unknown model variant(s) {bad} (choose from {', '.join(VARIANTS)})")
    if not variants or not latents:
        raise SarInputError(None, "the experiment matrix is empty (give --variants and --latents)")
    if any(int(lat) < 1 for lat in latents):
        raise SarInputError(None, f"latent channel counts must be >= 1, got {list(latents)}")
    out_dir = Path(base.run.out_dir)
    plan = []
    for v in variants:
        for lat in latents:
            cfg = base.copy()
            cfg.model = ModelConfig(**{**cfg.model.to_dict(), "variant": v, "latent_channels": int(lat)})
            cfg.run.out_dir = str(out_dir / f"{v}_lat{lat}")
            plan.append(validate(cfg))
    results = []
    for i, cfg in enumerate(plan, 1):
        run_dir = Path(cfg.run.out_dir)
        res_path = run_dir / "results.json"
        name = f"[{i}/{len(plan)}] {cfg.model.variant}, latent {cfg.model.latent_channels}"
        if res_path.exists() and not overwrite:
            log(f"{name}: reusing {res_path}")
            results.append(json.loads(res_path.read_text(encoding="utf-8")))
            continue
        log(f"\n===== {name} -> {run_dir}")
        if (run_dir / LAST).exists() and not overwrite:
            summary = train(cfg, resume=str(run_dir))
        else:
            summary = train(cfg, overwrite=overwrite)
        if not summary:  # not the main process
            continue
        result = {"variant": cfg.model.variant, "latent_channels": cfg.model.latent_channels,
                  "run_dir": str(run_dir), **{k: summary.get(k) for k in (
                      "nominal_compression_ratio", "bits_per_pixel_uncoded", "parameters", "step", "total_steps",
                      "best_step", "train_time_s", "status", "device", "val", "test", "model_config")}}
        if result["status"] == "finished":  # a stopped run is resumed next time instead of reused
            res_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
        results.append(result)
    if results:
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, md_path = write_tables(results, out_dir)
        png = plot_quality_vs_compression(results, out_dir / "quality_vs_compression.png")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        log(f"\ncomparison: {md_path}, {csv_path}, {png}")
        log(md_path.read_text(encoding="utf-8"))
    return results
