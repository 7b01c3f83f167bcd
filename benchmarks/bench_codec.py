"""Codec benchmarks, written as JSON (+ PNG plots):

* `rd`: rate (bits per pixel from file bytes) vs PSNR / SSIM / ENL ratio / EPI on real Sentinel-1 rasters,
  for the learned codec at several latent bit depths and for JPEG2000 at the same measured bpp.
* `speed`: compress and reconstruct throughput (megapixels/s), peak memory (max RSS of a fresh process),
  and the share of time spent in the network, I/O, coding and blending, on 1k², 4k² and 8k² mosaics
  of a real chip (GDAL VRT, no disk cost).

    .venv/bin/python benchmarks/bench_codec.py rd --out benchmarks/results/codec_rd.json
    .venv/bin/python benchmarks/bench_codec.py speed --sizes 1024 4096 8192 --out benchmarks/results/codec_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))
DEFAULT_SCENES = [str(ROOT / "sar_ae_core" / "sample" / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif")]


def _assess(ref, test):
    from sar_ae_core.assess import assess_rasters

    r = assess_rasters(ref, test)
    return {k: r[k] for k in ("psnr", "ssim", "rmse_db", "enl_ratio", "epi", "valid_fraction")}


def run_rd(args) -> dict:
    """Learned codec at several bit depths vs JPEG2000 at the same measured bpp, per scene."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
    from sar_ae_core.jpeg2000 import jpeg2000_twin
    from sar_ae_core.model_io import load_bundle
    from sar_ae_core.scaling import ScalingParams

    bundle = load_bundle(args.model, "cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes:
            for bits in args.bits:
                sarz = Path(tmp) / f"{Path(scene).stem}_{bits}.sarz"
                rec = Path(tmp) / f"{Path(scene).stem}_{bits}.tif"
                facts = compress_raster(scene, sarz, bundle=bundle, bits=bits, device="cpu", overwrite=True)
                reconstruct_raster(sarz, rec, units="db", bundle=bundle, overwrite=True)
                learned = {"bpp": facts["bpp"], **_assess(scene, rec)}
                scaling = ScalingParams.from_dict(sarz_info(sarz)["scaling"])
                jp = Path(tmp) / f"{Path(scene).stem}_{bits}_jp2.tif"
                twin = jpeg2000_twin(scene, jp, facts["bpp"], scaling=scaling, overwrite=True)
                jpeg = {"bpp": twin["bpp"], **_assess(scene, jp)}
                row = {"scene": Path(scene).name, "bits": bits, "learned": learned, "jpeg2000": jpeg}
                results.append(row)
                print(f"{Path(scene).name} bits {bits}: learned {learned['bpp']:.3f} bpp PSNR {learned['psnr']:.2f} "
                      f"EPI {learned['epi']:.3f} ENLr {learned['enl_ratio']:.2f} | JPEG2000 {jpeg['bpp']:.3f} bpp "
                      f"PSNR {jpeg['psnr']:.2f} EPI {jpeg['epi']:.3f} ENLr {jpeg['enl_ratio']:.2f}", flush=True)
    return {"benchmark": "rate_distortion", "model": bundle.name, "model_sha256": bundle.sha256,
            "scenes": [Path(s).name for s in args.scenes], "results": results}


def plot_rd(report: dict, png: Path) -> None:
    """PSNR/SSIM/EPI/ENL ratio vs bpp, learned vs JPEG2000, one line per scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, key in zip(axes, ("psnr", "ssim", "epi", "enl_ratio")):
        for scene in report["scenes"]:
            rows = sorted((r for r in report["results"] if r["scene"] == scene), key=lambda r: r["learned"]["bpp"])
            ax.plot([r["learned"]["bpp"] for r in rows], [r["learned"][key] for r in rows], "o-",
                    label=f"learned {scene[:24]}")
            ax.plot([r["jpeg2000"]["bpp"] for r in rows], [r["jpeg2000"][key] for r in rows], "s--",
                    label=f"JPEG2000 {scene[:24]}")
        ax.set_xlabel("bits per pixel (file bytes)")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from sar_ae_core.codec import compress_raster, reconstruct_raster
from sar_ae_core.raster import mosaic_vrt
src, size, tmp, model, mode = {src!r}, {size}, {tmp!r}, {model!r}, {mode!r}
vrt = os.path.join(tmp, f"mosaic_{{size}}.vrt")
sarz = os.path.join(tmp, f"mosaic_{{size}}.sarz")
# warm-up on a small mosaic (first-call kernel set-up and model load are not throughput)
mosaic_vrt(src, os.path.join(tmp, "warm.vrt"), 256, 256)
compress_raster(os.path.join(tmp, "warm.vrt"), os.path.join(tmp, "warm.sarz"), model=model, units="db",
                device="cpu", overwrite=True)
reconstruct_raster(os.path.join(tmp, "warm.sarz"), os.path.join(tmp, "warm.tif"), model=model, overwrite=True)
if mode == "compress":
    mosaic_vrt(src, vrt, size, size)
    t = time.perf_counter()
    r = compress_raster(vrt, sarz, model=model, units="db", device="cpu", overwrite=True)
else:
    t = time.perf_counter()
    r = reconstruct_raster(sarz, os.path.join(tmp, f"rec_{{size}}.tif"), model=model, overwrite=True)
r["wall_s"] = time.perf_counter() - t
r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT" + json.dumps(r, default=str))
"""


def run_speed(args) -> dict:
    """Throughput and peak memory of compress and reconstruct, each in a fresh process per size."""
    from sar_ae_core.model_io import resolve_model

    model = str(resolve_model(args.model))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            row = {"size": size, "megapixels": size * size / 1e6}
            for mode in ("compress", "reconstruct"):
                code = _CHILD.format(root=str(ROOT), src=args.source, size=size, tmp=tmp, model=model, mode=mode)
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                r = json.loads(proc.stdout.split("RESULT", 1)[1])
                timing = r["timing"]
                total = sum(timing.values()) or 1.0
                row[mode] = {"wall_s": r["wall_s"], "mpx_per_s": size * size / 1e6 / r["wall_s"],
                             "peak_rss_mib": r["peak_rss_mib"], "timing_s": timing,
                             "time_share": {k: v / r["wall_s"] for k, v in timing.items()},
                             "other_share": max(0.0, 1 - total / r["wall_s"])}
                if mode == "compress":
                    row[mode]["bpp"] = r["bpp"]
                print(f"{size}² {mode}: {row[mode]['mpx_per_s']:.2f} MPx/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"network share {row[mode]['time_share']['network']:.0%}", flush=True)
            rows.append(row)
    return {"benchmark": "speed_memory", "source": Path(args.source).name, "model": Path(model).stem,
            "device": "cpu", "threads": os.cpu_count(), "results": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    rd = sub.add_parser("rd", help="rate-distortion vs JPEG2000")
    rd.add_argument("--scenes", nargs="+", default=DEFAULT_SCENES)
    rd.add_argument("--bits", nargs="+", type=int, default=[8, 6, 5, 4, 3])
    rd.add_argument("--model", default=None)
    rd.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_rd.json"))
    sp = sub.add_parser("speed", help="throughput and peak memory")
    sp.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096, 8192])
    sp.add_argument("--source", default=DEFAULT_SCENES[0])
    sp.add_argument("--model", default=None)
    sp.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_speed.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    report = run_rd(args) if args.what == "rd" else run_speed(args)
    report.update(machine=platform.platform(), python=platform.python_version(),
                  seconds=time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if args.what == "rd":
        plot_rd(report, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
