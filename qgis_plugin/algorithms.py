"""Processing algorithms: each one is a thin adapter from QGIS parameters and QgsProcessingFeedback
(progress, cancel) to one `sar_ae_core` function. No codec logic lives here.

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
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProject,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
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

from . import styling
from .deps import dependency_problem
from .report import assessment_html, write_text_atomic
from sar_ae_core.output import same_file as _same_file  # noqa: E402 - dependency-free

ICON_PATH = str(Path(__file__).resolve().parent / "icons" / "sarae.svg")
# sar_ae_core.defaults is dependency-free: the plugin reads it before it knows whether torch imports
from sar_ae_core.defaults import (ATTENTION_MODEL, CODEC_IDS, DEFAULT_MODEL, OUTPUT_UNITS, SCALING_CHOICES, TILE,  # noqa: E402
                                  UNIT_CHOICES)

CODEC_CHOICES = ("auto",) + CODEC_IDS
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

    def __init__(self, feedback, start: float = 0.0, end: float = 1.0):
        self.feedback, self.start, self.end = feedback, start, end
        self._stage = None

    def __call__(self, fraction: float, message: str = "") -> bool:
        """Report progress; False (cancel) when the user pressed Cancel."""
        if self.feedback is None:
            return True
        self.feedback.setProgress(100.0 * (self.start + (self.end - self.start) * fraction))
        stage = re.sub(r"\d+", "#", message)
        if message and stage != self._stage:  # one line per stage, not one per tile
            self._stage = stage
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
        return parts.get("path") or layer.source()

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
            output = beside(source, ".sarz")
            feedback.pushInfo(self.tr(f"Compressed file: {output} (beside the input; choose a file to put it "
                                      "elsewhere)"))
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
        target = self.parameterAsDouble(parameters, self.TARGET_BPP, context) \
            if self.parameterDefinition(self.TARGET_BPP) is not None else 0.0
        if target > 0:
            from sar_ae_core.rate import compress_to_rate, search_summary

            feedback.pushInfo(self.tr(f"Target rate {target:g} bits per pixel: the rate point and its quantization "
                                      "are searched (Model is not used)"))
            progress(0.05, "searching the rate")
            res = compress_to_rate(source, output, target, overwrite=True, **options)
            feedback.pushInfo(search_summary(res))
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
        if res.get("escape_step_db"):
            feedback.pushInfo(self.tr(f"Kept exactly (nothing clipped): {res['escaped_pixels']:,} pixel(s) outside "
                                      f"the dB range or among the brightest 0.1 %, to ±{res['escape_step_db'] / 2:g} dB"))

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
        from sar_ae_core.assess import assess_rasters

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
class CompressAlgorithm(SarAeAlgorithm):
    """Compress a SAR raster into a .sarz file."""

    _id = "compress"
    _display = "Compress SAR raster"
    _help = (
        "Compresses a Sentinel-1 (or other SAR) raster with a learned autoencoder into a .sarz file that keeps "
        "the georeference, nodata mask and band names.\n\n"
        "<b>Bands</b>: 'all' or a comma-separated list (1,2).\n"
        "<b>Units</b>: 'auto' decides from the band metadata, the file name and the values (dB, linear power, "
        "amplitude / GRD digital numbers, complex SLC).\n"
        "<b>Model</b>: the rate point: sarae-q1 (lowest rate) .. sarae-q4 (highest quality), see the list below; "
        "or any .pt bundle chosen as model file.\n"
        "<b>Quantization bits</b> (uniform coder): fewer bits, smaller file, lower quality (8 is a good default).\n\n"
        "<b>Compressed file</b>: left at '[Save to temporary file]', the .sarz is written beside the input "
        "(scene.sarz, or scene_2.sarz if that exists) so that it outlives the QGIS session. No output may be an "
        "input or the file of a loaded layer; another existing file is replaced, as in every QGIS algorithm.\n\n"
        "The log reports the real rate in bits per pixel, measured from the file's bytes, and the compression "
        "ratio against the source's sample size. Advanced: dB range (auto keeps the model's unless the raster "
        "falls outside it), latent coder (auto: the model's learned entropy coder when it has one, else uniform "
        "quantization + zstd), device (auto uses CUDA when present), tile size and tiles per batch (memory).")

    def shortHelpString(self) -> str:
        """The help text and the measured rate of every bundled model (pick the rate point with Model)."""
        return self.tr(self._help) + rate_points_help()

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self._add_compress_params()
        self.addOutput(QgsProcessingOutputNumber("BYTES", self.tr("File size (bytes)")))

    def run_core(self, parameters, context, feedback):
        """Compress INPUT into OUTPUT."""
        _, output, res = self._compress(parameters, context, feedback, self._progress(feedback))
        return {self.OUTPUT: output, "BPP": res["bpp"], "COMPRESSION_RATIO": res["compression_ratio"],
                "BYTES": res["bytes"]}


class ReconstructAlgorithm(SarAeAlgorithm):
    """Reconstruct a georeferenced GeoTIFF from a .sarz file."""

    _id = "reconstruct"
    _display = "Reconstruct SAR raster"
    _help = (
        "Decodes a .sarz file into a GeoTIFF with the source's CRS, geotransform or GCPs, nodata and band names.\n\n"
        "<b>Output units</b>: 'source' gives the original units and data type (e.g. uint16 DN amplitude); 'db' "
        "gives float32 backscatter in dB.\n"
        "<b>Model file</b>: only needed when the file was made with a model that is not bundled; it must be the "
        "same model (checked by its SHA-256).\n\n"
        "Decoding runs on the CPU by default, which gives the same pixels on every machine.")

    def prepareAlgorithm(self, parameters, context, feedback):
        """On the main thread: the loaded layer the file was compressed from (by its file name and band count),
        whose look the reconstruction takes; only the header is read (no torch on the GUI thread)."""
        self._renderer = None
        try:
            from sar_ae_core.container import ContainerReader

            with ContainerReader.open(self.parameterAsFile(parameters, self.INPUT, context)) as r:
                src = r.header.get("source") or {}
            name, count = src.get("name"), len(src.get("bands") or [])
        except Exception:  # noqa: BLE001 - a damaged file is reported by processAlgorithm, with its reason
            name, count = None, 0
        source_units = self._enum(parameters, self.UNITS, context) == "source"
        project = context.project() if context.project() is not None else QgsProject.instance()
        for layer in project.mapLayers().values():
            if name and source_units and os.path.basename(layer_file(layer)) == name:
                self._renderer = styling.source_renderer(layer, count)
                if self._renderer is not None:
                    break
        return super().prepareAlgorithm(parameters, context, feedback)

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self._add_sarz_input()
        self.addParameter(self._choice(self.UNITS, "Output units", OUTPUT_UNITS, "source"))
        self._add_sarz_model_file()
        self._add_device(default="cpu")
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Reconstruction")))

    def run_core(self, parameters, context, feedback):
        """Decode INPUT into OUTPUT and style it in gray."""
        from sar_ae_core.codec import reconstruct_raster

        source = self.parameterAsFile(parameters, self.INPUT, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        self._guard_outputs({self.tr("Reconstruction"): output},
                            [source, self.parameterAsFile(parameters, self.MODEL_FILE, context)], feedback)
        res = reconstruct_raster(source, output, units=self._enum(parameters, self.UNITS, context),
                                 model=self.parameterAsFile(parameters, self.MODEL_FILE, context) or None,
                                 device=self._enum(parameters, self.DEVICE, context),
                                 overwrite=True, progress=self._progress(feedback))
        self._wrote(output)
        feedback.pushInfo(self.tr(f"Wrote {output}: {res['width']}x{res['height']} px, {res['bands']} band(s), "
                                  f"{res['units']} {res['dtype']}, {res['seconds']:.1f} s."))
        renderer = getattr(self, "_renderer", None)
        styler = styling.style_like(renderer) if renderer is not None else styling.style_reconstruction(None)
        styling.style_when_loaded(context, output, styler, reconstruction_name(source))
        return {self.OUTPUT: output}


class AssessAlgorithm(SarAeAlgorithm):
    """Compare a reconstruction with its reference: metrics, report and maps."""

    _id = "assess"
    _display = "Assess reconstruction quality"
    _group = ("quality", "Quality")
    _help = (
        "Compares a reconstructed raster with its reference (same grid and bands) with SAR quality measures: "
        "PSNR and SSIM (dB scaled by the reference's 1st–99th percentiles), RMSE in dB, ENL ratio over "
        "homogeneous areas (above 1: speckle smoothed, below 1: noise added) and the edge preservation index.\n\n"
        "Writes an HTML report and three maps: absolute error in dB, local ENL ratio and local EPI. Only pixels "
        "valid in both rasters count.\n"
        "<b>Units</b> are those of the reference; the reconstruction's are read from its metadata.")

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference (original) raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Reconstructed raster")))
        self.addParameter(QgsProcessingParameterString(self.BANDS, self.tr("Bands ('all' or a list such as 1,2)"),
                                                       defaultValue="all"))
        self._add_units("Units of the reference")
        self._add_map_destinations()
        self._add_metric_outputs()

    def run_core(self, parameters, context, feedback):
        """Assess INPUT against REFERENCE."""
        reference = self._raster_file(parameters, self.REFERENCE, context)
        test = self._raster_file(parameters, self.INPUT, context)
        res, placed = self._assess(reference, test, parameters, context, feedback, self._progress(feedback),
                                   units=self._enum(parameters, self.UNITS, context),
                                   bands=self.parameterAsString(parameters, self.BANDS, context).strip() or "all")
        if self.OUTPUT_HTML in placed:
            self._wrote(write_text_atomic(placed[self.OUTPUT_HTML], assessment_html(res)))
        self._style_maps(context, placed)
        return {**placed, **{name: res[key] for name, key, _ in METRIC_OUTPUTS}}


class AttentionAlgorithm(SarAeAlgorithm):
    """Map where a CBAM model's spatial attention looks."""

    _id = "attention"
    _display = "Attention map"
    _group = ("model", "Model insight")
    _help = (
        "Runs the model's spatial attention (CBAM) over one band of the raster, tile by tile with the same "
        "windows the encoder uses, and writes the mean attention (0–1) as a GeoTIFF on the source's grid. "
        "It shows where the model concentrates while coding: edges, bright scatterers, textured areas.\n\n"
        "Only models with attention (variants res_cbam and full_attention) have such maps; others give a clear "
        "error. The map is shown as a semi-transparent overlay.")

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("SAR raster")))
        # optional so that a missing BAND means band 1 (a required band parameter has no usable default)
        self.addParameter(QgsProcessingParameterBand(self.BAND, self.tr("Band"), 1, self.INPUT, optional=True))
        self._add_units()
        self._add_model(ATTENTION_MODEL)
        self._add_device()
        self._add_tiling()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Attention map")))
        self.addOutput(QgsProcessingOutputNumber("MEAN", self.tr("Mean attention")))

    def run_core(self, parameters, context, feedback):
        """Write the attention map of INPUT."""
        from sar_ae_core.attention import attention_map_raster

        source = self._raster_file(parameters, self.INPUT, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        self._guard_outputs({self.tr("Attention map"): output},
                            [source, self.parameterAsFile(parameters, self.MODEL_FILE, context)], feedback)
        res = attention_map_raster(source, output, model=self._model(parameters, context),
                                   band=self.parameterAsInt(parameters, self.BAND, context) or 1,
                                   units=self._enum(parameters, self.UNITS, context),
                                   device=self._enum(parameters, self.DEVICE, context),
                                   tile=self.parameterAsInt(parameters, self.TILE, context),
                                   batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                                   overwrite=True, progress=self._progress(feedback))
        self._wrote(output)
        feedback.pushInfo(self.tr(f"Mean attention {res['mean']:.4f} over {len(res['modules'])} attention "
                                  f"module(s) of model {res['model']}."))
        styling.style_when_loaded(context, output, styling.style_attention, "Attention")
        return {self.OUTPUT: output, "MEAN": res["mean"]}


class BitAllocationAlgorithm(SarAeAlgorithm):
    """Where the bits of a .sarz file go, as a map."""

    _id = "bit_allocation"
    _display = "Bit allocation map"
    _group = ("model", "Model insight")
    _help = (
        "Maps where the codec spent its bits: bits per pixel computed from the coded symbols of the .sarz file "
        "itself under the model's frozen probability tables, one band per coded band, on the source's grid. "
        "Its sum equals the file's coded latent bits (within 1 %) and it has no tile seams. Bright, textured and "
        "edge-rich areas cost more; smooth water and fields less. Shown as a semi-transparent heat overlay "
        "stretched over the map's own range.\n\n"
        "Needs a file coded with a learned factorized entropy model (every bundled rate point).")

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self._add_sarz_input()
        self._add_sarz_model_file()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Bit allocation map")))
        self.addOutput(QgsProcessingOutputNumber("MEAN_BPP", self.tr("Mean latent bits per pixel")))

    def run_core(self, parameters, context, feedback):
        """Write the bit-allocation map of INPUT."""
        from sar_ae_core.bitmap import bit_allocation_raster

        source = self.parameterAsFile(parameters, self.INPUT, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        model = self.parameterAsFile(parameters, self.MODEL_FILE, context) or None
        self._guard_outputs({self.tr("Bit allocation map"): output}, [source, model], feedback)
        res = bit_allocation_raster(source, output, model=model, overwrite=True, progress=self._progress(feedback))
        self._wrote(output)
        feedback.pushInfo(self.tr(f"Mean {res['mean_bpp']:.4f} latent bits per pixel; the map sums to "
                                  f"{res['bits'] / 8:,.0f} bytes, the file codes {res['latent_bytes']:,}."))
        name = f"{Path(source).stem} — bits per pixel"
        styling.style_when_loaded(context, output, styling.style_bit_allocation, name)
        return {self.OUTPUT: output, "MEAN_BPP": res["mean_bpp"]}


class CompressReviewAlgorithm(SarAeAlgorithm):
    """Compress, reconstruct and assess in one run, loading the reconstruction and the quality maps."""

    _id = "compress_review"
    _display = "Compress and review"
    _help = (
        "Compresses the raster (as <i>Compress SAR raster</i>), reconstructs it and assesses the reconstruction "
        "against the original, in one run. The reconstruction is loaded with the source layer's look (its bands, "
        "stretch and colors) so the two compare by eye, with the absolute error (dB), ENL ratio and EPI maps and an HTML report "
        "that states the real bits per pixel next to PSNR, SSIM, RMSE, ENL ratio and EPI. With a band subset, "
        "only those bands are compressed and compared.")

    def initAlgorithm(self, config=None):
        """Declare parameters and outputs."""
        self._add_compress_params()
        self.addParameter(QgsProcessingParameterRasterDestination(self.RECONSTRUCTION, self.tr("Reconstruction")))
        self._add_map_destinations()
        self._add_metric_outputs()

    def prepareAlgorithm(self, parameters, context, feedback):
        """Read the source layer's stretch on the main thread (renderers are not thread-safe)."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        self._stretch = styling.layer_stretch(layer, 1) if layer is not None else None
        bands = (self.parameterAsString(parameters, self.BANDS, context) or "all").strip()
        # the reconstruction holds the same bands in the same order only for 'all': then it takes the source's look
        self._renderer = styling.source_renderer(layer, layer.bandCount() if layer else 0) if bands == "all" else None
        return super().prepareAlgorithm(parameters, context, feedback)

    def run_core(self, parameters, context, feedback):
        """Compress INPUT, reconstruct it, assess the reconstruction; load everything styled."""
        from sar_ae_core.codec import reconstruct_raster, sarz_info

        recon = self.parameterAsOutputLayer(parameters, self.RECONSTRUCTION, context)
        # every destination is checked before any work: none may be the source, the model or a loaded layer
        source, sarz, comp = self._compress(parameters, context, feedback, self._progress(feedback, 0.0, 0.35),
                                            extra_outputs={self.tr("Reconstruction"): recon,
                                                           **self._destination_labels(parameters, context)})
        device = self._enum(parameters, self.DEVICE, context)
        reconstruct_raster(sarz, recon, units="source", model=self.parameterAsFile(parameters, self.MODEL_FILE,
                                                                                   context) or None,
                           device="cpu" if device == "auto" else device, overwrite=True,
                           progress=self._progress(feedback, 0.35, 0.55))
        self._wrote(recon)
        units = sarz_info(sarz)["source_units"]  # the units compress decided, for both rasters
        res, placed = self._assess(source, recon, parameters, context, feedback, self._progress(feedback, 0.55, 1.0),
                                   units=units, bands=self.parameterAsString(parameters, self.BANDS, context).strip()
                                   or "all", test_bands="all",  # the reconstruction holds exactly the chosen bands
                                   guard=False)  # checked before compressing
        if self.OUTPUT_HTML in placed:
            self._wrote(write_text_atomic(placed[self.OUTPUT_HTML],
                                          assessment_html(res, title="Compress and review", compression=comp)))
        renderer = getattr(self, "_renderer", None)
        styler = styling.style_like(renderer) if renderer is not None else \
            styling.style_reconstruction(getattr(self, "_stretch", None))
        styling.style_when_loaded(context, recon, styler, reconstruction_name(sarz))
        self._style_maps(context, placed)
        return {self.OUTPUT: sarz, self.RECONSTRUCTION: recon, **placed, "BPP": comp["bpp"],
                "COMPRESSION_RATIO": comp["compression_ratio"],
                **{name: res[key] for name, key, _ in METRIC_OUTPUTS}}


ALGORITHMS = (CompressAlgorithm, ReconstructAlgorithm, AssessAlgorithm, AttentionAlgorithm, BitAllocationAlgorithm,
              CompressReviewAlgorithm)
