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

from sar_ae_core.scaling import choose_scaling, raster_histogram
from sar_ae_core.tiling import raster_fill, read_strip
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import ModelBundle, ready_bundle
from sar_ae_core.progress import Progress, ProgressFn
from sar_ae_core.defaults import TILE
from sar_ae_core.io.raster import GeoTiffWriter, Window, check_output_path, open_raster
from sar_ae_core.tiling import TilePlan, cosine_ramp


def attention_map_raster(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                         model: Optional[str] = None, band: int = 1, units: str = "auto", device: str = "auto",
                         tile: int = TILE, halo_cells: int = 2, batch_size: int = 8, scaling: str = "auto",
                         overwrite: bool = False, progress: Optional[ProgressFn] = None, bundle: Optional[ModelBundle] = None) -> dict:
    """Write the mean spatial attention of a model over one band of a raster as a float32 GeoTIFF in [0, 1].

    The raster is scaled as compress_raster would scale it (`scaling` as there), so the map shows what
    the encoder attends to when this raster is compressed. `batch_size` is kept for callers: the windows are
    whole tile rows now, one call each."""
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
        hist = raster_histogram(r, bundle.scaling.noise_floor, per_band=True)
        params, scaling_reason = choose_scaling(r, bundle.scaling, scaling, hist=hist)
        fill = raster_fill(hist, params)  # what compress puts in the invalid pixels
        name = r.band_names[0] or f"band {band}"
        tags = {"SARAE_MAP": "attention", "SARAE_MODEL": bundle.name, "SARAE_SOURCE": os.path.basename(r.path),
                "SARAE_BAND": band, "SARAE_MODULES": ",".join(modules)}
        total, count = 0.0, 0
        wp, h, tile = plan.window_pixels, plan.halo, plan.tile
        ramp = cosine_ramp(wp, 2 * h)
        acc_y0 = -h  # raster row of accumulator row 0; column 0 is raster column -h
        num = np.zeros((0, plan.tile_cols * tile + 2 * h), np.float32)
        den = np.zeros_like(num)
        valid_rows: dict = {}
        written = 0
        with GeoTiffWriter(output_path, r.width, r.height, 1, "float32", r.georef, nodata=float("nan"),
                           band_names=[f"attention {name}"], tags=tags, overwrite=overwrite,
                           inputs=(input_path,)) as w:
            for tr in range(plan.tile_rows):
                strip, valid, y0, _ = read_strip(r, plan, params, tr, fill=fill)
                wy0 = tr * tile - h
                grow = wy0 + wp - acc_y0 - num.shape[0]
                if grow > 0:
                    num = np.vstack([num, np.zeros((grow, num.shape[1]), np.float32)])
                    den = np.vstack([den, np.zeros((grow, den.shape[1]), np.float32)])
                for c0, m in _attention_windows(bundle, plan, strip[0], dev):
                    rs = slice(wy0 - acc_y0, wy0 - acc_y0 + wp)
                    wgt = np.outer(ramp, cosine_ramp(m.shape[1], 2 * h)).astype(np.float32)
                    num[rs, c0:c0 + m.shape[1]] += wgt * m
                    den[rs, c0:c0 + m.shape[1]] += wgt
                for k in range(max(y0, 0), min(y0 + valid.shape[1], plan.height)):  # validity of the rows read
                    valid_rows.setdefault(k, valid[0, k - y0, h:h + plan.width])
                # rows above the next tile row's first window row are final: every window over them is added
                final_to = plan.height if tr == plan.tile_rows - 1 else min((tr + 1) * tile - h, plan.height)
                if final_to > written:
                    blended = num[written - acc_y0:final_to - acc_y0, h:h + plan.width] / \
                        np.maximum(den[written - acc_y0:final_to - acc_y0, h:h + plan.width], 1e-12)
                    v = np.stack([valid_rows.pop(k) for k in range(written, final_to)])
                    out = np.where(v, np.clip(blended, 0.0, 1.0), np.nan).astype(np.float32)
                    total += float(np.nansum(out))
                    count += int(v.sum())
                    w.write(out, Window(0, written, plan.width, final_to - written))
                    num, den = num[final_to - acc_y0:], den[final_to - acc_y0:]
                    acc_y0 = written = final_to
                prog.step((tr + 1) / plan.tile_rows, f"attention tile row {tr + 1}/{plan.tile_rows}")
    return {"output": os.fspath(output_path), "width": plan.width, "height": plan.height, "band": band,
            "model": bundle.name, "modules": modules, "mean": total / count if count else float("nan"),
            "scaling": f"[{params.vmin_db:.2f}, {params.vmax_db:.2f}] dB: {scaling_reason}",
            "device": str(dev), "seconds": time.perf_counter() - t_start}


#: width (pixels) of the windows the attention is computed on: CBAM pools over its whole input, so every window
#: has its own channel weights; windows as wide as this (the whole tile row of most rasters) leave only the
#: seams between tile rows, which are blended over the halo like those between these windows
WINDOW_PIXELS = 4096


def _attention_windows(bundle: ModelBundle, plan: TilePlan, strip: np.ndarray, dev) -> list:
    """(first accumulator column, mean attention) of the windows of one tile row: up to WINDOW_PIXELS of tiles plus
    the halo each, so the caller can blend them over their overlap."""
    tile, h = plan.tile, plan.halo
    k = max(1, WINDOW_PIXELS // tile)
    out = []
    for t0 in range(0, plan.tile_cols, k):
        c0, c1 = t0 * tile, min(t0 + k, plan.tile_cols) * tile + 2 * h
        x = torch.from_numpy(np.ascontiguousarray(strip[None, None, :, c0:c1])).to(dev)
        maps = bundle.model.attention_maps(x)
        out.append((c0, torch.stack(list(maps.values())).mean(dim=0)[0, 0].float().cpu().numpy()))
    return out
