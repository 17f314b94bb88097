"""End to end: `python -m buildsys build` on the real digits data, its artifacts, the cache, and kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from buildsys.cli import main
from tests.conftest import REPO, run_buildsys, write_definition

pytestmark = pytest.mark.slow


def manifest_of(root: Path, version: int = 1) -> dict:
    return json.loads((root / "build-out" / "models" / "digits" / str(version) / "manifest.json").read_text())


def test_digits_build_reaches_accuracy_and_records_everything(digits_workspace: Path) -> None:
    manifest = manifest_of(digits_workspace)
    assert manifest["metrics"]["test"]["accuracy"] >= 0.95
    assert manifest["data_sizes"]["test"] == 360
    assert manifest["label"] == "//model_defs:digits" and manifest["version"] == 1
    assert manifest["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8]}]
    assert manifest["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["hparams"] == {"learning_rate": 0.003, "units": 64}
    assert manifest["parity"]["samples"] >= 256
    assert manifest["parity"]["onnx_max_abs_diff"] <= 1e-4 and manifest["parity"]["savedmodel_max_abs_diff"] <= 1e-4
    assert set(manifest["framework_versions"]) >= {"tensorflow", "keras", "tf2onnx", "buildsys"}
    assert set(manifest["timings"]) >= {"load data", "compile", "train", "evaluate", "export", "verify"}
    assert len(manifest["content_hash"]) == 64 and len(manifest["data_fingerprint"]) == 64
    assert manifest["seed"] == 1337 and manifest["params"] == 8 * 8 * 64 + 64 + 64 * 10 + 10


def test_onnx_has_named_dynamic_batch_and_explicit_opset(digits_workspace: Path) -> None:
    path = digits_workspace / "build-out" / "models" / "digits" / "1" / "model.onnx"
    model = onnx.load(str(path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (image,), (probabilities,) = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 8, 8]
    assert probabilities.name == "probabilities"
    assert [d.dim_param or d.dim_value for d in probabilities.type.tensor_type.shape.dim] == ["batch", 10]


def test_onnx_and_savedmodel_agree_on_real_digits(digits_workspace: Path) -> None:
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from buildsys.sources.sklearn_digits import to_uint8

    version = digits_workspace / "build-out" / "models" / "digits" / "1"
    images = to_uint8(load_digits().images[:300])
    session = onnxruntime.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["probabilities"], {"image": images})[0]
    signature = tf.saved_model.load(str(version / "model.savedmodel")).signatures["serving_default"]
    from_savedmodel = signature(image=tf.constant(images))["probabilities"].numpy()
    assert from_onnx.shape == (300, 10)
    assert np.abs(from_onnx - from_savedmodel).max() <= 1e-4
    np.testing.assert_allclose(from_onnx.sum(axis=1), 1.0, atol=1e-5)
    assert (from_onnx.argmax(axis=1) == load_digits().target[:300]).mean() >= 0.95


def test_noop_build_is_up_to_date_without_importing_tensorflow(digits_workspace: Path) -> None:
    probe = (
        "import sys\nfrom buildsys.cli import main\ncode = main(['build', '//model_defs:digits'])\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=digits_workspace, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "//model_defs:digits: up to date (version 1)" in result.stdout
    assert "tensorflow not imported" in result.stdout


def test_list_and_show(digits_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--workspace", str(digits_workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"label": "//model_defs:digits", "state": "up to date", "latest_version": 1}
    ]
    assert main(["show", "digits", "--workspace", str(digits_workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["list", "--workspace", str(digits_workspace)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_changed_hyperparameters_make_the_target_stale(digits_workspace: Path, capsys) -> None:
    from buildsys.build import BuildOptions, plan
    from buildsys.store import OutputTree
    from buildsys.workspace import Workspace

    target = Workspace(digits_workspace).targets["//model_defs:digits"]
    tree = OutputTree(digits_workspace / "build-out")
    assert plan(target, tree, BuildOptions()).published_version == 1
    assert plan(target, tree, BuildOptions(hparams={"units": 32})).published_version is None
    assert plan(target, tree, BuildOptions(seed=7)).published_version is None
    assert main(["build", "digits", "--workspace", str(digits_workspace), "--hparams", "units=33"]) == 2
    assert "does not allow the value 33" in capsys.readouterr().err


def test_killed_build_leaves_no_version_and_the_next_build_recovers(tmp_path: Path) -> None:
    (tmp_path / "model_defs").mkdir()
    shutil.copy(REPO / "model_defs" / "digits.py", tmp_path / "model_defs" / "digits.py")
    process = subprocess.Popen(
        [sys.executable, "-m", "buildsys", "build", "digits"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("//model_defs:digits: verify ..."):  # the export is on disk, not yet published
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    models = tmp_path / "build-out" / "models" / "digits"
    assert not models.exists() or not [p for p in models.iterdir() if p.name.isdigit()]
    leftovers = list((tmp_path / "build-out" / "staging" / "digits").iterdir())
    assert leftovers and (leftovers[0] / "model.onnx").exists() and not (leftovers[0] / "manifest.json").exists()

    result = run_buildsys("build", "digits", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1"]
    assert all(not path.exists() for path in leftovers)


def test_compile_json_counts_the_cifar10_cnn_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "//model_defs:cifar10_cnn", "--workspace", str(REPO), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == 2_264_458
    assert summary["inputs"] == [{"name": "image", "shape": [None, 32, 32, 3], "dtype": "uint8"}]
    assert summary["outputs"][0]["name"] == "probabilities" and summary["outputs"][0]["shape"] == [None, 10]


TINY = """
from buildsys.dsl import *

model(
    name="{name}",
    data=datasets.sklearn_digits(),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[Flatten(), Dense(16, activation="relu", name="hidden"), Dense(10, activation="softmax")],
    train=train(epochs=1, batch_size=64),
    {extra}
)
"""


def tiny(root: Path, name: str, extra: str = "") -> None:
    write_definition(root, f"{name}.py", TINY.format(name=name, extra=extra))


def test_concurrent_builds_of_one_target_publish_one_version(workspace: Path) -> None:
    """Two builds of one target at once (issue 11, hole 1): the second waits for the first's lock and then finds
    its version; with --force, a version published while it waited is the one it was asked for."""
    tiny(workspace, "tiny")
    models = workspace / "build-out" / "models" / "tiny"

    def race(*flags: str) -> list[str]:
        command = [sys.executable, "-m", "buildsys", "build", "tiny", *flags]
        processes = [
            subprocess.Popen(command, cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=300) for process in processes]
        for process, (_, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err[-2000:]
        return [out for out, _ in outputs]

    plain = race()
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1"]
    assert sum("up to date (version 1)" in out for out in plain) == 1
    forced = race("--force")
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert sum("up to date (version 2)" in out for out in forced) == 1


def test_noop_build_repairs_the_model_level_files(digits_workspace: Path) -> None:
    """A build killed between its rename and the model-level writes left them stale; the next (up-to-date) build
    rewrites them, still without TensorFlow (issue 11, hole 2)."""
    folder = digits_workspace / "build-out" / "models" / "digits"
    config = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config.replace("dims: 10", "dims: 3").replace("dims: [ 10 ]", "dims: [ 3 ]"))
    (folder / "labels.txt").unlink()
    result = run_buildsys("build", "digits", cwd=digits_workspace)
    assert result.returncode == 0, result.stderr
    assert "up to date (version 1)" in result.stdout
    assert (folder / "config.pbtxt").read_text() == config
    assert (folder / "labels.txt").read_text() == "".join(f"{digit}\n" for digit in range(10))


def test_keep_going_builds_what_does_not_depend_on_a_failure(workspace: Path) -> None:
    """`build -k` (issue 12, item 2): a target rejected by its gate fails, its dependent is skipped, the others are
    built, and the summary table says so; without -k the build stops at the failure, with the same table."""
    tiny(workspace, "a_broken", "evaluate=evaluate(min_accuracy=0.999),")
    tiny(workspace, "b_good")
    tiny(workspace, "d_good")
    write_definition(
        workspace,
        "c_head.py",
        """
        from buildsys.dsl import *

        model(
            name="c_head",
            data=datasets.sklearn_digits(),
            inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
            base=target("a_broken", layer="hidden"),
            head=logistic_regression(),
            train=train(epochs=1),
        )
        """,
    )
    stopped = run_buildsys("build", "//model_defs/...", cwd=workspace)
    assert stopped.returncode == 1
    assert "a_broken: rejected by the quality gate" in stopped.stderr
    assert not (workspace / "build-out" / "models" / "b_good").exists()
    kept = run_buildsys("build", "//model_defs/...", "--keep-going", cwd=workspace)
    assert kept.returncode == 1, kept.stderr
    table = kept.stdout[kept.stdout.index("target ") :].splitlines()
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {f"//model_defs:{name}" for name in ("a_broken", "b_good", "c_head", "d_good")}
    assert "failed: //model_defs:a_broken: rejected by the quality gate" in rows["//model_defs:a_broken"]
    assert rows["//model_defs:c_head"].endswith("skipped: depends on //model_defs:a_broken")
    assert rows["//model_defs:b_good"].endswith("built v1") and rows["//model_defs:d_good"].endswith("built v1")
