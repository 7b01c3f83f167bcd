"""Escapes: the valid pixels outside the network's dB window, coded exactly enough that nothing is clipped.

The network sees dB scaled into [0, 1] over a window [vmin, vmax]; a bright point target above vmax (a ship, a
corner reflector, a building: often the very signal a SAR user looks for) would come back at vmax, a pixel
below vmin at vmin. Each tile's mask chunk therefore carries, after the validity mask, the positions of its
valid out-of-window pixels (above `above_db` — the window's top, or lower to keep a raster's brightest 0.1 % —
or below vmin) and their dB value, quantized with step `step_db` relative to the window bound
they passed (|error| <= step/2), so the reconstruction keeps every value.

Chunk layout (mask id `packbits-zstd-escapes`): varint length of the validity-mask part, the mask part
(`latent_coding.encode_mask`), then — only when the tile has escapes — the escape frame. Since format 2.0 it is
the shorter of two codings: the 1.0-1.2 zstd frame (uint32 count, LEB128 position deltas, int16 codes as low then
high bytes: best for clustered escapes, a bright structure's neighbouring pixels) and a Rice-coded frame (first byte
RICE_TAG, best for scattered ones): varint count n, one byte each for the Rice parameters of the position gaps and of
the code magnitudes, a sign byte (1: all above, 2: all below, 3: one sign bit per escape follows), then one bit
string: [signs] unary quotients of the gaps, their k-bit remainders, unary quotients of the magnitudes, their
remainders (each parameter the cheapest for its tile, so unary parts never run long; gaps are the distances between
successive positions in raster order within the tile, minus one; magnitudes |k| − 1 for code k: k > 0 above:
above + (k−1)·step, k < 0 below: vmin + (k+1)·step) — ~19 bits per escape for scattered bright pixels where the
zstd frame takes ~32 and ~10 bytes of frame overhead per tile.
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


RICE_TAG = 0x01            # first byte of a 2.0 Rice escape frame (a 1.0-1.2 frame is a zstd frame: 0x28 …)
_MAX_RICE_K = 30


def encode_escapes(db: np.ndarray, escaped: np.ndarray, vmin: float, vmax: float, step: float) -> bytes:
    """The escape frame of one tile (b'' when nothing is escaped)."""
    flat = np.flatnonzero(escaped.ravel())
    if flat.size == 0:
        return b""
    values = db.ravel()[flat].astype(np.float64)
    above = values > vmax
    # code k >= 1 above: vmax + (k - 1)·step; code -k below: vmin - (k - 1)·step (the sign tells the side)
    k = np.clip(np.rint(np.where(above, values - vmax, vmin - values) / step) + 1, 1, 32767).astype(np.int64)
    gaps = np.diff(flat, prepend=-1) - 1
    kp, kc = _best_rice(gaps), _best_rice(k - 1)
    sign = 1 if above.all() else 2 if not above.any() else 3
    bits = [~above] if sign == 3 else []
    bits += [*_rice_bits(gaps, kp), *_rice_bits(k - 1, kc)]
    body = np.packbits(np.concatenate(bits).astype(np.uint8)).tobytes()
    rice = bytes([RICE_TAG]) + _varints(np.array([flat.size])) + bytes([kp, kc, sign]) + body
    # clustered escapes (a bright structure's neighbouring pixels: gaps of 0, similar codes) suit zstd better
    legacy = np.array([flat.size], "<u4").tobytes() + _varints(np.diff(flat, prepend=0)) + \
        (np.where(above, 1, -1) * k).astype("<i2").view(np.uint8).reshape(-1, 2).T.tobytes()
    packed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(legacy) if flat.size > 16 else rice
    return rice if len(rice) <= len(packed) else packed


def _best_rice(v: np.ndarray) -> int:
    """The Rice parameter with the fewest bits for non-negative integers v."""
    ks = np.arange(_MAX_RICE_K + 1)
    cost = (v[None, :] >> ks[:, None]).sum(axis=1) + v.size * (1 + ks)
    return int(np.argmin(cost))


def _rice_bits(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(unary quotients: q ones then a zero each, k-bit remainders MSB first) of non-negative integers v."""
    q = v >> k
    unary = np.ones(int(q.sum()) + v.size, bool)
    unary[np.cumsum(q + 1) - 1] = False
    rem = ((v[:, None] >> np.arange(k - 1, -1, -1)[None, :]) & 1).astype(bool).ravel()
    return unary, rem


def _read_rice(bits: np.ndarray, pos: int, n: int, k: int) -> tuple[np.ndarray, int]:
    """n Rice-coded integers of parameter k from a bit array at `pos`; (values, next position)."""
    zeros = np.flatnonzero(~bits[pos:])
    if zeros.size < n:
        raise ValueError("escape frame is truncated")
    ends = zeros[:n]
    q = np.diff(ends, prepend=-1) - 1
    pos += int(ends[-1]) + 1
    if bits.size - pos < n * k:
        raise ValueError("escape frame is truncated")
    rem = np.zeros(n, np.int64)
    if k:
        rem = (bits[pos:pos + n * k].reshape(n, k).astype(np.int64) << np.arange(k - 1, -1, -1)).sum(axis=1)
    return (q.astype(np.int64) << k) | rem, pos + n * k


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
    if frame[0] == RICE_TAG:
        flat, codes = _decode_rice_frame(frame, npix)
    else:
        flat, codes = _decode_zstd_frame(frame, npix)
    if flat[-1] >= npix or (flat.size > 1 and np.any(np.diff(flat) <= 0)):
        raise ValueError("escape positions outside the tile")
    if np.any(codes == 0):
        raise ValueError("escape code 0 is not used")
    return flat, np.where(codes > 0, vmax + (codes - 1) * step, vmin + (codes + 1) * step)


def _decode_rice_frame(frame: bytes, npix: int) -> tuple[np.ndarray, np.ndarray]:
    buf = np.frombuffer(frame, np.uint8)
    (n,), used = _read_varints(buf[1:6], 1)
    pos = 1 + used
    if n == 0 or n > npix:
        raise ValueError(f"escape frame declares {n} escapes in a tile of {npix} pixels")
    if buf.size < pos + 3:
        raise ValueError("escape frame too short")
    kp, kc, sign = (int(b) for b in buf[pos:pos + 3])
    if kp > _MAX_RICE_K or kc > _MAX_RICE_K or sign not in (1, 2, 3):
        raise ValueError("escape frame parameters are out of range")
    bits = np.unpackbits(buf[pos + 3:]).astype(bool)
    # a frame cannot hold more bits than its bytes: n <= npix and the bytes bound the unary parts
    at = 0
    if sign == 3:
        if bits.size < n:
            raise ValueError("escape frame is truncated")
        below, at = bits[:n], n
    else:
        below = np.full(n, sign == 2)
    gaps, at = _read_rice(bits, at, n, kp)
    mags, at = _read_rice(bits, at, n, kc)
    if bits.size - at >= 8:
        raise ValueError("escape frame has trailing bytes")
    if mags.max() >= 32767 or gaps.max() >= npix:
        raise ValueError("escape code or position out of range")
    flat = np.cumsum(gaps + 1) - 1
    return flat, np.where(below, -(mags + 1), mags + 1).astype(np.float64)


def _decode_zstd_frame(frame: bytes, npix: int) -> tuple[np.ndarray, np.ndarray]:
    """A format 1.0-1.2 escape frame."""
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
    if n > 1 and np.any(deltas[1:] == 0):
        raise ValueError("escape positions outside the tile")
    return np.cumsum(deltas), codes


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
