"""Codec benchmarks, written as JSON (+ PNG plots):

* `rd`: rate (bits per pixel from file bytes) vs PSNR / SSIM / ENL ratio / EPI on real Sentinel-1 rasters,
  for the learned codec at several latent bit depths and for JPEG2000 at the same measured bpp.
* `speed`: whole-process compress and reconstruct (as a user runs them: reconstruct writes a zstd GeoTIFF by
  default; also timed with --output-compress none, as gdal_translate writes) next to GDAL JPEG2000
  (OpenJPEG) and HTJ2K (OpenJPH via imagecodecs) encode/decode at the same file size, alternated in one run,
  with each process's peak RSS, on 1k², 4k² and 8k² mosaics of a real scene; in-process throughput of all three;
  each network on its work unit on one thread (MACs counted in the graph, GMAC/s, fraction of the measured
  convolution peak).

    .venv/bin/python benchmarks/bench_codec.py rd --out benchmarks/results/codec_rd.json
    .venv/bin/python benchmarks/bench_codec.py speed --sizes 1024 4096 8192 --rounds 3
    .venv/bin/python benchmarks/bench_codec.py postfilter      # the post-filter with and without its bright gain
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))
DEFAULT_SCENES = [str(ROOT / "sar_ae_core" / "sample" / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif")]


def _assess(ref, test):
    from sar_ae_core.quality.assess import assess_rasters

    r = assess_rasters(ref, test)
    return {k: r[k] for k in ("psnr", "ssim", "rmse_db", "enl_ratio", "epi", "valid_fraction")}


def run_rd(args) -> dict:
    """Learned codec at several bit depths vs JPEG2000 at the same measured bpp, per scene."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin
    from sar_ae_core.nn.model_io import load_bundle
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


def _mosaic(src: str, path: Path, size: int) -> None:
    """Band 1 of a real scene tiled (mirrored) to size x size, float32 dB, tiled uncompressed GeoTIFF."""
    import numpy as np
    import rasterio

    with rasterio.open(src) as r:
        a = r.read(1)
        prof = r.profile
    reps = -(-size // min(a.shape))
    big = np.block([[a if (i + j) % 2 == 0 else a[:, ::-1] for j in range(reps)] for i in range(reps)])[:size, :size]
    prof.update(count=1, width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress=None,
                dtype="float32")
    with rasterio.open(path, "w", **prof) as w:
        w.write(big.astype("float32"), 1)


def _u16(src: Path, path: Path, scaling) -> None:
    """The 16-bit scaled image JPEG2000 and HTJ2K code (what sar_ae_core.quality.jpeg2000 stages), tiled GeoTIFF."""
    import numpy as np
    import rasterio

    with rasterio.open(src) as r:
        scaled, _ = scaling.forward(r.read(), "db", r.nodata)
        prof = r.profile
    prof.update(dtype="uint16", nodata=None)
    with rasterio.open(path, "w", **prof) as w:
        w.write(np.rint(scaled * 65535).astype("uint16"))


_HTJ2K = r"""
import sys, numpy as np, rasterio, imagecodecs
mode, a, b, level = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
if mode == "encode":
    with rasterio.open(a) as r:
        img = r.read(1)
    open(b, "wb").write(imagecodecs.htj2k_encode(img, level=level))
else:
    img = imagecodecs.htj2k_decode(open(a, "rb").read())
    with rasterio.open(b, "w", driver="GTiff", width=img.shape[1], height=img.shape[0], count=1,
                       dtype=img.dtype.name, tiled=True) as w:
        w.write(img, 1)
"""


def _timed(cmd: list[str], env: dict) -> dict:
    """Wall seconds and peak RSS (MiB) of one whole process. The RSS comes from GNU time run as the parent: a
    child forked from this (large) Python process would inherit its high-water mark."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "SARAE_RSS_KB %M", *cmd], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    kb = int(proc.stderr.rsplit("SARAE_RSS_KB", 1)[1].split()[0])
    return {"wall_s": wall, "peak_rss_mib": kb / 1024}


def _match_jp2(u16: Path, target_bytes: int, tmp: Path) -> tuple[float, int]:
    """GDAL JP2OpenJPEG QUALITY giving the file size closest to target_bytes (secant steps on the file bytes; QUALITY is
    the percentage of the raw 16-bit size, so bpp ≈ 16 × QUALITY / 100 to start)."""
    import rasterio

    with rasterio.open(u16) as r:
        pixels = r.width * r.height * r.count
    q = 100.0 * target_bytes * 8 / pixels / 16
    best = None
    for _ in range(6):
        out = tmp / "probe.jp2"
        subprocess.run(["gdal_translate", "-q", "-of", "JP2OpenJPEG", "-co", f"QUALITY={q:.4f}", "-co",
                        "REVERSIBLE=NO", str(u16), str(out)], check=True)
        n = out.stat().st_size
        if best is None or abs(n - target_bytes) < abs(best[1] - target_bytes):
            best = (q, n)
        if abs(n / target_bytes - 1) <= 0.01:
            break
        q = min(100.0, max(1e-3, q * target_bytes / n))
    return best


def _match_htj2k(u16: Path, target_bytes: int) -> tuple[float, int]:
    """imagecodecs htj2k_encode quantization `level` giving the size closest to target_bytes."""
    import imagecodecs
    import rasterio

    with rasterio.open(u16) as r:
        img = r.read(1)
    lo, hi = 0.0, 40.0
    best = None
    for _ in range(16):
        level = 0.5 * (lo + hi)
        n = len(imagecodecs.htj2k_encode(img, level=level))
        if best is None or abs(n - target_bytes) < abs(best[1] - target_bytes):
            best = (level, n)
        lo, hi = (level, hi) if n > target_bytes else (lo, level)
    return best


def _in_process(src: Path, sarz: Path, u16: Path, jp2_q: float, ht_level: float, tmp: Path) -> dict:
    """Throughput inside one warm process (model loaded, second call timed) for the three codecs."""
    import imagecodecs
    import rasterio
    from rasterio.io import MemoryFile

    from sar_ae_core.codec import compress_raster, reconstruct_raster

    out = {}
    for _ in range(2):
        t = time.perf_counter()
        c = compress_raster(src, tmp / "ip.sarz", overwrite=True)
        out["codec_compress_s"] = time.perf_counter() - t
        t = time.perf_counter()
        d = reconstruct_raster(sarz, tmp / "ip.tif", overwrite=True)
        out["codec_reconstruct_s"] = time.perf_counter() - t
    out["codec_timing"] = {"compress": c["timing"], "reconstruct": d["timing"]}
    with rasterio.open(u16) as r:
        img, prof = r.read(1), r.profile
    t = time.perf_counter()
    blob = imagecodecs.htj2k_encode(img, level=ht_level)
    out["htj2k_encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    imagecodecs.htj2k_decode(blob)
    out["htj2k_decode_s"] = time.perf_counter() - t
    prof.update(driver="JP2OpenJPEG", QUALITY=f"{jp2_q:.4f}", REVERSIBLE="NO")
    for key in ("tiled", "blockxsize", "blockysize", "interleave"):  # GTiff layout options JP2OpenJPEG refuses
        prof.pop(key, None)
    with MemoryFile() as mem:
        t = time.perf_counter()
        with mem.open(**prof) as w:
            w.write(img, 1)
        out["jpeg2000_encode_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with mem.open() as r:
            r.read(1)
        out["jpeg2000_decode_s"] = time.perf_counter() - t
    return out


def onnx_conv_macs(onnx_bytes: bytes, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every Conv in an ONNX graph for an input of `shape` (ONNX shape inference)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load_from_string(onnx_bytes)
    for d, n in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = n
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    weights = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Cast"}  # fp16 weights cast to fp32
    total = 0
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        name = casts.get(n.input[1], n.input[1])
        w = weights[name] if name in weights else shapes[n.input[1]]  # GDN: a weight computed in the graph
        out = shapes[n.output[0]]
        total += int(np.prod(out)) * int(np.prod(w[1:]))
    return total


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _best_seconds(sess, x, repeats: int = 5) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        best = min(best, time.perf_counter() - t)
    return best


def run_stages(model: str) -> dict:
    """Each network the codec runs, on one thread, on the work unit the codec gives it: MACs counted in the graph
    (halo included), GMAC/s, output megapixels per second, and the fraction of this CPU's convolution peak (the best
    GMAC/s ONNX Runtime reaches on one thread on a wide 3x3 convolution, measured here)."""
    import io
    import zipfile

    import torch

    from sar_ae_core.codec import ENCODE_UNIT_PIXELS, UNIT_PIXELS
    from sar_ae_core.nn.model_config import decoder_halo_cells, encoder_halo_cells
    from sar_ae_core.nn.model_io import load_bundle, resolve_model
    from sar_ae_core.nn.runtime import runtime_path

    bundle = load_bundle(model)
    zpath = runtime_path(Path(resolve_model(model)))
    z = zipfile.ZipFile(zpath)
    f, cfg = bundle.downsample_factor, bundle.config
    tile = 256
    he, hd = encoder_halo_cells(cfg) or 2, decoder_halo_cells(cfg) or 2
    # peak: 256 -> 256 channels, 3x3, 64 x 64 (the widest convolutions reach it)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    buf = io.BytesIO()
    torch.onnx.export(conv, torch.rand(1, 256, 64, 64), buf, opset_version=17, dynamo=False)
    x = np.random.default_rng(0).random((1, 256, 64, 64), dtype=np.float32)
    peak = 256 * 256 * 9 * 64 * 64 / _best_seconds(_session(buf.getvalue()), x) / 1e9
    names = set(z.namelist())
    stages = {}
    enc_w, enc_h = ENCODE_UNIT_PIXELS + 2 * he * f, tile + 2 * he * f
    n_act = len(bundle.nets.active) if bundle.nets.active is not None else cfg.latent_channels
    core = (tile // f, UNIT_PIXELS // f)
    units = {
        "encoder": ("encoder.onnx", (1, cfg.in_channels, enc_h, enc_w), tile * ENCODE_UNIT_PIXELS),
        "encoder_active": ("encoder_active.onnx", (1, cfg.in_channels, enc_h, enc_w), tile * ENCODE_UNIT_PIXELS),
        "decoder": ("decoder.onnx", (1, cfg.latent_channels, core[0] + 2 * hd, core[1] + 2 * hd),
                    tile * UNIT_PIXELS),
        "decoder_active": ("decoder_active.onnx", (1, n_act, core[0] + 2 * hd, core[1] + 2 * hd),
                           tile * UNIT_PIXELS),
    }
    rng = np.random.default_rng(1)
    for key, (member, shape, useful_px) in units.items():
        if member not in names:
            continue
        graph = z.read(member)
        macs = onnx_conv_macs(graph, shape)
        x = rng.random(shape, dtype=np.float32) if key.startswith("encoder") else \
            np.rint(rng.normal(0, 1, shape)).astype(np.float32)
        sec = _best_seconds(_session(graph), x)
        stages[key] = {"input": list(shape), "useful_pixels": useful_px, "macs_per_useful_pixel": macs / useful_px,
                       "gmac_per_s": macs / sec / 1e9, "useful_mpx_per_s": useful_px / sec / 1e6,
                       "fraction_of_peak": macs / sec / 1e9 / peak}
    return {"model": model, "peak_gmac_per_s_one_thread": peak, "stages": stages,
            "note": "one thread, best of 5 runs per work unit; MACs counted from each ONNX graph's convolutions "
                    "for the unit the codec gives it (halo included) over the pixels the unit delivers"}


def run_speed(args) -> dict:
    """Whole-process compress/reconstruct next to GDAL JPEG2000 and HTJ2K at the same bytes, alternated
    (A B C A B C ...) in one run, with peak RSS; in-process throughput; achieved GMAC/s per network stage."""
    import statistics

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_models import stage_macs_per_pixel

    from sar_ae_core.nn.model_io import load_bundle, resolve_model

    name = args.model or "sarae-q2"
    torch_bundle = load_bundle(name, runtime="torch")
    macs = stage_macs_per_pixel(torch_bundle.model)
    stages = run_stages(name)
    for k, v in stages["stages"].items():
        print(f"{k}: {v['macs_per_useful_pixel']:.0f} MAC/px, {v['gmac_per_s']:.1f} GMAC/s on one thread "
              f"({100 * v['fraction_of_peak']:.0f} % of the {stages['peak_gmac_per_s_one_thread']:.1f} GMAC/s "
              f"peak), {v['useful_mpx_per_s']:.1f} MPx/s", flush=True)
    env = {**os.environ, "GDAL_NUM_THREADS": "ALL_CPUS"}
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for size in args.sizes:
            src, u16, sarz = tmp / f"src_{size}.tif", tmp / f"u16_{size}.tif", tmp / f"{size}.sarz"
            _mosaic(args.source, src, size)
            subprocess.run([py, "-m", "sar_ae_core", "compress", str(src), str(sarz), "--model", name,
                            "--overwrite"], check=True, capture_output=True, env=env)
            target = sarz.stat().st_size
            from sar_ae_core.coding.sarz import SarzFile

            with SarzFile(sarz) as f:
                scaling = f.scaling
            _u16(src, u16, scaling)
            jp2_q, jp2_bytes = _match_jp2(u16, target, tmp)
            ht_level, ht_bytes = _match_htj2k(u16, target)
            jp2, jdec = tmp / f"{size}.jp2", tmp / f"{size}_jp2.tif"
            ht, hdec = tmp / f"{size}.j2c", tmp / f"{size}_ht.tif"
            c_out, r_out = tmp / "c.sarz", tmp / "r.tif"
            jobs = {  # name: (command, the file it writes: removed before each run)
                "codec_compress": ([py, "-m", "sar_ae_core", "compress", str(src), str(c_out), "--model", name],
                                   c_out),
                "jpeg2000_encode": (["gdal_translate", "-q", "-of", "JP2OpenJPEG", "-co", f"QUALITY={jp2_q:.4f}",
                                     "-co", "REVERSIBLE=NO", str(u16), str(tmp / "e.jp2")], tmp / "e.jp2"),
                "htj2k_encode": ([py, "-c", _HTJ2K, "encode", str(u16), str(tmp / "e.j2c"), str(ht_level)],
                                 tmp / "e.j2c"),
                "codec_reconstruct": ([py, "-m", "sar_ae_core", "reconstruct", str(sarz), str(r_out)], r_out),
                "codec_reconstruct_uncompressed": ([py, "-m", "sar_ae_core", "reconstruct", str(sarz), str(r_out),
                                                    "--output-compress", "none"], r_out),
                "jpeg2000_decode": (["gdal_translate", "-q", "-of", "GTiff", str(jp2), str(jdec)], jdec),
                "htj2k_decode": ([py, "-c", _HTJ2K, "decode", str(ht), str(hdec), "0"], hdec),
            }
            subprocess.run(jobs["jpeg2000_encode"][0][:-1] + [str(jp2)], check=True)
            subprocess.run(jobs["htj2k_encode"][0][:-2] + [str(ht), str(ht_level)], check=True, env=env)
            rounds = args.rounds if size <= 4096 else max(1, args.rounds // 2)
            runs: dict = {k: [] for k in jobs}
            for _ in range(rounds):
                for k, (cmd, written) in jobs.items():
                    written.unlink(missing_ok=True)
                    runs[k].append(_timed(cmd, env))
            mpx = size * size / 1e6
            row = {"size": size, "megapixels": mpx, "rounds": rounds, "bytes": {
                "codec": target, "jpeg2000": jp2_bytes, "htj2k": ht_bytes},
                "bpp": {"codec": target * 8 / (size * size), "jpeg2000": jp2_bytes * 8 / (size * size),
                        "htj2k": ht_bytes * 8 / (size * size)}, "whole_process": {}}
            for k, rs in runs.items():
                walls = [r["wall_s"] for r in rs]
                row["whole_process"][k] = {"wall_s_median": statistics.median(walls), "wall_s": walls,
                                           "mpx_per_s": mpx / statistics.median(walls),
                                           "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
            wp = row["whole_process"]
            # ratios pair by pair (same round), then their median
            row["ratios"] = {
                "compress_vs_jpeg2000_encode": statistics.median(
                    j["wall_s"] / c["wall_s"] for c, j in zip(runs["codec_compress"], runs["jpeg2000_encode"])),
                "reconstruct_vs_jpeg2000_decode": statistics.median(
                    j["wall_s"] / c["wall_s"] for c, j in zip(runs["codec_reconstruct"], runs["jpeg2000_decode"])),
                "compress_vs_htj2k_encode": statistics.median(
                    j["wall_s"] / c["wall_s"] for c, j in zip(runs["codec_compress"], runs["htj2k_encode"])),
                "reconstruct_vs_htj2k_decode": statistics.median(
                    j["wall_s"] / c["wall_s"] for c, j in zip(runs["codec_reconstruct"], runs["htj2k_decode"])),
            }
            ip = _in_process(src, sarz, u16, jp2_q, ht_level, tmp)
            row["in_process_mpx_per_s"] = {k[:-2]: mpx / v for k, v in ip.items() if k.endswith("_s")}
            timing = ip["codec_timing"]
            enc_work = 1.16 * size * size  # pixels the encoder runs on (strip units with halo)
            row["network_gmac_per_s"] = {
                "encoder": (macs["encoder"] + macs["encoder_gdn"]) * enc_work / timing["compress"]["network"] / 1e9,
                "decoder": (macs["decoder"] + macs["decoder_gdn"]) * size * size / timing["reconstruct"]["network"]
                / 1e9}
            row["codec_timing_s"] = timing
            print(f"{size}²: compress {wp['codec_compress']['mpx_per_s']:.2f} MPx/s "
                  f"({row['ratios']['compress_vs_jpeg2000_encode']:.2f}x JPEG2000 encode), reconstruct "
                  f"{wp['codec_reconstruct']['mpx_per_s']:.2f} MPx/s "
                  f"({row['ratios']['reconstruct_vs_jpeg2000_decode']:.3f}x JPEG2000 decode), peak RSS "
                  f"{wp['codec_compress']['peak_rss_mib']:.0f}/{wp['codec_reconstruct']['peak_rss_mib']:.0f} MiB",
                  flush=True)
            rows.append(row)
            for p in tmp.iterdir():
                p.unlink()
    return {"benchmark": "speed_memory", "source": Path(args.source).name, "model": name,
            "runtime": load_bundle(name).runtime, "macs_per_pixel": macs,
            "encoder_work_factor": "1.16 (strip units of 1024 px + 2-cell halo, tile rows of 256 px + halo)",
            "threads": len(os.sched_getaffinity(0)), "gdal_num_threads": "ALL_CPUS", "network_stages": stages,
            "note": "whole processes as a user runs them (start-up, imports, reading and writing included); "
                    "JPEG2000/HTJ2K code the 16-bit scaled image at the codec's file size; ratios are other/ours "
                    "wall time pair by pair (>1: ours faster)", "results": rows}


def run_residual(args) -> dict:
    """Reconstruct with a residual layer: the same raster and step coded with every residual mode (format 3.2) and
    without the context mode (the frames of 3.1 and before), whole `reconstruct` processes alternated round by
    round; ratio = context / older modes, pair by pair."""
    import statistics

    from sar_ae_core.coding import residual as res
    from sar_ae_core.refine import compress_with_residual

    src = Path(args.source) if os.path.exists(args.source) else DATA / args.source
    env = dict(os.environ)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files = {}
        for name, variants in (("context", res.CONTEXT_VARIANTS), ("older_modes", ())):
            saved = res.CONTEXT_VARIANTS
            res.CONTEXT_VARIANTS = variants
            try:
                r = compress_with_residual(src, tmp / f"{name}.sarz", args.step, overwrite=True)
            finally:
                res.CONTEXT_VARIANTS = saved
            files[name] = {"bytes": r["bytes"], "bpp": r["bpp"], "residual_bytes": r.get("residual_bytes")}
        times = {k: [] for k in files}
        for _ in range(args.rounds):
            for name in files:
                cmd = [py, "-m", "sar_ae_core", "reconstruct", str(tmp / f"{name}.sarz"), str(tmp / f"{name}.tif"),
                       "--overwrite"]
                times[name].append(_timed(cmd, env)["wall_s"])
        ratios = [a / b for a, b in zip(times["context"], times["older_modes"])]
    return {"benchmark": "residual_decode", "source": src.name, "step_db": args.step, "rounds": args.rounds,
            "files": files, "reconstruct_wall_s": times,
            "median_ratio_context_over_older": statistics.median(ratios),
            "notes": "whole processes (start-up included), alternated; the context file is smaller at the same step"}


def run_postfilter(args) -> dict:
    """The post-filter's own cost (`postfilter.apply`, what the decoder's row stage runs) on a real reconstruction
    in dB: the 5 × 5 taps alone and with the bright gain (format 3.4), alternated, one thread, in process."""
    import statistics

    import rasterio

    from sar_ae_core.coding import postfilter as pf
    from sar_ae_core.scaling import raw_to_db

    with rasterio.open(DATA / args.source) as ds:
        db = raw_to_db(ds.read(1, window=((0, min(ds.height, 512)), (0, min(ds.width, 2048)))).astype(np.float64),
                       "amplitude").astype(np.float32)
    padded = np.pad(db, pf.RADIUS, mode="reflect")
    taps = [4600] + [60, -40, 30, -20, 10, 50, -30, 20, -10, 40, -20, 10] + [-2000]
    kinds = {"taps": taps, "taps_and_bright_gain": taps + [1229]}
    times = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k, t in kinds.items():
            t0 = time.perf_counter()
            pf.apply(padded, t)
            times[k].append(time.perf_counter() - t0)
    px = db.size
    mpx = {k: px / statistics.median(v) / 1e6 for k, v in times.items()}
    return {"benchmark": "postfilter", "source": args.source, "pixels": px, "rounds": args.rounds,
            "seconds": times, "median_mpx_per_s": mpx,
            "ratio_bright_over_taps": statistics.median(times["taps_and_bright_gain"]) / statistics.median(times["taps"]),
            "notes": "in process, alternated; the decoder runs this per row chunk on its row stage's thread"}


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
    sp.add_argument("--rounds", type=int, default=3, help="alternated rounds per size (half at > 4096²)")
    sp.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_speed.json"))
    rs = sub.add_parser("residual", help="reconstruct time with the residual layer's context mode and without")
    rs.add_argument("--source", default="s1_iw_grdh_kerala_20180716_vv_dn.tiff")
    rs.add_argument("--step", type=float, default=1.5)
    rs.add_argument("--rounds", type=int, default=7)
    rs.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "residual_decode.json"))
    pp = sub.add_parser("postfilter", help="the post-filter's cost, with and without the bright gain")
    pp.add_argument("--source", default="s1_iw_grdh_kerala_20180716_vv_dn.tiff")
    pp.add_argument("--rounds", type=int, default=15)
    pp.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "postfilter_speed.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    report = {"rd": run_rd, "speed": run_speed, "residual": run_residual, "postfilter": run_postfilter}[args.what](args)
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
