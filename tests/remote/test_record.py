"""The record parser: valid records round-trip; anything else, however it is built, is one RecordError."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.remote.record import (
    ActionRecord,
    FileEntry,
    RecordError,
    check_relative_path,
    describe_folder,
    parse_record,
)

KEY = "0f" * 32
DIGEST = "a1" * 32


def _record(files: dict, **changes) -> bytes:
    value = {"format": "buildsys-remote/1", "key": KEY, "name": "digits", "manifest": DIGEST, "files": files}
    return json.dumps({**value, **changes}).encode()


def _entry(digest: str = DIGEST, size: int = 10, mode: int = 0o644) -> dict:
    return {"digest": digest, "size": size, "mode": mode}


def test_a_valid_record_round_trips() -> None:
    files = {
        "manifest.json": FileEntry(DIGEST, 10, 0o644),
        "model.savedmodel/variables/variables.index": FileEntry("b2" * 32, 0, 0o755),
    }
    record = ActionRecord(KEY, "digits", DIGEST, files)
    assert parse_record(record.to_bytes(), KEY) == record
    assert record.total_size == 10


@pytest.mark.parametrize(
    "path",
    ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "", "a\\..\\b", "a\x00b", "x/" + "y" * 256],
)
def test_paths_that_could_leave_the_folder_are_refused(path: str) -> None:
    with pytest.raises(RecordError):
        parse_record(_record({"manifest.json": _entry(), path: _entry()}), KEY)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_record({"manifest.json": _entry()}, key="1e" * 32), "not the key it is stored under"),
        (_record({"manifest.json": _entry("b2" * 32)}), "manifest.json is missing or its digest"),
        (_record({"model.onnx": _entry()}), "manifest.json is missing"),
        (_record({"manifest.json": _entry(), "a": _entry(), "a/b": _entry()}), "both as a file and as a folder"),
        (_record({"manifest.json": _entry(mode=0o4755)}), "mode: expected one of"),
        (_record({"manifest.json": _entry(size=-1)}), "size: expected an integer"),
        (_record({"manifest.json": _entry(size=True)}), "size: expected an integer"),
        (_record({"manifest.json": _entry()}, format="bazel/2"), "record.format"),
        (_record({"manifest.json": _entry()}, name="../x"), "record.name"),
        (_record({}), "record.files"),
        (_record({"manifest.json": _entry(), "a": _entry(size=40 << 30), "b": _entry(size=40 << 30)}), "in all"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_records_are_one_line(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        parse_record(data, KEY)
    assert "\n" not in str(caught.value)


def test_a_version_folder_is_described_and_symlinks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.savedmodel").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "model.savedmodel" / "saved_model.pb").write_bytes(b"pb")
    record = describe_folder(tmp_path, KEY, "digits")
    assert sorted(record.files) == ["manifest.json", "model.savedmodel/saved_model.pb"]
    assert parse_record(record.to_bytes(), KEY) == record
    os.symlink("/etc/passwd", tmp_path / "model.onnx")
    with pytest.raises(RecordError, match="not a plain file"):
        describe_folder(tmp_path, KEY, "digits")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_paths = st.text(alphabet=st.sampled_from(list("ab./\\\x00é ")), min_size=0, max_size=12)
_entries = st.fixed_dictionaries(
    {"digest": st.sampled_from([DIGEST, "A1" * 32, "zz", 5]), "size": st.integers(-2, 1 << 40) | _json,
     "mode": st.sampled_from([0o644, 0o755, 0o777, "420"])}
) | _json  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_paths, _entries, max_size=5), with_manifest=st.booleans())
def test_fuzzed_records_parse_to_safe_paths_or_fail_cleanly(files: dict, with_manifest: bool) -> None:
    if with_manifest:
        files = {**files, "manifest.json": _entry()}
    try:
        record = parse_record(_record(files), KEY)
    except RecordError as error:
        assert "\n" not in str(error)
        return
    root = Path("/staging/root")
    for path in record.files:
        joined = (root / PurePosixPath(path)).resolve()
        assert root in joined.parents and check_relative_path(path) == path


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200) | _json.map(lambda value: json.dumps(value).encode()))
def test_fuzzed_bytes_never_escape_as_another_error(data: bytes) -> None:
    with pytest.raises(RecordError):
        parse_record(data, KEY)
