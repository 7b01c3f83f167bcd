"""Attention maps over a real Sentinel-1 raster: georeference, value range, contrast, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import rasterio

from sar_ae_core.quality.attention import attention_map_raster
from sar_ae_core.errors import Cancelled, SarInputError
from sar_ae_core.nn.model_io import save_bundle
from sar_ae_core.nn.models import ModelConfig, build_model
from sar_ae_core.scaling import fit_scaling


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, spain_db):
    """A small CBAM bundle and a plain one, with scaling fitted on the test raster."""
    import torch

    folder = tmp_path_factory.mktemp("models")
    scaling = fit_scaling([spain_db])
    torch.manual_seed(0)
    cbam = folder / "tiny-cbam.pt"
    model = build_model(ModelConfig(variant="res_cbam", base_channels=8, latent_channels=16))
    with torch.no_grad():  # untrained gates sit at sigmoid(~0) = 0.5 everywhere; sharpen them to see contrast
        for m in model.spatial_attention_modules().values():
            m.conv.weight.mul_(200.0)
    save_bundle(cbam, model, scaling, "tiny-cbam")
    plain = folder / "tiny-plain.pt"
    save_bundle(plain, build_model(ModelConfig(variant="plain", base_channels=8, latent_channels=16)), scaling,
                "tiny-plain")
    return {"cbam": str(cbam), "plain": str(plain)}


def test_attention_map_on_real_raster(tmp_path, spain_db, bundles):
    out = tmp_path / "attention.tif"
    # tile 128 on a 512 px raster: 4x4 tiles, so stitching across tile edges is exercised
    res = attention_map_raster(spain_db, out, model=bundles["cbam"], band=2, tile=128, device="cpu")
    assert res["modules"] == ["encoder.bottleneck.0.spatial", "decoder.bottleneck.0.spatial"]
    with rasterio.open(spain_db) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height, dst.count) == (src.width, src.height, 1)
        assert dst.crs == src.crs
        assert dst.transform.almost_equals(src.transform)
        assert dst.dtypes[0] == "float32"
        assert dst.tags()["SARAE_MODEL"] == "tiny-cbam"
        a = dst.read(1)
        valid = np.isfinite(src.read(2))
    assert np.array_equal(np.isfinite(a), valid)
    v = a[np.isfinite(a)]
    assert v.min() >= 0.0 and v.max() <= 1.0
    assert v.std() > 1e-3, "attention map is constant"
    assert abs(res["mean"] - float(v.mean())) < 1e-4


def test_attention_same_map_whatever_the_tile_rows(tmp_path, spain_db, bundles):
    """Streaming by tile rows must not change the values of a tile (same windows, same cores)."""
    a = attention_map_raster(spain_db, tmp_path / "a.tif", model=bundles["cbam"], tile=256, device="cpu",
                             batch_size=1)
    b = attention_map_raster(spain_db, tmp_path / "b.tif", model=bundles["cbam"], tile=256, device="cpu",
                             batch_size=4)
    with rasterio.open(a["output"]) as fa, rasterio.open(b["output"]) as fb:
        np.testing.assert_allclose(fa.read(1), fb.read(1), atol=1e-5)


def test_attention_plain_model_is_a_clear_error(tmp_path, spain_db, bundles):
    out = tmp_path / "attention.tif"
    with pytest.raises(SarInputError, match=r"model 'tiny-plain' \(variant plain\) has no spatial attention"):
        attention_map_raster(spain_db, out, model=bundles["plain"], device="cpu")
    assert not out.exists()


def test_attention_cancel_leaves_nothing(tmp_path, spain_db, bundles):
    out = tmp_path / "attention.tif"
    with pytest.raises(Cancelled):
        attention_map_raster(spain_db, out, model=bundles["cbam"], tile=128, device="cpu",
                             progress=lambda f, m: False)
    assert list(tmp_path.iterdir()) == []


def test_attention_bad_band_names_the_file(tmp_path, spain_db, bundles):
    with pytest.raises(SarInputError, match="band"):
        attention_map_raster(spain_db, tmp_path / "x.tif", model=bundles["cbam"], band=3, device="cpu")


@pytest.mark.slow
def test_attention_map_of_the_bundled_cbam_model_has_no_tile_seams(tmp_path, sar_data):
    """CBAM pools over its whole input, so each window has its own channel weights: whole-row windows blended over
    the halo leave no step at the tile borders (mean |gradient| across them no larger than elsewhere, within 5 %)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_codec import _border_ratios

    from sar_ae_core.defaults import ATTENTION_MODEL

    src = sar_data / "train" / "umbra04_gec_tanna_yasur_20230212_amp_u8.tif"
    out = tmp_path / "att.tif"
    attention_map_raster(src, out, model=ATTENTION_MODEL, tile=256)
    with rasterio.open(out) as ds:
        a = ds.read(1).astype(np.float64)
    for ratio in _border_ratios(a, 256):
        assert 0.8 < ratio < 1.05, ratio
