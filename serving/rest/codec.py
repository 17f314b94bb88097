"""HTTP/JSON bodies of the Open Inference Protocol ↔ NumPy arrays, with Triton's binary tensor data extension.

An infer request body is a JSON header, optionally followed by raw tensor bytes: the ``Inference-Header-Content-Length``
header says how long the JSON part is, and each input whose ``parameters.binary_data_size`` is set takes that many
bytes of the rest, in the order of ``inputs`` (little-endian, row-major; BYTES elements each prefixed by a 4-byte
length). Other inputs carry ``data``, a flat or nested JSON list. An answer puts each output either in ``data`` or,
when ``binary_data`` (per output) or ``binary_data_output`` (per request) asks for it, after the JSON header with its
``binary_data_size``. This module only translates: it checks what the bytes themselves say (types, sizes, lengths)
and leaves the model's signature to the data plane. Every problem is a ``ServingError`` INVALID_ARGUMENT naming the
field, so the front end answers 400 with one line and never 500.
"""

import zlib
from dataclasses import dataclass

import numpy as np
import orjson

from serving import codec
from serving.dataplane import InferenceRequest, InputTensor, OutputTensor, RequestedOutput
from serving.errors import ServingError, Status
from serving.shared_memory import SystemSharedMemory
from serving.signature import BYTES, NUMPY_DTYPES

# The same bound as the gRPC front end's message size: 1,024 CIFAR images (12.6 MB) fit with room to spare.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Which JSON values each datatype's ``data`` may hold (NumPy kinds of the parsed list): JSON has no unsigned or
# 16-bit types, so integers of any width are accepted (the shared codec range-checks them), and floats take
# integers too, as Triton does; strings, objects and nulls never pass.
ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


@dataclass(frozen=True)
class BinaryOutputs:
    """Which outputs an answer carries as binary data: those named with ``binary_data`` true, else the default
    (the request's ``binary_data_output``)."""

    default: bool
    by_name: dict[str, bool]

    def __call__(self, name: str) -> bool:
        return self.by_name.get(name, self.default)


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


def _short(value: object) -> str:
    return repr(value)[:80]


def decompress(body: bytes, content_encoding: str | None) -> bytes:
    """Undoes ``Content-Encoding: gzip`` or ``deflate`` (what tritonclient's request compression sends), refusing a
    body that inflates past ``MAX_BODY_BYTES``."""
    if not content_encoding or content_encoding == "identity":
        return body
    windows = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    if content_encoding not in windows:
        raise _bad(f"Content-Encoding {content_encoding[:40]!r} is not supported; send gzip, deflate or none")
    inflater = zlib.decompressobj(windows[content_encoding])
    try:
        inflated = inflater.decompress(body, MAX_BODY_BYTES)
    except zlib.error as error:
        raise _bad(f"the body is not valid {content_encoding} data ({error})") from error
    if inflater.unconsumed_tail:
        raise _bad(f"the body inflates past {MAX_BODY_BYTES} bytes")
    return inflated


def parse_json(data: bytes, what: str = "request body") -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise _bad(f"the {what} is not valid JSON: {error}") from error


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object, got {_short(value)}")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{where} must be true or false, got {_short(value)}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail of an infer body, by the ``Inference-Header-Content-Length`` header."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise _bad(
            f"Inference-Header-Content-Length {header_length[:40]!r} must be a byte count within the "
            f"{len(body)}-byte body"
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str, shared_memory: SystemSharedMemory
) -> tuple[InferenceRequest, BinaryOutputs]:
    """Parses an infer body into the data plane's request, with arrays in the datatypes and shapes it declares
    (an input in ``shared_memory`` read from it).

    Raises:
        ServingError: INVALID_ARGUMENT naming the field that is malformed.
    """
    header, binary = split_body(body, header_length)
    request = _object(parse_json(header, "inference header"), "the inference header")
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise _bad(f"'id' must be a string, got {_short(request_id)}")
    parameters = _object(request.get("parameters", {}), "'parameters'")
    binary_default = _bool(parameters.get("binary_data_output", False), "parameters.binary_data_output")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of {name, datatype, shape, data or parameters.binary_data_size}")
    tensors = []
    offset = 0
    for index, entry in enumerate(inputs):
        tensor, used = _decode_input(_object(entry, f"inputs[{index}]"), index, binary[offset:], shared_memory)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise _bad(
            f"the body has {len(binary) - offset} bytes of binary data after the inputs' binary_data_size; "
            "check Inference-Header-Content-Length"
        )
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list):
        raise _bad(f"'outputs' must be a list, got {_short(outputs)}")
    requested = []
    binary_by_name = {}
    for index, entry in enumerate(outputs):
        name, output_parameters = _output_entry(_object(entry, f"outputs[{index}]"), index)
        binary_by_name[name] = _bool(
            output_parameters.get("binary_data", binary_default), f"output {codec.shown(name)}: parameters.binary_data"
        )
        if output_parameters.get("binary_data") is True and "shared_memory_region" in output_parameters:
            raise _bad(f"output {codec.shown(name)} asks for binary_data and shared_memory_region; ask for one")
        requested.append(RequestedOutput.from_parameters(name, output_parameters))
    decoded = InferenceRequest(
        model=model, version=version, id=request_id, inputs=tensors, outputs=requested, parameters=parameters
    )
    return decoded, BinaryOutputs(binary_default, binary_by_name)


def _decode_input(
    entry: dict, index: int, binary: memoryview, shared_memory: SystemSharedMemory
) -> tuple[InputTensor, int]:
    """One input as the data plane's tensor, and how many bytes of the binary tail it took."""
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"inputs[{index}].name must be a non-empty string, got {_short(name)}")
    where = f"input {codec.shown(name)}"
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise _bad(f"{where}: datatype must be a string, got {_short(datatype)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(not isinstance(d, bool) and isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(f"{where}: shape must be a list of integers >= 0, got {_short(shape)}")
    shape = tuple(shape)
    parameters = _object(entry.get("parameters", {}), f"{where}: parameters")
    shared = shared_memory.slice_for("input", name, parameters)
    if shared is not None:
        if "data" in entry or "binary_data_size" in parameters:
            raise _bad(f"{where} has shared_memory_region and also data or binary_data_size; send one")
        return InputTensor(name, datatype, shape, codec.array_from_raw(name, datatype, shape, shared.read(where))), 0
    if "binary_data_size" in parameters:
        size = codec.non_negative_int(parameters["binary_data_size"], f"{where}: parameters.binary_data_size")
        if "data" in entry:
            raise _bad(f"{where} has both 'data' and binary_data_size; send one")
        if size > len(binary):
            raise _bad(f"{where}: binary_data_size {size} is more than the {len(binary)} bytes of binary data left")
        return InputTensor(name, datatype, shape, codec.array_from_raw(name, datatype, shape, binary[:size])), size
    if "data" not in entry:
        raise _bad(f"{where} has neither 'data' nor parameters.binary_data_size")
    return InputTensor(name, datatype, shape, _from_json_data(entry["data"], name, datatype, shape)), 0


def _from_json_data(data: object, name: str, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A flat or nested JSON list as the declared tensor; JSON's untyped numbers are checked to be of the kind
    the datatype holds before the shared codec converts and range-checks them."""
    where = f"input {codec.shown(name)}"
    if not isinstance(data, list):
        raise _bad(f"{where}: data must be a JSON list, got {_short(data)}")
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError) as error:  # ragged nesting
        raise _bad(f"{where}: data is not a regular (flat or nested) list of numbers ({error})") from None
    dtype = NUMPY_DTYPES.get(datatype)
    if values.size and dtype is not None and values.dtype.kind not in ACCEPTED_KINDS[dtype.kind]:
        raise _bad(f"{where}: data holds {values.dtype.kind!r}-kind values, not {datatype} values")
    if values.size and datatype == BYTES and values.dtype.kind != "U":  # numpy would turn numbers into text
        raise _bad(f"{where}: data of a BYTES tensor must hold strings only")
    return codec.array_from_values(name, datatype, shape, values.reshape(-1), "data")


def _output_entry(entry: dict, index: int) -> tuple[str, dict]:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"outputs[{index}].name must be a non-empty string, got {_short(name)}")
    return name, _object(entry.get("parameters", {}), f"output {codec.shown(name)}: parameters")


@dataclass(frozen=True)
class EncodedResponse:
    """An infer answer: the body, and the length of its JSON header when binary data follows it."""

    body: bytes
    header_length: int | None


def encode_infer_response(
    model: str, version: str, request_id: str, outputs: list[OutputTensor], binary: BinaryOutputs
) -> EncodedResponse:
    """The answer body: each output in JSON ``data`` or as binary data after the JSON header.

    BYTES outputs (the classification extension's strings) travel as JSON strings or in the 4-byte-length layout.
    """
    described = []
    blobs = []
    for output in outputs:
        entry: dict = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if output.in_shared_memory:  # Triton's answer describes it and carries no data
            described.append(entry)
            continue
        if binary(output.name):
            blob = codec.raw_bytes(output.datatype, output.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") for item in output.data.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(output.data).reshape(-1)
        described.append(entry)
    answer = {"model_name": model, "model_version": version, "outputs": described}
    if request_id:
        answer["id"] = request_id
    header = dump_json(answer)
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *blobs]), len(header))


def dump_json(value: object) -> bytes:
    """JSON bytes, NumPy arrays included (orjson: measured 5x faster than the standard library on these bodies)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
