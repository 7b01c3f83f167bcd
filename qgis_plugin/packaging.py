"""Build the installable plugin zip and install the plugin into a QGIS profile (no QGIS needed for either).

Layout of the plugin folder `sarae_codec/` (in the zip and in a profile):
    __init__.py, plugin.py, provider.py, algorithms/ (one module per algorithm), styling.py, deps.py, report.py,
    README.md, icons/
    metadata.txt                    from the repository root
    sar_ae_core/                    the core library, vendored, with its bundled models
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from sar_ae_core.io.raster import AtomicOutput

from .report import write_text_atomic

PLUGIN_NAME = "sarae_codec"
PLUGIN_DIR = Path(__file__).resolve().parent
ROOT = PLUGIN_DIR.parent
# Development tools that stay out of the plugin.
_DEV_ONLY = {"__main__.py", "packaging.py", "screenshots.py"}
_CORE_DATA = ("models_bundled/*.pt", "models_bundled/*.onnx.zip", "models_bundled/*.json", "coding/header_dict_v2.txt",
              "coding/wavelet_bank.npy")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same zip


def plugin_files(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(source file, path inside the plugin folder) for every file the plugin ships, sorted."""
    entries: list[tuple[Path, str]] = []
    plugin = root / "qgis_plugin"
    for p in sorted(plugin.rglob("*")):
        rel = p.relative_to(plugin)
        if p.is_file() and "__pycache__" not in rel.parts and rel.suffix not in (".pyc", ".pyo") \
                and not (len(rel.parts) == 1 and rel.name in _DEV_ONLY):
            entries.append((p, rel.as_posix()))
    metadata = root / "metadata.txt"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: plugin metadata missing")
    entries.append((metadata, "metadata.txt"))
    core = root / "sar_ae_core"
    for p in sorted(core.rglob("*.py")):  # the package and its role subpackages (io, nn, coding, quality)
        if "__pycache__" not in p.parts:
            entries.append((p, f"sar_ae_core/{p.relative_to(core).as_posix()}"))
    for pattern in _CORE_DATA:
        for p in sorted(core.glob(pattern)):
            entries.append((p, f"sar_ae_core/{p.relative_to(core).as_posix()}"))
    return sorted(entries, key=lambda e: e[1])


def build_zip(out_dir: str | os.PathLike = "dist", root: Path = ROOT) -> Path:
    """Write `<out_dir>/sarae_codec.zip` (top folder `sarae_codec/`) atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_NAME}.zip"
    with AtomicOutput(target, overwrite=True, suffix=".zip") as out:
        with zipfile.ZipFile(out.tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for src, rel in plugin_files(root):
                info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{rel}", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, src.read_bytes())
    return target


def default_profile_dir() -> Path:
    """The 'default' QGIS 3 user profile folder of this user on this platform."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def enable_in_settings(ini_path: str | os.PathLike, plugin: str = PLUGIN_NAME) -> None:
    """Set `[PythonPlugins] <plugin>=true` in a QGIS settings file, leaving every other line as it was."""
    ini_path = Path(ini_path)
    lines = ini_path.read_text(encoding="utf-8").splitlines() if ini_path.exists() else []
    out, in_section, done = [], False, False
    for line in lines:
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            if in_section and not done:
                out.append(f"{plugin}=true")
                done = True
            in_section = s == "[PythonPlugins]"
        elif in_section and s.split("=", 1)[0].strip() == plugin:
            if not done:
                out.append(f"{plugin}=true")
                done = True
            continue
        out.append(line)
    if not done:
        if not in_section:
            if out and out[-1].strip():
                out.append("")
            out.append("[PythonPlugins]")
        out.append(f"{plugin}=true")
    ini_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(str(ini_path), "\n".join(out) + "\n")


def install(profile: Optional[str | os.PathLike] = None, link: bool = False, root: Path = ROOT) -> Path:
    """Put the plugin folder into `<profile>/python/plugins/sarae_codec` (copies, or symlinks with `link`)
    and enable it in `<profile>/QGIS/QGIS3.ini`; returns the plugin folder."""
    profile = Path(profile) if profile else default_profile_dir()
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    target = plugins / PLUGIN_NAME
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.", dir=plugins))
    try:
        if link:
            # one link per top-level entry, so edits in the source tree show up after a plugin reload
            tops = {rel.split("/", 1)[0] for _, rel in plugin_files(root)}
            for name in sorted(tops):
                src = root / ("metadata.txt" if name == "metadata.txt" else
                              "sar_ae_core" if name == "sar_ae_core" else f"qgis_plugin/{name}")
                (staging / name).symlink_to(src.resolve(), target_is_directory=src.is_dir())
        else:
            for src, rel in plugin_files(root):
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        staging.chmod(0o755)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    enable_in_settings(profile / "QGIS" / "QGIS3.ini")
    return target
