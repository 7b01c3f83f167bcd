"""The Processing provider 'sarae' that lists the codec's algorithms in the toolbox and qgis_process."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS, ICON_PATH


class SarAeProvider(QgsProcessingProvider):
    """SAR autoencoder codec: compress, reconstruct, assess, attention map, compress and review."""

    def id(self) -> str:
        """Provider id: algorithms are 'sarae:<name>'."""
        return "sarae"

    def name(self) -> str:
        """Name shown in the toolbox."""
        return "SAR autoencoder codec"

    def longName(self) -> str:
        """Name with the core library's version."""
        try:
            from sar_ae_core import __version__
        except Exception:  # noqa: BLE001
            __version__ = "?"
        return f"SAR autoencoder codec {__version__}"

    def icon(self) -> QIcon:
        """Toolbox icon."""
        return QIcon(ICON_PATH)

    def svgIconPath(self) -> str:
        """Path of the SVG icon."""
        return ICON_PATH

    def loadAlgorithms(self) -> None:
        """Add one instance of every algorithm."""
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())

    def supportedOutputRasterLayerExtensions(self) -> list:
        """The core writes GeoTIFF only."""
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:
        """Temporary raster outputs are GeoTIFFs."""
        return "tif"
