"""Reading and validating the output tree in-process: version policies, manifests, configs, signatures."""

import json

import numpy as np
import pytest

from serving.codec import classify, serialize_bytes
from serving.errors import ModelLoadError
from serving.model_files import check_config_matches, list_versions, read_config, read_manifest
from serving.runtime import OnnxModel, RuntimeOptions
from serving.signature import ModelSignature, TensorSpec
from serving.version_policy import VersionPolicy
from tests.serving.conftest import publish_version, write_config


@pytest.mark.parametrize(
    ("text", "available", "selected"),
    [
        ("latest", [1, 2, 3], {3}),
        ("latest:2", [1, 2, 3], {2, 3}),
        ("all", [1, 2, 3], {1, 2, 3}),
        ("specific:1,3", [1, 2, 3], {1, 3}),
        ("specific:4", [1, 2, 3], set()),
    ],
)
def test_version_policy_selects(text, available, selected):
    assert VersionPolicy.parse(text).select(available) == selected
    assert str(VersionPolicy.parse(text)) == (text if ":" in text or text == "all" else "latest:1")


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "specific:", "specific:0", "all:2"])
def test_version_policy_rejects_bad_syntax(text):
    with pytest.raises(ValueError, match="expected latest, latest:N, all or specific:V1,V2"):
        VersionPolicy.parse(text)


def test_config_and_manifest_of_a_published_version(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 3, seed=1)
    (tmp_path / "digits" / ".staging-99-1").mkdir()  # a killed publish is not a version
    (tmp_path / "digits" / "07").mkdir()  # leading zero: not a version
    assert list_versions(tmp_path / "digits") == [3]
    config = read_config(tmp_path / "digits")
    assert VersionPolicy.from_config(config) == VersionPolicy("latest", count=1)
    manifest = read_manifest(version_dir, "digits")
    assert manifest.version == 3 and manifest.class_names[0] == "zero"
    assert manifest.signature.inputs == (TensorSpec("image", "UINT8", (-1, 8, 8)),)
    check_config_matches(config, manifest, tmp_path / "digits" / "config.pbtxt")


def rewrite_manifest(version_dir, **changes):
    path = version_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "letters"}, "name 'letters' does not match the model folder 'digits'"),
        ({"version": 2}, "version 2 does not match its folder '1'"),
        ({"format": 2}, "format 2 is not supported"),
        ({"inputs": [{"name": "image", "datatype": "STRING", "shape": [-1]}]}, "datatype STRING"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [8, 8]}]}, "must start with -1"),
        ({"files": {"onnx": "../../elsewhere.onnx"}}, "must be a file name inside the version folder"),
    ],
)
def test_manifest_errors_name_the_file_and_the_problem(tmp_path, changes, message):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    rewrite_manifest(version_dir, **changes)
    with pytest.raises(ModelLoadError, match=message) as raised:
        read_manifest(version_dir, "digits")
    assert str(version_dir / "manifest.json") in str(raised.value)


def test_config_errors(tmp_path):
    write_config(tmp_path / "digits", "digits", max_batch_size=0)
    with pytest.raises(ModelLoadError, match="max_batch_size is 0"):
        read_config(tmp_path / "digits")
    (tmp_path / "digits" / "config.pbtxt").write_text('name: "digits"\nmax_batch_size: [')
    with pytest.raises(ModelLoadError, match="not a valid Triton model config"):
        read_config(tmp_path / "digits")
    write_config(tmp_path / "other", "digits")
    with pytest.raises(ModelLoadError, match="name 'digits' does not match its folder 'other'"):
        read_config(tmp_path / "other")


def test_onnx_model_must_match_the_manifest(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    wrong = ModelSignature(
        inputs=(TensorSpec("image", "FP32", (-1, 8, 8)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
    )
    with pytest.raises(ModelLoadError, match="ONNX input 'image' is UINT8 \\[-1, 8, 8\\] but the manifest says FP32"):
        OnnxModel(version_dir / "model.onnx", wrong, RuntimeOptions(device="cpu"))
    renamed = ModelSignature(inputs=(TensorSpec("pixels", "UINT8", (-1, 8, 8)),), outputs=wrong.outputs)
    with pytest.raises(ModelLoadError, match="ONNX inputs \\['image'\\] differ"):
        OnnxModel(version_dir / "model.onnx", renamed, RuntimeOptions(device="cpu"))


def test_classification_strings_without_class_names_are_score_and_index():
    labels = classify(np.array([[0.1, 0.7, 0.2]], dtype=np.float32), 5, ())
    assert labels.tolist() == [[b"0.700000:1", b"0.200000:2", b"0.100000:0"]]
    assert serialize_bytes(np.array([b"ab", b""], dtype=object)) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
