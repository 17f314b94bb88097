"""Triton's model warmup: config.pbtxt's samples built from zeros, random bytes or a data file in the model's
warmup folder and checked against the signature; run on every session before a version serves; a sample that
cannot be built or run refuses only its version, in one line, and a fixed data file is tried again; and any
warmup block or data file, fuzzed, loads or is refused in one line."""

import logging

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from serving.errors import ModelLoadError
from serving.model_files import read_config, read_version
from serving.repository import ModelRepository
from serving.runtime import OnnxModel, RuntimeOptions
from serving.warmup import warm_up, warmup_samples
from tests.conftest import fuzz_settings
from tests.serving.conftest import append_to_config, images, publish_labeler, publish_unbatched, publish_version
from tests.serving.test_model_files import identity_of_rank_three

CPU = RuntimeOptions(device="cpu", intra_op_threads=1)


def samples_of(version_dir):
    model_dir = version_dir.parent
    config = read_config(model_dir)
    return warmup_samples(config, read_version(version_dir, config).signature, model_dir)


def test_samples_are_built_from_zeros_random_bytes_and_data_files_in_tritons_shapes(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    (tmp_path / "digits" / "warmup").mkdir()
    pixels = images(1, seed=3)
    (tmp_path / "digits" / "warmup" / "seven").write_bytes(pixels.tobytes() + b"ignored: the shape needs 64 bytes")
    append_to_config(
        tmp_path / "digits",
        'model_warmup [ { name: "zeros" batch_size: 4 count: 3'
        ' inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] zero_data: true } } },\n'
        '  { name: "noise" batch_size: 2 inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ]'
        " random_data: true } } },\n"
        '  { name: "file" batch_size: 3 inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ]'
        ' input_data_file: "seven" } } },\n'
        '  { name: "skipped" batch_size: 0 } ]\n',
    )
    zeros, noise, from_file = samples_of(version_dir)
    assert (zeros.name, zeros.calls, noise.calls, from_file.calls) == ("zeros", 3, 1, 1)
    assert zeros.inputs["image"].shape == (4, 8, 8) and not zeros.inputs["image"].any()
    assert noise.inputs["image"].shape == (2, 8, 8) and noise.inputs["image"].dtype == np.uint8
    np.testing.assert_array_equal(from_file.inputs["image"], np.concatenate([pixels] * 3))


def test_a_model_that_does_not_batch_runs_a_sample_once_per_request_and_strings_warm_up_empty(tmp_path):
    unbatched = publish_unbatched(tmp_path)
    append_to_config(
        unbatched.parent,
        'model_warmup { name: "w" batch_size: 2 count: 2 inputs { key: "data_0" value: { data_type: TYPE_FP32'
        " dims: [ 3, 4, 4 ] random_data: true } } }\n",
    )
    [sample] = samples_of(unbatched)
    assert sample.calls == 4 and sample.inputs["data_0"].shape == (1, 1, 3, 4, 4)  # a row of the file's shape
    labeler = publish_labeler(tmp_path)
    append_to_config(
        labeler.parent,
        'model_warmup { name: "text" batch_size: 2 inputs [ { key: "word" value: { data_type: TYPE_STRING dims: [ 1 ]'
        ' random_data: true } }, { key: "scores" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } ] }\n',
    )
    [text] = samples_of(labeler)
    assert text.inputs["word"].tolist() == [[""], [""]] and text.inputs["scores"].shape == (2, 3)
    model = OnnxModel(labeler / "model.onnx", read_version(labeler, read_config(labeler.parent)).signature, CPU)
    warm_up(list(model.runners), [text], labeler.parent / "config.pbtxt")


@pytest.mark.parametrize(
    ("sample", "files", "words"),
    [
        ('inputs { key: "pixels" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] zero_data: true } }', {},
         "unknown input 'pixels'; the model's inputs are: image"),
        ("", {}, "gives no data for input 'image'"),
        ('inputs { key: "image" value: { data_type: TYPE_FP32 dims: [ 8, 8 ] zero_data: true } }', {},
         "data_type FP32 does not match the model's UINT8"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, -1 ] zero_data: true } }', {},
         "shape [1, 8, -1] does not match the model's [-1, 8, 8]"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8 ] zero_data: true } }', {},
         "shape [1, 8] does not match the model's [-1, 8, 8]"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] } }', {},
         "sets none of zero_data, random_data or input_data_file"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] input_data_file: "../config.pbtxt" } }',
         {}, "must be a file name in"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] input_data_file: "gone" } }', {},
         "cannot read"),
        ('inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ] input_data_file: "short" } }',
         {"short": b"\x00" * 63}, "has 63 bytes; the shape needs 64"),
    ],
)  # fmt: skip
def test_a_sample_that_cannot_be_built_is_refused_in_one_line_naming_the_config_and_the_sample(tmp_path, sample, files,
                                                                                               words):  # fmt: skip
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    (tmp_path / "digits" / "warmup").mkdir()
    for name, data in files.items():
        (tmp_path / "digits" / "warmup" / name).write_bytes(data)
    append_to_config(tmp_path / "digits", f'model_warmup {{ name: "bad" batch_size: 1 {sample} }}\n')
    with pytest.raises(ModelLoadError) as refused:
        samples_of(version_dir)
    message = str(refused.value)
    assert words in message and "config.pbtxt: model_warmup 'bad'" in message and "\n" not in message


def test_a_sample_too_large_to_allocate_is_refused_before_it_is(tmp_path):
    (tmp_path / "identity" / "1").mkdir(parents=True)
    identity_of_rank_three(tmp_path / "identity" / "1" / "model.onnx")
    (tmp_path / "identity" / "config.pbtxt").write_text(
        'max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
        'model_warmup { name: "huge" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32'
        " dims: [ 100000, 100000 ] zero_data: true } } }\n"
    )
    with pytest.raises(ModelLoadError, match=r"model_warmup 'huge': input 'x': dims \[100000, 100000\] take more than"):
        samples_of(tmp_path / "identity" / "1")


def test_a_batch_size_over_max_batch_size_is_refused(tmp_path):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1, max_batch_size=8)
    append_to_config(
        tmp_path / "digits",
        'model_warmup { batch_size: 9 inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 8, 8 ]'
        " zero_data: true } } }\n",
    )
    with pytest.raises(ModelLoadError, match="model_warmup 0: batch_size 9 exceeds the model's max_batch_size 8"):
        samples_of(version_dir)


def test_every_session_runs_every_sample_its_count_and_a_run_that_fails_refuses_the_version(tmp_path):
    calls = []
    runners = [lambda inputs, n=n: calls.append((n, inputs["image"].shape)) for n in range(3)]
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    append_to_config(
        tmp_path / "digits",
        'model_warmup { name: "twice" batch_size: 5 count: 2 inputs { key: "image" value: { data_type: TYPE_UINT8'
        " dims: [ 8, 8 ] zero_data: true } } }\n",
    )
    samples = samples_of(version_dir)
    warm_up(runners, samples, tmp_path / "digits" / "config.pbtxt")
    assert calls == [(0, (5, 8, 8)), (0, (5, 8, 8)), (1, (5, 8, 8)), (1, (5, 8, 8)), (2, (5, 8, 8)), (2, (5, 8, 8))]

    def broken(inputs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory\nstack")

    with pytest.raises(ModelLoadError, match=r"config.pbtxt: model_warmup 'twice' failed to run: \[ONNXRuntimeError\]"):
        warm_up([broken], samples, tmp_path / "digits" / "config.pbtxt")


def test_a_version_warms_up_before_it_serves_and_a_bad_data_file_refuses_it_until_the_file_is_fixed(tmp_path, caplog):
    version_dir = publish_version(tmp_path, "digits", 1, seed=1)
    warmup = tmp_path / "digits" / "warmup"
    warmup.mkdir()
    (warmup / "pixels").write_bytes(b"\x01" * 10)
    append_to_config(
        tmp_path / "digits",
        'model_warmup { name: "real" batch_size: 16 inputs { key: "image" value: { data_type: TYPE_UINT8'
        ' dims: [ 8, 8 ] input_data_file: "pixels" } } }\n',
    )
    repository = ModelRepository([tmp_path], CPU)
    with caplog.at_level(logging.INFO, logger="serving"):
        repository.load_all()
        assert not repository.loaded()
        [entry] = [e for e in repository.index() if e.version == "1"]
        assert "model_warmup 'real'" in entry.reason and "has 10 bytes; the shape needs 64" in entry.reason
        (warmup / "pixels").write_bytes(images(1, seed=5).tobytes())
        repository.load_all()
    [served] = repository.loaded()
    assert served.version == 1
    assert "model 'digits' version 1 warmed up: 'real' x1 on 2 session(s)" in caplog.text  # the two instances
    expected = OnnxModel(version_dir / "model.onnx", served.manifest.signature, CPU).run({"image": images(2, seed=6)})
    np.testing.assert_array_equal(served.model.run({"image": images(2, seed=6)})["probabilities"],
                                  expected["probabilities"])  # fmt: skip


@st.composite
def warmup_blocks(draw, inputs: dict[str, tuple[str, list[int]]]) -> str:
    """A model_warmup block for a model with ``inputs`` (name -> config data type and dims): mostly its own names,
    types and dims with data of every kind, so that the data files are read, and now and then anything else."""
    entries = []
    for index in range(draw(st.integers(1, 3))):
        values = []
        for name, (data_type, dims) in inputs.items():
            if draw(st.integers(0, 9)) == 0:
                continue  # an input left out
            if draw(st.integers(0, 4)) == 0:
                name = draw(st.sampled_from(["pixels", "", name.upper()]))
            if draw(st.integers(0, 4)) == 0:
                data_type = draw(st.sampled_from(["TYPE_UINT8", "TYPE_FP32", "TYPE_STRING", "TYPE_BOOL", "TYPE_INT64"]))
            if draw(st.integers(0, 4)) == 0:
                dims = draw(st.lists(st.sampled_from([8, 3, 1, -1, 0, 64, 2**40]), max_size=3))
            data = draw(st.sampled_from(["zero_data: true", "random_data: true", 'input_data_file: "data"',
                                         'input_data_file: "data"', 'input_data_file: "../data"', ""]))  # fmt: skip
            shape = ", ".join(map(str, dims))
            values.append(f'{{ key: "{name}" value: {{ data_type: {data_type} dims: [ {shape} ] {data} }} }}')
        batch_size = draw(st.sampled_from([1, 1, 2, 8, 0, 2000, 2**31]))
        count = draw(st.sampled_from([0, 1, 3]))
        entries.append(f'{{ name: "w{index}" batch_size: {batch_size} count: {count} inputs [ {", ".join(values)} ] }}')
    return "model_warmup [ " + ", ".join(entries) + " ]\n"


@fuzz_settings(60)
@given(data=st.data())
def test_any_warmup_block_and_data_file_load_and_run_or_refuse_the_version_in_one_line(tmp_path_factory, data):
    """Of the digits model (UINT8 images) and the labeler (strings and scores, whose data file may hold strings in
    the protocol's length-prefixed form)."""
    repo = tmp_path_factory.mktemp("fuzz")
    if data.draw(st.booleans(), label="strings"):
        version_dir = publish_labeler(repo)
        inputs = {"word": ("TYPE_STRING", [1]), "scores": ("TYPE_FP32", [3])}
        strings = st.lists(st.binary(max_size=6), max_size=3)
        framed = strings.map(lambda items: b"".join(len(i).to_bytes(4, "little") + i for i in items))
        file_data = framed | st.binary(max_size=40)
    else:
        version_dir = publish_version(repo, "digits", 1, seed=1)
        inputs = {"image": ("TYPE_UINT8", [8, 8])}
        file_data = st.binary(min_size=60, max_size=70) | st.binary(max_size=200)
    model_dir = version_dir.parent
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "data").write_bytes(data.draw(file_data, label="data file"))
    append_to_config(model_dir, data.draw(warmup_blocks(inputs), label="model_warmup"))
    try:
        config = read_config(model_dir)
        manifest = read_version(version_dir, config)
        model = OnnxModel(manifest.onnx_path, manifest.signature, CPU)
        warm_up(list(model.runners), warmup_samples(config, model.signature, model_dir), model_dir / "config.pbtxt")
        event("warmed up")
    except ModelLoadError as error:
        assert "\n" not in str(error)
        event(f"refused: {str(error).split(': ', 2)[-1][:40]}")
