"""Mean-scale hyperprior codec: integer tables, bit-exact round trip, rate close to its own estimate."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sar_ae_core.nn.hyperprior import HyperpriorRangeCodec, MeanScaleHyperprior, scale_table


@pytest.mark.parametrize("size", ["full", "light", "context"])
def test_round_trip_is_exact_and_costs_about_what_the_model_estimates(size):
    torch.manual_seed(0)
    prior = MeanScaleHyperprior(latent_channels=8, hyper_channels=16, z_channels=4, size=size).eval()
    tables = prior.build_tables()
    tables.prior = prior  # what load_bundle attaches
    codec = HyperpriorRangeCodec(tables)
    rng = np.random.default_rng(0)
    y = (rng.normal(0, 2.0, (8, 20, 24))).astype(np.float32)
    payload = codec.encode(y)
    out = codec.decode(payload, y.shape)
    assert np.abs(out - y).max() <= 0.5 + 1e-4                # quantized around the predicted mean
    np.testing.assert_array_equal(codec.decode(payload, y.shape), out)  # decoding is deterministic
    assert codec.encode(y) == payload                        # and the bytes are reproducible
    assert np.all(np.diff(scale_table()) > 0)                # tabulated scales are increasing
    assert 0 < len(payload) < y.size * 2                     # far fewer bytes than raw 16-bit symbols
    assert codec.params()["id"] == "hyperprior-range"


def test_the_light_hyper_synthesis_keeps_the_light_decoder_within_2_5_kmac_per_pixel():
    """The decoder runs h_s before it can decode y: counted (benchmarks/bench_models.py) in the decoder's MACs. The
    full h_s (3x3 head on 64 channels at the latent's resolution) doubles the light decoder's cost; the light one
    (4x4 up-convolutions on 32 channels, 1x1 head) adds 32·32·16/1024 + 32·32·16/256 + 32·192/64 = 176 MAC/px."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_models import count_macs
    from sar_ae_core.nn.models import ModelConfig, SarAutoencoder

    def macs(**kw):
        c = ModelConfig(variant="gdn", base_channels=32, latent_channels=96, stages=3, decoder="light", **kw)
        m = SarAutoencoder(c).eval()
        return count_macs(m, 256, "encoder") / 256**2, count_macs(m, 256, "decoder") / 256**2

    enc_f, dec_f = macs(entropy_model="factorized")
    enc_l, dec_l = macs(entropy_model="hyperprior", hyper="light")
    enc_h, dec_h = macs(entropy_model="hyperprior", hyper="full")
    assert dec_l - dec_f == 176 and dec_l <= 2500
    enc_c, dec_c = macs(entropy_model="hyperprior", hyper="context")  # + a depthwise 3x3 on 32 channels at 1/64
    assert dec_c - dec_f == 176 + 32 * 9 / 64 and dec_c <= 2500 and enc_c > enc_l
    assert dec_h - dec_f > 2000                            # the full h_s: 64·192·9/64 = 1728 MAC/px in its head alone
    assert enc_f < enc_l < 10000 and enc_l - enc_f > dec_l - dec_f  # the encoder runs h_a and h_s
    with pytest.raises(ValueError, match="hyper"):
        ModelConfig(entropy_model="hyperprior", hyper="tiny")


@pytest.mark.parametrize("kind", ["light", "context"])
@pytest.mark.parametrize("size", [(5, 5), (9, 7), (32, 32)])
def test_the_light_hyper_synthesis_predicts_every_latent_element(size, kind):
    """μ and σ cover the latent whatever its size (h_a pads to a multiple of 4, h_s doubles exactly twice)."""
    prior = MeanScaleHyperprior(latent_channels=8, size=kind).eval()
    y = torch.randn(1, 8, *size)
    with torch.no_grad():
        y_hat, lik = prior(y)
    assert y_hat.shape == y.shape and lik.numel() > y.numel()
