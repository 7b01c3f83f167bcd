"""Where the bits go: a per-pixel bit-allocation map computed from the coded symbols of a `.sarz` file itself.

Every latent cell of a tile covers d × d pixels (d = the model's downsampling). Its cost is the code length of its
symbols under the frozen tables the range coder used (−log2 p per channel, +32 bits per escaped value), so the
map is exact where the range coder is (within ~1 % of the real latent bytes) and seamless across tiles: the
stored latent grid has no overlap, tile borders are cell borders like any other. The cell map is spread to
pixels with a smooth (bilinear) kernel and rescaled so that its sum is the file's latent bits exactly; values are
bits per pixel. It is the codec's honest "attention": what it spent where.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from sar_ae_core.errors import SarInputError
from sar_ae_core.progress import Progress, ProgressFn


def cell_bits(f, band: int) -> np.ndarray:
    """Bits of every latent cell of one band (latent_height, latent_width), from the file's own symbols."""
    from sar_ae_core.coding.tables import FactorizedRangeCodec

    codec = f.codec
    if not isinstance(codec, FactorizedRangeCodec):
        raise SarInputError(f.path, f"a bit-allocation map needs a factorized-range(-active) file (this one is "
                                    f"{f.header['codec']['id']})")
    p = f.plan
    out = np.zeros((p.latent_height, p.latent_width), np.float64)
    coded = [c for c in range(f.latent_channels) if codec.skip is None or not codec.skip[c]]  # skipped: no bits
    for tr in range(p.tile_rows):
        for tc in range(p.tile_cols):
            r0, r1, c0, c1 = p.tile_cells(tr, tc)
            y = f.latent_tile(tr, tc, band)
            q = codec.quantize(y)  # the symbols (dequantization is inverted exactly)
            out[r0:r1, c0:c1] = sum(codec.tables.symbol_bits(c, q[c]) for c in coded)
    return out


def _spread_rows(cells: np.ndarray, d: int, y_start: int, y_stop: int, width: int) -> np.ndarray:
    """Rows [y_start, y_stop) of the bilinear spread of cell values (bits per cell) to bits per pixel."""
    h, w = cells.shape
    ys = (np.arange(y_start, y_stop) + 0.5) / d - 0.5
    xs = (np.arange(width) + 0.5) / d - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy = np.clip(ys - np.floor(ys), 0, 1)[:, None] * (np.floor(ys) >= 0)[:, None]
    wx = np.clip(xs - np.floor(xs), 0, 1)[None, :] * (np.floor(xs) >= 0)[None, :]
    top = cells[y0][:, x0] * (1 - wx) + cells[y0][:, x1] * wx
    bottom = cells[y1][:, x0] * (1 - wx) + cells[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy) / (d * d)


_ROWS = 512


def _write_band(w, cells: np.ndarray, d: int, height: int, width: int, band: int) -> None:
    """Spread one band's cells to pixels block of rows by block of rows (memory does not grow with the height),
    rescaled so the map's sum is the cells' sum exactly."""
    from sar_ae_core.io.raster import Window

    total = sum(float(_spread_rows(cells, d, y, min(y + _ROWS, height), width).sum())
                for y in range(0, height, _ROWS))
    scale = cells.sum() / total if total > 0 else 1.0
    for y in range(0, height, _ROWS):
        rows = _spread_rows(cells, d, y, min(y + _ROWS, height), width) * scale
        w.write(rows.astype(np.float32), Window(0, y, width, rows.shape[0]), band=band)


def bit_allocation_raster(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                          model: Optional[str] = None, overwrite: bool = False,
                          progress: Optional[ProgressFn] = None) -> dict:
    """Write the bits-per-pixel map of a `.sarz` file (one band per coded band) as a GeoTIFF on its grid."""
    from sar_ae_core.codec import _bundle_for
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.io.output import check_output_path
    from sar_ae_core.io.raster import GeoTiffWriter

    t0 = time.perf_counter()
    inputs = [input_path] + ([model] if model and os.path.exists(os.fspath(model)) else [])
    check_output_path(output_path, overwrite, inputs)
    prog = Progress(progress)
    with SarzFile(input_path) as f:
        bundle = _bundle_for(f, model)  # only its tables are read
        f.attach(bundle)
        p = f.plan
        names = [f"bits per pixel {n or f'band {i + 1}'}" for i, n in
                 enumerate(f.source.get("band_names") or [""] * f.bands)]
        totals = []
        with GeoTiffWriter(output_path, p.width, p.height, f.bands, "float32", f.georef, nodata=float("nan"),
                           band_names=names, tags={"SARAE_MAP": "bit_allocation", "SARAE_SOURCE": f.source["name"],
                                                   "SARAE_MODEL": f.model_name, "SARAE_UNITS": "bits per pixel"},
                           overwrite=overwrite, inputs=inputs) as w:
            for b in range(f.bands):
                cells = cell_bits(f, b)
                totals.append(float(cells.sum()))
                _write_band(w, cells, p.downsample, p.height, p.width, b + 1)
                prog.step((b + 1) / f.bands, f"bit allocation, band {b + 1}")
        latent_bytes = int(sum(int(n) for i, n in enumerate(f.reader.lengths) if i % 2 == 0))
    return {"output": os.fspath(output_path), "bits": sum(totals), "bits_per_band": totals,
            "latent_bytes": latent_bytes, "mean_bpp": sum(totals) / (p.width * p.height * f.bands),
            "seconds": time.perf_counter() - t0}
