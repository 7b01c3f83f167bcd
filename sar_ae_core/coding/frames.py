"""Bounded zstd frames: every compressed part of a `.sarz` (header, index, masks, escapes, latents) is decoded with
a limit derived from what the header says it must hold, so no file can make the decoder allocate more."""

from __future__ import annotations

import zstandard

MAX_HEADER_BYTES = 1 << 20  # decompressed header text


def bounded_decompress(data: bytes, limit: int, dctx: "zstandard.ZstdDecompressor | None" = None) -> bytes:
    """One zstd frame, refusing to produce more than `limit` bytes whatever the frame declares (no file can make
    the decoder allocate more than what the header says it must hold)."""
    size = zstandard.frame_content_size(data)
    if size > limit:
        raise ValueError(f"a compressed part declares {size} bytes where at most {limit} fit")
    return (dctx or zstandard.ZstdDecompressor()).decompress(data, max_output_size=max(int(limit), 1))
