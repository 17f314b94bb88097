"""serving.codec in process: BYTES tensors in the protocol's raw layout and as typed values, their limits, and a
Hypothesis fuzz of the raw layout (any bytes give the declared elements or one INVALID_ARGUMENT line) and of
declared shapes (any shape gives its array or one INVALID_ARGUMENT line)."""

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving import codec
from serving.errors import ServingError, Status
from tests.conftest import fuzz_settings


def test_bytes_tensors_round_trip_through_the_raw_layout_and_typed_values():
    items = [b"", b"cat", "naïve".encode(), b"\x00\xff"]
    raw = codec.serialize_bytes(np.array(items, dtype=object))
    assert raw[:4] == struct.pack("<I", 0) and len(raw) == 4 * 4 + sum(len(item) for item in items)
    array = codec.array_from_raw("word", "BYTES", (2, 2), raw)
    assert array.shape == (2, 2) and array.dtype == object and array.reshape(-1).tolist() == items
    assert codec.raw_bytes("BYTES", array) == raw
    typed = codec.array_from_values("word", "BYTES", (4,), ["cat", b"dog", "", "é"], "data")
    assert typed.tolist() == [b"cat", b"dog", b"", "é".encode()]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: codec.array_from_raw("w", "BYTES", (1,), b"\x05\x00\x00\x00abc"), "says 5 bytes but 3 are left"),
        (lambda: codec.array_from_raw("w", "BYTES", (2,), b"\x01\x00\x00\x00a"), "hold 1 BYTES elements"),
        (lambda: codec.array_from_raw("w", "BYTES", (1,), b"\x01\x00\x00\x00ab"), "and 1 bytes more"),
        (lambda: codec.array_from_raw("w", "BYTES", (1,), b"\x01\x00"), "and 2 bytes more"),
        (lambda: codec.array_from_raw("w", "BYTES", (70_000,), b""), "at most 65536"),
        (lambda: codec.array_from_values("w", "BYTES", (2,), [b"a", 3], "data"), "must hold strings"),
        (lambda: codec.array_from_values("w", "BYTES", (3,), [b"a"], "data"), "has 1 values"),
        # No bytes are needed with a 0 among the dimensions, but numpy cannot make the array.
        (lambda: codec.array_from_raw("w", "INT64", (0, 2**62), b""), "is larger than any array can be"),
        (lambda: codec.array_from_values("w", "FP32", (2**40, 0, 2**40), [], "data"), "larger than any array"),
    ],
)
def test_malformed_bytes_tensors_are_invalid_argument_in_one_line(call, words):
    with pytest.raises(ServingError) as raised:
        call()
    assert raised.value.status is Status.INVALID_ARGUMENT and words in raised.value.message
    assert "\n" not in raised.value.message


@fuzz_settings(200)
@given(raw=st.binary(max_size=64), count=st.integers(0, 8))
def test_any_raw_bytes_give_the_declared_elements_or_invalid_argument(raw, count):
    try:
        array = codec.array_from_raw("w", "BYTES", (count,), raw)
    except ServingError as error:
        assert error.status is Status.INVALID_ARGUMENT and "\n" not in error.message
    else:
        assert array.shape == (count,) and codec.serialize_bytes(array) == raw


@fuzz_settings(200)
@given(
    datatype=st.sampled_from(["UINT8", "INT64", "FP32", "BYTES"]),
    shape=st.lists(st.integers(0, 2**63 - 1) | st.integers(0, 4), max_size=4).map(tuple),
)
def test_any_declared_shape_gives_its_array_or_invalid_argument(datatype, shape):
    """What a request whose contents are empty (or in a shared memory region of 0 bytes) may declare."""
    for make in (
        lambda: codec.array_from_raw("x", datatype, shape, b""),
        lambda: codec.array_from_values("x", datatype, shape, [], "data"),
    ):
        try:
            array = make()
        except ServingError as error:
            assert error.status is Status.INVALID_ARGUMENT and "\n" not in error.message
        else:
            assert array.shape == shape and array.size == 0
