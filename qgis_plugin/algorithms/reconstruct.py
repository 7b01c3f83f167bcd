"""Processing algorithm `sarae:reconstruct` (see base.py for what every algorithm shares)."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingParameterRasterDestination, QgsProject
from sar_ae_core.defaults import OUTPUT_COMPRESS, OUTPUT_UNITS

from .. import styling
from .base import SarAeAlgorithm, layer_file, reconstruction_name


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
        "<b>Output compression</b> (advanced): zstd by default (GDAL 2.3 or later reads it); deflate for older "
        "readers; a lossy float reconstruction compresses to ~80-88 % of its raw size.\n\n"
        "Decoding runs on the CPU by default, which gives the same pixels on every machine.")

    def prepareAlgorithm(self, parameters, context, feedback):
        """On the main thread: the loaded layer the file was compressed from (by its file name and band count),
        whose look the reconstruction takes; only the header is read (no torch on the GUI thread)."""
        self._renderer = None
        try:
            from sar_ae_core.coding.container import ContainerReader

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
        self._advanced(self._choice(self.OUTPUT_COMPRESS, "Output compression", OUTPUT_COMPRESS,
                                    OUTPUT_COMPRESS[0]))
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
                                 output_compress=self._enum(parameters, self.OUTPUT_COMPRESS, context),
                                 overwrite=True, progress=self._progress(feedback))
        self._wrote(output)
        feedback.pushInfo(self.tr(f"Wrote {output}: {res['width']}x{res['height']} px, {res['bands']} band(s), "
                                  f"{res['units']} {res['dtype']}, {res['seconds']:.1f} s."))
        renderer = getattr(self, "_renderer", None)
        styler = styling.style_like(renderer) if renderer is not None else styling.style_reconstruction(None)
        styling.style_when_loaded(context, output, styler, reconstruction_name(source))
        return {self.OUTPUT: output}
