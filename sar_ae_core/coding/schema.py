"""The `.sarz` header schema, checked once when a file is opened.

The checksums prove that bytes are intact, not that they were written by this codec: anyone can recompute a
CRC-32. Every field the decoder uses is therefore checked here for type, range and consistency with the other
fields (tiling against the source size, sizes within what memory can hold, ids against the known sets), and
every violation is the project's input error naming the file and the field — never a traceback, a huge
allocation or a wrong raster.
"""

from __future__ import annotations

import math
import re

from sar_ae_core.coding.frames import MAX_HEADER_BYTES  # noqa: F401 - one home (frames.py)
from sar_ae_core.defaults import CODEC_IDS, UNITS
from sar_ae_core.errors import SarInputError

MAX_SIDE = 1 << 21          # pixels per raster side (2 097 152): a tile row of that width fits in memory
MAX_BANDS = 1024
MAX_LATENT_CHANNELS = 1024
MAX_HALO_CELLS = 64
MAX_DEPTH = 12              # nesting of the header JSON (the codec writes 4)
DOWNSAMPLES = (2, 4, 8, 16, 32, 64)
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "complex64", "complex128",
          "complex_int16")
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def json_depth(value, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed JSON (stops counting past `limit`), iteratively: no recursion to exhaust."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            depth = max(depth, d)
            if depth > limit:
                return depth
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return depth


class _Check:
    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, problem: str):
        raise SarInputError(self.path, f"header field '{field}' {problem} (file is damaged or not from this codec)")

    def obj(self, d, field: str) -> dict:
        if not isinstance(d, dict):
            self.fail(field, f"must be an object, not {type(d).__name__}")
        return d

    def key(self, d: dict, key: str, field: str):
        if key not in d:
            self.fail(f"{field}.{key}", "is missing")
        return d[key]

    def int_(self, d: dict, key: str, field: str, lo: int, hi: int) -> int:
        v = self.key(d, key, field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(f"{field}.{key}", f"must be an integer from {lo} to {hi} (got {_short(v)})")
        return v

    def num(self, d: dict, key: str, field: str, lo: float, hi: float, default=None) -> float:
        v = d.get(key, default) if default is not None else self.key(d, key, field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            self.fail(f"{field}.{key}", f"must be a number from {lo:g} to {hi:g} (got {_short(v)})")
        return float(v)

    def str_(self, d: dict, key: str, field: str, choices=None, max_len: int = 4096) -> str:
        v = self.key(d, key, field)
        if not isinstance(v, str) or len(v) > max_len:
            self.fail(f"{field}.{key}", f"must be a text (got {_short(v)})")
        if choices is not None and v not in choices:
            self.fail(f"{field}.{key}", f"must be one of {', '.join(choices)} (got {_short(v)})")
        return v


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_header(h, path: str) -> None:
    """Raise SarInputError naming the first header field that is wrong; returns None for a sound header."""
    c = _Check(path)
    c.obj(h, "header")
    if json_depth(h) > MAX_DEPTH:
        c.fail("header", f"is nested deeper than {MAX_DEPTH} levels")
    for section in ("model", "scaling", "source", "georef", "tiling", "codec"):
        c.obj(c.key(h, section, "header"), section)
    # model
    m = h["model"]
    c.str_(m, "name", "model", max_len=256)
    sha = c.str_(m, "sha256", "model", max_len=64)
    if not _HEX.match(sha.lower()):
        c.fail("model.sha256", "must be 16 to 64 hex digits")
    cfg = c.obj(c.key(m, "config", "model"), "model.config")
    c.int_(cfg, "latent_channels", "model.config", 1, MAX_LATENT_CHANNELS)
    # scaling
    s = h["scaling"]
    vmin = c.num(s, "vmin_db", "scaling", -400.0, 400.0)
    vmax = c.num(s, "vmax_db", "scaling", -400.0, 400.0)
    if not vmax > vmin:
        c.fail("scaling.vmax_db", "must be above scaling.vmin_db")
    # source
    src = h["source"]
    width = c.int_(src, "width", "source", 1, MAX_SIDE)
    height = c.int_(src, "height", "source", 1, MAX_SIDE)
    c.str_(src, "units", "source", UNITS)
    c.str_(src, "dtype", "source", DTYPES)
    c.str_(src, "name", "source")
    bands = c.key(src, "bands", "source")
    if not isinstance(bands, list) or not 1 <= len(bands) <= MAX_BANDS or \
            not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands):
        c.fail("source.bands", f"must be a list of 1 to {MAX_BANDS} band numbers")
    names = src.get("band_names", [])
    if not isinstance(names, list) or (names and len(names) != len(bands)) or \
            not all(isinstance(n, str) for n in names):
        c.fail("source.band_names", "must be a list of texts, one per band")
    nodata = c.key(src, "nodata", "source")
    if not (nodata is None or nodata == "nan" or (isinstance(nodata, (int, float)) and not isinstance(nodata, bool)
                                                  and math.isfinite(nodata))):
        c.fail("source.nodata", f"must be a number, \"nan\" or null (got {_short(nodata)})")
    import numpy as np

    dt = np.dtype("complex64" if src["dtype"] == "complex_int16" else src["dtype"])
    if nodata == "nan" and np.issubdtype(dt, np.integer):
        c.fail("source.nodata", f"NaN is not a value of the source's {dt.name}")
    if isinstance(nodata, (int, float)) and not isinstance(nodata, bool):
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            if nodata != int(nodata) or not info.min <= nodata <= info.max:
                c.fail("source.nodata", f"is not a value of the source's {dt.name} (got {_short(nodata)})")
        elif abs(nodata) > np.finfo(np.float32 if dt.itemsize <= 8 else np.float64).max:
            c.fail("source.nodata", f"is beyond the range of the source's {dt.name} (got {_short(nodata)})")
    tags = src.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        c.fail("source.tags", "must be an object of texts")
    # tiling, against the source
    t = h["tiling"]
    d = c.int_(t, "downsample", "tiling", 2, 64)
    if d not in DOWNSAMPLES:
        c.fail("tiling.downsample", f"must be one of {DOWNSAMPLES}")
    tile = c.int_(t, "tile", "tiling", d, 1 << 14)
    if tile % d:
        c.fail("tiling.tile", f"must be a multiple of tiling.downsample ({d})")
    c.int_(t, "halo_cells", "tiling", 0, MAX_HALO_CELLS)
    if c.int_(t, "width", "tiling", 1, MAX_SIDE) != width or c.int_(t, "height", "tiling", 1, MAX_SIDE) != height:
        c.fail("tiling.width", f"must match the source size {width}x{height}")
    # codec
    k = h["codec"]
    cid = c.str_(k, "id", "codec", CODEC_IDS)
    if cid == "uniform-zstd":
        c.int_(k, "bits", "codec", 1, 16)
    else:
        if "precision" in k:
            c.int_(k, "precision", "codec", 8, 24)
        if "gain" in k:
            from sar_ae_core.coding.latent_coding import MAX_GAIN, MIN_GAIN

            c.num(k, "gain", "codec", MIN_GAIN, MAX_GAIN)
        if cid == "factorized-range-adaptive":
            c.str_(k, "adapt", "codec", max_len=1 << 20)
    # georef
    g = h["georef"]
    if "transform" in g and g["transform"] is not None:
        tr = g["transform"]
        if not isinstance(tr, list) or len(tr) != 6 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in tr):
            c.fail("georef.transform", "must be 6 finite numbers")
    if "gcps" in g and isinstance(g["gcps"], str):  # packed (io/gcps.py)
        from sar_ae_core.io.gcps import unpack_gcps

        if len(g["gcps"]) > 8 << 20:
            c.fail("georef.gcps", "is longer than any packed GCP list")
        try:
            unpack_gcps(g["gcps"])
        except ValueError as exc:
            c.fail("georef.gcps", f"cannot be unpacked ({exc})")
    elif "gcps" in g and g["gcps"] is not None:
        gcps = g["gcps"]
        if not isinstance(gcps, list) or len(gcps) > 100_000 or not all(
                isinstance(p, list) and len(p) == 7 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in p[:5]) for p in gcps):
            c.fail("georef.gcps", "must be a list of [row, col, x, y, z, id, info]")
    for key in ("crs", "crs_wkt"):
        if g.get(key) is not None and (not isinstance(g[key], str) or len(g[key]) > 65536):
            c.fail(f"georef.{key}", "must be a text")
    # mask
    mask = h.get("mask", {"id": "packbits-zstd"})
    c.obj(mask, "mask")
    from sar_ae_core.coding.escapes import ESCAPE_MASK_ID, MASK_ID, MAX_STEP_DB
    from sar_ae_core.coding import residual as res

    mask_id = c.str_(mask, "id", "mask", (MASK_ID, ESCAPE_MASK_ID, res.RESIDUAL_MASK_ID))
    if mask_id == res.RESIDUAL_MASK_ID:
        c.num(mask, "residual_db", "mask", res.MIN_STEP_DB, res.MAX_STEP_DB)
        flags = mask.get("residual_wavelet")
        if flags is not None and not (isinstance(flags, list) and len(flags) == len(h.get("source", {}).get(
                "bands", [])) and all(v in (0, 1) and not isinstance(v, bool) for v in flags)):
            c.fail("mask.residual_wavelet", "must be a 0/1 flag per band")
    if mask_id != MASK_ID:
        c.num(mask, "step_db", "mask", 1e-6, MAX_STEP_DB)
        above = c.num(mask, "above_db", "mask", -400.0, 400.0, default=vmax)
        if not vmin < above <= vmax + 1e-6:
            c.fail("mask.above_db", "must lie inside the scaling range")
