"""The distortion target (`compress --max-rmse-db DB`) on the held-out test scenes of every product category.

For every held-out raster of at least 256 × 256 px (the crops `training/splits/broad.json` names) and each target:
the RMSE in dB of the written file's reconstruction as `assess` measures it (it must not exceed the target), the
file's bits per pixel (from its bytes), the model and residual step the search took, its passes and its wall time.
Targets the bundled rate points cannot reach are recorded as such. Run it on a quiet machine for the times.

    python benchmarks/bench_rmse.py            # → benchmarks/results/rmse_control.json (+ a Markdown table)
    python benchmarks/bench_rmse.py --large 4096   # → benchmarks/results/rmse_large.json

`--large SIZE`: on a SIZE² mosaic of a real GRD scene (above `rate.SAMPLE_FROM_PIXELS`: the search runs on a sample
of its tiles), against the search over the whole raster (the sampling switched off), at 0.4 and 0.8 dB: wall time,
passes, bits per pixel and the RMSE of both files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_rd import held_out  # noqa: E402
from sar_ae_core.codec import reconstruct_raster  # noqa: E402
from sar_ae_core.errors import SarInputError  # noqa: E402
from sar_ae_core.io.raster import open_raster  # noqa: E402
from sar_ae_core.quality.assess import assess_rasters  # noqa: E402
from sar_ae_core.rate import compress_to_rmse  # noqa: E402

#: RMSE targets in dB: calibrated GRD reaches ~1 dB near 0.5 bpp, single-look speckle ~2.5 dB near 1 bpp
TARGETS = (1.0, 2.0)
CATEGORIES = ("grd_db", "grd_dn", "rtc", "slc_other")


def large(size: int, out: str) -> int:
    from benchmarks.bench_rate import sampled_against_whole

    return sampled_against_whole("bench_rmse --large", size, (0.4, 0.8), "target_rmse_db",
                                 lambda src, sarz, t: compress_to_rmse(src, sarz, t, overwrite=True), out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rmse_control.json"))
    ap.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--large", type=int, default=None, metavar="SIZE")
    args = ap.parse_args(argv)
    if args.large:
        out = args.out if args.out != str(ROOT / "benchmarks" / "results" / "rmse_control.json") else \
            str(ROOT / "benchmarks" / "results" / "rmse_large.json")
        return large(args.large, out)
    rows = []
    with held_out(args.split_file, "test", CATEGORIES) as (tmp, scenes):
        for src, category in scenes:
            with open_raster(src) as r:
                width, height, bands = r.width, r.height, r.count
            if min(width, height) < 256:
                continue
            for target in args.targets:
                out = tmp / "r.sarz"
                row = {"category": category, "scene": src.name, "target_rmse_db": target}
                t0 = time.perf_counter()
                try:
                    res = compress_to_rmse(src, out, target, overwrite=True)
                except SarInputError as exc:
                    row.update(reachable=False, message=str(exc))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                seconds = time.perf_counter() - t0
                reconstruct_raster(out, tmp / "r.tif", units="db", overwrite=True)
                rmse = float(assess_rasters(src, tmp / "r.tif")["rmse_db"])
                row.update(reachable=True, rmse_db=rmse, met=rmse <= target,
                           bpp=os.path.getsize(out) * 8 / (width * height * bands), model=res["model"],
                           gain=res["gain"], residual_step_db=res.get("residual_step_db"),
                           passes=len(res["passes"]), seconds=round(seconds, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
    done = [r for r in rows if r["reachable"]]
    summary = {"met": f"{sum(r['met'] for r in done)}/{len(done)}",
               "mean_passes": round(statistics.mean(r["passes"] for r in done), 2) if done else None,
               "mean_seconds": round(statistics.mean(r["seconds"] for r in done), 2) if done else None,
               "mean_rmse_over_target": round(statistics.mean(r["rmse_db"] / r["target_rmse_db"] for r in done), 4)
               if done else None}
    import platform

    report = {"benchmark": "bench_rmse", "targets_db": args.targets, "results": rows, "summary": summary,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| scene | {' | '.join(f'--max-rmse-db {t:g}' for t in args.targets)} |\n|---|{'---|' * len(args.targets)}")
    for scene in dict.fromkeys(r["scene"] for r in rows):
        cells = [(f"{r['rmse_db']:.3f} dB, {r['bpp']:.3f} bpp, {r['passes']} passes, {r['seconds']:.1f} s"
                  if r["reachable"] else "not reachable") for r in rows if r["scene"] == scene]
        print(f"| {scene} | {' | '.join(cells)} |")
    print(f"\nmet: {summary['met']}, passes {summary['mean_passes']}, {summary['mean_seconds']} s on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
