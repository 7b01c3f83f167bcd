"""The separable decoder (`--decoder separable`): within the 2.5 kMAC/px decoder budget, counted as
`benchmarks/bench_models.py` counts it; its receptive field within its halo of 3 latent cells (strips decode exactly);
the ONNX export computes what torch computes; a trained bundle of it compresses and reconstructs."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sar_ae_core.nn.model_config import ModelConfig, decoder_halo_cells
from sar_ae_core.nn.models import SeparableDecoder, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SHIPPED = dict(variant="gdn", base_channels=32, latent_channels=96, stages=3, entropy_model="factorized")


def _randomised(m):
    """Every decoder weight random (the residual blocks start as the identity, which would hide their reach)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def test_the_separable_decoder_costs_2495_mac_per_pixel_within_the_budget():
    from bench_models import count_macs

    sep = build_model({**SHIPPED, "decoder": "separable"}).eval()
    light = build_model({**SHIPPED, "decoder": "light"}).eval()
    assert isinstance(sep.decoder, SeparableDecoder)
    per_px = count_macs(sep, 256, "decoder") / 256 ** 2
    assert per_px == 2495.0 and per_px <= 2500
    assert count_macs(light, 256, "decoder") / 256 ** 2 == 2304.0
    # the same first level as the light decoder, then more channels at half resolution (32 against 16)
    assert sep.config.separable_widths() == [24, 32] and sep.config.separable_blocks() == [1, 2]
    first = sep.decoder.levels[0]
    assert (first.in_channels, first.out_channels, first.kernel_size) == (96, 96, (3, 3))
    y = torch.randn(1, 96, 5, 7)
    with torch.no_grad():
        assert sep.decoder(y).shape == (1, 1, 40, 56)


def test_a_separable_decoder_needs_two_stages():
    with pytest.raises(ValueError, match="'separable' needs stages >= 2"):
        ModelConfig(decoder="separable", stages=1)
    assert ModelConfig(decoder="separable", stages=4, latent_channels=64).separable_widths() == [16, 32, 32]


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_the_separable_decoders_reach_stays_within_its_halo(stages):
    """An impulse in one latent cell changes pixels more than two cells away (the blocks add reach to the light
    decoder's) but never beyond decoder_halo_cells (3 for 3 stages): strips decoded with that halo are exact."""
    m = _randomised(build_model({**SHIPPED, "stages": stages, "decoder": "separable"}).eval())
    n, f = 12, m.downsample_factor
    radius = 0
    for seed in range(4):  # the reach is the widest over inputs (a ReLU may cut an impulse short on one of them)
        y = torch.randn(1, 96, n, n, generator=torch.Generator().manual_seed(seed))
        y2 = y.clone()
        y2[..., n // 2, n // 2] += 5.0
        with torch.no_grad():
            changed = (m.decoder(y) - m.decoder(y2)).abs()[0, 0] > 1e-6
        rows = torch.nonzero(changed.any(1)).flatten()
        radius = max(radius, (n // 2) * f - rows.min().item(), rows.max().item() - ((n // 2 + 1) * f - 1))
    halo = decoder_halo_cells(m.config)
    assert halo == {2: 2, 3: 3, 4: 4}[stages]
    assert radius <= halo * f and halo * f - radius <= f, (radius, halo, f)  # enough, and at most a cell more


def test_the_onnx_export_of_a_separable_decoder_computes_what_torch_computes():
    import onnxruntime as ort

    from training.onnx_export import export_networks

    m = _randomised(build_model({**SHIPPED, "decoder": "separable"}).eval())
    _, dec = export_networks(m)
    s = ort.InferenceSession(dec, providers=["CPUExecutionProvider"])
    y = np.round(np.random.default_rng(1).normal(0, 2, (1, 96, 6, 9))).astype(np.float32)
    with torch.no_grad():
        want = m.decode(torch.from_numpy(y)).numpy()
    got = s.run(None, {"latent": y})[0]
    assert got.shape == want.shape == (1, 1, 48, 72)
    assert np.abs(got - want).max() < 1e-3  # float sums in another order (random weights of 0.3)


def test_the_active_channel_decoder_of_a_separable_model_gives_the_full_decoders_core():
    """The runtime's smaller decoder (the inactive latent channels folded into the first bias) exists for the
    separable decoder too ('same' convolutions on the unit, its 3-cell halo cut): the same core pixels."""
    import onnxruntime as ort

    from training.onnx_export import export_active_networks

    m = _randomised(build_model({**SHIPPED, "decoder": "separable"}).eval())
    active = np.arange(0, 96, 3)
    modes = np.random.default_rng(2).integers(-2, 3, 96).astype(np.float64)
    # checks its torch twin against the full decoder itself (every weight random: the network amplifies rounding
    # far more than a trained one, so the check's bound is the test's)
    _, dec = export_active_networks(m, active, modes, tolerance=1e-3)
    s = ort.InferenceSession(dec, providers=["CPUExecutionProvider"])
    y = np.random.default_rng(3).integers(-3, 4, (1, 96, 10, 11)).astype(np.float32)
    inactive = np.setdiff1d(np.arange(96), active)
    y[:, inactive] = modes[inactive, None, None]
    with torch.no_grad():
        full = m.decode(torch.from_numpy(y)).numpy()[..., 24:-24, 24:-24]
    core = s.run(None, {"latent": y[:, active]})[0]
    assert core.shape == full.shape == (1, 1, 32, 40)
    assert np.abs(core - full).max() < 1e-3  # float sums in another order; a wrong fold or cut is off by ≫ 0.01
