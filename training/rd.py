"""Rate-distortion facts of a model bundle on a real raster, measured through the codec.

* `latent_rate`: compresses the raster (`sar_ae_core.codec.compress_raster`, tiles and halo as the codec
  uses them) and compares the rate the model's prior predicts for the coded integer latents
  (-sum log2 p(round(y)) over every stored tile, the same likelihoods as the training rate term) with the real
  bytes of the `.sarz` latent chunks, and with the whole file (header, masks and chunk index included).
* `measure`: compress -> reconstruct -> `sar_ae_core.quality.assess.assess_rasters`, the numbers stored in a bundle's
  `info["measured"]` (bits per pixel from the file's bytes, PSNR, SSIM, ENL ratio, EPI).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sar_ae_core.codec import compress_raster, reconstruct_raster, sarz_info
from sar_ae_core.coding.sarz import SarzFile, _chunk_id
from sar_ae_core.nn.model_io import ModelBundle, load_bundle

MEASURE_KEYS = ("psnr", "ssim", "enl_ratio", "epi", "rmse_db")


def _bundle(model) -> ModelBundle:
    return model if isinstance(model, ModelBundle) else load_bundle(str(model), "cpu", runtime="torch")


@torch.no_grad()
def estimated_bits_of_sarz(sarz: str | os.PathLike, bundle: ModelBundle) -> dict:
    """Bits the bundle's prior assigns to the integer latents stored in a `.sarz` file, tile by tile."""
    prior = bundle.model.entropy
    if prior is None:
        raise ValueError(f"model '{bundle.name}' has no entropy model")
    prior = prior.cpu().float().eval()
    total, tiles = 0.0, 0
    with SarzFile(sarz) as f:
        f.attach(bundle)
        for row, col in f.plan.tiles():
            for band in range(f.bands):
                if hasattr(f.codec, "model_bits"):  # hyperprior: the likelihoods of the stored z and y symbols
                    r0, r1, c0, c1 = f.plan.tile_cells(row, col)
                    payload = f.reader.chunk(_chunk_id(f.plan, f.bands, row, col, band, 0))
                    total += f.codec.model_bits(payload, (f.latent_channels, r1 - r0, c1 - c0))
                else:
                    q = torch.from_numpy(f.latent_tile(row, col, band))[None].float()
                    total += float(-torch.log2(prior.likelihood(q).double()).sum())
                tiles += 1
    return {"bits": total, "tiles": tiles}


def latent_rate(model, raster: str | os.PathLike, workdir: Optional[str] = None, **compress_kwargs) -> dict:
    """Estimated (prior) vs real (.sarz bytes) rate of a raster; relative differences are (real - est) / real.
    Coded with the model's own tables (what the estimate is about), not tables adapted to the raster."""
    bundle = _bundle(model)
    tables = bundle.tables
    if "codec" not in compress_kwargs and tables is not None and getattr(tables, "kind", "factorized") == "factorized":
        compress_kwargs["codec"] = "factorized-range-active" if tables.inactive().any() else "factorized-range"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sarz = Path(tmp) / "rate.sarz"
        facts = compress_raster(raster, sarz, bundle=bundle, device="cpu", overwrite=True, **compress_kwargs)
        info = sarz_info(sarz)
        est = estimated_bits_of_sarz(sarz, bundle)
    pixels = info["pixels"]
    latent_bits = 8 * info["parts"]["latents"]
    file_bits = 8 * info["bytes"]
    return {
        "pixels": pixels, "tiles": est["tiles"],
        "estimated_bits": est["bits"], "estimated_bpp": est["bits"] / pixels,
        "latent_bits": latent_bits, "latent_bpp": latent_bits / pixels,
        "file_bits": file_bits, "file_bpp": file_bits / pixels, "parts_bytes": info["parts"],
        "latent_rel_diff": (latent_bits - est["bits"]) / latent_bits,
        "file_rel_diff": (file_bits - est["bits"]) / file_bits,
        "codec": info["codec"]["id"], "compress_bpp": facts["bpp"],
    }


def measure(model, raster: str | os.PathLike, workdir: Optional[str] = None, codec: str = "auto") -> dict:
    """Compress, reconstruct (dB) and assess one raster: the bundle's `info["measured"]` entry."""
    from sar_ae_core.quality.assess import assess_rasters

    bundle = _bundle(model)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sarz, rec = Path(tmp) / "m.sarz", Path(tmp) / "m.tif"
        facts = compress_raster(raster, sarz, bundle=bundle, device="cpu", codec=codec, overwrite=True)
        reconstruct_raster(sarz, rec, units="db", bundle=bundle, overwrite=True)
        info = sarz_info(sarz)
        q = assess_rasters(raster, rec)
    out = {"scene": os.path.basename(str(raster)), "codec": info["codec"]["id"], "bpp": facts["bpp"],
           "latent_bpp": 8 * info["parts"]["latents"] / info["pixels"], "bytes": facts["bytes"]}
    out.update({k: float(q[k]) for k in MEASURE_KEYS if k in q})
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in out.items()}
