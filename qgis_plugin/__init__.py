"""QGIS plugin for the SAR autoencoder codec: a Processing provider whose algorithms adapt sar_ae_core.

Installed from the zip, the plugin folder carries its own copy of `sar_ae_core`; in the source tree the
package sits beside this folder. Either way its parent folder is put on sys.path here, before anything
imports the core.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def core_location() -> str:
    """Folder holding the `sar_ae_core` package the plugin uses (its own copy first, else the source tree)."""
    for folder in (_HERE, os.path.dirname(os.path.realpath(_HERE))):
        if os.path.isfile(os.path.join(folder, "sar_ae_core", "__init__.py")):
            return folder
    return ""


_CORE = core_location()
if _CORE and _CORE not in sys.path:
    sys.path.insert(0, _CORE)


def classFactory(iface):  # noqa: N802 - name required by QGIS
    """Entry point QGIS calls to create the plugin."""
    from .plugin import SarAePlugin

    return SarAePlugin(iface)
