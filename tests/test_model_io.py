"""Model bundles: config + fp16 weights + scaling + tables round-trip; names and devices are checked."""

import pytest
import torch

from sar_ae_core.errors import SarInputError
from sar_ae_core.nn.model_io import (DEFAULT_MODEL, bundled_models, load_bundle, model_card, resolve_model,
                                  save_bundle, select_device)
from sar_ae_core.nn.models import ModelConfig, build_model
from sar_ae_core.scaling import ScalingParams


def test_bundle_round_trip_keeps_weights_scaling_and_tables(tmp_path):
    torch.manual_seed(1)
    model = build_model(ModelConfig(variant="gdn", base_channels=8, latent_channels=8, stages=2,
                                    entropy_model="factorized")).eval()
    scaling = ScalingParams(vmin_db=-30.0, vmax_db=5.0, clip_method="fixed")
    sha = save_bundle(tmp_path / "m.pt", model, scaling, "tiny-gdn")
    b = load_bundle(str(tmp_path / "m.pt"))
    assert b.name == "tiny-gdn" and b.sha256 == sha and b.tables is not None
    assert (b.scaling.vmin_db, b.scaling.vmax_db) == (-30.0, 5.0)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(b.model.encode(x), model.half().float().encode(x), atol=5e-2)


def test_names_devices_and_the_bundled_default():
    assert resolve_model(DEFAULT_MODEL).name == f"{DEFAULT_MODEL}.pt"
    assert DEFAULT_MODEL in [p.stem for p in bundled_models()]
    assert model_card(DEFAULT_MODEL)["measured"]["bpp"] > 0
    with pytest.raises(SarInputError, match="no such model"):
        resolve_model("sarae-q9")
    assert select_device("cpu").type == "cpu"
    with pytest.raises(SarInputError, match="--device"):
        select_device("gpu0")


def test_a_model_decodes_the_files_of_the_models_it_declares(tmp_path, spain_db):
    """A light decoder trained on the frozen latents of a model reads that model's files (same encoder and tables);
    any other model is refused with one line naming the file."""
    from sar_ae_core.codec import compress_raster, reconstruct_raster

    torch.manual_seed(2)
    cfg = dict(variant="gdn", base_channels=8, latent_channels=8, stages=3, entropy_model="factorized")
    a = build_model(ModelConfig(**cfg)).eval()
    b = build_model(ModelConfig(**cfg, decoder="light")).eval()
    b.encoder.load_state_dict(a.encoder.state_dict())
    b.entropy.load_state_dict(a.entropy.state_dict())
    scaling = ScalingParams(vmin_db=-45.0, vmax_db=8.0, clip_method="fixed")
    sha_a = save_bundle(tmp_path / "a.pt", a, scaling, "tiny-a")
    save_bundle(tmp_path / "b.pt", b, scaling, "tiny-b", info={"decodes_sha256": [sha_a]})
    save_bundle(tmp_path / "c.pt", b, scaling, "tiny-c")
    sarz = tmp_path / "a.sarz"
    compress_raster(spain_db, sarz, model=str(tmp_path / "a.pt"))
    out = reconstruct_raster(sarz, tmp_path / "b.tif", model=str(tmp_path / "b.pt"))
    assert out["width"] == 512 and load_bundle(str(tmp_path / "b.pt")).decodes(sha_a[:16])
    with pytest.raises(SarInputError, match="was compressed with model 'tiny-a'"):
        reconstruct_raster(sarz, tmp_path / "c.tif", model=str(tmp_path / "c.pt"))
    assert not (tmp_path / "c.tif").exists()
