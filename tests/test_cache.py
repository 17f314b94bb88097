"""The cache key changes when anything that can change the output changes, and only then."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from buildsys import sources
from buildsys.cache import PACKAGE_DIR, cache_key, canonical_json, code_digest, framework_versions
from buildsys.workspace import Workspace
from tests.conftest import write_definition

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="tiny",
        data=datasets.sklearn_digits(),
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(hp.Int("units", 8, 64, default={units}), activation="relu"),
                Dense(10, activation="softmax")],
        train=train(epochs={epochs}),
    )
"""


def spec_of(workspace: Path, units: int = 16, epochs: int = 3, comment: str = ""):
    write_definition(workspace, "tiny.py", DEFINITION.format(units=units, epochs=epochs) + comment)
    return Workspace(workspace).targets["//model_defs:tiny"].spec


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


def test_key_is_stable_across_loads_and_formatting(workspace: Path) -> None:
    first = cache_key(spec_of(workspace), "data", 1, {"units": 16}).digest
    second = cache_key(
        spec_of(workspace, comment="\n    # a comment does not change the model\n"), "data", 1, {"units": 16}
    ).digest
    assert first == second and len(first) == 64


def test_key_changes_with_everything_that_matters(workspace: Path) -> None:
    base = spec_of(workspace)
    reference = cache_key(base, "data", 1, {"units": 16}).digest
    changed = {
        "spec (epochs)": cache_key(spec_of(workspace, epochs=4), "data", 1, {"units": 16}).digest,
        "spec (hp default)": cache_key(spec_of(workspace, units=32), "data", 1, {"units": 16}).digest,
        "data fingerprint": cache_key(base, "other data", 1, {"units": 16}).digest,
        "seed": cache_key(base, "data", 2, {"units": 16}).digest,
        "hparams": cache_key(base, "data", 1, {"units": 24}).digest,
    }
    for what, digest in changed.items():
        assert digest != reference, what


def test_key_changes_with_framework_versions(workspace: Path, monkeypatch) -> None:
    spec = spec_of(workspace)
    reference = cache_key(spec, "data", 1, {}).digest
    versions = dict(framework_versions())
    assert {"onnx", "pillow", "numpy", "buildsys_code"} <= versions.keys()
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "numpy", "pillow", "buildsys", "buildsys_code"):
        monkeypatch.setattr("buildsys.cache.framework_versions", lambda p=package: {**versions, p: "0.0.0-other"})
        assert cache_key(spec, "data", 1, {}).digest != reference, package


def test_source_locations_are_not_part_of_the_key(workspace: Path) -> None:
    spec = spec_of(workspace)
    moved = dataclasses.replace(spec, location=None)
    assert cache_key(spec, "d", 1, {}).digest == cache_key(moved, "d", 1, {}).digest


def test_max_batch_size_is_a_serving_setting_outside_the_key(workspace: Path) -> None:
    spec = spec_of(workspace)
    served = dataclasses.replace(spec, export=dataclasses.replace(spec.export, max_batch_size=8))
    assert cache_key(served, "d", 1, {}).digest == cache_key(spec, "d", 1, {}).digest
    exported = dataclasses.replace(spec, export=dataclasses.replace(spec.export, opset=18))
    assert cache_key(exported, "d", 1, {}).digest != cache_key(spec, "d", 1, {}).digest


def _copy_package(tmp_path: Path) -> Path:
    copy = tmp_path / "site" / "buildsys"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


KEY_SCRIPT = """
import sys
from pathlib import Path
from buildsys.cache import cache_key
from buildsys.workspace import Workspace
spec = Workspace(Path(sys.argv[1])).targets["//model_defs:tiny"].spec
print(cache_key(spec, "data", 1, {"units": 16}).digest)
"""


def test_a_change_to_the_code_that_trains_changes_the_key(workspace: Path, tmp_path: Path) -> None:
    spec_of(workspace)
    copy = _copy_package(tmp_path)
    assert code_digest(copy) == code_digest(PACKAGE_DIR)  # where the package is installed does not matter

    def key_with(package_root: Path) -> str:
        env = {**os.environ, "PYTHONPATH": str(package_root)}
        result = subprocess.run([sys.executable, "-c", KEY_SCRIPT, str(workspace)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, check=True)  # fmt: skip
        return result.stdout.strip()

    reference = key_with(copy.parent)
    with open(copy / "cli.py", "a", encoding="utf-8") as stream:
        stream.write("\n# the command line writes no model\n")
    assert code_digest.__wrapped__(copy) == code_digest(PACKAGE_DIR)
    assert key_with(copy.parent) == reference
    with open(copy / "actions" / "train.py", "a", encoding="utf-8") as stream:
        stream.write("\nEPOCH_PADDING = 1  # any edit of the training code\n")
    assert code_digest.__wrapped__(copy) != code_digest(PACKAGE_DIR)
    assert key_with(copy.parent) != reference


FILES_DEFINITION = """
    from buildsys.dsl import *

    model(
        name="from_npz",
        data=datasets.npz("data/digits.npz"),
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
    model(
        name="from_folder",
        data=datasets.image_folder("data/folder", image_size=(8, 8), color_mode="grayscale"),
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(2, activation="softmax")],
        train=train(epochs=1),
    )
"""


def _files_workspace(root: Path) -> Path:
    from buildsys.sources.images import encode_png
    from tests.conftest import write_definition

    rng = np.random.default_rng(0)
    (root / "data" / "folder").mkdir(parents=True)
    images = rng.integers(0, 256, (30, 8, 8)).astype(np.uint8)
    np.savez(root / "data" / "digits.npz", x_train=images[:20], y_train=np.arange(20) % 10, x_test=images[20:],
             y_test=np.arange(10))  # fmt: skip
    for name in ("cat", "dog"):
        (root / "data" / "folder" / name).mkdir()
        for index in range(5):
            (root / "data" / "folder" / name / f"{index}.png").write_bytes(encode_png(images[index]))
    write_definition(root, "files.py", FILES_DEFINITION)
    return root


def _keys(root: Path, memo_dir: Path | None = None) -> dict[str, str]:
    workspace = Workspace(root)
    keys = {}
    for label, target in workspace.targets.items():
        fingerprint = sources.fingerprint(target.spec.data, None, memo_dir)
        keys[label] = cache_key(target.spec, fingerprint, 1, {}).digest
    return keys


def test_a_copied_workspace_has_the_same_keys(tmp_path: Path) -> None:
    first = _files_workspace(tmp_path / "alice" / "project")
    second = tmp_path / "bob" / "elsewhere" / "copy"
    shutil.copytree(first, second, copy_function=shutil.copy)  # new absolute paths and new modification times
    for path in second.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert _keys(first) == _keys(second)
    assert _keys(second, tmp_path / "memo") == _keys(first)


def test_fingerprints_follow_content_and_the_memo_rereads_only_changed_files(tmp_path: Path, monkeypatch) -> None:
    root = _files_workspace(tmp_path / "ws")
    memo = tmp_path / "memo"
    before = _keys(root, memo)
    png = root / "data" / "folder" / "cat" / "0.png"
    status = png.stat()
    content = bytearray(png.read_bytes())
    content[-13] ^= 0xFF  # the same size, rewritten in place with the old modification time
    png.write_bytes(bytes(content))
    os.utime(png, ns=(status.st_atime_ns, status.st_mtime_ns))
    after = _keys(root, memo)
    assert after["//model_defs:from_folder"] != before["//model_defs:from_folder"]
    assert after["//model_defs:from_npz"] == before["//model_defs:from_npz"]

    def no_reading(path: Path) -> str:
        raise AssertionError(f"{path} was read again although it did not change")

    monkeypatch.setattr("buildsys.cache.file_sha256", no_reading)
    assert _keys(root, memo) == after


def test_the_device_kind_is_keyed_only_where_it_changes_the_arithmetic(workspace: Path, monkeypatch) -> None:
    spec = spec_of(workspace)

    def key_on(device: str, training: dict) -> str:
        monkeypatch.setattr("buildsys.cache.accelerator", lambda: device)
        return cache_key(spec, "d", 1, {}, training).digest

    assert key_on("gpu", {}) == key_on("cpu", {})
    assert key_on("gpu", {"jit": True}) == key_on("cpu", {"jit": True})
    for option in ("mixed_precision", "deterministic"):
        assert key_on("gpu", {option: True}) != key_on("cpu", {option: True}), option
