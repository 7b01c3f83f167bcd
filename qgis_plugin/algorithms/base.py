"""What every Processing algorithm of the plugin shares: the base class (codec parameters, output guards, loading
and styling of results, progress and cancel) and small helpers. Each algorithm is a thin adapter from QGIS
parameters and QgsProcessingFeedback (progress, cancel) to one `sar_ae_core` function; no codec logic lives here.

The core is imported inside processAlgorithm only, after checking that onnxruntime and rasterio import, so
the provider loads (and explains what to install) in a QGIS whose Python lacks them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from qgis.core import (
    QgsApplication,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProject,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProviderRegistry,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .. import styling
from ..deps import dependency_problem
from sar_ae_core.io.output import same_file as _same_file  # noqa: E402 - dependency-free

ICON_PATH = str(Path(__file__).resolve().parents[1] / "icons" / "sarae.svg")
# sar_ae_core.defaults is dependency-free: the plugin reads it before it knows whether torch imports
from sar_ae_core.defaults import (ATTENTION_MODEL, CODEC_IDS, DEFAULT_MODEL, SCALING_CHOICES, TILE,  # noqa: E402
                                  UNIT_CHOICES)

CODEC_CHOICES = ("auto",) + CODEC_IDS
POST_FILTER_CHOICES = ("auto", "enl", "mse", "off")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
NO_BUNDLED_MODEL = "(no bundled model: choose a model file below)"
MAP_PARAMS = (("ERROR_MAP", "abs_error_db"), ("ENL_MAP", "enl_ratio"), ("EPI_MAP", "epi"))
METRIC_OUTPUTS = (("PSNR", "psnr", "PSNR (dB)"), ("SSIM", "ssim", "SSIM"), ("RMSE_DB", "rmse_db", "RMSE (dB)"),
                  ("ENL_RATIO", "enl_ratio", "ENL ratio"), ("EPI", "epi", "Edge preservation index"),
                  ("VALID_FRACTION", "valid_fraction", "Fraction of valid pixels"))


def bundled_model_names() -> list[str]:
    """Names of the models shipped in sar_ae_core/models_bundled (found without importing torch)."""
    import sar_ae_core

    folder = Path(sar_ae_core.__file__).resolve().parent / "models_bundled"
    names = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
    # the default first, then the rate points in order; the old uniform-latent model last (5-8 dB worse)
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL, n == ATTENTION_MODEL, n))


def rate_points_help() -> str:
    """One line per bundled model with its measured mean rate and quality (from the model cards, no torch)."""
    import json

    import sar_ae_core

    folder = Path(sar_ae_core.__file__).resolve().parent / "models_bundled"
    lines = []
    for name in bundled_model_names():
        card = folder / f"{name}.json"
        m = (json.loads(card.read_text(encoding="utf-8")).get("measured") or {}) if card.is_file() else {}
        if m.get("bpp") and m.get("psnr"):
            j = m.get("jpeg2000_at_same_bpp") or {}
            vs = f" (JPEG2000 at that rate: {j['psnr']:.2f} dB)" if j.get("psnr") else ""
            lines.append(f"{name}: {m['bpp']:.2f} bits per pixel, PSNR {m['psnr']:.2f} dB{vs}, EPI {m['epi']:.3f}")
    return ("\n\n<b>Bundled rate points</b> (means over held-out Sentinel-1 scenes):\n" + "\n".join(lines)) if lines else ""


def _move(src: str, dst: str) -> None:
    """Rename src over dst (atomic on one file system); copy then delete across file systems."""
    try:
        os.replace(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        os.unlink(src)


def layer_file(layer) -> str:
    """The file behind a map layer ('' when it has none): the path part of its data source."""
    try:
        source = layer.source()
        if layer.providerType() == "gdal":
            return QgsProviderRegistry.instance().decodeUri("gdal", source).get("path") or source
        return source.split("|")[0]
    except RuntimeError:  # layer deleted meanwhile
        return ""


def loaded_layer_files(context) -> list[str]:
    """Files behind every layer of the project (read on the main thread, in prepareAlgorithm)."""
    project = context.project() if context is not None and context.project() is not None else QgsProject.instance()
    files = []
    for layer in project.mapLayers().values():
        path = layer_file(layer)
        if path and os.path.exists(path):
            files.append(path)
    return files


def is_temporary_output(value, path: str) -> bool:
    """True for QGIS's '[Save to temporary file]': a file deleted when the QGIS session ends."""
    if value is None or value == QgsProcessing.TEMPORARY_OUTPUT or not path:
        return True
    temp = QgsProcessingUtils.tempFolder()
    return bool(temp) and os.path.abspath(path).startswith(os.path.abspath(temp) + os.sep)


def takes_new_files(folder: str) -> bool:
    """Whether new files can be written in `folder`: an existing local folder, writable (a read-only share or
    mount, or the inside of an archive a layer was read from — `/vsizip/…` — is not)."""
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def processing_output_folder() -> str:
    """QGIS's folder for Processing outputs (Settings ▸ Options ▸ Processing ▸ General ▸ Output folder), created if
    missing."""
    folder = None
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        folder = ProcessingConfig.getSetting(ProcessingConfig.OUTPUT_FOLDER)
    except ImportError:  # the Processing plugin's Python is not loaded (a bare application)
        pass
    if not folder:
        folder = os.path.join(QgsApplication.qgisSettingsDirPath(), "processing", "outputs")
    os.makedirs(folder, exist_ok=True)
    return folder


def default_output(source: str, suffix: str) -> tuple[str, str]:
    """(path, where) of an output the user left to QGIS: beside `source` (`beside`), or, where its folder takes no
    new files, in the Processing output folder; `where` says which and why, for the log."""
    folder = os.path.dirname(os.path.abspath(source))
    if takes_new_files(folder):
        return beside(source, suffix), "beside the input"
    out = processing_output_folder()
    return beside(os.path.join(out, os.path.basename(source)), suffix), \
        f"in the Processing output folder: the input's folder {folder} takes no new files"


def beside(source: str, suffix: str) -> str:
    """A new file name beside `source` (`scene.sarz`, else `scene_2.sarz`, ...): never an existing file."""
    folder, stem = os.path.dirname(os.path.abspath(source)), Path(source).stem
    for i in range(1, 10000):
        candidate = os.path.join(folder, f"{stem}{suffix}" if i == 1 else f"{stem}_{i}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise QgsProcessingException(f"no free file name for the output beside {source}: choose an output file")


def reconstruction_name(sarz: str) -> str:
    """Layer name of a reconstruction: source, model and measured rate ('scene — sarae-q2, 0.53 bpp')."""
    from sar_ae_core.codec import sarz_info

    info = sarz_info(sarz)
    stem = Path(info["source_name"]).stem if info.get("source_name") else Path(sarz).stem
    return f"{stem} — {info['model']}, {info['bpp']:.2f} bpp"


class FeedbackProgress:
    """The core's progress callback on a QgsProcessingFeedback: percent, stage text, and cancel."""

    #: seconds between two progress texts of the same stage: the label keeps up with the bar, and the log (where
    #: QGIS also writes each text) gets a line a second, not one per tile
    TEXT_EVERY_S = 1.0

    def __init__(self, feedback, start: float = 0.0, end: float = 1.0):
        self.feedback, self.start, self.end = feedback, start, end
        self._stage = None
        self._text_at = 0.0

    def __call__(self, fraction: float, message: str = "") -> bool:
        """Report progress; False (cancel) when the user pressed Cancel."""
        import time

        if self.feedback is None:
            return True
        self.feedback.setProgress(100.0 * (self.start + (self.end - self.start) * fraction))
        stage = re.sub(r"\d+", "#", message)
        now = time.monotonic()
        if message and (stage != self._stage or now - self._text_at >= self.TEXT_EVERY_S):
            self._stage, self._text_at = stage, now
            self.feedback.setProgressText(message)
        return not self.feedback.isCanceled()


class SarAeAlgorithm(QgsProcessingAlgorithm):
    """Shared parameters, dependency check, error mapping and cancel handling of the plugin's algorithms."""

    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    BANDS = "BANDS"
    BAND = "BAND"
    UNITS = "UNITS"
    MODEL = "MODEL"
    MODEL_FILE = "MODEL_FILE"
    BITS = "BITS"
    TARGET_BPP = "TARGET_BPP"
    RESIDUAL_STEP = "RESIDUAL_STEP"
    DECODER_BUDGET = "DECODER_BUDGET"
    POST_FILTER = "POST_FILTER"
    SCALING = "SCALING"
    CODEC = "CODEC"
    DEVICE = "DEVICE"
    TILE = "TILE"
    BATCH_SIZE = "BATCH_SIZE"
    REFERENCE = "REFERENCE"
    RECONSTRUCTION = "RECONSTRUCTION"
    WINDOW = "WINDOW"
    OUTPUT_HTML = "OUTPUT_HTML"
    ERROR_MAP = "ERROR_MAP"
    ENL_MAP = "ENL_MAP"
    EPI_MAP = "EPI_MAP"
    OUTPUT_COMPRESS = "OUTPUT_COMPRESS"

    _id = ""
    _display = ""
    _group = ("codec", "Codec")
    _help = ""

    def __init__(self):
        super().__init__()
        self._written: list[str] = []

    # -- identity ---------------------------------------------------------------------------------
    def tr(self, text: str) -> str:
        """Translate a string in the plugin's context."""
        return QCoreApplication.translate("SarAeAlgorithm", text)

    def createInstance(self):
        """A fresh copy (Processing runs copies)."""
        return type(self)()

    def name(self) -> str:
        """Algorithm id inside the provider."""
        return self._id

    def displayName(self) -> str:
        """Name shown in the toolbox."""
        return self.tr(self._display)

    def groupId(self) -> str:
        """Toolbox group id."""
        return self._group[0]

    def group(self) -> str:
        """Toolbox group name."""
        return self.tr(self._group[1])

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(self._help)

    def icon(self) -> QIcon:
        """The provider's icon."""
        return QIcon(ICON_PATH)

    def svgIconPath(self) -> str:
        """Path of the provider's SVG icon."""
        return ICON_PATH

    # -- parameter helpers ------------------------------------------------------------------------
    def _choice(self, name: str, description: str, options, default: str) -> QgsProcessingParameterEnum:
        """An enum whose values are its option strings (stable in saved models and on qgis_process)."""
        param = QgsProcessingParameterEnum(name, self.tr(description), list(options), defaultValue=default)
        param.setUsesStaticStrings(True)
        return param

    def _advanced(self, param: QgsProcessingParameterDefinition) -> None:
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def _add_units(self, description: str = "Units of the pixel values") -> None:
        self.addParameter(self._choice(self.UNITS, description, UNIT_CHOICES, "auto"))

    def _add_model(self, preferred: str = DEFAULT_MODEL) -> None:
        names = bundled_model_names()
        options = names or [NO_BUNDLED_MODEL]
        default = preferred if preferred in names else options[0]
        self.addParameter(self._choice(self.MODEL, "Model", options, default))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL_FILE, self.tr("Model file (.pt bundle; overrides Model)"),
            behavior=QgsProcessingParameterFile.File, fileFilter="Model bundles (*.pt)", optional=True))

    def _add_sarz_input(self) -> None:
        self.addParameter(QgsProcessingParameterFile(self.INPUT, self.tr("Compressed file (.sarz)"),
                                                     behavior=QgsProcessingParameterFile.File,
                                                     fileFilter="SARZ files (*.sarz)"))

    def _add_sarz_model_file(self) -> None:
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL_FILE, self.tr("Model file (.pt), if the model is not bundled"),
            behavior=QgsProcessingParameterFile.File, fileFilter="Model bundles (*.pt)", optional=True))

    def _add_device(self, default: str = "auto") -> None:
        self._advanced(self._choice(self.DEVICE, "Device", DEVICE_CHOICES, default))

    def _add_tiling(self, batch: bool = True) -> None:
        self._advanced(QgsProcessingParameterNumber(self.TILE, self.tr("Tile size (pixels, multiple of 16)"),
                                                    QgsProcessingParameterNumber.Integer, TILE, minValue=16,
                                                    maxValue=4096))
        if batch:
            self._advanced(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Tiles per batch"),
                                                        QgsProcessingParameterNumber.Integer, 8, minValue=1,
                                                        maxValue=256))

    def _add_compress_params(self) -> None:
        """Parameters of compress (shared by compress_review), the .sarz destination and the rate outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("SAR raster")))
        self.addParameter(QgsProcessingParameterString(self.BANDS, self.tr("Bands ('all' or a list such as 1,2)"),
                                                       defaultValue="all"))
        self._add_units()
        self._add_model()
        target = QgsProcessingParameterNumber(self.TARGET_BPP, self.tr(
            "Target rate (bits per pixel; 0 = the model's own rate)"), QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0, maxValue=8.0)
        self.addParameter(target)
        self._advanced(QgsProcessingParameterNumber(self.RESIDUAL_STEP, self.tr(
            "Residual layer step (dB; 0 = none): the difference to the network's reconstruction, coded with this "
            "step (with a target rate the search decides)"), QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0, maxValue=60.0))
        self._advanced(QgsProcessingParameterNumber(self.DECODER_BUDGET, self.tr(
            "Decoder budget with a target rate (thousand multiply-accumulates per pixel; 0 = any rate point; 2.5 = "
            "the light decoders only, a quarter of sarae-q4's operations)"), QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0, maxValue=100.0))
        self._advanced(self._choice(self.POST_FILTER, "Post-filter (a 5x5 filter fitted on the file's own "
                                    "reconstruction: auto = keep the speckle of homogeneous areas from 0.5 bits per "
                                    "pixel, least squares below)", POST_FILTER_CHOICES, "auto"))
        # only the uniform-zstd coder reads it: the entropy-coded default models ignore it, so it is advanced
        self._advanced(QgsProcessingParameterNumber(self.BITS, self.tr(
            "Quantization bits per latent value (uniform-zstd coder only)"), QgsProcessingParameterNumber.Integer,
            8, minValue=1, maxValue=16))
        self._advanced(self._choice(self.SCALING, "dB range", SCALING_CHOICES, "auto"))
        self._advanced(self._choice(self.CODEC, "Latent coder", CODEC_CHOICES, "auto"))
        self._add_device()
        self._add_tiling()
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr(
            "Compressed file (default: beside the input)"),
                                                                "SARZ files (*.sarz)"))
        self.addOutput(QgsProcessingOutputNumber("BPP", self.tr("Bits per pixel")))
        self.addOutput(QgsProcessingOutputNumber("COMPRESSION_RATIO", self.tr("Compression ratio")))

    def _add_map_destinations(self) -> None:
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Quality report"), "HTML files (*.html)", optional=True, createByDefault=True))
        for name, label in ((self.ERROR_MAP, "Absolute error (dB)"), (self.ENL_MAP, "ENL ratio map"),
                            (self.EPI_MAP, "Edge preservation map")):
            self.addParameter(QgsProcessingParameterRasterDestination(name, self.tr(label), optional=True,
                                                                      createByDefault=True))
        self._advanced(QgsProcessingParameterNumber(self.WINDOW, self.tr("Window of the local maps (odd, pixels)"),
                                                    QgsProcessingParameterNumber.Integer, 15, minValue=3,
                                                    maxValue=101))

    def _add_metric_outputs(self) -> None:
        for name, _, label in METRIC_OUTPUTS:
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    # -- parameter values -------------------------------------------------------------------------
    def _enum(self, parameters, name, context) -> str:
        return self.parameterAsEnumString(parameters, name, context)

    def _model(self, parameters, context) -> str:
        path = self.parameterAsFile(parameters, self.MODEL_FILE, context)
        if path:
            return path
        name = self._enum(parameters, self.MODEL, context)
        if name not in bundled_model_names():
            raise QgsProcessingException(self.tr("No bundled model is selected (none is installed with the plugin): "
                                                 "choose a model file (.pt)."))
        return name

    def _raster_file(self, parameters, name, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.tr(f"{name}: no raster layer given"))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(self.tr(f"Layer '{layer.name()}' is not a file raster (provider "
                                                 f"{layer.providerType()}); save it as GeoTIFF first."))
        parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
        path = parts.get("path") or layer.source()
        if parts.get("vsiPrefix"):  # a raster inside an archive: /vsizip/ARCHIVE/MEMBER, as GDAL reads it
            path = f"{parts['vsiPrefix']}{path}{parts.get('vsiSuffix') or ''}"
        return path

    # -- running ----------------------------------------------------------------------------------
    def checkParameterValues(self, parameters, context):
        """Standard checks, then whether onnxruntime and rasterio can be imported (with install advice if not)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        problem = dependency_problem()
        if problem:
            return False, problem
        return True, ""

    def processAlgorithm(self, parameters, context, feedback):
        """Run the core function; bad input → QgsProcessingException, cancel → no outputs at all."""
        problem = dependency_problem()
        if problem:
            raise QgsProcessingException(problem)
        from sar_ae_core.errors import Cancelled, SarInputError

        self._written = []
        try:
            return self.run_core(parameters, context, feedback)
        except SarInputError as exc:
            self._discard_written()
            raise QgsProcessingException(str(exc)) from None
        except Cancelled:
            self._discard_written()
            context.setLayersToLoadOnCompletion({})
            feedback.reportError(self.tr("Cancelled: no output was written."))
            return {}

    def prepareAlgorithm(self, parameters, context, feedback):
        """Note the files behind the project's layers on the main thread: no output may replace one of them."""
        self._protected = loaded_layer_files(context)
        return True

    def _guard_outputs(self, outputs: dict, inputs, feedback) -> None:
        """Refuse, before any work, an output that is one of the inputs or the file of a loaded layer (it would
        replace the user's data); an other existing file is replaced, QGIS's convention, and the log says so."""
        inputs = [p for p in inputs if p]
        for label, path in outputs.items():
            if not path:
                continue
            for src in inputs:
                if _same_file(path, src):
                    raise QgsProcessingException(self.tr(
                        f"{label}: {path} is an input of this algorithm; writing it would destroy the input. "
                        "Choose another output file (nothing was written)."))
            for src in getattr(self, "_protected", []):
                if _same_file(path, src):
                    raise QgsProcessingException(self.tr(
                        f"{label}: {path} is the file of a layer loaded in the project; writing it would replace "
                        "that layer's data. Choose another output file (nothing was written)."))
            if os.path.isdir(path):
                raise QgsProcessingException(self.tr(f"{label}: {path} is a folder; choose a file name."))
            if os.path.exists(path):
                feedback.pushWarning(self.tr(f"{label}: replacing the existing file {path}"))

    def _discard_written(self) -> None:
        for path in self._written:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _wrote(self, path: str) -> str:
        self._written.append(path)
        return path

    def run_core(self, parameters, context, feedback) -> dict:
        """The algorithm proper (subclasses)."""
        raise NotImplementedError

    # -- shared steps ------------------------------------------------------------------------------
    def _compress(self, parameters, context, feedback, progress: FeedbackProgress,
                  extra_outputs: dict | None = None) -> tuple[str, str, dict]:
        from sar_ae_core.codec import compress_raster

        source = self._raster_file(parameters, self.INPUT, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if is_temporary_output(parameters.get(self.OUTPUT), output):
            # a temporary .sarz would be deleted when QGIS closes: the compressed file is the user's work
            output, where = default_output(source, ".sarz")
            feedback.pushInfo(self.tr(f"Compressed file: {output} ({where}; choose a file to put it elsewhere)"))
        elif not output.lower().endswith(".sarz"):
            output += ".sarz"
        outputs = {self.tr("Compressed file"): output, **(extra_outputs or {})}
        self._guard_outputs(outputs, [source, self.parameterAsFile(parameters, self.MODEL_FILE, context)], feedback)
        feedback.pushInfo(self.tr(f"Compressing {source}"))
        options = dict(
            bands=self.parameterAsString(parameters, self.BANDS, context).strip() or "all",
            units=self._enum(parameters, self.UNITS, context),
            bits=self.parameterAsInt(parameters, self.BITS, context),
            scaling=self._enum(parameters, self.SCALING, context),
            codec=self._enum(parameters, self.CODEC, context),
            device=self._enum(parameters, self.DEVICE, context),
            tile=self.parameterAsInt(parameters, self.TILE, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context))
        if self.parameterDefinition(self.POST_FILTER) is not None:
            options["post_filter"] = self._enum(parameters, self.POST_FILTER, context)
        target = self.parameterAsDouble(parameters, self.TARGET_BPP, context) \
            if self.parameterDefinition(self.TARGET_BPP) is not None else 0.0
        if target > 0:
            from sar_ae_core.rate import compress_to_rate, search_summary

            feedback.pushInfo(self.tr(f"Target rate {target:g} bits per pixel: the rate point and its quantization "
                                      "are searched (Model is not used)"))
            budget = self.parameterAsDouble(parameters, self.DECODER_BUDGET, context) \
                if self.parameterDefinition(self.DECODER_BUDGET) is not None else 0.0
            res = compress_to_rate(source, output, target, overwrite=True, max_decoder_kmac=budget or None,
                                   progress=progress, **options)
            feedback.pushInfo(search_summary(res))
        elif self.parameterDefinition(self.RESIDUAL_STEP) is not None and \
                self.parameterAsDouble(parameters, self.RESIDUAL_STEP, context) > 0:
            from sar_ae_core.refine import compress_with_residual

            step = self.parameterAsDouble(parameters, self.RESIDUAL_STEP, context)
            res = compress_with_residual(source, output, step, model=self._model(parameters, context),
                                         overwrite=True, progress=progress, **options)
            feedback.pushInfo(self.tr(f"Residual layer: step {step:g} dB, {res['residual_bytes']:,} bytes, RMSE of "
                                      f"the coded pixels {res['residual_rmse_db']:.3f} dB"))
        else:
            res = compress_raster(source, output, model=self._model(parameters, context), overwrite=True,
                                  progress=progress, **options)
        self._wrote(output)
        self._log_decisions(output, res, feedback)
        feedback.pushInfo(self.tr(
            f"Wrote {output}: {res['bytes']:,} bytes = {res['bpp']:.4f} bits per pixel (measured from the file), "
            f"compression ratio {res['compression_ratio']:.1f}:1 against the source's samples; model {res['model']} "
            f"on {res['device']}, {res['seconds']:.1f} s."))
        return source, output, res

    def _log_decisions(self, sarz: str, res: dict, feedback) -> None:
        """Say what every 'auto' decided: units (and why), dB range (and why), codec, escapes."""
        from sar_ae_core.codec import sarz_info

        info = sarz_info(sarz)
        sc = info["scaling"]
        feedback.pushInfo(self.tr(f"Units: {info['source_units']} ({info['source_dtype']} source)"))
        feedback.pushInfo(self.tr(f"dB range: [{sc['vmin_db']:.2f}, {sc['vmax_db']:.2f}] dB — {res['scaling']}"))
        codec = info["codec"]
        gain = f", quantization gain {codec['gain']:.3f}" if "gain" in codec else ""
        feedback.pushInfo(self.tr(f"Latent coder: {codec['id']}{gain}; model {info['model']}"))
        if res.get("post_filter"):
            feedback.pushInfo(self.tr(f"Post-filter: {res['post_filter']} (5x5, fitted on the file's own "
                                      "reconstruction, stored in its header)"))
        if res.get("escape_step_db"):
            bright = f" or among the brightest {res['keep_brightest']:g} %" if res.get("keep_brightest") else ""
            feedback.pushInfo(self.tr(f"Kept exactly (nothing clipped): {res['escaped_pixels']:,} pixel(s) outside "
                                      f"the dB range{bright}, to ±{res['escape_step_db'] / 2:g} dB"))

    def _map_destinations(self, parameters, context) -> dict:
        """{map parameter: (map kind, path)} of the quality maps the user asked for."""
        wanted = {}
        for param, kind in MAP_PARAMS:
            path = self.parameterAsOutputLayer(parameters, param, context)
            if path:
                wanted[param] = (kind, path)
        return wanted

    def _destination_labels(self, parameters, context) -> dict:
        """{label: path} of the maps and the HTML report, for _guard_outputs."""
        out = {self.parameterDefinition(p).description(): path
               for p, (_, path) in self._map_destinations(parameters, context).items()}
        html = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        if html:
            out[self.parameterDefinition(self.OUTPUT_HTML).description()] = html
        return out

    def _assess(self, reference: str, test: str, parameters, context, feedback, progress, *, units: str,
                bands="all", test_bands=None, guard: bool = True) -> tuple[dict, dict]:
        """assess_rasters with its maps moved to the requested destinations; returns (result, map paths)."""
        from sar_ae_core.quality.assess import assess_rasters

        wanted = self._map_destinations(parameters, context)
        if guard:
            self._guard_outputs(self._destination_labels(parameters, context), [reference, test], feedback)
        window = self.parameterAsInt(parameters, self.WINDOW, context)
        tmp = None
        if wanted:
            first = next(iter(wanted.values()))[1]
            tmp = tempfile.mkdtemp(prefix=".sarae-maps-", dir=os.path.dirname(os.path.abspath(first)))
        try:
            res = assess_rasters(reference, test, units=units, bands=bands, test_bands=test_bands, maps_dir=tmp,
                                 window=window,
                                 overwrite=True, progress=progress)
            placed = {}
            for param, (kind, path) in wanted.items():
                _move(res["maps"][kind], path)
                placed[param] = self._wrote(path)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        res["maps"] = {kind: placed[param] for param, (kind, _) in wanted.items()}
        for line in (f"{label}: {res[key]:.4f}" for _, key, label in METRIC_OUTPUTS):
            feedback.pushInfo(line)
        html_path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        return res, {**placed, **({self.OUTPUT_HTML: html_path} if html_path else {})}

    def _style_maps(self, context, placed: dict) -> None:
        stylers = {self.ERROR_MAP: (styling.style_error_map, "Absolute error (dB)"),
                   self.ENL_MAP: (styling.style_enl_ratio, "ENL ratio"),
                   self.EPI_MAP: (styling.style_epi, "Edge preservation (EPI)")}
        for param, (styler, name) in stylers.items():
            if param in placed:
                styling.style_when_loaded(context, placed[param], styler, name)

    def _progress(self, feedback, start=0.0, end=1.0) -> FeedbackProgress:
        return FeedbackProgress(feedback, start, end)


# ------------------------------------------------------------------------------------------------
