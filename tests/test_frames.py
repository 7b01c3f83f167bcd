"""Bounded zstd frames: a frame that declares or expands to more than its limit is refused before allocating."""

import pytest
import zstandard

from sar_ae_core.coding.frames import MAX_HEADER_BYTES, bounded_decompress


def test_frames_within_their_limit_decode_and_larger_ones_are_refused():
    data = b"sar" * 1000
    frame = zstandard.ZstdCompressor().compress(data)
    assert bounded_decompress(frame, len(data)) == data
    with pytest.raises(ValueError, match="declares 3000 bytes"):
        bounded_decompress(frame, 2999)
    # a streamed frame does not declare its size: the output limit still holds
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    with pytest.raises(zstandard.ZstdError):
        bounded_decompress(streamed, 100)
    assert MAX_HEADER_BYTES == 1 << 20
