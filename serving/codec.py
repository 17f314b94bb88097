"""Translation between Open Inference Protocol tensors and numpy arrays, with the request checks it implies.

Inputs arrive in ``raw_input_contents`` (little-endian, row-major bytes) or typed ``contents``; outputs always
leave in ``raw_output_contents``. The classification extension turns an output into BYTES strings
``"score:index:label"`` for its top k. Every check raises INVALID_ARGUMENT naming the tensor and what was
expected.
"""

import math
import struct
from dataclasses import dataclass

import numpy as np

from serving.errors import ServingError, Status
from serving.protocol import grpc_service_pb2 as pb
from serving.signature import ModelSignature, TensorSpec, format_shape

# Which typed ``InferTensorContents`` field carries each datatype (the protocol's table). FP16 travels raw
# only.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@dataclass(frozen=True)
class OutputRequest:
    """One output to return; ``class_count`` > 0 asks for the classification extension's top k."""

    spec: TensorSpec
    class_count: int = 0


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


def decode_inputs(
    request: pb.ModelInferRequest, signature: ModelSignature, max_batch_size: int
) -> tuple[dict[str, np.ndarray], int]:
    """Checks the request's inputs against the model and returns them as arrays, with the batch size.

    Raises:
        ServingError: INVALID_ARGUMENT for a missing, extra, repeated or malformed input.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _bad(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input")
    expected = {spec.name: spec for spec in signature.inputs}
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = expected.get(tensor.name)
        if spec is None:
            raise _bad(f"unexpected input {tensor.name[:80]!r}; the model's inputs are: {', '.join(expected)}")
        if tensor.name in arrays:
            raise _bad(f"input '{tensor.name}' is given more than once")
        shape = tuple(tensor.shape)
        spec.check_request(tensor.datatype, shape, max_batch_size)
        arrays[spec.name] = _decode(tensor, raw[index] if raw else None, spec, shape)
    for spec in signature.inputs:
        if spec.name not in arrays:
            raise _bad(f"missing input '{spec.name}' ({spec.datatype} {format_shape(spec.shape)})")
    batch_sizes = {array.shape[0] for array in arrays.values()}
    if len(batch_sizes) > 1:
        sizes = ", ".join(f"'{name}': {array.shape[0]}" for name, array in arrays.items())
        raise _bad(f"inputs disagree on the batch size ({sizes})")
    return arrays, batch_sizes.pop()


def _decode(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, spec: TensorSpec, shape) -> np.ndarray:
    count = math.prod(shape)
    dtype = spec.dtype
    if raw is not None:
        if tensor.HasField("contents"):
            raise _bad(f"input '{spec.name}' has both raw contents and typed contents; send one")
        if len(raw) != count * dtype.itemsize:
            raise _bad(
                f"input '{spec.name}': raw contents are {len(raw)} bytes but shape {format_shape(shape)} of "
                f"{spec.datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELDS.get(spec.datatype)
    if field is None:
        raise _bad(f"input '{spec.name}': {spec.datatype} can only be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise _bad(
            f"input '{spec.name}': contents.{field} has {len(values)} values but shape {format_shape(shape)} "
            f"needs {count}"
        )
    if dtype.kind in "iu":
        wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
        limits = np.iinfo(dtype)
        if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
            raise _bad(
                f"input '{spec.name}': contents hold values outside {spec.datatype}'s range "
                f"[{limits.min}, {limits.max}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def requested_outputs(request: pb.ModelInferRequest, signature: ModelSignature) -> list[OutputRequest]:
    """The outputs to return: all of them when none is named.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown output, a bad class count or shared memory.
    """
    if not request.outputs:
        return [OutputRequest(spec) for spec in signature.outputs]
    wanted = []
    for output in request.outputs:
        spec = signature.output(output.name)
        if any(key.startswith("shared_memory") for key in output.parameters):
            raise _bad(f"output '{spec.name}': shared memory outputs are not supported")
        class_count = 0
        if "classification" in output.parameters:
            class_count = output.parameters["classification"].int64_param
            if class_count < 1:
                raise _bad(f"output '{spec.name}': classification count must be at least 1, got {class_count}")
        wanted.append(OutputRequest(spec, class_count))
    return wanted


def classify(scores: np.ndarray, k: int, class_names: tuple[str, ...]) -> np.ndarray:
    """Top-k of each row as ``"score:index:label"`` (``"score:index"`` without a name), best first.

    Returns:
        An object array of bytes, shape [batch, min(k, classes)].
    """
    flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    result = np.empty(order.shape, dtype=object)
    for row, indices in enumerate(order):
        for column, index in enumerate(indices):
            label = f":{class_names[index]}" if index < len(class_names) else ""
            result[row, column] = f"{flat[row, index]:f}:{index}{label}".encode()
    return result


def serialize_bytes(array: np.ndarray) -> bytes:
    """The protocol's raw BYTES layout: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def encode_outputs(
    response: pb.ModelInferResponse,
    results: dict[str, np.ndarray],
    wanted: list[OutputRequest],
    class_names: tuple[str, ...],
) -> None:
    """Appends the wanted outputs to ``response`` in raw_output_contents."""
    for output in wanted:
        array = results[output.spec.name]
        tensor = response.outputs.add(name=output.spec.name)
        if output.class_count:
            labels = classify(array, output.class_count, class_names)
            tensor.datatype = "BYTES"
            tensor.shape.extend(labels.shape)
            response.raw_output_contents.append(serialize_bytes(labels))
        else:
            tensor.datatype = output.spec.datatype
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(np.ascontiguousarray(array, dtype=output.spec.dtype).tobytes())
