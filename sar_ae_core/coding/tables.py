"""Torch-free half of the factorized entropy model: the frozen integer coding tables of a trained prior and the
range codec 'factorized-range' that reads only them (constriction), so that encoder and decoder produce
identical symbols on any machine, device, runtime or thread count. The trained density that produces the
tables lives in `entropy.py` (torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

TABLE_PRECISION = 16
LIKELIHOOD_BOUND = 1e-9
#: a channel is inactive when its table leaves less than this probability to all its symbols but the most probable
#: one: training collapsed it (the prior gives the others their minimum counts; no encoder output on any of the
#: project's rasters ever leaves the mode there). The 'factorized-range-active' codec does not code such channels.
#: Part of that codec's format (its files name no channels: the model's tables say which): never change it.
INACTIVE_BELOW = 1e-3
ACTIVE_ID = "factorized-range-active"


def _integer_counts(pmf: np.ndarray, precision: int) -> np.ndarray:
    """Counts summing to 2**precision with every symbol ≥ 1 (so every symbol stays codable)."""
    total = 1 << precision
    n = len(pmf)
    if n >= total:
        raise ValueError(f"alphabet of {n} symbols does not fit {precision}-bit tables")
    pmf = np.maximum(pmf, 0) / max(pmf.sum(), 1e-300)
    counts = np.maximum(1, np.floor(pmf * (total - n)).astype(np.int64) + 1)
    counts[np.argmax(counts)] += total - counts.sum()
    assert counts.sum() == total and counts.min() >= 1
    return counts.astype(np.int32)


@dataclass
class EntropyTables:
    """Frozen integer tables: channel c codes symbols offsets[c] … offsets[c] + len(counts[c]) − 2, plus escape."""

    offsets: np.ndarray
    counts: list[np.ndarray]
    precision: int = TABLE_PRECISION

    def to_dict(self) -> dict:
        """Plain lists (stored in model bundles)."""
        return {"offsets": self.offsets.tolist(), "counts": [c.tolist() for c in self.counts],
                "precision": self.precision}

    @classmethod
    def from_dict(cls, d: dict) -> "EntropyTables":
        """Inverse of to_dict."""
        return cls(np.asarray(d["offsets"], np.int32), [np.asarray(c, np.int32) for c in d["counts"]],
                   int(d["precision"]))

    def modes(self) -> np.ndarray:
        """Most probable symbol of each channel (int64), the value an inactive channel always has."""
        return np.array([int(np.argmax(c[:-1])) + int(o) for c, o in zip(self.counts, self.offsets)], np.int64)

    def inactive(self) -> np.ndarray:
        """Boolean mask of the channels whose table leaves less than INACTIVE_BELOW to the non-modal symbols."""
        limit = INACTIVE_BELOW * (1 << self.precision)
        return np.array([int(c[:-1].sum() - c[:-1].max() + c[-1]) < limit for c in self.counts], bool)

    def probabilities(self, c: int) -> np.ndarray:
        """Exact dyadic probabilities of channel c (float64, identical bits on every machine)."""
        return self.counts[c].astype(np.float64) / float(1 << self.precision)

    def bits(self, symbols: np.ndarray) -> float:
        """Ideal code length (bits) of integer latents (C, h, w) under the tables, escapes included."""
        return float(sum(self.symbol_bits(c, symbols[c]).sum() for c in range(len(self.counts))))

    def symbol_bits(self, c: int, values: np.ndarray) -> np.ndarray:
        """Code length (bits) of each integer value under channel c's table (an escape adds its 32 bits)."""
        idx, _ = self._index(c, values.ravel())
        n = len(self.counts[c]) - 1
        return (-np.log2(self.probabilities(c)[idx]) + np.where(idx == n, 32.0, 0.0)).reshape(values.shape)

    def _index(self, c: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.counts[c]) - 1
        idx = values.astype(np.int64) - int(self.offsets[c])
        outside = (idx < 0) | (idx >= n)
        escapes = values[outside].astype(np.int32)
        idx = np.where(outside, n, idx).astype(np.int32)
        return idx, escapes


class FactorizedRangeCodec:
    """Latent codec 'factorized-range': rounding + constriction range coding with the model's frozen tables, channel
    after channel. With `skip` (a channel mask, normally the tables' inactive channels) it is the codec
    'factorized-range-active': the skipped channels are not coded at all — they are at their mode, in the encoder's
    symbols and in the decoded latents — so coding and decoding handle only the active channels (a sixth of the
    symbols for the shipped models) and the networks can run on those alone (runtime.OnnxNets). Which channels
    are skipped is not stored: it is `tables.inactive()` of the model the file names."""

    def __init__(self, tables: EntropyTables, skip: "np.ndarray | None" = None, modes: "np.ndarray | None" = None):
        import constriction

        self.tables = tables
        self._cs = constriction
        self._models = [constriction.stream.model.Categorical(tables.probabilities(c), perfect=False)
                        for c in range(len(tables.counts))]
        self.skip = None if skip is None or not np.any(skip) else np.asarray(skip, bool)
        if self.skip is not None and len(self.skip) != len(tables.counts):
            raise ValueError(f"channel mask has {len(self.skip)} channels, the tables {len(tables.counts)}")
        # the modes as quantization centres and the skipped channels' value: the model's, also when `tables` are
        # adapted to a file (the symbols must not depend on the tables they are coded with)
        self._modes = tables.modes() if modes is None else np.asarray(modes, np.int64)
        self._m = self._modes.astype(np.float64)[:, None, None]
        self._n_sym = np.array([len(c) - 1 for c in tables.counts], np.int32)  # index of each table's escape

    #: set by the codec choice when the tables are to be fitted to the file being compressed ('auto' and
    #: 'factorized-range-adaptive'): compress_raster calls `adapted` with the file's histograms
    wants_adaptation: bool = False
    #: the description of per-file adapted tables (adapt_tables) when `tables` are adapted ('factorized-range-adaptive')
    adaptation: bytes = b""

    @property
    def id(self) -> str:
        if self.adaptation:
            return ADAPTIVE_ID
        return "factorized-range" if self.skip is None else ACTIVE_ID

    def params(self) -> dict:
        """Parameters stored in the header (the tables live in the model bundle; adapted ones in 'adapt')."""
        p = {"id": self.id, "precision": self.tables.precision}
        if self.gain != 1.0:
            p["gain"] = self.gain
        if self.adaptation:
            import base64

            p["adapt"] = base64.b85encode(self.adaptation).decode("ascii")  # RFC 1924: nothing JSON escapes
        return p

    def adapted(self, histograms: dict) -> "FactorizedRangeCodec":
        """This codec with tables fitted to one file's symbol histograms where that pays (see adapt_tables); itself
        when no channel gains."""
        tables, blob = adapt_tables(self.tables, histograms)
        if not blob:
            return self
        out = FactorizedRangeCodec(tables, self.skip, modes=self._modes)
        out.gain, out.adaptation = self.gain, blob
        return out

    def histograms(self, latents) -> dict:
        """Per coded channel (lowest symbol, counts from there on) of the symbols of latent tiles (C, h, w) from an
        iterable; symbols further than 4096 from the channel's mode count at that distance (they escape anyway)."""
        acc: dict = {}
        for y in latents:
            q = self.quantize(y)
            for c in range(q.shape[0]):
                if self.skip is not None and self.skip[c]:
                    continue
                m = int(self._modes[c])
                v = np.clip(q[c].ravel(), m - 4096, m + 4096)
                lo = int(v.min())
                h = np.bincount(v - lo).astype(np.int64)
                if c in acc:
                    lo0, h0 = acc[c]
                    base = min(lo, lo0)
                    merged = np.zeros(max(lo + len(h), lo0 + len(h0)) - base, np.int64)
                    merged[lo0 - base:lo0 - base + len(h0)] += h0
                    merged[lo - base:lo - base + len(h)] += h
                    acc[c] = (base, merged)
                else:
                    acc[c] = (lo, h)
        return acc

    #: quantization gain (continuous rate control; stored in the header when not 1): symbols are
    #: rint(m + gain·(y − m)) around each channel's most probable symbol m, dequantized as m + (q − m)/gain.
    #: Below 1 the step is coarser (fewer bits), above 1 finer (more bits, closer to the unquantized latents).
    gain: float = 1.0

    def _centers(self) -> np.ndarray:
        return self._m

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Integer symbols of one latent tile (C, h, w) (skipped channels: their mode)."""
        if self.gain == 1.0:
            q = np.rint(latent).astype(np.int64)
        else:
            m = self._centers()[: latent.shape[0]]
            q = np.rint(m + self.gain * (latent.astype(np.float64) - m)).astype(np.int64)
        if self.skip is not None:
            q[self.skip] = self._modes[self.skip][:, None, None]
        return q

    def dequantize(self, q: np.ndarray, channels: "np.ndarray | None" = None) -> np.ndarray:
        """Latent values of integer symbols (float32); `channels`: the channels q holds (default the first)."""
        if self.gain == 1.0:
            return q.astype(np.float32)
        m = self._centers()[: q.shape[0]] if channels is None else self._centers()[channels]
        return (m + (q.astype(np.float64) - m) / self.gain).astype(np.float32)

    def encode(self, latent: np.ndarray) -> bytes:
        """Quantize and range-code one latent tile (C, h, w): channel after channel, each in raster order."""
        q = self.quantize(latent)
        c_n = q.shape[0]
        coded = np.arange(c_n) if self.skip is None else np.nonzero(~self.skip[:c_n])[0]
        vals = q[coded].reshape(len(coded), -1)
        # = encode_grouped with table c for channel c (contiguous groups), all channels' indexes at once: values
        # beyond a table are its escape symbol, their values follow in coding order (channel, then position)
        idx = vals - self.tables.offsets[coded].astype(np.int64)[:, None]
        n_sym = self._n_sym[coded].astype(np.int64)[:, None]
        outside = (idx < 0) | (idx >= n_sym)
        escapes = vals[outside].astype(np.int32)
        idx = np.where(outside, n_sym, idx).astype(np.int32)
        enc = self._cs.stream.queue.RangeEncoder()
        for i, c in enumerate(coded):
            enc.encode(idx[i], self._models[c])
        return join_payload(enc, [escapes])

    def decode(self, payload: bytes, shape: tuple[int, int, int], coded_only: bool = False) -> np.ndarray:
        """Inverse of encode (float32 latents). `coded_only`: just the coded channels (all but the skipped ones),
        in order — what the networks on the active channels take."""
        dec, esc = split_payload(self._cs, payload, int(np.prod(shape)))
        c_n, n = shape[0], int(shape[1]) * int(shape[2])
        coded = np.arange(c_n) if self.skip is None else np.nonzero(~self.skip[:c_n])[0]
        idx = np.empty((len(coded), n), dtype=np.int32)
        for i, c in enumerate(coded):  # = decode_grouped with channel c's table for channel c (contiguous groups)
            idx[i] = dec.decode(self._models[c], n)
        # escape symbols (the last of each table) take the escaped values in coding order: channel, then position
        hit = idx == self._n_sym[coded][:, None]
        vals = idx.astype(np.int64) + self.tables.offsets[coded].astype(np.int64)[:, None]
        m = int(np.count_nonzero(hit))
        if m:
            if m > esc.size:
                raise ValueError("escape values missing")
            vals[hit] = esc[:m]
        if coded_only:
            return self.dequantize(vals.reshape((len(coded),) + tuple(shape[1:])), coded)
        out = np.empty((c_n, n), dtype=np.int64)
        out[coded] = vals
        if self.skip is not None:
            out[self.skip[:c_n]] = self._modes[:c_n][self.skip[:c_n]][:, None]
        return self.dequantize(out.reshape(shape))


def _channel_of(shape: tuple[int, ...]) -> np.ndarray:
    """Channel index of every element of a (C, h, w) array, flattened."""
    return np.broadcast_to(np.arange(shape[0])[:, None, None], shape).ravel()


def encode_grouped(enc, models, tables: EntropyTables, table_of: np.ndarray, values: np.ndarray) -> list:
    """Code values[i] with table table_of[i]: table after table in increasing order, each group in array order.
    Returns the escaped values (beyond a table's range) in that order."""
    escapes = []
    for c in np.unique(table_of):
        idx, esc = tables._index(int(c), values[table_of == c])
        enc.encode(idx, models[int(c)])
        escapes.append(esc)
    return escapes


def decode_grouped(dec, models, tables: EntropyTables, table_of: np.ndarray, esc: np.ndarray, k: int):
    """Inverse of encode_grouped; `k` = escapes already used. Returns (int64 values, escapes used)."""
    out = np.empty(table_of.shape, dtype=np.int64)
    for c in np.unique(table_of):
        where = table_of == c
        out[where], k = _decode_table(dec, models[int(c)], tables, int(c), int(where.sum()), esc, k)
    return out, k


def _decode_table(dec, model, tables: EntropyTables, c: int, n: int, esc: np.ndarray, k: int):
    """n values coded with table c (escape symbols replaced by the next escaped values); (values, escapes used)."""
    return decode_escaped(dec, model, n, int(tables.offsets[c]), len(tables.counts[c]) - 1, esc, k)


def decode_escaped(dec, model, n: int, lo: int, escape: int, esc: np.ndarray, k: int, what: str = ""):
    """n symbols of `model` from `dec` as values lo + index, where the index is `escape` the next escaped values of
    `esc` from position k; (int64 values, escapes used). ValueError (naming `what`) where `esc` runs out."""
    idx = dec.decode(model, n).astype(np.int64)
    vals = idx + lo
    hit = idx == escape
    m = int(np.count_nonzero(hit))
    if m:
        if k + m > esc.size:
            raise ValueError(f"{what}escape values missing")
        vals[hit] = esc[k:k + m]
        k += m
    return vals, k


def join_payload(enc, escapes: list) -> bytes:
    """u32 byte count of the range coder's 32-bit words, the words, then the escaped values as zstd-compressed
    int32 (the framing of the first factorized-range files: unchanged, they must keep decoding)."""
    words = enc.get_compressed().astype("<u4").tobytes()
    esc = np.concatenate(escapes).astype("<i4").tobytes() if escapes else b""
    tail = zstandard.ZstdCompressor(level=19).compress(esc) if esc else b""
    return len(words).to_bytes(4, "little") + words + tail


def split_payload(constriction, payload: bytes, max_escapes: int = 1 << 24):
    """(range decoder, escaped values) of a payload written by join_payload; at most `max_escapes` escaped
    values are accepted (one per symbol of the tile), whatever the payload declares."""
    n_bytes = int.from_bytes(payload[:4], "little")
    if 4 + n_bytes > len(payload) or n_bytes % 4:
        raise ValueError("range-coded stream is truncated")
    words = np.frombuffer(payload[4:4 + n_bytes], dtype="<u4").astype(np.uint32)
    rest = payload[4 + n_bytes:]
    from sar_ae_core.coding.frames import bounded_decompress

    esc = np.frombuffer(bounded_decompress(rest, 4 * max_escapes), dtype="<i4") if rest \
        else np.zeros(0, np.int32)
    return constriction.stream.queue.RangeDecoder(words), esc


# -- per-file adapted tables (codec 'factorized-range-adaptive') ---------------------------------------------------
#: The trained prior fits the data it was trained on; on other products (uncalibrated DN, single-look SLC) the
#: latent symbols of a channel follow another distribution and the frozen table wastes ~20 % of the latent bits
#: (measured: Kerala DN −20…−26 %, TerraSAR-X SLC −21 %, calibrated GRD −1.5…−3.5 %). The adaptive codec stores,
#: for the channels where that pays, the file's own histogram as a table in the header (ADAPT_PRECISION-bit
#: counts, scaled exactly to the model's precision) and codes those channels with it; the other channels keep the
#: model's table. Part of that codec's format: never change these constants.
ADAPTIVE_ID = "factorized-range-adaptive"
ADAPT_PRECISION = 12
ADAPT_MAX_SYMBOLS = 512
ADAPT_HEADER_BYTES = 32  # what adapting costs the header besides the tables: the key, the longer codec id
ADAPT_TAIL = 4          # table symbols beyond the central 99.99 % kept before the tail escapes instead


def adapt_tables(tables: EntropyTables, histograms: dict) -> tuple[EntropyTables, bytes]:
    """Tables for one file: `histograms` maps a channel to (lowest symbol, counts of the symbols from there on) of
    that file's quantized latents. Returns the adapted tables and their description (b'' when no channel gains
    more than its description costs)."""
    from sar_ae_core.coding.escapes import _varints, _zigzag

    counts = list(tables.counts)
    offsets = tables.offsets.copy()
    parts = []
    saved = 0.0
    scale = 1 << (tables.precision - ADAPT_PRECISION)
    for c in sorted(histograms):
        lo0, hist = histograms[c]
        hist = np.asarray(hist, np.int64)
        total = int(hist.sum())
        if total == 0:
            continue
        values = np.arange(lo0, lo0 + len(hist))
        # the central 99.99 % (or everything when the tails add at most ADAPT_TAIL symbols), at most the limit
        cdf = np.cumsum(hist) / total
        nz = np.nonzero(hist)[0]
        lo_i, hi_i = int(nz[0]), int(nz[-1])
        c_lo, c_hi = int(np.searchsorted(cdf, 0.00005)), int(np.searchsorted(cdf, 0.99995))
        lo_i = lo_i if c_lo - lo_i <= ADAPT_TAIL else c_lo
        hi_i = hi_i if hi_i - c_hi <= ADAPT_TAIL else c_hi
        if hi_i - lo_i + 1 > ADAPT_MAX_SYMBOLS:
            continue
        inside = hist[lo_i:hi_i + 1].astype(np.float64)
        outside = total - int(inside.sum())
        pmf = np.append(inside, max(outside, 0)) / total
        c12 = _integer_counts(pmf, ADAPT_PRECISION)
        p = c12.astype(np.float64) / (1 << ADAPT_PRECISION)
        new_bits = float(-(inside * np.log2(p[:-1])).sum() + outside * (32 - np.log2(p[-1])))
        old_bits = float((hist * tables.symbol_bits(c, values)).sum())
        desc = _varints(np.array([c, _zigzag(int(values[lo_i])), len(c12) - 1] + c12[:-1].tolist(), np.int64))
        if old_bits - new_bits <= 8 * len(desc) * 5 / 4 + 16:  # the header holds it as base85
            continue
        saved += old_bits - new_bits - 8 * len(desc) * 5 / 4
        parts.append(desc)
        counts[c] = (c12.astype(np.int64) * scale).astype(np.int32)
        offsets[c] = int(values[lo_i])
    if not parts or saved <= 8 * ADAPT_HEADER_BYTES:
        return tables, b""
    blob = _varints(np.array([len(parts)])) + b"".join(parts)
    return EntropyTables(offsets, counts, tables.precision), blob


def parse_adaptation(tables: EntropyTables, blob: bytes) -> EntropyTables:
    """Inverse of adapt_tables: the model's tables with the file's channels replaced (ValueError on damage)."""
    from sar_ae_core.coding.escapes import _read_varints, _unzigzag

    buf = np.frombuffer(blob, np.uint8)
    (k,), used = _read_varints(buf, 1)
    if not 1 <= k <= len(tables.counts):
        raise ValueError(f"adapted tables for {k} channels, the model has {len(tables.counts)}")
    counts, offsets = list(tables.counts), tables.offsets.copy()
    scale = 1 << (tables.precision - ADAPT_PRECISION)
    seen = set()
    for _ in range(int(k)):
        head, n_used = _read_varints(buf[used:], 3)
        used += n_used
        c, lo, n = int(head[0]), _unzigzag(int(head[1])), int(head[2])
        if c >= len(tables.counts) or c in seen or not 1 <= n <= ADAPT_MAX_SYMBOLS or abs(lo) > (1 << 24):
            raise ValueError(f"adapted table of channel {c} ({n} symbols from {lo}) is out of range")
        seen.add(c)
        vals, n_used = _read_varints(buf[used:], n)
        used += n_used
        rest = (1 << ADAPT_PRECISION) - int(vals.sum())
        if vals.min() < 1 or rest < 1:
            raise ValueError(f"adapted table of channel {c} has invalid counts")
        counts[c] = (np.append(vals, rest) * scale).astype(np.int32)
        offsets[c] = lo
    if used != buf.size:
        raise ValueError("adapted tables have trailing bytes")
    return EntropyTables(offsets, counts, tables.precision)
