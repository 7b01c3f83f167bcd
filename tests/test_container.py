"""The .sarz container: header, chunks and index round-trip; every damage is named; frames are bounded."""

import io
import zlib

import pytest
import zstandard

from sar_ae_core.coding.container import FORMAT_MINOR, ContainerReader, ContainerWriter
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
    data[-8] ^= 0xFF  # inside the index (3.x: 6 bytes before the 5-byte footer)
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


def test_v3_index_and_footer_are_small_and_checked(tmp_path):
    """3.x: LEB128 count and lengths + CRC-32s, a 5-byte footer (one CRC-32 of header and index, the index length
    backwards); a count or length the bytes cannot hold, a partial entry, an index length pointing into the header,
    is refused (CRC repaired as a hostile file would)."""
    from sar_ae_core.coding.container import _leb128, footer_v3

    path = tmp_path / "v3.sarz"
    sizes = _write(path, {"k": "v"}, [b"a" * 300, b"b"])
    assert sizes["index+footer"] == (1 + 2 + 1 + 8) + 5
    data = path.read_bytes()
    body_end = len(data) - sizes["index+footer"]
    head = data[:body_end - 301]
    assert len(head) == sizes["header"] and head[8:10] == bytes([3, FORMAT_MINOR])

    def with_index(index, footer=None):
        out = data[:body_end] + index + (footer or footer_v3(index, zlib.crc32(head)))
        (tmp_path / "x.sarz").write_bytes(out)
        return tmp_path / "x.sarz"

    crcs = data[body_end + 4:body_end + 12]
    assert ContainerReader.open(with_index(_leb128([2, 300, 1]) + crcs)).chunk(0) == b"a" * 300
    for bad in (_leb128([1 << 30]) + crcs, _leb128([2, 300, 1]) + crcs[:7], _leb128([2, 300, 2]) + crcs,
                _leb128([2, 1 << 40, 1]) + crcs, b"\xff" * 12):
        with pytest.raises(SarInputError, match="damaged|truncated|index"):
            ContainerReader.open(with_index(bad))
    index = _leb128([2, 300, 1]) + crcs
    import struct

    for footer in (struct.pack("<I", zlib.crc32(index, zlib.crc32(head))) + _leb128([len(data)])[::-1],
                   struct.pack("<I", zlib.crc32(index, zlib.crc32(head))) + b"\x80" * 6, b"\x01"):
        with pytest.raises(SarInputError, match="truncated or damaged"):
            ContainerReader.open(with_index(index, footer))
    for cut in (5, 9, 11, 12, len(data) - 1):  # truncated anywhere
        (tmp_path / "t.sarz").write_bytes(data[:cut])
        with pytest.raises(SarInputError, match="truncated|damaged|magic"):
            ContainerReader.open(tmp_path / "t.sarz")


def test_older_readers_refuse_a_3x_file(tmp_path):
    """A 1.x/2.x reader reads the version as a u16 major: 3.x's two bytes give 3 + 256·x, refused as newer."""
    import struct

    _write(tmp_path / "n.sarz", {"k": "v"}, [b"z"])
    major, = struct.unpack("<H", (tmp_path / "n.sarz").read_bytes()[8:10])
    assert major == 3 + 256 * FORMAT_MINOR and major > 2


def test_derived_tiling_fields_are_left_out_and_restored(tmp_path):
    from sar_ae_core.coding.container import compact_header, expand_header
    from sar_ae_core.tiling import TilePlan

    plan = TilePlan(width=1000, height=333, downsample=8, tile=256, halo_cells=2)
    header = {"source": {"width": 1000, "height": 333}, "tiling": plan.to_dict()}
    small = compact_header(header)
    assert small["tiling"] == {"downsample": 8, "tile": 256, "halo_cells": 2}
    assert expand_header(small) == header
    _write(tmp_path / "t.sarz", header, [b"x"])
    with ContainerReader.open(tmp_path / "t.sarz") as r:
        assert r.header == header
    # a tiling field that differs from what it derives stays in the header (and the schema then refuses it)
    odd = {**header, "tiling": {**header["tiling"], "tile_rows": 7}}
    assert compact_header(odd)["tiling"]["tile_rows"] == 7 and expand_header(compact_header(odd)) == odd
    # what cannot be derived is left for the schema to name
    assert expand_header({"source": {"width": 10}, "tiling": {"tile": 0}}) == \
        {"source": {"width": 10}, "tiling": {"width": 10, "tile": 0}}
