"""What a Triton ensemble costs and saves against a client that chains the same two models itself, over gRPC.

A repository holds the Fashion-MNIST MLP of bench/prepare_models.py, an argmax model (ONNX ArgMax over the ten
probabilities) and ``fashion_top``, the ensemble of both (an image in, its best class out). One client on a
grpc.aio channel sends, back to back for ``--seconds``, in turn:

- ``model alone``: the MLP's probabilities, one request (the floor: one round trip, one model);
- ``two calls``: the MLP's probabilities, then argmax over them, two requests, as a client without ensembles does;
- ``ensemble``: ``fashion_top``'s class, one request that the server runs as the two steps.

The modes alternate for ``--rounds`` rounds at each ``--batches`` size on one server; prints the medians of the
rounds (requests/s and p50 latency) and the ensemble's speed over the two calls.

Example:
    python bench/ensemble_bench.py --model-dir /tmp/serve-models --batches 1,64
"""

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench  # noqa: E402 - the matrix's server process, closed loop and protocol modules

MODES = ("model alone", "two calls", "ensemble")
ENSEMBLE = "fashion_top"
ARGMAX_CONFIG = """\
name: "argmax"
platform: "onnxruntime_onnx"
max_batch_size: 1024
input [ { name: "scores" data_type: TYPE_FP32 dims: [ 10 ] } ]
output [ { name: "best" data_type: TYPE_INT64 dims: [ 1 ] } ]
dynamic_batching { }
"""
ENSEMBLE_CONFIG = """\
name: "fashion_top"
platform: "ensemble"
max_batch_size: 1024
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 28, 28 ] } ]
output [ { name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "fashion_mnist_mlp" model_version: -1
    input_map { key: "image" value: "IMAGE" } output_map { key: "probabilities" value: "PROBABILITIES" } },
  { model_name: "argmax" model_version: -1
    input_map { key: "scores" value: "PROBABILITIES" } output_map { key: "best" value: "CLASS" } }
] }
"""


def make_repository(model_dir: Path, repo: Path) -> None:
    """The MLP (copied), argmax and the ensemble of both."""
    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(model_dir / "fashion_mnist_mlp", repo / "fashion_mnist_mlp")
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1)],
        "argmax",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("best", TensorProto.INT64, ["batch", 1])],
    )
    (repo / "argmax" / "1").mkdir(parents=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), repo / "argmax" / "1" / "model.onnx"
    )
    (repo / "argmax" / "config.pbtxt").write_text(ARGMAX_CONFIG)
    (repo / ENSEMBLE / "1").mkdir(parents=True)
    (repo / ENSEMBLE / "config.pbtxt").write_text(ENSEMBLE_CONFIG)


async def _measure(url: str, batch: int, rounds: int, seconds: float) -> dict[str, list[tuple[float, float]]]:
    """(requests/s, p50 latency in ms) of each mode, one pair a round."""
    import grpc

    pb, stubs = serve_bench.grpc_modules()
    images = np.random.default_rng(batch).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    channel = grpc.aio.insecure_channel(url)
    infer = stubs.GRPCInferenceServiceStub(channel).ModelInfer

    def request(model: str, name: str, datatype: str, data: np.ndarray, output: str) -> object:
        message = pb.ModelInferRequest(model_name=model)
        message.inputs.add(name=name, datatype=datatype, shape=data.shape)
        message.outputs.add(name=output)
        message.raw_input_contents.append(data.tobytes())
        return message

    probabilities = request("fashion_mnist_mlp", "image", "UINT8", images, "probabilities")
    top = request(ENSEMBLE, "IMAGE", "UINT8", images, "CLASS")

    async def model_alone(_: int) -> None:
        await infer(probabilities, timeout=30)

    async def two_calls(_: int) -> None:
        answer = await infer(probabilities, timeout=30)
        scores = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(batch, 10)
        await infer(request("argmax", "scores", "FP32", scores, "best"), timeout=30)

    async def ensemble(_: int) -> None:
        await infer(top, timeout=30)

    sends = {"model alone": model_alone, "two calls": two_calls, "ensemble": ensemble}
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    try:
        answer = await infer(top, timeout=30)  # the two ways agree before they are timed
        chained = await infer(probabilities, timeout=30)
        scores = np.frombuffer(chained.raw_output_contents[0], dtype=np.float32).reshape(batch, 10)
        best = np.frombuffer(answer.raw_output_contents[0], dtype=np.int64).reshape(batch)
        if not np.array_equal(best, scores.argmax(axis=1)):
            raise SystemExit("ensemble_bench: the ensemble's classes differ from argmax over the model's answer")
        for index in range(rounds):
            for mode in MODES[index % 3 :] + MODES[: index % 3]:
                latencies, failures, wall = await serve_bench.closed_loop(sends[mode], 1, seconds, 10**9)
                if failures:
                    raise SystemExit(f"ensemble_bench: {failures} {mode} requests failed")
                results[mode].append((len(latencies) / wall, statistics.median(latencies) * 1000))
    finally:
        await channel.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a repository of bench/prepare_models.py")
    parser.add_argument("--batches", default="1,64", help="images a request, comma-separated (default 1,64)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three modes (default 5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds a mode in a round (default 3)")
    args = parser.parse_args()
    batches = [int(size) for size in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as work:
        repo = Path(work) / "repository"
        make_repository(args.model_dir, repo)
        server = serve_bench.Server("buildsys-grpc", [], repo, "cpu", Path(work), serve_bench.serving_flags())
        try:
            server.wait_ready([SimpleNamespace(name=name) for name in ("fashion_mnist_mlp", "argmax", ENSEMBLE)])
            for batch in batches:
                results = asyncio.run(_measure(server.grpc_url, batch, args.rounds, args.seconds))
                medians = {
                    mode: (statistics.median(r for r, _ in pairs), statistics.median(p for _, p in pairs))
                    for mode, pairs in results.items()
                }
                cells = "; ".join(
                    f"{mode} {rate:,.0f} req/s, p50 {p50:.3f} ms" for mode, (rate, p50) in medians.items()
                )
                speed = medians["ensemble"][0] / medians["two calls"][0]
                print(f"batch {batch}: {cells}; ensemble ÷ two calls {speed:.2f}× (medians of {args.rounds} rounds)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
