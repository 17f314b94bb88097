#!/usr/bin/env bash
# Creates one virtual environment per peer server for bench/serve_bench.py (and one for grpclib, a gRPC stack that
# it measures as a floor, `floor-grpclib`), apart from the project's .venv so that
# neither side's dependencies shape the other's: bench/.venvs/mlserver (Seldon MLServer 1.7.1) and
# bench/.venvs/kserve (KServe 0.21's Python ModelServer). Both get the same ONNX Runtime as the project's
# constraints.txt, so every server runs the same kernels. Safe to run again: pip only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
onnxruntime=$(grep -E '^onnxruntime==' ../constraints.txt)

make_venv() {
  local name=$1
  shift
  if [ ! -x ".venvs/$name/bin/python" ]; then
    "$python" -m venv ".venvs/$name"
  fi
  ".venvs/$name/bin/python" -m pip install --quiet --upgrade pip
  ".venvs/$name/bin/python" -m pip install --quiet "$onnxruntime" "$@"
  echo "bench/.venvs/$name: $(".venvs/$name/bin/python" -m pip freeze | grep -i -E "^($name|onnxruntime)==" | tr '\n' ' ')"
}

# MLServer's worker dies at start with uvloop 0.22+, so its last working release is pinned.
make_venv mlserver mlserver==1.7.1 uvloop==0.21.0
make_venv kserve kserve==0.21.0
# Not a peer: pure-Python gRPC on asyncio, measured as a floor against grpc.aio (serve_bench.py's floor-grpclib).
make_venv grpclib grpclib==0.4.9 "$(grep -E '^grpcio==' ../constraints.txt)" "$(grep -E '^protobuf==' ../constraints.txt)" \
  "$(grep -E '^uvicorn==' ../constraints.txt)" "$(grep -E '^uvloop==' ../constraints.txt)" numpy
