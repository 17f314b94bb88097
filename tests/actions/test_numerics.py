"""Speed and numerics options: mixed precision with XLA keeps float32 exports and parity; determinism repeats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from buildsys.build import BuildOptions, plan
from buildsys.store import OutputTree
from buildsys.workspace import Workspace
from tests.conftest import write_definition

pytestmark = pytest.mark.slow

SMALL = """
from buildsys.dsl import *

model(
    name="small",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[Flatten(), Dense(32, activation="relu"), Dropout(0.1), Dense(10, activation="softmax")],
    train=train(optimizer="adam", epochs=3, batch_size=32, learning_rate=1e-2),
)
"""


def _initializers(version: Path) -> list[bytes]:
    """The exported weights in graph order (names carry per-process layer counters, so they are left out)."""
    graph = onnx.load(str(version / "model.onnx")).graph
    return [numpy_helper.to_array(tensor).tobytes() for tensor in graph.initializer]


def test_mixed_precision_jit_and_deterministic_builds(workspace: Path) -> None:
    write_definition(workspace, "small.py", SMALL)
    script = textwrap.dedent("""
        import keras
        from buildsys.actions.compile import build_model
        from buildsys.actions.numerics import configure
        from buildsys.cli import main
        from buildsys.workspace import Workspace
        from pathlib import Path

        spec = Workspace(Path(".")).targets["//model_defs:small"].spec
        assert configure(mixed_precision=True, deterministic=False) == "mixed_bfloat16"
        model = build_model(spec, {})
        assert model.layers[1].compute_dtype == "bfloat16" and model.outputs[0].dtype == "float32"
        assert main(["build", "small", "--mixed-precision", "--jit"]) == 0
        assert main(["build", "small", "--seed", "5", "--deterministic"]) == 0
        assert main(["build", "small", "--seed", "5", "--deterministic", "--force"]) == 0
    """)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    models = workspace / "build-out" / "models" / "small"
    mixed, first, second = (json.loads((models / str(v) / "manifest.json").read_text()) for v in (1, 2, 3))
    assert mixed["training"] == {"mixed_precision": True, "jit": True, "deterministic": False}
    assert mixed["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert mixed["parity"]["onnx_max_abs_diff"] <= mixed["parity"]["tolerance"] == 1e-4
    assert mixed["metrics"]["test"]["accuracy"] > 0.8
    output = onnx.load(str(models / "1" / "model.onnx")).graph.output[0]
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    assert first["content_hash"] == second["content_hash"] != mixed["content_hash"]
    assert first["history"] == second["history"]
    assert _initializers(models / "2") == _initializers(models / "3")  # bit-identical weights


def test_options_that_change_the_weights_are_keyed(workspace: Path) -> None:
    write_definition(workspace, "small.py", SMALL)
    target = Workspace(workspace).targets["//model_defs:small"]
    tree = OutputTree(workspace / "build-out")

    def digest(**options: object) -> str:
        return plan(target, tree, BuildOptions(**options)).key.digest

    plain = digest()
    assert digest(strategy="default") == digest(strategy="one-device") == plain
    keyed = [digest(strategy="mirrored"), digest(mixed_precision=True), digest(jit=True), digest(deterministic=True)]
    assert len({plain, *keyed}) == 5
