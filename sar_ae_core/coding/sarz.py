"""An open `.sarz` file: the header facts (checked against the schema) and the latent and mask tiles it stores,
decoded on demand through the file's latent codec; from a local path or a URL."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sar_ae_core.coding import escapes as esc
from sar_ae_core.coding import residual as res
from sar_ae_core.coding.latent_coding import codec_from_params, decode_mask
from sar_ae_core.coding.schema import validate_header
from sar_ae_core.errors import SarInputError
from sar_ae_core.io.raster import Georef
from sar_ae_core.scaling import ScalingParams
from sar_ae_core.tiling import TilePlan

if TYPE_CHECKING:  # pragma: no cover
    from sar_ae_core.nn.model_io import ModelBundle

SHA_PREFIX = 16  # hex digits of the model SHA-256 stored in `.sarz` headers (64 bits: no accidental match)


def _chunk_id(plan: TilePlan, bands: int, row: int, col: int, band: int, kind: int) -> int:
    """Index of a chunk: tiles row-major, then bands, then (latent=0, mask=1)."""
    return ((row * plan.tile_cols + col) * bands + band) * 2 + kind


class SarzFile:
    """An open `.sarz` file: header facts and access to the latent and mask tiles it stores."""

    def __init__(self, path: str | os.PathLike):
        from sar_ae_core.io.remote import open_container  # a local path or a URL (http(s) range requests, fsspec)

        self.reader = open_container(path)
        self.path = self.reader.path
        h = self.reader.header
        try:
            validate_header(h, self.path)
        except BaseException:
            self.close()
            raise
        try:
            self.plan = TilePlan.from_dict(h["tiling"])
            self.scaling = ScalingParams.from_dict(h["scaling"])
            self.source = h["source"]
            self.georef = Georef.from_dict(h["georef"])
            self.model_name = h["model"]["name"]
            self.model_sha = str(h["model"]["sha256"]).lower()
            if len(self.model_sha) < SHA_PREFIX or any(ch not in "0123456789abcdef" for ch in self.model_sha):
                raise ValueError(f"model sha256 {self.model_sha!r} is not a hex digest of >= {SHA_PREFIX} digits")
            self.latent_channels = int(h["model"]["config"]["latent_channels"])
            self.bands = len(self.source["bands"])
            mask = h.get("mask") or {"id": esc.MASK_ID}
            self.mask_id = mask["id"]
            if self.mask_id not in (esc.MASK_ID, esc.ESCAPE_MASK_ID, res.RESIDUAL_MASK_ID):
                raise ValueError(f"mask id {self.mask_id!r} is unknown")
            escapes = self.mask_id != esc.MASK_ID
            self.escape_step = float(mask["step_db"]) if escapes else 0.0
            self.escape_above = float(mask.get("above_db", self.scaling.vmax_db))
            #: step of the residual layer (dB), 0 without one
            self.residual_step = float(mask["residual_db"]) if self.mask_id == res.RESIDUAL_MASK_ID else 0.0
            #: per band: whether its layer is coded in the wavelet domain (error bounded in RMSE, not per pixel)
            flags = mask.get("residual_wavelet") if self.residual_step else None
            self.residual_wavelet = [bool(v) for v in flags] if flags else [False] * self.bands
            self._coefficients: dict = {}  # (row, col, band) -> a wavelet tile's dequantized coefficients
            if self.residual_step and not res.MIN_STEP_DB <= self.residual_step <= res.MAX_STEP_DB:
                raise ValueError(f"residual step {self.residual_step} dB is out of range")
            if escapes and not (0 < self.escape_step <= esc.MAX_STEP_DB and
                                                           self.scaling.vmin_db < self.escape_above <= self.scaling.vmax_db + 1e-6):
                raise ValueError(f"escape step {self.escape_step} dB or bound {self.escape_above} dB is out of range")
        except (KeyError, TypeError, ValueError) as exc:
            self.close()
            raise SarInputError(self.path, f"header is incomplete ({exc})") from None
        try:
            from sar_ae_core.coding import postfilter as pf

            #: the post-filter's taps per band (None: an unfiltered band), None without one (coding/postfilter.py)
            self.postfilter = pf.from_header(h.get("postfilter"), self.bands, self.path)
        except BaseException:
            self.close()
            raise
        self.codec = None
        expected = self.plan.tile_rows * self.plan.tile_cols * self.bands * 2
        if self.reader.chunk_count != expected:
            self.close()
            raise SarInputError(self.path, f"has {self.reader.chunk_count} chunks, the header implies {expected} "
                                           "(file is damaged)")

    @property
    def header(self) -> dict:
        return self.reader.header

    def attach(self, bundle: ModelBundle) -> None:
        """Set up latent decoding with the file's model (whose SHA-256 the caller has checked)."""
        if bundle.config.latent_channels != self.latent_channels:
            raise SarInputError(self.path, f"header says {self.latent_channels} latent channels, model "
                                           f"'{bundle.name}' has {bundle.config.latent_channels} (file is damaged)")
        if int(self.plan.downsample) != int(bundle.downsample_factor):
            raise SarInputError(self.path, f"header says the latents are 1/{self.plan.downsample} of the raster, model "
                                           f"'{bundle.name}' makes 1/{bundle.downsample_factor} (file is damaged)")
        try:
            self.codec = codec_from_params(self.header["codec"], bundle.tables)
        except KeyError:
            raise SarInputError(self.path, f"made with latent codec '{self.header['codec'].get('id')}' which this "
                                           "version cannot decode; please upgrade") from None
        except ValueError as exc:
            raise SarInputError(self.path, f"cannot set up latent decoding: {exc}") from None

    def latent_tile(self, row: int, col: int, band: int, coded_only: bool = False) -> np.ndarray:
        """Dequantized latent cells of one tile (C, h, w); `coded_only`: just the channels the codec codes."""
        r0, r1, c0, c1 = self.plan.tile_cells(row, col)
        payload = self.reader.chunk(_chunk_id(self.plan, self.bands, row, col, band, 0))
        try:
            if coded_only:
                return self.codec.decode(payload, (self.latent_channels, r1 - r0, c1 - c0), coded_only=True)
            return self.codec.decode(payload, (self.latent_channels, r1 - r0, c1 - c0))
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a damaged chunk
            raise SarInputError(self.path, f"latent tile ({row}, {col}) band {band + 1} cannot be decoded "
                                           f"({exc})") from None

    def mask_and_escapes(self, row: int, col: int, band: int):
        """(validity, escaped dB values as a float32 tile with NaN elsewhere, or None) of one tile."""
        return self.mask_tile(row, col, band)[:2]

    def mask_tile(self, row: int, col: int, band: int):
        """(validity, escaped dB values as a float32 tile with NaN elsewhere or None, residual-layer dB offsets
        as a float32 tile or None) of one tile."""
        p = self.plan
        shape = (min((row + 1) * p.tile, p.height) - row * p.tile, min((col + 1) * p.tile, p.width) - col * p.tile)
        payload = self.reader.chunk(_chunk_id(p, self.bands, row, col, band, 1))
        try:
            if self.mask_id == esc.MASK_ID:
                return decode_mask(payload, shape), None, None
            residual_frame = None
            if self.mask_id == res.RESIDUAL_MASK_ID:
                mask_part, frame, residual_frame = res.split_chunk(payload)
                valid = decode_mask(mask_part, shape)
            else:
                valid, frame = esc.split_mask_chunk(payload, shape)
            escaped = None
            if frame:
                flat, db = esc.decode_escapes(frame, shape, self.scaling.vmin_db, self.escape_above,
                                              self.escape_step)
                escaped = np.full(shape[0] * shape[1], np.nan, np.float32)
                escaped[flat] = db
                escaped = escaped.reshape(shape)
            residual = None
            if residual_frame is not None:
                coded = valid if escaped is None else valid & np.isnan(escaped)
                if self.residual_wavelet[band]:
                    residual = np.where(coded, self._wavelet_tile(row, col, band, residual_frame), 0.0)
                    residual = (residual * self.residual_step).astype(np.float32)
                else:
                    residual = res.decode_residual(residual_frame, coded, self.residual_step)
            return valid, escaped, residual
        except SarInputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SarInputError(self.path, f"mask tile ({row}, {col}) cannot be decoded ({exc})") from None

    def wavelet_block(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) of the coefficient positions a tile owns in a wavelet-coded band: its pixels,
        and for the last tile row and column the band's padding too."""
        from sar_ae_core.coding import wavelet

        p = self.plan
        ph, pw = wavelet.padded((p.height, p.width))
        r1 = ph if row == p.tile_rows - 1 else (row + 1) * p.tile
        c1 = pw if col == p.tile_cols - 1 else (col + 1) * p.tile
        return row * p.tile, r1, col * p.tile, c1

    def _tile_coefficients(self, row: int, col: int, band: int, frame=None) -> np.ndarray:
        """A wavelet tile's dequantized coefficients (in steps), decoded once per file and kept for its neighbours
        (the last few tile rows)."""
        key = (row, col, band)
        if key not in self._coefficients:
            if frame is None:
                payload = self.reader.chunk(_chunk_id(self.plan, self.bands, row, col, band, 1))
                frame = res.split_chunk(payload)[2]
            r0, r1, c0, c1 = self.wavelet_block(row, col)
            try:
                block = res.decode_wavelet(frame, (r1 - r0, c1 - c0), r0, c0)
            except Exception as exc:  # noqa: BLE001
                raise SarInputError(self.path, f"mask tile ({row}, {col}) cannot be decoded ({exc})") from None
            keep = 3 * self.plan.tile_cols * self.bands
            while len(self._coefficients) >= keep:
                del self._coefficients[next(iter(self._coefficients))]
            self._coefficients[key] = block
        return self._coefficients[key]

    def _wavelet_tile(self, row: int, col: int, band: int, frame: bytes) -> np.ndarray:
        """The residual (in steps, float64) of one tile of a wavelet-coded band: the inverse transform of its
        coefficients and those of its neighbours within wavelet.HALO pixels, cropped to the tile."""
        from sar_ae_core.coding import wavelet

        p = self.plan
        r0, r1, c0, c1 = self.wavelet_block(row, col)
        ph, pw = wavelet.padded((p.height, p.width))
        a0, a1 = max(r0 - wavelet.HALO, 0), min(r1 + wavelet.HALO, ph)
        b0, b1 = max(c0 - wavelet.HALO, 0), min(c1 + wavelet.HALO, pw)
        window = np.zeros((a1 - a0, b1 - b0), np.float64)
        for tr in range(a0 // p.tile, min((a1 - 1) // p.tile, p.tile_rows - 1) + 1):
            for tc in range(b0 // p.tile, min((b1 - 1) // p.tile, p.tile_cols - 1) + 1):
                block = self._tile_coefficients(tr, tc, band, frame if (tr, tc) == (row, col) else None)
                t0, t1, u0, u1 = self.wavelet_block(tr, tc)
                y0, y1, x0, x1 = max(t0, a0), min(t1, a1), max(u0, b0), min(u1, b1)
                window[y0 - a0:y1 - a0, x0 - b0:x1 - b0] = block[y0 - t0:y1 - t0, x0 - u0:x1 - u0]
        h, w = min(r1, p.height) - r0, min(c1, p.width) - c0
        return wavelet.inverse(window)[r0 - a0:r0 - a0 + h, c0 - b0:c0 - b0 + w]

    def close(self) -> None:
        """Close the file."""
        self.reader.close()

    def __enter__(self) -> "SarzFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
