"""Processing algorithm `sarae:assess` (see base.py for what every algorithm shares)."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterLayer, QgsProcessingParameterString

from ..report import assessment_html, write_text_atomic
from .base import METRIC_OUTPUTS, SarAeAlgorithm


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
