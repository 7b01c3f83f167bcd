"""Processing algorithm `sarae:compress_review` (see base.py for what every algorithm shares)."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterDestination

from .. import styling
from ..report import assessment_html, write_text_atomic
from .base import METRIC_OUTPUTS, SarAeAlgorithm, reconstruction_name


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
