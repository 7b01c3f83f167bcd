"""Batch throughput on Dask distributed: megapixels and files per second of `batch` with 1 and 2 single-threaded
workers (threads_per_worker=1, one codec thread each) on a batch of equal files (copies of the bundled Sentinel-1
chip, 512² VV+VH), and, for comparison, the same files compressed one after the other in one process that uses
every core for its network calls (the `compress` command's way).

Each cluster is started and warmed first (every worker loads the model once), then timed on the whole batch; the
cold start (cluster + first model loads) is reported apart. Run it on a quiet machine:

    .venv/bin/python benchmarks/bench_batch.py            # → benchmarks/results/batch.json
    .venv/bin/python benchmarks/bench_batch.py --files 4 --out /tmp/batch.json   # a quick smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sar_ae_core.cli import SAMPLE  # noqa: E402


def _versions() -> dict:
    out = {}
    for mod in ("numpy", "dask", "distributed", "onnxruntime", "torch", "rasterio"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def _pixels(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.width * ds.height * ds.count


def run_dask(files: list[str], workers: int, work: Path) -> dict:
    """Start a LocalCluster of `workers` single-threaded processes, warm it, time the batch on it."""
    import dask
    from distributed import Client, LocalCluster

    from sar_ae_core.batch import environ_kept, run_batch, worker_facts

    t0 = time.perf_counter()
    with environ_kept():  # the nannies set OMP_NUM_THREADS=1 here too: the one-process run must not inherit it
        with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=40)
        try:
            with Client(cluster) as client:
                # warm-up: one file per worker, so that every worker has loaded the model before the clock starts
                warm = run_batch(files[:workers], work / f"warm{workers}", scheduler=cluster.scheduler_address,
                                 progress=False)
                cold = time.perf_counter() - t0
                assert warm["counts"]["failed"] == 0, warm["items"]
                r = run_batch(files, work / f"out{workers}", scheduler=cluster.scheduler_address, progress=False)
                facts = list(client.run(worker_facts).values())
        finally:
            cluster.close()
    assert r["counts"] == {"done": len(files), "skipped": 0, "failed": 0}, r["items"]
    pixels = sum(it["pixels"] for it in r["items"])
    return {"mode": "dask", "workers": workers, "threads_per_worker": 1, "codec_threads": 1, "files": len(files),
            "megapixels": pixels / 1e6, "seconds": round(r["seconds"], 3),
            "megapixels_per_s": round(pixels / 1e6 / r["seconds"], 4), "files_per_s": round(len(files) / r["seconds"], 4),
            "cold_start_s": round(cold, 3), "model_loads_per_worker": [f["model_loads"] for f in facts],
            "bytes": sum(it["bytes"] for it in r["items"]),
            "task_seconds_median": sorted(it["seconds"] for it in r["items"])[len(files) // 2]}


def run_single_process(files: list[str], work: Path) -> dict:
    """The same files one after the other in this process (the codec's threads on every core)."""
    from sar_ae_core.codec import compress_raster
    from sar_ae_core.nn.model_io import load_bundle
    from sar_ae_core.nn.runtime import threads

    bundle = load_bundle(None, "cpu")
    compress_raster(files[0], work / "warm.sarz", bundle=bundle, device="cpu", overwrite=True)
    out = work / "single"
    out.mkdir()
    t0 = time.perf_counter()
    pixels = nbytes = 0
    for f in files:
        r = compress_raster(f, out / (Path(f).stem + ".sarz"), bundle=bundle, device="cpu")
        pixels += r["pixels"]
        nbytes += r["bytes"]
    seconds = time.perf_counter() - t0
    return {"mode": "one process", "workers": 1, "codec_threads": threads(), "files": len(files),
            "megapixels": pixels / 1e6, "seconds": round(seconds, 3),
            "megapixels_per_s": round(pixels / 1e6 / seconds, 4), "files_per_s": round(len(files) / seconds, 4),
            "bytes": nbytes, "runtime": bundle.runtime}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=24, help="files in the batch (default 24)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    ap.add_argument("--source", default=str(SAMPLE), help="the raster every file is a copy of (default: the sample)")
    ap.add_argument("--no-single", action="store_true", help="skip the one-process comparison")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch.json"))
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "in"
        src.mkdir()
        files = []
        for i in range(args.files):
            dst = src / f"scene_{i:03d}{Path(args.source).suffix}"
            shutil.copyfile(args.source, dst)
            files.append(str(dst))
        for w in args.workers:
            rows.append(run_dask(files, w, work))
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_single:
            rows.append(run_single_process(files, work))
            print(json.dumps(rows[-1]), flush=True)
        pixels_per_file = _pixels(Path(files[0]))
    by_workers = {r["workers"]: r for r in rows if r["mode"] == "dask"}
    report = {
        "meta": {
            "what": "batch compress throughput: LocalCluster of N single-threaded worker processes (spawned), "
                    "threads_per_worker=1, codec threads 1 per worker (OMP_NUM_THREADS=1), default model; timed on "
                    "a warm cluster (every worker had loaded the model); cold_start_s = cluster start + warm-up",
            "source": os.path.relpath(args.source, ROOT) if args.source.startswith(str(ROOT)) else args.source,
            "pixels_per_file": pixels_per_file,
            "cpu_count": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "versions": _versions(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": rows,
    }
    if 1 in by_workers and 2 in by_workers:
        report["speedup_2_vs_1_workers"] = round(by_workers[2]["megapixels_per_s"] / by_workers[1]["megapixels_per_s"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| mode | workers | files/s | MPx/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['workers']} | {r['files_per_s']:.2f} | {r['megapixels_per_s']:.2f} |")
    if "speedup_2_vs_1_workers" in report:
        print(f"\n2 workers vs 1: {report['speedup_2_vs_1_workers']:.2f}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
