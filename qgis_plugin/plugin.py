"""The QGIS plugin object: registers the Processing provider (desktop and qgis_process)."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import SarAeProvider


class SarAePlugin:
    """Registers the 'sarae' Processing provider; it has no other GUI of its own."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self) -> None:
        """Register the provider (called by qgis_process, and by initGui in the desktop)."""
        if self.provider is None:
            self.provider = SarAeProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Desktop start: the provider is the whole interface."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider when the plugin is disabled or reloaded."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
