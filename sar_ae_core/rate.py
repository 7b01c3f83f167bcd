"""Rate control: compress a raster to a requested file size (bits per pixel from the file's bytes).

The bundled rate points (`RATE_POINTS`) span the rates coarsely; between and beyond them a quantization gain
(stored in the header: symbols rint(m + g·(y − m)) around each channel's most probable symbol m) moves the rate
continuously: g < 1 coarser, g > 1 finer. The search:

1. the rate point whose measured mean rate is closest to the target is coded at gain 1, which measures how this
   raster's rate relates to the held-out mean; the same ratio predicts the others, and the lowest rate point
   at or above the target is used (checked with real files);
2. its latents are kept on disk (`LatentStore`), and g is searched (regula falsi on log rate vs log g) with real
   files, each pass only re-quantizing and range coding, until the size is within the tolerance;
2b. the neighbouring rate point on the other side of gain 1 (the point below at a finer gain, or the one above at a
   coarser gain) is searched to the target too, and the file closer to the source (RMSE in dB) is kept;
3. a residual layer on a lower rate point, and 4. for uncalibrated data at high rates the range fitted on the
   raster, each kept where the file is closer to the source.

Where even the extreme gains cannot reach the target the closest file is written and the result says so. The chosen pass is moved into place like every output (nothing partial, inputs never replaced).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile

from sar_ae_core.errors import SarInputError
from sar_ae_core.coding.latent_coding import MAX_GAIN
from sar_ae_core.io.output import AtomicOutput, check_output_path
from sar_ae_core.progress import Progress

COARSEST_USEFUL_GAIN = 0.7
#: the lowest rate point is not taken below this gain: past it a few more percent of bytes saved cost dB (Spain at
#: 0.4: 0.127 bpp, 20.6 dB, against 0.246 bpp, 23.6 dB at 1), and on a raster whose header and masks outweigh its
#: latents the rate no longer falls (a 100 x 100 crop: 0.347 bpp at 0.4, 0.344 at 0.05 for 9 dB less)
LOWEST_USEFUL_GAIN = 0.4


def escape_policy(target_bpp: float) -> dict:
    """The escapes (`compress_raster`'s `escape_step_db`, `keep_brightest`) for a rate target the user gave no
    escape options for. Nothing is clipped at any rate: pixels outside the dB range are always kept. Below 0.5
    bpp only those, to ±0.5 dB: the brightest 0.1 % cost ~20 bits each, ~8 % of a 0.25 bpp file, for no quality
    that rate can show (held-out scenes at 0.25 bpp against keeping them to ±0.05 dB: +0.15 … +0.31 dB PSNR on
    the scenes of 256 px and more; the brightest 0.1 % then come back with a median |error| of 1.0–4.2 dB). From
    0.5 bpp the brightest 0.1 % are kept too, to ±0.05 dB (coarser steps there bought ≤ 0.03 dB and cost edge
    preservation on single-look SLC: EPI 0.934 against 0.939 on TerraSAR-X at 1 bpp with ±0.25 dB)."""
    from sar_ae_core.coding import escapes as esc

    if target_bpp < 0.5:
        return {"escape_step_db": 1.0, "keep_brightest": 0.0}
    return {"escape_step_db": esc.DEFAULT_STEP_DB, "keep_brightest": esc.DEFAULT_BRIGHTEST_PERCENT}


def _rate_points(max_decoder_kmac: "float | None" = None, exclude_models=()) -> list[tuple[str, float]]:
    """(model name, measured mean bpp) of the bundled rate points, lowest rate first; `max_decoder_kmac`: only those
    whose decoder (kMAC per pixel, counted into the model card by `benchmarks/bench_models.py --update-cards`)
    fits that budget; `exclude_models`: names left out (an evaluation leaves out the models trained on the scene).
    Of points that share their latents (one decodes the other's files: the same encoder and tables, another decoder)
    only the one with the costliest decoder within the budget is kept: the same bytes, decoded better."""
    from sar_ae_core.defaults import RATE_POINTS
    from sar_ae_core.nn.model_io import model_card, resolve_model

    if max_decoder_kmac is not None and (isinstance(max_decoder_kmac, bool) or not isinstance(
            max_decoder_kmac, (int, float)) or not math.isfinite(max_decoder_kmac) or max_decoder_kmac <= 0):
        raise SarInputError(None, f"--max-decoder-kmac must be a positive number of kMAC per pixel "
                                  f"(got {max_decoder_kmac})")
    points, costs, shas = [], {}, {}
    for name in RATE_POINTS:
        if name in exclude_models:
            continue
        try:
            resolve_model(name)
        except SarInputError:
            continue
        card = model_card(name)
        bpp = (card.get("measured") or {}).get("bpp")
        if not bpp:
            continue
        cost = (card.get("macs") or {}).get("decoder_kmac_px")
        costs[name] = cost
        if max_decoder_kmac is not None and (cost is None or float(cost) > max_decoder_kmac):
            continue
        points.append((name, float(bpp)))
        shas[name] = {card.get("sha256")} | set(card.get("decodes_sha256") or [])
    # twins: the same latents (a decoder trained on another point's frozen latents declares its files)
    points = [(n, b) for n, b in points if not any(
        m != n and shas[n] & shas[m] and float(costs[m] or 0) > float(costs[n] or 0) for m, _ in points)]
    if not points:
        if max_decoder_kmac is not None and costs:
            known = {n: c for n, c in costs.items() if c is not None}
            lightest = f" (the lightest: {min(known, key=known.get)}, {min(known.values()):g} kMAC/px)" if known else ""
            raise SarInputError(None, f"--max-decoder-kmac {max_decoder_kmac:g}: no bundled rate point has a decoder "
                                      f"within it{lightest}")
        raise SarInputError(None, "no bundled rate point with a measured rate: --rate needs them (use --model)")
    return sorted(points, key=lambda p: p[1])


def compress_to_rate(input_path, output_path, target_bpp: float, *, tolerance: float = 0.02,
                     overwrite: bool = False, progress=None, post_filter: str = "auto", **kwargs) -> dict:
    """The search below (`_search_rate`), then a post-filter (coding/postfilter.py, step 5) fitted on the chosen
    file: the search aims at the target less the filter's bytes, so the filtered file meets the target. `post_filter`
    'auto' keeps the speckle of homogeneous areas ('enl') from postfilter.ENL_FROM_BPP, least squares ('mse') below;
    'off' for none. Where the filter's bytes would be more than postfilter.MAX_SHARE of the target, none is fitted
    (`postfilter.pays`)."""
    from sar_ae_core.coding import postfilter as pf
    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.refine import add_postfilter

    if not (isinstance(target_bpp, (int, float)) and math.isfinite(target_bpp) and 0 < target_bpp <= 32):
        raise SarInputError(None, f"--rate must be a number of bits per pixel in (0, 32] (got {target_bpp})")
    pf.check_mode(post_filter)
    import time

    t_start = time.perf_counter()
    search = dict(tolerance=tolerance, overwrite=overwrite, **kwargs)
    if post_filter == "off":
        return _search_rate(input_path, output_path, target_bpp, progress=progress, post_filter="off", **search)
    check_output_path(output_path, overwrite, [input_path])
    with open_raster(input_path, bands=kwargs.get("bands", "all"), units=kwargs.get("units", "auto")) as r:
        width, height, bands = r.width, r.height, r.count
    pixels = width * height * bands
    reserve = pf.header_bytes(pf.TYPICAL_HEADER, bands)
    if not pf.usable(width, height) or not pf.pays(post_filter, target_bpp, target_bpp * pixels / 8, bands):
        return _search_rate(input_path, output_path, target_bpp, progress=progress, post_filter="off", **search)
    prog = Progress(progress)
    folder = os.path.dirname(os.path.abspath(os.fspath(output_path)))
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".rate",
                                     dir=folder) as work:
        plain = os.path.join(work, "searched.sarz")
        res = _search_rate(input_path, plain, target_bpp - reserve * 8 / pixels, progress=prog.sub(0.0, 0.9).step,
                           post_filter="off", nominal_bpp=target_bpp, **{**search, "overwrite": True})
        slot = prog.sub(0.9, SEARCHED)
        filtered = add_postfilter(plain, input_path, output_path, post_filter, target_bpp=target_bpp, work_dir=work,
                                  progress=lambda f, m="": slot.step(f, f"--rate {target_bpp:g}: {m}"))
        if filtered is None:  # no filter after all: the search again at the whole target
            res = _search_rate(input_path, output_path, target_bpp, progress=prog.sub(SEARCHED, SEARCHED).step,
                               post_filter="off", **search)
        else:
            res.update(bytes=filtered["bytes"], bpp=filtered["bpp"], parts=filtered["parts"],
                       post_filter=filtered["post_filter"])
    res.update(output=os.fspath(output_path), target_bpp=float(target_bpp), seconds=time.perf_counter() - t_start,
               reached=abs(res["bpp"] / target_bpp - 1) <= tolerance or res["reached"])
    return res


def _search_rate(input_path, output_path, target_bpp: float, *, tolerance: float = 0.02,
                 overwrite: bool = False, progress=None, max_passes: int = 24, residual: bool = True,
                 max_decoder_kmac: "float | None" = None, exclude_models=(), fitted_window: bool = True,
                 neighbour: bool = True, nominal_bpp: "float | None" = None, sample: bool = True, **kwargs) -> dict:
    """compress_raster at `target_bpp` (within `tolerance`, relative); returns its result plus the search.
    `sample`: on a raster of more than SAMPLE_FROM_PIXELS the search runs on a sample of its tiles
    (`_sampled_search`) and only the final passes on the whole raster.
    `residual`: also try a residual layer on a lower rate point (step 3) and keep the file closer to the source.
    `max_decoder_kmac`: only rate points whose decoder costs at most this many kMAC per pixel (faster decoding).
    Escape options left out (or None) follow the target (`escape_policy`). `fitted_window`: where `scaling` is auto
    and it shifted the model's dB range onto the raster (uncalibrated data), from FITTED_WINDOW_FROM_BPP also the
    search in the range fitted on the raster, the file closer to the source kept (step 4). `neighbour`: also the
    rate point on the other side of the chosen one, at the gain that meets the target, the file closer to the source
    kept (step 2b)."""
    from sar_ae_core.codec import LatentStore, compress_raster

    if not (isinstance(target_bpp, (int, float)) and math.isfinite(target_bpp) and 0 < target_bpp <= 32):
        raise SarInputError(None, f"--rate must be a number of bits per pixel in (0, 32] (got {target_bpp})")
    if not 0 < tolerance < 0.5:
        raise SarInputError(None, f"rate tolerance must be in (0, 0.5) (got {tolerance})")
    for key in ("model", "bundle", "gain", "latent_store"):
        if kwargs.get(key) is not None:
            raise SarInputError(None, f"--rate chooses the model and quantization itself: drop '{key}'")
        kwargs.pop(key, None)
    # the rate-dependent choices follow the user's target (`nominal_bpp`) when the search aims a little below it
    nominal = target_bpp if nominal_bpp is None else float(nominal_bpp)
    for key, value in escape_policy(nominal).items():
        if kwargs.get(key) is None:
            kwargs[key] = value
    import time

    t_start = time.perf_counter()
    inputs = [input_path]
    check_output_path(output_path, overwrite, inputs)
    prog = Progress(progress)
    points = _rate_points(max_decoder_kmac, exclude_models)
    if sample:
        sampled = _sampled_search(input_path, output_path, target_bpp, tolerance=tolerance, overwrite=overwrite,
                                  prog=prog, max_passes=max_passes, residual=residual,
                                  max_decoder_kmac=max_decoder_kmac, exclude_models=exclude_models,
                                  fitted_window=fitted_window, neighbour=neighbour, nominal_bpp=nominal,
                                  t_start=t_start, **kwargs)
        if sampled is not None:
            return sampled
    folder = os.path.dirname(os.path.abspath(os.fspath(output_path)))
    passes: list[dict] = []

    def next_pass():
        return _pass_progress(prog, passes, f"--rate {nominal:g}")

    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".rate",
                                     dir=folder) as work:
        def attempt(model: str, gain: float, store) -> dict:
            path = os.path.join(work, f"pass{len(passes)}.sarz")
            res = compress_raster(input_path, path, model=model, gain=gain, latent_store=store, overwrite=True,
                                  progress=next_pass(), **kwargs)
            res.update(path=path, model=model, gain=gain)
            passes.append({"model": model, "gain": gain, "bpp": res["bpp"]})
            return res

        def close(res) -> bool:
            return abs(res["bpp"] / target_bpp - 1) <= tolerance

        def better(a, b) -> dict:
            return a if abs(math.log(a["bpp"] / target_bpp)) < abs(math.log(b["bpp"] / target_bpp)) else b

        stores: dict = {}
        plain: dict = {}

        def at_unit_gain(i):
            if i not in plain:
                stores[i] = LatentStore(work, f"m{i}")
                plain[i] = attempt(points[i][0], 1.0, stores[i])
            return plain[i]

        def search(i, lo, hi, best):
            """Regula falsi on log rate vs log gain in [lo, hi], one end being gain 1 (already coded)."""
            f1 = math.log(plain[i]["bpp"] / target_bpp)
            f_lo, f_hi = (None, f1) if hi == 1.0 else (f1, None)
            if hi == 1.0:  # downwards: can the coarsest gain reach the target at all? (the tables' floor)
                res = attempt(points[i][0], lo, stores[i])
                best = better(res, best)
                f_lo = math.log(res["bpp"] / target_bpp)
                if close(res) or f_lo > 0:
                    return best
            while len(passes) < max_passes:
                t = 0.5 if f_lo is None or f_hi is None or f_hi == f_lo else min(max(f_lo / (f_lo - f_hi), 0.1), 0.9)
                g = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
                res = attempt(points[i][0], g, stores[i])
                best = better(res, best)
                f = math.log(res["bpp"] / target_bpp)
                if close(res) or hi / lo < 1.002:
                    break
                if f < 0:
                    lo, f_lo = g, f
                else:
                    hi, f_hi = g, f
            return best

        # 1. the rate point: the lowest whose plain rate on this raster is at or above the target. A coarser gain
        #    on it costs less quality than a finer gain on the point below (measured on the held-out scenes).
        nearest = min(range(len(points)), key=lambda i: abs(math.log(points[i][1] / target_bpp)))
        ratio = at_unit_gain(nearest)["bpp"] / points[nearest][1]
        above = [i for i, (_, bpp) in enumerate(points) if bpp * ratio >= target_bpp]
        pick = above[0] if above else len(points) - 1
        while at_unit_gain(pick)["bpp"] < target_bpp * (1 - tolerance) and pick < len(points) - 1:
            pick += 1
        while pick > 0 and at_unit_gain(pick - 1)["bpp"] >= target_bpp * (1 - tolerance):
            pick -= 1
        best = plain[pick]
        for i in plain:
            best = better(plain[i], best)
        # 2. its quantization gain: below 1 down to the target; where the tables' floor stops that, the point below
        #    with a finer gain; above the top point, a finer gain on it
        if not close(best):
            if plain[pick]["bpp"] > target_bpp:
                # below ~0.7 a coarser gain costs more quality than the point below with a finer one (measured:
                # W-Slovakia VV, sarae-q3 at gain 0.5 is 1.4 dB below sarae-q2 at 1.3 for 14 % more bits)
                best = search(pick, COARSEST_USEFUL_GAIN if pick > 0 else LOWEST_USEFUL_GAIN, 1.0, best)
                if not close(best) and pick > 0:
                    at_unit_gain(pick - 1)
                    best = search(pick - 1, 1.0, MAX_GAIN, best)
            else:
                best = search(pick, 1.0, MAX_GAIN, best)
        # 2b. the neighbouring rate point on the other side of gain 1, searched to the target too: which of a coarser
        #     gain on the higher point and a finer gain on the lower one is closer to the source depends on the
        #     raster (held-out validation scenes at 0.25 and 0.5 bpp: from −1.5 to +1.6 dB), so both are measured
        if neighbour and close(best) and best["gain"] != 1.0:
            best = _neighbour(input_path, work, points, plain, at_unit_gain, search, best, close)
        # 3. a residual layer (coding/residual.py) on a lower rate point: where the network stops gaining (speckle,
        #    high rates) the same bytes buy a smaller error; whichever of the two files is closer to the source wins
        if residual and float(kwargs.get("escape_step_db", 1.0) or 0) > 0:
            best = _try_residual(input_path, work, points, plain, at_unit_gain, best, target_bpp, tolerance, passes,
                                 max_passes, close, better, next_pass,
                                 coarser=lambda g: attempt(points[0][0], g, stores[0]))
        reached = close(best)
        # 4. uncalibrated data at high rates: the same search in the dB range fitted on the raster; the file closer
        #    to the source wins
        if fitted_window and kwargs.get("scaling", "auto") == "auto" and nominal >= FITTED_WINDOW_FROM_BPP \
                and best.get("scaling_kind") == "shifted":
            done = _searched(len(passes))
            fitted = prog.sub(done, (done + SEARCHED) / 2)
            alt = _search_rate(input_path, os.path.join(work, "fitted.sarz"), target_bpp, tolerance=tolerance,
                                   max_passes=max_passes, residual=residual, max_decoder_kmac=max_decoder_kmac,
                                   exclude_models=exclude_models, fitted_window=False, neighbour=neighbour,
                                   nominal_bpp=nominal, sample=False, progress=lambda f, m="": fitted.step(f, m),
                                   **{**kwargs, "scaling": "source"})
            passes += alt["passes"]
            alt["path"] = alt["output"]
            if alt["reached"] >= reached and _rmse_db(input_path, alt["path"], work) < \
                    _rmse_db(input_path, best["path"], work):
                best, reached = alt, alt["reached"]
        with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=inputs) as out:
            shutil.copyfile(best["path"], out.tmp)
    best.update(output=os.fspath(output_path), target_bpp=float(target_bpp), reached=reached, passes=passes,
                seconds=time.perf_counter() - t_start)
    best.pop("path", None)
    return best


#: `--rate` on a raster of more than this many pixels (all bands) searches on a sample of its tiles: every pass of
#: the search codes the whole raster, so on a 4096² mosaic a search took 91–101 s against 1.5 s for one compress
SAMPLE_FROM_PIXELS = 8 << 20
#: the sample: this many whole tiles, spread over the raster, mosaicked into one raster the search runs on
SAMPLE_TILES = 48


def _sample_tiles(tile_rows: int, tile_cols: int, n: int) -> list[tuple[int, int]]:
    """n tiles (row, col) of a tile_rows × tile_cols grid spread over it: rows evenly, columns by the golden ratio
    (no two on one column pattern), without repeats where the grid has enough tiles."""
    total = tile_rows * tile_cols
    if n >= total:
        return [(r, c) for r in range(tile_rows) for c in range(tile_cols)]
    out, seen = [], set()
    phi = (math.sqrt(5) - 1) / 2
    k = 0
    while len(out) < n:
        r = min(int((k % n + 0.5) * tile_rows / n), tile_rows - 1)
        c = int(((k * phi) % 1.0) * tile_cols)
        if (r, c) not in seen:
            seen.add((r, c))
            out.append((r, c))
        k += 1
    return out


def _write_sample(input_path, bands, units: str, folder: str, tile: int) -> "tuple[str, int, str] | None":
    """(path, tiles, the source's units) of the sample raster of a large GDAL raster (SAMPLE_TILES of its whole tiles
    in a mosaic, its dtype, nodata, tags and band names, named as the source), or None where there is none to take.
    The units are decided on the source (`units` 'auto' as given), so that the sample is read alike."""
    import rasterio

    from sar_ae_core.io.raster import open_raster

    with open_raster(input_path, bands=bands, units=units) as r:
        if getattr(r._b, "ds", None) is None or r.width * r.height * r.count <= SAMPLE_FROM_PIXELS:
            return None
        tr, tc = r.height // tile, r.width // tile
        if tr * tc <= SAMPLE_TILES:
            return None
        picks = _sample_tiles(tr, tc, SAMPLE_TILES)
        gw = math.ceil(math.sqrt(len(picks)))
        gh = math.ceil(len(picks) / gw)
        ds = r._b.ds
        idx = list(r.band_indexes)
        out = os.path.join(folder, os.path.basename(os.fspath(input_path)))
        if not out.lower().endswith((".tif", ".tiff")):
            out += ".tif"
        prof = {"driver": "GTiff", "width": gw * tile, "height": gh * tile, "count": len(idx),
                "dtype": ds.dtypes[idx[0] - 1], "nodata": ds.nodata, "tiled": True, "blockxsize": tile,
                "blockysize": tile}
        gcps, gcp_crs = ds.gcps
        if gcps:
            prof.update(gcps=gcps, crs=gcp_crs)
        else:  # the source's pixel size and CRS (the sample is no map, but reads as georeferenced as its source)
            prof.update(transform=ds.transform, crs=ds.crs)
        with rasterio.open(out, "w", **prof) as w:
            w.update_tags(**ds.tags())
            for j, b in enumerate(idx, start=1):
                w.set_band_description(j, ds.descriptions[b - 1] or "")
                w.update_tags(j, **ds.tags(b))
                if ds.units[b - 1]:
                    w.set_band_unit(j, ds.units[b - 1])
            for k in range(gw * gh):
                row, col = picks[k % len(picks)]
                block = ds.read(idx, window=rasterio.windows.Window(col * tile, row * tile, tile, tile))
                w.write(block, window=rasterio.windows.Window((k % gw) * tile, (k // gw) * tile, tile, tile))
        return out, len(picks), r.units


@contextlib.contextmanager
def _sample_work(input_path, output_path, kwargs: dict, suffix: str):
    """The hidden work folder beside `output_path` (removed after) and, for a large raster, its sample there:
    yields (work, sample path, its tiles, the source's units, tile) — or None where the raster gets no sample
    (small, not read through GDAL, or a dtype GDAL cannot write back, e.g. CInt16)."""
    from sar_ae_core.defaults import TILE

    tile = int(kwargs.get("tile") or TILE)
    folder = os.path.dirname(os.path.abspath(os.fspath(output_path)))
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=suffix,
                                     dir=folder) as work:
        try:
            made = _write_sample(input_path, kwargs.get("bands", "all"), kwargs.get("units", "auto"), work, tile)
        except SarInputError:
            raise
        except Exception:  # noqa: BLE001 - a dtype or layout GDAL cannot write back: no sample
            made = None
        yield None if made is None else (work, *made, tile)


def _sampled_search(input_path, output_path, target_bpp: float, *, tolerance: float, overwrite: bool, prog,
                    max_passes: int, residual: bool, max_decoder_kmac, exclude_models, fitted_window: bool,
                    neighbour: bool, nominal_bpp: float, t_start: float, **kwargs) -> "dict | None":
    """`--rate` on a large raster: the whole search (rate point, gain, neighbour, residual layer, fitted range) on a
    sample of its tiles (`_write_sample`); then the choice coded on the whole raster and only its last parameter —
    the residual layer's step, or else the quantization gain — moved to the target (regula falsi, real files), so
    the rate is met as on any raster. None where the raster is not sampled (small, or not read through GDAL)."""
    import time

    from sar_ae_core.codec import LatentStore, compress_raster
    from sar_ae_core.refine import ResidualSource

    with _sample_work(input_path, output_path, kwargs, ".rate") as made:
        if made is None:
            return None
        work, sample_path, n_tiles, units, tile = made
        found = _search_rate(sample_path, os.path.join(work, "sample.sarz"), target_bpp, tolerance=tolerance,
                             overwrite=True, progress=prog.sub(0.0, 0.6).step, max_passes=max_passes,
                             residual=residual, max_decoder_kmac=max_decoder_kmac, exclude_models=exclude_models,
                             fitted_window=fitted_window, neighbour=neighbour, nominal_bpp=nominal_bpp, sample=False,
                             **{**kwargs, "bands": "all", "units": units})
        sampled = [{**p, "sample": True} for p in found["passes"]]
        passes: list[dict] = []  # the passes over the whole raster
        full = {**kwargs}
        if found.get("scaling_kind") == "fitted" and kwargs.get("scaling", "auto") == "auto":
            full["scaling"] = "source"  # the search kept the range fitted on the raster (its step 4)
        rest = prog.sub(0.6, SEARCHED)

        def next_pass():
            return _pass_progress(rest, passes, f"--rate {nominal_bpp:g}")

        def close(r) -> bool:
            return abs(r["bpp"] / target_bpp - 1) <= tolerance

        def better(a, b) -> dict:
            return a if abs(math.log(a["bpp"] / target_bpp)) < abs(math.log(b["bpp"] / target_bpp)) else b

        step = found.get("residual_step_db")
        # the latents are kept for a gain search only (a layer's step search re-codes the residual, not the latents)
        store = None if step else LatentStore(work, "full")

        def attempt(gain: float) -> dict:
            path = os.path.join(work, f"full{len(passes)}.sarz")
            r = compress_raster(input_path, path, model=found["model"], gain=gain, latent_store=store,
                                overwrite=True, progress=next_pass(), **full)
            r.update(path=path, model=found["model"], gain=gain)
            passes.append({"model": found["model"], "gain": gain, "bpp": r["bpp"]})
            return r

        best = attempt(found["gain"])
        if step:  # the layer's step to the target on the whole raster, from the sample's, by the slope it measured
            pts = sorted({(math.log(p["residual_step_db"]), math.log(p["bpp"])) for p in found["passes"]
                          if p.get("residual_step_db") and p["model"] == found["model"]
                          and p["gain"] == found["gain"]}, key=lambda q: abs(q[0] - math.log(step)))[:2]
            slope = (pts[0][1] - pts[1][1]) / (pts[0][0] - pts[1][0]) \
                if len(pts) == 2 and abs(pts[0][0] - pts[1][0]) > 0.005 else -1.0
            # each band's layer in the domain the sample chose for it (coding both on the whole raster would double
            # every pass, and the choice's jump in bytes would stall the step search)
            modes = found.get("residual_wavelet")
            with ResidualSource(best["path"], input_path, work_dir=work) as rs:
                cand = _step_search(rs, best, work, target_bpp, math.log(step), passes, max_passes,
                                    lambda r: abs(math.log(r["bpp"] / target_bpp)) < FINE, better, next_pass,
                                    context=True, slope=min(max(slope, -8.0), -0.05),
                                    wavelet=list(modes) if modes and len(modes) == rs.bands else True)
            best = cand if cand is not None else best
        else:  # the gain: regula falsi on log rate vs log gain, bracketed once both sides are seen
            from sar_ae_core.coding.latent_coding import MIN_GAIN

            g, f = found["gain"], math.log(best["bpp"] / target_bpp)
            lo = hi = None  # (log gain, f) below and above the target
            for _ in range(8):
                if close(best):
                    break
                if f < 0:
                    lo = (math.log(g), f)
                else:
                    hi = (math.log(g), f)
                if lo and hi:
                    t = min(max(lo[1] / (lo[1] - hi[1]), 0.1), 0.9)
                    lg = lo[0] + t * (hi[0] - lo[0])
                else:  # the rate grows about as fast as the gain: one step by that slope
                    lg = math.log(g) - f
                g = min(max(math.exp(lg), MIN_GAIN), MAX_GAIN)
                r = attempt(round(g, 4))
                f = math.log(r["bpp"] / target_bpp)
                best = better(r, best)
                if (lo and hi and abs(hi[0] - lo[0]) < 1e-3) or g in (MIN_GAIN, MAX_GAIN):
                    break
        with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=[input_path]) as out:
            shutil.copyfile(best["path"], out.tmp)
    best.update(output=os.fspath(output_path), target_bpp=float(target_bpp), reached=close(best),
                passes=sampled + passes,
                seconds=time.perf_counter() - t_start, sampled={"tiles": n_tiles, "tile": tile})
    best.pop("path", None)
    return best


#: from this target, uncalibrated rasters (auto scaling shifts the model's range onto them) are also searched in the
#: range fitted on the raster: its narrower window lowers the network's error floor where the residual layer leaves
#: the smooth areas to it (held-out Kerala DN, VH / VV: +0.17 / +0.16 dB at 1 bpp, +0.10 / +0.06 at 2 bpp; −0.35 /
#: −0.27 at 0.25 bpp); on calibrated rasters the fitted range lost up to 1.9 dB (W-Slovakia, BigEarthNet, RTC)
FITTED_WINDOW_FROM_BPP = 1.0


def _rmse_db(input_path, sarz_path: str, work: str) -> float:
    """RMSE (dB, over the valid pixels, as `assess` reports it) of a file's reconstruction against its source."""
    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.quality.assess import assess_rasters

    rec = os.path.join(work, "check.tif")
    reconstruct_raster(sarz_path, rec, units="db", overwrite=True)
    return float(assess_rasters(input_path, rec)["rmse_db"])


#: a residual layer is tried when the target is at least this multiple of the lowest rate point's rate on the raster
RESIDUAL_FROM = 1.25
#: the residual step search's first stage (without the layer's context mode) stops within this log-rate of the target,
#: its second within FINE (the step is continuous: a pass or two more use the bytes the target allows; stopping at
#: the 2 % tolerance left DN at 1 bpp 1.3 % below it, 0.06 dB)
ROUGH = 0.06
FINE = 0.0075


def _layer_pass(rs, base: dict, work: str, step: float, passes: list, rmse_db=None, progress=None,
                context: bool = True, reuse_modes: bool = False, wavelet: "bool | list" = True) -> dict:
    """One search pass: `base` + a residual layer of `step` written by `rs` into `work`, recorded in `passes`;
    `rmse_db(path)` measures the file (default: the layer's own RMSE over the coded pixels). `context=False`: the
    layer without its context mode (a search's first passes: faster to code, never the file kept); `reuse_modes`:
    each tile codes only the mode that won for it in the previous pass with the context mode (`ResidualSource.write`).
    Each band may get the wavelet-domain layer: a layer sized to a rate or an RMSE promises no per-pixel bound
    (`wavelet`: as `ResidualSource.write`'s)."""
    from sar_ae_core.refine import with_layer

    path = os.path.join(work, f"pass{len(passes)}.sarz")
    r = with_layer(base, rs.write(path, step, overwrite=True, progress=progress, context=context,
                                  reuse_modes=reuse_modes, wavelet=wavelet))
    r.update(path=path, rmse_db=r["residual_rmse_db"] if rmse_db is None else rmse_db(path))
    passes.append({"model": base["model"], "gain": base["gain"], "residual_step_db": step, "bpp": r["bpp"],
                   "rmse_db": r["rmse_db"], "context": context, "residual_wavelet": r.get("residual_wavelet"),
                   "band_rd": r.get("residual_band_rd")})
    return r


def _step_search(rs, base: dict, work: str, target_bpp: float, s: float, passes: list, max_passes: int, close,
                 better, next_pass, context: bool, slope: "float | None" = None, wavelet: "bool | list" = True):
    """Regula falsi on log step from log step `s` until a pass is `close` to the target (at most 10 passes);
    returns the pass nearest the target (None when the pass budget was spent). Where the target is not bracketed
    yet, the next step follows the slope of log rate against log step: `slope` (negative) for the first, then that of
    the last two passes (without `slope`, one bit per pixel per halving of the step first: at low rates the rate
    falls more slowly than that, and a search by that rule alone crept up on the target, Kerala DN at 0.25 bpp: 13
    passes). With `wavelet` True (each band's layer chosen per pass), a target bracketed by passes that chose
    differently stops the search: the rate jumps where the choice flips, and the target may lie in the jump (the pass
    returned then says "wavelet_jump": the bands' choices at both ends)."""
    from sar_ae_core.coding import residual as res
    from sar_ae_core.refine import check_step

    lo_s, hi_s = math.log(res.MIN_STEP_DB), math.log(res.MAX_STEP_DB)
    f_lo = f_hi = None  # f at the small-step (high-rate) and large-step ends
    w_lo = w_hi = None  # the bands' choices at those ends
    cand = None
    for i in range(10):
        if len(passes) >= max_passes + 10:
            break
        r = _layer_pass(rs, base, work, check_step(round(math.exp(s), 6)), passes, progress=next_pass(),
                        context=context, reuse_modes=context and i > 0, wavelet=wavelet)
        cand = r if cand is None else better(r, cand)
        f = math.log(r["bpp"] / target_bpp)
        if close(r):
            break
        if i > 0 and abs(s - prev[0]) > 1e-3:  # the secant of the last two passes
            slope = min(max((f - prev[1]) / (s - prev[0]), -8.0), -0.05)
        prev = (s, f)
        if f > 0:
            lo_s, f_lo, w_lo = s, f, r.get("residual_wavelet")
        else:
            hi_s, f_hi, w_hi = s, f, r.get("residual_wavelet")
        if wavelet is True and f_lo is not None and f_hi is not None and w_lo != w_hi:
            cand = dict(cand, wavelet_jump=[w_lo, w_hi])
            break
        if f_lo is not None and f_hi is not None:
            t = min(max(f_lo / (f_lo - f_hi), 0.1), 0.9)
            s = lo_s + t * (hi_s - lo_s)
        elif slope is not None:  # not bracketed yet: by the rate's slope against the step
            s = min(max(s - f / slope, lo_s), hi_s)
        else:  # not bracketed yet: one bit per pixel per halving
            s = min(max(s + f * r["bpp"] * math.log(2), lo_s), hi_s)
        if hi_s - lo_s < 1e-3:
            break
    return cand


#: `--max-rmse-db`'s residual step search stops at a pass this close below the target (log RMSE: 0.6 %)
RMSE_CLOSE = 0.006


#: the progress a search reports before its last step (writing the chosen file)
SEARCHED = 0.95


def _searched(n: int) -> float:
    """The fraction of a search reported after n passes: towards SEARCHED, as their number is not known in advance."""
    return SEARCHED * n / (n + 8)


def _pass_progress(prog, passes: list, label: str):
    """The progress callback for the next search pass: its slot of `_searched`, the pass's own progress (its tile
    rows) within it; the front end's Cancel raises Cancelled from inside the pass."""
    n = len(passes)
    slot = prog.sub(_searched(n), _searched(n + 1))
    slot.step(0.0, f"{label}: pass {n + 1}")
    return lambda f, m="": slot.step(f, f"{label}: pass {n + 1}" + (f", {m}" if m else ""))


def _neighbour(input_path, work, points, plain, at_unit_gain, search, best, close) -> dict:
    """`best` (a rate point at a gain other than 1, at the target) or the neighbouring point on the other side of gain
    1 searched to the target — a finer gain on the point below, or a coarser one (down to LOWEST_USEFUL_GAIN) on the
    point above — whichever has the smaller RMSE in dB; `best` gets its `rmse_db`."""
    names = [name for name, _ in points]
    i = names.index(best["model"])
    j = i - 1 if best["gain"] < 1.0 else i + 1
    if not 0 <= j < len(points):
        return best
    at_unit_gain(j)
    if (j < i) == (plain[j]["bpp"] > plain[i]["bpp"]):  # rate points out of order on this raster: nothing between
        return best
    if close(plain[j]):
        alt = plain[j]
    elif j < i:
        alt = search(j, 1.0, MAX_GAIN, plain[j]) if plain[j]["bpp"] < best["bpp"] else plain[j]
    else:
        alt = search(j, LOWEST_USEFUL_GAIN, 1.0, plain[j]) if plain[j]["bpp"] > best["bpp"] else plain[j]
    if not close(alt) or alt["model"] != names[j]:
        return best
    best.setdefault("rmse_db", _rmse_db(input_path, best["path"], work))
    alt.setdefault("rmse_db", _rmse_db(input_path, alt["path"], work))
    return alt if alt["rmse_db"] < best["rmse_db"] else best


def _try_residual(input_path, work, points, plain, at_unit_gain, best, target_bpp, tolerance, passes, max_passes,
                  close, better, next_pass=lambda: None, coarser=None) -> dict:
    """The better (smaller RMSE in dB over the coded pixels) of `best` and a residual layer sized to the target on
    each rate point whose plain rate leaves room for one. `coarser(gain)`: the lowest rate point coded at `gain`;
    where the layer on that point at gain 1 wins, or that point alone at a gain below 1 met the target, layers on it
    at RESIDUAL_BASE_GAINS are tried too."""
    from sar_ae_core.coding import residual as res
    from sar_ae_core.refine import ResidualSource

    low = at_unit_gain(0)
    # the lowest point at a gain below 1 meets the target: a layer on it at RESIDUAL_BASE_GAINS may be closer still
    lowest_coarse = best["model"] == points[0][0] and best["gain"] < 1.0 and not best.get("residual_step_db")
    if target_bpp < RESIDUAL_FROM * low["bpp"] and not (lowest_coarse and coarser is not None):
        return best
    with ResidualSource(best["path"], input_path, work_dir=work) as rs:
        best["rmse_db"] = rs.base_rmse()

    def layer_on(base):
        with ResidualSource(base["path"], input_path, work_dir=work) as rs:
            rmse0 = rs.base_rmse()
            extra = max(target_bpp - base["bpp"], 0.05)
            lo_s, hi_s = math.log(res.MIN_STEP_DB), math.log(res.MAX_STEP_DB)
            s0 = min(max(math.log(max(rmse0, 0.05) * 3.4 / 2 ** extra), lo_s), hi_s)

            def rough(wavelet, context: bool):
                return _step_search(rs, base, work, target_bpp, s0, passes, max_passes,
                                    lambda r: abs(math.log(r["bpp"] / target_bpp)) < ROUGH, better, next_pass,
                                    context=context, wavelet=wavelet)

            def search(wavelet, probe=None):
                # ~1 bit per pixel per halving of the step at high rates: start there, then regula falsi on log
                # step — first without the layer's context mode (~3× faster to code), then with it from the step
                # found (its frames are a few per cent smaller: one or two passes more)
                fast = probe or rough(wavelet, context=False)
                if fast is None:
                    return None
                f = math.log(fast["bpp"] / target_bpp)
                s = min(max(math.log(fast["residual_step_db"]) + f * fast["bpp"] * math.log(2), lo_s), hi_s)
                return _step_search(rs, base, work, target_bpp, s, passes, max_passes,
                                    lambda r: abs(math.log(r["bpp"] / target_bpp)) < FINE, better, next_pass,
                                    context=True, wavelet=wavelet)

            # every band may take the wavelet domain, so the probe codes the pixel modes with their context mode (as
            # the file will be): without it their frames are 5-10 % larger at high rates, and the choice below would
            # go to the wavelet where it loses (BigEarthNet GRD chip at 2 bpp: 0.418 dB against 0.40 in pixels)
            first = len(passes)
            probe = rough(True, context=True)
            if probe is None:
                return None
            coded_both = [p for p in passes[first:] if p.get("band_rd")]
            if not coded_both:  # a raster the wavelet mode is not for: the pixel modes as searched
                return search(True, probe)
            # each band's layer in the mode with the smaller error at the rate it gets: every probe pass coded both
            # modes, so both curves are known there. The choice pass by pass (least distortion + λ·bits, λ from the
            # pixel layer's slope at high rates) picks the pixel modes where the wavelet is better at the same
            # bytes (Kerala DN VV, test half, 0.25 bpp: 1.102 dB, against 1.086 with the choice below), and it jumps
            # in rate where it flips (a smooth 100 × 100 RTC chip at 1 bpp: 1.08 against 0.75 bpp at the same step):
            # the search is then run with the choice fixed (its rate monotone in the step again) — where the probe
            # met the jump, with each side's choice (that chip on `sarae-q2`: 1.509 dB in the pixel modes, 1.556 in
            # the wavelet domain the nearest pass had chosen)
            if probe.get("wavelet_jump"):  # the target inside the jump: each side searched, the smaller error kept
                found = None
                for forced in probe["wavelet_jump"]:
                    alt = search(list(forced)) if len(passes) < max_passes + 10 else None
                    if alt is not None and (found is None or _beats(alt, found, close, better)):
                        found = alt
                return found
            forced = _choose_modes(coded_both, probe)
            if forced == probe.get("residual_wavelet"):
                return search(forced, probe)
            return search(forced)

    contenders = [best] if close(best) else []  # every file close to the target, for the tie on edges below

    def wins(cand) -> bool:
        if cand is not None and close(cand):
            contenders.append(cand)
        return cand is not None and close(cand) and _beats(cand, best, close, better)

    # every rate point whose plain rate leaves room for a residual layer (the best split between the network and
    # the residual depends on the product: the lowest point for speckle, a higher one for multi-looked GRD)
    ratio = low["bpp"] / points[0][1]
    bases = [i for i in range(len(points)) if i == 0 or points[i][1] * ratio < target_bpp / RESIDUAL_FROM]
    for i in bases:
        if at_unit_gain(i)["bpp"] >= target_bpp / RESIDUAL_FROM:
            continue
        cand = layer_on(plain[i])
        if wins(cand):
            best = cand
    # single-look speckle: where the layer on the lowest point wins, the network's share is smaller still at a
    # coarser gain on it (held-out SLC scenes, TerraSAR-X and Sentinel-1, at 0.25 / 0.5 / 1 bpp: +0.11 … +0.18 dB
    # at gain 0.5 against gain 1, and the speckle of homogeneous areas closer to the source's)
    if coarser is not None and len(passes) < max_passes and (lowest_coarse or (
            best.get("residual_step_db") and best["model"] == points[0][0] and best["gain"] == 1.0)):
        # smooth products (a band's layer in the wavelet domain won): a finer gain instead — the network's share
        # larger (Kerala DN validation half at 0.25 bpp, VH / VV: RMSE 0.972 / 1.151 dB at gain 1.5 against 0.986 /
        # 1.164 at gain 1, 1.002 at 0.5; at 0.5 bpp gain 1 stays best)
        smooth = best.get("residual_step_db") and any(best.get("residual_wavelet") or ())
        if smooth and target_bpp >= FINER_BELOW_BPP:
            return _edges_break_the_tie(best, contenders, input_path, work)
        for gain in RESIDUAL_FINER_GAINS if smooth else RESIDUAL_BASE_GAINS:  # the next only where one did not win
            base = coarser(gain)
            cand = layer_on(base) if base["bpp"] * RESIDUAL_FROM <= target_bpp else None
            if wins(cand):
                best = cand
                break
            if len(passes) >= max_passes:
                break
    return _edges_break_the_tie(best, contenders, input_path, work)


def _beats(a: dict, b: dict, close, better) -> bool:
    """Whether search result `a` is the better file than `b`: the smaller RMSE where both are `close` to the target,
    the close one where one is, else the one nearer the target (`better`)."""
    if close(a) and close(b):
        return a["rmse_db"] < b["rmse_db"]
    if close(a) or close(b):
        return close(a)
    return better(a, b) is a


def _edges_break_the_tie(best: dict, contenders: list, input_path, work: str) -> dict:
    """`best`, or of the files within RMSE_TIE of its RMSE the one whose edges are closest to the source's (the
    EPI of `quality.metrics`, mean over the bands): RMSE cannot tell such files apart, an analyst's edges can (a
    100 × 100 OPERA RTC chip at 1 bpp: `sarae-q1` and `sarae-q2`, each with a residual layer, 0.0001 dB apart in
    RMSE, EPI 0.910 and 0.925). Only on rasters up to TIE_PIXELS (each file decoded whole)."""
    import numpy as np
    import rasterio

    from sar_ae_core.codec import reconstruct_raster
    from sar_ae_core.coding.sarz import SarzFile
    from sar_ae_core.io.raster import open_raster
    from sar_ae_core.quality import metrics as M
    from sar_ae_core.scaling import raw_to_db, valid_mask

    tied = [c for c in contenders if c is not best and c.get("rmse_db") is not None and best.get("rmse_db")
            and c["rmse_db"] <= best["rmse_db"] * (1 + RMSE_TIE) and c.get("path") and os.path.exists(c["path"])]
    if not tied or not best.get("path") or not os.path.exists(best["path"]):
        return best
    with SarzFile(best["path"]) as f:
        src = f.header["source"]
    if int(src["width"]) * int(src["height"]) * len(src["bands"]) > TIE_PIXELS:
        return best
    with open_raster(input_path, bands=src["bands"], units=src["units"]) as r:
        raw = r.read()
        ok = valid_mask(raw, r.units, r.nodata)
        ref = raw_to_db(np.where(ok, raw, 1), r.units)

    def edges(c) -> float:
        tif = os.path.join(work, "tie.tif")
        reconstruct_raster(c["path"], tif, units="db", overwrite=True, output_compress="none")
        with rasterio.open(tif) as ds:
            rec = ds.read().astype(np.float64)
        vals = [M.epi(ref[b], rec[b], ok[b]) for b in range(ref.shape[0])]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else -1.0

    return max([best] + tied, key=edges)


#: files whose RMSE in dB is within this share of the best one's are tied (`_edges_break_the_tie`) …
RMSE_TIE = 0.002
#: … on rasters of up to this many pixels (all bands)
TIE_PIXELS = 4_000_000


def _choose_modes(coded_both: list, probe: dict) -> list:
    """Per band, whether its layer is coded in the wavelet domain: the choice of the probe's pass nearest the target
    (least distortion + λ·bits at its step), unless the other mode has at least SWITCH_MARGIN less squared error at
    the bytes the band gets there — each mode's log error against log bytes interpolated between two passes (of those
    in `coded_both`, which coded both modes) at most SWITCH_SPAN apart in bytes: further apart, the curve's bend
    makes the estimate as uncertain as the difference (Sentinel-1 SLC Shanghai at 0.25 bpp, across 206 … 2737 bytes:
    2.07 against 2.15 estimated, 2.20 coded)."""
    near = min(coded_both, key=lambda p: abs(math.log(p["bpp"] / probe["bpp"])))
    out = []
    for b in range(len(near["band_rd"])):
        mine = "wavelet" if near["residual_wavelet"][b] else "pixel"
        other = "pixel" if mine == "wavelet" else "wavelet"
        nbytes, err = near["band_rd"][b][mine]
        pts = sorted({p["band_rd"][b][other] for p in coded_both if p["band_rd"][b].get(other)})
        est = None
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= nbytes <= x1 and 0 < x0 and x1 <= SWITCH_SPAN * x0 and y0 > 0 and y1 > 0:
                t = 0.0 if x1 == x0 else math.log(nbytes / x0) / math.log(x1 / x0)
                est = math.exp(math.log(y0) + t * math.log(y1 / y0))
        switch = est is not None and est < (1 - SWITCH_MARGIN) * err
        out.append((other if switch else mine) == "wavelet")
    return out


#: `_choose_modes` switches a band's layer to the other mode only where that saves this share of the squared error
#: (0.13 dB) …
SWITCH_MARGIN = 0.03
#: … estimated between two passes at most this far apart in bytes
SWITCH_SPAN = 2.5


#: the quantization gains of the lowest rate point under a residual layer, tried in turn where the layer on it at
#: gain 1 wins (or the point alone at a gain below 1 met the target)
RESIDUAL_BASE_GAINS = (0.5, 0.7)
#: … and those tried instead where that layer is in the wavelet domain (smooth products)
RESIDUAL_FINER_GAINS = (1.5,)
#: … below this rate only (at 0.5 bpp the layer at gain 1 kept its lead: nothing to try; the search's target is the
#: nominal one less the post-filter's bytes)
FINER_BELOW_BPP = 0.45


def search_summary(res: dict) -> str:
    """One line about how --rate was met (for the CLI and the QGIS log)."""
    how = f"rate point {res['model']}" + (f" at quantization gain {res['gain']:.3f}" if res["gain"] != 1.0 else "")
    if res.get("residual_step_db"):
        how += f" + residual layer (step {res['residual_step_db']:.3g} dB)"
    if res.get("post_filter"):
        how += f" + post-filter ({res['post_filter']})"
    note = "" if res["reached"] else " (outside what the bundled rate points reach: the closest was written)"
    passes = f"{len(res['passes'])} pass(es)"
    if res.get("sampled"):
        whole = len([p for p in res["passes"] if not p.get("sample")])
        passes += f" ({len(res['passes']) - whole} on a sample of {res['sampled']['tiles']} tiles, {whole} on the whole raster)"
    return (f"--rate {res['target_bpp']:g}: {res['bpp']:.4f} bits per pixel "
            f"({100 * (res['bpp'] / res['target_bpp'] - 1):+.1f} %) with {how}, {passes}{note}")


def compress_to_rmse(input_path, output_path, max_rmse_db: float, *, overwrite: bool = False, progress=None,
                     max_passes: int = 12, residual: bool = True, max_decoder_kmac: "float | None" = None,
                     exclude_models=(), sample: bool = True, **kwargs) -> dict:
    """compress_raster with the fewest bytes whose reconstruction stays within `max_rmse_db` of the source (RMSE in
    dB over the valid pixels, as `assess` reports it): each candidate is compressed, decoded and measured. The rate
    points are tried from the lowest rate up; on the first that meets the target the quantization gain is lowered
    as far as the target allows (bisection), above the top point it is raised. `residual`: also a residual layer on
    a rate point that misses the target, its step as large as the target allows (any error is reachable that way);
    the smallest file that meets the target wins. A target no candidate meets is an input error naming the best
    RMSE reached (nothing is written). `max_decoder_kmac`: as for compress_to_rate."""
    from sar_ae_core.codec import LatentStore, compress_raster

    if not (isinstance(max_rmse_db, (int, float)) and math.isfinite(max_rmse_db) and max_rmse_db > 0):
        raise SarInputError(None, f"--max-rmse-db must be a positive number of dB (got {max_rmse_db})")
    for key in ("model", "bundle", "gain", "latent_store"):
        if kwargs.get(key) is not None:
            raise SarInputError(None, f"--max-rmse-db chooses the model and quantization itself: drop '{key}'")
        kwargs.pop(key, None)
    # every pass is measured as written: a post-filter would need a decode and a fit per pass (not done)
    if kwargs.get("post_filter", "off") not in ("off", "auto"):
        raise SarInputError(None, "--max-rmse-db writes no post-filter: drop --post-filter")
    kwargs["post_filter"] = "off"
    import time

    t_start = time.perf_counter()
    check_output_path(output_path, overwrite, [input_path])
    prog = Progress(progress)
    points = _rate_points(max_decoder_kmac, exclude_models)
    if sample:  # a large raster: the search on a sample of its tiles, then the choice checked on the whole raster
        sampled = _sampled_rmse(input_path, output_path, max_rmse_db, overwrite=overwrite, prog=prog,
                                max_passes=max_passes, residual=residual, max_decoder_kmac=max_decoder_kmac,
                                exclude_models=exclude_models, t_start=t_start, **kwargs)
        if sampled is not None:
            return sampled
    folder = os.path.dirname(os.path.abspath(os.fspath(output_path)))
    passes: list[dict] = []
    def next_pass():
        return _pass_progress(prog, passes, "--max-rmse-db")

    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".rmse",
                                     dir=folder) as work:
        stores: dict = {}

        def attempt(i: int, gain: float) -> dict:
            path = os.path.join(work, f"pass{len(passes)}.sarz")
            stores.setdefault(i, LatentStore(work, f"m{i}"))
            res = compress_raster(input_path, path, model=points[i][0], gain=gain, latent_store=stores[i],
                                  overwrite=True, progress=next_pass(), **kwargs)
            res.update(path=path, model=points[i][0], gain=gain, rmse_db=_rmse_db(input_path, path, work))
            passes.append({"model": res["model"], "gain": gain, "bpp": res["bpp"], "rmse_db": res["rmse_db"]})
            return res

        ok = lambda r: r["rmse_db"] <= max_rmse_db  # noqa: E731
        best = None
        pick = None
        unit: dict = {}
        for i in range(len(points)):
            unit[i] = res = attempt(i, 1.0)
            if ok(res):
                best, pick = res, i
                break
        if best is not None:  # as coarse a gain as the target allows on that rate point
            lo, hi = (COARSEST_USEFUL_GAIN if pick > 0 else LOWEST_USEFUL_GAIN), 1.0
        else:  # finer than the top rate point
            lo, hi = 1.0, MAX_GAIN
            pick = len(points) - 1
            res = attempt(pick, hi)
            if ok(res):
                best = res
        # bisection on log gain: the error falls as the gain rises; `hi` always meets the target
        while best is not None and len(passes) < max_passes and hi / lo > 1.05:
            g = math.sqrt(lo * hi)
            res = attempt(pick, g)
            if ok(res):
                hi = g
                if res["bytes"] < best["bytes"]:
                    best = res
            else:
                lo = g
        # a residual layer on a rate point that misses the target (the lowest, and the one below the pick): any
        # error can be reached that way, often in fewer bytes
        if residual and float(kwargs.get("escape_step_db", 1.0) or 0) > 0:
            for i in sorted({0, max(pick - 1, 0)} if pick is not None else {0}):
                if ok(unit[i]):
                    continue
                cand = _residual_for_rmse(input_path, work, unit[i], max_rmse_db, passes, next_pass)
                if cand is not None and (best is None or cand["bytes"] < best["bytes"]):
                    best = cand
        if best is None:
            reached = min(p["rmse_db"] for p in passes)
            raise SarInputError(None, f"--max-rmse-db {max_rmse_db:g}: the bundled rate points reach "
                                      f"{reached:.3f} dB at best; ask for a larger error")
        with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=[input_path]) as out:
            shutil.copyfile(best["path"], out.tmp)
    best.update(output=os.fspath(output_path), max_rmse_db=float(max_rmse_db), passes=passes,
                seconds=time.perf_counter() - t_start)
    best.pop("path", None)
    return best


def _residual_for_rmse(input_path, work, base: dict, max_rmse_db: float, passes: list, next_pass=lambda: None,
                       max_tries: int = 10, start_step: "float | None" = None, slope: float = 1.0):
    """The smallest file of `base` + a residual layer whose reconstruction is within `max_rmse_db` (RMSE in dB over
    the valid pixels, measured by assess): the largest step that meets it, by regula falsi on log step against log
    RMSE (the error rises with the step), bracketed; None if even the finest step misses.

    The layer's error depends on its step, not on how its symbols are coded (bin centroids per table aside), so the
    search codes the layer without the context mode (~3× faster); the step found is then coded with every mode and
    measured again, and that file is kept where it meets the target in fewer bytes."""
    from sar_ae_core.coding import residual as res
    from sar_ae_core.refine import ResidualSource

    def measured(path: str) -> float:
        return _rmse_db(input_path, path, work)

    best = None
    with ResidualSource(base["path"], input_path, work_dir=work) as rs:
        def attempt(step: float, context: bool) -> dict:
            return _layer_pass(rs, base, work, step, passes, measured, progress=next_pass(), context=context)

        lo, hi = math.log(res.MIN_STEP_DB), math.log(res.MAX_STEP_DB)  # lo meets the target, hi does not (assumed)
        f_lo = f_hi = None  # log(RMSE / target) at lo and hi once measured
        # uniform quantization: RMSE ~ step / sqrt(12) (or where a search on a sample of the raster ended)
        s = min(max(math.log(start_step or max_rmse_db / 0.29), lo), hi)
        seen: list = []  # (log step, f) of the passes so far
        for _ in range(max_tries):
            r = attempt(round(math.exp(s), 6), context=False)
            f = math.log(max(r["rmse_db"], 1e-9) / max_rmse_db)
            if seen and abs(s - seen[-1][0]) > 1e-3:  # the slope the raster shows, once two steps were measured
                slope = min(max((f - seen[-1][1]) / (s - seen[-1][0]), 0.05), 2.0)
            seen.append((s, f))
            if f <= 0:
                if best is None or r["bytes"] < best["bytes"]:
                    best = r
                lo, f_lo = s, f
                if f > -RMSE_CLOSE:  # this close below the target a larger step gains little
                    break
            else:
                hi, f_hi = s, f
            if hi - lo < math.log(1.03):
                break
            if f_lo is not None and f_hi is not None:  # bracketed: the secant, kept inside the bracket
                t = min(max(f_lo / (f_lo - f_hi), 0.1), 0.9)
                s = lo + t * (hi - lo)
            elif f_lo is not None:  # only below the target yet: log error grows `slope` × as fast as log step
                s = min(lo - f_lo / slope, hi - 0.01)
            else:  # only above it
                s = max(hi - f_hi / slope - 0.05, lo + 0.01)
        if best is not None:
            full = attempt(best["residual_step_db"], context=True)
            if full["rmse_db"] <= max_rmse_db and full["bytes"] < best["bytes"]:
                best = full
    return best


def _sampled_rmse(input_path, output_path, max_rmse_db: float, *, overwrite: bool, prog, max_passes: int,
                  residual: bool, max_decoder_kmac, exclude_models, t_start: float, **kwargs) -> "dict | None":
    """`--max-rmse-db` on a large raster (as `_sampled_search`): the search on a sample of its tiles; then the choice
    coded on the whole raster and measured there, and its last parameter moved until the whole raster meets the
    target — the residual layer's step from the sample's (`_residual_for_rmse`), or else a finer quantization gain
    where the whole raster misses it and a coarser one while it keeps it. Where the gain cannot be made to meet it
    in a few passes, the search over the whole raster (never a file that misses the target). None where the raster
    is not sampled."""
    import time

    from sar_ae_core.codec import LatentStore, compress_raster

    with _sample_work(input_path, output_path, kwargs, ".rmse") as made:
        if made is None:
            return None
        work, sample_path, n_tiles, units, tile = made
        try:
            found = compress_to_rmse(sample_path, os.path.join(work, "sample.sarz"), max_rmse_db, overwrite=True,
                                     progress=prog.sub(0.0, 0.6).step, max_passes=max_passes, residual=residual,
                                     max_decoder_kmac=max_decoder_kmac, exclude_models=exclude_models,
                                     sample=False,
                                     **{**kwargs, "bands": "all", "units": units})
        except SarInputError:
            return None  # the sample cannot meet it: the search over the whole raster says so, or finds a way
        sampled = [{**p, "sample": True} for p in found["passes"]]
        passes: list[dict] = []
        rest = prog.sub(0.6, SEARCHED)

        def next_pass():
            return _pass_progress(rest, passes, "--max-rmse-db")

        step = found.get("residual_step_db")
        store = None if step else LatentStore(work, "full")

        def attempt(gain: float) -> dict:
            path = os.path.join(work, f"full{len(passes)}.sarz")
            r = compress_raster(input_path, path, model=found["model"], gain=gain, latent_store=store,
                                overwrite=True, progress=next_pass(), **kwargs)
            # a layer's base is measured by the layer's search (`ResidualSource.base_rmse`), not decoded here
            r.update(path=path, model=found["model"], gain=gain,
                     rmse_db=None if step else _rmse_db(input_path, path, work))
            passes.append({"model": found["model"], "gain": gain, "bpp": r["bpp"], "rmse_db": r["rmse_db"]})
            return r

        first = attempt(found["gain"])
        best = None
        if step:  # from the sample's step, with the slope of log RMSE against log step its last passes measured
            pts = sorted({(math.log(p["residual_step_db"]), math.log(p["rmse_db"])) for p in found["passes"]
                          if p.get("residual_step_db") and not p.get("context") and p["model"] == found["model"]
                          and p["gain"] == found["gain"] and p.get("rmse_db")},
                         key=lambda q: abs(q[0] - math.log(step)))[:2]
            slope = (pts[0][1] - pts[1][1]) / (pts[0][0] - pts[1][0]) \
                if len(pts) == 2 and abs(pts[0][0] - pts[1][0]) > 0.01 else 1.0
            best = _residual_for_rmse(input_path, work, first, max_rmse_db, passes, next_pass, start_step=step,
                                      slope=min(max(slope, 0.05), 2.0))
        else:  # regula falsi on log gain against log RMSE (the error falls as the gain rises), at most 5 passes
            g, r = found["gain"], first
            lowest = _rate_points(max_decoder_kmac, exclude_models)[0][0] == found["model"]
            floor = LOWEST_USEFUL_GAIN if lowest else min(COARSEST_USEFUL_GAIN, found["gain"])
            met = miss = None  # (log gain, log RMSE / target)
            for k in range(6):
                f = math.log(max(r["rmse_db"], 1e-9) / max_rmse_db)
                if f <= 0:
                    if best is None or r["bytes"] < best["bytes"]:
                        best = r
                    met = (math.log(g), f)
                    if f > -RMSE_CLOSE:
                        break
                else:
                    miss = (math.log(g), f)
                if met and miss:
                    if abs(met[0] - miss[0]) < math.log(1.01):
                        break
                    t = min(max(miss[1] / (miss[1] - met[1]), 0.1), 0.9)
                    lg = miss[0] + t * (met[0] - miss[0])
                else:  # the error falls about as fast as the gain rises
                    lg = math.log(g) + f
                if k == 5:
                    break
                g = min(max(math.exp(lg), floor), MAX_GAIN)
                r = attempt(round(g, 4))
        if best is None:  # the whole raster missed where its sample met the target
            return None
        with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=[input_path]) as out:
            shutil.copyfile(best["path"], out.tmp)
    best.update(output=os.fspath(output_path), max_rmse_db=float(max_rmse_db), passes=sampled + passes,
                seconds=time.perf_counter() - t_start, sampled={"tiles": n_tiles, "tile": tile})
    best.pop("path", None)
    return best
