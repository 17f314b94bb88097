"""The record parser: valid records round-trip as Bazel's ActionResult; anything else, however it is built, is one
RecordError."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildsys.remote.record import (
    ActionRecord,
    ActionResult,
    Digest,
    FileEntry,
    OutputFile,
    RecordError,
    check_relative_path,
    describe_folder,
    parse_record,
)
from tests.conftest import fuzz_settings

DIGEST = "a1" * 32


def _record(files: dict[str, tuple[str, int, bool]], extra: bytes = b"") -> bytes:
    """An ActionResult listing `files` (path: digest, size, executable), then `extra` raw bytes appended."""
    result = ActionResult()
    for path, (digest, size, executable) in files.items():
        output = OutputFile(path=path, digest=Digest(hash=digest, size_bytes=size), is_executable=executable)
        result.output_files.append(output)
    return result.SerializeToString() + extra


def _entry(digest: str = DIGEST, size: int = 10, executable: bool = False) -> tuple[str, int, bool]:
    return digest, size, executable


def test_a_valid_record_round_trips() -> None:
    files = {
        "manifest.json": FileEntry(DIGEST, 10, 0o644),
        "model.savedmodel/variables/variables.index": FileEntry("b2" * 32, 0, 0o755),
    }
    record = ActionRecord(files)
    assert parse_record(record.to_bytes()) == record
    assert record.total_size == 10


def test_the_record_is_the_wire_format_of_bazels_action_result() -> None:
    """Field numbers of remote_execution.proto: ActionResult.output_files = 2; OutputFile.path = 1, digest = 2,
    is_executable = 4; Digest.hash = 1, size_bytes = 2. Spelled out byte by byte, so that a change of a declared
    number cannot pass by round-tripping through the same wrong declaration."""
    data = ActionRecord({"manifest.json": FileEntry(DIGEST, 10, 0o755)}).to_bytes()
    digest = b"\x0a\x40" + DIGEST.encode() + b"\x10\x0a"  # Digest: hash (1, length 64), size_bytes (2, varint 10)
    output_file = b"\x0a\x0dmanifest.json" + b"\x12" + bytes([len(digest)]) + digest + b"\x20\x01"
    assert data == b"\x12" + bytes([len(output_file)]) + output_file


def test_what_a_cache_adds_is_ignored() -> None:
    """bazel-remote stores the uploader's address in execution_metadata.worker (ActionResult field 9) and exit_code
    (field 4) may be set: unknown fields to the record, which reads the same files."""
    worker = b"\x0a\x09127.0.0.1"
    data = _record({"manifest.json": _entry()}, extra=b"\x4a" + bytes([len(worker)]) + worker + b"\x20\x00")
    assert parse_record(data).files == {"manifest.json": FileEntry(DIGEST, 10, 0o644)}


@pytest.mark.parametrize(
    "path",
    ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "", "a\\..\\b", "a\x00b", "x/" + "y" * 256],
)
def test_paths_that_could_leave_the_folder_are_refused(path: str) -> None:
    with pytest.raises(RecordError):
        parse_record(_record({"manifest.json": _entry(), path: _entry()}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_record({"model.onnx": _entry()}), "no manifest.json"),
        (_record({"manifest.json": _entry(), "a": _entry(), "a/b": _entry()}), "both as a file and as a folder"),
        (_record({"manifest.json": _entry(), "a": _entry()}) + _record({"a": _entry()}), "'a' is listed twice"),
        (_record({"manifest.json": _entry(size=-1)}), "size_bytes must be from 0"),
        (_record({"manifest.json": _entry(digest="A1" * 32)}), "lowercase sha256"),
        (_record({"manifest.json": _entry(digest="")}), "lowercase sha256"),
        (ActionResult(output_files=[OutputFile(path="manifest.json")]).SerializeToString(), "no digest"),
        (_record({}), "expected 1 to"),
        (_record({"manifest.json": _entry(), "a": _entry(size=40 << 30), "b": _entry(size=40 << 30)}), "in all"),
        (b'{"format": "buildsys-remote/1", "files": {}}', "record is JSON"),
        (b"\x12\x05\x0a\x03\xff\xfe\x00", "not an ActionResult protobuf"),  # a path that is not UTF-8
        (b"\x12\xff\xff\xff\xff\x0f", "not an ActionResult protobuf"),  # a length past the end
        (b"\x00" * (5 << 20), "at most"),
    ],
)
def test_bad_records_are_one_line(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        parse_record(data)
    assert "\n" not in str(caught.value)


def test_a_version_folder_is_described_and_symlinks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.savedmodel").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "model.savedmodel" / "saved_model.pb").write_bytes(b"pb")
    record = describe_folder(tmp_path)
    assert sorted(record.files) == ["manifest.json", "model.savedmodel/saved_model.pb"]
    assert parse_record(record.to_bytes()) == record
    os.symlink("/etc/passwd", tmp_path / "model.onnx")
    with pytest.raises(RecordError, match="not a plain file"):
        describe_folder(tmp_path)


_paths = st.text(alphabet=st.sampled_from(list("ab./\\\x00é ")), min_size=0, max_size=12)
_entries = st.tuples(
    st.sampled_from([DIGEST, "A1" * 32, "zz", ""]), st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-2, 40),
    st.booleans(),
)  # fmt: skip


def _must_be_safe_or_refused(data: bytes) -> None:
    try:
        record = parse_record(data)
    except RecordError as error:
        assert "\n" not in str(error)
        return
    root = Path("/staging/root")
    assert record.files and "manifest.json" in record.files
    for path, entry in record.files.items():
        joined = (root / PurePosixPath(path)).resolve()
        assert root in joined.parents and check_relative_path(path) == path
        assert entry.mode in (0o644, 0o755) and entry.size >= 0


@fuzz_settings(100)
@given(files=st.dictionaries(_paths, _entries, max_size=5), with_manifest=st.booleans())
def test_fuzzed_records_parse_to_safe_paths_or_fail_cleanly(files: dict, with_manifest: bool) -> None:
    if with_manifest:
        files = {**files, "manifest.json": _entry()}
    _must_be_safe_or_refused(_record(files))


@fuzz_settings(200)
@given(data=st.data())
def test_mutated_records_are_safe_or_refused(data: st.DataObject) -> None:
    """A valid record with bytes flipped, cut, repeated or inserted: the parser's only answers are a checked
    record or a RecordError."""
    record = bytearray(_record({"manifest.json": _entry(), "model.onnx": _entry("b2" * 32, 5, True)}))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(record)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if action == "flip" and at < len(record):
            record[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del record[at:]
        elif action == "insert":
            record[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            record += record[at:]
    _must_be_safe_or_refused(bytes(record))


@fuzz_settings(200)
@given(data=st.binary(max_size=200))
def test_fuzzed_bytes_never_escape_as_another_error(data: bytes) -> None:
    _must_be_safe_or_refused(data)
