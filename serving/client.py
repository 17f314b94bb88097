"""A small Python client for the serving plugin, and ``python -m serving.client`` to classify image files.

Speaks the same Open Inference Protocol as any Triton/KServe client, through the stubs in serving.protocol (no
tritonclient needed). Message size limits match the server's, so a batch of 1,024 CIFAR images fits.

Example:
    with InferenceClient("localhost:8001") as client:
        print(client.classify("digits", images, top_k=3))   # [[("7", 0.93), ("1", 0.03), ...], ...]
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.protocol import grpc_service_pb2 as pb
from serving.protocol import grpc_service_pb2_grpc
from serving.signature import NUMPY_DTYPES

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ClientError(Exception):
    """A failed call: ``code`` is the gRPC status name, the message the server's one-line reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """ModelMetadata plus the batch limit from ModelConfig and the execution providers actually used."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    execution_providers: tuple[str, ...]
    device_warning: str | None


class InferenceClient:
    """A connection to one server.

    Args:
        url: ``host:port``.
        token: bearer token, sent as ``authorization: Bearer <token>`` when given.
        tls: False for plain text, True for TLS with the system's roots, or a path to a PEM CA certificate.
        timeout_s: deadline of each call.
    """

    def __init__(
        self, url: str, token: str | None = None, tls: bool | str | Path = False, timeout_s: float = 30.0
    ) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls is False:
            self._channel = grpc.insecure_channel(url, options=options)
        else:
            roots = None if tls is True else Path(tls).read_bytes()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(url, credentials, options=options)
        self._stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout_s = timeout_s
        self._models: dict[tuple[str, str], ModelInfo] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, method, request, with_call: bool = False):
        try:
            if with_call:
                return method.with_call(request, timeout=self._timeout_s, metadata=self._metadata)
            return method(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise ClientError(error.code().name, error.details() or "no details") from None

    def health(self) -> str:
        """The standard health service's answer for the whole server: SERVING, NOT_SERVING, ..."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=""))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def is_ready(self) -> bool:
        return self._call(self._stub.ServerReady, pb.ServerReadyRequest()).ready

    def metadata(self, model: str, version: str = "") -> ModelInfo:
        """The model's tensors, versions, batch limit and execution providers (cached per client).

        Raises:
            ClientError: e.g. NOT_FOUND for an unknown model.
        """
        key = (model, version)
        if key not in self._models:
            response, call = self._call(
                self._stub.ModelMetadata, pb.ModelMetadataRequest(name=model, version=version), with_call=True
            )
            trailing = dict(call.trailing_metadata() or ())
            config = self._call(self._stub.ModelConfig, pb.ModelConfigRequest(name=model, version=version)).config
            self._models[key] = ModelInfo(
                name=response.name,
                versions=tuple(response.versions),
                platform=response.platform,
                inputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in response.inputs),
                outputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in response.outputs),
                max_batch_size=config.max_batch_size,
                execution_providers=tuple(p for p in trailing.get("x-execution-providers", "").split(",") if p),
                device_warning=trailing.get("x-device-warning"),
            )
        return self._models[key]

    def _infer(self, model: str, images: np.ndarray, version: str, class_count: int) -> list[np.ndarray]:
        info = self.metadata(model, version)
        if len(info.inputs) != 1:
            raise ValueError(f"model '{model}' has {len(info.inputs)} inputs; predict/classify need exactly one")
        spec, output = info.inputs[0], info.outputs[0]
        dtype = NUMPY_DTYPES.get(spec.datatype)
        if dtype is None:
            raise ValueError(f"model '{model}' takes {spec.datatype}, not images; call it with tritonclient")
        array = np.asarray(images)
        if not np.can_cast(array.dtype, dtype, "same_kind"):
            raise ValueError(f"images are {array.dtype} but model '{model}' takes {spec.datatype}; convert them first")
        array = np.ascontiguousarray(array, dtype=dtype)
        parts = []
        # A model that does not batch (max_batch_size 0) takes one sample per request, without a batch dimension.
        step = info.max_batch_size or 1
        for start in range(0, len(array), step):
            chunk = array[start : start + step] if info.max_batch_size else array[start]
            request = pb.ModelInferRequest(model_name=model, model_version=version)
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=chunk.shape)
            request.raw_input_contents.append(chunk.tobytes())
            requested = request.outputs.add(name=output.name)
            if class_count:
                requested.parameters["classification"].int64_param = class_count
            response = self._call(self._stub.ModelInfer, request)
            parts.append((response.outputs[0], response.raw_output_contents[0]))
        return parts

    def predict(self, model: str, images: np.ndarray, version: str = "") -> np.ndarray:
        """The model's first output for ``images`` (first dimension the batch; split by max_batch_size).

        Raises:
            ClientError: the server refused the request (the message says why).
            ValueError: the images cannot be converted to the model's input datatype without loss.
        """
        batched = self.metadata(model, version).max_batch_size > 0
        arrays = []
        for tensor, raw in self._infer(model, images, version, class_count=0):
            shape = tuple(tensor.shape) if batched else (1, *tensor.shape)
            if tensor.datatype not in NUMPY_DTYPES:
                raise ValueError(f"model '{model}' answers {tensor.datatype}, not numbers; call it with tritonclient")
            arrays.append(np.frombuffer(raw, dtype=NUMPY_DTYPES[tensor.datatype]).reshape(shape))
        return np.concatenate(arrays)

    def classify(
        self, model: str, images: np.ndarray, top_k: int = 3, version: str = ""
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (label, score) pairs of each image, best first, from the classification extension.

        The label is the class name from the model's manifest, or the class index when it has none.
        """
        results = []
        for tensor, raw in self._infer(model, images, version, class_count=top_k):
            entries = _deserialize_bytes(raw)
            k = tensor.shape[-1]
            for row in range(len(entries) // k):
                pairs = []
                for entry in entries[row * k : (row + 1) * k]:
                    score, index, *label = entry.decode().split(":", 2)
                    pairs.append((label[0] if label else index, float(score)))
                results.append(pairs)
        return results


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    """The protocol's raw BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def load_image(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """Decodes a PNG/JPEG file into one sample of the model's input: colour mode and size from its shape.

    ``[-1, H, W]`` or ``[-1, H, W, 1]`` is grayscale, ``[-1, H, W, 3]`` RGB. Pixel values stay 0-255: scaling
    belongs in the model.

    Raises:
        ValueError: the file cannot be decoded or the input is not an image shape.
    """
    from PIL import Image, UnidentifiedImageError

    if len(input_shape) == 3:
        height, width, channels = input_shape[1], input_shape[2], None
    elif len(input_shape) == 4 and input_shape[3] in (1, 3):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
    else:
        raise ValueError(f"input shape {list(input_shape)} is not [-1, H, W] or [-1, H, W, 1|3]")
    if height < 1 or width < 1:
        raise ValueError(f"input shape {list(input_shape)} has no fixed height and width to resize to")
    try:
        with Image.open(path) as image:
            converted = image.convert("RGB" if channels == 3 else "L").resize((width, height), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot decode {path}: {error}") from error
    pixels = np.asarray(converted)
    return pixels[..., np.newaxis] if channels == 1 else pixels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description="Classify image files.")
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-version", default="", help="default: the newest loaded version")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument("--tls-ca", type=Path, help="use TLS trusting this PEM CA certificate")
    args = parser.parse_args(argv)
    try:
        token = args.token_file.read_text().strip() if args.token_file else None
        tls: bool | Path = args.tls_ca or args.tls
        with InferenceClient(args.url, token=token, tls=tls) as client:
            info = client.metadata(args.model, args.model_version)
            shape = info.inputs[0].shape if info.max_batch_size else (-1, *info.inputs[0].shape)
            batch = np.stack([load_image(path, shape) for path in args.images])
            results = client.classify(args.model, batch, top_k=args.top_k, version=args.model_version)
    except (ClientError, ValueError, OSError) as error:
        print(f"client: error: {error}", file=sys.stderr)
        return 1
    for path, pairs in zip(args.images, results, strict=True):
        print(f"{path}: " + ", ".join(f"{label} ({score:.4f})" for label, score in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
