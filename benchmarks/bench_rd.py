"""Rate-distortion report: the entropy-coded models (sarae-q1/q2/q3), the bundled sarae-default
(uniform-zstd, no entropy model) and JPEG2000 at the same measured bits per pixel, on held-out Sentinel-1 scenes.

Every rate is measured from real file bytes: the whole `.sarz` (latents + masks + header + chunk index) and the
whole `.jp2` (codestream + boxes). Each learned point gets a JPEG2000 twin encoded from the same [0, 1]-scaled dB
data (the scaling stored in the `.sarz` header) at the `.sarz`'s bpp (matched within ~1 %); a JPEG2000 curve at
fixed rates is drawn too. Quality: `sar_ae_core.quality.assess.assess_rasters` (PSNR/SSIM on each band's 1st-99th
percentile dB range, EPI on dB, ENL ratio on linear intensity over homogeneous areas; 1 = speckle kept,
> 1 smoothed).

    .venv/bin/python benchmarks/bench_rd.py                       # default scenes and models
    .venv/bin/python benchmarks/bench_rd.py --scenes A.tif B.tif --models sarae-q1 sarae-q2 --baseline-bits 8 4
    # per product category, on the held-out test scenes of a committed split, both scaling modes
    .venv/bin/python benchmarks/bench_rd.py --split-file training/splits/broad.json --split test \
        --models sarae-q2 runs/broad/sarae-broad-q2.pt --scaling auto source --baseline '' --no-entropy \
        --jp2-curve --out benchmarks/results/rd_broad.json

Writes benchmarks/results/rd_report.json, rd_report.png and rd_report.md (gap to JPEG2000 at every point).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("SARAE_DATA", ROOT.parent / "shared" / "data" / "sar"))
# the test split of training/README (never trained on) + Kerala DN (other radiometry, unseen)
DEFAULT_SCENES = [
    "s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif",
    "s1_iw_grd_camargue_20150309_asc_vv_db.tif",
    "s1_bigearthnet_20170617T064724_29UPU_4_55_VV_db.tif",
    "s1_bigearthnet_20170617T064724_29UPU_4_55_VH_db.tif",
    "s1_iw_grdh_kerala_20180716_vv_dn.tiff",
]
DEFAULT_MODELS = ["sarae-q1", "sarae-q2", "sarae-q3", "sarae-q4"]
METRICS = ("psnr", "ssim", "epi", "enl_ratio", "rmse_db")
JP2_CURVE = (0.125, 0.25, 0.5, 1.0, 2.0)


def _assess(ref, test) -> dict:
    from sar_ae_core.quality.assess import assess_rasters

    r = assess_rasters(ref, test)
    return {k: float(r[k]) for k in ("psnr", "ssim", "rmse_db", "enl_ratio", "epi", "valid_fraction")}


def _learned_point(scene: Path, bundle, tmp: Path, tag: str, bits: int = 8, codec: str = "auto",
                   scaling: str = "auto") -> tuple:
    from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
    from sar_ae_core.scaling import ScalingParams

    sarz, rec = tmp / f"{scene.stem}_{tag}.sarz", tmp / f"{scene.stem}_{tag}.tif"
    t0 = time.perf_counter()
    facts = compress_raster(scene, sarz, bundle=bundle, bits=bits, device="cpu", overwrite=True, codec=codec,
                            scaling=scaling)
    t1 = time.perf_counter()
    reconstruct_raster(sarz, rec, units="db", bundle=bundle, overwrite=True)
    t2 = time.perf_counter()
    info = sarz_info(sarz)
    parts = info["parts"]
    point = {"bpp": facts["bpp"], "bytes": facts["bytes"], "latent_bpp": 8 * parts["latents"] / info["pixels"],
             "overhead_bytes": parts["masks"] + parts["header+index"], "codec": info["codec"]["id"],
             "compress_s": t1 - t0, "reconstruct_s": t2 - t1, **_assess(scene, rec)}
    return point, ScalingParams.from_dict(info["scaling"])


def _jp2_point(scene: Path, bpp: float, scaling, tmp: Path, tag: str) -> dict:
    from sar_ae_core.quality.jpeg2000 import jpeg2000_twin

    out = tmp / f"{scene.stem}_{tag}_jp2.tif"
    twin = jpeg2000_twin(scene, out, bpp, scaling=scaling, overwrite=True)
    return {"bpp": twin["bpp"], "target_bpp": bpp, "bytes": twin["bytes"], **_assess(scene, out)}


def split_scenes(split_file: str, split: str, categories, folder: Path) -> list[tuple[str, str]]:
    """(raster path, category) of the entries of one split of a committed split file (training/corpus.py);
    entries that use part of a raster (the Kerala halves) are written to `folder` as untouched crops."""
    from training.corpus import load_split, write_window

    out = []
    for e in load_split(split_file):
        if e.split == split and (not categories or e.category in categories):
            out.append((write_window(e, folder, DATA), e.category))
    return out


def seen_files(bundle_or_name) -> set[str]:
    """Base names of the raster files a model's weights have seen in training (`model_io.seen_files`): from its card
    (a bundled model's name) or from its bundle's info and card."""
    from sar_ae_core.nn.model_io import model_card
    from sar_ae_core.nn.model_io import seen_files as seen

    if isinstance(bundle_or_name, str):
        return seen(model_card(bundle_or_name))
    return seen(bundle_or_name.info) | seen(model_card(bundle_or_name.name))


def entry_keys(split_file: str, split: str, categories) -> list[set[str]]:
    """Per entry of one split (in `split_scenes`' order), the names a model's training files would give it by: the
    raster's base name (the whole raster covers any window of it) and, for a window, `name#col,row,width,height`."""
    import os

    from training.corpus import load_split

    out = []
    for e in load_split(split_file):
        if e.split == split and (not categories or e.category in categories):
            out.append({os.path.basename(e.path), os.path.basename(e.key())})
    return out


def models_trained_on(split_file: str, split: str, categories) -> list[tuple[str, ...]]:
    """Per entry of one split (in `split_scenes`' order), the bundled rate points whose weights have seen it in
    training (`seen_files`): an evaluation on held-out scenes leaves them out of that scene's search."""
    from sar_ae_core.defaults import RATE_POINTS

    seen = {name: seen_files(name) for name in RATE_POINTS}
    return [tuple(n for n, files in seen.items() if keys & files) for keys in entry_keys(split_file, split, categories)]


@contextlib.contextmanager
def held_out(split_file: str, split: str, categories):
    """(a temporary work folder, [(raster path, category)] of one split) — the crops a split names are written in
    the folder and removed with it."""
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "crops").mkdir()
        yield tmp, [(Path(p), c) for p, c in split_scenes(split_file, split, categories, tmp / "crops")]


def run(args) -> dict:
    from sar_ae_core.nn.model_io import load_bundle

    models = [load_bundle(m, "cpu", runtime="torch") for m in args.models]
    baseline = load_bundle(args.baseline, "cpu", runtime="torch") if args.baseline else None
    rows, curves = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if args.split_file:
            crops = tmp / "crops"
            crops.mkdir()
            scene_list = split_scenes(args.split_file, args.split, args.category, crops)
            keys = entry_keys(args.split_file, args.split, args.category)
        else:
            from training.corpus import category_of

            scene_list = [(s, category_of(s)) for s in args.scenes]
            if args.category:
                scene_list = [(s, c) for s, c in scene_list if c in args.category]
            keys = [{Path(s).name} for s, _ in scene_list]
        seen = {b.name: seen_files(b) for b in models + ([baseline] if baseline else [])}
        skipped = []
        args.scenes = [Path(s).name for s, _ in scene_list]
        args.categories = {Path(s).name: c for s, c in scene_list}
        for (scene_name, category), scene_keys in zip(scene_list, keys):
            scene = Path(scene_name) if os.path.exists(scene_name) else DATA / scene_name
            multi = len(args.scaling) > 1
            entries = [(b, f"{b.name}[{sc}]" if multi else b.name, 8, "auto", sc) for b in models
                       for sc in args.scaling]
            # the same RD model without its entropy model: per-channel uniform quantization + zstd
            entries += [(b, f"{b.name}@uniform{bits}", bits, "uniform-zstd", "auto") for b in models
                        if b.name in args.no_entropy for bits in args.no_entropy_bits]
            if baseline is not None:
                entries += [(baseline, f"{baseline.name}@{bits}bit", bits, "auto", "auto")
                            for bits in args.baseline_bits]
            scaling = None
            for bundle, label, bits, codec, scaling_mode in entries:
                if scene_keys & seen[bundle.name]:  # not held out for this model: its weights have seen the scene
                    skipped.append({"scene": scene.name, "model": label})
                    continue
                tag = label.replace("@", "_").replace("[", "_").replace("]", "")
                learned, scaling_used = _learned_point(scene, bundle, tmp, tag, bits, codec, scaling_mode)
                scaling = scaling or scaling_used
                jp2 = _jp2_point(scene, learned["bpp"], scaling_used, tmp, tag)
                gap = {k: learned[k] - jp2[k] for k in METRICS}
                coded = learned["codec"] != "uniform-zstd"  # factorized-range(-active/-adaptive), hyperprior-range
                row = {"scene": scene.name, "category": category, "model": label, "scaling_mode": scaling_mode,
                       "scaling_db": [scaling_used.vmin_db, scaling_used.vmax_db], "entropy_coded": coded,
                       "bits": None if coded else bits, "learned": learned, "jpeg2000": jp2, "gap": gap}
                if learned["overhead_bytes"] * 8 > 0.05 * learned["bytes"] * 8:
                    # small rasters: the .sarz header (~1.1 kB of JSON) is a large part of the file; JPEG2000 at
                    # the latent-only rate shows the gap of the coding itself (JPEG2000 keeps its own headers)
                    j = _jp2_point(scene, learned["latent_bpp"], scaling_used, tmp, tag + "_lat")
                    row["jpeg2000_at_latent_bpp"] = j
                    row["gap_at_latent_bpp"] = {k: learned[k] - j[k] for k in METRICS}
                rows.append(row)
                print(f"{category:<9} {scene.name[:40]:<40} {label:<24} {learned['bpp']:.3f} bpp (latent {learned['latent_bpp']:.3f}) "
                      f"PSNR {learned['psnr']:.2f} SSIM {learned['ssim']:.3f} EPI {learned['epi']:.3f} "
                      f"ENLr {learned['enl_ratio']:.2f} | JPEG2000 {jp2['bpp']:.3f} bpp PSNR {jp2['psnr']:.2f} "
                      f"SSIM {jp2['ssim']:.3f} EPI {jp2['epi']:.3f} ENLr {jp2['enl_ratio']:.2f} | dPSNR "
                      f"{gap['psnr']:+.2f}", flush=True)
            for bpp in args.jp2_curve if scaling is not None else ():  # no model held out for it: no curve
                p = _jp2_point(scene, bpp, scaling, tmp, f"curve{bpp}")
                curves.append({"scene": scene.name, **p})
    return {"benchmark": "rate_distortion_rd_models",
            "models": [{"name": b.name, "sha256": b.sha256, "latent_channels": b.config.latent_channels,
                        "stages": b.config.stages, "variant": b.config.variant,
                        "entropy_model": b.config.entropy_model, "parameters": b.model.parameter_count()}
                       for b in models + ([baseline] if baseline else [])],
            "scenes": [Path(s).name for s in args.scenes], "categories": args.categories,
            "split_file": args.split_file, "split": args.split if args.split_file else None,
            "scaling_modes": list(args.scaling), "results": rows, "jpeg2000_curve": curves,
            "not_held_out": skipped,
            "notes": "bpp = 8 * whole-file bytes / (width * height * bands); JPEG2000 twin from the same scaled "
                     "dB data at the .sarz's bpp; PSNR/SSIM on each band's 1st-99th percentile dB range; "
                     "gap = learned - JPEG2000 (positive = learned better, except ENL ratio where 1 is ideal)"}


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = report["scenes"]
    fig, axes = plt.subplots(len(scenes), 4, figsize=(17, 3.3 * len(scenes)), squeeze=False)
    for i, scene in enumerate(scenes):
        rows = [r for r in report["results"] if r["scene"] == scene]
        rd = sorted((r for r in rows if r["entropy_coded"]), key=lambda r: r["learned"]["bpp"])
        base = sorted((r for r in rows if not r["entropy_coded"]), key=lambda r: r["learned"]["bpp"])
        curve = sorted((c for c in report["jpeg2000_curve"] if c["scene"] == scene), key=lambda c: c["bpp"])
        for j, key in enumerate(METRICS[:4]):
            ax = axes[i][j]
            ax.plot([c["bpp"] for c in curve], [c[key] for c in curve], "-", color="0.6", label="JPEG2000 curve")
            ax.plot([r["jpeg2000"]["bpp"] for r in rd], [r["jpeg2000"][key] for r in rd], "s", color="tab:orange",
                    label="JPEG2000 at matched bpp")
            ax.plot([r["learned"]["bpp"] for r in rd], [r["learned"][key] for r in rd], "o-", color="tab:blue",
                    label="learned RD (entropy-coded)")
            if any("gap_at_latent_bpp" in r for r in rd):
                ax.plot([r["learned"]["latent_bpp"] for r in rd], [r["learned"][key] for r in rd], "o--",
                        mfc="none", color="tab:blue", alpha=0.6, label="learned at latent-only bpp (no header)")
            for r in rd:
                ax.annotate(r["model"].replace("sarae-", ""), (r["learned"]["bpp"], r["learned"][key]), fontsize=7)
            for name, style, colour in (("sarae-default", "^:", "tab:red"), ("@uniform", "v:", "tab:purple")):
                pts = [r for r in base if name in r["model"]]
                if pts:
                    ax.plot([r["learned"]["bpp"] for r in pts], [r["learned"][key] for r in pts], style, color=colour,
                            label=("sarae-default (uniform-zstd)" if name == "sarae-default"
                                   else "RD model without entropy model (uniform-zstd)"))
            if key == "enl_ratio":
                ax.axhspan(0.8, 1.2, color="tab:green", alpha=0.08)
                ax.set_ylim(0.5, 2.5)  # a flat (starved) JPEG2000 image gives ENL ratios of 1e14
            ax.set_xscale("log", base=2)
            ax.set_xlabel("bits per pixel (whole file)")
            ax.set_title(f"{key} - {scene[:38]}", fontsize=8)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def markdown(report: dict) -> str:
    lines = ["# Rate-distortion: learned RD models vs JPEG2000 at matched bpp", "",
             "Rates from real file bytes (whole `.sarz`: latents + masks + header + index; whole `.jp2`). "
             "Δ = learned − JPEG2000 at the same bpp (positive PSNR/SSIM/EPI Δ = learned better; ENL ratio: 1 is "
             "ideal, > 1 smoothed). `latent bpp` = the range-coded latents alone; where the `.sarz` header, masks "
             "and index are > 5 % of the file (small rasters) the last column compares with JPEG2000 at the "
             "latent-only rate. That column is only a hint: JPEG2000 keeps its own headers (a few hundred bytes); "
             "the whole-file comparison is the real one. The `.sarz` carries the georeference (EPSG code + "
             "transform), the JPEG2000 twin carries pixels only. `@uniformN` rows: the same RD model without its "
             "entropy model (per-channel uniform N-bit quantization + zstd).", ""]
    for scene in report["scenes"]:
        lines += [f"## {scene}", "",
                  "| model | bpp | latent bpp | PSNR learned / J2K (Δ) | SSIM learned / J2K (Δ) | "
                  "EPI learned / J2K (Δ) | ENL ratio learned / J2K | ΔPSNR vs J2K at the latent-only bpp |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in report["results"] if r["scene"] == scene):
            a, b, g = r["learned"], r["jpeg2000"], r["gap"]
            lines.append(f"| {r['model']} | {a['bpp']:.3f} | {a['latent_bpp']:.3f} | {a['psnr']:.2f} / {b['psnr']:.2f} "
                         f"({g['psnr']:+.2f} dB) | {a['ssim']:.3f} / {b['ssim']:.3f} ({g['ssim']:+.3f}) | "
                         f"{a['epi']:.3f} / {b['epi']:.3f} ({g['epi']:+.3f}) | {a['enl_ratio']:.2f} / "
                         f"{b['enl_ratio']:.2f} | " + (f"{r['gap_at_latent_bpp']['psnr']:+.2f} dB (J2K "
                                                      f"{r['jpeg2000_at_latent_bpp']['bpp']:.3f} bpp)"
                                                      if "gap_at_latent_bpp" in r else "-") + " |")
        lines.append("")
    lines += summary_lines(report)  # means per model over the scenes
    if any(r.get("category") for r in report["results"]):
        lines += category_lines(report)
    return "\n".join(lines)


def summary(report: dict, category: str | None = None) -> dict:
    """Per model: mean bpp and mean metrics of learned and JPEG2000 over the scenes (of one category, or all),
    gaps, ENL ratio range."""
    out = {}
    results = [r for r in report["results"] if category is None or r.get("category") == category]
    for name in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == name]
        n = len(rs)
        mean = {side: {k: sum(r[side][k] for r in rs) / n for k in ("bpp",) + METRICS} for side in ("learned", "jpeg2000")}
        enl = [r["learned"]["enl_ratio"] for r in rs]
        out[name] = {"scenes": n, **mean, "gap": {k: mean["learned"][k] - mean["jpeg2000"][k] for k in METRICS},
                     "psnr_wins": sum(r["gap"]["psnr"] > 0 for r in rs), "epi_wins": sum(r["gap"]["epi"] >= 0 for r in rs),
                     "enl_ratio_min": min(enl), "enl_ratio_max": max(enl), "entropy_coded": rs[0]["entropy_coded"],
                     "psnr_gap_min": min(r["gap"]["psnr"] for r in rs), "psnr_gap_max": max(r["gap"]["psnr"] for r in rs)}
    return out


def summary_by_category(report: dict) -> dict:
    cats = dict.fromkeys(r.get("category") for r in report["results"])
    return {c: summary(report, c) for c in cats if c}


def category_lines(report: dict) -> list[str]:
    """Per category: mean and per-scene ΔPSNR vs JPEG2000 at the same bytes, EPI, ENL ratio, RMSE dB, bpp."""
    lines = ["## Per product category (each scene weighs the same; Δ = learned − JPEG2000 at the same file size)", ""]
    for cat, models in summary_by_category(report).items():
        scenes = [s for s in report["scenes"] if report.get("categories", {}).get(s) == cat]
        lines += [f"### {cat} ({len(scenes)} rasters: {', '.join(scenes)})", "",
                  "| model | bpp | ΔPSNR mean (per scene) | PSNR learned / J2K | EPI learned / J2K | "
                  "ENL ratio learned / J2K | RMSE dB learned / J2K |", "|---|---|---|---|---|---|---|"]
        for name, m in models.items():
            per = [r for r in report["results"] if r["model"] == name and r.get("category") == cat]
            a, b = m["learned"], m["jpeg2000"]
            lines.append(f"| {name} | {a['bpp']:.3f} | **{m['gap']['psnr']:+.2f}** ("
                         + ", ".join(f"{r['gap']['psnr']:+.2f}" for r in per) + f") | {a['psnr']:.2f} / {b['psnr']:.2f} | "
                         f"{a['epi']:.3f} / {b['epi']:.3f} | {a['enl_ratio']:.2f} / {b['enl_ratio']:.2f} | "
                         f"{a['rmse_db']:.3f} / {b['rmse_db']:.3f} |")
        lines.append("")
    return lines


def summary_lines(report: dict) -> list[str]:
    lines = ["## Means over the held-out scenes (each scene weighs the same)", "",
             "| model | bpp learned / J2K | PSNR learned / J2K (Δ) | SSIM learned / J2K | EPI learned / J2K (Δ) | "
             "ENL ratio learned (per-scene range) / J2K | PSNR wins | EPI ≥ J2K |", "|---|---|---|---|---|---|---|---|"]
    for name, m in summary(report).items():
        a, b, g = m["learned"], m["jpeg2000"], m["gap"]
        lines.append(f"| {name} | {a['bpp']:.3f} / {b['bpp']:.3f} | {a['psnr']:.2f} / {b['psnr']:.2f} ({g['psnr']:+.2f} dB) "
                     f"| {a['ssim']:.3f} / {b['ssim']:.3f} | {a['epi']:.3f} / {b['epi']:.3f} ({g['epi']:+.3f}) | "
                     f"{a['enl_ratio']:.2f} ({m['enl_ratio_min']:.2f}–{m['enl_ratio_max']:.2f}) / {b['enl_ratio']:.2f} | "
                     f"{m['psnr_wins']}/{m['scenes']} | {m['epi_wins']}/{m['scenes']} |")
    lines.append("")
    return lines


def update_cards(report: dict) -> None:
    """Write the held-out means into the bundled model cards (`python -m sar_ae_core models` shows them)."""
    from sar_ae_core.nn.model_io import resolve_model

    for name, m in summary(report).items():
        if "@" in name:
            continue
        card = resolve_model(name).with_suffix(".json")
        if not card.exists():
            continue
        d = json.loads(card.read_text())
        d["measured"] = {"scenes": report["scenes"], "bpp": round(m["learned"]["bpp"], 4),
                         **{k: round(m["learned"][k], 4) for k in METRICS},
                         "jpeg2000_at_same_bpp": {k: round(m["jpeg2000"][k], 4) for k in METRICS},
                         "source": "benchmarks/bench_rd.py (mean over the held-out scenes, rates from file bytes)"}
        card.write_text(json.dumps(d, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", nargs="+", default=DEFAULT_SCENES, help="rasters (names are looked up in $SARAE_DATA)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="entropy-coded model bundles")
    p.add_argument("--baseline", default="sarae-default", help="model without entropy model ('' = none)")
    p.add_argument("--baseline-bits", nargs="+", type=int, default=[8, 4], help="uniform-zstd bit depths")
    p.add_argument("--jp2-curve", nargs="*", type=float, default=list(JP2_CURVE), help="JPEG2000 curve rates")
    p.add_argument("--no-entropy", nargs="*", default=["sarae-q2"],
                   help="models also run without their entropy model (uniform-zstd)")
    p.add_argument("--no-entropy-bits", nargs="+", type=int, default=[6, 4], help="bit depths for --no-entropy")
    p.add_argument("--scaling", nargs="+", default=["auto"], choices=("auto", "model", "source"),
                   help="codec --scaling mode(s) for every model (several: one row per model and mode)")
    p.add_argument("--split-file", help="take the scenes from this committed split (training/corpus.py)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="which split of --split-file")
    p.add_argument("--category", nargs="+", help="only these product categories (grd_db grd_dn rtc slc_other)")
    p.add_argument("--update-cards", action="store_true", help="write the means into the bundled model cards")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rd_report.json"))
    args = p.parse_args()
    t0 = time.perf_counter()
    report = run(args)
    report.update(machine=platform.platform(), python=platform.python_version(), seconds=time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"))
    report["summary"] = summary(report)
    report["summary_by_category"] = summary_by_category(report)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    if args.update_cards:
        update_cards(report)
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
