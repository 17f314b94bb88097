"""Reading and validating the output tree in-process: version policies, manifests, configs, signatures, Triton
repositories without manifest.json, and the rule that no file raises anything but ModelLoadError."""

import json
import logging
import re
import shutil

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from serving.codec import classify, serialize_bytes
from serving.errors import ModelLoadError, ServingError, Status
from serving.model_files import list_versions, parse_config_json, read_config, read_version
from serving.runtime import OnnxModel, RuntimeOptions
from serving.signature import ModelSignature, TensorSpec
from serving.version_policy import VersionPolicy
from tests.conftest import fuzz_settings
from tests.serving.conftest import (
    UNBATCHED_CLASSES,
    publish_optional,
    publish_unbatched,
    publish_version,
    replace_dynamic_batching,
    unbatched_reference,
    write_config,
)


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
    manifest = read_version(version_dir, config)
    assert manifest.version == 3 and manifest.class_names["probabilities"][0] == "zero"
    assert manifest.signature.inputs == (TensorSpec("image", "UINT8", (-1, 8, 8)),)


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
        ({"inputs": [{"name": "image", "datatype": "STRING", "shape": [-1]}]}, "datatype 'STRING'"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}]}, "but the manifest says BYTES"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [8, 8]}]}, "must start with -1"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 9]}]}, "is UINT8 \\[8, 8\\]"),
        ({"files": {"onnx": "../../elsewhere.onnx"}}, "must be a file name inside the version folder"),
        ({"class_names": "zero"}, "'class_names' must be a list of strings"),
    ],
)
def test_manifest_errors_name_the_file_and_the_problem(tmp_path, changes, message):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    rewrite_manifest(version_dir, **changes)
    with pytest.raises(ModelLoadError, match=message) as raised:
        read_version(version_dir, read_config(tmp_path / "digits"))
    assert "manifest.json" in str(raised.value) or "config.pbtxt" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_config_errors(tmp_path):
    write_config(tmp_path / "digits", "digits", max_batch_size=-1)
    with pytest.raises(ModelLoadError, match="max_batch_size is -1; it must be 0"):
        read_config(tmp_path / "digits")
    (tmp_path / "digits" / "config.pbtxt").write_text('name: "digits"\nmax_batch_size: [')
    with pytest.raises(ModelLoadError, match="not a valid Triton model config"):
        read_config(tmp_path / "digits")
    write_config(tmp_path / "other", "digits")
    with pytest.raises(ModelLoadError, match="name 'digits' does not match its folder 'other'"):
        read_config(tmp_path / "other")
    (tmp_path / "digits" / "config.pbtxt").write_bytes(b"\xff\xfe")
    with pytest.raises(ModelLoadError, match="config.pbtxt: not UTF-8"):
        read_config(tmp_path / "digits")
    (tmp_path / "digits" / "config.pbtxt").write_text('platform: "tensorflow_savedmodel" max_batch_size: 4')
    with pytest.raises(ModelLoadError, match="'tensorflow_savedmodel' is not supported"):
        read_config(tmp_path / "digits")
    (tmp_path / "digits" / "config.pbtxt").write_text('max_batch_size: 4 default_model_filename: "../x.onnx"')
    with pytest.raises(ModelLoadError, match="default_model_filename '../x.onnx' must be a file name"):
        read_config(tmp_path / "digits")
    (tmp_path / "digits" / "config.pbtxt").write_text(
        'max_batch_size: 4 output [ { name: "p" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "\\000l.txt" } ]'
    )
    with pytest.raises(ModelLoadError, match="label_filename '\\\\x00l.txt' must be a file name"):
        read_config(tmp_path / "digits")  # found by a fuzz: a NUL byte cannot be in a path


def test_onnx_model_must_match_the_signature_and_the_message_names_where_it_is_declared(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    wrong = ModelSignature(
        inputs=(TensorSpec("image", "FP32", (-1, 8, 8)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
    )
    mismatch = r"ONNX input 'image' is UINT8 \[-1, 8, 8\] but manifest.json says FP32 \[-1, 8, 8\]$"
    with pytest.raises(ModelLoadError, match=mismatch):
        OnnxModel(version_dir / "model.onnx", wrong, RuntimeOptions(device="cpu"), declared_in="manifest.json")
    renamed = ModelSignature(inputs=(TensorSpec("pixels", "UINT8", (-1, 8, 8)),), outputs=wrong.outputs)
    with pytest.raises(ModelLoadError, match="ONNX inputs \\['image'\\] differ from manifest.json's \\['pixels'\\]"):
        OnnxModel(version_dir / "model.onnx", renamed, RuntimeOptions(device="cpu"), declared_in="manifest.json")
    model_dir, version_dir = triton_repository(tmp_path / "triton")
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("TYPE_UINT8", "TYPE_FP32"))
    served = read_version(version_dir, read_config(model_dir))
    with pytest.raises(ModelLoadError, match="is UINT8 \\[-1, 8, 8\\] but config.pbtxt says FP32"):
        OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu"), declared_in=served.declared_in)


def test_classification_strings_without_class_names_are_score_and_index():
    labels = classify(np.array([[0.1, 0.7, 0.2]], dtype=np.float32), 5, ())
    assert labels.tolist() == [[b"0.700000:1", b"0.200000:2", b"0.100000:0"]]
    assert serialize_bytes(np.array([b"ab", b""], dtype=object)) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def triton_repository(tmp_path, *, config: bool = True, labels: bool = True):
    """A model folder as Triton users have it: config.pbtxt (optional), labels.txt and 1/model.onnx, no manifest."""
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    (version_dir / "manifest.json").unlink()
    shutil.rmtree(version_dir / "model.savedmodel")
    model_dir = tmp_path / "digits"
    if not labels:
        (model_dir / "labels.txt").unlink()
        text = (model_dir / "config.pbtxt").read_text().replace('label_filename: "labels.txt"', "")
        (model_dir / "config.pbtxt").write_text(text)
    if not config:
        (model_dir / "config.pbtxt").unlink()
    return model_dir, version_dir


def test_a_triton_version_without_manifest_is_served_from_config_and_labels(tmp_path):
    model_dir, version_dir = triton_repository(tmp_path)
    served = read_version(version_dir, read_config(model_dir))
    assert served.signature.inputs == (TensorSpec("image", "UINT8", (-1, 8, 8)),)
    assert served.signature.outputs == (TensorSpec("probabilities", "FP32", (-1, 10)),)
    assert served.class_names["probabilities"][:2] == ("zero", "one") and served.onnx_path == version_dir / "model.onnx"
    OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu")).smoke_test()


def _stateful(text: str) -> str:
    """The config with sequence_batching in place of dynamic_batching (the two are one protobuf oneof)."""
    return replace_dynamic_batching(text, "sequence_batching { max_sequence_idle_microseconds: 5000000 }\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_stateful, "sequence_batching (a stateful model"),
        (
            lambda text: text + 'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_INT32 } ]',
            "batch_input",
        ),
        (lambda text: text + "model_transaction_policy { decoupled: true }", "decoupled: true } (several responses"),
    ],
    ids=["sequence_batching", "batch_input", "decoupled"],
)
def test_triton_features_that_change_what_a_request_means_refuse_the_model_in_one_line(tmp_path, edit, message):
    model_dir, _ = triton_repository(tmp_path)
    config = model_dir / "config.pbtxt"
    config.write_text(edit(config.read_text()))
    with pytest.raises(ModelLoadError) as refused:
        read_config(model_dir)
    assert message in str(refused.value) and "this server serves stateless models" in str(refused.value)
    assert str(refused.value).startswith(str(config)) and "\n" not in str(refused.value)


@pytest.mark.parametrize("field", ["allow_ragged_batch: true", "is_shape_tensor: true"])
def test_a_ragged_or_shape_tensor_input_refuses_the_model_naming_the_input(tmp_path, field):
    model_dir, _ = triton_repository(tmp_path)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "image"', f'name: "image" {field}'))
    with pytest.raises(ModelLoadError, match=f"input 'image' {field.split(':')[0]} .* is not supported"):
        read_config(model_dir)


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ("priority_levels: 2", "default_priority_level 0 is outside [1, 2], the priority_levels"),
        ("priority_levels: 2 default_priority_level: 3", "default_priority_level 3 is outside [1, 2]"),
        (
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value: {} }",
            "priority_queue_policy names level 3, outside [1, 2]",
        ),
        (
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 2 value: { timeout_action: 9 }}",
            "priority_queue_policy 2's timeout_action 9 is neither REJECT nor DELAY",
        ),
    ],
)
def test_priority_levels_that_triton_would_refuse_refuse_the_model_in_one_line(tmp_path, levels, message):
    model_dir, _ = triton_repository(tmp_path)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching {", f"dynamic_batching {{ {levels}", 1))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        read_config(model_dir)


def test_scheduling_hints_that_do_not_change_an_answer_are_accepted(tmp_path):
    model_dir, version_dir = triton_repository(tmp_path)
    config = model_dir / "config.pbtxt"
    hints = "dynamic_batching { preferred_batch_size: [ 4, 8 ]"
    text = config.read_text().replace("dynamic_batching {", hints, 1)
    config.write_text(text + 'response_cache { enable: true }\nmodel_warmup [ { name: "zeros" batch_size: 1 } ]\n')
    served = read_version(version_dir, read_config(model_dir))
    OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu")).smoke_test()


def test_default_model_filename_names_the_onnx_file(tmp_path):
    model_dir, version_dir = triton_repository(tmp_path, labels=False)
    (version_dir / "model.onnx").rename(version_dir / "classifier.onnx")
    with (model_dir / "config.pbtxt").open("a") as config:
        config.write('default_model_filename: "classifier.onnx"\n')
    served = read_version(version_dir, read_config(model_dir))
    assert (served.onnx_path.name, served.class_names) == ("classifier.onnx", {})


def test_a_missing_config_is_completed_from_the_onnx_file(tmp_path):
    model_dir, version_dir = triton_repository(tmp_path, config=False, labels=False)
    config = read_config(model_dir)
    assert (config.name, config.platform, config.max_batch_size) == ("digits", "onnxruntime_onnx", 4)
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [8, 8])]
    served = read_version(version_dir, config)
    assert served.signature.outputs == (TensorSpec("probabilities", "FP32", (-1, 10)),)


def test_without_auto_completion_a_config_must_be_there_and_list_the_tensors(tmp_path):
    """Triton's --disable-auto-complete-config: nothing is taken from the ONNX file."""
    model_dir, version_dir = triton_repository(tmp_path / "missing", config=False, labels=False)
    with pytest.raises(ModelLoadError, match=r"config.pbtxt: missing, and auto-completion is off"):
        read_config(model_dir, auto_complete=False)
    model_dir, version_dir = triton_repository(tmp_path / "partial", labels=False)
    config_path = model_dir / "config.pbtxt"
    config_path.write_text('name: "digits"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    config = read_config(model_dir, auto_complete=False)
    with pytest.raises(ModelLoadError, match=r"lists no inputs or no outputs, and auto-completion is off"):
        read_version(version_dir, config, auto_complete=False)
    assert read_version(version_dir, config).signature.inputs == (TensorSpec("image", "UINT8", (-1, 8, 8)),)


def test_a_missing_config_with_a_fixed_first_dimension_is_completed_as_a_model_that_does_not_batch(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    model_dir = tmp_path / "fixed"
    (model_dir / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_dir / "1" / "model.onnx")
    config = read_config(model_dir)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3, 2])]
    served = read_version(model_dir / "1", config)
    assert served.signature == ModelSignature(
        (TensorSpec("x", "FP32", (3, 2)),), (TensorSpec("y", "FP32", (3, 2)),), batched=False
    )
    model = OnnxModel(model_dir / "1" / "model.onnx", served.signature, RuntimeOptions(device="cpu"))
    model.smoke_test()
    sample = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(model.run({"x": sample[np.newaxis]})["y"], sample[np.newaxis])  # queued as one row
    (model_dir / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="model.onnx: ONNX Runtime cannot load it"):
        read_config(model_dir)


def test_a_model_that_does_not_batch_is_served_whole_with_its_reshapes(tmp_path):
    """The Triton quickstart's layout: max_batch_size 0, and reshape between the client's shapes and the file's."""
    version_dir = publish_unbatched(tmp_path)
    served = read_version(version_dir, read_config(tmp_path / "dense_onnx"))
    (image,), (scores,) = served.signature.inputs, served.signature.outputs
    assert not served.signature.batched
    assert (image.shape, image.model_shape, scores.shape, scores.model_shape) == (
        (3, 4, 4),
        (1, 3, 4, 4),
        (5,),
        (1, 5, 1, 1),
    )
    assert served.class_names == {"fc6_1": tuple(UNBATCHED_CLASSES)}
    model = OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu"))
    model.smoke_test()
    sample = np.random.default_rng(1).normal(size=(3, 4, 4)).astype(np.float32)
    image.check_request("FP32", (3, 4, 4), max_batch_size=0)
    rows = model.run({"data_0": image.rows_for_model(sample, batched=False)})["fc6_1"]
    np.testing.assert_allclose(scores.rows_for_client(rows, batched=False), unbatched_reference(version_dir, sample))
    with pytest.raises(
        ServingError, match=r"shape \[1, 3, 4, 4\] does not match the model's \[3, 4, 4\].*does not batch"
    ):
        image.check_request("FP32", (1, 3, 4, 4), max_batch_size=0)


@pytest.mark.parametrize(
    "edit, message",
    [
        (("shape: [ 1, 3, 4, 4 ]", "shape: [ 1, 3, 4, 5 ]"), "does not hold the elements of dims \\[3, 4, 4\\]"),
        (("shape: [ 1, 3, 4, 4 ]", "shape: [ 3, -1, 4 ]"), "does not hold the elements"),
        (("shape: [ 1, 3, 4, 4 ]", "shape: [ 1, -2, 4, 4 ]"), "must have dimensions >= 1"),
        (("shape: [ 1, 3, 4, 4 ]", "shape: [ ]"), "cannot be empty in a model that does not batch"),
    ],
)
def test_a_reshape_that_cannot_apply_is_refused_at_the_config(tmp_path, edit, message):
    publish_unbatched(tmp_path)
    path = tmp_path / "dense_onnx" / "config.pbtxt"
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(ModelLoadError, match=f"config.pbtxt: .* reshape .*{message}"):
        read_config(tmp_path / "dense_onnx")


def test_a_reshape_keeps_variable_dimensions_in_order():
    """Triton's example: dims [2, 4, -1, 6] as the file's [8, -1, 1, 6], and the way back for an output."""
    spec = TensorSpec("x", "FP32", (-1, 2, 4, -1, 6), model_shape=(-1, 8, -1, 1, 6))
    rows = spec.rows_for_model(np.zeros((5, 2, 4, 7, 6), dtype=np.float32), batched=True)
    assert rows.shape == (5, 8, 7, 1, 6)
    assert spec.rows_for_client(rows, batched=True).shape == (5, 2, 4, 7, 6)


def test_a_preferred_batch_size_beyond_max_batch_size_is_refused(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1, max_batch_size=8)
    path = tmp_path / "digits" / "config.pbtxt"
    path.write_text(
        path.read_text().replace("dynamic_batching {", "dynamic_batching { preferred_batch_size: [ 4, 16 ]")
    )
    with pytest.raises(ModelLoadError, match="preferred_batch_size 16 must be from 1 to max_batch_size 8"):
        read_config(tmp_path / "digits")


def test_a_buildsys_version_under_a_config_without_batching_is_refused(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1, max_batch_size=0)
    with pytest.raises(ModelLoadError, match="max_batch_size is 0, but .*manifest.json's tensors have a batch"):
        read_version(version_dir, read_config(tmp_path / "digits"))


@fuzz_settings(60)
@given(data=st.data())
def test_any_manifest_bytes_read_or_raise_model_load_error(tmp_path_factory, data):
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = publish_version(repo, "digits", 1, seed=1)
    valid = (version_dir / "manifest.json").read_bytes()
    (version_dir / "manifest.json").write_bytes(data.draw(mutations(valid), label="manifest.json"))
    config = read_config(repo / "digits")
    try:
        read_version(version_dir, config)
    except ModelLoadError as error:
        assert "\n" not in str(error)


@pytest.mark.parametrize(
    "edit, words",
    [
        (('name: "digits"', 'name: "dig\\nits"'), "name 'dig\\nits' does not match its folder"),
        (('platform: "onnxruntime_onnx"', 'platform: "onnx\\nruntime"'), "platform/backend 'onnx\\nruntime' is not"),
        (('name: "image"', 'name: "im\\nage"'), "input 'im\\nage' has a character that cannot be printed"),
    ],
)
def test_names_with_line_breaks_in_a_config_are_refused_in_one_line(tmp_path, edit, words):
    """Found by the fuzz below at 600 examples: the config's own strings were put in the message as they were."""
    publish_version(tmp_path, "digits", 1, seed=1)
    config_path = tmp_path / "digits" / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace(*edit, 1))
    with pytest.raises(ModelLoadError) as caught:
        read_config(tmp_path / "digits")
    assert words in str(caught.value) and "\n" not in str(caught.value), caught.value


@fuzz_settings(60)
@given(data=st.data())
def test_any_config_bytes_read_or_raise_model_load_error(tmp_path_factory, data):
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = publish_version(repo, "digits", 1, seed=1)
    if data.draw(st.booleans(), label="without manifest"):
        (version_dir / "manifest.json").unlink()
    config_path = repo / "digits" / "config.pbtxt"
    config_path.write_bytes(data.draw(mutations(config_path.read_bytes()), label="config.pbtxt"))
    try:
        read_version(version_dir, read_config(repo / "digits"))
    except ModelLoadError as error:
        assert "\n" not in str(error)


@fuzz_settings(60)
@given(data=st.data())
def test_any_config_in_a_load_request_parses_and_reads_or_raises_model_load_error(tmp_path_factory, data):
    """A load request's JSON config (mutated bytes of a valid one, as text) goes through the same checks as a
    config.pbtxt, and fails only with one line."""
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = publish_version(repo, "digits", 1, seed=1)
    valid = b'{"name": "digits", "max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 100}}'
    text = data.draw(mutations(valid), label="config").decode("utf-8", "replace")
    try:
        read_version(version_dir, read_config(repo / "digits", parse_config_json(text, "digits")))
    except ModelLoadError as error:
        assert "\n" not in str(error)


@fuzz_settings(60)
@given(data=st.data())
def test_any_config_of_a_model_that_does_not_batch_loads_and_runs_or_raises_model_load_error(tmp_path_factory, data):
    """A mutated max_batch_size, dims, reshape or optional flag must be refused in one line when read or at the
    test run on zeros, never by another exception from the shapes it leads to."""
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = data.draw(st.sampled_from([publish_unbatched, publish_optional]), label="model")(repo)
    model_dir = version_dir.parent
    config_path = model_dir / "config.pbtxt"
    config_path.write_bytes(data.draw(mutations(config_path.read_bytes()), label="config.pbtxt"))
    try:
        served = read_version(version_dir, read_config(model_dir))
        OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu")).smoke_test()
    except ModelLoadError as error:
        assert "\n" not in str(error)


def identity_of_rank_three(path, shape: tuple = ("a", "b", "c")) -> None:
    """y = x for FP32 tensors of rank 3, by default of any sizes, so that any dims and reshape the config gives
    can be tried on it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_config_may_fix_a_dimension_the_onnx_file_leaves_variable_but_not_free_a_fixed_one(tmp_path):
    """Triton's rule: dims [2, 3] serve a file exported with variable sizes; dims [-1, 3] against a file of fixed
    [2, 3] would pass requests that ONNX Runtime then fails, so it is refused."""
    (tmp_path / "identity" / "1").mkdir(parents=True)
    identity_of_rank_three(tmp_path / "identity" / "1" / "model.onnx")
    config = tmp_path / "identity" / "config.pbtxt"
    config.write_text(
        'max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]\n'
    )
    served = read_version(tmp_path / "identity" / "1", read_config(tmp_path / "identity"))
    OnnxModel(tmp_path / "identity" / "1" / "model.onnx", served.signature, RuntimeOptions(device="cpu")).smoke_test()
    identity_of_rank_three(tmp_path / "fixed.onnx", shape=("batch", 2, 3))
    freed = ModelSignature((TensorSpec("x", "FP32", (-1, -1, 3)),), (TensorSpec("y", "FP32", (-1, 2, 3)),))
    freed_message = r"ONNX input 'x' has shape \[-1, 2, 3\] but the signature says \[-1, -1, 3\]"
    with pytest.raises(ModelLoadError, match=freed_message):
        OnnxModel(tmp_path / "fixed.onnx", freed, RuntimeOptions(device="cpu"))


@st.composite
def regrouped(draw, shape: list[int]) -> list[int]:
    """``shape`` with a few of Triton's valid regroupings applied (two fixed neighbours merged, a 4 or 6 split, a
    1 added), or now and then any shape at all (which the config check must refuse or accept on its own)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(st.sampled_from([-1, 1, 2, 3, 4, 6]), max_size=4))
    shape = list(shape)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, max(0, len(shape) - 1)))
        move = draw(st.sampled_from(["merge", "split", "one"]))
        if move == "merge" and at + 1 < len(shape) and -1 not in shape[at : at + 2]:
            shape[at : at + 2] = [shape[at] * shape[at + 1]]
        elif move == "split" and shape and shape[at] in (4, 6):
            shape[at : at + 1] = [2, shape[at] // 2]
        elif move == "one":
            shape.insert(at, 1)
    return shape


@fuzz_settings(100)
@given(data=st.data())
def test_any_dims_and_reshape_either_refuse_the_config_or_carry_a_request_through_unchanged(tmp_path_factory, data):
    """Whatever max_batch_size, dims and reshape a config gives: refused in one line when it is loaded, or a
    request of its declared shape runs and comes back with the same elements, in the output's declared shape where
    the config reshapes it (or, where those dims cannot hold what the model returned, INTERNAL in one line)."""
    repo = tmp_path_factory.mktemp("fuzz")
    (repo / "identity" / "1").mkdir(parents=True)
    identity_of_rank_three(repo / "identity" / "1" / "model.onnx")
    max_batch_size = data.draw(st.sampled_from([0, 4]), label="max_batch_size")
    sizes = st.lists(
        st.sampled_from([-1, 1, 2, 3, 4, 6]), min_size=3 - bool(max_batch_size), max_size=3 - bool(max_batch_size)
    )
    model_side = data.draw(sizes, label="the ONNX tensor's shape without the batch")
    tensors = []
    for kind, name in (("input", "x"), ("output", "y")):
        file_shape = model_side if data.draw(st.integers(0, 3), label=f"{kind} as the file") else data.draw(sizes)
        if data.draw(st.booleans(), label=f"{kind} reshaped"):
            dims = data.draw(regrouped(file_shape), label=f"{kind} dims")
            text = f"dims: {dims} reshape {{ shape: {file_shape} }}"
        else:
            text = f"dims: {file_shape}"
        tensors.append(f'{kind} [ {{ name: "{name}" data_type: TYPE_FP32 {text} }} ]')
    (repo / "identity" / "config.pbtxt").write_text(f"max_batch_size: {max_batch_size}\n" + "\n".join(tensors))
    try:
        served = read_version(repo / "identity" / "1", read_config(repo / "identity"))
        model = OnnxModel(repo / "identity" / "1" / "model.onnx", served.signature, RuntimeOptions(device="cpu"))
        model.smoke_test()
    except ModelLoadError as error:
        assert "\n" not in str(error)
        event("refused when loaded")
        return
    (x,), (y,) = served.signature.inputs, served.signature.outputs
    batched = served.signature.batched
    shape = tuple(data.draw(st.integers(1, 3), label="size") if d == -1 else d for d in x.shape)
    values = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    x.check_request("FP32", shape, max_batch_size)
    rows = model.run({"x": x.rows_for_model(values, batched)})["y"]
    try:
        answer = y.rows_for_client(rows, batched)
    except ServingError as error:
        assert error.status is Status.INTERNAL and "\n" not in error.message
        event("output does not fit its dims")
        return
    event("ran" + (" with a reshape" if x.model_shape or y.model_shape else ""))
    assert np.array_equal(answer.ravel(), values.ravel())
    if y.model_shape is not None:  # reshaped to the config's dims (without a reshape it is what the model gave)
        assert len(answer.shape) == len(y.shape)
        assert all(d in (-1, got) for d, got in zip(y.shape, answer.shape, strict=True))


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or the valid file with a slice replaced, deleted or duplicated, or a token swapped."""
    tokens = [b"-1", b"0", b"99999999999999999999", b'"x"', b"null", b"[]", b"{}", b"TYPE_STRING", b"\xff", b"true"]
    # config.pbtxt fields that refuse a model or change how it is read, spliced in anywhere
    tokens += [b" allow_ragged_batch: true", b" is_shape_tensor: true", b" optional: true", b" sequence_batching {}"]
    tokens += [b" batch_output [ {} ]", b" model_transaction_policy { decoupled: true }", b" timeout_action: 7"]
    tokens += [b" priority_levels: 2", b" default_priority_level: 3", b" priority_queue_policy { key: 1 value: {} }"]

    @st.composite
    def edited(draw) -> bytes:
        start = draw(st.integers(0, len(valid)))
        end = draw(st.integers(start, min(len(valid), start + 40)))
        middle = draw(st.sampled_from([b"", valid[start:end] * 2, *tokens]) | st.binary(max_size=8))
        return valid[:start] + middle + valid[end:]

    return st.binary(max_size=200) | edited()


def test_a_config_without_tensors_and_with_the_backend_spelling_takes_them_from_the_onnx_file(tmp_path):
    model_dir, version_dir = triton_repository(tmp_path, labels=False)
    (model_dir / "config.pbtxt").write_text('backend: "onnxruntime"\nmax_batch_size: 8\n')
    config = read_config(model_dir)
    served = read_version(version_dir, config)
    assert served.signature.inputs == (TensorSpec("image", "UINT8", (-1, 8, 8)),)
    assert served.signature.outputs == (TensorSpec("probabilities", "FP32", (-1, 10)),)
    (model_dir / "config.pbtxt").write_text('backend: "pytorch"\nmax_batch_size: 8\n')
    with pytest.raises(ModelLoadError, match="platform/backend 'pytorch' is not supported"):
        read_config(model_dir)


def test_an_optional_input_may_be_left_out_and_the_model_uses_its_default(tmp_path):
    version_dir = publish_optional(tmp_path)
    served = read_version(version_dir, read_config(tmp_path / "biased"))
    assert [(spec.name, spec.optional) for spec in served.signature.inputs] == [("x", False), ("bias", True)]
    model = OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu"))
    model.smoke_test()  # on zeros, the optional input left at its default
    x, bias = np.array([[1, 2, 3]], np.float32), np.array([[10, 20, 30]], np.float32)
    assert model.run({"x": x})["y"].tolist() == [[2, 3, 4]]
    assert model.run({"x": x, "bias": bias})["y"].tolist() == [[11, 22, 33]]


def test_optional_inputs_follow_triton_and_the_file(tmp_path, caplog):
    version_dir = publish_optional(tmp_path)
    config_path = tmp_path / "biased" / "config.pbtxt"
    text = config_path.read_text()
    config_path.write_text(text.replace("max_batch_size: 0", "max_batch_size: 4"))
    with pytest.raises(ModelLoadError, match="input 'bias' is optional, which .* only in a model that does not batch"):
        read_config(tmp_path / "biased")
    # An input the file has no default for is still needed: the config loads, and requests must send it.
    config_path.write_text(text.replace("dims: [ 3 ] }", "dims: [ 3 ] optional: true }", 1))
    served = read_version(version_dir, read_config(tmp_path / "biased"))
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        model = OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu"), declared_in="config.pbtxt")
    assert [spec.optional for spec in model.signature.inputs] == [False, True]
    assert "config.pbtxt marks input(s) x optional, but the file has no default" in caplog.text
    # The config names an input that is neither an input of the file nor an initializer it lets a request override.
    config_path.write_text(text.replace('name: "bias"', 'name: "scale"'))
    served = read_version(version_dir, read_config(tmp_path / "biased"))
    with pytest.raises(
        ModelLoadError,
        match=r"ONNX inputs \['x'\] \(and initializers a request may override: \['bias'\]\) differ from "
        r"config.pbtxt's \['x', 'scale'\]",
    ):
        OnnxModel(served.onnx_path, served.signature, RuntimeOptions(device="cpu"), declared_in="config.pbtxt")
