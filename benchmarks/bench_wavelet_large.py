"""The residual layer's wavelet domain on rasters of any size: `--rate` on large mosaics of the smooth, uncalibrated
Kerala GRD DN scene (its held-out half, rows 416–837, VV, mirrored), each compress in a process of its own.

Per size and target: real bits per pixel, which bands the file codes in the wavelet domain, RMSE (dB) against the
source and against the JPEG2000 twin at the same bytes (GDAL/OpenJPEG on the same scaled data), the wall time and
the peak resident memory (`ru_maxrss`) of the compress process — which must not grow with the raster (the band
transform is streamed, `refine.BandWavelet`). Run it on a quiet machine.

    .venv/bin/python benchmarks/bench_wavelet_large.py                  # → benchmarks/results/wavelet_large.json
    .venv/bin/python benchmarks/bench_wavelet_large.py --sizes 2048 --rates 1
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "sar"
SOURCE = "s1_iw_grdh_kerala_20180716_vv_dn.tiff"
ROWS = (416, 837)  # the held-out test half (training/splits/broad.json)

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from sar_ae_core.rate import compress_to_rate
t = time.perf_counter()
r = compress_to_rate(sys.argv[2], sys.argv[3], float(sys.argv[4]), overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t, "bpp": r["bpp"], "bytes": r["bytes"], "model": r["model"],
                  "gain": r["gain"], "residual_step_db": r.get("residual_step_db"),
                  "residual_wavelet": r.get("residual_wavelet"), "passes": len(r["passes"]),
                  "sampled": r.get("sampled"), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def mosaic(path: Path, size: int) -> None:
    """The held-out half of the Kerala DN scene (uint16 amplitude) mirrored to size × size, tiled GeoTIFF."""
    import rasterio

    with rasterio.open(DATA / SOURCE) as r:
        a = r.read(1)[ROWS[0]:ROWS[1]]
        prof = {k: r.profile[k] for k in ("driver", "dtype", "nodata")}
    ry, rx = -(-size // a.shape[0]), -(-size // a.shape[1])
    big = np.block([[a[:: 1 if i % 2 == 0 else -1, :: 1 if j % 2 == 0 else -1] for j in range(rx)]
                    for i in range(ry)])[:size, :size]
    prof.update(count=1, width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress=None)
    with rasterio.open(path, "w", **prof) as w:
        w.write(big, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wavelet_large.json"))
    args = ap.parse_args(argv)

    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.quality.assess import assess_rasters
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin

    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in args.sizes:
            src = work / f"kerala_vv_dn_{size}.tif"
            mosaic(src, size)
            for rate in args.rates:
                out = work / f"k{size}_{rate:g}.sarz"
                p = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(src), str(out), str(rate)],
                                   capture_output=True, text=True)
                if p.returncode:
                    print(p.stderr[-2000:], file=sys.stderr)
                    return 1
                res = json.loads(p.stdout.strip().splitlines()[-1])
                rec = work / "rec.tif"
                reconstruct_raster(out, rec, units="db", overwrite=True)
                rmse = float(assess_rasters(src, rec)["rmse_db"])
                with SarzFile(out) as f:
                    scaling, flags = f.scaling, f.residual_wavelet
                j2 = jpeg2000_twin(src, work / "j2.tif", res["bpp"], scaling=scaling, overwrite=True)
                j2_rmse = float(assess_rasters(src, work / "j2.tif")["rmse_db"])
                row = {"size": size, "target_bpp": rate, **res, "wavelet_bands": flags, "rmse_db": rmse,
                       "jpeg2000": {"bpp": j2["bpp"], "rmse_db": j2_rmse}}
                rows.append(row)
                print(f"{size}² @{rate:g}: {res['bpp']:.4f} bpp, {res['model']} g {res['gain']:.3f} step "
                      f"{res['residual_step_db']} wavelet {flags}, RMSE {rmse:.3f} dB (J2K {j2['bpp']:.4f} bpp "
                      f"{j2_rmse:.3f}), {res['seconds']:.1f} s, peak {res['peak_rss_mb']:.0f} MB", flush=True)
    result = {"benchmark": "bench_wavelet_large", "source": f"{SOURCE} band 1 rows {ROWS[0]}-{ROWS[1]}, mirrored "
              "mosaic", "rows": rows, "machine": {"python": platform.python_version(), "cpu": platform.processor()
                                                   or platform.machine()},
              "seconds": round(time.perf_counter() - t_all, 1)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
