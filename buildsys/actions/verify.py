"""The verify action: the exported artifacts must compute what the trained Keras model computes.

ONNX Runtime runs `model.onnx` and TensorFlow runs the SavedModel's `serving_default` on held-out inputs (at least
`parity_samples`, drawn from the test split, repeated if the split is smaller); the build fails if either differs
from Keras by more than the tolerance (max absolute difference). The first inputs and Keras' outputs on them are
kept beside the model as its parity probe (`parity_probe.npz`), which a remote cache hit re-checks without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from buildsys.actions import tensorflow
from buildsys.actions.export import ONNX_FILE, SAVEDMODEL_DIR
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError
from buildsys.remote.probe import write_probe


class ParityError(BuildsysError):
    """An exported model disagrees with the trained one."""


def parity_inputs(x_test: np.ndarray, samples: int) -> np.ndarray:
    repeats = -(-samples // len(x_test))
    return np.concatenate([x_test] * repeats)[: max(samples, len(x_test))]


def verify(spec: ModelSpec, destination: Path, x_test: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """Compares Keras, ONNX Runtime and the SavedModel; returns the differences or raises ParityError.

    `predictions` are the trained Keras model's outputs on `x_test`, predicted once by the build for the metrics,
    this check and the report; the parity inputs are `x_test` repeated, so row i expects `predictions[i % n]`.
    """
    import onnxruntime

    tf = tensorflow()
    images = parity_inputs(x_test, spec.export.parity_samples)
    expected = np.asarray(predictions)[np.arange(len(images)) % len(x_test)]

    session = onnxruntime.InferenceSession(str(destination / ONNX_FILE), providers=["CPUExecutionProvider"])
    from_onnx = session.run([spec.output_name], {spec.inputs.name: images})[0]
    serving = tf.saved_model.load(str(destination / SAVEDMODEL_DIR)).signatures["serving_default"]
    from_savedmodel = serving(**{spec.inputs.name: tf.constant(images)})[spec.output_name].numpy()

    differences = {
        "onnx_max_abs_diff": float(np.abs(from_onnx - expected).max()),
        "savedmodel_max_abs_diff": float(np.abs(from_savedmodel - expected).max()),
    }
    tolerance = spec.export.parity_tolerance
    for name, difference in differences.items():
        if not difference <= tolerance:
            artifact = "model.onnx" if name.startswith("onnx") else "model.savedmodel"
            raise ParityError(
                f"{artifact} differs from the trained Keras model by {difference:.3g} (max abs) on "
                f"{len(images)} test inputs; the tolerance is {tolerance:g}"
            )
    probe = write_probe(destination, images, expected)  # re-checked without TensorFlow wherever it is fetched
    return {"samples": int(len(images)), "tolerance": tolerance, **differences, "probe": probe}
