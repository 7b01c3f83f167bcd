"""Lossless coding of quantized latents and validity masks, tile by tile."""

import numpy as np
import pytest

from sar_ae_core.coding.latent_coding import UniformZstdCodec, codec_from_params, decode_mask, encode_mask


@pytest.mark.parametrize("bits", [2, 8, 12])
def test_uniform_codec_round_trip_within_half_a_step(bits):
    rng = np.random.default_rng(bits)
    y = rng.normal(0, 3, (6, 16, 20)).astype(np.float32)
    codec = UniformZstdCodec(bits)
    out = codec.decode(codec.encode(y), y.shape)
    step = (y.max(axis=(1, 2)) - y.min(axis=(1, 2))) / ((1 << bits) - 1)
    assert np.all(np.abs(out - y).max(axis=(1, 2)) <= step * 0.5 + 1e-2 * step + 2e-3)
    assert codec_from_params(codec.params()).bits == bits
    with pytest.raises(ValueError, match="latent tile has"):
        codec.decode(codec.encode(y), (6, 16, 21))


def test_masks_round_trip_and_uniform_masks_cost_one_byte():
    rng = np.random.default_rng(3)
    m = rng.random((37, 53)) > 0.3
    assert np.array_equal(decode_mask(encode_mask(m), m.shape), m)
    assert encode_mask(np.ones((256, 256), bool)) == b"\x00" and encode_mask(np.zeros((9, 9), bool)) == b"\x01"
    with pytest.raises(ValueError):
        decode_mask(b"\x07", (4, 4))


def test_unknown_codec_ids_and_gains_are_refused():
    with pytest.raises(KeyError):
        codec_from_params({"id": "jpeg-xl"})
    with pytest.raises(ValueError):
        codec_from_params({"id": "factorized-range"})  # its tables are missing
