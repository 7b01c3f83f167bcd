"""Tile plan: stored latents cover the raster exactly once; decode windows overlap and blend to full weight."""

import numpy as np
import pytest

from sar_ae_core.tiling import TilePlan, blend_weights, cosine_ramp


@pytest.mark.parametrize("width, height, d, tile", [(512, 512, 8, 256), (1280, 837, 8, 256), (100, 37, 16, 64)])
def test_tiles_cover_the_latent_grid_once(width, height, d, tile):
    plan = TilePlan(width, height, d, tile, 4)
    cover = np.zeros((plan.latent_height, plan.latent_width), int)
    for r, c in plan.tiles():
        r0, r1, c0, c1 = plan.tile_cells(r, c)
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()
    assert plan.latent_width * d >= width > (plan.latent_width - 1) * d
    assert TilePlan.from_dict(plan.to_dict()) == plan


def test_windows_that_touch_a_region_are_the_ones_whose_pixels_reach_it():
    plan = TilePlan(1000, 700, 8, 256, 4)  # halo 32 px
    assert plan.tiles_touching(0, 10, 0, 10) == [(0, 0)]
    touching = plan.tiles_touching(250, 260, 250, 260)  # near the corner of four tiles
    assert touching == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan.window_pixels == 256 + 64


def test_blend_weights_of_overlapping_windows_sum_to_a_positive_smooth_total():
    plan = TilePlan(1024, 256, 8, 256, 4)
    w = blend_weights(plan)[plan.window_pixels // 2]  # the middle row of a window's weights
    total = np.zeros(1024 + 2 * plan.halo)
    for c in range(plan.tile_cols):
        total[c * 256: c * 256 + plan.window_pixels] += w
    inner = total[plan.halo: plan.halo + 1024]
    assert inner.min() > 0.05 and inner.max() <= 2.0  # never 0 (the decoder divides by it), at most two windows
    seams = inner[[256 - 1, 256, 512 - 1, 512, 768 - 1, 768]]
    assert np.ptp(seams) < 0.2  # smooth across the tile borders
    ramp = cosine_ramp(10, 4)
    assert ramp.min() > 0 and ramp[4:6].tolist() == [1.0, 1.0]


def test_bad_plans_are_refused():
    with pytest.raises(ValueError):
        TilePlan(100, 100, 8, 100, 2)
    with pytest.raises(ValueError):
        TilePlan(100, 100, 8, 64, -1)
