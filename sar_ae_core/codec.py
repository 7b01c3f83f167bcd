"""compress / reconstruct / info: a SAR raster into a `.sarz` file and back into a georeferenced GeoTIFF,
streaming tile row by tile row (memory grows only with the raster's width, through one row of tiles).

compress: read a strip (`tiling.read_strip`), run the encoder on fixed units of it, code the latents, masks and
escapes of each tile into the container. reconstruct: decode the latent tiles a region needs (`coding.sarz`), run
the decoder on fixed units with its halo (or blended windows for global-attention models), put the escapes back,
write the GeoTIFF. Network calls run on `_Runner`'s threads, one thread each, on units fixed on the tile grid: the
bytes written and the pixels decoded do not depend on the number of threads.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sar_ae_core import __version__
from sar_ae_core.coding import escapes as esc
from sar_ae_core.coding.container import ContainerWriter
from sar_ae_core.coding.latent_coding import UniformZstdCodec, codec_from_params, encode_mask
from sar_ae_core.coding.sarz import SHA_PREFIX, SarzFile, _chunk_id
from sar_ae_core.defaults import CODEC_IDS, HALO_PIXELS, OUTPUT_COMPRESS, SCALING_CHOICES, TILE
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import AtomicOutput, GeoTiffWriter, Window, check_output_path, open_raster
from sar_ae_core.nn.model_config import decoder_halo_cells, encoder_halo_cells
from sar_ae_core.nn.model_io import ModelBundle, load_bundle, ready_bundle
from sar_ae_core.nn.runtime import threads as runtime_threads
from sar_ae_core.options import MAX_BATCH, MAX_TILE, choice_option, device_option, int_option
from sar_ae_core.progress import Progress, ProgressFn
from sar_ae_core.scaling import (ScalingParams, choose_scaling, db_to_raw, output_dtype, output_nodata,
                                 scaling_kind)
from sar_ae_core.tiling import TilePlan, blend_weights, raster_fill, read_strip


_OUT_COLS = 1024


@dataclass
class _Timer:
    network: float = 0.0
    io: float = 0.0
    coding: float = 0.0
    blending: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 4) for k, v in vars(self).items()}


# ------------------------------------------------------------------------------------------------
# Compress
# ------------------------------------------------------------------------------------------------
def compress_raster(input_path: str | os.PathLike, output_path: str | os.PathLike, *, model: Optional[str] = None,
                    bands: str | Sequence[int] = "all", units: str = "auto", bits: int = 8, device: str = "auto",
                    tile: int = TILE, halo_cells: Optional[int] = None, batch_size: int = 8, scaling: str = "auto",
                    codec: str = "auto", overwrite: bool = False, progress: Optional[ProgressFn] = None,
                    bundle: Optional[ModelBundle] = None, escape_step_db: Optional[float] = esc.DEFAULT_STEP_DB,
                    keep_brightest: float = esc.DEFAULT_BRIGHTEST_PERCENT, gain: float = 1.0,
                    latent_store: Optional["LatentStore"] = None, runtime: str = "auto",
                    post_filter: str = "auto") -> dict:
    """Encode a raster into a `.sarz` file; returns the measured rate (bits per pixel from file bytes).

    `scaling`: 'model' uses the dB range the model was trained with; 'source' fits a 0.1–99.9 percentile
    range on this raster; 'auto' keeps the model's range unless the raster's 1st–99th percentiles fall
    outside it (e.g. uncalibrated DN or SLC data), then fits on the source. The range used is stored in
    the file, so decoding needs nothing else.

    `escape_step_db`: valid pixels outside the dB range (bright point targets above it, dark ones below) are
    stored beside the latents with this quantization step (|error| <= step/2) so nothing is clipped;
    0 or None clips them to the range as the network sees it. `keep_brightest` (percent): the brightest pixels
    of the raster (above its 100 − keep_brightest percentile, when that is below the range's top) are stored
    the same way — the point targets a detector looks for come back within step/2 whatever the network does.

    `post_filter` ('auto', 'enl', 'mse', 'off'; coding/postfilter.py): a 5 × 5 filter fitted on the file's own
    reconstruction and stored in it, where its bytes are at most postfilter.MAX_SHARE of the file's (`pays`)."""
    from sar_ae_core.coding import postfilter as pf

    t_start = time.perf_counter()
    pf.check_mode(post_filter)
    if escape_step_db is not None and not 0 <= float(escape_step_db) <= esc.MAX_STEP_DB:
        raise SarInputError(None, f"--escape-step must be between 0 (off) and {esc.MAX_STEP_DB:g} dB "
                                  f"(got {escape_step_db})")
    step = float(escape_step_db or 0.0)
    if not 0 <= float(keep_brightest) <= esc.MAX_BRIGHTEST_PERCENT:
        raise SarInputError(None, f"--keep-brightest must be between 0 and {esc.MAX_BRIGHTEST_PERCENT:g} percent "
                                  f"(got {keep_brightest})")
    inputs = [input_path] + ([model] if model and os.path.exists(os.fspath(model)) else [])
    choice_option("--scaling", scaling, SCALING_CHOICES)
    device_option(device)
    check_output_path(output_path, overwrite, inputs)
    prog = Progress(progress)
    bundle = ready_bundle(model, device, bundle, runtime)
    dev = bundle.device
    d = bundle.downsample_factor
    filtering = post_filter != "off" and decoder_halo_cells(bundle.config) is not None
    main = prog.sub(0.0, 0.9) if filtering else prog
    tile = int_option("--tile", tile, 2 * d, MAX_TILE, multiple_of=d)
    batch_size = int_option("--batch-size", batch_size, 1, MAX_BATCH)
    bits = int_option("--bits", bits, 1, 16)
    codec = _choose_codec(codec, bundle, bits)
    if gain != 1.0:
        from sar_ae_core.coding.latent_coding import MAX_GAIN, MIN_GAIN

        if type(codec).__name__ not in ("FactorizedRangeCodec", "HyperpriorRangeCodec"):
            raise SarInputError(None, "a quantization gain needs a model with a learned entropy model")
        if not MIN_GAIN <= float(gain) <= MAX_GAIN:
            raise SarInputError(None, f"quantization gain must be in [{MIN_GAIN}, {MAX_GAIN}] (got {gain})")
        codec.gain = round(float(gain), 4)  # the header's value (a short number) is the one used
    timer = _Timer()
    with open_raster(input_path, bands=bands, units=units) as r:
        if r.width < d or r.height < d:
            raise SarInputError(r.path, f"raster is {r.width}x{r.height} px; the codec needs at least {d}x{d}")
        exact = halo_cells is None and encoder_halo_cells(bundle.config) is not None
        if exact:  # just the encoder's receptive field: the latents of a whole-raster encode, in strips
            halo_cells = encoder_halo_cells(bundle.config)
        elif halo_cells is None:  # at least 32 px of context on each side, whatever the downsampling
            halo_cells = max(2, math.ceil(HALO_PIXELS / d))
        plan = TilePlan(r.width, r.height, d, tile, halo_cells)
        preflight(r.path, plan, r.count)
        from sar_ae_core.scaling import raster_histogram

        wants_bright = bool(step) and keep_brightest > 0
        # one pass serves the range choice, the brightest-pixel threshold and the fill of invalid pixels
        hist = raster_histogram(r, bundle.scaling.noise_floor, per_band=True)
        scaling, scaling_reason = choose_scaling(r, bundle.scaling, scaling, hist=hist)
        fill = raster_fill(hist, scaling)
        above = scaling.vmax_db
        if wants_bright:
            bright = hist.percentile(100 - float(keep_brightest))
            above = float(min(above, max(bright, scaling.vmin_db + step)))
        above = math.floor(above * 1000) / 1000  # a short header number; a lower bound only escapes more
        info = r.info
        sampled: dict = {}  # tile row -> latents encoded for the adapted tables, used again below
        if getattr(codec, "wants_adaptation", False):  # per-file tables from the raster's own symbols
            if latent_store is not None and latent_store.complete():  # a rate search: every row is kept
                rows = (latent_store.get(tr) for tr in range(plan.tile_rows))
            else:
                t0 = time.perf_counter()
                with _Runner(bundle) as runner:
                    waiting: list = []  # the network runs on LOOKAHEAD rows while the next strip is read
                    for tr in _sample_rows(plan, r.count, bundle):
                        strip, _, _, _ = read_strip(r, plan, scaling, tr, fill=fill)
                        waiting.append((tr, [_encode_strip(bundle, plan, strip[b], tr, dev, batch_size, timer,
                                                           runner, exact, skip=getattr(codec, "skip", None))
                                             for b in range(r.count)]))
                        del strip
                        while len(waiting) > LOOKAHEAD:
                            t_r, waits = waiting.pop(0)
                            sampled[t_r] = [w() for w in waits]
                    for t_r, waits in waiting:
                        sampled[t_r] = [w() for w in waits]
                    timer.network += runner.network_seconds
                timer.io += time.perf_counter() - t0 - runner.network_seconds
                rows = sampled.values()
            codec = codec.adapted(codec.histograms(tile for row in rows for band in row for tile in band))
        # Every header byte counts in the rate of small rasters: only what decoding and `info` need. The model
        # is named by its name and a 64-bit SHA-256 prefix (its bundle has the rest), the CRS by its EPSG code
        # when that is exact, the scaling without its training-file list; the reasons are printed at compress time.
        sc = scaling.to_dict()
        header = {
            "created_by": f"sar_ae_core {__version__}",
            "model": {"name": bundle.name, "sha256": bundle.sha256[:SHA_PREFIX],
                      "config": {"latent_channels": bundle.config.latent_channels}},
            "scaling": {k: sc[k] for k in ("vmin_db", "vmax_db", "noise_floor", "clip_method")},
            "source": {"name": os.path.basename(r.path), "units": r.units,
                       "dtype": r.dtype, "nodata": _json_nodata(r.nodata), "width": r.width, "height": r.height,
                       "bands": r.band_indexes, "band_names": r.band_names, "tags": info.tags},
            "georef": r.georef.to_compact(),
            "tiling": plan.to_dict(),
            "codec": codec.params(),
            "mask": ({"id": esc.ESCAPE_MASK_ID, "step_db": step, "above_db": above} if step
                     else {"id": esc.MASK_ID}),
        }
        n_valid = n_escaped = 0
        # with a post-filter the file is written into a work folder first: the output appears once, filtered
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".postfilter",
                                dir=os.path.dirname(os.path.abspath(os.fspath(output_path)))) if filtering else None
        written = os.path.join(work, "plain.sarz") if filtering else output_path
        try:
            sizes = _write_sarz(written, overwrite or filtering, inputs, header, r, plan, scaling, step, codec,
                                bundle, dev, batch_size, timer, latent_store, sampled, exact, main, fill)
            n_valid, n_escaped = sizes.pop("_counts")
            nbytes = os.path.getsize(written)
            filtered = None
            if filtering and pf.usable(plan.width, plan.height) and \
                    pf.pays(post_filter, nbytes * 8 / (plan.width * plan.height * r.count), nbytes, r.count, header):
                from sar_ae_core.refine import add_postfilter

                filtered = add_postfilter(written, input_path, output_path, post_filter, bundle=bundle, work_dir=work,
                                          progress=prog.sub(0.9, 1.0).step)
            if filtered is not None:
                nbytes, sizes = filtered["bytes"], filtered["parts"]
            elif filtering:
                with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=inputs) as out:
                    os.replace(written, out.tmp)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
    pixels = plan.width * plan.height * info.count
    source_bits = np.dtype(output_dtype(info.dtype, "db") if info.dtype.startswith("complex") else info.dtype).itemsize * 8
    return {"output": os.fspath(output_path), "bytes": nbytes, "bpp": nbytes * 8 / pixels,
            "compression_ratio": source_bits * pixels / (nbytes * 8), "parts": sizes, "pixels": pixels,
            "bands": info.count, "model": bundle.name, "scaling": scaling_reason,
            "scaling_kind": scaling_kind(scaling, bundle.scaling), "escaped_pixels": n_escaped,
            "escape_step_db": step, "keep_brightest": float(keep_brightest) if step else 0.0, "device": dev,
            "runtime": bundle.runtime, "post_filter": filtered["post_filter"] if filtered else None,
            "seconds": time.perf_counter() - t_start,
            "timing": timer.as_dict()}


def _write_sarz(path, overwrite, inputs, header, r, plan, scaling, step, codec, bundle, dev, batch_size, timer,
                latent_store, sampled, exact, main, fill) -> dict:
    """The container of a compress (every tile row coded); returns its part sizes and `_counts` (valid, escaped)."""
    n_valid = n_escaped = 0
    with AtomicOutput(path, overwrite, suffix=".sarz", inputs=inputs) as out, open(out.tmp, "wb") as fh, \
            _Runner(bundle) as runner:
        writer = ContainerWriter(fh, header)
        from collections import deque

        # tile rows whose networks run (on the pool) while the next strips are read and the oldest is coded:
        # LOOKAHEAD rows ahead, so the pool never waits for the reading of the next strip
        pending: deque = deque()
        for tr in range(plan.tile_rows):
            t0 = time.perf_counter()
            strip, valid, y0, db = read_strip(r, plan, scaling, tr, want_db=bool(step), fill=fill)
            timer.io += time.perf_counter() - t0
            cached = latent_store.get(tr) if latent_store is not None else None
            fresh = cached is None
            if cached is None:
                cached = sampled.pop(tr, None)
            if cached is None:
                waits = [_encode_strip(bundle, plan, strip[b], tr, dev, batch_size, timer, runner, exact,
                                       skip=getattr(codec, "skip", None)) for b in range(r.count)]
                finish = (lambda waits=waits: [w() for w in waits])
            else:
                finish = (lambda cached=cached: cached)
            pending.append((tr, valid, y0, db, finish, fresh))
            del strip
            while len(pending) > (LOOKAHEAD if tr < plan.tile_rows - 1 else 0):
                job = pending.popleft()
                n_v, n_e = _code_tile_row(job, writer, codec, plan, scaling, header, step, r.count,
                                          latent_store, timer)
                n_valid, n_escaped = n_valid + n_v, n_escaped + n_e
                main.step((job[0] + 1) / plan.tile_rows, f"compressing tile row {job[0] + 1}/{plan.tile_rows}")
        timer.network += runner.network_seconds
        if latent_store is not None:
            latent_store.mark_complete()
        if n_valid == 0:
            raise SarInputError(r.path, "no valid pixels to compress (all nodata, NaN, infinite or <= 0)")
        sizes = writer.finish()
    return {**sizes, "_counts": (n_valid, n_escaped)}


#: tile rows read and given to the network ahead of the one being entropy-coded
LOOKAHEAD = 2

#: latents (bytes) the adapted tables may hold in memory: that many tile rows, evenly spread, are encoded first,
#: their symbols' histograms give the tables, and the main pass codes them without encoding again
SAMPLE_BYTES = 64 << 20


def _sample_rows(plan: TilePlan, bands: int, bundle: ModelBundle) -> list[int]:
    """Tile rows whose latents give a raster's adapted tables: all of them when they fit SAMPLE_BYTES (a raster
    up to ~8k x 8k px), else as many as fit, evenly spread over the raster."""
    per_row = bands * bundle.config.latent_channels * plan.cells * plan.latent_width * 4
    n = max(1, min(plan.tile_rows, SAMPLE_BYTES // max(per_row, 1)))
    return sorted({int(round(v)) for v in np.linspace(0, plan.tile_rows - 1, n)})

#: measured on the 2-core reference machine (benchmarks/bench_codec.py): pixels per second of compress, and
#: bytes held per pixel of one tile-row strip (raw, dB, scaled, padded, validity, latents), per band
COMPRESS_PX_PER_S = 1.5e6
STRIP_BYTES_PER_PX = 40
LONG_JOB_S = 3600


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def preflight(path: str, plan: TilePlan, bands: int) -> dict:
    """Estimate a compress job before any work: refuse one whose tile-row strip cannot fit in memory (it grows
    with the raster's width), warn on stderr about one that will run for hours. Returns the estimate."""
    import logging

    strip = (plan.tile + 2 * plan.halo) * (plan.tile_cols * plan.tile + 2 * plan.halo) * bands * STRIP_BYTES_PER_PX
    seconds = plan.width * plan.height * bands / COMPRESS_PX_PER_S
    free = _available_memory()
    est = {"strip_bytes": strip, "seconds": seconds, "available_bytes": free}
    if free is not None and strip > 0.8 * free:
        raise SarInputError(path, f"is {plan.width} px wide: one tile row needs ~{strip / 2**30:.1f} GiB of memory "
                                  f"and {free / 2**30:.1f} GiB are available; compress a band at a time (--bands) "
                                  "or a narrower crop")
    if seconds > LONG_JOB_S:
        logging.getLogger("sar_ae_core").warning(
            "%s: %d x %d px x %d band(s) will take about %.1f hours on a 2-core CPU (and ~%.1f GiB of memory)",
            path, plan.width, plan.height, bands, seconds / 3600, strip / 2**30)
    return est


class LatentStore:
    """The encoder's latents of one raster and model, tile row by tile row in a folder (memory stays bounded):
    a rate search re-quantizes them without running the network again."""

    def __init__(self, folder: str, key: str):
        self.folder, self.key = folder, key

    def _path(self, tr: int) -> str:
        return os.path.join(self.folder, f"{self.key}-{tr}.npz")

    def get(self, tr: int):
        path = self._path(tr)
        if not os.path.exists(path):
            return None
        with np.load(path) as z:
            n_bands, n_cols = (int(v) for v in z["shape"])
            return [[z[f"b{b}c{c}"] for c in range(n_cols)] for b in range(n_bands)]

    def complete(self) -> bool:
        """Whether every tile row is stored (mark_complete was called after a whole pass)."""
        return os.path.exists(os.path.join(self.folder, f"{self.key}-complete"))

    def mark_complete(self) -> None:
        open(os.path.join(self.folder, f"{self.key}-complete"), "w").close()

    def put(self, tr: int, latents: list) -> None:
        arrays = {f"b{b}c{c}": t for b, row in enumerate(latents) for c, t in enumerate(row)}
        np.savez(self._path(tr), shape=np.array([len(latents), len(latents[0])]), **arrays)


def _choose_codec(name: str, bundle: ModelBundle, bits: int):
    """'auto': the model's learned entropy coder when it has one (factorized: without its inactive channels and
    with the tables fitted to the file where that pays, 'factorized-range-adaptive'), else uniform quantization +
    zstd."""
    coded = None if bundle.tables is None else (
        "hyperprior-range" if getattr(bundle.tables, "kind", "") == "hyperprior" else "factorized-range")
    if name == "auto":
        name = coded or UniformZstdCodec.id
        if name == "factorized-range" and bundle.tables.inactive().any():
            name = "factorized-range-adaptive"
    if name == UniformZstdCodec.id:
        return UniformZstdCodec(bits=bits)
    if name == "factorized-range-adaptive":  # the active codec, its tables fitted to the file where that pays
        codec = _choose_codec("factorized-range-active", bundle, bits)
        codec.wants_adaptation = True
        return codec
    if name in ("factorized-range", "factorized-range-active", "hyperprior-range"):
        family = "factorized-range" if name == "factorized-range-active" else name
        if bundle.tables is not None and family != coded:
            raise SarInputError(bundle.path, f"model '{bundle.name}' codes its latents with {coded}, not {name}")
        if bundle.tables is None:
            raise SarInputError(bundle.path, f"model '{bundle.name}' has no entropy model; use --codec uniform-zstd")
        if name == "factorized-range-active" and not bundle.tables.inactive().any():
            raise SarInputError(bundle.path, f"model '{bundle.name}' has no inactive latent channels; use "
                                             "--codec factorized-range")
        return codec_from_params({"id": name}, bundle.tables)
    raise SarInputError(None, f"unknown codec '{name}' (auto, {', '.join(CODEC_IDS)})")


def _json_nodata(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def _nodata_from_json(v):
    return float("nan") if v == "nan" else v


def _code_tile_row(job, writer: ContainerWriter, codec, plan: TilePlan, scaling: ScalingParams, header: dict,
                   step: float, bands: int, latent_store, timer: "_Timer") -> tuple[int, int]:
    """Entropy-code one encoded tile row (latents, masks, escapes) into the container, in chunk order; returns
    (valid pixels, escaped pixels)."""
    tr, valid, y0, db, finish, fresh = job
    latents = finish()
    if fresh and latent_store is not None:
        latent_store.put(tr, latents)
    t0 = time.perf_counter()
    n_valid = n_escaped = 0
    above = header["mask"].get("above_db")
    for tc in range(plan.tile_cols):  # chunk order: see _chunk_id
        for b in range(bands):
            writer.add(codec.encode(latents[b][tc]), "latents")
            m = _tile_mask(valid[b], plan, tr, tc, y0)
            n_valid += int(m.sum())
            if step:
                tdb = _tile_db(db[b], plan, tr, tc)
                outside = esc.out_of_window(tdb, m, scaling.vmin_db, above)
                n_escaped += int(outside.sum())
                frame = esc.encode_escapes(tdb, outside, scaling.vmin_db, above, step)
                writer.add(esc.encode_mask_chunk(m, frame), "masks")
            else:
                writer.add(encode_mask(m), "masks")
    timer.coding += time.perf_counter() - t0
    return n_valid, n_escaped


def _tile_db(db: np.ndarray, plan: TilePlan, tr: int, tc: int) -> np.ndarray:
    """dB values of the raster pixels a tile owns, from the unpadded rows of its tile row."""
    return db[:, tc * plan.tile: min((tc + 1) * plan.tile, plan.width)]


class _Runner:
    """Runs network calls on independent work units. ONNX Runtime on the CPU: every call on one thread (the sessions
    are single-threaded) and as many calls in parallel as the codec has threads, so results do not depend on the
    thread count; torch on the CPU: one call after the other on one intra-op thread; CUDA: one after the other."""

    def __init__(self, bundle: ModelBundle):
        self.cpu = bundle.device == "cpu"
        self.torch = bundle.runtime == "torch"
        self.threads = 1
        self.pool = None
        self.busy = 0.0
        import threading

        self._lock = threading.Lock()

    def __enter__(self) -> "_Runner":
        if self.cpu:
            if self.torch:
                import torch

                # one call after the other on one intra-op thread: concurrent torch calls on the CPU were seen
                # to round differently from sequential ones (1e-5), so the torch path (models without an ONNX
                # export) gives up the parallelism to stay thread-count independent
                self._torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)
            else:
                self.threads = runtime_threads()
            if self.threads > 1:
                from concurrent.futures import ThreadPoolExecutor

                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sarae")
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.cpu and self.torch:
            import torch

            torch.set_num_threads(self._torch_threads)

    def submit(self, fn, items: list):
        """Start `fn` on every item (on the pool when there is one) and return a function that waits for the
        results, in order: the caller prepares the next work unit or writes the previous one meanwhile."""
        def timed(item):
            t0 = time.perf_counter()
            out = fn(item)
            dt = time.perf_counter() - t0
            with self._lock:
                self.busy += dt
            return out

        if self.pool is None:
            results = [timed(i) for i in items]
            return lambda: results
        futures = [self.pool.submit(timed, i) for i in items]
        return lambda: [f.result() for f in futures]

    def map(self, fn, items: list) -> list:
        return self.submit(fn, items)()

    @property
    def network_seconds(self) -> float:
        """Wall-clock equivalent of the network calls so far (their summed time over the parallel calls)."""
        return self.busy / max(1, self.threads)


#: encode work unit width (pixels, rounded to whole tiles) when the encoder's receptive field is known
ENCODE_UNIT_PIXELS = 1024


def _encode_strip(bundle: ModelBundle, plan: TilePlan, strip: np.ndarray, tr: int, dev: str, batch_size: int,
                  timer, runner: "_Runner", exact: bool = False, skip: Optional[np.ndarray] = None) -> list:
    """Latent cells of every tile in tile row `tr`. `exact` (the halo covers the encoder's receptive field): the
    strip is encoded in units of ENCODE_UNIT_PIXELS columns plus the halo, fixed on the tile grid, and each tile's
    cells are cut from its unit — no window overlap beyond the receptive field. Otherwise each tile is encoded
    from its own window with halo. On the CPU every unit or window is its own call (results independent of the
    thread count); on CUDA windows go in batches. `skip`: the latent channels the codec leaves out (the runtime need
    not compute them). Returns a function that waits for the network and returns the latents, so that the caller
    can code the previous tile row meanwhile."""
    wp, tile, hc = plan.window_pixels, plan.tile, plan.halo_cells

    def encode(x):
        return bundle.nets.encode(x, skip=skip)

    if exact:
        k = max(1, ENCODE_UNIT_PIXELS // tile)
        starts = list(range(0, plan.tile_cols, k))
        units = [strip[None, None, :, u * tile: min(u + k, plan.tile_cols) * tile + 2 * plan.halo] for u in starts]
        wait = runner.submit(encode, units)

        def finish() -> list:
            out = []
            for u, y in zip(starts, wait()):
                for tc in range(u, min(u + k, plan.tile_cols)):
                    r0, r1, c0, c1 = plan.tile_cells(tr, tc)
                    a = hc + (tc - u) * plan.cells
                    out.append(np.ascontiguousarray(y[0, :, hc:hc + (r1 - r0), a:a + (c1 - c0)]))
            return out

        return finish
    windows = [strip[:, tc * tile: tc * tile + wp] for tc in range(plan.tile_cols)]
    step = batch_size if dev != "cpu" else 1
    batches = [np.stack(windows[i:i + step])[:, None] for i in range(0, len(windows), step)]
    wait = runner.submit(encode, batches)

    def finish() -> list:
        out = []
        for y in wait():
            for k in range(y.shape[0]):
                r0, r1, c0, c1 = plan.tile_cells(tr, len(out))
                out.append(np.ascontiguousarray(y[k, :, hc:hc + (r1 - r0), hc:hc + (c1 - c0)]))
        return out

    return finish


def _tile_mask(valid: np.ndarray, plan: TilePlan, tr: int, tc: int, y0: int) -> np.ndarray:
    """Validity of the raster pixels a tile owns (its core, clipped to the raster)."""
    r0, r1 = tr * plan.tile, min((tr + 1) * plan.tile, plan.height)
    c0, c1 = tc * plan.tile, min((tc + 1) * plan.tile, plan.width)
    return valid[r0 - y0: r1 - y0, c0 + plan.halo: c1 + plan.halo]


# ------------------------------------------------------------------------------------------------
# Reconstruct
# ------------------------------------------------------------------------------------------------
def sarz_info(path: str | os.PathLike) -> dict:
    """Header and rate facts of a `.sarz` file (bits per pixel from the file's bytes)."""
    with SarzFile(path) as f:
        p, src = f.plan, f.source
        sizes = {"latents": 0, "masks": 0}
        for i, n in enumerate(f.reader.lengths):
            sizes["latents" if i % 2 == 0 else "masks"] += int(n)
        nbytes = f.reader.file_size
        pixels = p.width * p.height * f.bands
        return {"path": f.path, "format": "%d.%d" % f.reader.version,
                "bytes": nbytes, "bpp": nbytes * 8 / pixels, "pixels": pixels,
                "parts": {**sizes, "header+index": nbytes - sizes["latents"] - sizes["masks"]},
                "width": p.width, "height": p.height, "bands": f.bands, "band_names": src.get("band_names"),
                "source_name": src["name"], "source_units": src["units"], "source_dtype": src["dtype"],
                "georef": f.georef.kind, "residual_step_db": f.residual_step, "residual_wavelet": f.residual_wavelet,
                "model": f.model_name, "model_sha256": f.model_sha, "codec": f.header["codec"],
                "tiling": f.header["tiling"], "scaling": f.header["scaling"], "created_by": f.header.get("created_by"),
                "post_filter": f.postfilter}


def _bundle_for(f: SarzFile, model: Optional[str], device: str = "cpu", runtime: str = "auto") -> ModelBundle:
    try:
        bundle = load_bundle(model or f.model_name, device, runtime)
    except SarInputError as exc:
        if model:
            raise
        raise SarInputError(f.path, f"needs model '{f.model_name}' (sha256 {f.model_sha[:12]}…), which is not "
                                    f"installed; pass --model PATH ({exc.problem})") from None
    if not bundle.decodes(f.model_sha):
        raise SarInputError(f.path, f"was compressed with model '{f.model_name}' (sha256 {f.model_sha[:12]}…); "
                                    f"the given model '{bundle.name}' (sha256 {bundle.sha256[:12]}…) is different")
    return bundle


def reconstruct_raster(input_path: str | os.PathLike, output_path: str | os.PathLike, *, units: str = "source",
                       window: Optional[Sequence[int]] = None, model: Optional[str] = None, device: str = "cpu",
                       overwrite: bool = False, progress: Optional[ProgressFn] = None,
                       bundle: Optional[ModelBundle] = None, runtime: str = "auto",
                       output_compress: str = OUTPUT_COMPRESS[0], prefilter: bool = False) -> dict:
    """Decode a `.sarz` file (or a window COL ROW WIDTH HEIGHT of it) into a georeferenced GeoTIFF in the
    source units and dtype (`units='source'`) or in dB (`units='db'`), compressed with `output_compress`.
    `prefilter` (encoder side, with units 'db'): the reconstruction as the post-filter gets it — no post-filter,
    every pixel's value, invalid ones too."""
    t_start = time.perf_counter()
    if units not in ("source", "db"):
        raise SarInputError(None, f"--units must be 'source' or 'db' (got '{units}')")
    choice_option("--output-compress", output_compress, OUTPUT_COMPRESS)
    from sar_ae_core.io.remote import local_input

    inputs = [local_input(input_path)] + \
        ([model] if model and os.path.exists(os.fspath(model)) else [])  # a remote URL is no local file to protect
    check_output_path(output_path, overwrite, inputs)
    prog = Progress(progress)
    timer = _Timer()
    with SarzFile(input_path) as f:
        p, src = f.plan, f.source
        if bundle is None or not bundle.decodes(f.model_sha):
            bundle = _bundle_for(f, model, device, runtime)
        bundle = ready_bundle(None, device, bundle)
        dev = bundle.device
        f.attach(bundle)
        col0, row0, width, height = window if window is not None else (0, 0, p.width, p.height)
        if width <= 0 or height <= 0 or col0 < 0 or row0 < 0 or col0 + width > p.width or row0 + height > p.height:
            raise SarInputError(f.path, f"window {col0} {row0} {width} {height} is outside the "
                                        f"{p.width}x{p.height} raster")
        out_units = src["units"] if units == "source" else "db"
        dtype = output_dtype(src["dtype"], out_units) if units == "source" else "float32"
        nodata = _nodata_from_json(src["nodata"]) if units == "source" else float("nan")
        nodata = output_nodata(dtype, nodata)
        georef = f.georef.window_transform(Window(col0, row0, width, height))
        tags = dict(src.get("tags") or {})
        tags.update(SARAE_SOURCE=src["name"], SARAE_MODEL=f.model_name, SARAE_UNITS=out_units,
                    SARAE_CODEC=f.header["codec"]["id"])
        weights = blend_weights(p)
        tile_rows = sorted({r for r, _ in p.tiles_touching(row0, row0 + height, col0, col0 + width)})
        tile_cols = sorted({c for _, c in p.tiles_touching(row0, row0 + height, col0, col0 + width)})
        with GeoTiffWriter(output_path, width, height, f.bands, dtype, georef, nodata=nodata,
                           band_names=src.get("band_names"), tags=tags, overwrite=overwrite, inputs=inputs,
                           compress=output_compress) as w:
            steps = len(tile_rows) * f.bands
            halo = decoder_halo_cells(bundle.config)
            with _Runner(bundle) as runner:
                for b in range(f.bands):
                    if halo is None:  # global attention: overlapping windows, blended
                        if f.postfilter is not None and not prefilter:
                            raise SarInputError(f.path, "has a post-filter, which files of a model with global "
                                                        "attention cannot have (file is damaged)")
                        _decode_band(f, bundle, b, (col0, row0, width, height), tile_rows, tile_cols, weights,
                                     w, out_units, dtype, nodata, timer, prog, steps, runner)
                    else:
                        _decode_band_strips(f, bundle, b, (col0, row0, width, height), halo,
                                            w, out_units, dtype, nodata, timer, prog, runner, prefilter)
                timer.network = runner.network_seconds
    return {"output": os.fspath(output_path), "width": width, "height": height, "bands": f.bands,
            "units": out_units, "dtype": dtype, "device": dev, "runtime": bundle.runtime,
            "seconds": time.perf_counter() - t_start, "timing": timer.as_dict()}


def _latent_window(f: SarzFile, cache: dict, tr: int, tc: int, band: int) -> np.ndarray:
    """Latent cells of a decode window (tile cells + halo), edge-replicated beyond the stored grid."""
    p = f.plan
    r0, r1, c0, c1 = p.window_cells(tr, tc)
    rows = np.clip(np.arange(r0, r1), 0, p.latent_height - 1)
    cols = np.clip(np.arange(c0, c1), 0, p.latent_width - 1)
    out = np.empty((f.latent_channels, len(rows), len(cols)), dtype=np.float32)
    trs, tcs = rows // p.cells, cols // p.cells
    for t_r in np.unique(trs):
        for t_c in np.unique(tcs):
            key = (int(t_r), int(t_c))
            if key not in cache:
                cache[key] = f.latent_tile(key[0], key[1], band)
            tile = cache[key]
            ri, ci = np.nonzero(trs == t_r)[0], np.nonzero(tcs == t_c)[0]
            out[:, ri[:, None], ci[None, :]] = tile[:, (rows[ri] - t_r * p.cells)[:, None],
                                                     (cols[ci] - t_c * p.cells)[None, :]]
    return out


def _decode_band(f: SarzFile, bundle: ModelBundle, band: int, region, tile_rows, tile_cols, weights,
                 writer: GeoTiffWriter, out_units: str, dtype: str, nodata, timer: _Timer, prog: Progress,
                 steps: int, runner: _Runner) -> None:
    """Decode one band of the region tile row by tile row, blending windows into a rolling accumulator."""
    p = f.plan
    col0, row0, width, height = region
    wp, h = p.window_pixels, p.halo
    cache: dict = {}
    acc_y0 = row0                          # raster row of accumulator row 0
    num = np.zeros((0, width), np.float32)
    den = np.zeros((0, width), np.float32)
    written = row0
    for k, tr in enumerate(tile_rows):
        # window rows of this tile row, clipped to the region
        wy0 = tr * p.tile - h
        top, bottom = max(wy0, row0), min(wy0 + wp, row0 + height)
        need = bottom - acc_y0
        if need > num.shape[0]:
            num = np.vstack([num, np.zeros((need - num.shape[0], width), np.float32)])
            den = np.vstack([den, np.zeros((need - den.shape[0], width), np.float32)])
        t0 = time.perf_counter()
        lats = [_latent_window(f, cache, tr, tc, band) for tc in tile_cols]
        timer.coding += time.perf_counter() - t0
        t0 = time.perf_counter()
        xs = runner.map(lambda lat: bundle.nets.decode(lat[None])[0, 0], lats)
        timer.network += time.perf_counter() - t0
        del lats
        for tc, x in zip(tile_cols, xs):
            t0 = time.perf_counter()
            wx0 = tc * p.tile - h
            left, right = max(wx0, col0), min(wx0 + wp, col0 + width)
            if right > left and bottom > top:
                sl = (slice(top - wy0, bottom - wy0), slice(left - wx0, right - wx0))
                wgt = weights[sl]
                num[top - acc_y0:bottom - acc_y0, left - col0:right - col0] += wgt * x[sl]
                den[top - acc_y0:bottom - acc_y0, left - col0:right - col0] += wgt
            timer.blending += time.perf_counter() - t0
        # rows above the next tile row's first window row are final
        last = k == len(tile_rows) - 1
        final_to = row0 + height if last else min(tile_rows[k + 1] * p.tile - h, row0 + height)
        if final_to > written:
            n = final_to - written
            valid, escaped, residual = _mask_rows(f, band, written, final_to, col0, width)
            for c in range(0, width, _OUT_COLS):  # column chunks keep float64 temporaries small
                t0 = time.perf_counter()
                cs = slice(c, min(c + _OUT_COLS, width))
                values = _to_output(f, num[:n, cs] / den[:n, cs], valid[:, cs],
                                    None if escaped is None else escaped[:, cs], out_units, dtype, nodata,
                                    None if residual is None else residual[:, cs])
                timer.blending += time.perf_counter() - t0
                t0 = time.perf_counter()
                writer.write(values, Window(cs.start, written - row0, cs.stop - cs.start, n), band=band + 1)
                timer.io += time.perf_counter() - t0
            num, den = num[n:], den[n:]
            acc_y0 = written = final_to
        for key in [key for key in cache if key[0] < tr]:
            del cache[key]  # latent tiles of rows above are no longer needed
        prog.step((band * len(tile_rows) + k + 1) / steps, f"reconstructing band {band + 1}, tile row {k + 1}")


#: decode work unit width (pixels, rounded to whole tiles): fixed, so that a window decodes exactly the units a
#: full decode does (bit-identical pixels) whatever the thread count
UNIT_PIXELS = 256


def _decode_band_strips(f: SarzFile, bundle: ModelBundle, band: int, region, halo: int,
                        writer: GeoTiffWriter, out_units: str, dtype: str, nodata, timer: _Timer, prog: Progress,
                        runner: _Runner, prefilter: bool = False) -> None:
    """Decode one band of the region without redundant work: the decoder's receptive field is `halo` latent cells,
    so each work unit (one tile row × UNIT_PIXELS columns of the latent grid) is decoded with just `halo` cells
    around it (edge-replicated beyond the grid, as the encoder saw mirrored pixels there) and its centre is final:
    the same pixels as one decode of the whole edge-padded latent grid, with no blending. Units are fixed on the
    grid, so a window decode equals that window of the full decode bit for bit.

    Memory does not grow with the raster: a few units are in flight (the network runs on the next ones while the
    main thread range-decodes latents and converts and writes finished units), each unit is written as soon as
    it is done, and of the latent tiles only the current and next tile rows are kept (the row above as its
    bottom `halo` cell rows).

    With a post-filter (coding/postfilter.py) the units' dB values pass through its `RowStage`: the region is
    decoded RADIUS pixels wider where the raster goes on, and each run of rows is written once the rows below it
    are decoded."""
    from sar_ae_core.coding import postfilter as pf

    p = f.plan
    taps = None if prefilter or f.postfilter is None else f.postfilter[band]
    stage = None
    if taps is not None:
        out_col0, out_row0 = region[0], region[1]

        def emit(db, valid, escaped, col, row):
            values = _db_to_output(db, valid, out_units, dtype, nodata)
            t0 = time.perf_counter()
            writer.write(values, Window(col - out_col0, row - out_row0, db.shape[1], db.shape[0]), band=band + 1)
            timer.io += time.perf_counter() - t0

        stage = pf.RowStage(taps, region, p.width, p.height, emit, tile=p.tile,
                            clip=(np.float32(f.scaling.vmin_db), np.float32(f.scaling.vmax_db)))
    fct, cells = p.downsample, p.cells
    unit_cells = max(1, UNIT_PIXELS // p.tile) * cells
    allowed = None  # (first, last tile row, first, last tile col) whose latents a post-filtered decode reads

    def readable(t_r: int, t_c: int) -> bool:
        return allowed is None or (allowed[0] <= t_r <= allowed[1] and allowed[2] <= t_c <= allowed[3])

    if stage is not None:
        # the filter's context (RADIUS pixels around the region) comes from units of the neighbouring tiles, whose
        # pixels there depend only on latents within the decoder's halo of them: the latent tiles the region needs
        # anyway plus those within that reach. The rest of those units' halos is left at zero (it changes none of
        # the pixels kept), so a window reads no more latent chunks than without the filter.
        c0o, r0o, wo, ho = region
        reach = pf.RADIUS + (halo + 1) * fct
        uo0, uo1 = (c0o // fct) // unit_cells, ((c0o + wo - 1) // fct) // unit_cells
        allowed = (max(0, min(r0o // p.tile - 1, (r0o - reach) // p.tile)),
                   min(p.tile_rows - 1, max((r0o + ho - 1) // p.tile + 1, (r0o + ho - 1 + reach) // p.tile)),
                   max(0, min((uo0 * unit_cells - halo) // cells, (c0o - reach) // p.tile)),
                   min(p.tile_cols - 1, max(((uo1 + 1) * unit_cells - 1 + halo) // cells,
                                            (c0o + wo - 1 + reach) // p.tile)))
        region = stage.decoded_region()
    col0, row0, width, height = region
    u_first, u_last = (col0 // fct) // unit_cells, ((col0 + width - 1) // fct) // unit_cells
    tile_rows = range(row0 // p.tile, (row0 + height - 1) // p.tile + 1)
    steps = len(tile_rows) * f.bands
    cache: dict = {}  # (tile row, tile col) -> latent cells (C, h, w); rows above the current one: their tail
    # the file's codec leaves out exactly the channels the runtime's smaller decoder does without: latents of the
    # coded channels only, straight into it
    nets, skip = bundle.nets, getattr(f.codec, "skip", None)
    active = getattr(nets, "active", None) is not None and skip is not None and \
        np.array_equal(np.nonzero(~skip)[0], nets.active) and getattr(nets, "core_halo", None) == halo
    channels = len(nets.active) if active else f.latent_channels
    decode = (lambda x: nets.decode_core_active(x[None], halo)[0, 0]) if active else \
        (lambda x: nets.decode_core(x[None], halo)[0, 0])

    def latents(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Latent cells rows [r0, r1) x cols [c0, c1) of the grid, from the (cached) stored tiles."""
        out = (np.empty if allowed is None else np.zeros)((channels, r1 - r0, c1 - c0), np.float32)
        for t_r in range(r0 // cells, (r1 - 1) // cells + 1):
            for t_c in range(c0 // cells, (c1 - 1) // cells + 1):
                if not readable(t_r, t_c):
                    continue
                key = (t_r, t_c)
                if key not in cache:
                    cache[key] = (0, f.latent_tile(t_r, t_c, band, coded_only=active))
                skip, tile = cache[key]  # a tail keeps the tile's last rows: its row 0 is tile row `skip`
                top = t_r * cells + skip
                a0, a1 = max(r0, top), min(r1, t_r * cells + skip + tile.shape[1])
                b0, b1 = max(c0, t_c * cells), min(c1, t_c * cells + tile.shape[2])
                out[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0] = tile[:, a0 - top:a1 - top,
                                                               b0 - t_c * cells:b1 - t_c * cells]
        return out

    def launch(tr: int, u: int):
        """The latent cells of unit u of tile row tr (edge-padded) and its decode, started on the runner."""
        r0, r1 = tr * cells, min((tr + 1) * cells, p.latent_height)
        hr0, hr1 = r0 - halo, r1 + halo
        c0, c1 = u * unit_cells, min((u + 1) * unit_cells, p.latent_width)
        hc0, hc1 = c0 - halo, c1 + halo
        t0 = time.perf_counter()
        lat = latents(max(hr0, 0), min(hr1, p.latent_height), max(hc0, 0), min(hc1, p.latent_width))
        pads = [(0, 0), (max(0, -hr0), max(0, hr1 - p.latent_height)), (max(0, -hc0), max(0, hc1 - p.latent_width))]
        if any(map(any, pads)):
            lat = np.pad(lat, pads, mode="edge")
        timer.coding += time.perf_counter() - t0
        # only the unit's core is kept (`halo` cells inside): the runtime computes just that (and may leave out
        # the inactive channels)
        return tr, u, hr0, c0, c1, hc0, runner.submit(decode, [lat])

    def finish(job) -> None:
        """Cut, mask, convert and write one decoded unit."""
        tr, u, hr0, c0, c1, hc0, wait = job
        y0, y1 = max(tr * p.tile, row0), min((tr + 1) * p.tile, p.height, row0 + height)
        a, b = max(c0 * fct, col0), min(c1 * fct, col0 + width)
        t0 = time.perf_counter()
        valid, escaped, residual = _mask_rows(f, band, y0, y1, a, b - a)
        timer.coding += time.perf_counter() - t0
        x = wait()[0]  # pixels from raster row (hr0 + halo)·fct, column (hc0 + halo)·fct = c0·fct
        t0 = time.perf_counter()
        oy, ox = (hr0 + halo) * fct, c0 * fct
        unit = x[y0 - oy:y1 - oy, a - ox:b - ox]
        if stage is not None or prefilter:
            db = _unit_db(f, unit, residual, escaped)
            timer.blending += time.perf_counter() - t0
            if stage is not None:
                stage.put(y0, y1, a, b, db, valid, escaped)
                if u == u_last:
                    stage.row_done()
            else:
                writer.write(db, Window(a - col0, y0 - row0, b - a, y1 - y0), band=band + 1)
        else:
            values = _to_output(f, unit, valid, escaped, out_units, dtype, nodata, residual)
            timer.blending += time.perf_counter() - t0
            t0 = time.perf_counter()
            writer.write(values, Window(a - col0, y0 - row0, b - a, y1 - y0), band=band + 1)
            timer.io += time.perf_counter() - t0
        if u == u_last:
            k = tr - tile_rows[0]
            prog.step((band * len(tile_rows) + k + 1) / steps, f"reconstructing band {band + 1}, tile row {k + 1}")

    from collections import deque

    try:
        in_flight: deque = deque()
        depth = 2 * max(1, runner.threads)
        t_c0 = max(0, u_first * unit_cells - halo) // cells
        t_c1 = min(p.latent_width - 1, (u_last + 1) * unit_cells - 1 + halo) // cells
        m_c0, m_c1 = col0 // p.tile, (col0 + width - 1) // p.tile
        for tr in tile_rows:
            # the chunks this tile row reads (latents of its rows and the halo rows, its masks), in one request per
            # span from a remote file; a local file ignores the hint
            need = [_chunk_id(p, f.bands, t_r, t_c, band, 0)
                    for t_r in range(max(0, tr - 1), min(p.tile_rows, tr + 2))
                    for t_c in range(t_c0, t_c1 + 1) if (t_r, t_c) not in cache and readable(t_r, t_c)]
            need += [_chunk_id(p, f.bands, tr, t_c, band, 1) for t_c in range(m_c0, m_c1 + 1)]
            f.reader.prefetch(need)
            for key in list(cache):  # the row above is needed only as the halo (its last `halo` cell rows)
                if key[0] < tr - 1:
                    del cache[key]
                elif key[0] == tr - 1 and cache[key][0] == 0 and cache[key][1].shape[1] > halo:
                    tile = cache[key][1]
                    cache[key] = (tile.shape[1] - halo, np.ascontiguousarray(tile[:, -halo:]))
            for u in range(u_first, u_last + 1):
                in_flight.append(launch(tr, u))
                if len(in_flight) >= depth:
                    finish(in_flight.popleft())
        while in_flight:
            finish(in_flight.popleft())
    except BaseException:
        if stage is not None:
            stage.close(raise_errors=False)  # the first error (or the cancel) is the one to report
        raise
    if stage is not None:
        stage.close()


def _mask_rows(f: SarzFile, band: int, y0: int, y1: int, col0: int, width: int):
    """Validity of raster rows [y0, y1) × cols [col0, col0 + width) from the stored mask tiles, the escaped
    dB values there (float32, NaN where not escaped; None when the region has no escapes) and the residual layer's
    dB offsets (float32; None when the file has none)."""
    p = f.plan
    if y0 // p.tile == (y1 - 1) // p.tile and col0 // p.tile == (col0 + width - 1) // p.tile:
        # within one tile (a decode unit of one tile, the common case): views of it, no copy
        tr, tc = y0 // p.tile, col0 // p.tile
        m, e, r = f.mask_tile(tr, tc, band)
        sl = (slice(y0 - tr * p.tile, y1 - tr * p.tile), slice(col0 - tc * p.tile, col0 + width - tc * p.tile))
        return m[sl], None if e is None else e[sl], None if r is None else r[sl]
    out = np.zeros((y1 - y0, width), dtype=bool)
    escaped = residual = None
    for tr in range(y0 // p.tile, (y1 - 1) // p.tile + 1):
        for tc in range(col0 // p.tile, (col0 + width - 1) // p.tile + 1):
            m, e, r = f.mask_tile(tr, tc, band)
            ty0, tx0 = tr * p.tile, tc * p.tile
            a0, a1 = max(y0, ty0), min(y1, ty0 + m.shape[0])
            b0, b1 = max(col0, tx0), min(col0 + width, tx0 + m.shape[1])
            out[a0 - y0:a1 - y0, b0 - col0:b1 - col0] = m[a0 - ty0:a1 - ty0, b0 - tx0:b1 - tx0]
            if e is not None:
                if escaped is None:
                    escaped = np.full((y1 - y0, width), np.nan, np.float32)
                escaped[a0 - y0:a1 - y0, b0 - col0:b1 - col0] = e[a0 - ty0:a1 - ty0, b0 - tx0:b1 - tx0]
            if r is not None:
                if residual is None:
                    residual = np.zeros((y1 - y0, width), np.float32)
                residual[a0 - y0:a1 - y0, b0 - col0:b1 - col0] = r[a0 - ty0:a1 - ty0, b0 - tx0:b1 - tx0]
    return out, escaped, residual


def escaped_pixels(f: SarzFile, col0: int, row0: int, width: int, height: int) -> np.ndarray:
    """Which pixels of a window the decoder keeps exactly (escapes: bool, bands × height × width) — the post-filter
    leaves them as they are, so its fit must too."""
    out = np.zeros((f.bands, height, width), bool)
    t = f.plan.tile
    for b in range(f.bands):
        for tr in range(row0 // t, (row0 + height - 1) // t + 1):  # one tile row at a time
            y0, y1 = max(row0, tr * t), min(row0 + height, (tr + 1) * t)
            _, escaped, _ = _mask_rows(f, b, y0, y1, col0, width)
            if escaped is not None:
                out[b, y0 - row0:y1 - row0] = ~np.isnan(escaped)
    return out


def _unit_db(f: SarzFile, unit: np.ndarray, residual, escaped) -> np.ndarray:
    """A decoded unit in dB (float32) as the post-filter gets it: the network's values, the residual layer added,
    the escaped pixels' own values in place."""
    sc = f.scaling
    out = np.clip(unit, 0.0, 1.0, dtype=np.float32)
    out *= np.float32(sc.span_db)
    out += np.float32(sc.vmin_db)
    if residual is not None:
        out += residual
    if escaped is not None:
        hit = ~np.isnan(escaped)
        out[hit] = escaped[hit]
    return out


def _db_to_output(db: np.ndarray, valid: np.ndarray, out_units: str, dtype: str, nodata) -> np.ndarray:
    """Final dB values (float32) in the output units and dtype, nodata where not valid."""
    if out_units == "db" and np.dtype(dtype) == np.float32:
        out = db
    else:
        out = db_to_raw(db.astype(np.float64), out_units, dtype)
    out[~valid] = output_nodata(out.dtype.name, nodata)
    return out


def _to_output(f: SarzFile, unit: np.ndarray, valid: np.ndarray, escaped, out_units: str, dtype: str, nodata,
               residual=None):
    """Blended [0, 1] values → output units, plus the residual layer's dB offsets, with the escaped pixels' own dB
    values put back."""
    if out_units == "db" and np.dtype(dtype) == np.float32:
        # dB float32 out: float32 arithmetic in place (within 4e-6 dB of the float64 path), escapes then nodata
        out = _unit_db(f, unit, residual, escaped)
        out[~valid] = output_nodata("float32", nodata)
        return out
    if escaped is None and residual is None:
        return f.scaling.inverse(unit, valid, out_units, dtype, nodata)
    db = f.scaling.unit_to_db(unit)
    if residual is not None:
        db += residual
    if escaped is not None:
        hit = ~np.isnan(escaped)
        db[hit] = escaped[hit]
    out = db_to_raw(db, out_units, dtype)
    out[~valid] = output_nodata(out.dtype.name, nodata)
    return out
