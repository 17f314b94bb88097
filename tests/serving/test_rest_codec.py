"""The REST front end's body codec in-process: JSON and binary inputs, outputs in both forms, and refusals."""

import gzip
import json
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.dataplane import OutputTensor
from serving.errors import ServingError, Status
from serving.rest import codec
from serving.rest.app import HTTP_STATUS
from serving.shared_memory import SystemSharedMemory
from tests.conftest import fuzz_settings

NO_SHARED_MEMORY = SystemSharedMemory(allowed=False)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def test_binary_and_json_inputs_in_one_request():
    image = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    header = {
        "id": "r1",
        "parameters": {"binary_data_output": True, "timeout": 5000},
        "inputs": [
            {"name": "image", "shape": [2, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 128}},
            {"name": "scale", "shape": [2, 1], "datatype": "FP32", "data": [[0.5], [2]]},
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": False}}],
    }
    body, length = binary_body(header, image.tobytes())
    request, binary = codec.decode_infer_request(body, length, "digits", "2", NO_SHARED_MEMORY)
    assert (request.model, request.version, request.id, request.parameters["timeout"]) == ("digits", "2", "r1", 5000)
    image_in, scale_in = request.inputs
    np.testing.assert_array_equal(image_in.data, image)
    assert (scale_in.datatype, scale_in.shape, scale_in.data.dtype) == ("FP32", (2, 1), np.float32)
    np.testing.assert_array_equal(scale_in.data, np.array([[0.5], [2.0]], np.float32))
    assert [(o.name, o.class_count) for o in request.outputs] == [("probabilities", 3)]
    assert not binary("probabilities") and binary("anything else")


def test_outputs_default_to_the_request_binary_flag():
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}],
        "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    }
    _, binary = codec.decode_infer_request(json.dumps(header).encode(), None, "m", "", NO_SHARED_MEMORY)
    assert (binary("a"), binary("b")) == (True, False)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_inflated(encoding):
    body = b'{"inputs": []}' * 10
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    assert codec.decompress(packed, encoding) == body


def test_a_body_that_inflates_past_the_limit_is_refused():
    bomb = zlib.compress(bytes(codec.MAX_BODY_BYTES + 1))
    with pytest.raises(ServingError, match="inflates past"):
        codec.decompress(bomb, "deflate")


@pytest.mark.parametrize(
    ("header", "tail", "length", "message"),
    [
        ({"inputs": []}, b"", None, "'inputs' must be a non-empty list"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}, b"", None, "has 1 values"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}, b"", None, "outside UINT8"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}, b"", None, "'f'-kind"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, b"", None, "'U'-kind"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]}, b"", None, "regular"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "STRING", "data": [1]}]},
            b"",
            None,
            "datatype 'STRING' is not supported",
        ),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}, b"", None, "integers >= 0"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", None, "neither 'data'"),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"\0" * 4,
            "auto",
            "raw contents are 4 bytes but shape \\[2\\] of FP32 needs 8",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"\0" * 6,
            "auto",
            "2 bytes of binary data after",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"",
            None,
            "more than the 0 bytes",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"", "9999", "within the"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"", "-3", "byte count"),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "y", "parameters": {"classification": 0}}],
            },
            b"",
            None,
            "classification must be an integer >= 1",
        ),
        ({"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"", None, "'id'"),
    ],
)
def test_malformed_requests_are_invalid_argument_naming_the_field(header, tail, length, message):
    text = json.dumps(header).encode()
    header_length = str(len(text)) if length == "auto" else length
    with pytest.raises(ServingError, match=message) as raised:
        codec.decode_infer_request(text + tail, header_length, "m", "", NO_SHARED_MEMORY)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert "\n" not in raised.value.message


def test_answer_with_binary_and_json_outputs():
    probabilities = np.array([[0.25, 0.75]], np.float32)
    labels = np.array([[b"0.750000:1:one"]], dtype=object)
    outputs = [
        OutputTensor("probabilities", "FP32", (1, 2), probabilities),
        OutputTensor("labels", "BYTES", (1, 1), labels),
    ]
    encoded = codec.encode_infer_response(
        "digits", "3", "r1", outputs, codec.BinaryOutputs(False, {"probabilities": True})
    )
    header = json.loads(encoded.body[: encoded.header_length])
    assert header["id"] == "r1" and header["model_version"] == "3"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["data"] == ["0.750000:1:one"]
    assert encoded.body[encoded.header_length :] == probabilities.tobytes()
    plain = codec.encode_infer_response("digits", "3", "", outputs[:1], codec.BinaryOutputs(False, {}))
    assert plain.header_length is None
    assert json.loads(plain.body)["outputs"][0]["data"] == [0.25, 0.75]


@fuzz_settings(200)
@given(body=st.binary(max_size=300), header_length=st.one_of(st.none(), st.text(max_size=6)))
def test_any_bytes_decode_or_are_invalid_argument(body, header_length):
    try:
        codec.decode_infer_request(body, header_length, "m", "", NO_SHARED_MEMORY)
    except ServingError as error:
        assert error.status is Status.INVALID_ARGUMENT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@fuzz_settings(200)
@given(
    key=st.sampled_from(["name", "shape", "datatype", "data", "parameters", "id", "outputs", "inputs"]),
    value=json_values,
    binary=st.binary(max_size=70),
)
def test_mutated_valid_requests_decode_or_are_invalid_argument(key, value, binary):
    entry = {"name": "image", "shape": [1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 64}}
    header = {"inputs": [entry], "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    target = header if key in ("id", "outputs", "inputs") else entry
    target[key] = value
    try:
        body = json.dumps(header, allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    try:
        codec.decode_infer_request(body + binary, str(len(body)), "m", "", NO_SHARED_MEMORY)
    except ServingError as error:
        assert error.status is Status.INVALID_ARGUMENT


def test_every_status_has_an_http_code():
    assert set(HTTP_STATUS) == set(Status)
    assert HTTP_STATUS[Status.NOT_FOUND] == 404 and HTTP_STATUS[Status.UNAVAILABLE] == 503
