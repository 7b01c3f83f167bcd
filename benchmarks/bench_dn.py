"""The smooth uncalibrated DN scene (the Kerala test half, both polarisations) as a user codes it with `--rate R`,
looked at from three sides the category table cannot show:

- **what the file carries besides pixels**: the `.sarz` header (210 GCPs packed, the dB window, tables, index)
  against the JPEG2000 twin, which carries pixels only; JPEG2000 is measured at the same file bytes (as in every
  table) and also at the file's bytes less its header — the two bracket what the pixels alone cost;
- **RMSE in dB** of both (the must-show: RMSE ≤ JPEG2000's at the same bytes);
- **tile seams**: the benchmark's seam statistic (mean |step| across the codec's 256-px tile borders over the mean
  |step| everywhere, divided by the source's own: `bench_categories.seam_statistic`), the same over the steps of the
  lines 1–2 px either side of the borders (`versus="near"`: the same ground, so the texture of the scene along
  those few lines cancels), both also for the JPEG2000 twin (no 256-px tiles: its values are what the scene and a
  smoothing codec give without any tile grid), and the same measure on the
  *error* image (reconstruction − source), at the tile borders over the other multiples of 8 (the same phase of
  the networks' 8-px latent grid), for the codec and for JPEG2000 — which has no 256-px tiles, so its value is what
  the source's own texture along those few lines gives.

    .venv/bin/python benchmarks/bench_dn.py        # → benchmarks/results/kerala_dn.json (~2 min)
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RATES = (0.25, 0.5, 1.0, 2.0)
PHASE = 8  # px per latent cell of the bundled networks (3 stages)


def _db(path: Path):
    """(dB, validity) of band 1, as the training pack reads rasters (training.pack.read_db)."""
    from training.pack import read_db

    db = read_db(str(path), None)[0]
    return db, np.isfinite(db)


def error_seam(rec: np.ndarray, src: np.ndarray, ok: np.ndarray) -> float:
    """Mean |step| of the error image across the tile borders over its mean |step| across the other multiples of
    PHASE pixels, both axes pooled; 1 = no tile-aligned steps beyond the error's texture."""
    from sar_ae_core.defaults import TILE

    err = rec - src
    border, phase = [], []
    for axis in (0, 1):
        n = err.shape[axis]
        d = np.abs(np.diff(err, axis=axis))
        m = ok.take(range(1, n), axis=axis) & ok.take(range(n - 1), axis=axis)
        pos = np.arange(1, n)
        for sel, out in ((pos % TILE == 0, border), ((pos % PHASE == 0) & (pos % TILE != 0), phase)):
            s = [slice(None)] * 2
            s[axis] = sel
            out.append(d[tuple(s)][m[tuple(s)]])
    return float(np.concatenate(border).mean() / np.concatenate(phase).mean())


def main(argv=None) -> int:
    from bench_categories import seam_statistic, twin_scaling
    from bench_decoder_pilot import _assess
    from bench_rd import held_out

    from sar_ae_core.codec import reconstruct_raster, sarz_info
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin
    from sar_ae_core.rate import compress_to_rate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kerala_dn.json"))
    args = ap.parse_args(argv)
    rows, t0 = [], time.perf_counter()
    with held_out(args.split_file, "test", ["grd_dn"]) as (tmp, scenes):
        for scene, _ in scenes:
            src, ok = _db(scene)
            scaling = twin_scaling(scene)
            ref_seam, ref_near = seam_statistic(scene), seam_statistic(scene, versus="near")

            def seams(rec):
                return {"seam_ratio_to_source": seam_statistic(rec, reference=scene) / ref_seam,
                        "seam_near_ratio_to_source": seam_statistic(rec, reference=scene, versus="near") /
                        ref_near, "error_seam": error_seam(_db(rec)[0], src, ok)}
            for rate in args.rates:
                res = compress_to_rate(scene, tmp / "c.sarz", rate, overwrite=True)
                reconstruct_raster(tmp / "c.sarz", tmp / "c.tif", units="db", overwrite=True)
                info = sarz_info(tmp / "c.sarz")
                with SarzFile(tmp / "c.sarz") as f:
                    gcps = (f.header.get("georef") or {}).get("gcps")
                gcp_bytes = len(base64.b85decode(gcps[3:])) if isinstance(gcps, str) else 0
                header = info["parts"]["header+index"]
                codec = {"bytes": res["bytes"], "bpp": res["bpp"], "header_bytes": header, "gcp_bytes": gcp_bytes,
                         "model": res["model"], "gain": res["gain"], "residual_step_db": res.get("residual_step_db"),
                         **_assess(scene, tmp / "c.tif"), **seams(tmp / "c.tif")}
                j = jpeg2000_twin(scene, tmp / "j.tif", res["bpp"], scaling=scaling, overwrite=True)
                same = {"bytes": j["bytes"], "bpp": j["bpp"], **_assess(scene, tmp / "j.tif"), **seams(tmp / "j.tif")}
                pixels = res["bytes"] * 8 / res["bpp"]
                j2 = jpeg2000_twin(scene, tmp / "j2.tif", (res["bytes"] - header) * 8 / pixels, scaling=scaling,
                                   overwrite=True)
                payload = {"bytes": j2["bytes"], "bpp": j2["bpp"], **_assess(scene, tmp / "j2.tif")}
                rows.append({"scene": scene.name, "target_bpp": rate, "codec": codec, "jpeg2000": same,
                             "jpeg2000_at_bytes_less_header": payload})
                print(f"{scene.name[:40]} @{rate:g}: {codec['bpp']:.3f} bpp ({header} B header, {gcp_bytes} B GCPs) "
                      f"RMSE {codec['rmse_db']:.3f} dB | J2K same bytes {same['rmse_db']:.3f}, less header "
                      f"{payload['rmse_db']:.3f} | PSNR {codec['psnr']:.2f} / {same['psnr']:.2f} / "
                      f"{payload['psnr']:.2f} | seam codec {codec['seam_ratio_to_source']:.3f} / near "
                      f"{codec['seam_near_ratio_to_source']:.3f}, J2K {same['seam_ratio_to_source']:.3f} / "
                      f"{same['seam_near_ratio_to_source']:.3f}, error seam codec "
                      f"{codec['error_seam']:.3f} J2K {same['error_seam']:.3f}", flush=True)
    report = {"benchmark": "kerala_dn", "rates": args.rates, "split_file": args.split_file, "results": rows,
              "machine": platform.platform(), "seconds": time.perf_counter() - t0,
              "notes": "bpp from whole-file bytes; the JPEG2000 twin carries pixels only (no GCPs, no dB window); "
                       "error_seam: mean |step| of (reconstruction - source) dB across the 256-px tile borders over "
                       "that across the other multiples of 8 px, both axes; seam_ratio_to_source: border steps over "
                       "all steps, over the source's; seam_near_ratio_to_source: border steps over the steps "
                       "8 and 16 px either side of the borders, over the source's (bench_categories.seam_statistic)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
