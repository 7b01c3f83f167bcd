"""Checks that the Python running QGIS can import what the codec needs, and says how to fix it if not.

QGIS ships its own Python; torch and rasterio are not part of it. The provider must load without them
(so the algorithms are listed and can explain themselves), and every algorithm checks lazily before
running."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

from sar_ae_core.requirements import RUNTIME as REQUIRED  # (module to import, pip requirement): one list

_ok = False


def missing_dependencies() -> list[tuple[str, str, str]]:
    """(module, pip requirement, import error) for each required module the running Python cannot import."""
    missing = []
    for module, requirement in REQUIRED:
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - a broken install raises anything, not only ImportError
            missing.append((module, requirement, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    return missing


def qgis_python() -> str:
    """Best guess of the Python interpreter QGIS runs (sys.executable is the QGIS binary inside QGIS)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    if sys.platform == "win32":
        return os.path.join(sys.exec_prefix, "python.exe")
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in (sys.exec_prefix, sys.base_exec_prefix):  # the interpreter QGIS embeds, not the first on PATH
        candidate = os.path.join(prefix, "bin", name)
        if os.path.isfile(candidate):
            return candidate
    return shutil.which(name) or shutil.which("python3") or "python3"


def install_command(missing: list[tuple[str, str, str]]) -> str:
    """The pip command that installs the missing packages without changing QGIS's own numpy."""
    reqs = [req for _, req, _ in missing]
    try:
        import numpy

        reqs.append(f"numpy=={numpy.__version__}")  # keep the numpy QGIS's GDAL bindings were built against
    except Exception:  # noqa: BLE001
        pass
    return f"{qgis_python()} -m pip install --user " + " ".join(f'"{r}"' for r in reqs)


def dependency_problem() -> Optional[str]:
    """None when torch, rasterio & co. import; otherwise a message telling the user how to install them."""
    global _ok
    if _ok:
        return None
    missing = missing_dependencies()
    if not missing:
        _ok = True
        return None
    lines = [
        "The SAR autoencoder codec needs Python packages that QGIS's Python cannot import:",
        *[f"  - {module}: {error}" for module, _, error in missing],
        "Install them into the Python that QGIS runs, then restart QGIS:",
        f"  {install_command(missing)}",
        "On Windows run it in the OSGeo4W Shell (use 'python' there). On Debian/Ubuntu add "
        "--break-system-packages, or make a venv with '/usr/bin/python3 -m venv --system-site-packages VENV', "
        "pip-install the packages there and start QGIS with PYTHONPATH=VENV/lib/python3.X/site-packages.",
        "See the plugin's README.md for details.",
    ]
    return "\n".join(lines)
