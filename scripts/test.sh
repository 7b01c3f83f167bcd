#!/usr/bin/env bash
# The README's test command: the whole suite on real SAR data with headless QGIS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SARAE_VENV:-$ROOT/.venv}"
cd "$ROOT"
[ -x "$VENV/bin/python" ] || bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit "$rc"
