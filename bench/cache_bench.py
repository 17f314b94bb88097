"""What the response cache costs and saves: requests through the data plane in process (no transport) with the
cache off, with it on and every request new (a lookup and an insertion each, the model runs), and with it on and
the same request repeated (a hit each: the model never runs).

Models from a repository of bench/prepare_models.py (the Fashion-MNIST MLP and the CIFAR-10 CNN, their configs
given ``response_cache { enable: true }`` in a copy), at each ``--batches`` size; the modes alternate for
``--rounds`` rounds in one process; medians of the rounds, µs a request.

Example:
    python bench/cache_bench.py --model-dir /tmp/serve-models --batches 1,64
"""

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

MODES = ("off", "all new", "repeated")


async def _measure(repo: Path, model: str, batch: int, rounds: int, requests: int) -> dict[str, list[float]]:
    import numpy as np

    from serving.dataplane import DataPlane, InferenceRequest, InputTensor
    from serving.response_cache import ResponseCache
    from serving.runtime import RuntimeOptions

    planes = {
        "off": DataPlane([repo], RuntimeOptions(device="cpu"), poll_interval_s=0),
        "on": DataPlane([repo], RuntimeOptions(device="cpu"), poll_interval_s=0, response_cache=ResponseCache(1 << 30)),
    }
    for dataplane in planes.values():
        await dataplane.start()
    [spec] = planes["off"].model_metadata(model).inputs
    shape = (batch, *spec.shape[1:])
    base = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    serial = iter(range(1, 1 << 62))

    def new_images() -> np.ndarray:
        """``base`` with a serial number in its first pixels: never seen before."""
        images = base.copy()
        images.reshape(-1)[:8] = np.frombuffer(next(serial).to_bytes(8, "little"), dtype=np.uint8)
        return images

    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_number in range(rounds + 1):  # the first round warms every path up and is not counted
        for mode in MODES:
            dataplane = planes["off" if mode == "off" else "on"]
            batches = [base] * requests if mode == "repeated" else [new_images() for _ in range(requests)]
            started = time.perf_counter()
            for images in batches:
                tensor = InputTensor(spec.name, spec.datatype, shape, images)
                await dataplane.infer(InferenceRequest(model=model, inputs=[tensor]))
            if round_number:
                results[mode].append((time.perf_counter() - started) / requests * 1e6)
    for dataplane in planes.values():
        await dataplane.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a repository from bench/prepare_models.py")
    parser.add_argument("--models", default="fashion_mnist_mlp,cifar10_cnn")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="requests per mode and round (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder)
        for model in args.models.split(","):
            shutil.copytree(args.model_dir / model, repo / model)
            config = repo / model / "config.pbtxt"
            config.write_text(config.read_text() + "response_cache { enable: true }\n")
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                results = asyncio.run(_measure(repo, model, batch, args.rounds, args.requests))
                cells = [f"{mode} {statistics.median(values):9.1f}" for mode, values in results.items()]
                print(f"{model:>18} batch {batch:>4}: µs a request: " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
