"""Tile plan for streaming inference on rasters of any size.

The stored latent grid covers the raster once, without overlap: tile (i, j) owns latent cells
[i·T, (i+1)·T) × [j·T, (j+1)·T) (T = tile / downsample). Each tile is *encoded* from a pixel window that
adds a halo on every side (the encoder sees context, no bits are spent on overlap) and *decoded* from its
latent cells plus `halo` neighbouring cells, so neighbouring decode windows overlap and are blended with a
cosine ramp: no seams, and each output pixel depends only on a fixed set of windows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from sar_ae_core.defaults import TILE
from sar_ae_core.io.raster import Window

if TYPE_CHECKING:  # pragma: no cover
    from sar_ae_core.scaling import ScalingParams


@dataclass(frozen=True)
class TilePlan:
    """Geometry of the latent grid and of the encode/decode windows (all sizes in pixels or latent cells)."""

    width: int
    height: int
    downsample: int          # pixels per latent cell (2**stages)
    tile: int = TILE         # pixels per stored tile side (multiple of downsample)
    halo_cells: int = 2      # latent cells of context on each side of a tile

    def __post_init__(self):
        if self.tile % self.downsample or self.tile <= 0:
            raise ValueError(f"tile size {self.tile} must be a positive multiple of {self.downsample}")
        if self.halo_cells < 0:
            raise ValueError("halo must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "TilePlan":
        """Inverse of to_dict (ignores derived fields)."""
        return cls(**{k: d[k] for k in ("width", "height", "downsample", "tile", "halo_cells")})

    def to_dict(self) -> dict:
        """JSON form, with derived sizes for readers."""
        return {**asdict(self), "latent_width": self.latent_width, "latent_height": self.latent_height,
                "tile_rows": self.tile_rows, "tile_cols": self.tile_cols}

    @property
    def cells(self) -> int:
        """Latent cells per tile side."""
        return self.tile // self.downsample

    @property
    def latent_width(self) -> int:
        return math.ceil(self.width / self.downsample)

    @property
    def latent_height(self) -> int:
        return math.ceil(self.height / self.downsample)

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.latent_height / self.cells)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.latent_width / self.cells)

    @property
    def halo(self) -> int:
        """Halo in pixels."""
        return self.halo_cells * self.downsample

    def tile_cells(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Latent cells (r0, r1, c0, c1) stored for tile (row, col)."""
        r0, c0 = row * self.cells, col * self.cells
        return r0, min(r0 + self.cells, self.latent_height), c0, min(c0 + self.cells, self.latent_width)

    def tiles(self) -> Iterator[tuple[int, int]]:
        """All tiles, row-major (the order chunks are stored in)."""
        for r in range(self.tile_rows):
            for c in range(self.tile_cols):
                yield r, c

    def window_cells(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Latent cells of the decode window of a tile: its cells plus the halo (may exceed the grid)."""
        r0, _, c0, _ = self.tile_cells(row, col)
        h = self.halo_cells
        return r0 - h, r0 + self.cells + h, c0 - h, c0 + self.cells + h

    def tiles_touching(self, row0: int, row1: int, col0: int, col1: int) -> list[tuple[int, int]]:
        """Tiles whose decode windows cover any pixel of rows [row0, row1) × cols [col0, col1)."""
        h = self.halo
        rows = [r for r in range(self.tile_rows)
                if r * self.tile - h < row1 and (r + 1) * self.tile + h > row0]
        cols = [c for c in range(self.tile_cols)
                if c * self.tile - h < col1 and (c + 1) * self.tile + h > col0]
        return [(r, c) for r in rows for c in cols]

    @property
    def window_pixels(self) -> int:
        """Side of an encode/decode window in pixels."""
        return self.tile + 2 * self.halo


def cosine_ramp(length: int, ramp: int) -> np.ndarray:
    """1-D blend weights: sin² rising over `ramp` samples at each end, 1 in between, never 0."""
    w = np.ones(length, dtype=np.float64)
    if ramp > 0:
        x = (np.arange(ramp) + 0.5) / ramp
        rise = np.sin(0.5 * np.pi * x) ** 2
        w[:ramp] = rise
        w[length - ramp:] = np.minimum(w[length - ramp:], rise[::-1])
    return w


def blend_weights(plan: TilePlan) -> np.ndarray:
    """2-D cosine blend weights of one decode window (window_pixels²): ramps span the overlap with neighbours."""
    w = cosine_ramp(plan.window_pixels, 2 * plan.halo)
    return np.outer(w, w)


def _pad_to(block: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror-pad the last two axes (repeatedly for pads larger than the block)."""
    if top or bottom or left or right:
        block = np.pad(block, [(0, 0)] * (block.ndim - 2) + [(top, bottom), (left, right)], mode="symmetric")
    return block


def raster_fill(hist, scaling: "ScalingParams") -> list[float]:
    """What `read_strip` puts in a raster's invalid pixels: per band, the mean of its valid values scaled to [0, 1]
    (from the per-band histograms of `scaling.raster_histogram(per_band=True)`), rounded to float32."""
    return [float(np.float32(h.unit_mean(scaling))) for h in hist.bands]


def read_strip(r, plan: TilePlan, scaling: "ScalingParams", tr: int, want_db: bool = False, fill=None):
    """Scaled pixels and validity for the encode windows of tile row `tr`, mirror-padded past the edges; invalid
    pixels hold `fill` (one value per band: `raster_fill`, the same for every strip, so the encoder's windows that
    two strips share see the same pixels and the latents do not depend on the tiling), without it the strip's mean
    valid value.

    Returns (scaled (bands, rows, cols), valid (bands, rows, cols), y0, db) where row 0 of the strip is raster
    row y0 and column 0 is raster column −halo; `db` (with `want_db`) holds the dB values (float32) of the
    raster rows the tile row owns, unpadded, for the escapes."""
    h, tile = plan.halo, plan.tile
    y0, y1 = tr * tile - h, (tr + 1) * tile + h
    x0, x1 = -h, plan.tile_cols * tile + h
    ry0, ry1 = max(y0, 0), min(y1, plan.height)
    raw = r.read(Window(0, ry0, plan.width, ry1 - ry0))
    scaled, valid, db_all = scaling.forward_db(raw, r.units, r.nodata)
    db = None
    if want_db:
        c0, c1 = tr * tile - ry0, min((tr + 1) * tile, plan.height) - ry0
        db = db_all[:, c0:c1].astype(np.float32)
    del db_all
    # Fill invalid pixels with the raster's (or strip's) mean valid value: fewer bits than a hard 0 edge.
    for b in range(scaled.shape[0]):
        v = valid[b]
        if fill is not None:
            scaled[b][~v] = fill[b]
        else:
            scaled[b][~v] = float(scaled[b][v].mean()) if v.any() else 0.5
    scaled = _pad_to(scaled, ry0 - y0, y1 - ry1, -x0, x1 - plan.width)
    valid = np.pad(valid, [(0, 0), (ry0 - y0, y1 - ry1), (-x0, x1 - plan.width)], constant_values=False)
    return scaled, valid, y0, db
