#!/usr/bin/env bash
# A bundle for training on a CUDA machine that has Python and PyTorch but not GDAL (rasterio) or this project's
# compiled wheels: the training and validation entries of the split file as dB arrays (python -m training.pack,
# zipped) and the two wheels the training imports (zstandard, constriction) for that machine's Python.
#
#   bash scripts/gpu_bundle.sh [OUT_DIR] [PYTHON_VERSION]      # default gpu_bundle/ for Python 3.12
#
# Then copy OUT_DIR and this checkout there and run scripts/gpu_train.sh. The test split stays behind.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-gpu_bundle}"
PYVER="${2:-3.12}"
PY="${SARAE_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
[ -e "$OUT" ] && { echo "gpu_bundle: $OUT exists: remove it first" >&2; exit 2; }
TMP="$OUT.part"
rm -rf "$TMP"
mkdir -p "$TMP/wheels"
"$PY" -m training.pack --split-file training/splits/broad.json --out "$TMP/corpus" >/dev/null
"$PY" - "$TMP" <<'PYEOF'
import os, sys, zipfile
tmp = sys.argv[1]
with zipfile.ZipFile(os.path.join(tmp, "corpus.zip"), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for name in sorted(os.listdir(os.path.join(tmp, "corpus"))):
        z.write(os.path.join(tmp, "corpus", name), name)
PYEOF
rm -rf "$TMP/corpus"
for pkg in zstandard constriction; do
  ver="$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$TMP/wheels" "$pkg==$ver"
done
mv "$TMP" "$OUT"
du -sh "$OUT"/* | sed 's/^/gpu_bundle: /'
