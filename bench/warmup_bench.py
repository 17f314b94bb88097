"""What config.pbtxt's model_warmup buys: the latency of a version's first requests, with and without warmup.

For each model of a repository from bench/prepare_models.py (the Fashion-MNIST MLP and the CIFAR-10 CNN), a fresh
process loads the version through the data plane, with its config as it is or with a ``model_warmup`` of zeros at
the sizes the requests will use, then times its first request of each batch size and the median of the twenty
after it (in process, no transport). ``--rounds`` processes of each kind alternate.

Example:
    python bench/warmup_bench.py --model-dir /tmp/serve-models --batches 1,64
"""

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))


async def _measure(repo: Path, model: str, batches: list[int]) -> dict:
    import numpy as np

    from serving.dataplane import DataPlane, InferenceRequest, InputTensor
    from serving.runtime import RuntimeOptions

    dataplane = DataPlane([repo], RuntimeOptions(device="cpu"), poll_interval_s=0)
    started = time.perf_counter()
    await dataplane.start()
    loaded_s = time.perf_counter() - started
    [spec] = dataplane.model_metadata(model).inputs
    rng = np.random.default_rng(0)
    result = {"load_ms": loaded_s * 1000}
    for batch in batches:
        shape = (batch, *spec.shape[1:])
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        times = []
        for _ in range(21):
            request = InferenceRequest(model=model, inputs=[InputTensor(spec.name, spec.datatype, shape, images)])
            begun = time.perf_counter()
            await dataplane.infer(request)
            times.append((time.perf_counter() - begun) * 1000)
        result[f"first_{batch}"] = times[0]
        result[f"then_{batch}"] = statistics.median(times[1:])
    await dataplane.close()
    return result


def _with_warmup(model_dir: Path, batches: list[int], dims: list[int]) -> None:
    """Appends a model_warmup of zeros at each batch size, twice (ONNX Runtime reaches its pace at its third call of
    a size), to the model's config.pbtxt."""
    shape = ", ".join(map(str, dims))
    samples = [
        f'{{ name: "zeros_{batch}" batch_size: {batch} count: 2 inputs {{ key: "image" value: {{ data_type: TYPE_UINT8'
        f" dims: [ {shape} ] zero_data: true }} }} }}"
        for batch in batches
    ]
    path = model_dir / "config.pbtxt"
    path.write_text(path.read_text() + "model_warmup [ " + ", ".join(samples) + " ]\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a repository from bench/prepare_models.py (required)")
    parser.add_argument("--models", default="fashion_mnist_mlp,cifar10_cnn")
    parser.add_argument("--batches", default="1,64", help="batch sizes of the first requests (default 1,64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # REPO MODEL: one measurement
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(asyncio.run(_measure(Path(args.child[0]), args.child[1], batches))))
        return 0
    if args.model_dir is None:
        parser.error("--model-dir is required: a repository from bench/prepare_models.py")
    dims = {"fashion_mnist_mlp": [28, 28], "cifar10_cnn": [32, 32, 3]}
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            repos = {}
            for kind in ("as built", "warmed up"):
                repo = Path(folder) / kind.replace(" ", "_")
                shutil.copytree(args.model_dir / model, repo / model)
                if kind == "warmed up":
                    _with_warmup(repo / model, batches, dims[model])
                repos[kind] = repo
            results: dict[str, list[dict]] = {kind: [] for kind in repos}
            for _ in range(args.rounds):
                for kind, repo in repos.items():
                    child = [sys.executable, __file__, "--child", str(repo), model, "--batches", args.batches]
                    output = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                    results[kind].append(json.loads(output.strip().splitlines()[-1]))
        for kind, runs in results.items():
            cells = [f"load {statistics.median(r['load_ms'] for r in runs):.0f} ms"]
            for batch in batches:
                first = statistics.median(r[f"first_{batch}"] for r in runs)
                then = statistics.median(r[f"then_{batch}"] for r in runs)
                cells.append(f"batch {batch}: first {first:.2f} ms, then {then:.2f} ms")
            print(f"{model:>18} {kind:>9}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
