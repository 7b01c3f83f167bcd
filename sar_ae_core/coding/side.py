"""Side-information prior over the integer latents of a factorized model: codec 'hyper-range'.

A factorized model codes each latent channel with one density for the whole raster: a calm sea, a town and a
forest share it. The side prior (a small hyperprior, Ballé et al. 2018, trained afterwards on the frozen
latents of the model, `python -m training side-prior`) adds side information z = h_a(y) at 1/32 of the raster
and predicts from it a mean μ and a scale σ for every latent symbol, so the rate follows the content. The
symbols themselves are exactly those of the factorized codec — rint(m + gain·(y − m)) on the active channels,
the skipped channels at their mode — so the decoder network, the dequantization and the rate control (the
gain) are the model's own; only their coding changes.

Coding of one tile (C, h, w): z (integer, `z_channels` × ⌈h/4⌉ × ⌈w/4⌉) with its own factorized tables, then
every active symbol q as d = q − s under the tabulated discretised Gaussian of index (scale, offset), where the
predicted mean in symbol units μ' = m + gain·μ is split into s = ⌊(⌊8μ'⌋ + 4) / 8⌋ and one of 8 sub-integer
offsets, and σ' = gain·σ picks the smallest of 64 log-spaced scales ≥ σ'. Every table is integer (16-bit
counts, an escape for the tails) and stored with the side prior, so the coder reads nothing else.

Determinism: h_a and h_s run here in float64 numpy on both sides, on the same integer z. A symbol's table could
differ between machines only if μ' or σ' fell within ~1e-16 (relative) of a bin edge; the encoder checks every
value against a 1e-9 margin and codes a tile whose values come that close with the factorized tables instead
(mode byte 0), as it does whenever those are smaller. The networks are tiny (≈ 0.12 kMAC per pixel at decode).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sar_ae_core.coding.tables import (EntropyTables, FactorizedRangeCodec, _channel_of, _integer_counts,
                                       encode_grouped, decode_grouped, join_payload, split_payload)

FORMAT, VERSION = "sarae-side-prior", 1
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 64.0, 64
OFFSETS = 8            # sub-integer positions of the mean
TAIL_SIGMAS = 7.0      # table half-width in scales (beyond: the escape symbol)
DOWN = 4               # h_a halves the resolution twice
MARGIN = 1e-9          # relative distance to a bin edge below which a tile falls back to the factorized tables
MODE_FACTORIZED, MODE_SIDE = 0, 1
SIDE_PREFIX = 8         # hex digits of the side prior's SHA-256 named in a file's header
SUFFIX = ".side.npz"


def architecture(active: int, hyper: int = 48, z_channels: int = 16) -> dict:
    """Layer lists of h_a and h_s: ('conv', c_in, c_out, kernel, stride), ('lrelu',), ('shuffle', r). The torch
    module of training (training/side_prior.py) is built from the same lists."""
    c, n, zc = int(active), int(hyper), int(z_channels)
    return {"h_a": [("conv", c, n, 3, 1), ("lrelu",), ("conv", n, n, 5, 2), ("lrelu",), ("conv", n, zc, 5, 2)],
            "h_s": [("conv", zc, 4 * n, 3, 1), ("shuffle", 2), ("lrelu",), ("conv", n, n, 3, 1), ("lrelu",),
                    ("conv", n, 8 * c, 1, 1), ("shuffle", 2)]}


def scale_table() -> np.ndarray:
    """The tabulated scales (float64, the same on every machine: exp/log of exact constants)."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def offset_centres() -> np.ndarray:
    """Centre of each sub-integer mean offset, in symbol units: −7/16 … +7/16."""
    return (np.arange(OFFSETS) + 0.5) / OFFSETS - 0.5


def gaussian_tables(precision: int) -> EntropyTables:
    """Integer tables of the discretised Gaussian for every (scale, offset): table index scale·OFFSETS + offset,
    symbols −r … r with r = ⌈7σ⌉ + 1, one escape symbol. Built with math.erfc (exact constants); stored with the
    side prior, so coding never recomputes them."""
    offsets, counts = [], []
    for s in scale_table():
        r = int(math.ceil(TAIL_SIGMAS * s)) + 1
        k = np.arange(-r, r + 1, dtype=np.float64)
        for f in offset_centres():
            pmf = np.array([0.5 * (math.erfc((v - 0.5 - f) / (s * math.sqrt(2)))
                                   - math.erfc((v + 0.5 - f) / (s * math.sqrt(2)))) for v in k])
            counts.append(_integer_counts(np.append(pmf, max(1.0 - pmf.sum(), 0.0)), precision))
            offsets.append(-r)
    return EntropyTables(np.asarray(offsets, np.int32), counts, precision)


# -- the networks in float64 numpy ---------------------------------------------------------------
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """Zero-padded ('same' for stride 1) 2-D convolution of x (C, H, W) with w (O, C, k, k), as torch's Conv2d
    with padding k // 2."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p))) if p else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    out = np.tensordot(w, win, axes=([1, 2, 3], [0, 3, 4]))
    return out + b[:, None, None]


def pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    """(C·r², H, W) → (C, H·r, W·r), torch's PixelShuffle order."""
    c, h, w = x.shape
    return x.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), h * r, w * r)


def run_layers(layers: list, weights: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    i = 0
    for layer in layers:
        if layer[0] == "conv":
            x = conv2d(x, weights[f"{prefix}.{i}.weight"], weights[f"{prefix}.{i}.bias"], int(layer[4]))
        elif layer[0] == "lrelu":
            x = np.where(x >= 0, x, 0.2 * x)
        elif layer[0] == "shuffle":
            x = pixel_shuffle(x, int(layer[1]))
        i += 1
    return x


def pad_to(y: np.ndarray, multiple: int) -> np.ndarray:
    """Replicate-pad (C, h, w) on the bottom/right to a multiple of `multiple`."""
    ph, pw = -y.shape[1] % multiple, -y.shape[2] % multiple
    return np.pad(y, ((0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else y


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


@dataclass
class SidePrior:
    """A trained side prior: its float64 weights, layer lists, the active channels it predicts, the z tables and
    the Gaussian tables. `sha256` names it in the files it codes."""

    config: dict
    weights: dict
    z: EntropyTables
    gauss: EntropyTables
    scales: np.ndarray
    sha256: str
    path: Optional[str] = None

    @property
    def active(self) -> np.ndarray:
        return np.asarray(self.config["active"], np.int64)

    @property
    def z_channels(self) -> int:
        return int(self.config["z_channels"])

    @property
    def layers(self) -> dict:
        return architecture(len(self.config["active"]), self.config["hyper"], self.config["z_channels"])

    def side(self, y_active: np.ndarray) -> np.ndarray:
        """Integer z of active latents (c, h, w) given relative to their modes (float)."""
        z = run_layers(self.layers["h_a"], self.weights, "h_a", pad_to(y_active.astype(np.float64), DOWN))
        return np.rint(z).astype(np.int64)

    def mean_scale(self, z: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """μ (relative to the mode, in latent units) and σ (latent units) of every active symbol."""
        p = run_layers(self.layers["h_s"], self.weights, "h_s", z.astype(np.float64))[:, :shape[0], :shape[1]]
        c = p.shape[0] // 2
        return p[:c], np.clip(softplus(p[c:]), SCALE_MIN, SCALE_MAX)

    def macs_per_pixel(self, downsample: int) -> tuple[float, float]:
        """(encoder side h_a, decoder side h_s) multiply-accumulates per raster pixel."""
        out = []
        for part, density in (("h_a", 1.0 / downsample ** 2), ("h_s", 1.0 / (downsample * DOWN) ** 2)):
            total = 0.0
            for layer in self.layers[part]:
                if layer[0] == "conv":
                    _, ci, co, k, s = layer
                    density /= s * s
                    total += density * ci * co * k * k
                elif layer[0] == "shuffle":
                    density *= layer[1] ** 2
            out.append(total)
        return out[0], out[1]

    # -- storage ------------------------------------------------------------------------------------
    def to_npz(self) -> bytes:
        return _npz(self.config, self.weights, self.z, self.gauss, self.scales)

    @classmethod
    def from_npz(cls, data: bytes, path: Optional[str] = None) -> "SidePrior":
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError("not a side prior of this project (wrong format tag)")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"side prior version {meta['version']} is newer than this software")
        cfg = meta["config"]
        tabs = {}
        for t in ("z", "gauss"):
            lengths = arrays.pop(f"{t}.lengths").astype(np.int64)
            flat = arrays.pop(f"{t}.counts").astype(np.int64)
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            tabs[t] = EntropyTables(arrays.pop(f"{t}.offsets").astype(np.int32),
                                    [flat[bounds[i]:bounds[i + 1]] for i in range(len(lengths))],
                                    int(meta["precision"]))
        scales = arrays.pop("scales").astype(np.float64)
        weights = {k[2:]: v.astype(np.float64) for k, v in arrays.items() if k.startswith("w:")}
        prior = cls(cfg, weights, tabs["z"], tabs["gauss"], scales, _digest(data), path)
        for part in ("h_a", "h_s"):  # every layer's weights are there, with the declared shapes
            for i, layer in enumerate(prior.layers[part]):
                if layer[0] == "conv":
                    w, b = weights.get(f"{part}.{i}.weight"), weights.get(f"{part}.{i}.bias")
                    if w is None or b is None or w.shape != (layer[2], layer[1], layer[3], layer[3]) or \
                            b.shape != (layer[2],):
                        raise ValueError(f"layer {part}.{i} is missing or has the wrong shape")
        if len(prior.gauss.counts) != SCALE_LEVELS * OFFSETS or len(prior.z.counts) != prior.z_channels:
            raise ValueError("its coding tables do not match its configuration")
        return prior


def _npz(config: dict, weights: dict, z: EntropyTables, gauss: EntropyTables, scales: np.ndarray) -> bytes:
    meta = {"format": FORMAT, "version": VERSION, "config": config, "precision": int(z.precision)}
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8),
              "scales": np.asarray(scales, np.float64)}
    for t, tab in (("z", z), ("gauss", gauss)):
        arrays[f"{t}.offsets"] = np.asarray(tab.offsets, np.int32)
        arrays[f"{t}.lengths"] = np.asarray([len(c) for c in tab.counts], np.int32)
        arrays[f"{t}.counts"] = np.concatenate([np.asarray(c) for c in tab.counts]).astype(np.int32)
    for k, v in sorted(weights.items()):
        arrays[f"w:{k}"] = np.asarray(v, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def side_path(model_path: str | os.PathLike) -> Path:
    """Where a model's side prior lives: beside its bundle, `NAME.side.npz` for NAME.pt or NAME.onnx.zip."""
    p = Path(model_path)
    name = p.name
    for suffix in (".onnx.zip", ".pt", ".zip"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return p.with_name(name + SUFFIX)


def load_side_prior(model_path: str | os.PathLike, tables: EntropyTables, model_sha256: str) -> Optional[SidePrior]:
    """The side prior beside a model bundle, None when it has none; errors name the file."""
    from sar_ae_core.errors import SarInputError

    path = side_path(model_path)
    if not path.is_file():
        return None
    try:
        prior = SidePrior.from_npz(path.read_bytes(), str(path))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise SarInputError(path, f"not a readable side prior ({str(exc).splitlines()[0][:160]})") from None
    if str(prior.config.get("model_sha256", "")) != model_sha256:
        raise SarInputError(path, "side prior belongs to another model (its model SHA-256 differs)")
    active = np.nonzero(~tables.inactive())[0]
    if prior.active.tolist() != active.tolist():
        raise SarInputError(path, "side prior was trained for other latent channels than its model's active ones")
    return prior


# -- coding ---------------------------------------------------------------------------------------
def _encode_by_table(enc, models, tables: EntropyTables, table_of: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Code values[i] with table table_of[i]: tables in increasing order, each group in array order (stable).
    Returns the escaped values in that order."""
    order = np.argsort(table_of, kind="stable")
    t_sorted, v_sorted = table_of[order], values[order]
    ids, starts = np.unique(t_sorted, return_index=True)
    ends = np.append(starts[1:], len(t_sorted))
    esc = []
    for t, a, b in zip(ids, starts, ends):
        idx, e = tables._index(int(t), v_sorted[a:b])
        enc.encode(idx, models[int(t)])
        esc.append(e)
    return np.concatenate(esc) if esc else np.zeros(0, np.int32)


def _decode_by_table(dec, models, tables: EntropyTables, table_of: np.ndarray, esc: np.ndarray, k: int):
    order = np.argsort(table_of, kind="stable")
    t_sorted = table_of[order]
    ids, starts = np.unique(t_sorted, return_index=True)
    ends = np.append(starts[1:], len(t_sorted))
    vals = np.empty(len(t_sorted), np.int64)
    for t, a, b in zip(ids, starts, ends):
        n_sym = len(tables.counts[int(t)]) - 1
        idx = dec.decode(models[int(t)], int(b - a)).astype(np.int64)
        v = idx + int(tables.offsets[int(t)])
        hit = idx == n_sym
        m = int(np.count_nonzero(hit))
        if m:
            if k + m > esc.size:
                raise ValueError("escape values missing")
            v[hit] = esc[k:k + m]
            k += m
        vals[a:b] = v
    out = np.empty_like(vals)
    out[order] = vals
    return out, k


class HyperRangeCodec(FactorizedRangeCodec):
    """Latent codec 'hyper-range': the factorized codec's symbols on the active channels, coded tile by tile with
    the side prior's per-symbol Gaussians (mode byte 1) or, where that is not smaller or not safely
    reproducible, with the model's factorized tables (mode byte 0)."""

    def __init__(self, tables: EntropyTables, side: SidePrior, modes: "np.ndarray | None" = None,
                 skip: "np.ndarray | None" = None):
        """`tables`: the model's factorized tables, or tables adapted to one file (then `modes` and `skip` are the
        model's: the symbols never depend on the tables they are coded with)."""
        super().__init__(tables, tables.inactive() if skip is None else skip, modes=modes)
        if self.skip is None:
            raise ValueError("the side prior needs a model with inactive latent channels")
        self.side_prior = side
        cat = self._cs.stream.model.Categorical
        self._zm = [cat(side.z.probabilities(c), perfect=False) for c in range(len(side.z.counts))]
        self._gm = [cat(side.gauss.probabilities(c), perfect=False) for c in range(len(side.gauss.counts))]
        self._log_scales = np.log(side.scales)
        self._cache: dict = {}

    @property
    def id(self) -> str:
        return "hyper-range"

    def params(self) -> dict:
        p = {"id": self.id, "precision": self.tables.precision, "side": self.side_prior.sha256[:SIDE_PREFIX]}
        if self.gain != 1.0:
            p["gain"] = self.gain
        if self.adaptation:
            import base64

            p["adapt"] = base64.b85encode(self.adaptation).decode("ascii")
        return p

    def adapted(self, histograms: dict) -> "HyperRangeCodec":
        """This codec with fallback tables (for the tiles the side prior does not code smaller) fitted to the file
        where that pays, as the codec 'factorized-range-adaptive' fits them; itself when no channel gains."""
        from sar_ae_core.coding.tables import adapt_tables

        tables, blob = adapt_tables(self.tables, histograms)
        if not blob:
            return self
        out = HyperRangeCodec(tables, self.side_prior, modes=self._modes, skip=self.skip)
        out.gain, out.adaptation, out._cache = self.gain, blob, self._cache
        return out

    def _tables_of(self, z: np.ndarray, shape: tuple[int, int]):
        """(integer shift s, table index, near-an-edge flag) of every active symbol, for this codec's gain."""
        mean, scale = self.side_prior.mean_scale(z, shape)
        act = self.side_prior.active
        mu = self._m[act] + self.gain * mean  # symbol units
        sig = np.clip(self.gain * scale, SCALE_MIN, SCALE_MAX)
        u8 = mu * OFFSETS
        u = np.floor(u8).astype(np.int64)
        near = np.abs(u8 - np.rint(u8)) < MARGIN * np.maximum(1.0, np.abs(u8))
        s = (u + OFFSETS // 2) // OFFSETS
        j = u + OFFSETS // 2 - OFFSETS * s
        ls = np.log(sig)
        idx = np.minimum(np.searchsorted(self.side_prior.scales, sig, side="left"), SCALE_LEVELS - 1)
        lo = np.abs(ls - self._log_scales[idx])
        lo_prev = np.abs(ls - self._log_scales[np.maximum(idx - 1, 0)])
        near |= (np.minimum(lo, lo_prev) < MARGIN) & (sig > SCALE_MIN) & (sig < SCALE_MAX)
        return s, idx * OFFSETS + j, bool(near.any())

    def _side_of(self, latent: np.ndarray) -> np.ndarray:
        key = (latent.shape, hash(latent.tobytes()))
        z = self._cache.get(key)
        if z is None:
            act = self.side_prior.active
            z = self.side_prior.side(latent[act].astype(np.float64) - self._m[act])
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = z
        return z

    def encode(self, latent: np.ndarray) -> bytes:
        fact = bytes([MODE_FACTORIZED]) + super().encode(latent)
        c_n, h, w = latent.shape
        q = self.quantize(latent)
        z = self._side_of(latent)
        s, tab, near = self._tables_of(z, (h, w))
        if near:
            return fact
        act = self.side_prior.active
        enc = self._cs.stream.queue.RangeEncoder()
        escapes = encode_grouped(enc, self._zm, self.side_prior.z, _channel_of(z.shape), z.ravel())
        escapes.append(_encode_by_table(enc, self._gm, self.side_prior.gauss, tab.ravel(), (q[act] - s).ravel()))
        side = bytes([MODE_SIDE]) + join_payload(enc, escapes)
        return side if len(side) < len(fact) else fact

    def decode(self, payload: bytes, shape: tuple[int, int, int], coded_only: bool = False) -> np.ndarray:
        if not payload:
            raise ValueError("latent tile is empty")
        if payload[0] == MODE_FACTORIZED:
            return super().decode(payload[1:], shape, coded_only)
        if payload[0] != MODE_SIDE:
            raise ValueError(f"unknown latent tile mode {payload[0]}")
        c_n, h, w = shape
        act = self.side_prior.active
        zh, zw = -(-h // DOWN), -(-w // DOWN)
        zc = self.side_prior.z_channels
        dec, esc = split_payload(self._cs, payload[1:], zc * zh * zw + len(act) * h * w)
        z, k = decode_grouped(dec, self._zm, self.side_prior.z, _channel_of((zc, zh, zw)), esc, 0)
        z = z.reshape(zc, zh, zw)
        s, tab, _ = self._tables_of(z, (h, w))
        d, k = _decode_by_table(dec, self._gm, self.side_prior.gauss, tab.ravel(), esc, k)
        vals = d.reshape(len(act), h, w) + s
        if coded_only:
            return self.dequantize(vals, act)
        out = np.empty((c_n, h, w), np.int64)
        out[act] = vals
        out[self.skip[:c_n]] = self._modes[:c_n][self.skip[:c_n]][:, None, None]
        return self.dequantize(out)

    def cell_bits(self, latent: np.ndarray) -> np.ndarray:
        """Bits of every latent cell (h, w) of one tile as this codec codes it: under the side prior's tables (the
        side information z spread over the 4×4 cells it describes) or, for a tile coded with the factorized
        tables, under those."""
        c_n, h, w = latent.shape
        q = self.quantize(latent)
        act = self.side_prior.active
        if self.encode(latent)[0] == MODE_FACTORIZED:
            return sum(self.tables.symbol_bits(int(c), q[c]) for c in act)
        z = self._side_of(latent)
        s, tab, _ = self._tables_of(z, (h, w))
        d, t = (q[act] - s).ravel(), tab.ravel()
        bits = np.empty(d.shape, np.float64)
        for u in np.unique(t):
            sel = t == u
            bits[sel] = self.side_prior.gauss.symbol_bits(int(u), d[sel])
        out = bits.reshape(len(act), h, w).sum(axis=0)
        zb = sum(self.side_prior.z.symbol_bits(c, z[c]) for c in range(z.shape[0]))
        out += np.repeat(np.repeat(zb, DOWN, 0), DOWN, 1)[:h, :w] / float(DOWN * DOWN)
        return out
