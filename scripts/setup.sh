#!/usr/bin/env bash
# Sets up a fresh machine for buildsys: a virtual environment in .venv with the package (editable) and its build
# side (the `build` extra: TensorFlow, Keras, tf2onnx, ...), test and dev tools, at the versions in constraints.txt
# (the set TensorFlow 2.21, tritonclient and grpcio-tools agree on). Safe to run again: it only installs what is
# missing. The serving-only install is `pip install -c constraints.txt .` (see README, "Serving the models").
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[build,test,dev,spark,otel]'
echo "buildsys is installed in .venv ($(.venv/bin/python -c 'import buildsys; print(buildsys.__version__)'))"
