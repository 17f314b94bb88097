"""The output tree: versions appear whole, numbers grow, config.pbtxt and labels.txt follow the newest."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from buildsys.store import OutputTree
from modelrepo import Manifest, Tensor, read_config

MANIFEST = Manifest(
    name="toy",
    content_hash="abc",
    inputs=(Tensor("image", "UINT8", (-1, 32, 32, 3)),),
    outputs=(Tensor("probabilities", "FP32", (-1, 2)),),
    class_names=("cat", "dog"),
)


def stage(tree: OutputTree) -> Path:
    staging = tree.staging_dir("toy")
    (staging / "model.onnx").write_bytes(b"onnx")
    return staging


def test_publish_numbers_versions_and_writes_triton_config(tmp_path: Path) -> None:
    tree = OutputTree(tmp_path)
    assert tree.publish("toy", stage(tree), MANIFEST, max_batch_size=64) == 1
    assert tree.publish("toy", stage(tree), MANIFEST.replace(content_hash="def"), max_batch_size=64) == 2
    assert tree.versions("toy") == [1, 2]
    assert tree.latest_manifest("toy").version == 2
    assert tree.find_version("toy", "abc") == 1 and tree.find_version("toy", "zzz") is None
    assert tree.find_version("toy", "abc", newer_than=1) is None
    config = read_config(tmp_path / "models" / "toy" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert list(config.input[0].dims) == [32, 32, 3] and list(config.output[0].dims) == [2]
    assert (tmp_path / "models" / "toy" / "labels.txt").read_text() == "cat\ndog\n"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert (tmp_path / "models" / "toy" / "2" / "config.pbtxt").read_bytes() == (
        tmp_path / "models" / "toy" / "config.pbtxt"
    ).read_bytes()


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


def test_version_numbers_are_never_reused_after_clean(tmp_path: Path) -> None:
    """A server that saw version 1 must never be handed other content under that number (issue 11, hole 3)."""
    tree = OutputTree(tmp_path)
    assert tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8) == 1
    tree.clean("toy")
    assert tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8) == 2
    tree.clean()
    assert tree.versions("toy") == [] and tree.highest_version("toy") == 2
    assert tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8) == 3


def test_published_files_and_folders_are_readable_by_everyone(tmp_path: Path) -> None:
    """Triton or a server running as another user reads the versions (issue 11, hole 4)."""
    tree = OutputTree(tmp_path)
    staging = stage(tree)
    (staging / "model.savedmodel" / "variables").mkdir(parents=True)
    (staging / "model.savedmodel" / "variables" / "data").write_bytes(b"weights")
    os.chmod(staging / "model.savedmodel" / "variables" / "data", 0o600)
    os.chmod(staging / "model.savedmodel", 0o700)
    tree.publish("toy", staging, MANIFEST, max_batch_size=8)
    model = tmp_path / "models" / "toy"
    for path in [model, *model.rglob("*")]:
        expected = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def _tensors(config: str) -> tuple[list[list[int]], bool]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(config, model_config_pb2.ModelConfig())
    return [list(output.dims) for output in parsed.output], any(output.label_filename for output in parsed.output)


def test_a_poller_never_sees_a_version_inconsistent_with_the_config(tmp_path: Path) -> None:
    """A server polling the model folder while versions with a changing class count are published (issue 11,
    hole 2): whenever the version list is the same before and after it reads config.pbtxt (then labels.txt),
    that config fits the newest version, and so does the version's own copy."""
    tree = OutputTree(tmp_path)
    folder = tmp_path / "models" / "toy"
    checked, wrong = [], []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            before = tree.versions("toy")
            if not before:
                continue
            config_file, labels_file = folder / "config.pbtxt", folder / "labels.txt"
            config = config_file.read_text() if config_file.exists() else None
            labels = labels_file.read_text().splitlines() if labels_file.exists() else None
            if tree.versions("toy") != before:
                continue
            if config is None:
                wrong.append((before[-1], "no config.pbtxt"))
                continue
            newest = tree.manifest("toy", before[-1])
            (dims,), uses_labels = _tensors(config)
            classes = len(newest.class_names)
            own_dims, _ = _tensors((folder / str(before[-1]) / "config.pbtxt").read_text())
            checked.append(before[-1])
            if dims not in ([classes], [-1]) or (uses_labels and tuple(labels or ()) != newest.class_names):
                wrong.append((before[-1], dims, labels))
            if own_dims != [[classes]]:
                wrong.append((before[-1], "own copy", own_dims))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for index in range(24):
            classes = ("cat", "dog") if index % 3 else ("cat", "dog", "emu")
            outputs = (Tensor("probabilities", "FP32", (-1, len(classes))),)
            manifest = MANIFEST.replace(class_names=classes, outputs=outputs)
            tree.publish("toy", stage(tree), manifest, max_batch_size=8 + index % 2)
    finally:
        done.set()
        poller.join()
    assert checked and not wrong, wrong[:3]


def test_refresh_repairs_model_files_left_stale_by_a_kill(tmp_path: Path) -> None:
    tree = OutputTree(tmp_path)
    tree.publish("toy", stage(tree), MANIFEST, max_batch_size=8)
    folder = tmp_path / "models" / "toy"
    (folder / "labels.txt").unlink()
    (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text().replace("dims: 2", "dims: 3"))
    assert sorted(tree.refresh_model_files("toy", max_batch_size=8)) == ["config.pbtxt", "labels.txt"]
    assert (folder / "config.pbtxt").read_text() == (folder / "1" / "config.pbtxt").read_text()
    assert (folder / "labels.txt").read_text() == "cat\ndog\n"
    assert tree.refresh_model_files("toy", max_batch_size=8) == []
    assert sorted(tree.refresh_model_files("toy", max_batch_size=16)) == ["1/config.pbtxt", "config.pbtxt"]
    assert "max_batch_size: 16" in (folder / "config.pbtxt").read_text()
