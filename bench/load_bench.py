"""What a server's first scan costs with many models: loading them one after another against several at once
(`serve --model-load-thread-count`, Triton's flag).

A model folder from bench/prepare_models.py is linked in N times under other names (as in bench/poll_bench.py),
and a fresh process loads all of them in one scan, as `serve` does before it is ready (the sessions of each
version with the server's defaults, the smoke test), with each thread count in turn, alternating, `--repeats`
times; the scan alone is timed (not the process's imports), and medians are printed. A fresh process each time,
because a server starts once: in a process that has already made sessions, later ones cost about half as much.

Example:
    python bench/load_bench.py --model-dir /tmp/serve-models --models 40 --threads 1,2,4
"""

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.poll_bench import _repository  # noqa: E402 - the root is on the path from here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the output of bench/prepare_models.py")
    parser.add_argument("--models", type=int, default=40, help="copies of each model")
    parser.add_argument("--threads", default="1,2,4", help="load thread counts, comma separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan", nargs=3, metavar=("ROOT", "THREADS", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.scan:
        scan(Path(args.scan[0]), int(args.scan[1]), int(args.scan[2]))
        return

    counts = [int(text) for text in args.threads.split(",")]
    print(f"{os.cpu_count()} cores; {args.models} copies of each model, the default instances (two, sharing the cores)")
    print("| model | " + " | ".join(f"{count} thread(s)" for count in counts) + " | 1 ÷ fastest |")
    print("|---|" + "--:|" * (len(counts) + 1))
    for model in ("fashion_mnist_mlp", "cifar10_cnn"):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            _repository(args.model_dir / model, root, args.models)
            times: dict[int, list[float]] = {count: [] for count in counts}
            for _ in range(args.repeats):
                for count in counts:
                    command = [
                        sys.executable,
                        __file__,
                        "--model-dir",
                        str(args.model_dir),
                        "--scan",
                        str(root),
                        str(count),
                        str(args.models),
                    ]
                    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
                    times[count].append(float(result.stdout))
        medians = {count: statistics.median(values) for count, values in times.items()}
        cells = " | ".join(f"{medians[count]:.2f} s" for count in counts)
        print(f"| {model} | {cells} | {medians[counts[0]] / min(medians.values()):.2f}× |")


def scan(root: Path, load_threads: int, models: int) -> None:
    """One first scan in this process; prints its seconds."""
    from serving.repository import ModelRepository
    from serving.runtime import RuntimeOptions

    repository = ModelRepository([root], RuntimeOptions(device="cpu"), load_threads=load_threads)
    started = time.perf_counter()
    repository.load_all()
    seconds = time.perf_counter() - started
    assert len(repository.loaded()) == models, repository.unready_models()
    repository.take_all()
    print(seconds)


if __name__ == "__main__":
    main()
