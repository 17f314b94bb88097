"""What scoring a published model means, shared by both engines: the model and the scored batches it yields.

`Model` is a published version's `model.onnx` in an ONNX Runtime session; `Scored` is any ordered stream of scored
batches (read and scored here by `buildsys.batch.predict`, or on Spark by `buildsys.engines.spark`). Both engines
import this module and not each other. Never TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from buildsys.console import warn_once
from buildsys.errors import DataError
from buildsys.sources.resolve import ImageFormat
from buildsys.store import OutputTree
from buildsys.workspace import Target
from modelrepo import FormatError, read_manifest

NUMPY_TYPES = {"UINT8": np.uint8, "FP32": np.float32}
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def _requested_providers(device: str, available: list[str]) -> list[str]:
    if device not in DEVICES:
        raise DataError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda" and CUDA not in available:
        raise DataError(
            f"--device cuda, but ONNX Runtime's CUDA provider is not in this build ({', '.join(available)}); "
            "install onnxruntime-gpu, or use --device auto or cpu"
        )
    return [CUDA, CPU] if device != "cpu" and CUDA in available else [CPU]


class Model:
    """A published version's `model.onnx` in an ONNX Runtime session, with what the manifest says about it."""

    def __init__(self, tree: OutputTree, target: Target, version: int | None, device: str = "auto") -> None:
        """Opens the version's session on ``device``: ``cpu``; ``cuda``, which must become active; or ``auto``,
        CUDA when this ONNX Runtime build offers it, with a warning when it is offered but does not activate.

        Raises:
            DataError: the version's files are unusable, or ``cuda`` is not active.
        """
        import onnxruntime

        self.version = tree.published_version(target.label, target.name, version)
        self.name = target.name
        version_dir = tree.model_dir(target.name) / str(self.version)
        try:
            manifest = read_manifest(version_dir)
            path = version_dir / manifest.onnx_file
        except FormatError as error:
            raise DataError(str(error)) from None
        if len(manifest.inputs) != 1 or not manifest.outputs or manifest.image is None:
            raise DataError(f"{version_dir}: predict needs one image input, an output and the image settings")
        self.class_names: list[str] = list(manifest.class_names)
        (tensor,) = manifest.inputs
        if tensor.datatype not in NUMPY_TYPES:
            raise DataError(f"{version_dir}: predict feeds {', '.join(NUMPY_TYPES)} inputs, not {tensor.datatype}")
        self.input_name, self.input_shape = tensor.name, tensor.shape[1:]
        self.input_type = NUMPY_TYPES[tensor.datatype]
        self.output_name = manifest.outputs[0].name
        image = manifest.image
        self.image_format = ImageFormat(
            (image["height"], image["width"]), "rgb" if image["color_mode"] == "rgb" else "grayscale"
        )
        requested = _requested_providers(device, onnxruntime.get_available_providers())
        self.session = onnxruntime.InferenceSession(str(path), providers=requested)
        # ONNX Runtime falls back to the CPU when CUDA's libraries are missing; only the active list tells.
        self.providers: list[str] = self.session.get_providers()
        if CUDA in requested and CUDA not in self.providers:
            if device == "cuda":
                raise DataError(
                    "--device cuda, but ONNX Runtime's CUDA provider did not activate (check the CUDA/cuDNN "
                    "libraries); use --device auto or cpu"
                )
            warn_once(f"{path}: ONNX Runtime offers CUDA but it did not activate; predicting on the CPU")
        self.onnx_path = path
        self.scorer: Callable[[np.ndarray], np.ndarray] | None = None  # another engine over the same file

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:] != self.input_shape:
            if images.size == len(images) * int(np.prod(self.input_shape)):
                images = images.reshape(len(images), *self.input_shape)
            else:
                raise DataError(
                    f"images are shaped {images.shape[1:]} but {self.name} version {self.version} takes "
                    f"{self.input_shape}"
                )
        if self.scorer is not None:
            return self.scorer(images.astype(self.input_type))
        return self.session.run([self.output_name], {self.input_name: images.astype(self.input_type)})[0]


def label_map(source_names: tuple[str, ...] | None, model_names: list[str]) -> np.ndarray | None:
    """Source label index -> model class index (-1 where the model has no class of that name)."""
    if source_names is None:
        return None
    position = {name: index for index, name in enumerate(model_names)}
    return np.array([position.get(name, -1) for name in source_names], np.int64)


ScoredBatch = tuple[list[str], np.ndarray, np.ndarray | None]
"""Image ids, their probabilities, and their true model class indices (-1 where unknown; None when unlabelled)."""


class Scored(Protocol):
    """Scored batches in a fixed order, from wherever the images were read and scored."""

    labelled: bool
    total: int

    def batches(self, batch_size: int) -> Iterator[ScoredBatch]:
        """The scored images, `batch_size` at a time: each batch is one write to the destination."""
        ...
