"""Tensor signatures of a model (names, Open Inference Protocol datatypes, shapes) and their validation.

Shapes use -1 for a variable dimension. A model that batches (Triton's ``max_batch_size`` > 0) has the batch as
every tensor's first dimension; one that does not (``max_batch_size: 0``) takes each tensor whole, in the shape its
config gives. A tensor's ``model_shape`` is the one the ONNX file has when config.pbtxt's ``reshape`` differs from
what clients send and receive. This module is pure data and numpy: it decides whether a request's declared tensor
fits the model, and says what was expected when it does not.
"""

from dataclasses import dataclass

import numpy as np

from serving.errors import ServingError, Status

# Open Inference Protocol datatype names of numbers and the numpy dtypes they travel as (little-endian, row-major).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

# BYTES, the protocol's strings (ONNX's tensor(string), Triton's TYPE_STRING): a numpy object array of ``bytes`` in
# requests and answers, of ``str`` for ONNX Runtime (see TensorSpec.rows_for_model and rows_for_client).
BYTES = "BYTES"
DATATYPES: tuple[str, ...] = (*NUMPY_DTYPES, BYTES)

# ONNX Runtime's type strings for the same datatypes.
ONNX_DATATYPES: dict[str, str] = {
    "tensor(string)": BYTES,
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, datatype and shape as clients see it (-1 = variable), the batch dimension
    first in a model that batches; ``model_shape`` is the ONNX tensor's, where config.pbtxt reshapes it. An
    ``optional`` input (config.pbtxt's ``optional: true``) may be left out of a request, and the model then uses
    its default: an initializer of the ONNX graph that a request may override."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    model_shape: tuple[int, ...] | None = None
    optional: bool = False

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(object) if self.datatype == BYTES else NUMPY_DTYPES[self.datatype]

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        """The shape the ONNX file declares for this tensor."""
        return self.shape if self.model_shape is None else self.model_shape

    def check_request(self, datatype: str, shape: tuple[int, ...], max_batch_size: int) -> None:
        """Checks a request's declared datatype and shape for this input; ``max_batch_size`` 0 is a model that
        does not batch, whose input is given whole.

        Raises:
            ServingError: INVALID_ARGUMENT naming the input, what was received and what is expected.
        """
        if datatype != self.datatype:
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': datatype {datatype or '(empty)'} does not match the model's {self.datatype}",
            )
        batched = max_batch_size > 0
        if len(shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape[batched:], shape[batched:], strict=True)
        ):
            batch_note = "the first dimension is the batch" if batched else "the model does not batch"
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': shape {format_shape(shape)} does not match the model's "
                f"{format_shape(self.shape)} (-1 is any size, {batch_note})",
            )
        if any(d < 0 for d in shape):
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': shape {format_shape(shape)} has a negative dimension",
            )
        if not batched:
            return
        if shape[0] < 1:
            raise ServingError(Status.INVALID_ARGUMENT, f"input '{self.name}': batch size must be at least 1, got 0")
        if shape[0] > max_batch_size:
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': batch of {shape[0]} exceeds the model's max_batch_size "
                f"{max_batch_size}; "
                "split the request",
            )

    def rows_for_model(self, array: np.ndarray, batched: bool) -> np.ndarray:
        """A request's checked input as the batcher queues it: rows in the ONNX tensor's shape, and a single row
        for a model that does not batch (the runner takes it off again)."""
        if self.datatype == BYTES:
            array = _text(array, self.name)
        if self.model_shape is None:
            return array if batched else array[np.newaxis]
        rows = array.shape[0] if batched else 1
        return array.reshape(
            (rows, *_resolved(self.model_shape[batched:], self.shape[batched:], array.shape[batched:]))
        )

    def rows_for_client(self, rows: np.ndarray, batched: bool) -> np.ndarray:
        """An output's rows from the batcher in the shape clients get: config.pbtxt's dims where it reshapes the
        ONNX tensor, and without the single row of a model that does not batch.

        Raises:
            ServingError: INTERNAL when the model's output does not fit the config's dims.
        """
        if self.model_shape is not None:
            target = _resolved(self.shape[batched:], self.model_shape[batched:], rows.shape[1:])
            try:
                rows = rows.reshape((rows.shape[0], *target))
            except ValueError:
                raise ServingError(
                    Status.INTERNAL,
                    f"output '{self.name}': the model returned {format_shape(rows.shape[1:])}, which does not "
                    f"fit config.pbtxt's dims {format_shape(self.shape[batched:])}",
                ) from None
        if self.datatype == BYTES:
            rows = _encoded(rows)
        return rows if batched else rows[0]


def _text(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input's elements as ``str``, which ONNX Runtime's string tensors take (``bytes`` elements would not
    match any string in the model, silently).

    Raises:
        ServingError: INVALID_ARGUMENT for an element that is not UTF-8.
    """
    text = np.empty(array.shape, dtype=object)
    flat = text.reshape(-1)
    for index, item in enumerate(array.reshape(-1)):
        try:
            flat[index] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise ServingError(
                Status.INVALID_ARGUMENT, f"input '{name}': element {index} is not UTF-8 text, which the model takes"
            ) from None
    return text


def _encoded(rows: np.ndarray) -> np.ndarray:
    """A string output's elements (``str`` from ONNX Runtime) as the protocol's ``bytes``."""
    encoded = np.empty(rows.shape, dtype=object)
    flat = encoded.reshape(-1)
    for index, item in enumerate(rows.reshape(-1)):
        flat[index] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return encoded


def _resolved(target: tuple[int, ...], source: tuple[int, ...], actual: tuple[int, ...]) -> tuple[int, ...]:
    """``target`` with each variable dimension (-1) taking the size of the same-numbered variable dimension of
    ``source`` in ``actual``: Triton's reshape keeps variable dimensions in order, between runs of fixed ones that
    hold the same number of elements (checked when the config is read)."""
    sizes = iter([size for size, declared in zip(actual, source, strict=False) if declared == -1])
    return tuple(next(sizes, -1) if d == -1 else d for d in target)


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of one model version, in the model's order; ``batched`` False for a model whose
    config has ``max_batch_size: 0`` (its tensors have no batch dimension)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool = True

    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ServingError(
            Status.INVALID_ARGUMENT,
            f"unknown output '{name}'; the model's outputs are: {', '.join(self.output_names())}",
        )
