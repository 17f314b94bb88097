"""Fuzzes the readers of outside files, texts and URLs far beyond the test suite's bounded run: image files and
database cells (PNG, JPEG, BMP, .npy, raw pixels), `.npz` sources and SQL tables (tests/sources/test_data_fuzz.py,
tests/sources/test_sql.py), SOURCE texts of the command line (tests/sources/test_resolve.py), definitions
(tests/dsl/test_definition_fuzz.py: layer stacks, arguments, data declarations), remote-cache records, URLs and
header files (tests/remote/), the output tree's manifest.json and config.pbtxt (tests/modelrepo/test_format.py), the
files of a served model repository, model.onnx and labels.txt included, and a load request's JSON config
(tests/serving/test_model_files.py, tests/serving/test_repository.py), ensemble configs checked against their
steps' models (tests/serving/test_ensemble.py), the onnxruntime backend's parameters and accelerators
(tests/serving/test_backend_config.py), the object keys of a repository in object storage
(tests/serving/test_mirror.py), model_warmup samples and their data files
(tests/serving/test_warmup.py), the REST codec's bodies (tests/serving/test_rest_codec.py), and BYTES tensors' raw
layout and declared shapes (tests/serving/test_codec.py). The running server's front ends are bench/fuzz_serve.py's.

Runs those tests with ``--examples`` examples each (the suite runs 60-300, drawn the same way on every run); any
input that is neither read as declared nor refused with one line fails, with Hypothesis's smallest failing example.

Example:
    python bench/fuzz_data.py --examples 10000
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples of each test (default 10,000)")
    args = parser.parse_args()
    environment = {**os.environ, "BUILDSYS_FUZZ_EXAMPLES": str(args.examples)}
    tests = [
        "tests/sources/test_data_fuzz.py",
        "tests/sources/test_sql.py",
        "tests/sources/test_resolve.py",
        "tests/dsl/test_definition_fuzz.py",
        "tests/remote/test_record.py",
        "tests/remote/test_backends.py",
        "tests/modelrepo/test_format.py",
        "tests/serving/test_model_files.py",
        "tests/serving/test_repository.py",
        "tests/serving/test_ensemble.py",
        "tests/serving/test_backend_config.py",
        "tests/serving/test_mirror.py",
        "tests/serving/test_warmup.py",
        "tests/serving/test_rest_codec.py",
        "tests/serving/test_codec.py",
    ]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=environment, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
