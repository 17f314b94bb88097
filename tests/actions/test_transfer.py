"""Transfer builds end to end: digits_transfer on digits_cnn, and pretrained bases from local weights files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from tests.conftest import REPO, run_buildsys, write_definition

pytestmark = pytest.mark.slow


def manifest(root: Path, name: str, version: int) -> dict:
    return json.loads((root / "build-out" / "models" / name / str(version) / "manifest.json").read_text())


def build_the_head_without_tensorflow(root: Path) -> subprocess.CompletedProcess:
    """`build //model_defs:digits_transfer` in a fresh process that must succeed without importing TensorFlow."""
    probe = (
        "import sys\nfrom buildsys.cli import main\ncode = main(['build', '//model_defs:digits_transfer'])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def transfer_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A clean workspace with digits_cnn and digits_transfer, after `build //model_defs:digits_transfer`."""
    root = tmp_path_factory.mktemp("transfer-workspace")
    (root / "model_defs").mkdir()
    for name in ("digits_cnn.py", "digits_transfer.py"):
        shutil.copy(REPO / "model_defs" / name, root / "model_defs" / name)
    result = run_buildsys("build", "//model_defs:digits_transfer", cwd=root)
    assert result.returncode == 0, result.stderr
    return root, result


def test_building_the_head_builds_its_base_first(transfer_workspace: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, result = transfer_workspace
    output, summary = result.stdout.split("\ntarget ", 1)  # the blocks, then the summary table
    blocks = [line for line in output.splitlines() if not line.startswith(" ")]  # one label per target
    assert blocks == ["//model_defs:digits_cnn", "//model_defs:digits_transfer"]
    assert "//model_defs:digits_cnn" in summary and "built v1" in summary
    assert result.stdout.count("  published version 1 to ") == 2
    head = manifest(root, "digits_transfer", 1)
    base = manifest(root, "digits_cnn", 1)
    assert head["metrics"]["test"]["accuracy"] >= 0.90
    assert head["dependencies"] == {"//model_defs:digits_cnn": base["content_hash"]}
    assert head["parity"]["onnx_max_abs_diff"] <= 1e-4 and head["parity"]["savedmodel_max_abs_diff"] <= 1e-4
    assert list((root / "build-out" / "features" / "digits_cnn").glob("*.npz")), "the base's features are cached"
    assert "featurise" in head["timings"]


def test_exported_head_is_one_graph_from_pixels(transfer_workspace: tuple[Path, subprocess.CompletedProcess]) -> None:
    from sklearn.datasets import load_digits

    from buildsys.sources.sklearn_digits import to_uint8

    root, _ = transfer_workspace
    path = root / "build-out" / "models" / "digits_transfer" / "1" / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [value.name for value in graph.input] == ["image"] and [value.name for value in graph.output] == [
        "probabilities"
    ]
    digits = load_digits()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"image": to_uint8(digits.images)[..., np.newaxis]})[0]
    assert (probabilities.argmax(axis=1) == digits.target).mean() >= 0.90


def test_noop_build_of_the_chain_stays_tensorflow_free(
    transfer_workspace: tuple[Path, subprocess.CompletedProcess],
) -> None:
    root, _ = transfer_workspace
    result = build_the_head_without_tensorflow(root)
    assert "digits_cnn: up to date (version 1)" in result.stdout
    assert "digits_transfer: up to date (version 1)" in result.stdout


def test_changing_the_base_makes_the_head_stale(transfer_workspace: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = transfer_workspace
    changed = root / "changed"
    shutil.copytree(root / "model_defs", changed / "model_defs")
    os.symlink(root / "build-out", changed / "build-out")
    cnn = changed / "model_defs" / "digits_cnn.py"
    cnn.write_text(cnn.read_text().replace("epochs=20", "epochs=21"))
    listed = run_buildsys("list", "--json", cwd=changed)
    assert listed.returncode == 0, listed.stderr
    states = {row["label"]: row["state"] for row in json.loads(listed.stdout)}
    assert states["//model_defs:digits_cnn"] == states["//model_defs:digits_transfer"] == "stale"


def test_a_gate_added_to_the_base_judges_it_again_and_the_chain_stays_up_to_date(
    transfer_workspace: tuple[Path, subprocess.CompletedProcess],
) -> None:
    """A quality gate changes nothing in a trained model: the published base is judged by it instead of trained
    again, and its dependent, keyed on the base version's own key, stays up to date (no TensorFlow imported)."""
    root, _ = transfer_workspace
    gated = root / "gated"
    shutil.copytree(root / "model_defs", gated / "model_defs")
    os.symlink(root / "build-out", gated / "build-out")
    cnn = gated / "model_defs" / "digits_cnn.py"
    cnn.write_text(
        cnn.read_text().replace("    train=train(", "    evaluate=evaluate(min_accuracy=0.5),\n    train=train(", 1)
    )
    assert "evaluate=evaluate(min_accuracy=0.5)" in cnn.read_text()
    result = build_the_head_without_tensorflow(gated)
    assert "version 1 was trained from these inputs under another quality gate; it passes this one" in result.stdout
    assert re.search(r"//model_defs:digits_cnn +\S+ +up to date \(v1\)\n", result.stdout), result.stdout
    assert re.search(r"//model_defs:digits_transfer +\S+ +up to date \(v1\)\n", result.stdout), result.stdout
    listed = run_buildsys("list", "--json", cwd=gated)
    states = {row["label"]: row["state"] for row in json.loads(listed.stdout)}
    assert states["//model_defs:digits_cnn"] == states["//model_defs:digits_transfer"] == "up to date"


def test_a_retrained_base_invalidates_its_dependents_cached_features(
    transfer_workspace: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    """The base rebuilt from the same content (after `clean`, or with --force) has other weights: its dependents
    must featurise again, not read features of the old weights; `clean BASE` removes them (issue 11, hole 6)."""
    import h5py

    from buildsys.cache import file_sha256
    from buildsys.store import OutputTree

    source, _ = transfer_workspace
    root = tmp_path / "copy"
    shutil.copytree(source / "model_defs", root / "model_defs")
    shutil.copytree(source / "build-out", root / "build-out")
    features = root / "build-out" / "features"
    cached = set(features.rglob("*.npz"))
    tree = OutputTree(root / "build-out")
    staging = tree.staging_dir("digits_cnn")
    shutil.copytree(root / "build-out" / "models" / "digits_cnn" / "1", staging, dirs_exist_ok=True)
    with h5py.File(staging / "model.weights.h5", "r+") as weights:  # same content hash, retrained weights
        kernels = []
        weights.visititems(lambda name, item: kernels.append(item) if isinstance(item, h5py.Dataset) else None)
        kernels[0][...] = kernels[0][...] + 0.5
    base = tree.manifest("digits_cnn", 1)
    extra = {**base.extra, "weights_sha256": file_sha256(staging / "model.weights.h5")}
    assert tree.publish("digits_cnn", staging, base.replace(extra=extra), max_batch_size=64) == 2

    result = run_buildsys("build", "digits_transfer", "--force", cwd=root)
    assert result.returncode == 0, result.stderr
    # published above with another max_batch_size: the up-to-date base gets its configs rewritten, then reports
    assert re.search(r"//model_defs:digits_cnn\n(  rewrote .*\n)+  up to date \(version 2\)\n", result.stdout)
    assert "\n  features cached in" in result.stdout and "features from" not in result.stdout
    (fresh,) = set(features.rglob("*.npz")) - cached
    assert fresh.parent == features / "digits_cnn"
    assert manifest(root, "digits_transfer", 2)["dependency_versions"]["//model_defs:digits_cnn"]["version"] == 2
    cleaned = run_buildsys("clean", "digits_cnn", cwd=root)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (features / "digits_cnn").exists()


def test_fine_tuning_reuses_cached_features_then_trains_end_to_end(
    transfer_workspace: tuple[Path, subprocess.CompletedProcess],
) -> None:
    root, _ = transfer_workspace
    write_definition(
        root,
        "digits_tuned.py",
        """
        from buildsys.dsl import *

        model(
            name="digits_tuned",
            data=datasets.sklearn_digits(test_fraction=0.5, split_seed=1),
            inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
            base=target("digits_cnn", layer="features"),
            head=mlp(units=32, dropout=0.1),
            fine_tune=fine_tune(layers=1, learning_rate=1e-4, epochs=2),
            train=train(epochs=5, batch_size=64),
        )
        """,
    )
    result = run_buildsys("build", "digits_tuned", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "digits_cnn: up to date (version 1)" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[1] == "//model_defs:digits_tuned"
    assert any(line.startswith("  features from ") for line in lines)  # digits_transfer featurised the same data
    assert "  fine-tuning features at learning rate 0.0001" in lines
    assert sum(line.startswith("  epoch ") for line in lines) == 5 + 2  # the head's epochs, then fine-tuning's
    tuned = manifest(root, "digits_tuned", 1)
    assert len(tuned["history"]["fine_tune_loss"]) == 2 and "fine-tune" in tuned["timings"]
    assert tuned["metrics"]["test"]["accuracy"] >= 0.90
    assert tuned["parity"]["onnx_max_abs_diff"] <= 1e-4


def test_fine_tuning_killed_mid_epoch_resumes_after_its_last_saved_epoch(
    transfer_workspace: tuple[Path, subprocess.CompletedProcess],
) -> None:
    root, _ = transfer_workspace
    write_definition(
        root,
        "digits_slow_tune.py",
        """
        from buildsys.dsl import *

        model(
            name="digits_slow_tune",
            data=datasets.sklearn_digits(test_fraction=0.5, split_seed=1),
            inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
            base=target("digits_cnn", layer="features"),
            head=logistic_regression(),
            fine_tune=fine_tune(layers=1, learning_rate=1e-4, epochs=4),
            train=train(epochs=3, batch_size=4),
        )
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "buildsys", "build", "digits_slow_tune"], cwd=root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    for line in process.stdout:
        if line.startswith("  epoch 1/4 "):  # fine-tuning's first epoch is saved; its second is running
            time.sleep(0.3)
            process.kill()
            break
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    (state,) = (root / "build-out" / "work" / "digits_slow_tune").glob("*/checkpoint/state.json")
    saved = json.loads(state.read_text())["epoch"]
    assert 1 <= saved < 4

    resumed = run_buildsys("build", "digits_slow_tune", cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "  the head was fitted before fine-tuning began; its weights are in " in resumed.stdout
    assert f"  resuming fine-tuning after epoch {saved}/4 from " in resumed.stdout
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("  epoch ")]
    assert epochs == [f"{n}/4" for n in range(saved + 1, 5)]  # neither the head's epochs nor the saved ones again
    history = manifest(root, "digits_slow_tune", 1)["history"]
    assert len(history["loss"]) == 3 and len(history["fine_tune_loss"]) == 4
    assert not list((root / "build-out" / "work" / "digits_slow_tune").glob("*/checkpoint"))


def test_missing_imagenet_weights_fail_with_one_line(workspace: Path) -> None:
    """Offline and with an empty Keras cache, the build names the notop weights file and the folder for it."""
    write_definition(
        workspace,
        "vgg.py",
        """
        from buildsys.dsl import *

        model(
            name="vgg",
            data=datasets.sklearn_digits(),
            inputs=image_input(shape=(8, 8, 1), scale=1),
            base=pretrained("VGG16", weights="imagenet", input_size=(32, 32)),
            head=logistic_regression(),
            train=train(epochs=1),
        )
        """,
    )
    keras_home = workspace / "keras-home"
    env = {**os.environ, "KERAS_HOME": str(keras_home), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": ""}
    result = run_buildsys("build", "vgg", cwd=workspace, env=env)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # TF's C++ logs aside
    assert result.stderr.strip().endswith(line)
    assert line.startswith("error: VGG16 ImageNet weights are not on this machine and could not be downloaded")
    assert f"put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 into {keras_home / 'models'}" in line
    assert not (workspace / "build-out" / "models" / "vgg").exists()


def test_pretrained_base_loads_a_local_weights_file_and_exports_one_graph(workspace: Path) -> None:
    """The real loading code, on weights made here: the base computes what the saved network computes, and the
    composed pixels-to-probabilities model exports to ONNX and SavedModel within the parity tolerance."""
    import keras

    from buildsys.actions.export import export
    from buildsys.actions.transfer import build_base, compose, head_layers
    from buildsys.actions.verify import verify
    from buildsys.store import OutputTree
    from buildsys.workspace import Workspace

    keras.utils.set_random_seed(0)
    network = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    network.save_weights(str(workspace / "vgg16.weights.h5"))
    write_definition(
        workspace,
        "vgg.py",
        """
        from buildsys.dsl import *

        model(
            name="vgg",
            data=datasets.sklearn_digits(),
            inputs=image_input(shape=(8, 8, 1), scale=1),
            base=pretrained("VGG16", weights="../vgg16.weights.h5", input_size=(32, 32)),
            head=logistic_regression(reg_param=0.03, elastic_net_param=0.5),
            train=train(epochs=1),
        )
        """,
    )
    target = Workspace(workspace).targets["//model_defs:vgg"]
    base = build_base(target, [], OutputTree(workspace / "build-out"))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    rgb = np.repeat(keras.ops.convert_to_numpy(keras.layers.Resizing(32, 32)(images.astype("float32"))), 3, axis=-1)
    expected = network.predict(keras.applications.vgg16.preprocess_input(rgb), verbose=0)
    np.testing.assert_allclose(base.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)

    model = compose(target.spec, base, head_layers(target.spec))
    staging = workspace / "staging"
    staging.mkdir()
    export(model, target.spec, staging)
    parity = verify(target.spec, staging, images, model.predict(images, verbose=0))
    assert parity["onnx_max_abs_diff"] <= 1e-4 and parity["savedmodel_max_abs_diff"] <= 1e-4
    assert [value.name for value in onnx.load(str(staging / "model.onnx")).graph.input] == ["image"]


def test_compile_shows_a_pretrained_transfer_target_without_weights(tmp_path: Path) -> None:
    (tmp_path / "model_defs").mkdir()
    shutil.copy(REPO / "model_defs" / "bangla_digits_inception.py", tmp_path / "model_defs")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_buildsys("compile", "bangla_digits_inception", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["inputs"][0]["shape"] == [None, 299, 299, 3] and summary["outputs"][0]["shape"] == [None, 10]
    assert summary["params"] > 21_000_000  # InceptionV3 without its top, and the head


def test_parquet_features_with_an_empty_validation_split(tmp_path: Path) -> None:
    """`validation_split=0` leaves no validation rows; reading the Parquet features must not trip over that."""
    parquet = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the spark extra")
    import pyarrow

    from buildsys.actions.transfer import read_parquet_features

    folder = tmp_path / "features.parquet"
    folder.mkdir()
    rows = {"split": ["train"] * 3 + ["test"] * 2, "index": [0, 1, 2, 0, 1], "features": [[1.0, 2.0]] * 5}
    parquet.write_table(pyarrow.table(rows), folder / "part-0.parquet")
    features = read_parquet_features(folder, {"train": 3, "validation": 0, "test": 2})
    assert features.train.shape == (3, 2) and features.test.shape == (2, 2) and len(features.validation) == 0


def test_each_network_brings_the_layer_names_the_definition_is_checked_against() -> None:
    """The definition refuses an input named like a layer the pretrained base will hold; those names must be the
    ones Keras gives (checked here for every supported network, built without weights)."""
    import keras

    from buildsys.actions.transfer import _preprocessing
    from buildsys.dsl.bases import APPLICATIONS

    for application, info in APPLICATIONS.items():
        size = max(info.min_size, 32)
        network = getattr(keras.applications, application)(
            include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
        )
        assert (_preprocessing(info).name, network.name) == info.layer_names, application


def test_a_base_cut_above_two_dimensions_keeps_its_own_layer_names(tmp_path: Path) -> None:
    """A cut with more than two dimensions gets a Flatten added to the dependency's graph; the dependency's
    definition may already use that layer's name, and the dependent must still compile."""
    source = (REPO / "model_defs" / "digits_cnn.py").read_text()
    source = source.replace(
        'padding="same", activation="relu"', 'padding="same", activation="relu", name="flatten_features"'
    )
    write_definition(tmp_path, "digits_cnn.py", source.replace("MaxPooling2D(2)", 'MaxPooling2D(2, name="pooled")'))
    dependent = (REPO / "model_defs" / "digits_transfer.py").read_text()
    write_definition(tmp_path, "digits_transfer.py", dependent.replace('layer="features"', 'layer="pooled"'))
    result = run_buildsys("compile", "digits_transfer", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [None, 10]
