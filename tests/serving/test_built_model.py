"""Across the seam: a model that `buildsys build` really trained and published, served and called by tritonclient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits

from buildsys.sources.sklearn_digits import to_uint8
from tests.serving.conftest import reference_probabilities

pytestmark = pytest.mark.slow


def test_served_digits_model_matches_onnx_runtime_and_classifies(digits_workspace: Path, start_server) -> None:
    repository = digits_workspace / "build-out" / "models"
    server = start_server(repository)
    digits = load_digits()
    images, labels = to_uint8(digits.images[:200]), digits.target[:200]
    with grpcclient.InferenceServerClient(server.url) as client:
        metadata = client.get_model_metadata("digits")
        assert metadata.platform == "onnxruntime_onnx"
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("image", "UINT8", [-1, 8, 8])]
        request = grpcclient.InferInput("image", [200, 8, 8], "UINT8")
        request.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput("probabilities")]
        served = client.infer("digits", [request], outputs=outputs).as_numpy("probabilities")
        top = client.infer(
            "digits", [request], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)]
        )
        top_labels = [entry.decode().split(":")[2] for entry in top.as_numpy("probabilities").reshape(-1)]
    expected = reference_probabilities(repository / "digits" / "1", images)
    np.testing.assert_array_equal(served, expected)
    assert top_labels == [str(index) for index in expected.argmax(axis=1)]
    assert (served.argmax(axis=1) == labels).mean() >= 0.95
