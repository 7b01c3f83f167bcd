"""Spatial attention maps of a CBAM model over a whole raster, streamed tile row by tile row.

Every tile is run from the same window with halo that the encoder sees when compressing, so the map
shows where the model attends while coding this raster. The maps of all SpatialAttention modules are
upsampled to the window and averaged; only the tile's core is kept (no blending is needed because the
halo gives every core pixel its full context). The result is a float32 GeoTIFF in [0, 1] on the
source's grid (NaN where the source pixel is invalid).
"""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import torch

from sar_ae_core.codec import _read_strip, choose_scaling
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import ModelBundle, ready_bundle
from sar_ae_core.progress import Progress, ProgressFn
from sar_ae_core.defaults import TILE
from sar_ae_core.io.raster import GeoTiffWriter, Window, check_output_path, open_raster
from sar_ae_core.tiling import TilePlan


def attention_map_raster(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                         model: Optional[str] = None, band: int = 1, units: str = "auto", device: str = "auto",
                         tile: int = TILE, halo_cells: int = 2, batch_size: int = 8, scaling: str = "auto",
                         overwrite: bool = False, progress: Optional[ProgressFn] = None, bundle: Optional[ModelBundle] = None) -> dict:
    """Write the mean spatial attention of a model over one band of a raster as a float32 GeoTIFF in [0, 1].

    The raster is scaled as compress_raster would scale it (`scaling` as there), so the map shows what
    the encoder attends to when this raster is compressed."""
    t_start = time.perf_counter()
    check_output_path(output_path, overwrite, (input_path,))
    prog = Progress(progress)
    bundle = ready_bundle(model, device, bundle)
    dev = next(bundle.model.parameters()).device
    modules = list(bundle.model.spatial_attention_modules())
    if not modules:
        cfg = bundle.config
        raise SarInputError(bundle.path, f"model '{bundle.name}' (variant {cfg.variant}) has no spatial attention; "
                                         "use a res_cbam or full_attention model")
    d = bundle.model.downsample_factor
    with open_raster(input_path, bands=[band], units=units) as r:
        if r.width < d or r.height < d:
            raise SarInputError(r.path, f"raster is {r.width}x{r.height} px; the model needs at least {d}x{d}")
        try:
            plan = TilePlan(r.width, r.height, d, tile, halo_cells)
        except ValueError as exc:
            raise SarInputError(None, str(exc)) from None
        params, scaling_reason = choose_scaling(r, bundle.scaling, scaling)
        name = r.band_names[0] or f"band {band}"
        tags = {"SARAE_MAP": "attention", "SARAE_MODEL": bundle.name, "SARAE_SOURCE": os.path.basename(r.path),
                "SARAE_BAND": band, "SARAE_MODULES": ",".join(modules)}
        total, count = 0.0, 0
        with GeoTiffWriter(output_path, r.width, r.height, 1, "float32", r.georef, nodata=float("nan"),
                           band_names=[f"attention {name}"], tags=tags, overwrite=overwrite,
                           inputs=(input_path,)) as w:
            for tr in range(plan.tile_rows):
                strip, valid, y0, _ = _read_strip(r, plan, params, tr)
                rows = _attention_strip(bundle, plan, strip[0], dev, batch_size)
                core = rows[plan.halo:plan.halo + min(plan.tile, plan.height - tr * plan.tile),
                            plan.halo:plan.halo + plan.width]
                v = valid[0, tr * plan.tile - y0: tr * plan.tile - y0 + core.shape[0], plan.halo:plan.halo + plan.width]
                out = np.where(v, np.clip(core, 0.0, 1.0), np.nan).astype(np.float32)
                total += float(np.nansum(out))
                count += int(v.sum())
                w.write(out, Window(0, tr * plan.tile, plan.width, core.shape[0]))
                prog.step((tr + 1) / plan.tile_rows, f"attention tile row {tr + 1}/{plan.tile_rows}")
    return {"output": os.fspath(output_path), "width": plan.width, "height": plan.height, "band": band,
            "model": bundle.name, "modules": modules, "mean": total / count if count else float("nan"),
            "scaling": f"[{params.vmin_db:.2f}, {params.vmax_db:.2f}] dB: {scaling_reason}",
            "device": str(dev), "seconds": time.perf_counter() - t_start}


def _attention_strip(bundle: ModelBundle, plan: TilePlan, strip: np.ndarray, dev, batch_size: int) -> np.ndarray:
    """Mean attention over the windows of one tile row, stitched from the window cores (rows = window rows)."""
    wp, tile, h = plan.window_pixels, plan.tile, plan.halo
    out = np.zeros((wp, plan.tile_cols * tile + 2 * h), dtype=np.float32)
    windows = [strip[:, tc * tile: tc * tile + wp] for tc in range(plan.tile_cols)]
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(windows[i:i + batch_size])[:, None])).to(dev)
        maps = bundle.model.attention_maps(batch)
        mean = torch.stack(list(maps.values())).mean(dim=0)[:, 0].float().cpu().numpy()
        for k in range(mean.shape[0]):
            c0 = (i + k) * tile + h
            out[:, c0:c0 + tile] = mean[k][:, h:h + tile]
    return out
