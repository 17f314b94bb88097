"""Fuzzes the gRPC and REST front ends of a real server with Hypothesis, far beyond the test suite's bounded run.

Starts ``python -m serving`` on the tests' tiny generated classifier, sends ``--examples`` mutated
ModelInferRequests, as many mutated byte strings, as many ModelStreamInfer streams of one to three of either, as
many shared memory registrations, as many trace settings changes and as many unloads with any parameters of a
model that is not there (the strategies of
tests/serving/test_grpc_frontend.py; the server allows client shared memory, and some requests use a region that
the fuzz registers; it traces every request with its tensors, until a fuzzed change says otherwise), then
``--examples`` mutated HTTP requests (tests/serving/test_rest_fuzz.py: JSON bodies, binary header lengths, headers,
paths, trace settings, unload parameters), and fails if any answer is
not OK or a client-error status (HTTP: 2xx, 4xx, 501 or 503, never 500), if the server stops answering, or if its log
grows by more than a few lines (no log flood). Prints the status codes seen and the server's log size.

Example:
    python bench/fuzz_serve.py --examples 10000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tests.serving.conftest import free_port, publish_version  # noqa: E402
from tests.serving.test_grpc_frontend import fuzz_model_infer, fuzz_server_flags  # noqa: E402
from tests.serving.test_rest_fuzz import fuzz_rest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples of each kind (default 10,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "models"
        publish_version(repo, "digits", 1, seed=1)
        port, http_port = free_port(), free_port()
        log_path = Path(folder) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving",
                    "--repository",
                    str(repo),
                    "--port",
                    str(port),
                    "--http-port",
                    str(http_port),
                    "--no-metrics",
                    *fuzz_server_flags(Path(folder)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
                cwd=PROJECT_ROOT,
            )
            try:
                deadline = time.monotonic() + 60
                while "(ready)" not in log_path.read_text():
                    if server.poll() is not None or time.monotonic() > deadline:
                        print(log_path.read_text(), file=sys.stderr)
                        return 1
                    time.sleep(0.05)
                started = time.monotonic()
                seen = fuzz_model_infer(f"127.0.0.1:{port}", args.examples)
                http_seen = fuzz_rest(f"127.0.0.1:{http_port}", args.examples)
                elapsed = time.monotonic() - started
            finally:
                server.terminate()
                server.wait(60)
        lines = log_path.read_text().splitlines()
    print(
        f"{3 * args.examples} fuzzed requests, {args.examples} streams of 1-3, {args.examples} shared memory "
        f"registrations, {args.examples} trace settings changes and {args.examples} unloads in {elapsed:.0f} s; "
        f"gRPC status codes: {dict(sorted(seen.items()))}"
    )
    print(f"HTTP status codes: {dict(sorted(http_seen.items()))}")
    print(f"server log: {len(lines)} lines; exit code {server.returncode}")
    kinds = {line.split(" ", 3)[-1].split(":", 1)[0][:80] for line in lines}
    print("its kinds of line: " + "; ".join(sorted(kinds)))
    flood = len(lines) > 10 + 2 * elapsed / 10  # start and stop lines, plus at most one rate-limited line per 10 s
    return 1 if flood or server.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
