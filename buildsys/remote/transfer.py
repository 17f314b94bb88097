"""Uploading a published version to a remote cache and fetching one back, verified, into a staging folder.

Upload sends every file of the version folder as a blob (skipping blobs the cache already has), then the record —
last, so a record never names a blob that was not stored. Fetch reads the record, streams each blob into the
staging folder while hashing it, and then checks what arrived: every digest and size, the manifest's name and
`content_hash` (or `training_digest`, for a lookup by the training digest) against the key looked up, and the ONNX
model against the recorded parity probe. Only then does
the build publish it, through the store's publish like any local build. Blobs move `MAX_CONNECTIONS` at a time,
largest first, as Bazel's remote cache client moves them concurrently: over a link with a round trip of tens of
milliseconds, one request after another would spend most of a hit waiting; the first failure stops the others.

What can go wrong remotely is never worse than a cache miss: a corrupt or partial entry and an unreachable cache
each print one warning line and let the build train locally — unless the user asked for `required`, where an
unreachable cache fails the build. Nothing fetched is ever executed: the record is a protobuf and the manifest JSON,
the probe is loaded with `allow_pickle=False`, and weights are read as data by whoever builds on them.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from buildsys.errors import BuildsysError
from buildsys.remote.backends import MAX_CONNECTIONS, Backend, RemoteUnavailableError, open_backend
from buildsys.remote.probe import ProbeError, check_probe
from buildsys.remote.record import MAX_RECORD_BYTES, ActionRecord, FileEntry, RecordError, describe_folder, parse_record
from modelrepo import FormatError, Manifest, read_manifest


class CorruptEntryError(BuildsysError):
    """A remote entry that does not verify: a blob with the wrong digest or size, a missing blob, a manifest of
    another key, or an ONNX model that does not reproduce its probe."""


class RemoteRequiredError(BuildsysError):
    """`--remote-cache-required` was given and the cache could not be used."""


class _Abandoned(Exception):
    """A transfer stopped because another one of the same entry failed (never the error that is reported)."""


Result = TypeVar("Result")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RemoteSettings:
    """How a build uses a remote cache; `headers` are secrets and are never printed or stored."""

    url: str
    upload: bool = True
    required: bool = False
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    ca_file: Path | None = None


@dataclass(frozen=True)
class Fetched:
    """A verified hit: the staging folder holds the version's files; `manifest` is what to publish it with."""

    manifest: Manifest
    seconds: float
    size: int


class RemoteCache:
    """One remote cache for the whole build (one HTTP session, reused by every target)."""

    def __init__(self, settings: RemoteSettings, warn: Callable[[str], None] = _warn) -> None:
        self.settings = settings
        self.backend: Backend = open_backend(settings.url, settings.headers, settings.ca_file)
        self.warn = warn
        self.damaged: set[str] = set()  # blobs found corrupt: uploaded again even though the cache has them

    @property
    def display(self) -> str:
        return self.backend.display

    def _unavailable(self, error: RemoteUnavailableError, doing: str, consequence: str) -> None:
        if self.settings.required:
            raise RemoteRequiredError(f"remote cache required but unavailable: {error}") from None
        self.warn(f"remote cache {doing}: {error}; {consequence}")

    def fetch(self, key: str, name: str, staging: Path) -> Fetched | None:
        """Downloads and verifies the entry for `key` into the empty folder `staging`; None on a miss.

        On a miss the staging folder is left empty. The returned manifest has `origin` set to this cache and key,
        and no `version` (publish assigns the local number).

        Raises:
            RemoteRequiredError: the cache is unavailable and `required` is set.
        """
        started = time.perf_counter()
        try:
            data = self.backend.get_record(key, MAX_RECORD_BYTES)
            if data is None:
                return None
            record = parse_record(data)
            self._download(record, staging)
            manifest = self._verify(record, staging, key, name)
        except RemoteUnavailableError as error:
            _empty(staging)
            self._unavailable(error, "lookup", "building locally")
            return None
        except (RecordError, CorruptEntryError, ProbeError) as error:
            _empty(staging)
            self.warn(f"remote cache {self.display}: entry {key[:16]} is unusable ({error}); building locally")
            return None
        seconds = round(time.perf_counter() - started, 3)
        origin = {
            "kind": "fetched",
            "cache": self.display,
            "key": key,
            "fetched": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "built_as": {"version": manifest.version, "origin": manifest.extra.get("origin")},
        }
        manifest = manifest.replace(version=None, extra={**manifest.extra, "origin": origin})
        return Fetched(manifest, seconds, record.total_size)

    def _download(self, record: ActionRecord, staging: Path) -> None:
        stop = threading.Event()
        _each_file(record.files, lambda path, entry: self._download_one(path, entry, staging, stop), stop)
        for directory, _, _ in os.walk(staging):
            os.chmod(directory, 0o755)

    def _download_one(self, path: str, entry: FileEntry, staging: Path, stop: threading.Event) -> None:
        destination = staging.joinpath(*path.split("/"))
        if staging.resolve() not in destination.resolve().parents:  # parse_record already guarantees this
            raise CorruptEntryError(f"{path!r} would leave the staging folder")
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(destination, flags, 0o600), "wb") as stream:
            try:
                for chunk in self.backend.get_blob(entry.digest, entry.size):
                    if stop.is_set():
                        raise _Abandoned
                    digest.update(chunk)
                    size += len(chunk)
                    if size > entry.size:
                        break
                    stream.write(chunk)
            except FileNotFoundError:
                raise CorruptEntryError(f"blob of {path} ({entry.digest[:16]}) is missing") from None
            stream.flush()
            os.fsync(stream.fileno())
        if size != entry.size or digest.hexdigest() != entry.digest:
            self.damaged.add(entry.digest)
            raise CorruptEntryError(f"{path}: the blob's size or sha256 is not the record's")
        os.chmod(destination, entry.mode)

    def _verify(self, record: ActionRecord, staging: Path, key: str, name: str) -> Manifest:
        try:
            manifest = read_manifest(staging)
        except FormatError as error:
            raise CorruptEntryError(str(error).replace(str(staging), "staging")) from None
        # An entry is looked up by its key, or by its training digest (the same training under another gate).
        if key not in (manifest.content_hash, manifest.extra.get("training_digest")) or manifest.name != name:
            raise CorruptEntryError("manifest.json is of another build (its name or content_hash differs)")
        for role, path in manifest.files.items():
            if path not in record.files and not any(listed.startswith(f"{path}/") for listed in record.files):
                raise CorruptEntryError(f"manifest.json names {role} file {path!r}, which the record lacks")
        check_probe(staging, manifest)
        return manifest

    def upload(self, version_dir: Path, key: str, also: Sequence[str] = ()) -> int | None:
        """Stores a published version under `key`, and its record under the keys in `also` too (its training
        digest, by which a build under another gate finds it); returns the bytes sent, or None when the upload
        failed.

        Raises:
            RemoteRequiredError: the cache is unavailable and `required` is set (the version stays published
                locally).
        """
        try:
            record = describe_folder(version_dir)
            by_blob: dict[str, tuple[str, FileEntry]] = {}
            for path, entry in sorted(record.files.items()):
                by_blob.setdefault(entry.digest, (path, entry))  # identical files are one blob, sent once
            files = dict(by_blob.values())
            sent = sum(_each_file(files, lambda path, entry: self._upload_one(version_dir, path, entry)))
            for each in dict.fromkeys((key, *also)):
                self.backend.put_record(each, record.to_bytes())
        except RemoteUnavailableError as error:
            self._unavailable(error, "upload", "the version is published locally only")
            return None
        except RecordError as error:
            self.warn(f"remote cache upload skipped: {error}")
            return None
        return sent

    def _upload_one(self, version_dir: Path, path: str, entry: FileEntry) -> int:
        """Sends one file's blob unless the cache has it (and it was not found corrupt); the bytes sent."""
        if entry.digest not in self.damaged and self.backend.has_blob(entry.digest):
            return 0
        self.backend.put_blob(entry.digest, version_dir.joinpath(*path.split("/")))
        return entry.size


def _each_file(
    files: dict[str, FileEntry],
    transfer: Callable[[str, FileEntry], Result],
    stop: threading.Event | None = None,
) -> list[Result]:
    """`transfer(path, entry)` for every file, `MAX_CONNECTIONS` at a time, largest first (the longest transfer
    starts at once instead of last); results in the order of `files`.

    On the first failure the transfers not yet started are cancelled and `stop` is set for those under way to
    notice; once every thread is done, the failure of the first failing file (in path order) is raised, so the
    caller never cleans up while a thread still writes.
    """
    order = sorted(files, key=lambda path: (-files[path].size, path))
    with ThreadPoolExecutor(min(MAX_CONNECTIONS, len(order)) or 1, thread_name_prefix="remote-cache") as pool:
        futures = {path: pool.submit(transfer, path, files[path]) for path in order}
        stopping = True
        try:
            done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
            stopping = any(future.exception() for future in done)
        finally:  # a transfer failed, or this thread was interrupted (Ctrl-C): the others stop soon
            if stopping:
                if stop is not None:
                    stop.set()
                for future in futures.values():
                    future.cancel()
    # Leaving the pool waited for every thread: each future is now finished or cancelled.
    finished = (futures[path] for path in sorted(files) if not futures[path].cancelled())
    failures = [error for future in finished if (error := future.exception()) and not isinstance(error, _Abandoned)]
    if failures:
        raise failures[0] from None
    return [futures[path].result() for path in files]


def _empty(folder: Path) -> None:
    """Removes what a failed fetch left in `folder`, keeping the folder itself for a local build."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
