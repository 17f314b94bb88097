"""Serving throughput and latency: N concurrent clients against a server, next to in-process ONNX Runtime.

For each request size (1 and 64 images by default) N client threads send ModelInfer requests back to back
for a fixed time; the script prints requests/s, images/s, p50/p99 latency, the mean merged batch the server
executed (from ModelStatistics), and the ratio to in-process ONNX Runtime's images/s on the same batch size
(the ceiling without gRPC, queueing or encoding). Dynamic batching can push the 1-image ratio above 1, since
the server runs merged batches.

Examples:
    python bench/serve_bench.py               # self-started server on build-out/models, model digits
    python bench/serve_bench.py --generated   # the tests' tiny 8x8 classifier, when nothing is built
    python bench/serve_bench.py --url 127.0.0.1:8001 --repository build-out/models --model digits
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from serving.client import MAX_MESSAGE_BYTES  # noqa: E402
from serving.protocol import grpc_service_pb2 as pb  # noqa: E402
from serving.protocol import grpc_service_pb2_grpc  # noqa: E402
from serving.signature import NUMPY_DTYPES  # noqa: E402


def start_server(repository: Path, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving", "--repository", str(repository), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--poll-interval", "0", "--log-level", "warning", *extra],
        cwd=PROJECT_ROOT,
        env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve_bench: the server exited with {process.returncode}")
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                channel.close()
                return process
        except grpc.RpcError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("serve_bench: the server was not ready within 60 s")


def make_request(model: str, spec: pb.ModelMetadataResponse.TensorMetadata, batch: int) -> pb.ModelInferRequest:
    shape = [batch, *spec.shape[1:]]
    rng = np.random.default_rng(0)
    dtype = NUMPY_DTYPES[spec.datatype]
    data = rng.integers(0, 16, size=shape).astype(dtype) if dtype.kind in "iu" else rng.random(shape, dtype=dtype)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request


def drive(url: str, request: pb.ModelInferRequest, clients: int, duration_s: float) -> tuple[list[float], int]:
    """Runs ``clients`` threads for ``duration_s``; returns every latency (s) and the number of failures."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    start = threading.Barrier(clients)
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", -1)]

    def client(index: int) -> None:
        with grpc.insecure_channel(url, options=options) as channel:
            infer = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            infer(request)  # connect and warm up outside the measurement
            start.wait()
            end = time.monotonic() + duration_s
            while (now := time.monotonic()) < end:
                try:
                    infer(request, timeout=30)
                    latencies[index].append(time.monotonic() - now)
                except grpc.RpcError:
                    failures[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for values in latencies for value in values], sum(failures)


def in_process_images_per_second(model_path: Path, request: pb.ModelInferRequest, duration_s: float) -> float:
    spec = request.inputs[0]
    array = np.frombuffer(request.raw_input_contents[0], dtype=NUMPY_DTYPES[spec.datatype]).reshape(spec.shape)
    session = ort.InferenceSession(str(model_path), providers=ort.get_available_providers())
    session.run(None, {spec.name: array})
    runs, start = 0, time.monotonic()
    while time.monotonic() - start < duration_s:
        session.run(None, {spec.name: array})
        runs += 1
    return runs * spec.shape[0] / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one on --repository")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "build-out" / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--generated", action="store_true", help="serve the tests' generated 8x8 classifier")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per batch size")
    parser.add_argument("--port", type=int, default=8011, help="port of a self-started server")
    parser.add_argument("--server-args", default="", help="extra flags for a self-started server")
    args = parser.parse_args()

    temporary = None
    if args.generated:
        # The same model the serving tests build with the onnx helper API (no TensorFlow needed).
        from tests.serving.conftest import publish_version

        temporary = tempfile.TemporaryDirectory(prefix="serve-bench-")
        args.repository = Path(temporary.name)
        publish_version(args.repository, args.model, 1, seed=1)
    server = None
    if args.url is None:
        server = start_server(args.repository, args.port, args.server_args.split())
        args.url = f"127.0.0.1:{args.port}"
    try:
        with grpc.insecure_channel(args.url) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model))
            config = stub.ModelConfig(pb.ModelConfigRequest(name=args.model)).config
            version = metadata.versions[-1]
            model_path = args.repository / args.model / version / "model.onnx"
            manifest_path = model_path.parent / "manifest.json"
            if manifest_path.exists():
                model_path = model_path.parent / json.loads(manifest_path.read_text())["files"]["onnx"]
            providers = config.parameters["execution_providers"].string_value
            delay_us = config.dynamic_batching.max_queue_delay_microseconds
            print(
                f"model {args.model} v{version} at {args.url}: input {metadata.inputs[0].datatype} "
                f"{list(metadata.inputs[0].shape)}, providers {providers}, max_queue_delay_us {delay_us}; "
                f"{args.clients} clients, {args.duration:g} s per batch size, {os.cpu_count()} CPUs"
            )
            print(
                f"{'batch':>5} {'req/s':>9} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'mean merged':>11} "
                f"{'ORT images/s':>13} {'ratio':>6} {'failed':>6}"
            )
            for batch in args.batches:
                request = make_request(args.model, metadata.inputs[0], batch)
                before = stub.ModelStatistics(pb.ModelStatisticsRequest(name=args.model)).model_stats[-1]
                latencies, failures = drive(args.url, request, args.clients, args.duration)
                after = stub.ModelStatistics(pb.ModelStatisticsRequest(name=args.model)).model_stats[-1]
                executions = after.execution_count - before.execution_count
                merged = (after.inference_count - before.inference_count) / max(executions, 1)
                requests_per_s = len(latencies) / args.duration
                ceiling = in_process_images_per_second(model_path, request, min(args.duration, 3.0))
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (float("nan"),) * 2
                images_per_s = requests_per_s * batch
                print(
                    f"{batch:>5} {requests_per_s:>9.1f} {images_per_s:>10.0f} {p50:>8.2f} {p99:>8.2f} "
                    f"{merged:>11.1f} {ceiling:>13.0f} {images_per_s / ceiling:>6.2f} {failures:>6}"
                )
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
