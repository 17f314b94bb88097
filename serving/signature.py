"""Tensor signatures of a model (names, Open Inference Protocol datatypes, shapes) and their validation.

Shapes use -1 for a variable dimension; the first dimension is the batch. This module is pure data and numpy:
it decides whether a request's declared tensor fits the model, and says what was expected when it does not.
"""

from dataclasses import dataclass

import numpy as np

from serving.errors import ServingError, Status

# Open Inference Protocol datatype names and the numpy dtypes they travel as (little-endian, row-major).
# BYTES is missing on purpose: the models of this project take and return numeric tensors only.
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

# ONNX Runtime's type strings for the same datatypes.
ONNX_DATATYPES: dict[str, str] = {
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
    """One input or output: its name, datatype and shape including the batch dimension (-1 = variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.datatype]

    def check_request(self, datatype: str, shape: tuple[int, ...], max_batch_size: int) -> None:
        """Checks a request's declared datatype and shape for this input.

        Raises:
            ServingError: INVALID_ARGUMENT naming the input, what was received and what is expected.
        """
        if datatype != self.datatype:
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': datatype {datatype or '(empty)'} does not match the model's {self.datatype}",
            )
        if len(shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape[1:], shape[1:], strict=True)
        ):
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': shape {format_shape(shape)} does not match the model's "
                f"{format_shape(self.shape)} "
                "(-1 is any size, the first dimension is the batch)",
            )
        if any(d < 0 for d in shape):
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': shape {format_shape(shape)} has a negative dimension",
            )
        if shape[0] < 1:
            raise ServingError(Status.INVALID_ARGUMENT, f"input '{self.name}': batch size must be at least 1, got 0")
        if shape[0] > max_batch_size:
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"input '{self.name}': batch of {shape[0]} exceeds the model's max_batch_size "
                f"{max_batch_size}; "
                "split the request",
            )


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of one model version, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

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
