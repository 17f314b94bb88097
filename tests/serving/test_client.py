"""serving.client: the Python client and the image-classifying command line, against a real server."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from serving.client import ClientError, InferenceClient, load_image
from tests.serving.conftest import CLASS_NAMES, PROJECT_ROOT, images, reference_probabilities


@pytest.fixture
def serving_client(shared_server):
    with InferenceClient(shared_server.url) as client:
        yield client


def test_health_readiness_and_metadata(serving_client):
    assert serving_client.health() == "SERVING" and serving_client.is_ready()
    info = serving_client.metadata("digits")
    assert (info.name, info.versions, info.platform, info.max_batch_size) == (
        "digits",
        ("1",),
        "onnxruntime_onnx",
        1024,
    )
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("image", "UINT8", (-1, 8, 8))]
    assert info.execution_providers == ("CPUExecutionProvider",) and info.device_warning is None


def test_predict_splits_large_batches_and_equals_onnx_runtime(serving_client, digits_repo):
    batch = images(2500, seed=11)  # more than max_batch_size 1024: three requests
    np.testing.assert_array_equal(
        serving_client.predict("digits", batch), reference_probabilities(digits_repo / "digits" / "1", batch)
    )


def test_classify_returns_labels_and_scores_best_first(serving_client, digits_repo):
    batch = images(5, seed=12)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    results = serving_client.classify("digits", batch, top_k=2)
    assert len(results) == 5
    for pairs, probabilities in zip(results, expected, strict=True):
        best = np.argsort(-probabilities, kind="stable")[:2]
        assert [label for label, _ in pairs] == [CLASS_NAMES[i] for i in best]
        np.testing.assert_allclose([score for _, score in pairs], probabilities[best], atol=1e-6)


def test_errors_are_one_line_client_errors(serving_client):
    with pytest.raises(ClientError, match="NOT_FOUND: unknown model 'nope'") as raised:
        serving_client.predict("nope", images(1))
    assert raised.value.code == "NOT_FOUND"
    with pytest.raises(ValueError, match="images are float64 but model 'digits' takes UINT8"):
        serving_client.predict("digits", np.zeros((1, 8, 8)))


def test_cli_classifies_png_and_jpeg_files(shared_server, digits_repo, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(images(1, seed=13)[0] * 15).save(gray)
    colour = tmp_path / "colour.jpg"
    Image.fromarray(np.random.default_rng(14).integers(0, 255, (32, 24, 3), dtype=np.uint8)).save(colour)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    command = [
        sys.executable,
        "-m",
        "serving.client",
        "--url",
        shared_server.url,
        "--model",
        "digits",
        "--top-k",
        "3",
    ]
    completed = subprocess.run([*command, str(gray), str(colour)], capture_output=True, text=True, env=env, check=True)
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 2
    batch = np.stack([load_image(path, (-1, 8, 8)) for path in (gray, colour)])
    assert batch.shape == (2, 8, 8) and batch.dtype == np.uint8
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    for line, path, probabilities in zip(lines, (gray, colour), expected, strict=True):
        best = np.argsort(-probabilities, kind="stable")[:3]
        assert line == f"{path}: " + ", ".join(f"{CLASS_NAMES[i]} ({probabilities[i]:.4f})" for i in best)

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    failed = subprocess.run([*command, str(not_an_image)], capture_output=True, text=True, env=env)
    assert failed.returncode == 1
    assert failed.stderr.strip().startswith(f"client: error: cannot decode {not_an_image}")


def test_load_image_converts_colour_mode_to_the_input_shape(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((10, 20, 3), 200, dtype=np.uint8)).save(path)
    assert load_image(path, (-1, 32, 32, 3)).shape == (32, 32, 3)
    assert load_image(path, (-1, 28, 28, 1)).shape == (28, 28, 1)
    assert load_image(path, (-1, 8, 8)).shape == (8, 8)
    with pytest.raises(ValueError, match="is not"):
        load_image(path, (-1, 10))
