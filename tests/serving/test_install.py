"""The serving-only install: a fresh virtual environment with `pip install .` (no extras) serves a model and has
none of the build side's heavy packages.

The environment is made from a copy of the checkout's sources (so that pip's build leaves nothing in the checkout)
with the project's constraints file, from PyPI through pip's cache; the server runs from that environment with no
PYTHONPATH, so what answers is the installed package, not the checkout.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serving.conftest import PROJECT_ROOT, free_port, images, publish_version, reference_probabilities

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "buildsys", "serving", "modelrepo")
BUILD_SIDE_MODULES = ("tensorflow", "keras", "tf2onnx", "sklearn", "pyspark")


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A virtual environment holding only the serving install of this checkout."""
    folder = tmp_path_factory.mktemp("serving-install")
    source = folder / "source"
    source.mkdir()
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [*install, "-c", str(source / "constraints.txt"), str(source)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def run_in(venv: Path, *args: str, cwd: Path, **options) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, **options)


def test_the_build_side_is_not_installed(serving_venv, tmp_path):
    probe = "import importlib.util, json, sys; print(json.dumps([importlib.util.find_spec(m) is not None " \
            "for m in sys.argv[1:]]))"  # fmt: skip
    result = run_in(serving_venv, "-c", probe, *BUILD_SIDE_MODULES, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installed = dict(zip(BUILD_SIDE_MODULES, json.loads(result.stdout), strict=True))
    assert not any(installed.values()), f"the serving install has {installed}"


def test_building_says_in_one_line_how_to_install_the_build_side(serving_venv, tmp_path):
    (tmp_path / "model_defs").mkdir()
    shutil.copy(PROJECT_ROOT / "model_defs" / "digits.py", tmp_path / "model_defs")
    result = run_in(
        serving_venv, "-m", "buildsys", "build", "//model_defs:digits", cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'buildsys[build]'" in lines[0], result.stderr


def test_the_installed_server_answers_over_grpc_and_rest(serving_venv, tmp_path):
    repo = tmp_path / "models"
    version_dir = publish_version(repo, "digits", 1, seed=3)
    grpc_port, http_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    command = ["-m", "serving", "--repository", str(repo), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
               "--poll-interval", "0"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(serving_venv / "bin" / "python"), *command], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    batch = images(3, seed=5)
    expected = reference_probabilities(version_dir, batch)
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            deadline = time.monotonic() + 60
            while not _ready(client, "digits"):
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            answer = client.infer("digits", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
        with httpclient.InferenceServerClient(f"127.0.0.1:{http_port}") as client:
            tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch, binary_data=True)
            answer = client.infer("digits", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
    assert code == 0, log_path.read_text()
    location = run_in(
        serving_venv, "-c", "import serving; print(serving.__file__)", cwd=tmp_path, capture_output=True, text=True
    )
    assert str(serving_venv) in location.stdout, f"the server ran from {location.stdout}"


def _ready(client: grpcclient.InferenceServerClient, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except grpcclient.InferenceServerException:
        return False


def test_opentelemetry_tracing_says_in_one_line_how_to_install_it(serving_venv, tmp_path):
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=3)
    result = run_in(
        serving_venv, "-m", "serving", "--repository", str(repo), "--trace-config", "mode=opentelemetry",
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'buildsys[otel]'" in lines[0], result.stderr
