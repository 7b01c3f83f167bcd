"""Processing algorithm `sarae:attention` (see base.py for what every algorithm shares)."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterBand, QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer
from sar_ae_core.defaults import ATTENTION_MODEL

from .. import styling
from .base import SarAeAlgorithm


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
        from sar_ae_core.quality.attention import attention_map_raster

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
