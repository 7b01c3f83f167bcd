"""The torch-free coding tables and the factorized range codec: the per-channel fast path writes and reads exactly
the stream of the general grouped coder (files written before it keep decoding), escapes included."""

import numpy as np
import pytest

from sar_ae_core.coding.tables import (EntropyTables, FactorizedRangeCodec, _channel_of, decode_grouped, encode_grouped,
                                join_payload, split_payload)


def _tables(channels=5, width=9):
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(channels):
        c = rng.integers(1, 500, width + 1)
        c[-1] += (1 << 16) - c.sum()  # escape symbol takes the rest
        counts.append(c.astype(np.int32))
    return EntropyTables(np.full(channels, -4, np.int32), counts, 16)


@pytest.mark.parametrize("gain", [1.0, 0.7, 1.8])
def test_fast_path_equals_the_grouped_coder_byte_for_byte(gain):
    import constriction

    tables = _tables()
    codec = FactorizedRangeCodec(tables)
    codec.gain = gain
    rng = np.random.default_rng(0)
    latent = (rng.normal(0, 3, (5, 7, 11)) + rng.choice([0, 40], (5, 7, 11), p=[0.97, 0.03])).astype(np.float32)
    fast = codec.encode(latent)
    q = codec.quantize(latent)
    enc = constriction.stream.queue.RangeEncoder()
    escapes = encode_grouped(enc, codec._models, tables, _channel_of(q.shape), q.ravel())
    assert fast == join_payload(enc, escapes)
    assert sum(e.size for e in escapes) > 0  # the escapes path is exercised
    dec, esc = split_payload(constriction, fast, q.size)
    general, _ = decode_grouped(dec, codec._models, tables, _channel_of(q.shape), esc, 0)
    assert np.array_equal(codec.decode(fast, q.shape), codec.dequantize(general.reshape(q.shape)))
    assert np.array_equal(general.reshape(q.shape), q)


def test_a_payload_missing_its_escapes_is_an_error():
    codec = FactorizedRangeCodec(_tables())
    latent = np.full((5, 2, 3), 100.0, np.float32)  # every value escapes
    payload = codec.encode(latent)
    n = int.from_bytes(payload[:4], "little")
    with pytest.raises(ValueError):
        codec.decode(payload[:4 + n], latent.shape)
