"""PNG figures (matplotlib, Agg backend): training curves of a run, quality vs compression of a matrix."""

from __future__ import annotations

import csv
import math
import os
from typing import Sequence


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _f(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_metrics(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> str:
    """Loss (train and validation), learning rate, PSNR, SSIM, ENL ratio and EPI against the step."""
    plt = _matplotlib()
    rows = read_metrics(csv_path)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]

    def series(rs, key):
        pts = [(int(r["step"]), _f(r[key])) for r in rs]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    ax = axes[0, 0]
    ax.plot(*series(train, "loss"), lw=0.8, label="train")
    ax.plot(*series(val, "loss"), "o-", label="validation")
    ax.set_title("loss")
    ax.set_yscale("log")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(*series(train, "lr"), color="tab:gray")
    ax.set_title("learning rate")
    ax = axes[0, 2]
    ax.plot(*series(val, "psnr"), "o-", label="quantised latent")
    ax.plot(*series(val, "psnr_float"), "s--", label="float latent")
    ax.set_title("validation PSNR (dB, scaled)")
    ax.legend()
    for ax, key, name in ((axes[1, 0], "ssim", "validation SSIM"),
                          (axes[1, 1], "enl_ratio", "validation ENL ratio (linear; 1 = speckle kept)"),
                          (axes[1, 2], "epi", "validation EPI (dB)")):
        ax.plot(*series(val, key), "o-")
        ax.set_title(name)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return os.fspath(png_path)


def plot_quality_vs_compression(results: Sequence[dict], png_path: str | os.PathLike, split: str = "val") -> str:
    """PSNR, SSIM, EPI and ENL ratio against the nominal compression ratio, one line per variant."""
    plt = _matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    variants = sorted({r["variant"] for r in results})
    for ax, key, name in ((axes[0, 0], "psnr", "PSNR (dB, scaled)"), (axes[0, 1], "ssim", "SSIM"),
                          (axes[1, 0], "epi", "EPI (dB)"), (axes[1, 1], "enl_ratio", "ENL ratio (linear)")):
        for v in variants:
            pts = sorted((r["nominal_compression_ratio"], r[split].get(key, math.nan)) for r in results
                         if r["variant"] == v and r.get(split))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nominal compression ratio (image values / latent values)")
        ax.set_title(f"{split} {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return os.fspath(png_path)
