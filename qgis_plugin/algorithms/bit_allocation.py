"""Processing algorithm `sarae:bit_allocation` (see base.py for what every algorithm shares)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterRasterDestination

from .. import styling
from .base import SarAeAlgorithm


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
        from sar_ae_core.quality.bitmap import bit_allocation_raster

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
