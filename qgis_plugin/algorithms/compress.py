"""Processing algorithm `sarae:compress` (see base.py for what every algorithm shares)."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputNumber

from .base import SarAeAlgorithm, rate_points_help


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
        "<b>Target rate</b> (bits per pixel): the rate point, its quantization and, where that gives the smaller "
        "error, a residual layer are searched so that the file has that size (within 2 %).\n"
        "<b>Quantization bits</b> (uniform coder): fewer bits, smaller file, lower quality (8 is a good default).\n"
        "<b>Post-filter</b> (advanced): a 5x5 filter fitted on the file's own reconstruction and stored in it (about "
        "40 bytes a band): 'auto' keeps the speckle of homogeneous areas (ENL ratio at most 1.14) from 0.5 bits per "
        "pixel and minimises the error below; 'enl', 'mse' force one; 'off' for none.\n\n"
        "<b>Compressed file</b>: left at '[Save to temporary file]', the .sarz is written beside the input "
        "(scene.sarz, or scene_2.sarz if that exists) so that it outlives the QGIS session; where the input's "
        "folder takes no new files (read-only, or inside a zip archive) it goes to the Processing output folder "
        "(Settings > Options > Processing > General). No output may be an "
        "input or the file of a loaded layer; another existing file is replaced, as in every QGIS algorithm.\n\n"
        "The log reports the real rate in bits per pixel, measured from the file's bytes, and the compression "
        "ratio against the source's sample size. Advanced: dB range (auto keeps the model's unless the raster "
        "falls outside it), latent coder (auto: the model's learned entropy coder when it has one, its tables fitted "
        "to the raster where that pays, else uniform quantization + zstd), residual layer step in dB (the "
        "difference to the network's reconstruction, coded so that every pixel comes back within that step; "
        "~1 bit per pixel more per halving), decoder budget with a target rate (2.5 keeps the search to the light "
        "decoders, a quarter of sarae-q4's operations per pixel: faster reconstruction, 0.3-0.6 dB less on "
        "calibrated GRD at 1-2 bits per pixel), device (auto uses CUDA when present), tile size and tiles per batch "
        "(memory).")

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
