#!/usr/bin/env bash
# The GPU bench, in one call on the device machine, after the earlier calls left the bundle's parts in
# /tmp/gpu-bench/parts (bench/gpu/README.md gives the sequence; bench/gpu/prepare.py makes the parts here).
#
#   bash bench/gpu/run_on_device.sh                # on the device: reassemble, install, check, measure
#   bash bench/gpu/run_on_device.sh --installed    # any CUDA machine with onnxruntime-gpu installed by pip
#   bash bench/gpu/run_on_device.sh --cpu-dry-run  # here: the same steps on the CPU, short timings
#
# Reassembles the parts with the carried zstandard wheel (there is no zstd binary there), unpacks the bundle
# (site/ = onnxruntime-gpu and the other carried packages, workspace/ = the built models) and runs
# bench/gpu/device_check.py with site/ on PYTHONPATH and the CUDA 13 libraries of the PyTorch environment on
# LD_LIBRARY_PATH. The results (gpu-results.json, gpu-results.txt, serve.json) go to $OUT.
# The dry run reassembles and unpacks the same bundle but runs on the project's .venv (the carried packages
# are CPython 3.12 builds), with every import the device could not satisfy refused.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${GPU_BENCH_WORK:-/tmp/gpu-bench}
CARRY=$REPO/bench/gpu/.carry
MODE=device
EXTRA=()
for argument in "$@"; do
  case $argument in
    --cpu-dry-run) MODE=dry; EXTRA+=(--cpu-dry-run --seconds 0.5 --budget-s 600) ;;
    --installed) MODE=installed ;;
    *) echo "run_on_device.sh: unknown argument $argument (expected --cpu-dry-run or --installed)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK/parts" "$OUT"
started=$(date +%s)

if [[ $MODE == installed ]]; then
  # Models built by `python bench/gpu/prepare.py --no-bundle`; packages from the active Python environment.
  PYTHON=${PYTHON:-python3}
  WORKSPACE=$CARRY/stage/workspace
  [[ -d $WORKSPACE ]] || { echo "run_on_device.sh: $WORKSPACE is missing; run: python bench/gpu/prepare.py --no-bundle" >&2; exit 2; }
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
else
  # The run call carries the last part and boot/ into the checkout; earlier calls moved theirs out already.
  if [[ -d $CARRY/boot ]]; then rm -rf "$WORK/boot"; cp -r "$CARRY/boot" "$WORK/boot"; fi
  if [[ $MODE == device ]]; then find "$CARRY/parts" -name 'bundle.tar.zst.part-*' -exec mv {} "$WORK/parts/" \; 2>/dev/null || true
  else cp "$CARRY"/parts/bundle.tar.zst.part-* "$WORK/parts/"; fi
  [[ -f $WORK/boot/manifest.json ]] || { echo "run_on_device.sh: no boot/manifest.json: carry bench/gpu/.carry/boot (see bench/gpu/README.md)" >&2; exit 2; }

  if [[ $MODE == device ]]; then
    PYTHON=python3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/boot-site" "$WORK"/boot/zstandard-*.whl
    BOOT_PATH=$WORK/boot-site
  else
    PYTHON=$REPO/.venv/bin/python
    BOOT_PATH=
  fi
  rm -rf "$WORK/bundle"
  PYTHONPATH=$REPO/bench/gpu${BOOT_PATH:+:$BOOT_PATH} "$PYTHON" - "$WORK" <<'EOF'
import sys, time
from pathlib import Path
import carry
work = Path(sys.argv[1])
started = time.monotonic()
try:
    carry.unpack(work / "parts", carry.read_description(work / "boot" / "manifest.json"), work / "bundle")
except carry.CarryError as error:
    raise SystemExit(f"run_on_device.sh: {error}")
print(f"bundle unpacked into {work / 'bundle'} in {time.monotonic() - started:.1f} s")
EOF
  WORKSPACE=$WORK/bundle/workspace
  if [[ $MODE == device ]]; then
    export PYTHONPATH=$WORK/bundle/site:$REPO
    # CUDA 13 (cu13/lib, known to work with this build), then any other NVIDIA wheel's libraries (cuDNN).
    NVIDIA=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
    CUDA_LIBS=$NVIDIA/cu13/lib
    for folder in "$NVIDIA"/*/lib; do [[ -d $folder && $folder != "$CUDA_LIBS" ]] && CUDA_LIBS=$CUDA_LIBS:$folder; done
    export LD_LIBRARY_PATH=$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  else
    # Refuse every import the device would lack: its own packages plus what the bundle carries.
    rm -rf "$WORK/dry-run"; mkdir -p "$WORK/dry-run"
    "$PYTHON" "$REPO/bench/gpu/device_imports.py" --write-guard "$WORK/dry-run" --site "$WORK/bundle/site"
    export PYTHONPATH=$WORK/dry-run:$REPO
  fi
fi

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0], sys.executable)'); mode $MODE"
status=0
"$PYTHON" "$REPO/bench/gpu/device_check.py" --workspace "$WORKSPACE" --out "$OUT" "${EXTRA[@]}" || status=$?
if [[ $MODE == dry && -s $WORK/dry-run/hidden.txt ]]; then
  echo "dry run: imports hidden because the device lacks them (optional ones are fine; add needed ones to bench/gpu/requirements.txt): $(sort -u "$WORK/dry-run/hidden.txt" | tr '\n' ' ')"
fi
echo "run_on_device.sh: done in $(( $(date +%s) - started )) s (exit $status); results in $OUT"
exit $status
