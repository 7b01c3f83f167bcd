"""Escapes: the valid pixels outside the network's dB window, coded exactly enough that nothing is clipped.

The network sees dB scaled into [0, 1] over a window [vmin, vmax]; a bright point target above vmax (a ship, a
corner reflector, a building: often the very signal a SAR user looks for) would come back at vmax, a pixel
below vmin at vmin. Each tile's mask chunk therefore carries, after the validity mask, the positions of its
valid out-of-window pixels (above `above_db` — the window's top, or lower to keep a raster's brightest 0.1 % —
or below vmin) and their dB value, quantized with step `step_db` relative to the window bound
they passed (|error| <= step/2), so the reconstruction keeps every value.

Chunk layout (mask id `packbits-zstd-escapes`): varint length of the validity-mask part, the mask part
(`latent_coding.encode_mask`), then — only when the tile has escapes — one zstd frame holding
uint32 count, LEB128 position deltas (raster order within the tile), int16 codes as low bytes then high bytes
(k > 0: above + (k−1)·step, k < 0: vmin + (k+1)·step) — 16 bits per escape on a Sentinel-1 chip.
"""

from __future__ import annotations

import numpy as np
import zstandard

from sar_ae_core.coding.latent_coding import decode_mask, encode_mask

MASK_ID = "packbits-zstd"                 # validity mask only (format 1.0/1.1 files, and --escape-step 0)
ESCAPE_MASK_ID = "packbits-zstd-escapes"  # validity mask + escapes
DEFAULT_STEP_DB = 0.1
MAX_STEP_DB = 10.0
DEFAULT_BRIGHTEST_PERCENT = 0.1   # the brightest 0.1 % of a raster are kept as escapes too
MAX_BRIGHTEST_PERCENT = 5.0
_ZSTD_LEVEL = 19


def out_of_window(db: np.ndarray, valid: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Valid pixels whose dB value the [vmin, vmax] window would clip."""
    with np.errstate(invalid="ignore"):
        return valid & ((db > vmax) | (db < vmin))


def encode_escapes(db: np.ndarray, escaped: np.ndarray, vmin: float, vmax: float, step: float) -> bytes:
    """The escape frame of one tile (b'' when nothing is escaped)."""
    flat = np.flatnonzero(escaped.ravel())
    if flat.size == 0:
        return b""
    values = db.ravel()[flat].astype(np.float64)
    above = values > vmax
    # code k >= 1 above: vmax + (k - 1)·step; code -k below: vmin - (k - 1)·step (the sign tells the side)
    k = np.rint(np.where(above, values - vmax, vmin - values) / step) + 1
    codes = np.where(above, 1, -1) * np.clip(k, 1, 32767)
    body = np.array([flat.size], "<u4").tobytes() + _varints(np.diff(flat, prepend=0)) + \
        codes.astype("<i2").view(np.uint8).reshape(-1, 2).T.tobytes()  # low bytes, then high bytes
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body)


def _varints(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers below 2**28 (a tile's pixel positions), vectorised."""
    v = values.astype(np.int64)
    nbytes = 1 + (v >= 1 << 7) + (v >= 1 << 14) + (v >= 1 << 21)
    out = np.zeros((v.size, 4), np.uint8)
    for j in range(4):
        part = (v >> (7 * j)) & 0x7F
        more = nbytes > j + 1
        out[:, j] = part | (more * 0x80)
    keep = np.arange(4)[None, :] < nbytes[:, None]
    return out[keep].tobytes()


def _zigzag(v: int) -> int:
    """A signed integer as a non-negative one for a varint: 0, -1, 1, -2, … → 0, 1, 2, 3, …"""
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    """Inverse of _zigzag."""
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def _read_varints(buf: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The first n LEB128 integers (each at most 4 bytes) of a uint8 array, and the bytes they used."""
    ends = np.flatnonzero((buf & 0x80) == 0)
    if ends.size < n:
        raise ValueError("escape positions are truncated")
    ends = ends[:n]
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.size and lengths.max() > 4:
        raise ValueError("escape position too large")
    vals = np.zeros(n, np.int64)
    for j in range(4):
        has = lengths > j
        vals[has] |= (buf[starts[has] + j].astype(np.int64) & 0x7F) << (7 * j)
    return vals, int(ends[-1]) + 1 if n else 0


def decode_escapes(frame: bytes, shape: tuple[int, int], vmin: float, vmax: float,
                   step: float) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions, dB values) of one tile's escapes; bounded: never more than the tile's pixels."""
    if not frame:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    npix = shape[0] * shape[1]
    from sar_ae_core.coding.frames import bounded_decompress

    body = bounded_decompress(frame, 4 + 6 * npix)
    if len(body) < 4:
        raise ValueError("escape frame too short")
    n = int(np.frombuffer(body[:4], "<u4")[0])
    if n == 0 or n > npix:
        raise ValueError(f"escape frame declares {n} escapes in a tile of {npix} pixels")
    buf = np.frombuffer(body, np.uint8, offset=4)
    deltas, used = _read_varints(buf, n)
    if buf.size - used != 2 * n:
        raise ValueError(f"escape frame holds {buf.size - used} code bytes for {n} escapes")
    codes = (buf[used:used + n].astype(np.int16) | (buf[used + n:].astype(np.int16) << 8)).astype(np.float64)
    flat = np.cumsum(deltas)
    if flat[-1] >= npix or (n > 1 and np.any(deltas[1:] == 0)):
        raise ValueError("escape positions outside the tile")
    if np.any(codes == 0):
        raise ValueError("escape code 0 is not used")
    return flat, np.where(codes > 0, vmax + (codes - 1) * step, vmin + (codes + 1) * step)


def encode_mask_chunk(valid: np.ndarray, escape_frame: bytes) -> bytes:
    """Validity mask + escape frame of one tile (the `packbits-zstd-escapes` chunk)."""
    mask = encode_mask(valid)
    return _varints(np.array([len(mask)])) + mask + escape_frame


def split_mask_chunk(payload: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, bytes]:
    """(validity mask, escape frame) of a `packbits-zstd-escapes` chunk."""
    mask_part, frame = split_mask_chunk_bytes(payload)
    return decode_mask(mask_part, shape), frame


def split_mask_chunk_bytes(payload: bytes) -> tuple[bytes, bytes]:
    """(coded mask part, escape frame) of a `packbits-zstd-escapes` chunk, undecoded."""
    n = k = 0
    for k in range(min(4, len(payload))):  # one LEB128 number: read byte by byte
        n |= (payload[k] & 0x7F) << (7 * k)
        if not payload[k] & 0x80:
            break
    else:
        raise ValueError("mask length is truncated or too large")
    k += 1
    if k + n > len(payload) or n == 0:
        raise ValueError("mask part longer than the chunk")
    return payload[k:k + n], payload[k + n:]
