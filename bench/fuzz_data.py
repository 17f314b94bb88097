"""Fuzzes the data decoders far beyond the test suite's bounded run: image files and database cells (PNG, JPEG,
BMP, .npy, raw pixels) and `.npz` sources, with the strategies of tests/sources/test_data_fuzz.py.

Runs those tests with ``--examples`` examples each (the suite runs 250); any input that is neither decoded as
declared nor refused with one DataError line fails, with Hypothesis's smallest failing example.

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
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sources/test_data_fuzz.py"]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=environment, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
