"""The parity probe: a few test inputs and the trained Keras model's outputs on them, kept in every version.

The build's verify action writes `parity_probe.npz` (arrays `inputs` and `outputs`, loaded with
`allow_pickle=False`) beside the model. Whoever receives the version later — a remote cache hit on another machine,
with another ONNX Runtime — can then re-check, without TensorFlow and in milliseconds, that `model.onnx` still
computes what the trained model computed. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from buildsys.errors import BuildsysError, one_line
from modelrepo import FormatError, Manifest, write_atomic

PROBE_FILE = "parity_probe.npz"
PROBE_ROWS = 8
NUMPY_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}


class ProbeError(BuildsysError):
    """A version's `model.onnx` does not reproduce the outputs its parity probe recorded, or the probe is bad."""


def write_probe(folder: Path, inputs: np.ndarray, outputs: np.ndarray) -> str:
    """Writes the first `PROBE_ROWS` inputs and the Keras outputs on them into `folder`; returns the file name."""
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.asarray(inputs)[:PROBE_ROWS], outputs=np.asarray(outputs, np.float32)[:PROBE_ROWS])
    write_atomic(folder / PROBE_FILE, buffer.getvalue())
    return PROBE_FILE


def check_probe(folder: Path, manifest: Manifest) -> float:
    """Runs `folder`'s ONNX model on its probe inputs; returns the max abs difference from the recorded outputs.

    The manifest (already checked by the caller to belong to this key) gives the tensor names, types and shapes
    and the tolerance the build verified against.

    Raises:
        ProbeError: a missing or malformed probe, or a difference above the manifest's parity tolerance.
    """
    import onnxruntime

    try:
        (source,), (target,) = manifest.inputs, manifest.outputs
        tolerance = float(manifest.parity["tolerance"])
        onnx_file = manifest.onnx_file
        dtype = NUMPY_TYPES[source.datatype]
    except (KeyError, TypeError, ValueError, FormatError) as error:
        raise ProbeError(f"manifest.json does not describe one ONNX input and output ({error!r})"[:200]) from None
    input_shape, output_shape = source.shape[1:], target.shape[1:]
    try:
        with np.load(folder / PROBE_FILE, allow_pickle=False) as arrays:
            inputs, expected = arrays["inputs"], arrays["outputs"]
    except FileNotFoundError:
        raise ProbeError(f"no {PROBE_FILE}: the version cannot be re-checked without TensorFlow") from None
    except (OSError, ValueError, KeyError) as error:
        raise ProbeError(f"{PROBE_FILE} is not a valid probe ({type(error).__name__})") from None
    rows = len(inputs)
    if (
        not 1 <= rows <= PROBE_ROWS
        or inputs.dtype != dtype
        or inputs.shape[1:] != input_shape
        or expected.dtype != np.float32
        or expected.shape != (rows, *output_shape)
    ):
        raise ProbeError(f"{PROBE_FILE} does not match the manifest's input and output tensors")
    try:
        session = onnxruntime.InferenceSession(str(folder / onnx_file), providers=["CPUExecutionProvider"])
        (actual,) = session.run([target.name], {source.name: inputs})
    except Exception as error:  # onnxruntime raises its own exception types for unloadable models and bad feeds
        raise ProbeError(f"{onnx_file} does not run on its probe: {one_line(error, 160)}") from None
    difference = float(np.abs(np.asarray(actual, np.float32) - expected).max())
    if not difference <= tolerance:
        raise ProbeError(
            f"{onnx_file} differs from the recorded Keras outputs by {difference:.3g} (max abs over {rows} "
            f"probe inputs); the tolerance is {tolerance:g}"
        )
    return difference
