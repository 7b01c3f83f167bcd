#!/usr/bin/env bash
# Training runs on a CUDA machine from a bundle of scripts/gpu_bundle.sh, side by side on one GPU, each stopped by
# --time-limit (resumable: its last.pt), each run's best checkpoint and log copied flat into OUT_DIR:
#
#   bash scripts/gpu_train.sh BUNDLE_DIR OUT_DIR MINUTES RECIPE
#
# RECIPE: one run per line, "NAME training-arguments…" (blank lines and '#' comments skipped); every run gets
# --split-file (the bundle's), --device, --workers (the CPU cores shared out), --time-limit MINUTES and its
# --out-dir. Set --steps to what the GPU does in MINUTES so that the learning-rate schedule ends with the run.
# Back here: .venv/bin/python -m training export OUT_DIR/NAME.best.pt sarae-NAME.pt --name sarae-NAME
# SARAE_GPU_PYTHON: the interpreter that has PyTorch (default python3); SARAE_DEVICE: cuda (default) or cpu;
# SARAE_GPU_EXTRA: arguments appended to every run's (later ones win), e.g. "--steps 2" for a dry run on a CPU.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: gpu_train.sh BUNDLE_DIR OUT_DIR MINUTES RECIPE" >&2; exit 2; }
BUNDLE="$(cd "$1" && pwd)"; OUT="$2"; MINUTES="$3"; RECIPE="$4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${SARAE_GPU_PYTHON:-python3}"
DEVICE="${SARAE_DEVICE:-cuda}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sarae-gpu.XXXXXX")"
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
  "$BUNDLE"/wheels/*.whl
export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SARAE_DATA="$WORK/corpus" PYTHONUNBUFFERED=1
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$BUNDLE/corpus.zip" "$SARAE_DATA"
"$PY" -c "import torch; print('gpu_train: torch', torch.__version__, '| cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
mapfile -t RUNS < <(grep -v '^[[:space:]]*\(#\|$\)' "$RECIPE")
[ "${#RUNS[@]}" -gt 0 ] || { echo "gpu_train: $RECIPE has no runs" >&2; exit 2; }
CORES="$(nproc)"
WORKERS=$(( (CORES - 1) / ${#RUNS[@]} )); [ "$WORKERS" -ge 1 ] || WORKERS=1
cd "$ROOT"
pids=(); names=()
for line in "${RUNS[@]}"; do
  name="${line%% *}"; args="${line#"$name"}"
  # shellcheck disable=SC2086 # the recipe's arguments split on spaces
  "$PY" -m training --split-file "$SARAE_DATA/split.json" --device "$DEVICE" --workers "$WORKERS" \
    --time-limit "$MINUTES" --no-tensorboard --out-dir "$WORK/runs/$name" $args ${SARAE_GPU_EXTRA:-} \
    > "$OUT/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
done
rc=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then echo "gpu_train: ${names[$i]} done"; else echo "gpu_train: ${names[$i]} failed" >&2; rc=1; fi
  [ -f "$WORK/runs/${names[$i]}/best.pt" ] && cp "$WORK/runs/${names[$i]}/best.pt" "$OUT/${names[$i]}.best.pt"
  tail -n 3 "$OUT/${names[$i]}.log" | sed "s/^/  ${names[$i]}: /"
done
rm -rf "$WORK"
exit "$rc"
