"""KServe 0.21's Python ModelServer with one onnxruntime `kserve.Model` per ONNX file: the peer that
bench/serve_bench.py measures as "kserve-grpc" and "kserve-rest".

Runs in bench/.venvs/kserve (bench/peers/setup.sh), never in the project's environment. The model is the plain
one KServe's own predictors are: decode the request's tensor, one `InferenceSession.run`, encode the outputs (raw
bytes when the request asked for binary outputs); no dynamic batching, as KServe's Python server has none.
KServe binds every interface and logs each request at INFO; the benchmark is loopback-only and quiet, so this
script binds both servers to 127.0.0.1 and raises its loggers to WARNING.

Usage: python kserve_onnx.py --http_port 8080 --grpc_port 8081 --onnx NAME=PATH [--onnx NAME=PATH] [--device cpu]
"""

import argparse
import logging

import grpc.aio
import numpy as np
import onnxruntime as ort
import uvicorn

LOOPBACK = "127.0.0.1"
_new_grpc_server = grpc.aio.server
_UvicornConfig = uvicorn.Config


def _loopback_grpc_server(*args, **kwargs) -> grpc.aio.Server:
    """grpc.aio.server whose `[::]:PORT` listener becomes 127.0.0.1:PORT (KServe hard-codes every interface)."""
    server = _new_grpc_server(*args, **kwargs)
    add_insecure_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_insecure_port(address.replace("[::]", LOOPBACK))
    return server


class _LoopbackUvicornConfig(_UvicornConfig):
    def __init__(self, *args, **kwargs) -> None:
        kwargs["host"] = LOOPBACK
        super().__init__(*args, **kwargs)


grpc.aio.server = _loopback_grpc_server
uvicorn.Config = _LoopbackUvicornConfig

import kserve  # noqa: E402 - after the loopback patches, so KServe's servers are created through them
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.utils.utils import from_np_dtype  # noqa: E402

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxModel(kserve.Model):
    """One ONNX file behind KServe's data plane: one session run per request."""

    def __init__(self, name: str, path: str, device: str) -> None:
        super().__init__(name)
        self.path = path
        self.device = device
        self.load()

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=PROVIDERS[self.device])
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError(f"{self.path}: CUDA was asked for, ONNX Runtime runs on {self.session.get_providers()}")
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        values = self.session.run(self.output_names, feeds)
        outputs = []
        for name, value in zip(self.output_names, values, strict=True):
            output = InferOutput(name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype))
            output.set_data_from_numpy(np.ascontiguousarray(value), binary_data=payload.use_binary_outputs)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
        )


def main() -> None:
    # KServe parses its own flags (--http_port, --grpc_port, ...) from sys.argv on import; these are the rest.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--onnx", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--device", choices=sorted(PROVIDERS), default="cpu")
    args, _ = parser.parse_known_args()
    models = [OnnxModel(*spec.split("=", 1), args.device) for spec in args.onnx]
    server = kserve.ModelServer(enable_latency_logging=False)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start(models)


if __name__ == "__main__":
    main()
