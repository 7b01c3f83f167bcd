"""Export a training checkpoint as a model bundle (sar_ae_core.nn.model_io.save_bundle, fp16 weights) that the
codec loads with load_bundle, with what is known about the model in its `info`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import load_bundle, save_bundle
from sar_ae_core.nn.runtime import runtime_path
from sar_ae_core.io.raster import check_output_path

from .checkpoint import BEST, checkpoint_model, find_run_file, lineage_files, load_checkpoint, load_init


def _plain(value):
    """Only JSON types (bundles load with weights_only=True)."""
    return json.loads(json.dumps(value, default=str))


def bundle_info(ckpt: dict, attribution: Optional[str] = None) -> dict:
    """What a bundle says about its training: data per split, steps, time, device, validation/test metrics."""
    cfg = ckpt["config"]
    data = ckpt.get("data", {})
    files = {k: [os.path.basename(p) for p in v] for k, v in data.get("files", {}).items()}
    test = None
    summary_path = find_run_file(ckpt.get("path"), "summary.json")
    if summary_path:
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
        if summary.get("best_step") == ckpt["step"]:
            test = summary.get("test")
    model_cfg = ckpt["model_config"]
    ratio = 4 ** model_cfg["stages"] / model_cfg["latent_channels"]
    description = (f"{model_cfg['variant']} autoencoder, base {model_cfg['base_channels']}, latent "
                   f"{model_cfg['latent_channels']} x 1/{2 ** model_cfg['stages']} (nominal {ratio:g}x), "
                   f"trained with python -m training")
    if model_cfg.get("entropy_model", "none") != "none":
        lm = cfg["run"].get("lmbda")
        trade = f"loss = {lm:g} x distortion + bits per pixel" if lm is not None else \
            f"loss = distortion + {cfg['run'].get('rate_weight'):g} x bits per pixel"
        description = (f"{model_cfg['variant']} autoencoder, base {model_cfg['base_channels']}, latent "
                       f"{model_cfg['latent_channels']} x 1/{2 ** model_cfg['stages']} with a learned "
                       f"{model_cfg['entropy_model']} prior (codec {model_cfg['entropy_model']}-range; the rate comes from the entropy "
                       f"coder, not the latent size), rate-distortion trained with python -m training: {trade}")
    info = {
        "description": description,
        "nominal_compression_ratio": ratio,
        "training": {
            "files": files, "scenes": data.get("scenes"), "patches": data.get("patches"),
            "units": data.get("units"), "patch_size": data.get("patch_size"), "stride": data.get("train_stride"),
            "steps": ckpt["step"], "total_steps": ckpt.get("total_steps"), "epochs": ckpt.get("epoch"),
            "train_time_s": round(float(ckpt.get("train_time_s", 0.0)), 1), "device": ckpt.get("device"),
            "world_size": ckpt.get("world_size", 1), "latent_noise": cfg["run"]["latent_noise"],
            "latent_bits": cfg["run"]["latent_bits"], "entropy_model": model_cfg.get("entropy_model", "none"),
            "rate_weight": cfg["run"].get("rate_weight"), "lmbda": cfg["run"].get("lmbda"),
            "init_from": cfg["run"].get("init_from"), "loss": cfg["loss"], "optim": cfg["optim"],
            "seed": cfg["run"]["seed"], "checkpoint": os.path.basename(ckpt.get("path", "")),
            # what the models it was started from were trained on (their weights carry it)
            "lineage_files": sorted(set(ckpt.get("lineage_files") or []) - set(files.get("train") or [])),
        },
        "validation": ckpt.get("val_metrics"),
        "test": test,
        "metrics_note": "means over held-out patches (ENL ratio: median); latent quantised like the codec "
                        "(latent_bits per value, or integer rounding for a factorized entropy model, bpp then "
                        "estimated from the prior); PSNR/SSIM on the [0,1]-scaled dB range, ENL ratio on linear "
                        "intensity, EPI on dB",
        "code": ckpt.get("code"),
    }
    if attribution:
        info["data_attribution"] = attribution
    return _plain(info)


def _same_latents(model, other_name: str) -> list[str]:
    """SHA-256s of the files `model` decodes besides its own, after checking that it shares with the bundle
    `other_name` the entropy tables and either the encoder (a decoder trained with --train-only decoder on its
    latents: its files) or the decoder (an encoder trained with --train-only encoder: its files and the files it
    decodes)."""
    other = load_bundle(other_name, runtime="torch")

    def same(prefix: str) -> bool:
        mine = {k: v.half() for k, v in model.state_dict().items() if k.startswith(prefix)}
        theirs = {k: v.half() for k, v in other.model.state_dict().items() if k.startswith(prefix)}
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    shared_encoder, shared_decoder = same("encoder."), same("decoder.")
    if not (shared_encoder or shared_decoder):
        raise SarInputError(other_name, "--decodes: neither its encoder nor its decoder is this model's (train "
                                        "with --init-from it --train-only decoder or --train-only encoder)")
    import copy

    tables = copy.deepcopy(model.entropy).cpu().float().eval().build_tables().to_dict()
    if other.tables is None or tables != other.tables.to_dict():
        raise SarInputError(other_name, "--decodes: its entropy tables differ from this model's")
    if shared_decoder:
        return [other.sha256, *other.info.get("decodes_sha256", [])]
    return [other.sha256]


def export_checkpoint(ckpt_path: str, out: str, name: str, overwrite: bool = False,
                      attribution: Optional[str] = None, log=print, measure_raster: Optional[str] = None,
                      card: Optional[str] = None, decodes: Optional[str] = None) -> dict:
    """Write the bundle; check it loads back and how far its fp16 weights move the output.

    `measure_raster`: also compress/reconstruct/assess that raster with the written bundle and store the result in
    `info["measured"]` (the bundle is written again with the same weights, so its SHA-256 does not change).
    `card`: also write the model card JSON ({"name", "sha256", **info}) there.
    `decodes`: a model bundle whose files this one also decodes (checked: the same encoder weights and entropy
    tables — a decoder trained with --train-only decoder on its latents); its SHA-256 goes to
    `info["decodes_sha256"]`."""
    if not name or any(c in name for c in "/\\"):
        raise SarInputError(None, f"bad model name '{name}' (use e.g. sarae-default)")
    check_output_path(out, overwrite)
    ckpt = load_checkpoint(ckpt_path, prefer=BEST)
    model, scaling = checkpoint_model(ckpt)
    info = bundle_info(ckpt, attribution)
    if decodes:
        info["decodes_sha256"] = _same_latents(model, decodes)
        # the encoder and tables are that model's: what it saw is in this bundle too
        seen = set(info["training"]["lineage_files"]) | set(lineage_files(load_init(decodes)))
        info["training"]["lineage_files"] = sorted(seen - set(info["training"]["files"].get("train") or []))
    digest = save_bundle(out, model, scaling, name, info=info, half=True)
    bundle = load_bundle(out, runtime="torch")
    size = model.downsample_factor * 8
    with torch.no_grad():
        x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
        diff = float((bundle.model(x) - model(x)).abs().max())
    if measure_raster:
        from .rd import measure

        info["measured"] = measure(bundle, measure_raster, workdir=os.path.dirname(os.path.abspath(out)))
        again = save_bundle(out, model, scaling, name, info=info, half=True)
        assert again == digest
        m = info["measured"]
        log(f"measured on {m['scene']}: {m['bpp']:.4f} bpp ({m['codec']}), PSNR {m['psnr']:.2f} dB, SSIM "
            f"{m['ssim']:.4f}, ENL ratio {m['enl_ratio']:.3f}, EPI {m['epi']:.4f}")
    if card:
        Path(card).write_text(json.dumps({"name": name, "sha256": digest, **info}, indent=2) + "\n",
                              encoding="utf-8")
    mb = Path(out).stat().st_size / 1e6
    log(f"wrote {out}: model '{name}', {mb:.2f} MB, sha256 {digest[:16]}..., from {ckpt['path']} (step "
        f"{ckpt['step']}); fp16 weights change the [0,1] output by at most {diff:.2e}")
    runtime = None
    if model.config.entropy_model != "hyperprior":  # the hyperprior's side network still needs torch
        from .onnx_export import write_runtime_bundle

        # a decoder on another model's frozen latents: its encoder networks are that model's (stored once)
        twin = Path(decodes).name.split(".")[0] if decodes else None
        share = twin if twin and runtime_path(Path(out).parent / f"{twin}.pt").is_file() else None
        runtime = write_runtime_bundle(load_bundle(out, runtime="torch"), share_encoder_with=share)
        log(f"wrote {runtime}: its ONNX Runtime bundle (compress/reconstruct without torch), "
            f"{runtime.stat().st_size / 1e6:.2f} MB")
    return {"path": os.fspath(out), "sha256": digest, "size_mb": mb, "fp16_max_abs_diff": diff, "info": info,
            "runtime_bundle": os.fspath(runtime) if runtime else None}
