"""Encoder side of the residual layer (`coding/residual.py`): a `.sarz` file whose mask chunks also carry the
quantized difference between the source and the file's own reconstruction.

`add_residual_layer(base, source, out, step)`: the base file is decoded once (exactly as `reconstruct` will
decode it: same networks, same units of work) into a temporary dB GeoTIFF; then, tile by tile in chunk order,
the source's dB values (the same conversion as compress) minus that reconstruction are quantized and coded, and
a new container is written with the base's latent chunks unchanged. Memory: one tile row of the source and of the
reconstruction at a time. `ResidualSource` keeps the decoded base (and the source's dB tiles, for rasters that fit
in memory) so that rate control can try several steps on one base for the cost of the residual coding alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from sar_ae_core.coding import escapes as esc
from sar_ae_core.coding import residual as res
from sar_ae_core.coding.container import ContainerWriter
from sar_ae_core.coding.sarz import SarzFile, _chunk_id
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.output import AtomicOutput, check_output_path

#: rasters up to this many pixels keep their residuals in memory between rate-control passes
CACHE_PIXELS = 16_000_000
#: the forward transform of a strip of a band's rows equals the whole band's on the strip's rows at least this far
#: (pixels, a multiple of the wavelet's ALIGN) from the strip's ends, wherever those are not the band's (two levels
#: of CDF 9/7 lifting reach 12 rows; tested bit for bit)
FORWARD_MARGIN = 16


def check_step(step_db) -> float:
    """A valid residual step (dB) or the option error."""
    if isinstance(step_db, bool) or not isinstance(step_db, (int, float)) or \
            not res.MIN_STEP_DB <= float(step_db) <= res.MAX_STEP_DB:
        raise SarInputError(None, f"--residual-step must be a step in dB from {res.MIN_STEP_DB:g} to "
                                  f"{res.MAX_STEP_DB:g} (got {step_db})")
    return float(step_db)


class BandWavelet:
    """One band's wavelet-domain layer (`coding/wavelet.py`), streamed tile row by tile row: `push` the band's rows
    of each tile row in order (coded pixels and their residual in dB, 0 elsewhere), then `result()` gives every
    tile's frame and squared error (dB², over its coded pixels) and the bytes. The forward transform runs on strips
    of rows reaching FORWARD_MARGIN beyond the tile row (the band's mirrored padding at its end), the inverse on
    strips of the dequantized coefficients reaching wavelet.HALO beyond — the coefficients and the reconstruction
    are bit for bit those of the whole band's transforms, which the decoder's windows give too. Memory: a few tile
    rows of the band's width."""

    def __init__(self, plan, step: float, blocks: dict):
        from sar_ae_core.coding import wavelet

        self.p, self.step, self.blocks, self.wv = plan, float(step), blocks, wavelet
        self.ph, self.pw = wavelet.padded((plan.height, plan.width))
        self.db = np.zeros((0, self.pw))           # residual dB rows [db0, …) (0 where not coded), padded columns
        self.coded = np.zeros((0, plan.width), bool)
        self.db0 = 0
        self.deq = np.zeros((0, self.pw))          # dequantized coefficients (steps) of the coded tile rows
        self.deq0 = 0
        self.next_code = self.next_inverse = 0
        self.frames, self.sq, self.nbytes = {}, {}, 0

    def _rows(self, tr: int) -> tuple[int, int]:
        """The coefficient rows tile row `tr` owns (the last one also the band's padding)."""
        return tr * self.p.tile, (self.ph if tr == self.p.tile_rows - 1 else (tr + 1) * self.p.tile)

    def push(self, coded: np.ndarray, resid_db: np.ndarray) -> None:
        """The next tile row's rows of the band (coded pixels, their residual dB)."""
        x = np.pad(resid_db, ((0, 0), (0, self.pw - resid_db.shape[1])), mode="symmetric")
        self.db = np.concatenate([self.db, x])
        self.coded = np.concatenate([self.coded, coded])
        done = self.db0 + len(self.db) >= self.p.height
        if done and self.ph > self.p.height:  # the band's mirrored padding (`wavelet.analyse`)
            self.db = np.pad(self.db, ((0, self.ph - self.p.height), (0, 0)), mode="symmetric")
        self._advance(done)

    def _advance(self, done: bool) -> None:
        M, H = FORWARD_MARGIN, self.wv.HALO
        end = self.db0 + len(self.db)
        while self.next_code < self.p.tile_rows:
            r0, r1 = self._rows(self.next_code)
            if not (done or r1 + M <= end):
                break
            a, b = max(0, r0 - M), min(self.ph, r1 + M)
            y = self.wv.forward(self.db[a - self.db0:b - self.db0] / self.step)[r0 - a:r1 - a]
            deq = np.zeros_like(y)
            for tc in range(self.p.tile_cols):
                _, _, c0, c1 = self.blocks[(self.next_code, tc)]
                frame, deq[:, c0:c1] = res.encode_wavelet(y[:, c0:c1], r0, c0)
                self.frames[(self.next_code, tc)] = frame
                self.nbytes += len(frame)
            self.deq = np.concatenate([self.deq, deq])
            self.next_code += 1
        coded_end = self.deq0 + len(self.deq)
        while self.next_inverse < self.next_code:
            tr = self.next_inverse
            r0, r1 = self._rows(tr)
            if not (coded_end >= min(self.ph, r1 + H)):
                break
            a, b = max(0, r0 - H), min(self.ph, r1 + H)
            h = min(r1, self.p.height) - r0
            # what the decoder reconstructs: float32 dB of the inverse transform
            back = (self.wv.inverse(self.deq[a - self.deq0:b - self.deq0])[r0 - a:r0 - a + h, :self.p.width]
                    * self.step).astype(np.float32)
            err = (self.db[r0 - self.db0:r0 - self.db0 + h, :self.p.width] - back.astype(np.float64)) ** 2
            err = np.where(self.coded[r0 - self.db0:r0 - self.db0 + h], err, 0.0)
            for tc in range(self.p.tile_cols):
                self.sq[(tr, tc)] = float(err[:, tc * self.p.tile:(tc + 1) * self.p.tile].sum())
            self.next_inverse += 1
        # rows no strip needs any more
        keep_db = min(self.next_code * self.p.tile - M, self.next_inverse * self.p.tile)
        keep_db = max(self.db0, min(keep_db, self.db0 + len(self.db)))
        self.db, self.coded = self.db[keep_db - self.db0:], self.coded[keep_db - self.db0:]
        self.db0 = keep_db
        keep_deq = max(self.deq0, min(self.next_inverse * self.p.tile - H, coded_end))
        self.deq = self.deq[keep_deq - self.deq0:]
        self.deq0 = keep_deq

    def result(self) -> dict:
        """{"frames": {(tile row, tile col): frame}, "sq": {…: squared error}, "bytes": total frame bytes}."""
        if self.next_inverse < self.p.tile_rows:
            raise ValueError("the band's tile rows were not all pushed")
        return {"frames": self.frames, "sq": self.sq, "bytes": self.nbytes}


class ResidualSource:
    """A base `.sarz` file with its decoded reconstruction and the source it was made from: the residual of any
    tile, for coding residual layers of several steps. Use as a context manager (it owns a temporary folder)."""

    def __init__(self, base_path, input_path, *, bundle=None, work_dir: Optional[str] = None):
        from sar_ae_core.codec import reconstruct_raster

        self.base_path, self.input_path = os.fspath(base_path), os.fspath(input_path)
        self._tmp = tempfile.mkdtemp(prefix=".residual.", dir=work_dir or os.path.dirname(
            os.path.abspath(self.base_path)))
        try:
            with SarzFile(self.base_path) as f:
                if f.postfilter is not None:
                    raise SarInputError(self.base_path, "has a post-filter: a residual layer goes on the file without "
                                                        "one (compress it with --post-filter off)")
                if f.mask_id != esc.ESCAPE_MASK_ID:
                    raise SarInputError(self.base_path, "a residual layer needs a file with escapes "
                                                        "(compress with --escape-step > 0)")
                self.header = f.header
                self.plan, self.bands, self.scaling = f.plan, f.bands, f.scaling
                self.n_chunks = f.reader.chunk_count
            self.recon = os.path.join(self._tmp, "base_db.tif")
            reconstruct_raster(self.base_path, self.recon, units="db", bundle=bundle, output_compress="none")
            p = self.plan
            self._cache = {} if p.width * p.height * self.bands <= CACHE_PIXELS else None
            self._kinds: dict = {}  # what each tile's layer was coded with in the last write with the context mode
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def tile_rows(self):
        """Per tile row: a list over (tile col, band) in chunk order of (valid, coded, residual dB) — coded = the
        valid pixels that are not escapes."""
        import rasterio

        from sar_ae_core.io.raster import Window, open_raster

        p, src = self.plan, self.header["source"]
        with SarzFile(self.base_path) as f, rasterio.open(self.recon) as rec, \
                open_raster(self.input_path, bands=src["bands"], units=src["units"]) as r:
            if (r.width, r.height, r.count) != (p.width, p.height, self.bands):
                raise SarInputError(self.input_path, "is not the raster the base file was made from")
            for tr in range(p.tile_rows):
                if self._cache is not None and tr in self._cache:
                    yield tr, self._cache[tr]
                    continue
                y0, y1 = tr * p.tile, min((tr + 1) * p.tile, p.height)
                raw = r.read(Window(0, y0, p.width, y1 - y0))
                _, _, db = self.scaling.forward_db(raw, r.units, r.nodata)
                base = rec.read(window=Window(0, y0, p.width, y1 - y0).to_rasterio()).astype(np.float64)
                row = []
                for tc in range(p.tile_cols):
                    x0, x1 = tc * p.tile, min((tc + 1) * p.tile, p.width)
                    for b in range(self.bands):
                        valid, escaped = f.mask_and_escapes(tr, tc, b)
                        coded = valid if escaped is None else valid & np.isnan(escaped)
                        resid = np.where(coded, db[b, :, x0:x1] - base[b, :, x0:x1], 0.0).astype(np.float32)
                        row.append((coded, resid))
                if self._cache is not None:
                    self._cache[tr] = row
                yield tr, row

    def base_rmse(self) -> float:
        """RMSE (dB) of the base file's reconstruction over the coded pixels."""
        sq, n = 0.0, 0
        for _, row in self.tile_rows():
            for coded, resid in row:
                sq += float(np.sum(resid[coded].astype(np.float64) ** 2))
                n += int(coded.sum())
        return float(np.sqrt(sq / max(n, 1)))

    def write(self, output_path, step_db: float, *, overwrite: bool = False, inputs=(), progress=None,
              deadzone: float = res.DEADZONE, context: bool = True, reuse_modes: bool = False,
              wavelet: "bool | list" = False) -> dict:
        """The base file with a residual layer of step `step_db` as `output_path`; returns rate facts. `context`:
        the residual frames may use the context mode (`residual.encode_residual`; off: faster, a few % larger).
        `reuse_modes`: each tile tries only the mode that won for it in this source's last write with the context
        mode (and the plain mode) — about half the coding time, for a search's passes at nearby steps. `wavelet`:
        each band is also coded in the wavelet domain (`coding/wavelet.py`, streamed: any raster size) and gets
        whichever layer has the least distortion + λ·bits; a wavelet band's error is bounded in RMSE, not pixel by
        pixel (the header says which bands, `info` too), so only layers sized to a rate or an RMSE use it. A list of
        one bool per band forces the choice (a rate search that the choice's jump in bytes would not let converge)."""
        from sar_ae_core.progress import Progress

        step = round(check_step(step_db), 4)  # the header's (short) value is the one coded with
        prog = Progress(progress)
        header = dict(self.header)
        header["mask"] = {**self.header["mask"], "id": res.RESIDUAL_MASK_ID, "residual_db": step}
        p = self.plan
        kinds: dict = {}  # (tile row, chunk of the row) -> the frame kind each tile's layer was coded with
        n_coded = 0
        residual_bytes = 0
        sq_err = 0.0

        def pixel_frame(tr, k, coded, resid):
            """(frame, squared error in dB²) of one tile's layer in the pixel modes."""
            hint = self._kinds.get((tr, k)) if reuse_modes and context else None
            rframe, back = res.encode_residual(resid, coded, step, deadzone, with_values=True, context=context,
                                               hint=hint)
            if context:
                kinds[(tr, k)] = res.frame_kind(rframe)
            # the decoder's float32 values (the encoder computes them in float64)
            err = float(np.sum((resid[coded].astype(np.float64) - back.astype(np.float32)) ** 2)) if rframe else 0.0
            return rframe, err

        force = list(wavelet) if isinstance(wavelet, (list, tuple)) else None
        chosen = self._wavelet_bands(step, pixel_frame, force) if (any(force) if force is not None else wavelet) \
            else None
        if chosen is not None and any(chosen["wavelet"]):
            header["mask"]["residual_wavelet"] = [int(v) for v in chosen["wavelet"]]
        with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=inputs) as out, \
                open(out.tmp, "wb") as fh, SarzFile(self.base_path) as f:
            writer = ContainerWriter(fh, header)
            for tr, row in self.tile_rows():
                k = 0
                for tc in range(p.tile_cols):
                    for b in range(self.bands):
                        writer.add(f.reader.chunk(_chunk_id(p, self.bands, tr, tc, b, 0)), "latents")
                        mask_part, frame = esc.split_mask_chunk_bytes(
                            f.reader.chunk(_chunk_id(p, self.bands, tr, tc, b, 1)))
                        coded, resid = row[k]
                        if chosen is not None:
                            rframe, err = chosen["frames"][(tr, k)]
                        else:
                            rframe, err = pixel_frame(tr, k, coded, resid)
                        k += 1
                        residual_bytes += len(rframe)
                        n_coded += int(coded.sum())
                        sq_err += err
                        writer.add(res.encode_chunk(mask_part, frame, rframe), "masks")
                prog.step((tr + 1) / p.tile_rows, f"coding the residual layer, tile row {tr + 1}/{p.tile_rows}")
            sizes = writer.finish()
        if context:
            self._kinds = kinds
        nbytes = os.path.getsize(output_path)
        pixels = p.width * p.height * self.bands
        return {"output": os.fspath(output_path), "bytes": nbytes, "bpp": nbytes * 8 / pixels, "pixels": pixels,
                "parts": sizes, "residual_step_db": step, "residual_bytes": residual_bytes,
                "residual_rmse_db": float(np.sqrt(sq_err / max(n_coded, 1))),
                "residual_wavelet": list(chosen["wavelet"]) if chosen is not None else [False] * self.bands,
                "residual_band_rd": chosen["rd"] if chosen is not None else None}

    def _wavelet_bands(self, step: float, pixel_frame, force=None) -> dict:
        """Every tile's frame and squared error (dB²) of the layer of `step`, each band coded both in the pixel modes
        (`pixel_frame`) and in the wavelet domain and given the one with the least distortion + λ·bits (λ = 2·ln 2
        times the pixel layer's mean squared error, the slope of its rate-distortion curve), or as `force` says:
        {"frames": {(tile row, chunk of the row): (frame, error)}, "wavelet": [bool per band], "rd": per band
        {"pixel": (bytes, squared error), "wavelet": (bytes, squared error), "n": coded pixels}}. One pass over the
        tile rows: each band's transform is streamed (`BandWavelet`), so memory follows the raster's width."""
        p = self.plan
        with SarzFile(self.base_path) as f:
            blocks = {(tr, tc): f.wavelet_block(tr, tc) for tr in range(p.tile_rows) for tc in range(p.tile_cols)}
        wants_pixel = [force is None or not force[b] for b in range(self.bands)]
        streams = [BandWavelet(p, step, blocks) if force is None or force[b] else None for b in range(self.bands)]
        pixel: dict = {}
        d_pixel, bytes_pixel, n = [0.0] * self.bands, [0] * self.bands, [0] * self.bands
        for tr, row in self.tile_rows():
            for b in range(self.bands):
                tiles = [row[tc * self.bands + b] for tc in range(p.tile_cols)]
                for tc, (coded, resid) in enumerate(tiles):
                    n[b] += int(coded.sum())
                    if wants_pixel[b]:
                        k = tc * self.bands + b
                        pixel[(tr, k)] = pixel_frame(tr, k, coded, resid)
                        d_pixel[b] += pixel[(tr, k)][1]
                        bytes_pixel[b] += len(pixel[(tr, k)][0])
                if streams[b] is not None:
                    streams[b].push(np.concatenate([c for c, _ in tiles], 1),
                                    np.concatenate([np.where(c, r, 0.0) for c, r in tiles], 1).astype(np.float64))
        frames, flags, rd = {}, [], []
        for b in range(self.bands):
            if streams[b] is None:  # forced into the pixel modes
                flags.append(False)
                rd.append({"pixel": (bytes_pixel[b], d_pixel[b]), "wavelet": None, "n": n[b]})
                frames.update({key: v for key, v in pixel.items() if key[1] % self.bands == b})
                continue
            wv = streams[b].result()
            sq_total = float(sum(wv["sq"].values()))
            lam = 2 * np.log(2) * d_pixel[b] / max(n[b], 1)
            use = n[b] > 0 and (bool(force[b]) if force is not None else
                                sq_total + lam * 8 * wv["bytes"] < d_pixel[b] + lam * 8 * bytes_pixel[b])
            flags.append(bool(use))
            rd.append({"pixel": (bytes_pixel[b], d_pixel[b]) if wants_pixel[b] else None,
                       "wavelet": (wv["bytes"], sq_total), "n": n[b]})
            for tr in range(p.tile_rows):
                for tc in range(p.tile_cols):
                    k = tc * self.bands + b
                    if use:
                        frames[(tr, k)] = (wv["frames"][(tr, tc)], wv["sq"][(tr, tc)])
                    elif (tr, k) in pixel:
                        frames[(tr, k)] = pixel[(tr, k)]
                    else:  # (a band with nothing coded, forced into the wavelet domain: its empty pixel frames)
                        frames[(tr, k)] = None
        if any(v is None for v in frames.values()):
            for tr, row in self.tile_rows():
                for k in range(p.tile_cols * self.bands):
                    if frames.get((tr, k), 0) is None:
                        frames[(tr, k)] = pixel_frame(tr, k, *row[k])
        return {"frames": frames, "wavelet": flags, "rd": rd}

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._cache = None

    def __enter__(self) -> "ResidualSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_layer(base: dict, layer: dict) -> dict:
    """compress's result for `base` updated to the file `ResidualSource.write` made from it (its bytes, rate,
    parts and the layer's facts)."""
    return {**base, **layer, "compression_ratio": base["compression_ratio"] * base["bytes"] / layer["bytes"]}


def add_residual_layer(base_path, input_path, output_path, step_db: float, *, overwrite: bool = False,
                       bundle=None, progress=None) -> dict:
    """Write `base_path` + a residual layer of step `step_db` (dB) against `input_path` as `output_path`."""
    step = check_step(step_db)
    inputs = [input_path, base_path]
    check_output_path(output_path, overwrite, inputs)
    with ResidualSource(base_path, input_path, bundle=bundle) as rs:
        return rs.write(output_path, step, overwrite=overwrite, inputs=inputs, progress=progress)


def compress_with_residual(input_path, output_path, step_db: float, *, overwrite: bool = False, progress=None,
                           **kwargs) -> dict:
    """compress_raster, then a residual layer of step `step_db` (dB): compress's result with the final file's
    rate."""
    from sar_ae_core.codec import compress_raster
    from sar_ae_core.progress import Progress

    import time

    t_start = time.perf_counter()
    step = check_step(step_db)
    check_output_path(output_path, overwrite, [input_path])
    prog = Progress(progress)
    folder = os.path.dirname(os.path.abspath(os.fspath(output_path)))
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".residual",
                                     dir=folder) as work:
        base_path = os.path.join(work, "base.sarz")
        if not float(kwargs.get("escape_step_db", 1.0) or 0) > 0:
            raise SarInputError(None, "--residual-step needs escapes (--escape-step > 0)")
        from sar_ae_core.nn.model_io import ready_bundle
        from sar_ae_core.options import device_option

        device_option(kwargs.get("device", "auto"))
        bundle = ready_bundle(kwargs.pop("model", None), kwargs.get("device", "auto"), kwargs.pop("bundle", None),
                              kwargs.get("runtime", "auto"))
        from sar_ae_core.coding import postfilter as pf

        post_filter = pf.check_mode(kwargs.pop("post_filter", "auto"))
        r = compress_raster(input_path, base_path, overwrite=True, bundle=bundle, post_filter="off",
                            progress=lambda f, m="": prog.step(0.6 * f, m), **kwargs)
        layered = os.path.join(work, "layered.sarz")
        with ResidualSource(base_path, input_path, bundle=bundle, work_dir=work) as rs:
            layer = rs.write(layered, step, overwrite=True, inputs=[input_path],
                             progress=lambda f, m="": prog.step(0.6 + 0.25 * f, m))
        # the post-filter on the final reconstruction (network + residual), where it pays for its bytes
        filtered = None
        if pf.pays(post_filter, layer["bpp"], layer["bytes"], r["bands"]):
            filtered = add_postfilter(layered, input_path, output_path, post_filter, bundle=bundle, work_dir=work,
                                      progress=lambda f, m="": prog.step(0.85 + 0.15 * f, m))
        if filtered is None:
            with AtomicOutput(output_path, overwrite, suffix=".sarz", inputs=[input_path]) as out:
                shutil.copyfile(layered, out.tmp)
        else:
            layer.update(bytes=filtered["bytes"], bpp=filtered["bpp"], parts=filtered["parts"])
    out = {**with_layer(r, layer), "seconds": time.perf_counter() - t_start}
    out["post_filter"] = filtered["post_filter"] if filtered else None
    return out


def add_postfilter(sarz_path, input_path, output_path, mode: str = "auto", *, target_bpp: Optional[float] = None,
                   bundle=None, work_dir: Optional[str] = None, progress=None) -> Optional[dict]:
    """`sarz_path` with a post-filter (coding/postfilter.py) fitted against `input_path`, written as `output_path`
    (which may be `sarz_path` itself: the new file is moved into place whole). `mode` 'auto' fits 'enl' from
    postfilter.ENL_FROM_BPP bits per pixel (`target_bpp`, else the file's own rate), 'mse' below. Returns the new
    file's facts (bytes, bpp, the mode), or None — nothing written — where no band can be filtered, or where an 'enl'
    fit whose unfiltered reconstruction already keeps the ENL bound does not pay for its bytes as a least-squares one
    (`postfilter.pays`)."""
    from sar_ae_core.codec import escaped_pixels, reconstruct_raster
    from sar_ae_core.coding import postfilter as pf
    from sar_ae_core.progress import Progress

    mode = pf.check_mode(mode)
    if mode == "off":
        return None
    outer = Progress(progress)
    prog = Progress(lambda f, m="": outer.step(f, "post-filter" + (f": {m}" if m else "")))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.fspath(output_path))}.", suffix=".postfilter",
                           dir=work_dir or os.path.dirname(os.path.abspath(os.fspath(output_path))))
    try:
        from sar_ae_core.codec import _bundle_for
        from sar_ae_core.nn.model_config import decoder_halo_cells

        with SarzFile(sarz_path) as f:
            header = {k: v for k, v in f.header.items() if k != "postfilter"}
            p, bands = f.plan, f.bands
            n_chunks = f.reader.chunk_count
            if bundle is None or not bundle.decodes(f.model_sha):
                bundle = _bundle_for(f, None)
        if decoder_halo_cells(bundle.config) is None:  # global attention decodes by blended windows: no filter
            return None
        pixels = p.width * p.height * bands
        mode = pf.resolve(mode, target_bpp if target_bpp is not None else os.path.getsize(sarz_path) * 8 / pixels)
        # the reconstruction the filter will get: of the whole raster, or of a few windows of a large one
        windows = pf.fit_windows(p.width, p.height, p.tile) or [None]
        pieces = []
        with SarzFile(sarz_path) as f:  # (the decoder's kept pixels of each window, from the file's mask tiles)
            for k, win in enumerate(windows):
                pre = os.path.join(tmp, f"prefilter{k}.tif")
                reconstruct_raster(sarz_path, pre, units="db", bundle=bundle, output_compress="none", prefilter=True,
                                   window=win,
                                   progress=prog.sub(0.4 * k / len(windows), 0.4 * (k + 1) / len(windows)).step)
                c0, r0, ww, wh = win if win is not None else (0, 0, p.width, p.height)
                kept = escaped_pixels(f, c0, r0, ww, wh)
                pieces.append((pre, c0, r0, kept if kept.any() else None))
        clip = (header["scaling"]["vmin_db"], header["scaling"]["vmax_db"])
        taps, constrained = pf.fit(input_path, pieces, header["source"], mode, progress=prog.sub(0.4, 0.9).step,
                                   clip=clip)
        if mode == "enl":
            # where the ENL bound holds without it, a filter that blurs the edges (EPI) is not worth its error gain
            epis = pf.edge_fidelity(input_path, pieces, header["source"], taps, clip)
            taps = [t if t is None or c or not pf.edges_outweigh(e) else None
                    for t, c, e in zip(taps, constrained, epis)]
        if all(t is None for t in taps):
            return None
        # where the reconstruction keeps the speckle without a filter, the filter is for the error alone: it must pay
        # for its bytes as a least-squares one
        if mode == "enl" and not any(constrained) and not pf.pays("mse", 0.0, os.path.getsize(sarz_path), bands,
                                                                 asked=False):
            return None
        header["postfilter"] = pf.to_header(taps)
        out_tmp = os.path.join(tmp, "filtered.sarz")
        with open(out_tmp, "wb") as fh, SarzFile(sarz_path) as f:
            writer = ContainerWriter(fh, header)
            for i in range(n_chunks):
                chunk = f.reader.chunk(i)
                writer.add(chunk, "latents" if i % 2 == 0 else "masks")
            sizes = writer.finish()
        if os.path.abspath(os.fspath(output_path)) == os.path.abspath(os.fspath(sarz_path)):
            os.replace(out_tmp, output_path)
        else:
            with AtomicOutput(output_path, True, suffix=".sarz", inputs=(input_path,)) as out:
                shutil.copyfile(out_tmp, out.tmp)
        prog.step(0.95, "fitted")
        nbytes = os.path.getsize(output_path)
        return {"bytes": nbytes, "bpp": nbytes * 8 / pixels, "parts": sizes, "post_filter": mode,
                "post_filter_taps": taps, "enl_bound_needed": any(constrained),
                "post_filter_fit_windows": None if windows == [None] else windows}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
