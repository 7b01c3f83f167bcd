"""Tests of the autoencoder model zoo (sar_ae_core.nn.models)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sar_ae_core.nn.models import (
    CBAM,
    VARIANTS,
    ChannelAttention,
    DeconvBlock,
    ModelConfig,
    ResidualBlock,
    SarAutoencoder,
    SelfAttention2d,
    SpatialAttention,
    build_model,
)

LATENTS = (4, 8, 16, 32, 64)
EXPECTED_RATIO = {4: 64.0, 8: 32.0, 16: 16.0, 32: 8.0, 64: 4.0}
SIZE = 64

torch.set_num_threads(1)  # 2-core machine; tiny models gain nothing from threading


def _model(variant: str, latent: int, self_attention: bool = False, seed: int = 0) -> SarAutoencoder:
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(variant=variant, latent_channels=latent, base_channels=8, self_attention=self_attention)
    )


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


variant_latent = pytest.mark.parametrize(
    "variant,latent",
    [pytest.param(v, c, id=f"{v}-lat{c}") for v in VARIANTS for c in LATENTS],
)


@variant_latent
def test_shapes_range_and_ratio(variant: str, latent: int) -> None:
    model = _model(variant, latent)
    if variant == "gdn":  # linear output: clamped to [0, 1] outside training only
        model.eval()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.encode(x)
        x_hat = model.decode(y)
    assert y.shape == (2, latent, SIZE // 16, SIZE // 16)
    assert x_hat.shape == x.shape
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0
    assert model.nominal_compression_ratio == EXPECTED_RATIO[latent]
    # image values / latent values is exactly the nominal ratio
    assert x.numel() / y.numel() == pytest.approx(model.nominal_compression_ratio)
    assert model.downsample_factor == 16


@variant_latent
def test_gradient_reaches_first_conv(variant: str, latent: int) -> None:
    model = _model(variant, latent)
    model.train()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    loss = torch.nn.functional.mse_loss(model(x), x)
    loss.backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert float(grad.abs().sum()) > 0.0


@variant_latent
def test_eval_output_is_per_sample(variant: str, latent: int) -> None:
    model = _model(variant, latent)
    # one training step on data so BN running stats are not the trivial init values
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    model.eval()
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch = model(x)
        single = model(x[1:2])
    torch.testing.assert_close(single, batch[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_self_attention_variant(variant: str) -> None:
    model = _model(variant, 16, self_attention=True)
    sa = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    assert len(sa) == 2  # encoder end and decoder start
    assert all(float(m.gamma.detach()) == 0.0 for m in sa)
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    out = model(x)
    assert out.shape == x.shape
    out.mean().backward()
    # gamma receives a gradient even at 0, so the block can learn to switch itself on
    assert all(m.gamma.grad is not None and float(m.gamma.grad.abs()) > 0 for m in sa)


def test_self_attention_starts_as_identity() -> None:
    torch.manual_seed(0)
    sa = SelfAttention2d(16)
    x = torch.randn(2, 16, 5, 7)
    assert float(sa.gamma.detach()) == 0.0
    with torch.no_grad():
        torch.testing.assert_close(sa(x), x, atol=0, rtol=0)
        sa.gamma.fill_(1.0)
        assert float((sa(x) - x).abs().max()) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(60, 64), (64, 72), (17, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_non_divisible_size_raises(variant: str, shape: tuple[int, int]) -> None:
    model = _model(variant, 16)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*stages = 16"):
        model(torch.rand(1, 1, *shape))


def test_bad_input_channels_and_latent_raise() -> None:
    model = _model("plain", 16)
    with pytest.raises(ValueError, match="input channel"):
        model(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.rand(1, 8, 4, 4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_convolutional_non_square(variant: str) -> None:
    model = _model(variant, 8).eval()
    x = torch.rand(1, 1, 48, 96)
    with torch.no_grad():
        y = model.encode(x)
        assert y.shape == (1, 8, 3, 6)
        assert model.decode(y).shape == x.shape


@pytest.mark.parametrize(
    "variant,expected",
    [("plain", 0), ("residual", 0), ("res_cbam", 2), ("full_attention", 8)],
)
def test_attention_maps(variant: str, expected: int) -> None:
    model = _model(variant, 16)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    maps = model.attention_maps(x)
    assert len(maps) == expected
    if expected == 0:
        assert maps == {}
    for name, amap in maps.items():
        assert amap.shape == (2, 1, SIZE, SIZE), name
        assert float(amap.min()) >= 0.0 and float(amap.max()) <= 1.0, name
        # a sigmoid of a randomly initialised conv is not constant
        assert float(amap.std()) > 0.0, name
    # no side effects: mode, BN statistics and keep_map flags are restored
    assert model.training
    torch.testing.assert_close(bn.running_mean, running_mean, atol=0, rtol=0)
    assert all(not m.keep_map and m.last_map is None for m in model.modules() if isinstance(m, SpatialAttention))


def test_spatial_attention_map_is_the_applied_gate() -> None:
    torch.manual_seed(0)
    sa = SpatialAttention()
    x = torch.rand(2, 4, 8, 8) + 0.1
    sa(x)
    assert sa.last_map is None  # not kept unless asked
    sa.keep_map = True
    out = sa(x)
    assert sa.last_map is not None and sa.last_map.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out, x * sa.last_map)


def test_blocks() -> None:
    torch.manual_seed(0)
    # hidden width clamps to 1 for narrow inputs
    assert ChannelAttention(4).mlp[0].out_channels == 1
    assert ChannelAttention(64).mlp[0].out_channels == 8
    assert CBAM(4)(torch.rand(1, 4, 4, 4)).shape == (1, 4, 4, 4)
    res = ResidualBlock(8, 16)
    assert isinstance(res.shortcut, nn.Sequential)
    assert res(torch.rand(2, 8, 6, 6)).shape == (2, 16, 6, 6)
    assert isinstance(ResidualBlock(8).shortcut, nn.Identity)
    up = DeconvBlock(8, 4)
    assert up(torch.rand(2, 8, 5, 6)).shape == (2, 4, 10, 12)
    assert isinstance(up[0], nn.Upsample) and up[0].mode == "nearest"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "gdn"])
def test_no_transposed_convolutions(variant: str) -> None:
    """The seed-architecture variants upsample by resize-convolution; `gdn` keeps the transposed convolutions of
    learned image codecs (trained with the rate term, at a quarter of the resize-convolution's cost)."""
    model = _model(variant, 16)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


def test_channel_progression_capped() -> None:
    cfg = ModelConfig(variant="plain", base_channels=8, stages=6, latent_channels=16)
    assert cfg.channels() == [8, 16, 32, 64, 64]
    model = build_model(cfg)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 64, 16]
    assert model.nominal_compression_ratio == 4**6 / 16
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("stages,ratio", [(1, 4 / 16), (2, 1.0), (3, 4.0)])
def test_other_stage_counts(stages: int, ratio: float) -> None:
    model = build_model(ModelConfig(variant="full_attention", base_channels=8, stages=stages, latent_channels=16))
    assert model.nominal_compression_ratio == ratio
    x = torch.rand(2, 1, 32, 32)
    assert model(x).shape == x.shape


def test_default_parameter_counts_increase(record_property) -> None:
    counts = {}
    for variant in VARIANTS:
        for sa in (False, True):
            model = build_model(ModelConfig(variant=variant, self_attention=sa))
            counts[f"{variant}{'+sa' if sa else ''}"] = model.parameter_count()
    print("\nparameter counts (base 32, latent 16, 4 stages):")
    for k, v in counts.items():
        print(f"  {k:20s} {v:>10,d}")
    record_property("parameter_counts", json.dumps(counts))
    assert counts["plain"] < counts["residual"] < counts["res_cbam"] < counts["full_attention"]
    for variant in VARIANTS:
        assert counts[f"{variant}+sa"] > counts[variant]
    # plain at base 32 is ~0.6 M parameters; guards against an accidental change of widths
    assert 500_000 < counts["plain"] < 800_000


def test_config_json_round_trip() -> None:
    cfg = ModelConfig(variant="full_attention", self_attention=True, base_channels=8, latent_channels=32, stages=3)
    text = json.dumps(cfg.to_dict())
    back = ModelConfig.from_dict(json.loads(text))
    assert back == cfg
    m1, m2 = build_model(cfg), build_model(json.loads(text))
    assert m1.config == m2.config
    assert m1.parameter_count() == m2.parameter_count()
