"""The `.sarz` container: a small binary frame around a JSON header and independently decodable chunks.

Layout (little-endian), format 3.x::

    magic      8 bytes  b"\\x89SARZ\\r\\n\\x1a"   (PNG-style: catches text-mode damage)
    version    2 × u8   major, minor            (readers refuse a newer major; a 1.x/2.x reader reads these two
                                                 bytes as a u16 major >= 3 and refuses the file too)
    header     LEB128 length, then UTF-8 JSON compressed with zstd and the fixed raw-content dictionary
               HEADER_DICT_V2 (typical headers of these formats' products), the zstd frame without its 4-byte magic
               number; fields derivable from others — the tile plan's sizes, from the source's width and height and
               the plan's tile and downsampling — are left out and restored on reading (`compact_header` /
               `expand_header`)
    chunks     concatenated payloads, in the order the header's tile plan defines
    index      LEB128 chunk count, LEB128 length of each chunk, u32 CRC-32 of each chunk
    footer     u32 CRC-32 of everything before the chunks and of the index, then the index length as LEB128 written
               backwards (read from the file's last byte towards the front)

Everything but the coded tiles costs ~90 bytes on a georeferenced 100 × 100 chip (~310 in 1.2, ~117 in 2.0: at
low rates the small files of ML datasets spend a large part of their bytes on it). A truncated or damaged file
fails the one checksum of header and index (or a chunk's own). Format 2.0 files read as before: version 2 × u16,
header u32 length and u32 CRC-32 then the whole zstd frame, footer u32 index length, u32 index CRC-32, 8 bytes
b"SARZEND\\0". Format 1.x: header compressed with HEADER_DICT_V1 (1.1, 1.2) or without a dictionary (1.0), every
field present; index one zstd frame of (u32 length, u32 CRC-32) per chunk; footer u64 index offset, u32 index
length, u32 index CRC-32, end marker.

Chunk offsets are the running sum of the lengths, so one window can be decoded by reading only its
chunks. Every chunk carries a CRC-32, and so do header and index; any mismatch is reported with the file name.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import zstandard

from sar_ae_core.errors import SarInputError
from sar_ae_core.coding.frames import MAX_HEADER_BYTES, bounded_decompress

MAGIC = b"\x89SARZ\r\n\x1a"
END = b"SARZEND\0"
# 1.2: adapted tables (codec factorized-range-adaptive), residual layers (mask id); 2.0: compact header (dictionary
# V2, derived fields left out), LEB128 index, short footer, Rice-coded escapes (`escapes.RICE_TAG`); 3.0: u8
# version, LEB128 header length, zstd frame without its magic, one CRC-32 of header and index, no end marker; 3.1: the
# header's `postfilter` (coding/postfilter.py); 3.2: the residual layer's context mode (coding/residual.py, mode 2);
# 3.3: the residual layer codes the tile's edge pixels without a one-sided prediction (checkerboard mode 3, context
# layout 1: no steps along the tile grid)
# 3.4: the post-filter's bright gain (a 15th value of a band's `postfilter`, coding/postfilter.py `bright_excess`)
# 3.5: the residual layer's wavelet domain (coding/wavelet.py, frame mode 4); 3.6: its context mode (frame mode 5,
# coding/wavelet_context.py)
FORMAT_MAJOR, FORMAT_MINOR = 3, 6
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Part of the format: never edit (a new dictionary needs a new minor version). Typical header text, keys sorted.
HEADER_DICT_V1 = (
    b'{"codec":{"id":"factorized-range","precision":16},"created_by":"sar_ae_core 0.1.0",'
    b'"georef":{"crs":"EPSG:326","transform":[10.0,0.0,0.0,-10.0,'
    b'"crs_wkt":"PROJCS[\\"WGS 84 / UTM zone ","gcps":[[0.0,0.0,'
    b'"mask":{"id":"packbits-zstd"},"model":{"config":{"latent_channels":64},"name":"sarae-q2","sha256":"'
    b'"scaling":{"clip_method":"fixed","noise_floor":1e-10,"vmax_db":8.0,"vmin_db":-45.0},'
    b'"source":{"band_names":["VV","VH"],"bands":[1,2],"dtype":"float32","uint16","height":512,'
    b'"name":"s1_iw_grd_sen1floods11_","nodata":null,"tags":{"AREA_OR_POINT":"Area"},"units":"db","linear","dn",'
    b'"width":512},"tiling":{"downsample":16,"halo_cells":2,"height":512,"latent_height":32,"latent_width":32,'
    b'"tile":256,"tile_cols":2,"tile_rows":2,"width":512}}'
)


def _header_dict(major: int = 1) -> "zstandard.ZstdCompressionDict":
    data = _dict_v2() if major >= 2 else HEADER_DICT_V1
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


_DICT_V2: Optional[bytes] = None


def _dict_v2() -> bytes:
    """HEADER_DICT_V2: the bytes of `header_dict_v2.txt` (part of the 2.x format: never edit; its SHA-256 is tested)."""
    global _DICT_V2
    if _DICT_V2 is None:
        _DICT_V2 = (Path(__file__).with_name("header_dict_v2.txt")).read_bytes()
    return _DICT_V2


_FOOTER = struct.Struct("<QII8s")    # format 1.x
_FOOTER2 = struct.Struct("<II8s")    # format 2.x
_PRE = struct.Struct("<8sHHII")


def _derived_tiling(t: dict) -> dict:
    """The tile plan's derived sizes from its width, height, downsample and tile (as `TilePlan.to_dict` gives)."""
    w, h, d, tile = (int(t[k]) for k in ("width", "height", "downsample", "tile"))
    lw, lh, cells = -(-w // d), -(-h // d), tile // d
    return {"latent_width": lw, "latent_height": lh, "tile_rows": -(-lh // cells), "tile_cols": -(-lw // cells)}


def compact_header(header: dict) -> dict:
    """The header without the fields a 2.x reader derives (tile plan sizes equal to the source's and its own)."""
    t, src = header.get("tiling"), header.get("source")
    if not isinstance(t, dict) or not isinstance(src, dict):
        return header
    try:
        derived = _derived_tiling(t)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return header
    tiling = {k: v for k, v in t.items() if not (k in derived and derived[k] == v)}
    for k in ("width", "height"):
        if tiling.get(k) == src.get(k):
            del tiling[k]
    return {**header, "tiling": tiling}


def expand_header(header: dict) -> dict:
    """Inverse of compact_header; a header it cannot complete is returned as it is (the schema then names the
    missing field)."""
    t, src = header.get("tiling"), header.get("source")
    if not isinstance(t, dict) or not isinstance(src, dict):
        return header
    t = {**{k: src[k] for k in ("width", "height") if k in src}, **t}
    try:
        t = {**_derived_tiling(t), **t}
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        pass
    return {**header, "tiling": t}


def _leb128(values) -> bytes:
    """LEB128 of non-negative integers of any size (chunk lengths; `escapes._varints` stops at 2**28)."""
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_leb128(buf: bytes, pos: int, n: int, limit: int = 1 << 35) -> tuple[list[int], int]:
    """n LEB128 numbers from buf at pos, each below `limit`; (values, next position)."""
    out = []
    for _ in range(n):
        v = shift = 0
        while True:
            if pos >= len(buf):
                raise ValueError("index is truncated")
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 35:
                raise ValueError("index number too long")
        if v >= limit:
            raise ValueError("index number out of range")
        out.append(v)
    return out, pos


def pre_v3(body: bytes, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    """Magic, version and header length of a 3.x file whose header is the zstd frame `body` (magic included; the
    file stores it without)."""
    if body[:4] != _ZSTD_MAGIC:
        raise ValueError("the header is not a zstd frame")
    return MAGIC + bytes([major, minor]) + _leb128([len(body) - len(_ZSTD_MAGIC)])


def chunk_index(lengths, crcs) -> bytes:
    """The 2.x/3.x chunk index: LEB128 count and lengths, then the u32 CRC-32 of each chunk."""
    return _leb128([len(lengths), *lengths]) + np.asarray(crcs, "<u4").tobytes()


def footer_v3(index: bytes, head_crc: int) -> bytes:
    """The 3.x footer: CRC-32 of the bytes before the chunks (`head_crc`, their running CRC) and of the index, then
    the index length as LEB128 backwards."""
    return struct.pack("<I", zlib.crc32(index, head_crc)) + _leb128([len(index)])[::-1]


class ContainerWriter:
    """Streams chunks into an open binary file; call `finish()` once after the last chunk. `version` (major,
    minor) other than the current one writes that older container layout (for compatibility tests)."""

    def __init__(self, fh: BinaryIO, header: dict, version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)):
        self.fh = fh
        self.major, minor = version
        if self.major >= 2:
            header = compact_header(header)
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if version >= (1, 1):
            body = zstandard.ZstdCompressor(level=19, dict_data=_header_dict(self.major), write_checksum=False,
                                            write_content_size=True, write_dict_id=False).compress(text)
        else:
            body = zstandard.ZstdCompressor(level=19).compress(text)
        if self.major >= 3:
            pre = pre_v3(body, self.major, minor)
            fh.write(pre + body[len(_ZSTD_MAGIC):])
            self._crc = zlib.crc32(body[len(_ZSTD_MAGIC):], zlib.crc32(pre))
            size = len(pre) + len(body) - len(_ZSTD_MAGIC)
        else:
            fh.write(_PRE.pack(MAGIC, self.major, minor, len(body), zlib.crc32(body)))
            fh.write(body)
            size = _PRE.size + len(body)
        self.entries: list[tuple[int, int]] = []
        self.sizes = {"header": size}

    def add(self, payload: bytes, kind: str = "data") -> None:
        """Append one chunk."""
        self.fh.write(payload)
        self.entries.append((len(payload), zlib.crc32(payload)))
        self.sizes[kind] = self.sizes.get(kind, 0) + len(payload)

    def finish(self) -> dict:
        """Write index and footer; returns the byte count of each part."""
        offset = self.fh.tell()
        table = np.asarray(self.entries, dtype="<u4").reshape(-1, 2)
        if self.major >= 2:
            index = chunk_index(table[:, 0], table[:, 1])
            footer = footer_v3(index, self._crc) if self.major >= 3 else \
                _FOOTER2.pack(len(index), zlib.crc32(index), END)
        else:
            index = zstandard.ZstdCompressor(level=19).compress(table.tobytes())
            footer = _FOOTER.pack(offset, len(index), zlib.crc32(index), END)
        self.fh.write(index + footer)
        self.sizes["index+footer"] = len(index) + len(footer)
        return dict(self.sizes)


def _frame_v3(fh: BinaryIO, pre: bytes, size: int, path: str) -> tuple[int, int, bytes, int, bytes]:
    """Header and index of a 3.x file whose first bytes `pre` were read: (offset of the header, its length, its zstd
    frame with the magic number, offset of the index, the index), the one CRC of header and index checked."""
    try:
        (hlen,), start = _read_leb128(pre, 10, 1, limit=MAX_HEADER_BYTES)
    except ValueError:
        raise SarInputError(path, "file is truncated or damaged (header length unreadable)") from None
    fh.seek(start)
    body = fh.read(hlen)
    if len(body) < hlen:
        raise SarInputError(path, "file is truncated (header incomplete)")
    head_crc = zlib.crc32(body, zlib.crc32(pre[:start]))
    tail_len = min(9, size - start - hlen)  # CRC-32 + index length (LEB128 backwards, at most 5 bytes)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    try:
        (ilen,), back = _read_leb128(tail[::-1], 0, 1, limit=size)
    except ValueError:
        back = 0
    if not back or len(tail) < back + 4:
        raise SarInputError(path, "file is truncated or damaged (no index)")
    icrc = struct.unpack("<I", tail[len(tail) - back - 4:len(tail) - back])[0]
    ioff = size - back - 4 - ilen
    if ioff < start + hlen:
        raise SarInputError(path, "file is truncated or damaged (index position is inconsistent)")
    fh.seek(ioff)
    index = fh.read(ilen)
    if zlib.crc32(index, head_crc) != icrc:
        raise SarInputError(path, "header and index checksum mismatch (file is truncated or damaged)")
    return start, hlen, _ZSTD_MAGIC + body, ioff, index


def _frame_v1(fh: BinaryIO, pre: bytes, size: int, path: str) -> tuple[int, int, bytes, int, bytes]:
    """As `_frame_v3` for a 1.x or 2.x file (header and index CRCs, footer with end marker)."""
    if len(pre) < _PRE.size:
        raise SarInputError(path, "file is truncated (header incomplete)")
    _, major, _, hlen, hcrc = _PRE.unpack(pre)
    body = fh.read(hlen)
    if len(body) < hlen:
        raise SarInputError(path, "file is truncated (header incomplete)")
    if zlib.crc32(body) != hcrc:
        raise SarInputError(path, "header checksum mismatch (file is damaged)")
    footer = _FOOTER2 if major >= 2 else _FOOTER
    if size < _PRE.size + hlen + footer.size:
        raise SarInputError(path, "file is truncated (no index)")
    fh.seek(size - footer.size)
    if major >= 2:
        ilen, icrc, end = footer.unpack(fh.read(footer.size))
        ioff = size - footer.size - ilen
    else:
        ioff, ilen, icrc, end = footer.unpack(fh.read(footer.size))
    if end != END:
        raise SarInputError(path, "file is truncated or damaged (end marker missing)")
    if ioff + ilen != size - footer.size or ioff < _PRE.size + hlen:
        raise SarInputError(path, "index position is inconsistent (file is damaged)")
    fh.seek(ioff)
    index = fh.read(ilen)
    if zlib.crc32(index) != icrc:
        raise SarInputError(path, "chunk index checksum mismatch (file is damaged)")
    return _PRE.size, hlen, body, ioff, index


@dataclass
class ContainerReader:
    """Random access to the header and chunks of a `.sarz` file, verifying every checksum it reads."""

    path: str
    header: dict
    offsets: np.ndarray
    lengths: np.ndarray
    crcs: np.ndarray
    file_size: int
    _fh: Optional[BinaryIO] = None
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)  # the file's format version

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ContainerReader":
        """Open and validate frame, header and index (chunks are checked when read)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise SarInputError(path, "file not found")
        if os.path.isdir(path):
            raise SarInputError(path, "is a folder, not a .sarz file")
        size = os.path.getsize(path)
        return cls.from_file(open(path, "rb"), size, path)

    @classmethod
    def from_file(cls, fh: BinaryIO, size: int, path: str) -> "ContainerReader":
        """Validate frame, header and index of an open binary file of `size` bytes that only needs `seek` and
        `read` (a local file, or a remote one: `sar_ae_core.io.remote`); `path` names it in errors. The reader owns
        `fh` from now on: it is closed on error and by `close()`."""
        try:
            pre = fh.read(_PRE.size)
            if len(pre) < 10 or pre[:8] != MAGIC:
                raise SarInputError(path, "not a .sarz file (wrong magic bytes)")
            if pre[8] >= 3:  # 3.x: u8 major, u8 minor; 1.x and 2.x: u16 major, u16 minor
                major, minor = pre[8], pre[9]
            else:
                major = pre[8] | pre[9] << 8
                minor = struct.unpack_from("<H", pre, 10)[0] if len(pre) >= 12 else 0
            if major > FORMAT_MAJOR:
                raise SarInputError(path, f".sarz format version {major}.{minor} is newer than this software "
                                          f"({FORMAT_MAJOR}.{FORMAT_MINOR}); please upgrade")
            if major < 1:
                raise SarInputError(path, f"unknown .sarz format version {major}")
            read = _frame_v3 if major >= 3 else _frame_v1
            start, hlen, body, ioff, index = read(fh, pre, size, path)
            try:
                dctx = zstandard.ZstdDecompressor(dict_data=_header_dict(major)) if (major, minor) >= (1, 1) \
                    else zstandard.ZstdDecompressor()
                header = json.loads(bounded_decompress(body, MAX_HEADER_BYTES, dctx).decode("utf-8"))
            except RecursionError:
                raise SarInputError(path, "header JSON is nested too deeply (file is damaged)") from None
            except (ValueError, zstandard.ZstdError):
                raise SarInputError(path, "header is not valid JSON (file is damaged)") from None
            if major >= 2 and isinstance(header, dict):
                header = expand_header(header)
            if major >= 2:
                (n,), pos = _read_leb128(index, 0, 1, limit=len(index) + 1)
                lens, pos = _read_leb128(index, pos, n, limit=size)
                if len(index) - pos != 4 * n:
                    raise SarInputError(path, "chunk index has a partial entry (file is damaged)")
                table = np.stack([np.asarray(lens, np.int64).reshape(-1),
                                  np.frombuffer(index, "<u4", offset=pos).astype(np.int64)], axis=1)
            else:
                # every chunk has at least one byte: the index cannot describe more chunks than the file has bytes
                raw = bounded_decompress(index, 8 * size)
                if len(raw) % 8:
                    raise SarInputError(path, "chunk index has a partial entry (file is damaged)")
                table = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
            lengths = table[:, 0].astype(np.int64)
            offsets = start + hlen + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            if len(lengths) and offsets[-1] + lengths[-1] != ioff:
                raise SarInputError(path, "chunk sizes do not add up (file is damaged)")
            if not len(lengths) and ioff != start + hlen:
                raise SarInputError(path, "chunk sizes do not add up (file is damaged)")
        except SarInputError:
            fh.close()
            raise
        except (struct.error, zstandard.ZstdError, ValueError) as exc:
            fh.close()
            raise SarInputError(path, f"file is damaged ({exc})") from None
        return cls(path, header, offsets, lengths, table[:, 1].astype(np.uint32), size, fh, (major, minor))

    def chunk(self, i: int) -> bytes:
        """Payload of chunk i, CRC-checked."""
        if not 0 <= i < len(self.lengths):
            raise SarInputError(self.path, f"chunk {i} missing (file has {len(self.lengths)} chunks)")
        self._fh.seek(int(self.offsets[i]))
        data = self._fh.read(int(self.lengths[i]))
        if len(data) != self.lengths[i] or zlib.crc32(data) != int(self.crcs[i]):
            raise SarInputError(self.path, f"chunk {i} checksum mismatch (file is damaged)")
        return data

    def prefetch(self, ids) -> None:
        """Hint that chunks `ids` are about to be read: a file that can fetch byte ranges ahead (a remote one) gets
        the merged spans of those chunks, one request each, instead of reading chunk by chunk or guessing ahead."""
        fetch = getattr(self._fh, "prefetch", None)
        ids = sorted({int(i) for i in ids if 0 <= int(i) < len(self.lengths)})
        if fetch is None or not ids:
            return
        start = stop = None
        for i in ids:
            a, b = int(self.offsets[i]), int(self.offsets[i] + self.lengths[i])
            if start is not None and a <= stop:  # adjacent chunks in one request, nothing unneeded
                stop = max(stop, b)
                continue
            if start is not None:
                fetch(start, stop)
            start, stop = a, b
        fetch(start, stop)

    @property
    def chunk_count(self) -> int:
        return len(self.lengths)

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ContainerReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
