"""The `.sarz` container: a small binary frame around a JSON header and independently decodable chunks.

Layout (little-endian)::

    magic      8 bytes  b"\\x89SARZ\\r\\n\\x1a"   (PNG-style: catches text-mode and truncation damage)
    version    2 × u16  major, minor            (readers refuse a newer major)
    header     u32 length, u32 CRC-32, then zstd-compressed UTF-8 JSON (version 1.1 and later: compressed
               with the fixed raw-content dictionary HEADER_DICT_V1, which holds the usual keys and values,
               so a header costs ~200 bytes instead of ~450; 1.0 files, without it, still read)
    chunks     concatenated payloads, in the order the header's tile plan defines
    index      zstd-compressed array of (u32 length, u32 CRC-32) per chunk
    footer     u64 index offset, u32 index length, u32 index CRC-32, 8 bytes b"SARZEND\\0"

Chunk offsets are the running sum of the lengths, so one window can be decoded by reading only its
chunks. Every chunk, the header and the index carry a CRC-32; any mismatch is reported with the file name.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Optional

import numpy as np
import zstandard

from sar_ae_core.errors import SarInputError
from sar_ae_core.coding.frames import MAX_HEADER_BYTES, bounded_decompress

MAGIC = b"\x89SARZ\r\n\x1a"
END = b"SARZEND\0"
FORMAT_MAJOR, FORMAT_MINOR = 1, 2  # 1.2: adapted tables (codec factorized-range-adaptive), residual layers (mask id)
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


def _header_dict() -> "zstandard.ZstdCompressionDict":
    return zstandard.ZstdCompressionDict(HEADER_DICT_V1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_FOOTER = struct.Struct("<QII8s")
_PRE = struct.Struct("<8sHHII")


class ContainerWriter:
    """Streams chunks into an open binary file; call `finish()` once after the last chunk."""

    def __init__(self, fh: BinaryIO, header: dict):
        self.fh = fh
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        body = zstandard.ZstdCompressor(level=19, dict_data=_header_dict(), write_checksum=False,
                                        write_content_size=True, write_dict_id=False).compress(text)
        fh.write(_PRE.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(body), zlib.crc32(body)))
        fh.write(body)
        self.entries: list[tuple[int, int]] = []
        self.sizes = {"header": _PRE.size + len(body)}

    def add(self, payload: bytes, kind: str = "data") -> None:
        """Append one chunk."""
        self.fh.write(payload)
        self.entries.append((len(payload), zlib.crc32(payload)))
        self.sizes[kind] = self.sizes.get(kind, 0) + len(payload)

    def finish(self) -> dict:
        """Write index and footer; returns the byte count of each part."""
        offset = self.fh.tell()
        raw = np.asarray(self.entries, dtype="<u4").reshape(-1, 2).tobytes()
        index = zstandard.ZstdCompressor(level=19).compress(raw)
        self.fh.write(index)
        self.fh.write(_FOOTER.pack(offset, len(index), zlib.crc32(index), END))
        self.sizes["index+footer"] = len(index) + _FOOTER.size
        return dict(self.sizes)


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
            if len(pre) < _PRE.size or pre[:8] != MAGIC:
                raise SarInputError(path, "not a .sarz file (wrong magic bytes)")
            _, major, minor, hlen, hcrc = _PRE.unpack(pre)
            if major > FORMAT_MAJOR:
                raise SarInputError(path, f".sarz format version {major}.{minor} is newer than this software "
                                          f"({FORMAT_MAJOR}.{FORMAT_MINOR}); please upgrade")
            if major < 1:
                raise SarInputError(path, f"unknown .sarz format version {major}.{minor}")
            body = fh.read(hlen)
            if len(body) < hlen:
                raise SarInputError(path, "file is truncated (header incomplete)")
            if zlib.crc32(body) != hcrc:
                raise SarInputError(path, "header checksum mismatch (file is damaged)")
            try:
                dctx = zstandard.ZstdDecompressor(dict_data=_header_dict()) if (major, minor) >= (1, 1) \
                    else zstandard.ZstdDecompressor()
                header = json.loads(bounded_decompress(body, MAX_HEADER_BYTES, dctx).decode("utf-8"))
            except RecursionError:
                raise SarInputError(path, "header JSON is nested too deeply (file is damaged)") from None
            except (ValueError, zstandard.ZstdError):
                raise SarInputError(path, "header is not valid JSON (file is damaged)") from None
            if size < _PRE.size + hlen + _FOOTER.size:
                raise SarInputError(path, "file is truncated (no index)")
            fh.seek(size - _FOOTER.size)
            ioff, ilen, icrc, end = _FOOTER.unpack(fh.read(_FOOTER.size))
            if end != END:
                raise SarInputError(path, "file is truncated or damaged (end marker missing)")
            if ioff + ilen != size - _FOOTER.size or ioff < _PRE.size + hlen:
                raise SarInputError(path, "index position is inconsistent (file is damaged)")
            fh.seek(ioff)
            index = fh.read(ilen)
            if zlib.crc32(index) != icrc:
                raise SarInputError(path, "chunk index checksum mismatch (file is damaged)")
            # every chunk has at least one byte: the index cannot describe more chunks than the file has bytes
            raw = bounded_decompress(index, 8 * size)
            if len(raw) % 8:
                raise SarInputError(path, "chunk index has a partial entry (file is damaged)")
            table = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
            lengths = table[:, 0].astype(np.int64)
            offsets = _PRE.size + hlen + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            if len(lengths) and offsets[-1] + lengths[-1] != ioff:
                raise SarInputError(path, "chunk sizes do not add up (file is damaged)")
        except SarInputError:
            fh.close()
            raise
        except (struct.error, zstandard.ZstdError, ValueError) as exc:
            fh.close()
            raise SarInputError(path, f"file is damaged ({exc})") from None
        return cls(path, header, offsets, lengths, table[:, 1].copy(), size, fh)

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
