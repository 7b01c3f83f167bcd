"""Every product category, as a user runs the codec: `compress --rate R` on every held-out test scene of
`training/splits/broad.json` (calibrated GRD dB, uncalibrated GRD DN, RTC γ0 linear, SLC / other sensors), then
`reconstruct`, against JPEG2000 (GDAL/OpenJPEG) and AVIF 10-bit monochrome (libaom) at the same file bytes, coded
from the raster's dB data scaled to the range `--scaling auto` gives it (the same whatever the codec's search chose).

Per point: PSNR, SSIM, EPI, ENL ratio, RMSE (dB), the median |error| of the brightest 0.1 % of valid pixels, real
bits per pixel from the file's bytes (headers included), what the rate search chose (rate point, gain, residual
step). Per category and rate: means, the worst scene's ΔPSNR, and per scene the BD-rate against JPEG2000 and AVIF
over the rates. `--no-residual` also runs the search without the residual layer (what it buys). A rate point whose
model's weights have seen a scene in training (its card's training files and `lineage_files`) is left out of that
scene's search (`excluded_models`); a scene no rate point is held out for is left out (`not_held_out`).

    .venv/bin/python benchmarks/bench_categories.py                     # → benchmarks/results/categories.{json,md}
    .venv/bin/python benchmarks/bench_categories.py --rates 0.5 2 --category rtc --no-residual
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RATES = (0.25, 0.5, 1.0, 2.0)
METRICS = ("psnr", "ssim", "epi", "enl_ratio", "rmse_db", "bright_abs_err_db")


def seam_statistic(path: Path, tile: int = 256, reference: Path | None = None, versus: str = "all",
                   offset: int = 0) -> float | None:
    """Mean |step| between neighbouring pixels across the codec's tile borders (every `tile` rows and columns)
    over the mean |step| everywhere (`versus` 'all') or across the lines 8 and 16 pixels either side of each border
    ('near': the same ground and the same phase of the networks' 8-px latent grid and of any 2-, 4- or 8-px
    periodic texture of the source, so what the scene itself has along the few border lines cancels), in dB over
    pixels valid on both sides (of `reference`'s validity when given): 1 = borders look like the rest; tile-aligned
    steps raise it. None for a raster of one tile. `offset`: the same statistic on the lines `offset` pixels after
    the tile borders (a grid the codec does not have: `seam_spread`)."""
    db, ok = _db_valid(path)
    if reference is not None:
        ok = ok & _db_valid(reference)[1]
    return _seam(db, ok, tile, versus, offset)


def _db_valid(path: Path):
    """(dB, validity) of every band of a raster, in the units its file declares (a reconstruction's SARAE_UNITS
    tag says dB)."""
    import numpy as np

    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.scaling import raw_to_db, valid_mask

    with open_raster(path) as r:
        raw = r.read()
        ok = valid_mask(raw, r.units, r.nodata)
        return raw_to_db(np.where(ok, raw, 1), r.units), ok


def _seam(db, ok, tile: int, versus: str, offset: int) -> float | None:
    """`seam_statistic` on arrays (bands, rows, cols)."""
    import numpy as np

    border, other = [], []
    for axis in (1, 2):
        n = db.shape[axis]
        d = np.abs(np.diff(db, axis=axis))  # d[k]: the step between pixels k and k + 1
        m = ok.take(range(1, n), axis=axis) & ok.take(range(n - 1), axis=axis)
        pos = np.arange(1, n)
        at = (pos - offset) % tile == 0
        if not at.any():
            continue
        near = np.zeros(n - 1, bool)
        for off in NEAR_OFFSETS:
            near |= np.isin(pos, pos[at] + off)
        for sel, out in ((at, border), (np.ones(n - 1, bool) if versus == "all" else near, other)):
            idx = [slice(None)] * 3
            idx[axis] = sel
            out.append(d[tuple(idx)][m[tuple(idx)]])
    if not border:
        return None
    return float(np.mean(np.concatenate(border)) / np.mean(np.concatenate(other)))


#: the pseudo-grids `seam_spread` puts the tile grid among: the lines 8, 16, … 248 px after the tile borders
SPREAD_OFFSETS = tuple(range(8, 256, 8))


def seam_spread(path: Path, reference: Path | None, tile: int = 256) -> dict | None:
    """The seam statistic of a reconstruction over its source's (`seam_statistic`, 'all' and 'near') on the codec's
    tile grid, and where it falls among the same ratio on the 31 grids of the same spacing shifted by 8 … 248 px
    (`SPREAD_OFFSETS`: grids the codec does not have, in the same phase of the networks' 8-px latent grid): their
    median, 5th and 95th percentiles and how many of them lie below the tile grid's value (`rank`, 0 … 31). A
    codec with tile-aligned steps puts its tile grid above the spread (rank near 31); a texture of the source that
    the codec smooths away wherever it is gives the tile grid an ordinary rank. `reference` None: the statistic of
    `path` itself (not a ratio) — where a source's own texture puts its tile-grid lines. None for a raster of one
    tile."""
    import numpy as np

    db, ok = _db_valid(path)
    if reference is not None:
        src, src_ok = _db_valid(reference)
        ok = ok & src_ok
    out = {}
    for versus in ("all", "near"):
        ratios = []
        for offset in (0,) + SPREAD_OFFSETS:
            mine = _seam(db, ok, tile, versus, offset)
            theirs = _seam(src, src_ok, tile, versus, offset) if reference is not None else 1.0
            ratios.append(None if mine is None or not theirs else mine / theirs)
        if ratios[0] is None:
            return None
        pseudo = np.array([x for x in ratios[1:] if x is not None])
        out[versus] = {"at_tile_grid": ratios[0], "pseudo_median": float(np.median(pseudo)),
                       "pseudo_p05": float(np.percentile(pseudo, 5)), "pseudo_p95": float(np.percentile(pseudo, 95)),
                       "rank": int((pseudo < ratios[0]).sum()), "pseudo_grids": int(pseudo.size)}
    return out


#: the lines `seam_statistic(versus="near")` compares the tile borders with (pixels from the border)
NEAR_OFFSETS = (-16, -8, 8, 16)


_MACS: dict = {}


def model_kmacs(name: str) -> dict:
    """Encoder and decoder kMAC per pixel of a bundled model (bench_models.bundled_macs, counted once)."""
    if name not in _MACS:
        from bench_models import bundled_macs

        m = bundled_macs(name)
        _MACS[name] = {"encoder": m["encoder_kmac_px"], "decoder": m["decoder_kmac_px"]}
    return _MACS[name]


def point(scene: Path, tmp: Path, rate: float, residual: bool, max_decoder_kmac=None, exclude=()) -> dict:
    from bench_decoder_pilot import _assess

    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.rate import compress_to_rate

    sarz, rec = tmp / "c.sarz", tmp / "c.tif"
    t0 = time.perf_counter()
    r = compress_to_rate(scene, sarz, rate, overwrite=True, residual=residual, max_decoder_kmac=max_decoder_kmac,
                         exclude_models=exclude)
    t1 = time.perf_counter()
    reconstruct_raster(sarz, rec, units="db", overwrite=True)
    t2 = time.perf_counter()
    spread = seam_spread(rec, scene)
    macs = model_kmacs(r["model"])
    return {"bytes": r["bytes"], "bpp": r["bpp"], "model": r["model"], "gain": r["gain"],
            "encoder_kmac_px": macs["encoder"], "decoder_kmac_px": macs["decoder"],
            "residual_step_db": r.get("residual_step_db"), "passes": len(r["passes"]),
            "compress_s": t1 - t0, "reconstruct_s": t2 - t1, **_assess(scene, rec),
            "seam_ratio_to_source": spread and spread["all"]["at_tile_grid"],
            "seam_near_ratio_to_source": spread and spread["near"]["at_tile_grid"], "seam_spread": spread}


def twin_scaling(scene: Path):
    """The dB range the twins are coded in: the one `--scaling auto` gives the raster (the model's, or shifted onto
    uncalibrated data) — the same for every rate, whatever range the codec's search settled on for its file."""
    from sar_ae_core.defaults import DEFAULT_MODEL
    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.nn.model_io import load_bundle
    from sar_ae_core.scaling import choose_scaling

    with open_raster(scene) as r:
        return choose_scaling(r, load_bundle(DEFAULT_MODEL, "cpu").scaling, "auto")[0]


def twins(scene: Path, tmp: Path, sarz_like: dict, scaling) -> dict:
    from baselines import avif_twin, interpolate
    from bench_decoder_pilot import _assess

    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin

    # OpenJPEG's rate control is coarse on small rasters (one QUALITY step can move a 256² file by 15 %): where
    # its closest file misses the codec's bytes by more than 1 %, the file on the other side is made too and the
    # metrics are interpolated at exactly the codec's bytes, as for AVIF
    j = jpeg2000_twin(scene, tmp / "jp2.tif", sarz_like["bpp"], scaling=scaling, overwrite=True, bracket=True)
    files = [j] + ([j["bracket"]] if j["bracket"] is not None else [])
    points = [{"bytes": f["bytes"], **_assess(scene, f["reconstruction"])} for f in files]
    out = {"jpeg2000": interpolate(points, sarz_like["bytes"], METRICS)
           | {"bpp": sarz_like["bpp"] if len(files) == 2 else j["bpp"], "file_bpp": [f["bpp"] for f in files]}}
    av = avif_twin(scene, tmp / "avif.tif", sarz_like["bytes"], scaling)
    for p in av:
        p.update(_assess(scene, p["reconstruction"]))
    out["avif"] = interpolate(av, sarz_like["bytes"], METRICS) | {"bpp": sarz_like["bpp"]}
    return out


def main(argv=None) -> int:
    from baselines import bd_rate
    from bench_rd import held_out, models_trained_on

    from sar_ae_core.coding.sarz import SarzFile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split-file", default=str(ROOT / "training" / "splits" / "broad.json"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    ap.add_argument("--category", nargs="+", default=None)
    ap.add_argument("--no-residual", action="store_true", help="also the search without the residual layer")
    ap.add_argument("--max-decoder-kmac", type=float, default=None,
                    help="only rate points whose decoder fits this budget (compress --max-decoder-kmac)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "categories.json"))
    args = ap.parse_args(argv)
    variants = ["codec"] + (["codec_no_residual"] if args.no_residual else [])
    rows = []
    t_start = time.perf_counter()
    from sar_ae_core.defaults import RATE_POINTS

    trained_on = models_trained_on(args.split_file, args.split, args.category)
    not_held_out = []
    with held_out(args.split_file, args.split, args.category) as (tmp, scenes):
        for (scene, category), exclude in zip(scenes, trained_on):
            if set(RATE_POINTS) <= set(exclude):  # every rate point's weights have seen it
                not_held_out.append({"scene": scene.name, "category": category, "seen_by": list(exclude)})
                print(f"{category:<9} {scene.name[:36]:<36} not held out for any rate point: left out", flush=True)
                continue
            scaling = twin_scaling(scene)
            for rate in args.rates:
                row = {"scene": scene.name, "category": category, "target_bpp": rate, "excluded_models": list(exclude)}
                row["codec"] = point(scene, tmp, rate, True, args.max_decoder_kmac, exclude)
                with SarzFile(tmp / "c.sarz") as f:
                    row["codec"]["window_db"] = [f.scaling.vmin_db, f.scaling.vmax_db]
                if args.no_residual:
                    row["codec_no_residual"] = point(scene, tmp, rate, False, args.max_decoder_kmac, exclude)
                row.update(twins(scene, tmp, row["codec"], scaling))
                row["twin_window_db"] = [scaling.vmin_db, scaling.vmax_db]
                rows.append(row)
                c, j, a = row["codec"], row["jpeg2000"], row["avif"]
                extra = f" | no residual {row['codec_no_residual']['psnr']:.2f}" if args.no_residual else ""
                print(f"{category:<9} {scene.name[:36]:<36} {rate:<4} {c['bpp']:.3f} bpp {c['model']} "
                      f"g={c['gain']:.2f} r={c['residual_step_db']} dec {c['decoder_kmac_px']} kMAC/px | "
                      f"PSNR {c['psnr']:.2f} J2K {j['psnr']:.2f} "
                      f"AVIF {a['psnr']:.2f}{extra} | ENL {c['enl_ratio']:.2f}/{j['enl_ratio']:.2f}", flush=True)
    summary = {}
    for cat in sorted({r["category"] for r in rows}):
        cat_rows = [r for r in rows if r["category"] == cat]
        for rate in args.rates:
            rs = [r for r in cat_rows if r["target_bpp"] == rate]
            s = {side: {k: statistics.fmean(r[side][k] for r in rs) for k in METRICS + ("bpp",)}
                 for side in variants + ["jpeg2000", "avif"]}
            d = [r["codec"]["psnr"] - r["jpeg2000"]["psnr"] for r in rs]
            s.update(scenes=len(rs), d_psnr_vs_jpeg2000=statistics.fmean(d), worst_d_psnr_vs_jpeg2000=min(d),
                     d_psnr_vs_avif=statistics.fmean(r["codec"]["psnr"] - r["avif"]["psnr"] for r in rs),
                     max_rate_error_pct=max(abs(100 * (r["codec"]["bpp"] / rate - 1)) for r in rs),
                     max_decoder_kmac_px=max(r["codec"]["decoder_kmac_px"] for r in rs),
                     models=sorted({r["codec"]["model"] for r in rs}))
            summary[f"{cat} @{rate:g}"] = s
        bd = {}
        for scene in dict.fromkeys(r["scene"] for r in cat_rows):
            sr = sorted((r for r in cat_rows if r["scene"] == scene), key=lambda r: r["target_bpp"])
            bd[scene] = {f"bd_rate_vs_{o}_pct": bd_rate([r[o]["bpp"] for r in sr], [r[o]["psnr"] for r in sr],
                                                        [r["codec"]["bpp"] for r in sr],
                                                        [r["codec"]["psnr"] for r in sr])
                         for o in ("jpeg2000", "avif")}
        summary[f"{cat} BD-rate"] = bd
    report = {"benchmark": "categories", "rates": args.rates, "split_file": args.split_file, "split": args.split,
              "results": rows, "summary": summary, "machine": platform.platform(),
              "seconds": time.perf_counter() - t_start,
              "max_decoder_kmac": args.max_decoder_kmac, "not_held_out": not_held_out,
              "notes": "bpp from whole-file bytes; JPEG2000 matched within 1 % or else (OpenJPEG's coarse rate control on "
                       "small rasters) interpolated in log-bytes between the two files that bracket the codec's "
                       "bytes (file_bpp), AVIF interpolated in log-bytes between the bracketing qualities; both coded "
                       "from the raster's dB data scaled to the range "
                       "--scaling auto gives it (the codec's file may use the range fitted on the raster: uncalibrated "
                       "rasters from 1 bpp), 16 / 10 bits (pixels only, no georeference); bright = pixels at or above the source's 99.9th dB percentile; BD-rate < 0: "
                       "the codec needs fewer bits for the same PSNR"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    lines = ["| category @ --rate (scenes) | bpp | PSNR codec | JPEG2000 | AVIF | Δ vs JPEG2000 mean / worst | "
             + ("no residual | " if args.no_residual else "") + "SSIM codec / J2K | EPI codec / J2K | "
             "ENL ratio codec / J2K / AVIF | bright 0.1 % median err dB | decoder kMAC/px (max) |",
             "|---" * (11 + bool(args.no_residual)) + "|"]
    for key, s in summary.items():
        if key.endswith("BD-rate"):
            continue
        c, j, a = s["codec"], s["jpeg2000"], s["avif"]
        nr = f"{s['codec_no_residual']['psnr']:.2f} | " if args.no_residual else ""
        lines.append(f"| {key} ({s['scenes']}) | {c['bpp']:.3f} | {c['psnr']:.2f} | {j['psnr']:.2f} | "
                     f"{a['psnr']:.2f} | {s['d_psnr_vs_jpeg2000']:+.2f} / {s['worst_d_psnr_vs_jpeg2000']:+.2f} | {nr}"
                     f"{c['ssim']:.3f} / {j['ssim']:.3f} | {c['epi']:.3f} / {j['epi']:.3f} | "
                     f"{c['enl_ratio']:.2f} / {j['enl_ratio']:.2f} / {a['enl_ratio']:.2f} | "
                     f"{c['bright_abs_err_db']:.2f} | {s['max_decoder_kmac_px']:.1f} |")
    lines += ["", "| category | scene | BD-rate vs JPEG2000 | BD-rate vs AVIF |", "|---|---|---|---|"]
    for key, bd in summary.items():
        if key.endswith("BD-rate"):
            for scene, v in bd.items():
                f = lambda x: "n/a" if x is None else f"{x:+.1f} %"  # noqa: E731
                lines.append(f"| {key.split()[0]} | {scene} | {f(v['bd_rate_vs_jpeg2000_pct'])} | "
                             f"{f(v['bd_rate_vs_avif_pct'])} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
