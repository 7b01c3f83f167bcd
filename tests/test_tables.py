"""The torch-free coding tables and the factorized range codec: the per-channel fast path writes and reads exactly
the stream of the general grouped coder (files written before it keep decoding), escapes included; the inactive
channels of collapsed tables and the 'factorized-range-active' codec that leaves them out."""

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


def _with_inactive(tables: EntropyTables, dead=(1, 3)) -> EntropyTables:
    """The same tables with channels `dead` collapsed the way training leaves them: minimum counts off the mode."""
    counts = [c.copy() for c in tables.counts]
    for ch in dead:
        c = np.ones_like(counts[ch])
        c[4] = (1 << 16) - (len(c) - 1)
        counts[ch] = c
    return EntropyTables(tables.offsets.copy(), counts, tables.precision)


def test_inactive_channels_are_found_in_the_tables_and_their_mode_is_the_symbol():
    tables = _with_inactive(_tables())
    assert tables.inactive().tolist() == [False, True, False, True, False]
    assert tables.modes()[1] == tables.modes()[3] == 0  # offset -4 + index 4
    assert not _tables().inactive().any()


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_the_active_codec_leaves_out_the_inactive_channels_and_decodes_them_as_their_mode(gain):
    tables = _with_inactive(_tables())
    full, active = FactorizedRangeCodec(tables), FactorizedRangeCodec(tables, tables.inactive())
    assert full.id == "factorized-range" and active.id == "factorized-range-active"
    assert active.params() == {"id": "factorized-range-active", "precision": 16}  # the tables say which
    for codec in (full, active):
        codec.gain = gain
    rng = np.random.default_rng(3)
    latent = rng.normal(0, 3, (5, 16, 16)).astype(np.float32)
    latent[[1, 3]] = rng.uniform(-0.15, 0.15, (2, 16, 16))  # what the encoder gives there: rounds to the mode
    a, f = active.encode(latent), full.encode(latent)
    # the stream is the one of a model without the inactive channels: they cost no symbol at all
    keep = [0, 2, 4]
    sub = FactorizedRangeCodec(EntropyTables(tables.offsets[keep], [tables.counts[k] for k in keep], 16))
    sub.gain = gain
    assert a == sub.encode(latent[keep]) and len(a) <= len(f)
    decoded = active.decode(a, latent.shape)
    assert np.array_equal(decoded, full.decode(f, latent.shape))
    assert np.all(decoded[[1, 3]] == 0)
    # an encoder output off the mode in an inactive channel is not coded: the codec puts the mode there
    latent[1, 0, 0] = 7.0
    assert active.decode(active.encode(latent), latent.shape)[1, 0, 0] == 0
