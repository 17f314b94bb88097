"""What a repository poll costs when nothing changed: the work `serve` repeats every --poll-interval seconds.

The Fashion-MNIST model folder from bench/prepare_models.py is linked in N times under other names; every copy
loads, then the same repository is polled again and again with nothing changed. A poll reads every model's
config.pbtxt (twice: once to order ensembles after their steps, once to load), lists its versions and compares
what each served version loaded from. It runs on a worker thread, but holds the GIL while it parses, so it is
time the event loop's requests wait. Measured with config parses kept by their text (what the server does) and
without (every read parsed, as before), alternating, in one process.

Example:
    python bench/poll_bench.py --model-dir /tmp/serve-models --models 100,400
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))


def _repository(source: Path, root: Path, count: int) -> None:
    """``count`` copies of the model folder ``source`` (files hard-linked, config.pbtxt and manifest renamed)."""
    for index in range(count):
        name = f"m{index:04d}"
        for path in source.rglob("*"):
            target = root / name / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.name in ("config.pbtxt", "manifest.json"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text().replace(source.name, name))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the output of bench/prepare_models.py")
    parser.add_argument("--models", default="100,400", help="repository sizes, comma separated")
    parser.add_argument("--polls", type=int, default=30, help="polls of each kind per size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import modelrepo.config
    from serving.repository import ModelRepository
    from serving.runtime import RuntimeOptions

    cached_chars = modelrepo.config._CACHED_CONFIG_CHARS
    print("| models | poll, parses kept (ms) | poll, every read parsed (ms) | ratio | per model, kept (µs) |")
    print("|--:|--:|--:|--:|--:|")
    for count in (int(text) for text in args.models.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            _repository(args.model_dir / "fashion_mnist_mlp", root, count)
            repository = ModelRepository([root], RuntimeOptions(device="cpu", intra_op_threads=1))
            repository.load_all()
            assert len(repository.loaded()) == count, repository.unready_models()
            times: dict[bool, list[float]] = {True: [], False: []}
            for poll in range(2 * args.polls):
                kept = poll % 2 == 0
                modelrepo.config._CACHED_CONFIG_CHARS = cached_chars if kept else -1
                started = time.perf_counter()
                assert repository.load_all() == []
                times[kept].append((time.perf_counter() - started) * 1000)
            modelrepo.config._CACHED_CONFIG_CHARS = cached_chars
            repository.take_all()
        with_cache, without = statistics.median(times[True]), statistics.median(times[False])
        print(
            f"| {count} | {with_cache:.1f} | {without:.1f} | {without / with_cache:.2f}× "
            f"| {with_cache * 1000 / count:.0f} |"
        )


if __name__ == "__main__":
    main()
