"""Decoder pilot: what a lighter decoder costs in rate-distortion, on the held-out test scenes of every category.

The models compared share one encoder and entropy model (a light decoder is trained with
`python -m training --init-from sarae-q2 --train-only decoder --decoder light`), so at each quantization gain
they write files of the same bytes and the difference is the decoder's alone. Each point gets JPEG2000
(GDAL/OpenJPEG) and AVIF 10-bit monochrome (libaom) twins at the same bytes (AVIF interpolated in log-rate
between its two bracketing qualities). Reported per scene and per category: PSNR, SSIM, EPI, ENL ratio, RMSE,
the median |error| of the brightest 0.1 % of pixels, decoder MAC per pixel and reconstruct time.

    .venv/bin/python benchmarks/bench_decoder_pilot.py --models sarae-q2 runs/light/sarae-q2-light.pt \\
        --split-file training/splits/broad.json --split test --gains 0.7 1.0 1.6
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

METRICS = ("psnr", "ssim", "epi", "enl_ratio", "rmse_db", "bright_abs_err_db")


def _assess(ref, test) -> dict:
    import rasterio

    from sar_ae_core.quality.assess import assess_rasters
    from sar_ae_core.io.raster import open_raster

    r = assess_rasters(ref, test)
    out = {k: float(r[k]) for k in ("psnr", "ssim", "rmse_db", "enl_ratio", "epi")}
    with open_raster(ref) as a:
        from sar_ae_core.scaling import raw_to_db, valid_mask

        raw = a.read()
        ok = valid_mask(raw, a.units, a.nodata)
        db = raw_to_db(np.where(ok, raw, 1), a.units, 1e-10)
    with rasterio.open(test) as b:
        rec = b.read().astype(np.float64)
    vals = db[ok]
    thr = np.percentile(vals, 99.9)
    bright = ok & (db >= thr)
    out["bright_abs_err_db"] = float(np.median(np.abs(rec[bright] - db[bright])))
    return out


def main() -> None:
    from baselines import avif_twin, interpolate
    from bench_models import stage_macs_per_pixel
    from bench_rd import held_out

    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin
    from sar_ae_core.nn.model_io import load_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="bundles sharing one encoder (first = reference)")
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--gains", nargs="+", type=float, default=[0.7, 1.0, 1.6])
    ap.add_argument("--category", nargs="+", default=None, help="only these product categories")
    ap.add_argument("--twin-each", action="store_true",
                    help="models with different encoders (other bytes): a JPEG2000 twin at each model's own bytes, "
                         "and each model's PSNR difference to it")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder_pilot.json"))
    args = ap.parse_args()

    bundles = [load_bundle(m) for m in args.models]
    macs = {b.name: stage_macs_per_pixel(load_bundle(m, runtime="torch").model) for b, m in zip(bundles, args.models)}
    for name, m in macs.items():
        print(f"{name}: encoder {m['encoder'] + m['encoder_gdn']:.0f} MAC/px, decoder "
              f"{m['decoder'] + m['decoder_gdn']:.0f} MAC/px (GDN included)", flush=True)
    rows = []
    t_start = time.perf_counter()
    with held_out(args.split_file, args.split, args.category) as (tmp, scenes):
        for scene, category in scenes:
            for gain in args.gains:
                row = {"scene": scene.name, "category": category, "gain": gain, "models": {}}
                for b in bundles:
                    sarz, rec = tmp / f"{b.name}.sarz", tmp / f"{b.name}.tif"
                    c = compress_raster(scene, sarz, bundle=b, gain=gain, overwrite=True)
                    t0 = time.perf_counter()
                    reconstruct_raster(sarz, rec, units="db", bundle=b, overwrite=True)
                    row["models"][b.name] = {"bytes": c["bytes"], "bpp": c["bpp"],
                                             "reconstruct_s": time.perf_counter() - t0, **_assess(scene, rec)}
                    if args.twin_each:
                        with SarzFile(sarz) as f:
                            own = f.scaling
                        jt = jpeg2000_twin(scene, tmp / "jp2own.tif", c["bpp"], scaling=own, overwrite=True)
                        m = row["models"][b.name]
                        m["jpeg2000_psnr"] = _assess(scene, tmp / "jp2own.tif")["psnr"]
                        m["jpeg2000_bpp"] = jt["bpp"]
                        m["d_psnr_vs_jpeg2000"] = m["psnr"] - m["jpeg2000_psnr"]
                ref = row["models"][bundles[0].name]
                with SarzFile(tmp / f"{bundles[0].name}.sarz") as f:
                    scaling = f.scaling
                j = jpeg2000_twin(scene, tmp / "jp2.tif", ref["bpp"], scaling=scaling, overwrite=True)
                row["jpeg2000"] = {"bytes": j["bytes"], "bpp": j["bpp"], **_assess(scene, tmp / "jp2.tif")}
                av = avif_twin(scene, tmp / "avif.tif", ref["bytes"], scaling)
                for p in av:
                    p.update(_assess(scene, p["reconstruction"]))
                row["avif"] = interpolate(av, ref["bytes"], METRICS) | {"bpp": ref["bpp"]}
                rows.append(row)
                line = " | ".join(f"{n} {m['psnr']:.2f}" for n, m in row["models"].items())
                print(f"{category:<8} {scene.name[:38]:<38} g={gain:<4} {ref['bpp']:.3f} bpp | {line} | JPEG2000 "
                      f"{row['jpeg2000']['psnr']:.2f} | AVIF {row['avif']['psnr']:.2f}", flush=True)

    def mean(rs, side, k):
        vals = [(r["models"][side] if side in r["models"] else r[side])[k] for r in rs]
        return statistics.fmean(vals)

    summary = {}
    for cat in sorted({r["category"] for r in rows}):
        for gain in args.gains:
            rs = [r for r in rows if r["category"] == cat and r["gain"] == gain]
            sides = [b.name for b in bundles] + ["jpeg2000", "avif"]
            keys = METRICS + ("bpp",)
            summary[f"{cat} g={gain}"] = {s: {k: mean(rs, s, k) for k in keys + (("d_psnr_vs_jpeg2000",) if
                                                                               args.twin_each and s in rs[0]["models"]
                                                                               else ())}
                                          for s in sides} | {"scenes": len(rs)}
    report = {"benchmark": "decoder_pilot", "models": [{"name": b.name, "path": b.path, "decoder": b.config.decoder,
                                                         "macs_per_pixel": macs[b.name]} for b in bundles],
              "split_file": args.split_file, "split": args.split, "gains": args.gains, "results": rows,
              "summary": summary, "machine": platform.platform(), "seconds": time.perf_counter() - t_start,
              "notes": "bpp from whole-file bytes; the models share encoder and entropy model, so their files have "
                       "the same latent bytes at a gain; JPEG2000 matched within ~1 %, AVIF interpolated in "
                       "log-bytes between the bracketing qualities; bright = pixels at or above the source's "
                       "99.9th dB percentile"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if args.twin_each:  # models with their own bytes: bpp and PSNR each, and the difference to JPEG2000 at those bytes
        lines = ["| category, gain | " + " | ".join(f"{b.name} bpp / PSNR / Δ vs JPEG2000" for b in bundles) + " |",
                 "|---" * (1 + len(bundles)) + "|"]
        for key, m in summary.items():
            lines.append(f"| {key} ({m['scenes']}) | " + " | ".join(
                f"{m[b.name]['bpp']:.3f} / {m[b.name]['psnr']:.2f} / {m[b.name]['d_psnr_vs_jpeg2000']:+.2f}"
                for b in bundles) + " |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"wrote {out}")
        return
    lines = ["| category, gain | bpp | " + " | ".join(f"{b.name} PSNR" for b in bundles) +
             " | JPEG2000 | AVIF | " + " | ".join(f"{b.name} ENL ratio / EPI" for b in bundles) + " |",
             "|---" * (4 + 2 * len(bundles)) + "|"]
    for key, m in summary.items():
        first = m[bundles[0].name]
        lines.append(f"| {key} ({m['scenes']}) | {first['bpp']:.3f} | " +
                     " | ".join(f"{m[b.name]['psnr']:.2f}" for b in bundles) +
                     f" | {m['jpeg2000']['psnr']:.2f} | {m['avif']['psnr']:.2f} | " +
                     " | ".join(f"{m[b.name]['enl_ratio']:.2f} / {m[b.name]['epi']:.3f}" for b in bundles) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
