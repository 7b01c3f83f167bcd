#!/usr/bin/env bash
# Screenshots of the real QGIS desktop (under a virtual X display) for docs/img/: compress -> reconstruct -> assess
# on the bundled 2-band Sentinel-1 sample, each algorithm opened in its dialog and run with a real click, with the
# source layer loaded (so the reconstruction takes its look). Needs `xvfb xdotool imagemagick` and the desktop
# driver in ../shared/tools/qgis_gui (the workplace's QGIS desktop harness).
#   bash scripts/desktop_screenshots.sh [OUTDIR]      # default: a temporary folder; copies the pictures to docs/img/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRIVER="${SARAE_QGIS_GUI:-$ROOT/../shared/tools/qgis_gui/qgis_gui_check.sh}"
VENV="${SARAE_VENV:-$ROOT/.venv}"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
OUT="${1:-$(mktemp -d)}"
SAMPLE="$ROOT/sar_ae_core/sample/s1_iw_grd_sen1floods11_spain_7370579_vv_vh_db.tif"
[ -x "$DRIVER" ] || [ -f "$DRIVER" ] || { echo "error: $DRIVER: desktop driver not found" >&2; exit 2; }
for tool in Xvfb xdotool import; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install xvfb xdotool imagemagick)" >&2; exit 2; }
done

mkdir -p "$OUT/plugins" "$OUT/work"
"$VENV/bin/python" -m qgis_plugin package --out "$OUT/dist" >/dev/null
"$VENV/bin/python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
  "$OUT/dist/sarae_codec.zip" "$OUT/plugins"
SARZ="$OUT/work/scene.sarz"
REC="$OUT/work/scene_reconstructed.tif"

run() {  # name, algorithm, extra parameters (JSON)
  rm -rf "$OUT/$1"
  QGC_TIMEOUT=240 QGC_PARAMS="$3" PYTHONPATH="$SITE" \
    bash "$DRIVER" "$OUT/plugins" sarae_codec "$SAMPLE" "$OUT/$1" "$2" >"$OUT/$1.log" 2>&1 \
    || { echo "error: $2 failed on the desktop (see $OUT/$1/summary.json)" >&2; exit 1; }
}
run compress sarae:compress "{\"OUTPUT\": \"$SARZ\"}"
run reconstruct sarae:reconstruct "{\"INPUT\": \"$SARZ\", \"OUTPUT\": \"$REC\"}"
run assess sarae:assess "{\"REFERENCE\": \"@input\", \"INPUT\": \"$REC\"}"

mkdir -p "$ROOT/docs/img"
cp "$OUT/compress/02_dialog.png" "$ROOT/docs/img/desktop_compress_dialog.png"
cp "$OUT/reconstruct/04_main_after_run.png" "$ROOT/docs/img/desktop_reconstruction.png"
cp "$OUT/assess/03_dialog_after_run.png" "$ROOT/docs/img/desktop_assess_log.png"
cp "$OUT/assess/04_main_after_run.png" "$ROOT/docs/img/desktop_quality_maps.png"
echo "desktop screenshots in $ROOT/docs/img (runs in $OUT)"
