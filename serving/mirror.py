"""Model repositories in object storage (``s3://``, ``gs://``, ``as://``, as Triton's --model-repository takes them),
served from a local mirror.

Triton copies a remote model's folder to a local one before it loads it. Here each remote repository is mirrored
into a private local folder, through fsspec (s3fs, gcsfs, adlfs), and the repository serves that folder as it serves any
other: hot reload, refusals and all. Every scan (start, poll, load request) lists the store once and brings the
model-level files (config.pbtxt, labels) of every model up to date, which is all a scan reads of a model it does not
load; before a model is read to be loaded, its own files are brought up to date, so a repository served in part
(explicit model control) is fetched in part. Only objects whose size or version tag (ETag, generation) changed are
fetched, several at a time (a repository is many small files, so a store's round trips, not its bandwidth, are what
a fetch waits for), each into a staging folder first, and moved into place only once all have arrived, so a version
is never seen half new. A scan that will load many models fetches them in one batch first. A listing or fetch that
fails changes nothing in the mirror: the scan treats the repository as one it cannot list, and a model it cannot
fetch goes on serving as it was.

An empty folder is mirrored as a folder, as Triton mirrors it: it is how an ensemble's empty version folder is kept
in a store, as an empty object whose key ends with a slash (a folder marker, as the S3 console makes them) or, in
Azure, as a folder blob.

Object keys come from outside: each is checked before anything is written, and one that would leave the mirror
(``..``, empty segments), that holds a control character, that no model folder holds, that lies deeper than a
model's files are read, or that a local folder cannot hold beside another key, is skipped with one log line.
"""

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from modelrepo import MODEL_NAME
from serving.errors import first_line

log = logging.getLogger(__name__)

# The URL schemes served through a mirror, as Triton names them: for each, the extra that installs its fsspec
# library (s3fs, gcsfs, adlfs), and Triton's variable naming the folder where its local copies are made (a temporary
# folder inside; by default the system's temporary folder).
STORES = {
    "s3": ("s3", "TRITON_AWS_MOUNT_DIRECTORY"),
    "gs": ("gcs", "TRITON_GCS_MOUNT_DIRECTORY"),
    "gcs": ("gcs", "TRITON_GCS_MOUNT_DIRECTORY"),
    "as": ("azure", "TRITON_AZURE_MOUNT_DIRECTORY"),
}
# Triton's form for an S3-compatible store of one's own (MinIO, Ceph...): s3://[http://|https://]host:port/bucket/path
# (HTTP unless https:// is named).
S3_WITH_ENDPOINT = re.compile(r"s3://(https?://)?([0-9A-Za-z.-]+):([0-9]+)/(.*)", re.IGNORECASE)
# Triton's Azure Storage URL: as://account/container[/path].
AZURE_URL = re.compile(r"as://([^/]+)/([^/?]+)(?:/([^?]*))?", re.IGNORECASE)
# model/file, model/version/file, model/version/folder/file (an ONNX model kept as a folder): the deepest a model's
# files are read.
MAX_KEY_PARTS = 4
# The staging folder inside the mirror; a scan passes over folders whose name starts with a dot.
STAGING = ".incoming"
# Objects fetched at once, each on a thread of its own (s3fs and gcsfs keep larger connection pools than this).
FETCH_THREADS = 8


class MirrorError(Exception):
    """A remote repository that cannot be mirrored at all (no storage library, a URL fsspec cannot open)."""


class FetchError(OSError):
    """An object of the store could not be fetched; the mirror is as it was."""


def is_remote(location: str) -> bool:
    """Whether a --model-repository value is an object storage URL rather than a local folder."""
    scheme, separator, _ = location.partition("://")
    return bool(separator) and scheme.lower() in STORES


def mount_variable(url: str) -> str:
    """Triton's environment variable that names the folder where the local copies of ``url``'s kind of store are
    made."""
    return STORES[_scheme(url)][1]


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


class RepositoryMirror:
    """One remote repository and the local folder that mirrors it."""

    def __init__(self, url: str, folder: Path) -> None:
        """Opens the store; nothing is listed or fetched before ``refresh()``.

        Raises:
            MirrorError: fsspec or the scheme's storage library is missing, or fsspec cannot open the URL.
        """
        try:
            self.fs, root = _open_store(url)
        except ImportError as error:  # fsspec, or the scheme's storage library
            scheme = _scheme(url)
            extra = f": pip install 'buildsys[{STORES[scheme][0]}]'" if scheme in STORES else ""
            raise MirrorError(f"{url}: {first_line(error)}{extra}") from None
        except ValueError as error:
            raise MirrorError(f"{url}: {first_line(error)}") from None
        self.url = url.rstrip("/")
        self.root = root.rstrip("/")
        # Azure keeps an empty folder (an ensemble's version folder) as a blob that only a listing with folders
        # shows. Elsewhere that listing would hide a file that shares its name with a folder (they are one key of
        # fsspec's answer), and a store's empty folders are markers that any listing shows.
        self._folders_listed = AZURE_URL.fullmatch(url) is not None
        self.folder = folder
        # Each key's (size, version tag): as the last listing had it, and as it was fetched (what the mirror holds).
        self._listed: dict[str, tuple] = {}
        self._fetched: dict[str, tuple] = {}
        self._skipped: set[str] = set()

    def __str__(self) -> str:
        return self.url

    def refresh(self) -> None:
        """Lists the store and brings the model-level files (config.pbtxt, labels) of every model in line with it,
        which is all a scan reads of a model it does not load; a model gone from the store goes from the mirror.

        Raises:
            OSError: one line, when the store cannot be listed or an object cannot be fetched (the mirror is then
                as it was).
        """
        try:
            self.fs.invalidate_cache()
            listing = self.fs.find(self.root, detail=True, withdirs=self._folders_listed)
        except Exception as error:  # a storage library's own exception types as well as OSError
            raise OSError(f"listing failed: {first_line(error)}") from None
        listed = self._objects(listing)
        self._update(listed, lambda key: key.count("/") == 1)  # when it fails, nothing has changed
        self._listed = listed
        models = {key.split("/", 1)[0] for key in listed}
        self.folder.mkdir(parents=True, exist_ok=True)
        for model in models:  # a model without config.pbtxt is seen by its folder (its config comes from its file)
            (self.folder / model).mkdir(parents=True, exist_ok=True)
        for entry in self.folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in models:
                shutil.rmtree(entry)
        self._fetched = {key: tag for key, tag in self._fetched.items() if key.split("/", 1)[0] in models}

    def fetch(self, model: str) -> None:
        """Brings every file of one model in line with the last listing: what a scan does before it reads a model
        it loads, so that a repository served in part (explicit model control) is fetched in part.

        Raises:
            FetchError: one line, when an object cannot be fetched (the model's folder is then as it was).
        """
        self._update(self._listed, lambda key: key.split("/", 1)[0] == model)

    def prefetch(self, models: Collection[str]) -> None:
        """``fetch`` for several models in one batch, so that their round trips to the store overlap: what a scan
        about to load them all (start, poll) does first. Best effort: when an object fails (or the local disk),
        nothing changes here, and the ``fetch`` of each model that follows says which of its objects failed."""
        with contextlib.suppress(OSError):  # FetchError among them
            self._update(self._listed, lambda key: key.split("/", 1)[0] in models)

    def _update(self, listed: dict[str, tuple], concerned: Callable[[str], bool]) -> None:
        """Fetches the ``listed`` keys that ``concerned`` picks and that changed since fetched, into a staging
        folder; once all have arrived, removes the files of the picked keys no longer listed, then moves the new
        ones in (a file may stand where a new key needs a folder, or the reverse)."""
        wanted = {key: tag for key, tag in listed.items() if concerned(key)}
        changed = sorted(key for key, tag in wanted.items() if self._fetched.get(key) != tag)
        gone = sorted(key for key in self._fetched if concerned(key) and key not in wanted)
        if not changed and not gone:
            return
        staging = self.folder / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            self._get_all([key for key in changed if not _is_marker(key)], wanted, staging)
            for key in gone:
                if _is_marker(key):  # the folder goes once nothing else keeps it
                    _remove_empty_folders(self.folder / key, self.folder)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        (self.folder / key).unlink()
                    _remove_empty_folders((self.folder / key).parent, self.folder)
                del self._fetched[key]
            for key in changed:
                if _is_marker(key):
                    (self.folder / key).mkdir(parents=True, exist_ok=True)
                else:
                    (self.folder / key).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / key, self.folder / key)
                self._fetched[key] = wanted[key]
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if changed:
            log.info("%s: fetched %d object(s) into %s", self.url, len(changed), self.folder)

    def _get_all(self, keys: list[str], tags: dict[str, tuple], staging: Path) -> None:
        """Fetches ``keys`` into ``staging``, ``FETCH_THREADS`` at a time, largest first (the longest fetch starts
        at once instead of last). On the first failure the fetches not yet started are dropped; once those under way
        are done (none writes after this returns), the failure of the first failing key in key order is raised."""
        if not keys:
            return
        for key in keys:
            (staging / key).parent.mkdir(parents=True, exist_ok=True)
        order = sorted(keys, key=lambda key: (-_size(tags[key]), key))
        with ThreadPoolExecutor(min(FETCH_THREADS, len(order)), thread_name_prefix="mirror") as pool:
            futures = {key: pool.submit(self.fs.get_file, f"{self.root}/{key}", str(staging / key)) for key in order}
            done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                for future in futures.values():
                    future.cancel()
        for key in sorted(keys):
            future = futures[key]
            # A storage library's own exception types as well as OSError.
            if not future.cancelled() and (error := future.exception()) is not None:
                raise FetchError(f"fetching {key} failed: {first_line(error)}") from None

    def _objects(self, listing: dict[str, dict]) -> dict[str, tuple]:
        """The keys (relative to the root) worth mirroring, with their size and version tag."""
        keys, directories = {}, set()
        for path, info in listing.items():
            key = path[len(self.root) + 1 :] if path.startswith(f"{self.root}/") else ""
            if info.get("type") == "directory":
                directories.add(key.rstrip("/"))
            else:
                keys[key] = (info.get("size"), _version_tag(info))
        holding = {key.rsplit("/", i)[0] for key in [*keys, *directories] for i in range(1, key.count("/") + 1)}
        for directory in directories - holding - {""}:  # an empty folder (Azure's folder blobs, as a marker makes)
            keys.setdefault(f"{directory}/", (0, None))
        kept = {}
        folders = {key.rsplit("/", i)[0] for key in keys for i in range(1, key.count("/") + 1)}
        for key, tag in keys.items():
            reason = _refused_key(key)
            if reason is None and key in folders:
                reason = "a folder of other objects has its name"
            if reason is None:
                kept[key] = tag
            elif reason and key not in self._skipped:
                self._skipped.add(key)
                log.warning("%s: object %r skipped: %s", self.url, key[:200], reason)
        return kept


def _open_store(url: str) -> tuple[object, str]:
    """The fsspec filesystem of a store and the path of the repository in it, from the URL as Triton reads it."""
    import fsspec

    if endpoint := S3_WITH_ENDPOINT.fullmatch(url):
        protocol, host, port, root = endpoint.groups()
        return fsspec.filesystem("s3", endpoint_url=f"{protocol or 'http://'}{host}:{port}"), root
    if url.lower().startswith("as://"):
        azure = AZURE_URL.fullmatch(url)
        if azure is None:
            raise ValueError("an Azure Storage repository is named as://account/container[/path]")
        account, container, path = azure.groups()
        return fsspec.filesystem("abfs", account_name=account, **_azure_credentials()), f"{container}/{path or ''}"
    return fsspec.core.url_to_fs(f"{_scheme(url)}://{url.partition('://')[2]}")


def _azure_credentials() -> dict[str, object]:
    """adlfs' credential arguments from Triton's variables: AZURE_STORAGE_AUTH_TYPE "managed_identity" (with
    AZURE_STORAGE_CLIENT_ID for a user-assigned identity) or "default" (DefaultAzureCredential's chain), else
    ("key", Triton's default) the shared key AZURE_STORAGE_KEY. Without any of them, adlfs' own: a connection
    string, a SAS token, then DefaultAzureCredential. An identity is passed explicitly because adlfs would read
    AZURE_STORAGE_CLIENT_ID alone as half of a service principal.

    Raises:
        ValueError: an AZURE_STORAGE_AUTH_TYPE that Triton does not take.
    """
    auth_type = os.environ.get("AZURE_STORAGE_AUTH_TYPE", "").strip().lower()
    if auth_type == "managed_identity":
        from azure.identity.aio import ManagedIdentityCredential

        return {"credential": ManagedIdentityCredential(client_id=os.environ.get("AZURE_STORAGE_CLIENT_ID") or None)}
    if auth_type == "default":
        from azure.identity.aio import DefaultAzureCredential

        return {"credential": DefaultAzureCredential()}
    if auth_type not in ("", "key"):
        raise ValueError(f"AZURE_STORAGE_AUTH_TYPE {auth_type!r}: expected key, managed_identity or default")
    return {"account_key": os.environ.get("AZURE_STORAGE_KEY") or None}


def _version_tag(info: dict) -> object:
    """What changes when an object is rewritten, whichever store listed it."""
    for field in ("ETag", "etag", "generation", "md5Hash", "LastModified", "mtime", "updated", "created"):
        if info.get(field) is not None:
            return str(info[field])
    return None


def _size(tag: tuple) -> int:
    """An object's size as listed (0 when the store gave none usable)."""
    size = tag[0]
    return size if isinstance(size, int) else 0


def _is_marker(key: str) -> bool:
    """Whether a key is a folder marker: an empty object named with a trailing slash, as the S3 console's "Create
    folder" makes them. It is how an ensemble's empty version folder is kept in a store, and Triton mirrors it as
    a folder, so the mirror makes it one."""
    return key.endswith("/")


def _refused_key(key: str) -> str | None:
    """Why an object key is not mirrored ("" for a key that is simply not a model's file), or None."""
    marker = _is_marker(key)
    if marker:  # checked as the folder it makes, which holds files one level deeper
        key = key[:-1]
    parts = key.split("/")
    if not key and marker:
        return ""  # the repository's own marker
    if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        return "not a path inside the repository"
    if any(ord(character) < 32 or ord(character) == 127 for character in key):
        return "a control character in its name (it would break the log lines that name the file)"
    if len(parts) == 1:
        return ""  # a file beside the model folders (Triton reads none), or a model folder's marker
    if not MODEL_NAME.match(parts[0]):
        return f"folder name does not match {MODEL_NAME.pattern}"
    if len(parts) + marker > MAX_KEY_PARTS:
        return f"deeper than a model's files are read ({MAX_KEY_PARTS} levels)"
    if any(len(part.encode()) > 255 for part in parts):
        return "a name longer than a local file name can be"
    return None


def _remove_empty_folders(folder: Path, top: Path) -> None:
    while folder != top and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
