"""Rate control and bright-target fidelity on the held-out test scenes of every product category.

- `--rate` accuracy: real bits per pixel of the written file (bytes × 8 / pixels) against the target, the passes
  the search needed and its wall time, for every held-out raster of at least 256 × 256 px;
- bright targets: median and maximum |error| (dB) of the brightest 0.1 % of valid pixels and the largest value
  that comes back, with the escapes (default) and without (`--escape-step 0`), default model.

    python benchmarks/bench_rate.py            # → benchmarks/results/rate_control.json (+ a Markdown table)
    python benchmarks/bench_rate.py --large 4096   # → benchmarks/results/rate_large.json

`--large SIZE`: `--rate` on a SIZE² mosaic of a real GRD scene (above `rate.SAMPLE_FROM_PIXELS`: the search runs on
a sample of its tiles), against the search over the whole raster (the sampling switched off): wall time, passes,
real bits per pixel and RMSE (dB) of both files; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sar_ae_core.codec import compress_raster, reconstruct_raster  # noqa: E402
from sar_ae_core.rate import compress_to_rate  # noqa: E402
from sar_ae_core.io.raster import open_raster  # noqa: E402
from sar_ae_core.scaling import raw_to_db, valid_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sar"
TARGETS = (0.25, 0.5, 1.0, 2.0, 3.0)


def test_scenes(min_side: int = 256) -> list[dict]:
    split = json.loads((ROOT / "training" / "splits" / "broad.json").read_text())
    return [e for e in split["entries"] if e["split"] == "test" and min(e["width"], e["height"]) >= min_side]


def bright_errors(src: Path, sarz: Path, work: Path) -> dict:
    rec = work / "rec.tif"
    reconstruct_raster(sarz, rec, units="db", overwrite=True)
    import rasterio

    with open_raster(src) as r:
        raw = r.read()
        valid = valid_mask(raw, r.units, r.nodata)
        db = raw_to_db(np.where(valid, raw, 1), r.units)
    with rasterio.open(rec) as ds:
        out = ds.read().astype(np.float64)
    m = valid & np.isfinite(out)
    bright = m & (db >= np.quantile(db[m], 0.999))
    err = np.abs(out[bright] - db[bright])
    return {"median_abs_err_db": float(np.median(err)), "max_abs_err_db": float(err.max()),
            "source_max_db": float(db[m].max()), "reconstructed_max_db": float(out[m].max())}


def sampled_against_whole(name: str, size: int, targets, target_key: str, run, out: str) -> int:
    """`run(src, sarz, target)` (a search writing `sarz`) on a size² mosaic of a real GRD scene at each target, with
    the search on a sample of the tiles (`rate.SAMPLE_FROM_PIXELS` as shipped) and over the whole raster (sampling
    off): wall time, passes, bits per pixel and RMSE of both files, as JSON in `out`."""
    from benchmarks.bench_codec import _mosaic
    from sar_ae_core import rate
    from sar_ae_core.rate import _rmse_db

    default, rows = rate.SAMPLE_FROM_PIXELS, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / f"mosaic_{size}_db.tif"
        _mosaic(str(DATA / "fullres" / "s1_grd_wslovakia_vv_db.tif"), src, size)
        for target in targets:
            row = {target_key: target}
            for how, threshold in (("sampled", default), ("whole", 1 << 62)):
                rate.SAMPLE_FROM_PIXELS = threshold
                try:
                    t0 = time.perf_counter()
                    res = run(src, work / "r.sarz", target)
                    seconds = time.perf_counter() - t0
                finally:
                    rate.SAMPLE_FROM_PIXELS = default
                bpp = (work / "r.sarz").stat().st_size * 8 / (size * size)
                row[how] = {"seconds": round(seconds, 2), "passes": len(res["passes"]),
                            "passes_over_whole_raster": len([p for p in res["passes"] if not p.get("sample")]),
                            "bpp": bpp, "model": res["model"], "gain": res["gain"],
                            "residual_step_db": res.get("residual_step_db"),
                            "rmse_db": _rmse_db(src, str(work / "r.sarz"), str(work))}
                if target_key == "target_bpp":
                    row[how]["error_pct"] = 100 * (bpp / target - 1)
            row["speedup"] = round(row["whole"]["seconds"] / row["sampled"]["seconds"], 2)
            row["bytes_ratio"] = round(row["sampled"]["bpp"] / row["whole"]["bpp"], 4)
            row["rmse_ratio"] = round(row["sampled"]["rmse_db"] / row["whole"]["rmse_db"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out).write_text(json.dumps({"benchmark": name, "size": size, "source":
                                     "s1_grd_wslovakia_vv_db.tif band 1, mirrored mosaic", "rows": rows,
                                     "sample_tiles": rate.SAMPLE_TILES}, indent=2) + "\n")
    return 0


def large(size: int, out: str) -> int:
    return sampled_against_whole("bench_rate --large", size, (0.5, 1.0, 2.0), "target_bpp",
                                 lambda src, sarz, t: compress_to_rate(src, sarz, t, overwrite=True), out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--large", type=int, default=None, metavar="SIZE")
    args = ap.parse_args(argv)
    if args.large:
        return large(args.large, args.out or str(ROOT / "benchmarks" / "results" / "rate_large.json"))
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "rate_control.json")
    rows, bright = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for e in test_scenes():
            src = DATA / e["path"]
            for target in TARGETS:
                t0 = time.perf_counter()
                res = compress_to_rate(src, work / "r.sarz", target, overwrite=True)
                nbytes = (work / "r.sarz").stat().st_size
                bpp = nbytes * 8 / (e["width"] * e["height"] * e["bands"])
                rows.append({"category": e["category"], "scene": e["path"], "target_bpp": target, "bpp": bpp,
                             "error_pct": 100 * (bpp / target - 1), "model": res["model"], "gain": res["gain"],
                             "passes": len(res["passes"]), "seconds": round(time.perf_counter() - t0, 2),
                             "reached": res["reached"]})
                print(json.dumps(rows[-1]), flush=True)
            for step in (0.1, 0.0):
                c = compress_raster(src, work / "b.sarz", escape_step_db=step, overwrite=True)
                bright.append({"category": e["category"], "scene": e["path"], "escape_step_db": step,
                               "bpp": c["bpp"], "escaped_pixels": c["escaped_pixels"],
                               **bright_errors(src, work / "b.sarz", work)})
                print(json.dumps(bright[-1]), flush=True)
    within = [abs(r["error_pct"]) <= 3 for r in rows]
    report = {"rate": rows, "bright_targets": bright, "within_3pct": f"{sum(within)}/{len(within)}"}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n| scene | {' | '.join(f'--rate {t:g}' for t in TARGETS)} |\n|---|{'---|' * len(TARGETS)}")
    for scene in dict.fromkeys(r["scene"] for r in rows):
        cells = [f"{r['bpp']:.3f} ({r['error_pct']:+.1f} %)" for r in rows if r["scene"] == scene]
        print(f"| {Path(scene).name} | {' | '.join(cells)} |")
    print(f"\nwithin ±3 %: {report['within_3pct']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
