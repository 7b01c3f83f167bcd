"""Lossless coding of quantized latents and validity masks, one tile at a time.

Each latent codec has an id stored in the `.sarz` header; its ids are `defaults.CODEC_IDS`, and `codec_from_params` builds the codec for one, so a
learned entropy model can be added later under a new id while old files keep decoding.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import zstandard


class LatentCodec(Protocol):
    """Turns a float latent tile (C, h, w) into bytes and back (the round trip applies the quantization)."""

    id: str

    def params(self) -> dict: ...

    def encode(self, latent: np.ndarray) -> bytes: ...

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray: ...


def _f16_bounds(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel bounds rounded outward to float16, so every value stays inside the stored range."""
    lo16 = lo.astype(np.float16)
    hi16 = hi.astype(np.float16)
    lo16 = np.where(lo16.astype(np.float32) > lo, np.nextafter(lo16, np.float16(-np.inf)), lo16)
    hi16 = np.where(hi16.astype(np.float32) < hi, np.nextafter(hi16, np.float16(np.inf)), hi16)
    return lo16, hi16


class UniformZstdCodec:
    """Per-channel min/max uniform quantization to 2**bits levels (bounds as float16), then zstd."""

    id = "uniform-zstd"

    def __init__(self, bits: int = 8, level: int = 19):
        if not 1 <= int(bits) <= 16:
            raise ValueError(f"bits must be between 1 and 16 (got {bits})")
        self.bits, self.level = int(bits), int(level)
        self.levels = (1 << self.bits) - 1
        self.qdtype = np.uint8 if self.bits <= 8 else np.dtype("<u2")

    def params(self) -> dict:
        """Parameters stored in the header."""
        return {"id": self.id, "bits": self.bits, "zstd_level": self.level}

    @classmethod
    def from_params(cls, p: dict) -> "UniformZstdCodec":
        """Rebuild from header parameters."""
        return cls(bits=p["bits"], level=p.get("zstd_level", 19))

    def _step(self, lo16: np.ndarray, hi16: np.ndarray) -> np.ndarray:
        return ((hi16.astype(np.float32) - lo16.astype(np.float32)) / np.float32(self.levels)).astype(np.float32)

    def quantize(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer symbols and float16 bounds of a (C, h, w) latent."""
        y = np.ascontiguousarray(latent, dtype=np.float32)
        flat = y.reshape(y.shape[0], -1)
        lo16, hi16 = _f16_bounds(flat.min(axis=1), flat.max(axis=1))
        step = self._step(lo16, hi16)
        safe = np.where(step > 0, step, np.float32(1))
        q = np.rint((flat - lo16.astype(np.float32)[:, None]) / safe[:, None])
        q = np.clip(q, 0, self.levels).astype(self.qdtype)
        return q.reshape(y.shape), lo16, hi16

    def dequantize(self, q: np.ndarray, lo16: np.ndarray, hi16: np.ndarray) -> np.ndarray:
        """Float latent from symbols and bounds (float32 arithmetic, identical on every machine)."""
        step = self._step(lo16, hi16)
        return (lo16.astype(np.float32)[:, None, None] + q.astype(np.float32) * step[:, None, None]).astype(np.float32)

    def encode(self, latent: np.ndarray) -> bytes:
        """Quantize and compress one latent tile."""
        q, lo16, hi16 = self.quantize(latent)
        raw = np.stack([lo16, hi16]).astype("<f2").tobytes() + q.astype(self.qdtype).tobytes()
        return zstandard.ZstdCompressor(level=self.level).compress(raw)

    def decode(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Decompress and dequantize one latent tile of the given (C, h, w) shape."""
        c, h, w = shape
        nb = 2 * c * 2
        expected = nb + c * h * w * np.dtype(self.qdtype).itemsize
        from sar_ae_core.coding.frames import bounded_decompress

        raw = bounded_decompress(payload, expected)
        if len(raw) != expected:
            raise ValueError(f"latent tile has {len(raw)} bytes, expected {expected}")
        bounds = np.frombuffer(raw[:nb], dtype="<f2").reshape(2, c)
        q = np.frombuffer(raw[nb:], dtype=self.qdtype).reshape(c, h, w)
        return self.dequantize(q, bounds[0], bounds[1])


def codec_from_params(p: dict, tables=None) -> LatentCodec:
    """The codec named in a header (KeyError for unknown ids; ValueError when its tables are missing)."""
    if p.get("id") == UniformZstdCodec.id:
        return UniformZstdCodec.from_params(p)
    if p.get("id") in ("factorized-range", "factorized-range-active", "factorized-range-adaptive", "hyperprior-range"):
        from sar_ae_core.coding.tables import FactorizedRangeCodec

        if tables is None:
            raise ValueError("the model has no entropy-coding tables")
        kind = getattr(tables, "kind", "factorized")
        if (kind == "hyperprior") != (p["id"] == "hyperprior-range"):
            raise ValueError(f"the model's entropy model ({kind}) does not match the file's codec {p['id']}")
        if int(p.get("precision", tables.precision)) != tables.precision:
            raise ValueError("table precision differs from the file's")
        if kind == "hyperprior":
            from sar_ae_core.nn.hyperprior import HyperpriorRangeCodec

            codec = HyperpriorRangeCodec(tables)
            codec.gain = _gain(p)
            return codec
        active = p["id"] in ("factorized-range-active", "factorized-range-adaptive")
        codec = FactorizedRangeCodec(tables, tables.inactive() if active else None)
        if active and codec.skip is None:
            raise ValueError(f"the model's tables have no inactive channels for codec {p['id']}")
        if p["id"] == "factorized-range-adaptive":
            import base64
            import binascii

            from sar_ae_core.coding.tables import parse_adaptation

            try:
                blob = base64.b85decode(str(p["adapt"]))
            except (KeyError, ValueError, binascii.Error):
                raise ValueError("the file's adapted tables are missing or not base85") from None
            try:
                adapted = parse_adaptation(tables, blob)
            except ValueError as exc:
                raise ValueError(f"the file's adapted tables are damaged ({exc})") from None
            codec = FactorizedRangeCodec(adapted, codec.skip, modes=tables.modes())
            codec.adaptation = blob
        codec.gain = _gain(p)
        return codec
    raise KeyError(p.get("id"))


def _gain(p: dict) -> float:
    """The quantization gain of a header's codec parameters (ValueError outside [MIN_GAIN, MAX_GAIN])."""
    try:
        gain = float(p.get("gain", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"quantization gain {p.get('gain')!r} is not a number") from None
    if not MIN_GAIN <= gain <= MAX_GAIN:
        raise ValueError(f"quantization gain {gain} is outside [{MIN_GAIN}, {MAX_GAIN}]")
    return gain


MIN_GAIN, MAX_GAIN = 0.05, 16.0  # quantization gain of the factorized codec (rate control)


# -- validity masks ------------------------------------------------------------------------------
_ALL_VALID, _NONE_VALID, _PACKED = 0, 1, 2


def encode_mask(valid: np.ndarray) -> bytes:
    """Lossless mask chunk: one byte when uniform, else packed bits + zstd."""
    if valid.all():
        return bytes([_ALL_VALID])
    if not valid.any():
        return bytes([_NONE_VALID])
    return bytes([_PACKED]) + zstandard.ZstdCompressor(level=19).compress(np.packbits(valid, axis=None).tobytes())


def decode_mask(payload: bytes, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of encode_mask."""
    mode = payload[0]
    if mode == _ALL_VALID:
        return np.ones(shape, dtype=bool)
    if mode == _NONE_VALID:
        return np.zeros(shape, dtype=bool)
    if mode != _PACKED:
        raise ValueError(f"unknown mask mode {mode}")
    n = shape[0] * shape[1]
    bits = np.frombuffer(zstandard.ZstdDecompressor().decompress(payload[1:], max_output_size=(n + 7) // 8),
                         dtype=np.uint8)
    if bits.size * 8 < n:
        raise ValueError("mask chunk too short")
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
