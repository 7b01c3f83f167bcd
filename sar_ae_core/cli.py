"""Command line: `python -m sar_ae_core <command> ...` (exit 0 on success, 2 on bad input, 130 on cancel)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sar_ae_core.errors import Cancelled, SarInputError
from sar_ae_core.defaults import (CODEC_IDS, OUTPUT_COMPRESS, OUTPUT_UNITS, QUALITY_MODELS, SCALING_CHOICES, TILE,
                                  UNIT_CHOICES)
from sar_ae_core.nn.runtime import RUNTIMES

RUNTIME_HELP = ("network runtime: auto (ONNX Runtime on the CPU when the model has its ONNX export, else PyTorch), "
                "onnx or torch (default auto)")

SAMPLE = Path(__file__).resolve().parent / "sample" / "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"


def _fmt_db(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def cmd_inspect(args) -> int:
    """Print what was read: units (and why), size, georeference, dB range and valid fraction per band."""
    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.scaling import describe_raster

    with open_raster(args.input, bands=args.bands, units=args.units) as r:
        summary = describe_raster(r)
        info = r.info
    report = {
        "path": info.path, "driver": info.driver, "width": info.width, "height": info.height,
        "bands": info.bands, "band_names": info.band_names, "dtype": info.dtype, "units": info.units,
        "units_reason": info.units_reason, "nodata": info.nodata, "georef": info.georef.kind,
        "crs": _crs_name(info.georef.crs_wkt), **summary,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"{info.path}")
    print(f"  size      : {info.width} x {info.height} px, {len(info.bands)} band(s) {info.bands}, dtype {info.dtype}")
    print(f"  units     : {info.units}  ({info.units_reason})")
    print(f"  georef    : {info.georef.kind}, CRS {report['crs']}, nodata {info.nodata}")
    for b in summary["bands"]:
        name = f" {b['name']}" if b["name"] else ""
        print(f"  band {b['band']}{name}: valid {b['valid_fraction']:.1%}, dB min/p1/p50/p99/max "
              f"{_fmt_db(b.get('min_db'))} / {_fmt_db(b.get('p1_db'))} / {_fmt_db(b.get('p50_db'))} / "
              f"{_fmt_db(b.get('p99_db'))} / {_fmt_db(b.get('max_db'))}")
    return 0


def _crs_name(wkt: Optional[str]) -> str:
    if not wkt:
        return "none"
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def cmd_demo(args) -> int:
    """Main job on the bundled Sentinel-1 sample: compress with the default model, reconstruct a GeoTIFF,
    assess it against the original and against JPEG2000 at the same bits per pixel, write quality maps."""
    from sar_ae_core.quality.assess import assess_rasters
    from sar_ae_core.codec import compress_raster, reconstruct_raster
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin
    from sar_ae_core.nn.model_io import load_bundle
    from sar_ae_core.scaling import ScalingParams

    src = Path(args.input or SAMPLE)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd_inspect(argparse.Namespace(input=str(src), bands="all", units="auto", json=False))
    bundle = load_bundle(args.model, "cpu")
    sarz = out_dir / f"{src.stem}.sarz"
    rec = out_dir / f"{src.stem}_reconstructed.tif"
    rec_db = out_dir / f"{src.stem}_reconstructed_db.tif"
    jp2 = out_dir / f"{src.stem}_jpeg2000_db.tif"
    maps = out_dir / "maps"
    maps.mkdir(exist_ok=True)
    with _progress_bar("demo") as bar:
        c = compress_raster(src, sarz, bundle=bundle, device="cpu", overwrite=True, progress=bar)
        reconstruct_raster(sarz, rec, bundle=bundle, overwrite=True, progress=bar)
        reconstruct_raster(sarz, rec_db, units="db", bundle=bundle, overwrite=True)
        learned = assess_rasters(src, rec_db, maps_dir=maps, overwrite=True, progress=bar)
        from sar_ae_core.codec import sarz_info

        twin = jpeg2000_twin(src, jp2, c["bpp"], scaling=ScalingParams.from_dict(sarz_info(sarz)["scaling"]),
                             overwrite=True)
        jpeg = assess_rasters(src, jp2)
    print(f"model      : {bundle.name} ({bundle.config.variant}, latent {bundle.config.latent_channels} ch)")
    print(f"compressed : {sarz}  {c['bytes']} bytes = {c['bpp']:.3f} bits per pixel "
          f"({c['compression_ratio']:.0f}:1 vs float32), {c['seconds']:.1f} s")
    print(f"rebuilt    : {rec} (source units, same CRS/transform/nodata/band names)")
    print(f"{'':11}  {'bpp':>6} {'PSNR':>7} {'SSIM':>7} {'RMSE dB':>8} {'ENL ratio':>9} {'EPI':>6}")
    for name, bpp, m in (("learned", c["bpp"], learned), ("JPEG2000", twin["bpp"], jpeg)):
        print(f"{name:11}  {bpp:6.3f} {m['psnr']:7.2f} {m['ssim']:7.4f} {m['rmse_db']:8.3f} "
              f"{m['enl_ratio']:9.3f} {m['epi']:6.3f}")
    print(f"maps       : {', '.join(str(p) for p in learned['maps'].values())}")
    return 0


def cmd_compress(args) -> int:
    """Compress a raster into a .sarz file."""
    from sar_ae_core.codec import compress_raster
    from sar_ae_core.nn.model_io import QUALITY_MODELS

    if sum(x is not None for x in (args.quality, args.model, args.rate, args.max_rmse_db)) > 1:
        raise SarInputError(None, "give only one of --model, --quality, --rate and --max-rmse-db")
    model = QUALITY_MODELS[args.quality] if args.quality is not None else args.model
    options = dict(bands=args.bands, units=args.units, bits=args.bits, device=args.device, tile=args.tile,
                   runtime=args.runtime,
                   batch_size=args.batch_size, scaling=args.scaling, codec=args.codec, overwrite=args.overwrite,
                   post_filter=args.post_filter)
    # escape options left out: compress_raster's defaults, or with --rate the target's (rate.escape_policy)
    options.update({k: v for k, v in (("escape_step_db", args.escape_step), ("keep_brightest", args.keep_brightest))
                    if v is not None})
    if args.max_decoder_kmac is not None and args.rate is None and args.max_rmse_db is None:
        raise SarInputError(None, "--max-decoder-kmac goes with --rate or --max-rmse-db (it limits the rate points "
                                  "they choose from)")
    if args.residual_step is not None and (args.rate is not None or args.max_rmse_db is not None):
        raise SarInputError(None, "--residual-step goes with --model or --quality: --rate and --max-rmse-db choose "
                                  "the residual layer themselves")
    with _progress_bar("compress") as bar:
        if args.rate is not None:
            from sar_ae_core.rate import compress_to_rate, search_summary

            r = compress_to_rate(args.input, args.output, args.rate, residual=not args.no_residual,
                                 max_decoder_kmac=args.max_decoder_kmac, progress=bar, **options)
            print(search_summary(r))
        elif args.max_rmse_db is not None:
            from sar_ae_core.rate import compress_to_rmse

            r = compress_to_rmse(args.input, args.output, args.max_rmse_db, residual=not args.no_residual,
                                 max_decoder_kmac=args.max_decoder_kmac, progress=bar, **options)
            gain = f" at quantization gain {r['gain']:.3f}" if r["gain"] != 1.0 else ""
            if r.get("residual_step_db"):
                gain += f" + residual layer (step {r['residual_step_db']:.3g} dB)"
            print(f"--max-rmse-db {args.max_rmse_db:g}: RMSE {r['rmse_db']:.3f} dB with rate point {r['model']}{gain}, "
                  f"{len(r['passes'])} pass(es)")
        elif args.residual_step is not None:
            from sar_ae_core.refine import compress_with_residual

            r = compress_with_residual(args.input, args.output, args.residual_step, model=model, progress=bar,
                                       **options)
        else:
            r = compress_raster(args.input, args.output, model=model, progress=bar, **options)
    print(f"wrote {r['output']}: {r['bytes']} bytes, {r['bpp']:.4f} bits per pixel "
          f"({r['compression_ratio']:.1f}:1 vs the source dtype), model {r['model']}, {r['device']}, "
          f"{r['seconds']:.1f} s")
    print(f"dB range: {r['scaling']}")
    if r.get("residual_step_db"):
        print(f"residual layer: step {r['residual_step_db']:g} dB, {r['residual_bytes']} bytes, RMSE of the coded "
              f"pixels {r['residual_rmse_db']:.3f} dB")
    if r["escape_step_db"]:
        bright = f" or among the brightest {r['keep_brightest']:g} %" if r.get("keep_brightest") else ""
        print(f"kept exactly: {r['escaped_pixels']} pixel(s) outside the range{bright}, to "
              f"±{r['escape_step_db'] / 2:g} dB (nothing clipped)")
    return 0


def cmd_reconstruct(args) -> int:
    """Reconstruct a GeoTIFF from a .sarz file."""
    from sar_ae_core.codec import reconstruct_raster

    with _progress_bar("reconstruct") as bar:
        r = reconstruct_raster(args.input, args.output, units=args.units, window=args.window, model=args.model,
                               device=args.device, overwrite=args.overwrite, progress=bar, runtime=args.runtime,
                               output_compress=args.output_compress)
    print(f"wrote {r['output']}: {r['width']}x{r['height']} px, {r['bands']} band(s), {r['units']} "
          f"{r['dtype']}, {r['seconds']:.1f} s")
    from sar_ae_core.io.remote import TOTALS, is_url

    if is_url(args.input) and TOTALS["requests"]:
        print(f"read {TOTALS['bytes']} bytes of {args.input} in {TOTALS['requests']} range request(s)")
    return 0


def cmd_bitmap(args) -> int:
    """Write where the bits go (bits per pixel from the file's coded symbols) as a GeoTIFF."""
    from sar_ae_core.quality.bitmap import bit_allocation_raster

    with _progress_bar("bitmap") as bar:
        r = bit_allocation_raster(args.input, args.output, model=args.model, overwrite=args.overwrite, progress=bar)
    print(f"wrote {r['output']}: mean {r['mean_bpp']:.4f} bits per pixel of latents ({r['bits'] / 8:.0f} bytes by "
          f"the tables, {r['latent_bytes']} bytes coded), {r['seconds']:.1f} s")
    return 0


def cmd_info(args) -> int:
    """Show the header and rate of a .sarz file."""
    from sar_ae_core.codec import sarz_info

    info = sarz_info(args.input)
    if args.json:
        print(json.dumps(info, indent=2, default=_json_default))
        return 0
    print(f"{info['path']} (.sarz format {info['format']})")
    print(f"  raster    : {info['width']} x {info['height']} px, {info['bands']} band(s) {info['band_names']}, "
          f"source {info['source_units']} {info['source_dtype']}, georef {info['georef']}")
    print(f"  rate      : {info['bytes']} bytes = {info['bpp']:.4f} bits per pixel "
          f"(latents {info['parts']['latents']}, masks {info['parts']['masks']}, "
          f"header+index {info['parts']['header+index']} bytes)")
    print(f"  model     : {info['model']} (sha256 {info['model_sha256'][:16]}…)")
    print(f"  codec     : {info['codec']}, tiles {info['tiling']['tile']} px + halo "
          f"{info['tiling']['halo_cells']} cells, {info['tiling']['tile_rows']}x{info['tiling']['tile_cols']} tiles")
    sc = info["scaling"]
    print(f"  scaling   : [{sc['vmin_db']:.2f}, {sc['vmax_db']:.2f}] dB ({sc['clip_method']})")
    if info.get("post_filter"):
        from sar_ae_core.coding.postfilter import N_TAPS

        n = sum(t is not None for t in info["post_filter"])
        bright = sum(t is not None and len(t) > N_TAPS and t[N_TAPS] > 0 for t in info["post_filter"])
        print(f"  post-filter: 5x5 point-symmetric, fitted on the file's reconstruction, on {n} of {info['bands']} "
              f"band(s)" + (f", bright gain on {bright}" if bright else ""))
    if info["residual_step_db"]:
        n = sum(info.get("residual_wavelet") or [])
        bound = (f"{n} of {info['bands']} band(s) in a wavelet domain, RMSE-bounded, the rest every pixel within one "
                 "step of the source") if n else "every pixel within one step of the source"
        print(f"  residual  : layer of step {info['residual_step_db']:g} dB (in the masks' bytes; {bound})")
    return 0


def cmd_models(args) -> int:
    """List the bundled models with their measured rate and quality."""
    from sar_ae_core.nn.model_io import bundled_models, load_bundle, model_card

    rows = []
    for path in bundled_models():
        b = load_bundle(str(path))
        rows.append({"name": b.name, "path": str(path), "variant": b.config.variant,
                     "entropy_model": b.config.entropy_model, "decoder": b.config.decoder, "runtime": b.runtime,
                     "latent_channels": b.config.latent_channels,
                     "nominal_ratio": b.config.in_channels * 4 ** b.config.stages / b.config.latent_channels,
                     "size_bytes": path.stat().st_size,
                     "scaling_db": [b.scaling.vmin_db, b.scaling.vmax_db], **b.info})
        # the card beside a bundled model holds the latest measurement (benchmarks/bench_rd.py --update-cards)
        card = model_card(b.name)
        if card.get("measured"):
            rows[-1]["measured"] = card["measured"]
        if card.get("macs"):  # benchmarks/bench_models.py --update-cards
            rows[-1]["macs"] = card["macs"]
    if args.json:
        print(json.dumps(rows, indent=2, default=_json_default))
        return 0
    if not rows:
        print("no bundled models")
    for r in rows:
        quality = _measured_text(r.get("measured") or {})
        size = "entropy-coded" if r["entropy_model"] != "none" else f"nominal {r['nominal_ratio']:.0f}x"
        macs = r.get("macs") or {}
        cost = (f", encoder {macs['encoder_kmac_px']:g} / decoder {macs['decoder_kmac_px']:g} kMAC/px"
                if "decoder_kmac_px" in macs else "")
        print(f"{r['name']}: {r['variant']}{' (light decoder)' if r['decoder'] == 'light' else ''}, latent "
              f"{r['latent_channels']} ch ({size}){cost}, runs on {r['runtime']}, {r['size_bytes'] / 1e6:.1f} MB; scaling "
              f"[{r['scaling_db'][0]:.1f}, {r['scaling_db'][1]:.1f}] dB" + (f"; measured: {quality}" if quality else ""))
    return 0


def _measured_text(m: dict) -> str:
    """'0.503 bpp, PSNR 26.94 dB (JPEG2000 26.64), …' from a model card's measured block."""
    if not m.get("bpp"):
        return ""
    j = m.get("jpeg2000_at_same_bpp") or {}
    where = f"mean of {len(m['scenes'])} held-out scenes" if isinstance(m.get("scenes"), list) else \
        f"scene {m.get('scene', '?')}"
    parts = [f"{m['bpp']:.3f} bpp"]
    for key, label, unit in (("psnr", "PSNR", " dB"), ("ssim", "SSIM", ""), ("epi", "EPI", ""),
                             ("enl_ratio", "ENL ratio", "")):
        if key in m:
            vs = f" (JPEG2000 {j[key]:.3f})" if key in j else ""
            parts.append(f"{label} {m[key]:.3f}{unit}{vs}")
    return f"{', '.join(parts)} [{where}]"


def cmd_assess(args) -> int:
    """Compare a reconstruction with its reference: metrics as text/JSON, optional GeoTIFF maps."""
    from sar_ae_core.quality.assess import assess_rasters

    if args.json:
        from sar_ae_core.io.output import check_output_path

        check_output_path(args.json, args.overwrite, (args.reference, args.test))
    with _progress_bar("assess") as bar:
        report = assess_rasters(args.reference, args.test, units=args.units, test_units=args.test_units,
                                bands=args.bands, test_bands=args.test_bands, db_range=tuple(args.range) if args.range else None,
                                maps_dir=args.maps, window=args.window, block=args.block,
                                overwrite=args.overwrite, progress=bar)
    print(f"PSNR {report['psnr']:.2f} dB | SSIM {report['ssim']:.4f} | RMSE {report['rmse_db']:.3f} dB | "
          f"ENL ratio {report['enl_ratio']:.3f} | EPI {report['epi']:.4f} | valid {report['valid_fraction']:.1%}")
    for b in report["bands"]:
        print(f"  band {b['band']} {b['name'] or ''}: range [{b['range_db'][0]:.2f}, {b['range_db'][1]:.2f}] dB, "
              f"PSNR {b['psnr']:.2f}, SSIM {b['ssim']:.4f}, RMSE {b['rmse_db']:.3f} dB, "
              f"ENL ratio {b['enl_ratio']:.3f}, EPI {b['epi']:.4f}")
    for kind, path in report["maps"].items():
        print(f"  map {kind}: {path}")
    if args.json:
        from sar_ae_core.io.output import AtomicOutput

        with AtomicOutput(args.json, overwrite=True, inputs=(args.reference, args.test)) as out:
            with open(out.tmp, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2, default=_json_default)
    return 0


#: compress options whose compress_raster keyword differs from their argparse name; options batch handles itself
_BATCH_RENAMES = {"escape_step": "escape_step_db"}
_BATCH_OWN = ("model", "quality", "rate", "max_rmse_db", "overwrite", "residual_step", "no_residual",
              "max_decoder_kmac")
#: the compress options that also apply to batch --reconstruct
_BATCH_RECONSTRUCT = ("model", "device", "runtime", "overwrite")


def cmd_batch(args) -> int:
    """Compress (or --reconstruct) many inputs into a folder on a Dask cluster; exit 2 when some failed."""
    from sar_ae_core.batch import run_batch
    from sar_ae_core.defaults import QUALITY_MODELS

    if args.reconstruct:
        given = [opt for dest, (opt, default) in args.compress_options.items()
                 if dest not in _BATCH_RECONSTRUCT and getattr(args, dest) != default]
        if given:
            raise SarInputError(None, f"{', '.join(given)}: compress option(s), not for batch --reconstruct")
        options = {dest: getattr(args, dest) for dest in _BATCH_RECONSTRUCT[:-1] if dest in args.compress_options}
        options.update(units=args.output_units or "source", device=args.device or "cpu")
    else:
        if getattr(args, "max_rmse_db", None) is not None:
            raise SarInputError(None, "--max-rmse-db is not available in batch yet (use --rate or --quality)")
        if getattr(args, "max_decoder_kmac", None) is not None:
            raise SarInputError(None, "--max-decoder-kmac is not available in batch yet")
        if getattr(args, "residual_step", None) is not None:
            raise SarInputError(None, "--residual-step is not available in batch yet (use --rate: it adds a residual "
                                      "layer where that gives the smaller error)")
        if args.output_units is not None:
            raise SarInputError(None, "--output-units is for batch --reconstruct")
        if sum(x is not None for x in (args.quality, args.model, args.rate)) > 1:
            raise SarInputError(None, "give only one of --model, --quality and --rate")
        options = {_BATCH_RENAMES.get(dest, dest): getattr(args, dest) for dest in args.compress_options
                   if dest not in _BATCH_OWN}
        if args.rate is not None and args.no_residual:
            options["residual"] = False
        options.update(device=args.device or "auto", rate=args.rate,
                       model=QUALITY_MODELS[args.quality] if args.quality is not None else args.model)
    r = run_batch(args.inputs, args.out, reconstruct=args.reconstruct, options=options, workers=args.workers,
                  threads_per_worker=args.threads_per_worker, codec_threads=args.codec_threads,
                  scheduler=args.scheduler, retries=args.retries, overwrite=args.overwrite)
    c = r["counts"]
    for it in r["items"]:
        if it["status"] == "failed":
            print(f"failed: {it['error']}", file=sys.stderr)
    print(f"batch {'reconstruct' if args.reconstruct else 'compress'}: {len(r['items'])} input(s) -> {r['out']}: "
          f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed in {r['seconds']:.1f} s on "
          f"{r['workers']} worker(s), {r['megapixels_per_s']:.2f} MPx/s; manifest {r['manifest_csv']}")
    return 2 if c["failed"] else 0


def _add_batch_parser(sub) -> None:
    """`batch`: its own options, then every option of `compress` (copies of its definitions, so each keeps one
    home: the compress sub-parser)."""
    import copy

    s = sub.add_parser("batch", help="compress (or --reconstruct) many rasters into a folder on a Dask cluster",
                       description="Compress many rasters into DIR/<stem>.sarz (or, with --reconstruct, .sarz files "
                                   "into DIR/<stem>.tif) on Dask distributed, with a manifest (DIR/manifest.csv, "
                                   ".json). A rerun skips outputs that are complete and match their input and "
                                   "options. Exit 0 when every input is done or skipped, 2 when some failed.")
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, folders, glob patterns ('**' recurses) or @list.txt (one input per line)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (created when missing)")
    s.add_argument("--reconstruct", action="store_true", help="the way back: .sarz inputs to GeoTIFFs")
    s.add_argument("--output-units", default=None, choices=OUTPUT_UNITS,
                   help="with --reconstruct: source units and dtype (default) or dB float32")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster (default: one per core)")
    s.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="inputs each worker codes at once (default 1)")
    s.add_argument("--codec-threads", type=int, default=1, metavar="N",
                   help="threads each worker runs the network on (default 1: the workers share out the cores)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster (e.g. tcp://host:8786) instead of a local one; the inputs "
                        "and DIR must be paths every worker sees")
    s.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries of an input whose task raised an unexpected error (default 2)")
    compress = sub.choices["compress"]
    options = {}
    for action in compress._actions:
        if not action.option_strings or action.dest == "help":
            continue
        action = copy.copy(action)
        if action.dest == "device":
            action.default, action.help = None, "auto | cpu | cuda | cuda:N (default auto; with --reconstruct cpu)"
        elif action.dest == "overwrite":
            action.help = "replace existing outputs that do not match (matching ones are skipped either way)"
        s._add_action(action)
        options[action.dest] = (action.option_strings[-1], action.default)
    s.set_defaults(func=cmd_batch, compress_options=options)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


class _progress_bar:
    """A tqdm bar on stderr driven by the core's progress callback (silent when stderr is not a terminal)."""

    def __init__(self, desc: str):
        self.desc = desc

    def __enter__(self):
        self.bar = None
        if sys.stderr.isatty():  # tqdm is not even imported when nobody sees the bar
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=self.desc, unit="‰", leave=False)
        return self

    def __call__(self, fraction: float, message: str = "") -> bool:
        if self.bar is None:
            return True
        self.bar.n = int(1000 * fraction)
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()
        return True

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every command."""
    p = argparse.ArgumentParser(prog="python -m sar_ae_core",
                                description="Learned compression of SAR rasters (Sentinel-1) with "
                                            "georeferenced reconstruction and SAR quality metrics.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="show units, size, georeference, dB range and valid fraction of a raster")
    s.add_argument("input", help="GeoTIFF / any GDAL raster / .npy array")
    s.add_argument("--bands", default="all", help="'all' or a list like 1,2 (default all)")
    s.add_argument("--units", default="auto", choices=UNIT_CHOICES, help="source units (default auto)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("compress", help="compress a SAR raster into a .sarz file")
    s.add_argument("input", help="GeoTIFF / any GDAL raster / .npy array")
    s.add_argument("output", help="the .sarz file to write")
    s.add_argument("--model", default=None, help="bundled model name or path to a .pt bundle (default sarae-q2)")
    s.add_argument("--quality", type=int, choices=tuple(QUALITY_MODELS), default=None,
                   help=f"pick a bundled rate point: 1 (lowest rate) .. {max(QUALITY_MODELS)} (highest quality); "
                        "see `models`")
    s.add_argument("--rate", type=float, default=None, metavar="BPP",
                   help="write a file of BPP bits per pixel (within 2 %%): the rate point and its quantization "
                        "are searched at compress time")
    s.add_argument("--max-rmse-db", type=float, default=None, metavar="DB",
                   help="write the smallest file whose reconstruction is within DB of the source (RMSE in dB over the "
                        "valid pixels; each candidate is decoded and measured)")
    s.add_argument("--residual-step", type=float, default=None, metavar="DB",
                   help="add a residual layer: the difference between the source and the network's reconstruction, "
                        "quantized with this step in dB (error <= DB/2 per pixel; ~1 more bit per pixel per halving)")
    s.add_argument("--no-residual", action="store_true",
                   help="with --rate or --max-rmse-db: never use a residual layer (only rate points and quantization "
                        "gains)")
    s.add_argument("--post-filter", choices=("auto", "enl", "mse", "off"), default="auto",
                   help="a 5x5 filter fitted on the file's own reconstruction and stored in it (about 40 bytes a "
                        "band; with 'auto' not where that is more than 2-4 %% of the file): 'mse' least squares against "
                        "the source, 'enl' the same keeping the speckle of homogeneous areas (ENL ratio <= 1.14, "
                        "bright speckle peaks lifted where that needs it; asked for by name, also on small files, up "
                        "to 15 %% of the file), "
                        "'auto' (default) 'enl' from 0.5 bits per pixel and 'mse' below; not with --max-rmse-db")
    s.add_argument("--max-decoder-kmac", type=float, default=None, metavar="KMAC",
                   help="with --rate or --max-rmse-db: only rate points whose decoder costs at most KMAC thousand "
                        "multiply-accumulates per pixel (e.g. 2.5: the light decoders, a quarter of the operations "
                        "of sarae-q4's; see `models`)")
    s.add_argument("--bands", default="all", help="'all' or a list like 1,2 (default all)")
    s.add_argument("--units", default="auto", choices=UNIT_CHOICES, help="source units (default auto)")
    s.add_argument("--bits", type=int, default=8,
                   help="latent quantization bits for the uniform-zstd codec, 1-16 (default 8)")
    s.add_argument("--codec", default="auto", choices=("auto",) + CODEC_IDS,
                   help="latent coder: the model's learned entropy model when it has one (auto: "
                        "factorized-range-adaptive, which leaves out the latent channels the model never uses and "
                        "fits the tables to the raster where that pays), or uniform quantization + zstd")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    s.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    s.add_argument("--tile", type=int, default=TILE, help=f"tile size in pixels (default {TILE})")
    s.add_argument("--batch-size", type=int, default=8, help="encoder batch size (default 8)")
    s.add_argument("--scaling", default="auto", choices=SCALING_CHOICES,
                   help="dB range: the model's, fitted on this raster, or auto (model's unless the raster "
                        "falls outside it)")
    s.add_argument("--escape-step", type=float, default=None, metavar="DB",
                   help="pixels outside the dB range (bright point targets) are stored with this step so nothing "
                        "is clipped (default 0.1 dB; with --rate below 0.5 bpp: 1 dB; 0 clips them to the range)")
    s.add_argument("--keep-brightest", type=float, default=None, metavar="PERCENT",
                   help="also store the brightest PERCENT of the pixels that way (point targets; default 0.1; with "
                        "--rate below 0.5 bpp: 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("reconstruct", help="reconstruct a georeferenced GeoTIFF from a .sarz file")
    s.add_argument("input", help="the .sarz file")
    s.add_argument("output", help="GeoTIFF to write")
    s.add_argument("--units", default="source", choices=OUTPUT_UNITS,
                   help="source units and dtype (default) or dB float32")
    s.add_argument("--window", nargs=4, type=int, metavar=("COL", "ROW", "WIDTH", "HEIGHT"),
                   help="decode only this pixel window")
    s.add_argument("--model", default=None, help="model bundle (default: the one named in the file)")
    s.add_argument("--output-compress", default=OUTPUT_COMPRESS[0], choices=OUTPUT_COMPRESS,
                   help="GeoTIFF compression of the output (default zstd, level 1, read by GDAL 2.3 or later; "
                        "deflate and lzw with the predictor, for older readers; none)")
    s.add_argument("--device", default="cpu",
                   help="cpu (default: bit-exact everywhere) | auto | cuda | cuda:N")
    s.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("bitmap", help="map where the bits of a .sarz file go (bits per pixel, GeoTIFF)")
    s.add_argument("input", help="the .sarz file (factorized-range codec)")
    s.add_argument("output", help="GeoTIFF to write (one band per coded band)")
    s.add_argument("--model", default=None, help="model bundle (default: the one named in the file)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.set_defaults(func=cmd_bitmap)

    s = sub.add_parser("info", help="show the header and rate (bits per pixel) of a .sarz file")
    s.add_argument("input", help="the .sarz file")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("models", help="list the bundled models and their measured rate/quality")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("assess", help="compare a reconstruction with its reference (PSNR, SSIM, RMSE, ENL ratio, EPI)")
    s.add_argument("reference", help="original raster")
    s.add_argument("test", help="reconstruction on the same grid")
    s.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    s.add_argument("--maps", metavar="DIR", help="write abs_error_db.tif, enl_ratio.tif, epi.tif into DIR")
    s.add_argument("--units", default="auto", choices=UNIT_CHOICES, help="units of the reference (default auto)")
    s.add_argument("--test-units", default=None, choices=UNIT_CHOICES, help="units of the test raster (default: as --units)")
    s.add_argument("--bands", default="all", help="reference bands: 'all' or a list like 1,2")
    s.add_argument("--test-bands", default=None, help="test raster bands when they differ (default: --bands)")
    s.add_argument("--range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="dB range for PSNR/SSIM scaling (default: reference 1st-99th percentile per band)")
    s.add_argument("--window", type=int, default=15, help="window of the local ENL/EPI maps (odd, default 15)")
    s.add_argument("--block", type=int, default=1024, help="processing block size in pixels (memory bound)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.set_defaults(func=cmd_assess)

    _add_batch_parser(sub)

    s = sub.add_parser("demo", help="run the main job on the bundled Sentinel-1 sample")
    s.add_argument("--input", default=None, help="raster to use instead of the bundled sample")
    s.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    s.add_argument("--model", default=None, help="model bundle (default sarae-q2)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse, run, map errors to exit codes with a one-line message."""
    from sar_ae_core.io.output import discard_pending, terminate_as_cancel, was_terminated

    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    log = logging.getLogger("sar_ae_core")
    if not log.handlers:  # warnings (e.g. a job estimated to take hours) as one line on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    terminate_as_cancel()  # SIGTERM cleans up like Ctrl-C
    try:
        return int(args.func(args) or 0)
    except SarInputError as exc:
        discard_pending()
        if was_terminated(exc):  # a SIGTERM unwinding through a reader that re-raised it as the input's error
            print("terminated: no output written", file=sys.stderr)
            return 143
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        discard_pending()
        print("cancelled: no output written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `info FILE | head`: the reader left; say nothing more, as other tools do
        discard_pending()
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except BaseException as exc:  # noqa: B036 — `Terminated`, or an error raised around it (`was_terminated`)
        if not was_terminated(exc):
            raise
        discard_pending()
        print("terminated: no output written", file=sys.stderr)
        return 143
