"""An open `.sarz` file: header facts, latent and mask tiles decoded on demand, and a model that does not fit."""

import numpy as np
import pytest

from sar_ae_core.codec import compress_raster
from sar_ae_core.coding.sarz import SHA_PREFIX, SarzFile, _chunk_id
from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import load_bundle


def test_header_facts_tiles_and_chunk_order(tmp_path, spain_db):
    sarz = tmp_path / "s.sarz"
    compress_raster(spain_db, sarz, tile=256)
    bundle = load_bundle()
    with SarzFile(sarz) as f:
        assert (f.plan.width, f.plan.height, f.bands) == (512, 512, 2)
        assert f.model_name == bundle.name and len(f.model_sha) == SHA_PREFIX and bundle.decodes(f.model_sha)
        assert f.reader.chunk_count == f.plan.tile_rows * f.plan.tile_cols * f.bands * 2
        # chunk order: tile after tile (row-major), band after band, latents then mask
        ids = [_chunk_id(f.plan, f.bands, r, c, b, k) for r, c in f.plan.tiles() for b in range(2) for k in (0, 1)]
        assert ids == list(range(f.reader.chunk_count))
        f.attach(bundle)
        lat = f.latent_tile(1, 1, 1)
        assert lat.shape == (bundle.config.latent_channels, f.plan.cells, f.plan.cells) and lat.dtype == np.float32
        valid, escaped = f.mask_and_escapes(0, 0, 0)
        assert valid.shape == (256, 256) and valid.all()
        assert escaped is None or np.isnan(escaped).mean() > 0.9  # a few bright pixels at most


def test_a_model_with_other_latents_is_refused_when_attached(tmp_path, spain_db, tiny_bundle):
    sarz = tmp_path / "s.sarz"
    compress_raster(spain_db, sarz)
    with SarzFile(sarz) as f, pytest.raises(SarInputError, match="latent channels"):
        f.attach(load_bundle(tiny_bundle))
