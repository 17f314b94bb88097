"""Tensor bytes and values to numpy arrays and back, for every front end; no protocol type is imported here.

A front end hands over what its protocol carried (raw little-endian row-major bytes, or a flat list of typed
values) with the declared name, datatype and shape; these functions check that the data matches the declaration
and return the array. The classification extension's ``"score:index:label"`` strings and the protocol's raw
BYTES layout live here too. Every check raises INVALID_ARGUMENT naming the tensor and what was expected.
"""

import math
import struct
from collections.abc import Sequence

import numpy as np

from serving.errors import ServingError, Status
from serving.signature import BYTES, DATATYPES, NUMPY_DTYPES, format_shape

# Names in requests are arbitrary client text: messages show at most this much of them.
SHOWN_NAME_CHARS = 80
# A BYTES tensor's elements are read one by one on the event loop (about 0.3 us each): a request may hold this many,
# a few milliseconds of the loop, far more than a text classifier's strings.
MAX_BYTES_ELEMENTS = 65_536
# The most bytes a numpy array's shape may span (numpy's own limit).
MAX_ARRAY_BYTES = np.iinfo(np.intp).max


def shown(name: str) -> str:
    """A client-given name as it appears in error messages: quoted, escaped and cut short."""
    return repr(name[:SHOWN_NAME_CHARS]) if len(name) > SHOWN_NAME_CHARS or not name.isprintable() else f"'{name}'"


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


def non_negative_int(value: object, where: str) -> int:
    """``value`` when it is an integer >= 0 (a JSON or protobuf number; ``true`` is not one).

    Raises:
        ServingError: INVALID_ARGUMENT saying ``where`` and what it got.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"{where} must be an integer >= 0, got {value!r:.40}")
    return value


def _dtype_and_count(name: str, datatype: str, shape: tuple[int, ...]) -> tuple[np.dtype, int]:
    """The numpy dtype of ``datatype`` (object for BYTES) and the element count of ``shape``."""
    dtype = np.dtype(object) if datatype == BYTES else NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise _bad(
            f"input {shown(name)}: datatype {datatype[:20] or '(empty)'!r} is not supported; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    if any(d < 0 for d in shape):
        raise _bad(f"input {shown(name)}: shape {format_shape(shape)} has a negative dimension")
    # numpy refuses such a shape even with a 0 among its dimensions, where no bytes need to be sent for it.
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise _bad(f"input {shown(name)}: shape {format_shape(shape)} is larger than any array can be")
    count = math.prod(shape)
    if datatype == BYTES and count > MAX_BYTES_ELEMENTS:
        raise _bad(
            f"input {shown(name)}: shape {format_shape(shape)} is {count} BYTES elements; a request may send at most "
            f"{MAX_BYTES_ELEMENTS} in one tensor"
        )
    return dtype, count


def array_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """The array that ``raw`` (little-endian, row-major) holds for a tensor declared as ``datatype`` ``shape``.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown datatype, a negative dimension or a length mismatch.
    """
    dtype, count = _dtype_and_count(name, datatype, shape)
    if datatype == BYTES:
        return _bytes_elements(name, shape, count, raw)
    if len(raw) != count * dtype.itemsize:
        raise _bad(
            f"input {shown(name)}: raw contents are {len(raw)} bytes but shape {format_shape(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_from_values(name: str, datatype: str, shape: tuple[int, ...], values: Sequence, source: str) -> np.ndarray:
    """The array of a flat list of typed values (``source`` names where they came from, for the message).

    Integers are checked against the datatype's range instead of wrapping around silently.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown datatype, a wrong count, or values out of range.
    """
    dtype, count = _dtype_and_count(name, datatype, shape)
    if len(values) != count:
        raise _bad(
            f"input {shown(name)}: {source} has {len(values)} values but shape {format_shape(shape)} needs {count}"
        )
    if datatype == BYTES:
        if not all(isinstance(value, bytes | str) for value in values):
            raise _bad(f"input {shown(name)}: {source} of a BYTES tensor must hold strings")
        return _object_array([v.encode("utf-8") if isinstance(v, str) else v for v in values], shape)
    try:
        if dtype.kind in "iu":
            wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
            limits = np.iinfo(dtype)
            if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
                raise _bad(
                    f"input {shown(name)}: {source} holds values outside {datatype}'s range "
                    f"[{limits.min}, {limits.max}]"
                )
            return wide.astype(dtype).reshape(shape)
        return np.array(values, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError) as error:
        raise _bad(f"input {shown(name)}: {source} cannot be read as {datatype}: {error}") from None


def _bytes_elements(name: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview) -> np.ndarray:
    """The elements of a BYTES tensor's raw contents: each a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    elements = []
    offset = 0
    while len(elements) < count and offset + 4 <= len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise _bad(
                f"input {shown(name)}: BYTES element {len(elements)} says {length} bytes but {len(view) - offset} "
                "are left"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count or offset != len(view):
        raise _bad(
            f"input {shown(name)}: raw contents hold {len(elements)} BYTES elements (each a 4-byte length and its "
            f"bytes) and {len(view) - offset} bytes more, but shape {format_shape(shape)} needs {count} elements"
        )
    return _object_array(elements, shape)


def _object_array(items: list, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy object array of ``items`` in ``shape`` (numpy would make a bytes array, or nest, from the list)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


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


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """An output tensor's raw contents: BYTES in the length-prefixed layout, numbers little-endian row-major."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
