"""Entropy-model pilot: does a candidate model (e.g. a mean-scale hyperprior rate point) beat the bundled factorized
family on whole rasters at the same file bytes?

Every raster of one split of `training/splits/broad.json` (default: validation — a pilot chooses, the test split
reports) is coded by the bundled rate points at several quantization gains and by each candidate at its own gains,
with the escapes `--rate` would use at that rate (`rate.escape_policy`), no residual layer and no rate search, so the
networks and entropy coders alone are compared. Per raster the family's points form an upper envelope of PSNR over
log-bpp (PSNR, bpp from the file's bytes); each candidate point is scored as its PSNR minus the envelope's at its
bpp (inside the envelope's range only), with EPI and ENL ratio of both. The decoder and encoder cost of each
model (kMAC per pixel, `bench_models.count_macs`, a hyperprior's h_s counted) is reported beside it.

    .venv/bin/python benchmarks/bench_entropy_pilot.py --candidates runs/mix/q2l.pt \\
        --out benchmarks/results/entropy_pilot.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FAMILY = ("sarae-q1", "sarae-q2", "sarae-q3")
FAMILY_GAINS = (0.7, 1.0, 1.4)
CANDIDATE_GAINS = (0.6, 0.8, 1.0, 1.25)


def code_point(scene: Path, tmp: Path, model: str, gain: float) -> dict:
    from bench_decoder_pilot import _assess

    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.rate import escape_policy

    sarz, rec = tmp / "p.sarz", tmp / "p.tif"
    first = compress_raster(scene, sarz, model=model, gain=gain, overwrite=True, post_filter="off",
                            **escape_policy(0.5))
    # the escapes follow the rate the point lands at, as `--rate` would choose them
    r = compress_raster(scene, sarz, model=model, gain=gain, overwrite=True, post_filter="off",
                        **escape_policy(first["bpp"])) if (first["bpp"] < 0.5) else first
    reconstruct_raster(sarz, rec, units="db", model=model, overwrite=True)
    return {"model": model, "gain": gain, "bpp": r["bpp"], "bytes": r["bytes"], **_assess(scene, rec)}


def envelope_at(points: list[dict], bpp: float) -> float | None:
    """The family's best PSNR at `bpp`: the upper envelope of the segments between its points in log-bpp (None
    outside the points' range)."""
    pts = sorted(points, key=lambda p: p["bpp"])
    if not pts or not pts[0]["bpp"] <= bpp <= pts[-1]["bpp"]:
        return None
    best = None
    x = math.log(bpp)
    for a in pts:
        for b in pts:
            if a["bpp"] <= bpp <= b["bpp"] and a["bpp"] < b["bpp"]:
                t = (x - math.log(a["bpp"])) / (math.log(b["bpp"]) - math.log(a["bpp"]))
                v = a["psnr"] + t * (b["psnr"] - a["psnr"])
                best = v if best is None else max(best, v)
            elif a["bpp"] == bpp:
                best = a["psnr"] if best is None else max(best, a["psnr"])
    return best


def model_costs(model: str) -> dict:
    from bench_models import bundled_macs

    from sar_ae_core.nn.model_io import load_bundle

    c = load_bundle(model, "cpu", runtime="torch").config
    return {**bundled_macs(model), "entropy_model": c.entropy_model,
            "hyper": c.hyper if c.entropy_model == "hyperprior" else None}


def main(argv: list[str] | None = None) -> int:
    from bench_rd import held_out

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", nargs="+", required=True, help="model bundles (.pt paths or bundled names)")
    ap.add_argument("--family", nargs="+", default=list(FAMILY))
    ap.add_argument("--family-gains", nargs="+", type=float, default=list(FAMILY_GAINS))
    ap.add_argument("--gains", nargs="+", type=float, default=list(CANDIDATE_GAINS))
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--category", nargs="+", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "entropy_pilot.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    with held_out(args.split_file, args.split, args.category) as (tmp, scenes):
        for scene, category in scenes:
            fam = [code_point(scene, tmp, m, g) for m in args.family for g in args.family_gains]
            for cand in args.candidates:
                for g in args.gains:
                    p = code_point(scene, tmp, cand, g)
                    env = envelope_at(fam, p["bpp"])
                    rows.append({"scene": scene.name, "category": category, "candidate": Path(cand).stem, **p,
                                 "family_psnr_at_bpp": env, "d_psnr": None if env is None else p["psnr"] - env})
                    d = "n/a (outside the family's rates)" if env is None else f"{p['psnr'] - env:+.2f} dB"
                    print(f"{category:<9} {scene.name[:38]:<38} {Path(cand).stem:<12} g={g:<5} {p['bpp']:.3f} bpp "
                          f"PSNR {p['psnr']:.2f} EPI {p['epi']:.3f} ENLr {p['enl_ratio']:.2f} | vs family {d}",
                          flush=True)
            rows += [{"scene": scene.name, "category": category, "candidate": None, **p} for p in fam]
    summary = {}
    for cand in args.candidates:
        name = Path(cand).stem
        for cat in sorted({r["category"] for r in rows}):
            d = [r["d_psnr"] for r in rows if r["candidate"] == name and r["category"] == cat
                 and r["d_psnr"] is not None]
            if d:
                summary[f"{name} {cat}"] = {"mean_d_psnr": statistics.fmean(d), "worst_d_psnr": min(d),
                                            "points": len(d)}
        d = [r["d_psnr"] for r in rows if r["candidate"] == name and r["d_psnr"] is not None]
        if d:
            summary[f"{name} all"] = {"mean_d_psnr": statistics.fmean(d), "worst_d_psnr": min(d), "points": len(d)}
    split_file = Path(args.split_file).resolve()
    shown = split_file.relative_to(ROOT) if split_file.is_relative_to(ROOT) else split_file
    report = {"benchmark": "entropy_model_pilot", "split_file": str(shown), "split": args.split,
              "family": args.family, "family_gains": args.family_gains, "candidate_gains": args.gains,
              "costs": {m: model_costs(m) for m in list(args.family) + list(args.candidates)},
              "results": rows, "summary": summary, "machine": platform.platform(),
              "seconds": time.perf_counter() - t0,
              "notes": "bpp = 8 * whole-file bytes / pixels per band; PSNR on each band's 1st-99th percentile dB "
                       "range; d_psnr = candidate - the family's upper envelope (log-bpp) at the candidate's bpp; "
                       "no residual layer, no post-filter, no rate search"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for k, v in summary.items():
        print(f"{k:<30} mean {v['mean_d_psnr']:+.2f} dB, worst {v['worst_d_psnr']:+.2f} dB over {v['points']} points")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
