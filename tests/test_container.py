"""The .sarz container: header, chunks and index round-trip; every damage is named; frames are bounded."""

import io
import zlib

import pytest
import zstandard

from sar_ae_core.coding.container import ContainerReader, ContainerWriter
from sar_ae_core.coding.frames import bounded_decompress
from sar_ae_core.errors import SarInputError


def _write(path, header, chunks):
    with open(path, "wb") as fh:
        w = ContainerWriter(fh, header)
        for c in chunks:
            w.add(c, "data")
        return w.finish()


def test_round_trip_and_random_access(tmp_path):
    chunks = [b"alpha", b"", b"\x00" * 1000, bytes(range(256))]
    sizes = _write(tmp_path / "a.sarz", {"hello": [1, 2, 3]}, chunks)
    assert sizes["data"] == sum(map(len, chunks))
    with ContainerReader.open(tmp_path / "a.sarz") as r:
        assert r.header == {"hello": [1, 2, 3]} and r.chunk_count == 4
        assert [r.chunk(i) for i in (3, 0, 2, 1)] == [chunks[3], chunks[0], chunks[2], chunks[1]]
        with pytest.raises(SarInputError, match="chunk 4 missing"):
            r.chunk(4)


def test_damage_is_named(tmp_path):
    path = tmp_path / "b.sarz"
    _write(path, {"k": "v"}, [b"payload" * 10])
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the index (2.x: 6 bytes before the 16-byte footer)
    (tmp_path / "c.sarz").write_bytes(bytes(data))
    with pytest.raises(SarInputError, match="damaged|checksum"):
        ContainerReader.open(tmp_path / "c.sarz")
    (tmp_path / "d.sarz").write_bytes(path.read_bytes()[:20])
    with pytest.raises(SarInputError, match="truncated"):
        ContainerReader.open(tmp_path / "d.sarz")
    with pytest.raises(SarInputError, match="wrong magic"):
        (tmp_path / "e.sarz").write_bytes(b"GIF89a" + bytes(100))
        ContainerReader.open(tmp_path / "e.sarz")


def test_bounded_decompress_refuses_what_does_not_fit():
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 5000)
    assert bounded_decompress(frame, 5000) == b"x" * 5000
    with pytest.raises(ValueError, match="declares 5000 bytes"):
        bounded_decompress(frame, 4999)
    quiet = zstandard.ZstdCompressor(write_content_size=False).compress(b"y" * 100_000)
    with pytest.raises(zstandard.ZstdError):
        bounded_decompress(quiet, 1000)  # size not declared: stopped at the bound
