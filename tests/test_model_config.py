"""ModelConfig: validation with messages naming the field, JSON round trip (bundles written before a field existed
still load), the light decoder's widths, and the decoder/encoder halos that make strip coding exact."""

import pytest

from sar_ae_core.nn.model_config import ModelConfig, decoder_halo_cells, encoder_halo_cells
from sar_ae_core.nn.models import build_model


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"decoder": "tiny"}, "decoder must be one of 'mirror', 'light'"),
        ({"variant": "unet"}, "'plain', 'residual', 'res_cbam', 'full_attention'"),
        ({"latent_channels": 0}, "latent_channels must be in 1..256"),
        ({"latent_channels": 257}, "latent_channels must be in 1..256"),
        ({"stages": 0}, "stages must be in 1..6"),
        ({"stages": 7}, "stages must be in 1..6"),
        ({"base_channels": 2.5}, "base_channels must be an int"),
        ({"in_channels": True}, "in_channels must be an int"),
        ({"self_attention": "yes"}, "self_attention must be a bool"),
    ],
    ids=["decoder", "variant", "latent0", "latent257", "stages0", "stages7", "base-float", "in-bool", "sa-str"],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", "\\*").replace(".", "\\.")):
        ModelConfig(**kwargs)


def test_validate_catches_mutation_and_unknown_keys() -> None:
    cfg = ModelConfig()
    cfg.variant = "bogus"
    with pytest.raises(ValueError, match="variant must be one of"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['latent'\]"):
        ModelConfig.from_dict({"variant": "plain", "latent": 16})
    with pytest.raises(ValueError, match="unknown key"):
        build_model({"variant": "plain", "dropout": 0.1})
    with pytest.raises(TypeError):
        build_model("plain")  # type: ignore[arg-type]


def test_bundles_without_the_decoder_field_load_as_mirror_and_light_widths_follow_the_latent():
    old = {"variant": "gdn", "base_channels": 64, "latent_channels": 96, "stages": 3, "entropy_model": "factorized"}
    assert ModelConfig.from_dict(old).decoder == "mirror"
    light = ModelConfig.from_dict({**old, "decoder": "light"})
    assert light.light_widths() == [24, 16, 1]
    assert ModelConfig(stages=1, decoder="light").light_widths() == [1]
    assert encoder_halo_cells(light) == 2 and encoder_halo_cells(ModelConfig(variant="plain")) is None


@pytest.mark.parametrize("config", [
    dict(variant="gdn", base_channels=16, latent_channels=24, stages=3),
    dict(variant="gdn", base_channels=16, latent_channels=24, stages=3, decoder="light"),
    dict(variant="plain", base_channels=8, latent_channels=8, stages=4),
    dict(variant="residual", base_channels=8, latent_channels=8, stages=4),
])
def test_decoder_halo_covers_the_receptive_field(config):
    """An impulse in one latent cell changes only pixels within decoder_halo_cells of it: strips decoded with that
    halo are exact."""
    import torch

    from sar_ae_core.nn.models import build_model

    torch.manual_seed(0)
    m = build_model(config).eval()
    n, f = 16, m.downsample_factor
    y = torch.randn(1, m.config.latent_channels, n, n)
    y2 = y.clone()
    y2[..., n // 2, n // 2] += 5.0
    with torch.no_grad():
        changed = (m.decoder(y) - m.decoder(y2)).abs()[0, 0] > 0
    rows = torch.nonzero(changed.any(1)).flatten()
    radius = max((n // 2) * f - rows.min().item(), rows.max().item() - ((n // 2 + 1) * f - 1))
    halo = decoder_halo_cells(m.config)
    assert 0 < radius <= halo * f, (radius, halo)
    assert decoder_halo_cells(ModelConfig(variant="res_cbam")) is None  # global pooling: blended windows


