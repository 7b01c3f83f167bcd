#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for the SAR autoencoder codec:
# Debian QGIS packages, a venv on Debian's Python (system site packages), pinned pip deps, the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SARAE_VENV:-$ROOT/.venv}"
cd "$ROOT"

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_apt=0
for pkg in python3-qgis qgis python3-venv gdal-bin; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "[setup] installing Debian packages (python3-qgis, qgis, gdal-bin, python3-venv)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    python3-qgis qgis gdal-bin python3-venv python3-pip >/dev/null
else
  echo "[setup] Debian packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv $VENV (Debian python, system site packages)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

stamp="$VENV/.sarae-deps"
want="$(sha256sum "$ROOT/scripts/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] pip-installing pinned dependencies and the project"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=23" >/dev/null
  "$VENV/bin/python" -m pip install -q -r "$ROOT/scripts/requirements.txt"
  # benchmarks only (HTJ2K/AVIF baselines): its wheel declares numpy>=2 but works with numpy 1.24 (ENVIRONMENT notes)
  "$VENV/bin/python" -m pip install -q --no-deps "imagecodecs==2026.3.6"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  echo "$want" > "$stamp"
else
  echo "[setup] Python dependencies up to date"
fi

echo "[setup] checking the environment"
QT_QPA_PLATFORM=offscreen "$VENV/bin/python" - <<'PY'
import numpy, torch, rasterio, pytorch_msssim, constriction, zstandard, scipy, onnxruntime, onnx
import distributed  # batch (optional extra; the tests use it)
from sar_ae_core.requirements import RUNTIME
for module, _ in RUNTIME:
    __import__(module)
import qgis.core, osgeo.gdal
import sar_ae_core
assert numpy.__version__.startswith("1."), numpy.__version__
print(f"[setup] ok: numpy {numpy.__version__}, torch {torch.__version__}, rasterio {rasterio.__version__}, "
      f"QGIS {qgis.core.Qgis.QGIS_VERSION}, sar_ae_core {sar_ae_core.__version__}")
PY
