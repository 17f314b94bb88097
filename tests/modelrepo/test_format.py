"""The output tree's format: what the builder writes is what the server parses, and a bad file is refused with
one line naming it, never another exception."""

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import modelrepo
from modelrepo import FormatError, Manifest, Tensor
from tests.conftest import fuzz_settings


def _manifest(**changes) -> Manifest:
    base = Manifest(
        name="digits",
        content_hash="ab" * 32,
        inputs=(Tensor("image", "UINT8", (-1, 8, 8)),),
        outputs=(Tensor("probabilities", "FP32", (-1, 10)),),
        class_names=tuple(str(i) for i in range(10)),
        metrics={"test": {"accuracy": 0.97}},
        extra={"model_summary": [{"name": "dense"}]},
    )
    return base.replace(**changes)


def test_manifest_round_trips_with_unknown_keys(tmp_path: Path) -> None:
    version_dir = tmp_path / "digits" / "3"
    version_dir.mkdir(parents=True)
    written = _manifest(version=3)
    modelrepo.write_manifest(version_dir, written)

    read = modelrepo.read_manifest(version_dir)

    assert read == written
    assert read.extra["model_summary"] == [{"name": "dense"}]
    assert json.loads((version_dir / "manifest.json").read_text())["format"] == 1
    assert stat.S_IMODE(os.stat(version_dir / "manifest.json").st_mode) == 0o644


def test_manifest_must_name_its_folder(tmp_path: Path) -> None:
    version_dir = tmp_path / "digits" / "4"
    version_dir.mkdir(parents=True)
    modelrepo.write_manifest(version_dir, _manifest(version=3))

    with pytest.raises(FormatError, match=r"manifest.json: version 3 does not match its folder '4'"):
        modelrepo.read_manifest(version_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": "image"}, r"'inputs' must be a non-empty list"),
        ({"seed": "7"}, r"'seed' must be an integer or null, found '7'"),
        ({"class_names": [1, 2]}, r"'class_names' must be a list of strings"),
        ({"format": 2}, r"format 2 is not supported"),
        ({"outputs": [{"name": "p", "datatype": "FLOAT", "shape": [-1, 3]}]}, r"outputs 'p' has datatype 'FLOAT'"),
        # found by bench/fuzz_data.py: a list is not hashable, and the set lookup raised TypeError
        ({"outputs": [{"name": "p", "datatype": [-1, 10], "shape": [-1, 3]}]}, r"outputs 'p' has datatype \[-1, 10\]"),
        ({"outputs": [{"name": "a\nb", "datatype": "FP32", "shape": None}]}, r"outputs 'a\\nb' shape must be"),
        ({"timings": {"train": "fast"}}, r"'timings' must be an object of integers or numbers"),
    ],
)
def test_wrong_types_are_one_line_errors(tmp_path: Path, change: dict, message: str) -> None:
    data = {**_manifest().to_json(), **change}
    (tmp_path / "manifest.json").write_text(json.dumps(data))

    with pytest.raises(FormatError, match=message) as raised:
        modelrepo.read_manifest(tmp_path)
    assert "\n" not in str(raised.value) and str(tmp_path / "manifest.json") in str(raised.value)


def test_onnx_file_cannot_leave_the_version_folder() -> None:
    with pytest.raises(FormatError, match="must be a file name inside the version folder"):
        _ = _manifest(files={"onnx": "../other/model.onnx"}).onnx_file


def test_config_written_is_the_config_parsed(tmp_path: Path) -> None:
    config = modelrepo.model_config(_manifest(), max_batch_size=64, max_queue_delay_us=100, max_queue_size=8)
    modelrepo.write_config(tmp_path, config)
    modelrepo.write_labels(tmp_path, _manifest().class_names)

    parsed = modelrepo.read_config(tmp_path / "config.pbtxt")

    assert parsed == config
    assert list(parsed.input[0].dims) == [8, 8] and list(parsed.output[0].dims) == [10]
    assert parsed.output[0].label_filename == "labels.txt"
    assert parsed.max_batch_size == 64 and parsed.dynamic_batching.default_queue_policy.max_queue_size == 8
    assert modelrepo.read_labels(tmp_path / "labels.txt") == _manifest().class_names


def test_a_config_read_again_is_a_copy_of_its_parse_and_any_other_text_is_parsed_anew(tmp_path: Path) -> None:
    """Parses are kept by the file's text (a server reads every config at every poll): a caller that changes what
    it got changes no later read, and a file rewritten with the same size and time reads as its new text."""
    path = tmp_path / "config.pbtxt"
    modelrepo.write_config(tmp_path, modelrepo.model_config(_manifest(), max_batch_size=64))
    first = modelrepo.read_config(path)
    first.max_batch_size = 1
    assert modelrepo.read_config(path).max_batch_size == 64
    times = os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns
    path.write_text(path.read_text().replace("max_batch_size: 64", "max_batch_size: 32"))
    os.utime(path, ns=times)
    assert modelrepo.read_config(path).max_batch_size == 32
    path.write_text("max_batch_size: many")
    with pytest.raises(FormatError, match="config.pbtxt: not a valid Triton model config"):
        modelrepo.read_config(path)


def test_config_parses_like_tritonclient(tmp_path: Path) -> None:
    """Triton's own stubs read the file the same way (the descriptor names are shared)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    modelrepo.write_config(tmp_path, modelrepo.model_config(_manifest(), max_batch_size=32))
    theirs = text_format.Parse((tmp_path / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert theirs.name == "digits" and theirs.input[0].data_type == model_config_pb2.TYPE_UINT8


def test_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_bytes(b"\xffname: 'x'")
    with pytest.raises(FormatError, match=r"config.pbtxt: not UTF-8 \(byte 0xff at offset 0\)"):
        modelrepo.read_config(tmp_path / "config.pbtxt")


def test_versions_are_decimal_folders_only(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "01", "0", "x", "9" * 19, ".versions"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a version")
    assert modelrepo.list_versions(tmp_path) == [1, 2, 10]
    assert modelrepo.list_versions(tmp_path / "missing") == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)


@fuzz_settings(150)
@given(key=st.sampled_from(sorted(_manifest().to_json())), value=_json)
def test_any_field_value_reads_or_refuses_in_one_line(tmp_path: Path, key: str, value: object) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**_manifest().to_json(), key: value}))
    try:
        manifest = modelrepo.read_manifest(tmp_path)
    except FormatError as error:
        assert "\n" not in str(error)
    else:
        assert Manifest.from_json(manifest.to_json(), "again") == manifest


@pytest.mark.parametrize(
    "text", ['output [ { name: "y" data_type: 99999999999999999999 } ]', "max_batch_size: 99999999999999999999"]
)
def test_a_number_out_of_range_in_a_config_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    # protobuf's text parser raises ValueError, not ParseError, for an enum's (found by bench/fuzz_data.py)
    (tmp_path / "config.pbtxt").write_text(f'name: "m"\n{text}\n')
    with pytest.raises(FormatError, match=r"config.pbtxt: not a valid Triton model config: .*out of range"):
        modelrepo.read_config(tmp_path / "config.pbtxt")


@fuzz_settings(150)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_config_bytes_read_or_refuse_in_one_line(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "config.pbtxt").write_bytes(raw)
    try:
        modelrepo.read_config(tmp_path / "config.pbtxt")
    except FormatError as error:
        assert "\n" not in str(error)
