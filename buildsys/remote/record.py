"""The action-result record: what one cache key stored in a remote cache, and the only parser of such records.

A published version folder travels as content-addressed blobs (sha256 of each file) plus one record per cache key
under `ac/<key>`, where Bazel keeps an action's result. The record is what Bazel stores there too: a Remote
Execution API v2 `ActionResult` protobuf with one `OutputFile` (path, sha256 digest and size, executable bit) per
file. So a cache that checks what is stored under `ac/` takes it as it takes Bazel's own: bazel-remote (unless
started with `--disable_http_ac_validation`) parses every ActionResult it is sent, and answers a lookup as a miss
once a blob its record names has been evicted. Only the fields read here are declared, with their numbers in
remote_execution.proto; whatever else a cache adds (bazel-remote's `execution_metadata.worker`) is kept as an
unknown field and ignored. The target's name and cache key are not repeated in the record: the manifest among its
files carries both, and a fetch checks them there.

Everything in a record comes from outside, so `parse_record` checks every field before anything touches the disk:
paths are relative POSIX paths without `.`, `..` or empty components, backslashes or control characters, no path
is listed twice, and no file is also another's folder — a record can only name files inside the staging folder it
is unpacked into. Nothing here imports TensorFlow or does any I/O beyond reading a version folder to describe it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from buildsys.errors import BuildsysError, one_line
from buildsys.store import file_sha256
from modelrepo import MANIFEST_FILE

MAX_RECORD_BYTES = 4 << 20  # a record lists file names and digests; anything bigger is not one
MAX_FILES = 10_000
MAX_FILE_BYTES = 64 << 30  # for one file and for a whole entry: a disk is not filled on a record's word
MAX_PATH_CHARS = 1024
FILE_MODES = (0o644, 0o755)  # published files are world-readable; the execute bit is kept, never set by a record
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_REAPI_PACKAGE = "build.bazel.remote.execution.v2"


def _reapi_messages() -> tuple[type[Message], type[Message], type[Message]]:
    """`ActionResult`, `OutputFile` and `Digest` of the Remote Execution API v2, declared with only the fields a
    record uses and their numbers in remote_execution.proto, in a pool of their own (so they clash with no other
    copy of that API a process may load)."""
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    declared = {
        "Digest": [("hash", 1, field.TYPE_STRING, optional, None), ("size_bytes", 2, field.TYPE_INT64, optional, None)],
        "OutputFile": [
            ("path", 1, field.TYPE_STRING, optional, None),
            ("digest", 2, field.TYPE_MESSAGE, optional, "Digest"),
            ("is_executable", 4, field.TYPE_BOOL, optional, None),
        ],
        "ActionResult": [("output_files", 2, field.TYPE_MESSAGE, repeated, "OutputFile")],
    }
    proto = descriptor_pb2.FileDescriptorProto(
        name="buildsys/remote/action_result.proto", package=_REAPI_PACKAGE, syntax="proto3"
    )
    for message_name, fields in declared.items():
        message = proto.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            message.field.add(name=name, number=number, type=kind, label=label)
            if type_name is not None:
                message.field[-1].type_name = f".{_REAPI_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    action_result, output_file, digest = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_REAPI_PACKAGE}.{name}"))
        for name in ("ActionResult", "OutputFile", "Digest")
    )
    return action_result, output_file, digest


ActionResult, OutputFile, Digest = _reapi_messages()


class RecordError(BuildsysError, ValueError):
    """A remote record that is not valid; the message is one line saying which field and why."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a version folder: its content digest, size in bytes and permission bits."""

    digest: str
    size: int
    mode: int


@dataclass(frozen=True)
class ActionRecord:
    """The record of one cache key: the version folder's files by relative path."""

    files: dict[str, FileEntry]

    def to_bytes(self) -> bytes:
        """The ActionResult, files in path order and serialised deterministically: one version, one record."""
        result = ActionResult()
        for path, entry in sorted(self.files.items()):
            digest = Digest(hash=entry.digest, size_bytes=entry.size)
            result.output_files.append(OutputFile(path=path, digest=digest, is_executable=entry.mode == 0o755))
        return result.SerializeToString(deterministic=True)

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())


def check_relative_path(path: Any, where: str = "record") -> str:
    """`path` if it is a safe relative POSIX path inside a folder; otherwise RecordError naming `where`.

    Refused: non-strings, empty or over-long paths, absolute paths, backslashes and control characters, and any
    empty, `.` or `..` component — so joining the result to a folder never leaves it.
    """
    if not isinstance(path, str) or not path:
        raise RecordError(f"{where}: a file path must be a non-empty string. Received: {path!r}")
    if len(path) > MAX_PATH_CHARS:
        raise RecordError(f"{where}: file path longer than {MAX_PATH_CHARS} characters: {path[:60]!r}...")
    if _FORBIDDEN_CHARS.search(path):
        raise RecordError(f"{where}: file path {path!r} holds a backslash or a control character")
    if path.startswith("/"):
        raise RecordError(f"{where}: file path {path!r} is absolute; paths in a record are relative")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RecordError(f"{where}: file path {path!r} has an empty, '.' or '..' component")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        raise RecordError(f"{where}: file path {path!r} has a component longer than 255 bytes")
    return path


def _entry(output_file: Any) -> tuple[str, FileEntry]:
    path = check_relative_path(output_file.path, "record.output_files")
    where = f"record output file {path!r}"
    if not output_file.HasField("digest"):
        raise RecordError(f"{where}: no digest")
    digest, size = output_file.digest.hash, output_file.digest.size_bytes
    if not _HEX64.match(digest):
        raise RecordError(f"{where}: expected a lowercase sha256 hex digest. Received: {digest!r}"[:200])
    if not 0 <= size <= MAX_FILE_BYTES:
        raise RecordError(f"{where}: size_bytes must be from 0 to {MAX_FILE_BYTES}. Received: {size}")
    return path, FileEntry(digest, size, 0o755 if output_file.is_executable else 0o644)


def parse_record(data: bytes) -> ActionRecord:
    """Parses and checks a record; every problem is a RecordError (one line).

    Beyond the types: the record must list `manifest.json`, no path twice, and no listed file may be a folder of
    another listed file.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(data)} bytes; a record is at most {MAX_RECORD_BYTES}")
    if data.startswith(b"{"):
        raise RecordError("record is JSON (written by an earlier buildsys), not an ActionResult; a build replaces it")
    try:
        result = ActionResult.FromString(data)
    except (DecodeError, RecursionError) as error:
        raise RecordError(f"record is not an ActionResult protobuf: {one_line(error)}"[:200]) from None
    if not 1 <= len(result.output_files) <= MAX_FILES:
        raise RecordError(f"record.output_files: expected 1 to {MAX_FILES} files. Received: {len(result.output_files)}")
    entries: dict[str, FileEntry] = {}
    for output_file in result.output_files:
        path, entry = _entry(output_file)
        if path in entries:
            raise RecordError(f"record.output_files: {path!r} is listed twice")
        entries[path] = entry
    folders = {str(parent) for path in entries for parent in PurePosixPath(path).parents if str(parent) != "."}
    clash = sorted(folders & set(entries))
    if clash:
        raise RecordError(f"record.output_files: {clash[0]!r} is listed both as a file and as a folder of other files")
    if sum(entry.size for entry in entries.values()) > MAX_FILE_BYTES:
        raise RecordError(f"record.output_files: more than {MAX_FILE_BYTES} bytes in all; not a version folder")
    if MANIFEST_FILE not in entries:
        raise RecordError(f"record.output_files: no {MANIFEST_FILE}; not a published version")
    return ActionRecord(entries)


def describe_folder(folder: Path) -> ActionRecord:
    """The record of a published version folder: every regular file under it, by relative path.

    Raises:
        RecordError: when the folder holds a symbolic link or anything but files and folders (a record describes
            plain files only, so what is fetched is exactly what was built), or no manifest.json.
    """
    entries: dict[str, FileEntry] = {}
    for directory, subdirectories, filenames in os.walk(folder):
        for child in [*subdirectories, *filenames]:
            path = Path(directory) / child
            info = path.lstat()
            relative = check_relative_path(path.relative_to(folder).as_posix(), str(folder))
            if stat.S_ISLNK(info.st_mode) or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                raise RecordError(f"{path}: not a plain file or folder; a version uploads plain files only")
            if stat.S_ISREG(info.st_mode):
                mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
                entries[relative] = FileEntry(file_sha256(path), info.st_size, mode)
    if MANIFEST_FILE not in entries:
        raise RecordError(f"{folder}: no {MANIFEST_FILE}; only published versions are uploaded")
    return ActionRecord(entries)
