"""Model bundles: config + fp16 weights + scaling + tables round-trip; names and devices are checked."""

import pytest
import torch

from sar_ae_core.errors import SarInputError
from sar_ae_core.model_io import (DEFAULT_MODEL, bundled_models, load_bundle, model_card, resolve_model,
                                  save_bundle, select_device)
from sar_ae_core.models import ModelConfig, build_model
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
