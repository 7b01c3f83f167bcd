"""Archives of rasters on Dask distributed: `python -m sar_ae_core batch INPUTS... --out DIR`.

- **Inputs**: files, folders (their rasters, not recursive), glob patterns (`**` recurses) and `@list.txt` (one
  input per line, `#` comments). Globs and folders contribute rasters (.tif .tiff .npy .vrt .img) when compressing
  and `.sarz` files with `--reconstruct`; a file named explicitly is always taken. A pattern, folder or list
  that yields nothing is a usage error; a named file that does not exist is a failed input.
- **Outputs**: `DIR/<stem>.sarz` (`--reconstruct`: `DIR/<stem>.tif`). Inputs whose output names would collide
  (the same stem, compared case-insensitively) are all named `<stem>-<8 hex digits of the SHA-1 of the input's
  absolute path>`, so a rerun with the same inputs finds the same names. Every output is written atomically by the
  codec (a temporary file renamed when complete and checked); temporary files of a worker that died are removed.
- **Reruns are idempotent**: an existing output is skipped when it is complete and valid (it opens, every chunk
  checksum is right) and its header says it came from this input with these options (source name, size, bands,
  units and dtype; model and its SHA-256, tile size, codec, escapes, scaling, gain; `--rate`: a rate point and the
  bits per pixel within 2 %) and is not older than the input. An existing output that does not match is a failed
  input unless `--overwrite` is given; then it is replaced, atomically (a failure keeps it).
- **Workers**: a `LocalCluster` with one single-threaded worker process per core (spawned, never forked), or the
  cluster at `--scheduler`. Each worker loads a model once and keeps it (`worker_facts()` says how often it
  loaded one). Bad inputs are failed items with the codec's one-line error and never stop the batch; other
  exceptions (transient I/O) are retried (`retries`), and the tasks of a worker that dies are run again elsewhere.
- **Manifest**: `DIR/manifest.csv` and `DIR/manifest.json` (input, output, bytes, bpp, seconds, status
  done/skipped/failed — pending while running —, error), rewritten atomically as results arrive and at the end.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Optional, Sequence

from sar_ae_core.errors import SarInputError
from sar_ae_core.requirements import BATCH

RASTER_SUFFIXES = (".tif", ".tiff", ".npy", ".vrt", ".img")
SARZ_SUFFIX = ".sarz"
MANIFEST_FIELDS = ("input", "output", "bytes", "bpp", "seconds", "status", "error")
MANIFEST_NAMES = ("manifest.csv", "manifest.json")
INSTALL_HINT = f'pip install "{BATCH[0][1]}" (or the project\'s extra: pip install -e ".[batch]")'
MANIFEST_EVERY_S = 2.0
RATE_TOLERANCE = 0.02


# ------------------------------------------------------------------------------------------------
# Inputs and output names
# ------------------------------------------------------------------------------------------------
def _wanted(path: str, reconstruct: bool) -> bool:
    low = path.lower()
    if reconstruct:
        return low.endswith(SARZ_SUFFIX)
    return low.endswith(RASTER_SUFFIXES) and os.path.basename(low) not in MANIFEST_NAMES


def expand_inputs(specs: Sequence[str], reconstruct: bool = False) -> list[str]:
    """Absolute input paths from files, folders, globs and @lists, in the order given (duplicates dropped)."""
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(os.path.abspath(path))

    def expand(spec: str, origin: Optional[str]) -> None:
        where = f" (listed in {origin})" if origin else ""
        if spec.startswith("@") and origin is None:
            listing = spec[1:]
            try:
                with open(listing, encoding="utf-8") as fh:
                    lines = [ln.strip() for ln in fh]
            except OSError as exc:
                raise SarInputError(listing, f"cannot read the input list ({exc.strerror or exc})") from None
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            if not entries:
                raise SarInputError(listing, "the input list names no inputs")
            base = os.path.dirname(os.path.abspath(listing))
            for entry in entries:  # relative entries are relative to the list's folder
                expand(entry if os.path.isabs(entry) else os.path.join(base, entry), listing)
            return
        if glob.has_magic(spec):
            hits = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _wanted(p, reconstruct))
            if not hits:
                raise SarInputError(spec, f"matches no {'.sarz files' if reconstruct else 'rasters'}{where}")
            for p in hits:
                add(p)
        elif os.path.isdir(spec):
            hits = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                          if os.path.isfile(os.path.join(spec, n)) and _wanted(n, reconstruct))
            if not hits:
                kinds = ".sarz files" if reconstruct else f"rasters ({' '.join(RASTER_SUFFIXES)})"
                raise SarInputError(spec, f"folder holds no {kinds}{where}")
            for p in hits:
                add(p)
        else:
            add(spec)  # a named file: taken as is (a missing one becomes a failed input)

    for spec in specs:
        expand(os.fspath(spec), None)
    if not out:
        raise SarInputError(None, "no inputs given")
    return out


def output_names(inputs: Sequence[str], out_dir: str, suffix: str) -> list[str]:
    """`out_dir/<stem><suffix>` per input; colliding stems all get `-<sha1 of the absolute input path>[:8]`."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    count: dict[str, int] = {}
    for s in stems:
        count[s.casefold()] = count.get(s.casefold(), 0) + 1
    names = []
    for p, s in zip(inputs, stems):
        if count[s.casefold()] > 1:
            s = f"{s}-{hashlib.sha1(os.path.abspath(p).encode('utf-8')).hexdigest()[:8]}"
        names.append(os.path.join(os.path.abspath(out_dir), s + suffix))
    return names


# ------------------------------------------------------------------------------------------------
# On the workers
# ------------------------------------------------------------------------------------------------
_STATE_LOCK = threading.Lock()


class _WorkerState:
    """What a worker process keeps between tasks: loaded models, and counts for `worker_facts`."""

    def __init__(self, codec_threads: int):
        n = max(1, int(codec_threads))
        # the codec runs its network calls on OMP_NUM_THREADS threads, each call single-threaded (ONNX Runtime,
        # or torch with one intra-op thread): the cluster's workers share out the cores
        os.environ["OMP_NUM_THREADS"] = str(n)
        if "torch" in sys.modules:  # torch reads the variable when it starts; if it already did, tell it
            sys.modules["torch"].set_num_threads(n)
        self.codec_threads = n
        self.bundles: dict = {}
        self.loads = 0
        self.tasks = 0
        self.lock = threading.Lock()

    def bundle(self, model: Optional[str], device: str, runtime: Optional[str] = None):
        """The model bundle (loaded on the first call in this process, then reused)."""
        from sar_ae_core.nn.model_io import load_bundle

        key = (model or "", str(device), runtime)
        with self.lock:
            if key not in self.bundles:
                self.bundles[key] = load_bundle(model, device, **({"runtime": runtime} if runtime else {}))
                self.loads += 1
            return self.bundles[key]


def _holder():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker (a plain call)
        return sys.modules[__name__]


def _state(codec_threads: int = 1) -> _WorkerState:
    holder = _holder()
    with _STATE_LOCK:
        st = getattr(holder, "sarae_state", None)
        if st is None:
            st = _WorkerState(codec_threads)
            setattr(holder, "sarae_state", st)
        return st


def worker_facts(dask_worker=None) -> dict:
    """This worker's process id, models loaded, tasks run and codec threads (`client.run(worker_facts)`, which
    passes the worker as `dask_worker`)."""
    st = getattr(dask_worker if dask_worker is not None else _holder(), "sarae_state", None)
    return {"pid": os.getpid(), "model_loads": st.loads if st else 0, "tasks": st.tasks if st else 0,
            "codec_threads": st.codec_threads if st else None}


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _item(job: dict, **kw) -> dict:
    item = {"input": job["input"], "output": job["output"], "bytes": None, "bpp": None, "seconds": None,
            "status": "pending", "error": "", "pixels": None, "worker": None}
    item.update(kw)
    return item


def preflight(kind: str, options: dict, codec_threads: int = 1) -> dict:
    """Check the options on a worker before any input is touched (the model exists and loads, the tile size suits
    it, the device exists …); returns {'error': one line} or the worker's facts."""
    try:
        st = _state(codec_threads)
        from sar_ae_core.options import MAX_BATCH, MAX_TILE, int_option

        if kind == "compress" and options.get("rate") is None:
            from sar_ae_core.codec import _choose_codec

            b = st.bundle(options.get("model"), options.get("device") or "auto", options.get("runtime"))
            d = getattr(b, "downsample_factor", None) or b.model.downsample_factor
            int_option("--tile", options["tile"], 2 * d, MAX_TILE, multiple_of=d)
            int_option("--batch-size", options["batch_size"], 1, MAX_BATCH)
            _choose_codec(options["codec"], b, int_option("--bits", options["bits"], 1, 16))
        elif kind == "compress":
            from sar_ae_core.rate import _rate_points

            _rate_points()
        elif options.get("model"):
            st.bundle(options["model"], options.get("device") or "cpu", options.get("runtime"))
    except SarInputError as exc:
        return {"error": str(exc)}
    return worker_facts()


def _done_item(job: dict, t0: float, status: str, nbytes: int, bpp: float, pixels: int) -> dict:
    return _item(job, bytes=int(nbytes), bpp=float(bpp), seconds=round(time.perf_counter() - t0, 3),
                 status=status, pixels=int(pixels), worker=f"{os.uname().nodename}:{os.getpid()}")


def _verify_sarz(path: str):
    """The open SarzFile when `path` is a complete, valid `.sarz` (every chunk's checksum read), else raises."""
    from sar_ae_core.coding.sarz import SarzFile

    f = SarzFile(path)
    try:
        for i in range(f.reader.chunk_count):
            f.reader.chunk(i)
    except BaseException:
        f.close()
        raise
    return f


def compress_mismatch(job: dict, bundle) -> Optional[str]:
    """None when the existing output is a complete, valid `.sarz` of this input made with these options, else
    why not ('missing' when there is none)."""
    from sar_ae_core.coding import escapes as esc
    from sar_ae_core.io.raster import open_raster

    inp, out, o = job["input"], job["output"], job["options"]
    if not os.path.lexists(out):
        return "missing"
    if os.path.getmtime(inp) > os.path.getmtime(out):
        return "the input is newer than it"
    try:
        f = _verify_sarz(out)
    except SarInputError as exc:
        return f"it is damaged: {exc.problem}"
    with f:
        h, src = f.header, f.source
        with open_raster(inp, bands=o["bands"], units=o["units"]) as r:
            facts = {"name": os.path.basename(r.path), "width": r.width, "height": r.height,
                     "bands": list(r.band_indexes), "units": r.units, "dtype": r.dtype}
        for key, want in facts.items():
            if src.get(key) != want:
                return f"its header says source {key} {src.get(key)!r}, the input has {want!r}"
        codec, mask = h["codec"], h.get("mask") or {"id": esc.MASK_ID}
        if o.get("rate") is not None:
            from sar_ae_core.rate import _rate_points

            if f.model_name not in [n for n, _ in _rate_points()]:
                return f"it was made with model {f.model_name!r}, not a rate point"
            bpp = f.reader.file_size * 8 / (f.plan.width * f.plan.height * f.bands)
            if abs(bpp / o["rate"] - 1) > RATE_TOLERANCE:
                return f"it has {bpp:.4f} bits per pixel, not {o['rate']:g}"
        else:
            if f.model_name != bundle.name or not bundle.sha256.startswith(f.model_sha):
                return f"it was made with model {f.model_name!r} ({f.model_sha[:12]}), not {bundle.name!r}"
            if float(codec.get("gain", 1.0)) != 1.0:
                return f"it was coded with quantization gain {codec['gain']}"
            from sar_ae_core.codec import _choose_codec

            chosen = _choose_codec(o["codec"], bundle, o["bits"])
            want_codec = chosen.params()
            ids = {want_codec["id"]} | ({"factorized-range-adaptive"} if getattr(chosen, "wants_adaptation", False)
                                        else set())  # adapted tables where they paid, the model's elsewhere
            if codec.get("id") not in ids or codec.get("bits", None) != want_codec.get("bits", None):
                return f"it was coded with {codec.get('id')}, not {want_codec['id']}"
            if o["scaling"] == "model" and (h["scaling"]["vmin_db"], h["scaling"]["vmax_db"]) != \
                    (bundle.scaling.vmin_db, bundle.scaling.vmax_db):
                return "its dB range is not the model's"
        if int(h["tiling"]["tile"]) != int(o["tile"]):
            return f"its tile size is {h['tiling']['tile']}, not {o['tile']}"
        step = float(o["escape_step_db"] or 0.0)
        if (mask["id"] == esc.MASK_ID) != (step == 0) or (step and float(mask.get("step_db", 0)) != step):
            return f"its escapes differ (mask {mask['id']}, step {mask.get('step_db', 0)} dB; wanted {step:g} dB)"
    return None


def _replace_or_refuse(job: dict, reason: str) -> bool:
    """overwrite= for the codec call: False when there is no output; True when it may be replaced; raises else."""
    if reason == "missing":
        return False
    if not job["overwrite"]:
        raise SarInputError(job["output"], f"exists and does not match ({reason}); pass --overwrite to replace it")
    return True


def compress_one(job: dict) -> dict:
    """Worker task: compress one input unless a matching output is there; failures are items, not exceptions
    (exceptions other than the codec's input errors propagate, so Dask retries them)."""
    t0 = time.perf_counter()
    st = _state(job.get("codec_threads", 1))
    st.tasks += 1
    o = dict(job["options"])
    inp, out = job["input"], job["output"]
    try:
        if not os.path.exists(inp):
            raise SarInputError(inp, "file not found")
        from sar_ae_core.io.output import same_file

        rate, model, residual = o.pop("rate", None), o.pop("model", None), o.pop("residual", True)
        bundle = None if rate is not None else st.bundle(model, o.get("device") or "auto", o.get("runtime"))
        reason = "missing" if os.path.lexists(out) and same_file(out, inp) else compress_mismatch(job, bundle)
        if reason is None:
            from sar_ae_core.codec import sarz_info

            info = sarz_info(out)
            return _done_item(job, t0, "skipped", info["bytes"], info["bpp"], info["pixels"])
        overwrite = _replace_or_refuse(job, reason)
        if rate is not None:
            from sar_ae_core.rate import compress_to_rate

            r = compress_to_rate(inp, out, rate, overwrite=overwrite, residual=residual, **o)
        else:
            from sar_ae_core.codec import compress_raster

            r = compress_raster(inp, out, bundle=bundle, overwrite=overwrite, **o)
        return _done_item(job, t0, "done", r["bytes"], r["bpp"], r["pixels"])
    except SarInputError as exc:
        return _item(job, status="failed", error=_one_line(exc), seconds=round(time.perf_counter() - t0, 3),
                     worker=f"{os.uname().nodename}:{os.getpid()}")


def reconstruct_mismatch(job: dict, f) -> Optional[str]:
    """None when the existing GeoTIFF is a complete reconstruction of the open SarzFile `f` with these options."""
    import warnings

    import rasterio

    from sar_ae_core.scaling import output_dtype

    out, o = job["output"], job["options"]
    if not os.path.lexists(out):
        return "missing"
    if os.path.getmtime(job["input"]) > os.path.getmtime(out):
        return "the input is newer than it"
    src, p = f.source, f.plan
    out_units = src["units"] if o["units"] == "source" else "db"
    dtype = output_dtype(src["dtype"], out_units) if o["units"] == "source" else "float32"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = rasterio.open(out)
        with ds:
            if (ds.width, ds.height, ds.count) != (p.width, p.height, f.bands) or ds.dtypes[0] != dtype:
                return f"it is {ds.width}x{ds.height}x{ds.count} {ds.dtypes[0]}, not {p.width}x{p.height}x{f.bands} {dtype}"
            tags = ds.tags()
            want = {"SARAE_SOURCE": src["name"], "SARAE_MODEL": f.model_name, "SARAE_UNITS": out_units}
            for k, v in want.items():
                if tags.get(k) != v:
                    return f"its tag {k} is {tags.get(k)!r}, not {v!r}"
            for b in range(1, ds.count + 1):  # complete: every block has bytes and decodes
                for (i, j), win in ds.block_windows(b):
                    if ds.block_size(b, i, j) <= 0:
                        return f"block {i},{j} of band {b} is missing"
                    ds.read(b, window=win)
    except rasterio.errors.RasterioError as exc:
        return f"it cannot be read ({_one_line(exc, 160)})"
    return None


def reconstruct_one(job: dict) -> dict:
    """Worker task: reconstruct one `.sarz` into a GeoTIFF unless a matching one is there."""
    t0 = time.perf_counter()
    st = _state(job.get("codec_threads", 1))
    st.tasks += 1
    o = job["options"]
    inp, out = job["input"], job["output"]
    try:
        from sar_ae_core.codec import reconstruct_raster
        from sar_ae_core.coding.sarz import SarzFile
        from sar_ae_core.io.output import same_file

        if not os.path.exists(inp):
            raise SarInputError(inp, "file not found")
        device = o.get("device") or "cpu"
        extra = {k: v for k, v in o.items() if k not in ("units", "model", "device")}  # e.g. runtime
        with SarzFile(inp) as f:
            bpp = f.reader.file_size * 8 / (f.plan.width * f.plan.height * f.bands)
            pixels = f.plan.width * f.plan.height * f.bands
            model = o.get("model") or f.model_name
            reason = "missing" if os.path.lexists(out) and same_file(out, inp) else reconstruct_mismatch(job, f)
        if reason is None:
            return _done_item(job, t0, "skipped", os.path.getsize(out), bpp, pixels)
        overwrite = _replace_or_refuse(job, reason)
        try:
            bundle = st.bundle(model, device, o.get("runtime"))
        except SarInputError:
            bundle = None  # reconstruct_raster says which model the file needs
        reconstruct_raster(inp, out, units=o["units"], model=o.get("model"), device=device, overwrite=overwrite,
                           bundle=bundle, **extra)
        return _done_item(job, t0, "done", os.path.getsize(out), bpp, pixels)
    except SarInputError as exc:
        return _item(job, status="failed", error=_one_line(exc), seconds=round(time.perf_counter() - t0, 3),
                     worker=f"{os.uname().nodename}:{os.getpid()}")


# ------------------------------------------------------------------------------------------------
# On the driver
# ------------------------------------------------------------------------------------------------
def _import_dask():
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise SarInputError(None, f"batch needs Dask distributed, which is not installed: {INSTALL_HINT}") from None


def write_manifest(out_dir: str, items: Sequence[dict], meta: dict) -> tuple[str, str]:
    """DIR/manifest.csv and DIR/manifest.json, each replaced atomically."""
    from sar_ae_core.io.output import AtomicOutput

    csv_path, json_path = (os.path.join(out_dir, n) for n in MANIFEST_NAMES)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for it in items:
        w.writerow({k: ("" if it.get(k) is None else it[k]) for k in MANIFEST_FIELDS})
    counts = {s: sum(it["status"] == s for it in items) for s in ("done", "skipped", "failed", "pending")}
    doc = {**meta, "summary": counts, "items": list(items)}
    for path, text in ((csv_path, buf.getvalue()), (json_path, json.dumps(doc, indent=2) + "\n")):
        with AtomicOutput(path, overwrite=True) as out:
            with open(out.tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
    return csv_path, json_path


def _sweep_part_files(outputs: Sequence[str]) -> int:
    """Remove temporary files that a dead worker left beside this batch's outputs."""
    n = 0
    by_dir: dict[str, list[str]] = {}
    for out in outputs:
        by_dir.setdefault(os.path.dirname(out), []).append(os.path.basename(out))
    for folder, bases in by_dir.items():
        pat = re.compile(r"^\.(%s)\.[0-9a-f]{8}\.part(\.sarz|\.tif)?(\.aux\.xml|\.ovr|\.msk)?$"
                         % "|".join(re.escape(b) for b in bases))
        # work folders of the codec (kept latents, rate and residual searches): tempfile's 8-character names
        work = re.compile(r"^\.(%s)\.[a-z0-9_]{8}\.(latents|rate|rmse|residual|postfilter)$" % "|".join(re.escape(b) for b in bases))
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if pat.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    n += 1
                except FileNotFoundError:
                    pass
            elif work.match(name) and os.path.isdir(os.path.join(folder, name)):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                n += 1
    return n


class environ_kept:
    """Restores this process's environment on exit: a `LocalCluster`'s nannies set OMP_NUM_THREADS=1 (and more,
    `distributed.nanny.pre-spawn-environ`) in the process that starts them, which would leave a program that ran a
    batch compressing on one thread afterwards."""

    def __enter__(self):
        self.saved = dict(os.environ)
        return self

    def __exit__(self, *exc):
        for key in [k for k in os.environ if k not in self.saved]:
            del os.environ[key]
        for key, value in self.saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _cores() -> int:
    """Cores this process may use (its CPU affinity where the OS says, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_driver_options(workers, threads_per_worker, codec_threads, retries, scheduler) -> None:
    from sar_ae_core.options import int_option

    if scheduler and workers is not None:
        raise SarInputError(None, "--workers starts a local cluster; the cluster at --scheduler has its own workers "
                                  "(give one of them)")
    if workers is not None:
        int_option("--workers", workers, 1, 1024)
    int_option("--threads-per-worker", threads_per_worker, 1, 256)
    int_option("--codec-threads", codec_threads, 1, 256)
    int_option("--retries", retries, 0, 100)


def _check_compress_options(o: dict) -> None:
    """The checks that need no model (the rest run on a worker: `preflight`)."""
    import math

    from sar_ae_core.coding import escapes as esc
    from sar_ae_core.defaults import SCALING_CHOICES
    from sar_ae_core.options import MAX_BATCH, MAX_TILE, choice_option, device_option, int_option

    rate = o.get("rate")
    if rate is not None and not (math.isfinite(rate) and 0 < rate <= 32):
        raise SarInputError(None, f"--rate must be a number of bits per pixel in (0, 32] (got {rate})")
    step = o.get("escape_step_db")
    if step is not None and not 0 <= float(step) <= esc.MAX_STEP_DB:
        raise SarInputError(None, f"--escape-step must be between 0 (off) and {esc.MAX_STEP_DB:g} dB (got {step})")
    if not 0 <= float(o.get("keep_brightest", 0)) <= esc.MAX_BRIGHTEST_PERCENT:
        raise SarInputError(None, f"--keep-brightest must be between 0 and {esc.MAX_BRIGHTEST_PERCENT:g} percent "
                                  f"(got {o['keep_brightest']})")
    int_option("--tile", o["tile"], 2, MAX_TILE)
    int_option("--batch-size", o["batch_size"], 1, MAX_BATCH)
    int_option("--bits", o["bits"], 1, 16)
    choice_option("--scaling", o["scaling"], SCALING_CHOICES)
    device_option(o.get("device"))


_RECONSTRUCT_DEFAULTS = {"units": "source", "model": None, "device": "cpu"}


def _compress_defaults() -> dict:
    """compress_raster's defaults for the options batch passes (the command line passes them all)."""
    from sar_ae_core.coding import escapes as esc
    from sar_ae_core.defaults import TILE

    return {"model": None, "rate": None, "bands": "all", "units": "auto", "bits": 8, "codec": "auto",
            "device": "auto", "tile": TILE, "batch_size": 8, "scaling": "auto",
            "escape_step_db": esc.DEFAULT_STEP_DB, "keep_brightest": esc.DEFAULT_BRIGHTEST_PERCENT}


def _absolute_model(o: dict) -> dict:
    m = o.get("model")
    if m and os.path.exists(m):  # a bundle file: the workers may run in another folder
        o = dict(o, model=os.path.abspath(m))
    return o


class _Bar:
    """A tqdm bar over the inputs on stderr (silent when stderr is not a terminal)."""

    def __init__(self, total: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="file", disable=not sys.stderr.isatty(), file=sys.stderr)

    def update(self, item: dict, counts: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed",
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_batch(inputs: Sequence[str], out_dir: str, *, reconstruct: bool = False, options: Optional[dict] = None,
              workers: Optional[int] = None, threads_per_worker: int = 1, codec_threads: int = 1,
              scheduler: Optional[str] = None, retries: int = 2, overwrite: bool = False,
              progress: bool = True, connect_timeout: float = 30.0) -> dict:
    """Compress (or `reconstruct`) every input into `out_dir` on a Dask cluster; returns the manifest facts.

    `options`: compress_raster's keyword arguments plus `model` and `rate` (reconstruct: `units`, `model`,
    `device`). Usage errors raise the project's input error before anything is written; failed inputs are items
    of the result (and of the manifest), they do not raise."""
    kind = "reconstruct" if reconstruct else "compress"
    options = _absolute_model({**(_RECONSTRUCT_DEFAULTS if reconstruct else _compress_defaults()), **(options or {})})
    if not reconstruct:  # escape options not given (None): compress's defaults, or with a rate the target's
        from sar_ae_core.rate import escape_policy

        rate = options.get("rate")
        auto = escape_policy(rate) if isinstance(rate, (int, float)) else _compress_defaults()  # else: checked below
        options.update({k: auto[k] for k in ("escape_step_db", "keep_brightest") if options.get(k) is None})
    _check_driver_options(workers, threads_per_worker, codec_threads, retries, scheduler)
    if reconstruct:
        from sar_ae_core.defaults import OUTPUT_UNITS
        from sar_ae_core.options import choice_option, device_option

        choice_option("--output-units", options["units"], OUTPUT_UNITS)
        device_option(options.get("device"))
    else:
        _check_compress_options(options)
    _import_dask()
    paths = expand_inputs(inputs, reconstruct)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SarInputError(out_dir, "--out must be a folder; this is a file")
    parent = out_dir
    while not os.path.isdir(parent):  # the folder, or where it will be created
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SarInputError(out_dir, f"output folder {'' if parent == out_dir else f'{parent} '}is not writable")
    outputs = output_names(paths, out_dir, ".tif" if reconstruct else SARZ_SUFFIX)
    jobs = [{"input": i, "output": o, "options": options, "overwrite": bool(overwrite),
             "codec_threads": int(codec_threads)} for i, o in zip(paths, outputs)]
    items = [_item(j) for j in jobs]
    meta = {"command": kind, "out": out_dir, "options": options, "overwrite": bool(overwrite),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    import dask
    from distributed import Client, LocalCluster, as_completed

    t0 = time.perf_counter()
    cluster = client = None
    finished = False
    bar = None
    with environ_kept():  # a local cluster's nannies set OMP_NUM_THREADS=1 in this process: undone after
        try:
            if scheduler:
                try:
                    client = Client(scheduler, timeout=connect_timeout)
                except (OSError, TimeoutError, ValueError) as exc:
                    raise SarInputError(scheduler, f"cannot connect to the Dask scheduler ({_one_line(exc, 200)})") \
                        from None
            else:
                n = workers or _cores()
                # spawned worker processes (never a fork of a process that may have imported torch); the dashboard
                # (when bokeh is installed) on a free port
                with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
                    cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                           dashboard_address=":0", silence_logs=logging.ERROR)
                client = Client(cluster)
            try:
                client.wait_for_workers(1, timeout=connect_timeout)
            except TimeoutError:
                raise SarInputError(scheduler, f"no Dask worker joined within {connect_timeout:g} s") from None
            try:
                check = client.submit(preflight, kind, options, codec_threads, pure=False).result()
            except Exception as exc:  # noqa: BLE001 - e.g. the workers cannot import this package
                raise SarInputError(None, f"the Dask workers cannot run the codec ({type(exc).__name__}: "
                                          f"{_one_line(exc, 200)}); install sar_ae_core on every worker") from None
            if "error" in check:
                raise SarInputError(None, check["error"])
            meta["workers"] = len(client.scheduler_info().get("workers", {}))
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as exc:
                raise SarInputError(out_dir, f"cannot create the output folder ({exc.strerror or exc})") from None
            task = reconstruct_one if reconstruct else compress_one
            futures = {client.submit(task, job, retries=retries, pure=False): k for k, job in enumerate(jobs)}
            counts = {"done": 0, "skipped": 0, "failed": 0}
            bar = _Bar(len(jobs), f"batch {kind}") if progress else None
            last_write = time.monotonic()
            for fut in as_completed(list(futures)):
                k = futures[fut]
                if fut.status == "finished":
                    items[k] = fut.result()
                else:
                    try:
                        exc = fut.exception()
                    except Exception as e:  # noqa: BLE001 - a cancelled future
                        exc = e
                    items[k] = _item(jobs[k], status="failed", error=_task_error(jobs[k]["input"], exc))
                fut.release()
                counts[items[k]["status"]] += 1
                if bar:
                    bar.update(items[k], counts)
                if time.monotonic() - last_write > MANIFEST_EVERY_S:
                    write_manifest(out_dir, items, {**meta, "seconds": round(time.perf_counter() - t0, 3)})
                    last_write = time.monotonic()
            finished = True
        finally:
            if bar:
                bar.close()
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            if finished or cluster is not None:  # nobody writes beside our outputs any more
                _sweep_part_files(outputs)
            if client is not None and any(it["status"] != "pending" for it in items):
                seconds = round(time.perf_counter() - t0, 3)
                write_manifest(out_dir, items, {**meta, "seconds": seconds, "complete": finished})
                if not finished:  # interrupted: what was done is kept, and listed
                    n = {s: sum(it["status"] == s for it in items) for s in ("done", "skipped", "failed", "pending")}
                    logging.getLogger("sar_ae_core").warning(
                        "batch interrupted: %d done, %d skipped, %d failed, %d not done; manifest %s", n["done"],
                        n["skipped"], n["failed"], n["pending"], os.path.join(out_dir, MANIFEST_NAMES[0]))
    counts = {s: sum(it["status"] == s for it in items) for s in ("done", "skipped", "failed")}
    seconds = time.perf_counter() - t0
    pixels = sum(it["pixels"] or 0 for it in items if it["status"] == "done")
    csv_path, json_path = (os.path.join(out_dir, n) for n in MANIFEST_NAMES)
    return {"items": items, "counts": counts, "seconds": seconds, "workers": meta.get("workers"),
            "megapixels_per_s": pixels / 1e6 / seconds if seconds else 0.0, "manifest_csv": csv_path,
            "manifest_json": json_path, "out": out_dir}


def _task_error(path: str, exc: BaseException) -> str:
    """One line for a task that raised after its retries (or whose workers kept dying)."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return f"{path}: the workers running it died repeatedly (out of memory?); not retried further"
    return f"{path}: {name}: {_one_line(exc, 300)}"
