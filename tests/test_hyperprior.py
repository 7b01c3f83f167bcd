"""Mean-scale hyperprior codec: integer tables, bit-exact round trip, rate close to its own estimate."""

import numpy as np
import torch

from sar_ae_core.nn.hyperprior import HyperpriorRangeCodec, MeanScaleHyperprior, scale_table


def test_round_trip_is_exact_and_costs_about_what_the_model_estimates():
    torch.manual_seed(0)
    prior = MeanScaleHyperprior(latent_channels=8, hyper_channels=16, z_channels=4).eval()
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
