"""Where remote cache entries live: an HTTP server speaking Bazel's remote cache protocol, or object storage.

Both keep two namespaces, as Bazel's HTTP cache does: `ac/<key>` holds one action-result record per cache key and
`cas/<sha256>` holds blobs by content digest. HTTP uses `GET`/`PUT`/`HEAD` on `<url>/ac/<key>` and
`<url>/cas/<digest>` (nginx with WebDAV, bazel-remote, or any server Bazel's `--remote_cache=http://...` works
with); `s3://`, `gs://` and `file://` URLs go through fsspec (s3fs or gcsfs must be installed for the first two).

Backends move bytes and nothing else: they never interpret what they fetch (see `record` and `transfer`), and every
failure to reach the store is a `RemoteUnavailableError` whose message names the cache without its credentials —
headers and passwords in a URL are never part of any message.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from buildsys.errors import BuildsysError, describe_failure, one_line

CHUNK = 1 << 20
MAX_CONNECTIONS = 8  # blobs moved at once (Bazel's client is concurrent too); each thread holds one connection
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0


class RemoteUnavailableError(BuildsysError):
    """The remote cache could not be reached or refused a request (network, TLS, authentication, server error)."""


class RemoteConfigError(BuildsysError):
    """A remote cache setting that cannot work (an unknown URL scheme, a malformed header, a missing CA file)."""

    exit_code = 2


class Backend(Protocol):
    """A store of action records and content-addressed blobs."""

    display: str  # the URL without credentials, for messages and manifests

    def get_record(self, key: str, limit: int) -> bytes | None:
        """The record stored under `key`, or None when there is none; at most `limit` bytes are read."""

    def put_record(self, key: str, data: bytes) -> None: ...

    def has_blob(self, digest: str) -> bool: ...

    def get_blob(self, digest: str, size: int) -> Iterator[bytes]:
        """The blob's bytes in chunks; stops after `size + 1` bytes so an oversized blob is noticed, not stored."""

    def put_blob(self, digest: str, source: Path) -> None: ...


def display_url(url: str) -> str:
    """`url` without user name and password: what messages and manifests may show."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL urllib can split (an unclosed IPv6 bracket, a port that is no number)
        scheme, separator, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:  # whatever comes before the host may be a user name and password
            authority = "…@" + authority.rsplit("@", 1)[1]
        return f"{scheme}{separator}{authority}{slash}{path}".rstrip("/")
    if parts.username is None and parts.password is None:
        return url.rstrip("/")
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """`--remote-header` values: `NAME: VALUE`, or `@FILE` naming a file with one such header per line.

    A file keeps a token out of the process list and the shell history; blank lines and `#` comments are skipped.
    """
    headers: dict[str, str] = {}
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise RemoteConfigError(f"--remote-header {value}: cannot read {path}: {error.strerror}") from None
            except UnicodeDecodeError:
                raise RemoteConfigError(f"--remote-header {value}: {path} is not UTF-8 text") from None
            sources = [(f"{path}:{number}", line) for number, line in enumerate(lines, 1)]
        else:
            sources = [("--remote-header", value)]
        for where, line in sources:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, separator, content = line.strip().partition(":")
            if not separator or not _HEADER_NAME.match(name) or _CONTROL.search(content):
                raise RemoteConfigError(f"{where}: expected a header as 'NAME: VALUE' (the value is not shown)")
            headers[name] = content.strip()
    return headers


class HttpBackend:
    """Bazel's HTTP remote cache protocol over `requests`, with TLS verification on by default."""

    def __init__(self, url: str, headers: dict[str, str], ca_file: Path | None = None) -> None:
        import requests

        self.base = url.rstrip("/")
        self.display = display_url(url)
        # One session for every transfer thread: its connection pool (urllib3's) is thread-safe and keeps a
        # connection per thread alive from one target to the next; nothing else of it changes after this.
        self.session = requests.Session()
        self.session.headers.update(headers)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=MAX_CONNECTIONS)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if ca_file is not None and not ca_file.is_file():
            raise RemoteConfigError(f"--remote-ca {ca_file}: no such file")
        # Given per request: a session-level setting would lose to $REQUESTS_CA_BUNDLE in requests' merging.
        self.verify: bool | str = str(ca_file) if ca_file is not None else True
        self.timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)

    @contextmanager
    def _request(self, method: str, path: str, **kwargs: object) -> Iterator[object]:
        """One request; yields the response (None for 404), closes it after, and turns failures into one line."""
        import requests

        try:
            response = self.session.request(
                method, f"{self.base}/{path}", timeout=self.timeout, verify=self.verify, **kwargs
            )
        except requests.exceptions.SSLError:
            raise RemoteUnavailableError(
                f"{self.display}: TLS verification failed (for a private CA give --remote-ca FILE)"
            ) from None
        except requests.exceptions.Timeout:
            raise RemoteUnavailableError(f"{self.display}: timed out ({method} {path.split('/')[0]})") from None
        except requests.exceptions.RequestException as error:
            reason = "connection refused or host unreachable"
            if not isinstance(error, requests.exceptions.ConnectionError):
                reason = type(error).__name__
            raise RemoteUnavailableError(f"{self.display}: {reason}") from None
        try:
            if response.status_code == 404:
                yield None
                return
            if response.status_code in (401, 403):
                raise RemoteUnavailableError(
                    f"{self.display}: HTTP {response.status_code} on {method} {path.split('/')[0]}/ "
                    "(check the credentials: --remote-header or the URL's user)"
                )
            if not 200 <= response.status_code < 300:
                raise RemoteUnavailableError(
                    f"{self.display}: HTTP {response.status_code} on {method} {path.split('/')[0]}/"
                )
            yield response
        finally:
            response.close()

    def get_record(self, key: str, limit: int) -> bytes | None:
        with self._request("GET", f"ac/{key}", stream=True) as response:
            if response is None:
                return None
            data = b""
            for chunk in response.iter_content(CHUNK):
                data += chunk
                if len(data) > limit:
                    break
            return data

    def put_record(self, key: str, data: bytes) -> None:
        with self._request("PUT", f"ac/{key}", data=data):
            pass

    def has_blob(self, digest: str) -> bool:
        with self._request("HEAD", f"cas/{digest}") as response:
            return response is not None

    def get_blob(self, digest: str, size: int) -> Iterator[bytes]:
        with self._request("GET", f"cas/{digest}", stream=True) as response:
            if response is None:
                raise FileNotFoundError(f"cas/{digest}")
            received = 0
            for chunk in response.iter_content(CHUNK):
                received += len(chunk)
                yield chunk
                if received > size:
                    return

    def put_blob(self, digest: str, source: Path) -> None:
        with open(source, "rb") as stream:
            # requests sends an empty file chunked, without a Content-Length, and bazel-remote refuses a PUT
            # without one: an empty blob goes as empty bytes, which carry `Content-Length: 0`.
            body = stream if os.fstat(stream.fileno()).st_size else b""
            with self._request("PUT", f"cas/{digest}", data=body):
                pass


class FsspecBackend:
    """Object storage or a folder through fsspec: `<root>/ac/<key>` and `<root>/cas/<digest>` objects.

    A reader sees a whole object or none: an object store creates each object whole when its upload completes (a
    PUT, or the last part of a multipart or resumable upload), so objects are written in place; a folder's files
    are written under a temporary name and renamed. (A rename on S3 or GCS is a copy and a delete: twice the
    requests, and a blob's bytes copied again.)
    """

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise RemoteConfigError(f"--remote-cache {display_url(url)}: {one_line(error)}") from None
        self.root = root.rstrip("/")
        self.display = display_url(url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        self._writes_whole_objects = "file" not in protocols

    def _path(self, kind: str, name: str) -> str:
        return f"{self.root}/{kind}/{name}"

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Any failure of the storage library but a missing object becomes one line (`describe_failure`)."""
        try:
            yield
        except FileNotFoundError:
            raise
        except Exception as error:  # a storage library's own exception types as well as OSError
            raise RemoteUnavailableError(f"{self.display}: {action} failed: {describe_failure(error)}") from None

    def get_record(self, key: str, limit: int) -> bytes | None:
        with self._failures("reading a record"):
            try:
                with self.fs.open(self._path("ac", key), "rb") as stream:
                    return stream.read(limit + 1)
            except FileNotFoundError:
                return None

    def _put(self, path: str, write: Callable[[str], object]) -> None:
        if self._writes_whole_objects:
            write(path)
            return
        parent = path.rsplit("/", 1)[0]
        temporary = f"{parent}/.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(parent, exist_ok=True)
        try:
            write(temporary)
            self.fs.mv(temporary, path)
        except BaseException:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
            raise

    def put_record(self, key: str, data: bytes) -> None:
        with self._failures("writing a record"):
            self._put(self._path("ac", key), lambda path: self.fs.pipe_file(path, data))

    def has_blob(self, digest: str) -> bool:
        with self._failures("looking up a blob"):
            return bool(self.fs.exists(self._path("cas", digest)))

    def get_blob(self, digest: str, size: int) -> Iterator[bytes]:
        with self._failures("reading a blob"), self.fs.open(self._path("cas", digest), "rb") as stream:
            received = 0
            while received <= size and (chunk := stream.read(CHUNK)):
                received += len(chunk)
                yield chunk

    def put_blob(self, digest: str, source: Path) -> None:
        with self._failures("writing a blob"):
            self._put(self._path("cas", digest), lambda path: self.fs.put_file(os.fspath(source), path))


def open_backend(url: str, headers: dict[str, str] | None = None, ca_file: Path | None = None) -> Backend:
    """The backend for `url`: `http(s)://` speaks Bazel's protocol; `file://`, `s3://`, `gs://` use fsspec.

    Raises:
        RemoteConfigError: for another scheme, or headers / a CA file given to a backend that cannot use them.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as error:  # an unclosed IPv6 bracket, for one
        raise RemoteConfigError(f"--remote-cache {display_url(url)}: not a URL ({error})") from None
    if scheme in ("http", "https"):
        return HttpBackend(url, headers or {}, ca_file)
    if scheme in ("file", "s3", "gs", "gcs"):
        if headers or ca_file:
            raise RemoteConfigError(
                f"--remote-header and --remote-ca apply to http(s) caches; {scheme}:// takes its credentials "
                "from the storage library's usual configuration (environment, profile files)"
            )
        return FsspecBackend(url)
    raise RemoteConfigError(
        f"--remote-cache {display_url(url)}: expected an http://, https://, file://, s3:// or gs:// URL"
    )
