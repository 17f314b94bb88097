"""The output tree: versions appear whole, numbers grow, config.pbtxt and labels.txt follow the newest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from buildsys.store import OutputTree

MANIFEST = {
    "name": "toy",
    "class_names": ["cat", "dog"],
    "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    "content_hash": "abc",
}


def stage(tree: OutputTree) -> Path:
    staging = tree.staging_dir("toy")
    (staging / "model.onnx").write_bytes(b"onnx")
    return staging


def test_publish_numbers_versions_and_writes_triton_config(tmp_path: Path) -> None:
    tree = OutputTree(tmp_path)
    assert tree.publish("toy", stage(tree), MANIFEST, max_batch_size=64) == 1
    assert tree.publish("toy", stage(tree), {**MANIFEST, "content_hash": "def"}, max_batch_size=64) == 2
    assert tree.versions("toy") == [1, 2]
    assert tree.latest_manifest("toy")["version"] == 2
    assert tree.find_version("toy", "abc") == 1 and tree.find_version("toy", "zzz") is None
    config = (tmp_path / "models" / "toy" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 64" in config
    assert "data_type: TYPE_UINT8\n    dims: [ 32, 32, 3 ]" in config
    assert "data_type: TYPE_FP32\n    dims: [ 2 ]" in config
    assert (tmp_path / "models" / "toy" / "labels.txt").read_text() == "cat\ndog\n"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]


def test_config_parses_as_triton_model_config(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    tree = OutputTree(tmp_path)
    tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8)
    config = text_format.Parse(
        (tmp_path / "models" / "toy" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "toy" and config.max_batch_size == 8
    assert list(config.input[0].dims) == [32, 32, 3] and config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256


def test_staging_of_dead_builds_is_removed_and_never_a_version(tmp_path: Path) -> None:
    tree = OutputTree(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "staging" / "toy" / f"{dead.stdout.strip()}-abandoned"
    leftover.mkdir(parents=True)
    mine = tree.staging_dir("toy")
    assert not leftover.exists() and mine.exists()
    assert tree.versions("toy") == []


def test_versions_ignore_names_that_are_not_versions(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "toy"
    for name in ("1", "3", "007", "0", "tmp", ".hidden"):
        (folder / name).mkdir(parents=True)
    assert OutputTree(tmp_path).versions("toy") == [1, 3]


def test_clean_removes_one_target(tmp_path: Path) -> None:
    tree = OutputTree(tmp_path)
    tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8)
    removed = tree.clean("toy")
    assert tmp_path / "models" / "toy" in removed and not (tmp_path / "models" / "toy").exists()
    assert os.path.isdir(tmp_path / "models")
