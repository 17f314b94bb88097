"""`build --remote-cache` end to end against a real nginx: a hit in a second workspace trains nothing and answers
like the original; a corrupt blob or a stopped server is a warning and a local build; `--remote-cache-required`
fails in one line; a transfer target builds on a base fetched from the cache.

One small digits network (a few epochs) is built once with upload; each test gets its own nginx serving a copy
of what that build stored, so that damaging one test's cache never touches another's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from buildsys.remote import RemoteCache, RemoteSettings
from tests.conftest import run_buildsys, write_definition
from tests.remote.nginx import Nginx, _require_nginx

pytestmark = pytest.mark.slow

DIGITS = """
    from buildsys.dsl import *

    model(
        name="digits",
        data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
        inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
        layers=[Flatten(), Dense(32, activation="relu"), Dense(10, activation="softmax")],
        train=train(optimizer="adam", learning_rate=3e-3, epochs=4, batch_size=64),
    )
"""


def _ours(stderr: str) -> list[str]:
    """The lines buildsys itself wrote to stderr (TensorFlow's start-up logging is not ours)."""
    return [line for line in stderr.splitlines() if line.startswith(("warning:", "error:"))]


def _manifest(root: Path, name: str = "digits", version: int = 1) -> dict:
    path = root / "build-out" / "models" / name / str(version) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Workspace 1 built `digits` with upload into nginx, predicted its test split, then ran `clean`."""
    _require_nginx()
    server = Nginx(tmp_path_factory.mktemp("nginx-origin"))
    server.start()
    try:
        first = tmp_path_factory.mktemp("workspace-1")
        write_definition(first, "digits.py", DIGITS)
        built = run_buildsys("build", "digits", "--remote-cache", server.url, cwd=first)
        assert built.returncode == 0, built.stderr
        assert "uploaded to remote cache" in built.stdout and not _ours(built.stderr), built.stderr
        predicted = first / "predicted-1.csv"
        result = run_buildsys("predict", "digits", "--input", "digits#test", "--output", str(predicted), cwd=first)
        assert result.returncode == 0, result.stderr
        onnx = tmp_path_factory.mktemp("first-onnx") / "model.onnx"
        shutil.copy(first / "build-out" / "models" / "digits" / "1" / "model.onnx", onnx)
        manifest = _manifest(first)
        assert manifest["origin"] == {"kind": "built"}
        cleaned = run_buildsys("clean", cwd=first)
        assert cleaned.returncode == 0 and not (first / "build-out" / "models" / "digits").exists()
    finally:
        server.stop()
    key = manifest["content_hash"]
    return {"workspace": first, "storage": server.storage, "predicted": predicted, "onnx": onnx, "key": key}


@pytest.fixture
def cache(uploaded: dict, tmp_path_factory: pytest.TempPathFactory) -> Nginx:
    """A fresh nginx serving a copy of what workspace 1 uploaded."""
    server = Nginx(tmp_path_factory.mktemp("nginx"))
    shutil.copytree(uploaded["storage"], server.storage, dirs_exist_ok=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def second(uploaded: dict, tmp_path: Path) -> Path:
    """Workspace 2: a copy of workspace 1's files (new paths, new modification times), nothing built."""
    root = tmp_path / "workspace-2"
    shutil.copytree(uploaded["workspace"] / "model_defs", root / "model_defs")
    return root


def test_a_second_workspace_fetches_instead_of_training(uploaded: dict, cache: Nginx, second: Path) -> None:
    probe = (
        "import sys\nfrom buildsys.cli import main\n"
        f"code = main(['build', 'digits', '--remote-cache', {cache.url!r}])\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=second, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tensorflow not imported" in result.stdout
    assert "fetched from remote cache" in result.stdout and "verified; no training" in result.stdout
    assert not [action for action in ("load data", "compile", "train", "export") if f": {action} ..." in result.stdout]
    assert not _ours(result.stderr), result.stderr
    manifest = _manifest(second)
    assert manifest["content_hash"] == uploaded["key"] and manifest["version"] == 1
    assert manifest["origin"]["kind"] == "fetched" and manifest["origin"]["cache"] == cache.url
    assert manifest["origin"]["key"] == uploaded["key"] and manifest["origin"]["built_as"]["version"] == 1
    assert (second / "build-out" / "models" / "digits" / "config.pbtxt").is_file()

    shown = run_buildsys("show", "digits", cwd=second)
    assert f"origin:  fetched from {cache.url}" in shown.stdout and uploaded["key"] in shown.stdout
    again = run_buildsys("build", "digits", "--remote-cache", cache.url, cwd=second)
    assert "up to date (version 1)" in again.stdout

    predicted = second / "predicted-2.csv"
    result = run_buildsys("predict", "digits", "--input", "digits#test", "--output", str(predicted), cwd=second)
    assert result.returncode == 0, result.stderr
    assert predicted.read_text() == uploaded["predicted"].read_text()  # the fetched model answers identically
    import onnxruntime

    images = np.random.default_rng(0).integers(0, 17, size=(64, 8, 8), dtype=np.uint8)
    outputs = [
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
        for path in (uploaded["onnx"], second / "build-out" / "models" / "digits" / "1" / "model.onnx")
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_workspace_with_another_gate_fetches_the_same_training_and_judges_it(
    uploaded: dict, cache: Nginx, second: Path
) -> None:
    """A gate added to the definition changes the key but not the training: the entry found by the training
    digest is fetched and judged by this gate, published as the version it is (its own key), and up to date
    afterwards; a gate it fails keeps it out."""
    definition = second / "model_defs" / "digits.py"
    gate = "    evaluate=evaluate(min_accuracy=0.5),\n"
    definition.write_text(definition.read_text().replace("    train=train(", f"{gate}    train=train(", 1))
    assert gate in definition.read_text()
    result = run_buildsys("build", "digits", "--remote-cache", cache.url, "--no-remote-upload", cwd=second)
    assert result.returncode == 0, result.stderr
    assert "fetched from remote cache" in result.stdout and "verified; no training" in result.stdout
    assert not _ours(result.stderr), result.stderr
    manifest = _manifest(second)
    assert manifest["content_hash"] == uploaded["key"] and manifest["quality_gate"]["passed"]
    again = run_buildsys("build", "digits", "--remote-cache", cache.url, cwd=second)
    assert "up to date (version 1)" in again.stdout, again.stdout

    strict = second.parent / "strict"
    shutil.copytree(second / "model_defs", strict / "model_defs")
    strict_definition = strict / "model_defs" / "digits.py"
    strict_definition.write_text(strict_definition.read_text().replace("min_accuracy=0.5", "min_accuracy=0.9999"))
    result = run_buildsys("build", "digits", "--remote-cache", cache.url, "--no-remote-upload", cwd=strict)
    assert result.returncode == 1
    (error,) = _ours(result.stderr)
    assert error.startswith("error: //model_defs:digits: rejected by the quality gate: test accuracy"), error
    assert not (strict / "build-out" / "models" / "digits" / "1").exists()


def test_a_corrupt_blob_is_a_warning_and_a_local_build(cache: Nginx, second: Path) -> None:
    blob = max(cache.blobs(), key=lambda path: path.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0x55
    blob.write_bytes(bytes(data))
    result = run_buildsys("build", "digits", "--remote-cache", cache.url, cwd=second)
    assert result.returncode == 0, result.stderr
    warnings = _ours(result.stderr)
    assert len(warnings) == 1 and "is unusable" in warnings[0] and "building locally" in warnings[0], result.stderr
    assert "\n  train " in result.stdout and _manifest(second)["origin"] == {"kind": "built"}
    # The local build's upload repaired the entry: what the cache now holds under the key verifies again.
    staging = second / "staging-check"
    staging.mkdir()
    key = _manifest(second)["content_hash"]
    assert RemoteCache(RemoteSettings(cache.url), warn=pytest.fail).fetch(key, "digits", staging) is not None


def test_a_stopped_cache_is_a_warning_and_required_makes_it_an_error(cache: Nginx, second: Path) -> None:
    cache.stop()
    required = run_buildsys("build", "digits", "--remote-cache", cache.url, "--remote-cache-required", cwd=second)
    assert required.returncode == 1
    assert _ours(required.stderr) == [
        f"error: remote cache required but unavailable: {cache.url}: connection refused or host unreachable"
    ]
    assert not (second / "build-out" / "models" / "digits").exists()
    result = run_buildsys("build", "digits", cwd=second, env={**os.environ, "BUILDSYS_REMOTE_CACHE": cache.url})
    assert result.returncode == 0, result.stderr
    warnings = _ours(result.stderr)
    assert warnings[0].startswith(f"warning: remote cache lookup: {cache.url}: connection refused")
    assert warnings[1].startswith("warning: remote cache upload:") and len(warnings) == 2, warnings
    assert "\n  train " in result.stdout and _manifest(second)["version"] == 1


BASE = """
    from buildsys.dsl import *

    model(
        name="digits_cnn",
        data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
        inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
        layers=[Conv2D(8, 3, activation="relu"), Flatten(), Dense(32, activation="relu", name="features"),
                Dense(10, activation="softmax")],
        train=train(optimizer="adam", learning_rate=3e-3, epochs=3, batch_size=64),
    )
"""
HEAD = """
    from buildsys.dsl import *

    model(
        name="digits_transfer",
        data=datasets.sklearn_digits(test_fraction=0.5, split_seed=1),
        inputs=image_input("image", shape=(8, 8, 1), dtype="uint8", scale=1 / 255),
        base=target("//model_defs:digits_cnn", layer="features"),
        head=logistic_regression(reg_param=0.001, elastic_net_param=0.5),
        train=train(optimizer="adam", learning_rate=1e-2, epochs=3, batch_size=64),
    )
"""


def test_a_transfer_target_builds_on_a_base_from_the_cache(nginx: Nginx, tmp_path: Path) -> None:
    first, second = tmp_path / "workspace-1", tmp_path / "workspace-2"
    write_definition(first, "digits_cnn.py", BASE)
    write_definition(first, "digits_transfer.py", HEAD)
    built = run_buildsys("build", "digits_cnn", "--remote-cache", nginx.url, cwd=first)
    assert built.returncode == 0, built.stderr
    shutil.copytree(first / "model_defs", second / "model_defs")

    result = run_buildsys("build", "digits_transfer", "--remote-cache", nginx.url, "--no-remote-upload", cwd=second)
    assert result.returncode == 0, result.stderr
    assert "//model_defs:digits_cnn\n  fetched from remote cache" in result.stdout and "uploaded" not in result.stdout
    assert re.search(r"//model_defs:digits_transfer\n(  .*\n)*  published version 1 ", result.stdout)  # trained here
    base, head = _manifest(first, "digits_cnn"), _manifest(second, "digits_transfer")
    assert _manifest(second, "digits_cnn")["origin"]["kind"] == "fetched"
    assert head["origin"] == {"kind": "built"}
    assert head["dependencies"] == {"//model_defs:digits_cnn": base["content_hash"]}  # the key a local base gives
    assert head["dependency_versions"]["//model_defs:digits_cnn"]["weights_sha256"] == base["weights_sha256"]
    assert len(list((nginx.storage / "ac").iterdir())) == 1  # --no-remote-upload: only the base's record


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--remote-header", "Authorization: Bearer secret"], "need --remote-cache URL"),
        (["--remote-cache", "ftp://cache.example/x"], "expected an http://, https://, file://, s3:// or gs:// URL"),
        (["--remote-cache", "http://127.0.0.1:9/", "--remote-header", "no colon secret"], "expected a header as"),
    ],
)
def test_remote_settings_errors_are_one_line_and_show_no_secret(tmp_path: Path, arguments: list, message: str) -> None:
    write_definition(tmp_path, "digits.py", DIGITS)
    result = run_buildsys("build", "digits", *arguments, cwd=tmp_path)
    assert result.returncode == 2 and len(_ours(result.stderr)) == 1 and message in result.stderr, result.stderr
    assert "secret" not in result.stderr and not (tmp_path / "build-out" / "models").exists()
