"""The action-result record: what one cache key stored in a remote cache, and the only parser of such records.

A published version folder travels as content-addressed blobs (sha256 of each file) plus one record per cache key,
kept under `ac/<key>` the way Bazel keeps an ActionResult. The record is canonical JSON:

    {"format": "buildsys-remote/1", "key": "<sha256 hex>", "name": "digits", "manifest": "<sha256 of manifest.json>",
     "files": {"model.onnx": {"digest": "<sha256 hex>", "size": 1234, "mode": 420}, ...}}

Everything in a record comes from outside, so `parse_record` checks every field before anything touches the disk:
paths are relative POSIX paths without `.`, `..` or empty components, backslashes or control characters, and no
file is also another's folder — a record can only name files inside the staging folder it is unpacked into.
Nothing here imports TensorFlow or does any I/O beyond reading a version folder to describe it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from buildsys.errors import BuildsysError, one_line
from buildsys.store import file_sha256
from modelrepo import MANIFEST_FILE, MODEL_NAME

RECORD_FORMAT = "buildsys-remote/1"
MAX_RECORD_BYTES = 4 << 20  # a record lists file names and digests; anything bigger is not one
MAX_FILES = 10_000
MAX_FILE_BYTES = 64 << 30  # for one file and for a whole entry: a disk is not filled on a record's word
MAX_PATH_CHARS = 1024
FILE_MODES = (0o644, 0o755)  # published files are world-readable; the execute bit is kept, never set by a record
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class RecordError(BuildsysError, ValueError):
    """A remote record that is not valid; the message is one line saying which field and why."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a version folder: its content digest, size in bytes and permission bits."""

    digest: str
    size: int
    mode: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "mode": self.mode}


@dataclass(frozen=True)
class ActionRecord:
    """The record of one cache key: the version folder's files by relative path, and the manifest's digest."""

    key: str
    name: str
    manifest: str
    files: dict[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "key": self.key,
            "name": self.name,
            "manifest": self.manifest,
            "files": {path: entry.to_json() for path, entry in sorted(self.files.items())},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")

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


def _digest(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise RecordError(f"{where}: expected a lowercase sha256 hex digest. Received: {value!r}"[:200])
    return value


def _entry(path: str, value: Any) -> FileEntry:
    where = f"record files[{path!r}]"
    if not isinstance(value, dict) or set(value) != {"digest", "size", "mode"}:
        raise RecordError(f"{where}: expected an object with digest, size and mode. Received: {value!r}"[:200])
    size, mode = value["size"], value["mode"]
    if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
        raise RecordError(f"{where}.size: expected an integer from 0 to {MAX_FILE_BYTES}. Received: {size!r}")
    if type(mode) is not int or mode not in FILE_MODES:
        raise RecordError(f"{where}.mode: expected one of {', '.join(map(oct, FILE_MODES))}. Received: {mode!r}")
    return FileEntry(_digest(value["digest"], f"{where}.digest"), size, mode)


def parse_record(data: bytes, key: str) -> ActionRecord:
    """Parses and checks the record stored under `key`; every problem is a RecordError (one line).

    Beyond the types: the record must be stored under its own key, list `manifest.json` with the digest it names,
    and no listed file may be a folder of another listed file.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(data)} bytes; a record is at most {MAX_RECORD_BYTES}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RecordError(f"record is not UTF-8 JSON: {one_line(error)}"[:200]) from None
    if not isinstance(value, dict):
        raise RecordError(f"record: expected a JSON object. Received: {type(value).__name__}")
    expected = {"format", "key", "name", "manifest", "files"}
    if set(value) != expected:
        missing, extra = sorted(expected - set(value)), sorted(set(value) - expected)
        raise RecordError(f"record: missing fields {missing}, unknown fields {extra}"[:200])
    if value["format"] != RECORD_FORMAT:
        raise RecordError(f"record.format: expected {RECORD_FORMAT!r}. Received: {value['format']!r}"[:200])
    if _digest(value["key"], "record.key") != key:
        raise RecordError(f"record.key {value['key'][:16]}... is not the key it is stored under ({key[:16]}...)")
    name = value["name"]
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise RecordError(f"record.name: expected a model name. Received: {name!r}"[:200])
    manifest = _digest(value["manifest"], "record.manifest")
    files = value["files"]
    if not isinstance(files, dict) or not 1 <= len(files) <= MAX_FILES:
        raise RecordError(f"record.files: expected an object of 1 to {MAX_FILES} files")
    entries = {check_relative_path(path, "record.files"): _entry(path, entry) for path, entry in files.items()}
    folders = {str(parent) for path in entries for parent in PurePosixPath(path).parents if str(parent) != "."}
    clash = sorted(folders & set(entries))
    if clash:
        raise RecordError(f"record.files: {clash[0]!r} is listed both as a file and as a folder of other files")
    if sum(entry.size for entry in entries.values()) > MAX_FILE_BYTES:
        raise RecordError(f"record.files: more than {MAX_FILE_BYTES} bytes in all; not a version folder")
    if MANIFEST_FILE not in entries or entries[MANIFEST_FILE].digest != manifest:
        raise RecordError(f"record.files: {MANIFEST_FILE} is missing or its digest is not record.manifest")
    return ActionRecord(value["key"], name, manifest, entries)


def describe_folder(folder: Path, key: str, name: str) -> ActionRecord:
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
    return ActionRecord(key, name, entries[MANIFEST_FILE].digest, entries)
