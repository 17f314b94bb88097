"""The transports against real stores: nginx's WebDAV (Bazel's HTTP protocol, a token, TLS), an S3-compatible
server (moto's, through s3fs), a Google Cloud Storage emulator (gcp-storage-emulator's, through gcsfs) and a
file:// folder."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import gcsfs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildsys.remote.backends import RemoteConfigError, RemoteUnavailableError, display_url, open_backend, parse_headers
from tests.conftest import fuzz_settings
from tests.data_helpers import url_texts
from tests.remote import gcs
from tests.remote.nginx import TOKEN
from tests.remote.s3 import BUCKET

KEY = "ab" * 32


def _roundtrip(backend, tmp_path: Path) -> None:
    assert backend.get_record(KEY, 1000) is None
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert not backend.has_blob(digest)
    backend.put_blob(digest, blob)
    assert backend.has_blob(digest)
    assert b"".join(backend.get_blob(digest, 7000)) == blob.read_bytes()
    assert len(b"".join(backend.get_blob(digest, 10))) <= 10 + (1 << 20)  # stops soon after the declared size
    backend.put_record(KEY, b'{"record": 1}')
    backend.put_record(KEY, b'{"record": 2}')  # a second build of the same key replaces the record
    assert backend.get_record(KEY, 1000) == b'{"record": 2}'
    with pytest.raises(FileNotFoundError):
        list(backend.get_blob("cd" * 32, 10))


def test_http_backend_speaks_bazels_protocol_to_nginx(nginx, tmp_path: Path) -> None:
    backend = open_backend(nginx.url)
    _roundtrip(backend, tmp_path)
    assert (nginx.storage / "ac" / KEY).read_bytes() == b'{"record": 2}'  # the layout Bazel's HTTP cache uses
    assert len(list((nginx.storage / "cas").iterdir())) == 1


def test_every_put_carries_a_content_length(tmp_path: Path) -> None:
    """bazel-remote refuses a PUT without a Content-Length ("PUT without Content-Length"), which requests leaves
    out for an empty file (it sends it chunked): every record and blob, an empty one included, says its size."""
    seen: list[tuple[str, str | None, str | None]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - the name http.server dispatches to
            length = self.headers["Content-Length"]
            self.rfile.read(int(length or 0))
            seen.append((self.path, length, self.headers["Transfer-Encoding"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = open_backend(f"http://127.0.0.1:{server.server_port}/cache")
        (tmp_path / "empty").write_bytes(b"")
        (tmp_path / "full").write_bytes(b"weights")
        backend.put_blob(hashlib.sha256(b"").hexdigest(), tmp_path / "empty")
        backend.put_blob(hashlib.sha256(b"weights").hexdigest(), tmp_path / "full")
        backend.put_record(KEY, b"\x12\x00")
    finally:
        server.shutdown()
        thread.join()
    assert [(path.split("/")[2], length, chunked) for path, length, chunked in seen] == [
        ("cas", "0", None), ("cas", "7", None), ("ac", "2", None),
    ]  # fmt: skip


def test_file_backend_roundtrip_writes_whole_objects(tmp_path: Path) -> None:
    backend = open_backend((tmp_path / "store").as_uri())
    _roundtrip(backend, tmp_path)
    assert not [path for path in (tmp_path / "store").rglob(".tmp-*")]


def test_s3_backend_roundtrip_uses_the_bazel_layout_under_the_prefix(s3, tmp_path: Path) -> None:
    _roundtrip(open_backend(f"s3://{BUCKET}/buildsys"), tmp_path)
    keys = sorted(item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys[0] == f"buildsys/ac/{KEY}" and len(keys) == 2 and keys[1].startswith("buildsys/cas/"), keys


def test_gcs_backend_roundtrip_uses_the_bazel_layout_under_the_prefix(
    gcs_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = open_backend(f"gs://{gcs.BUCKET}/buildsys")

    def no_rename(*args: object, **kwargs: object) -> None:
        raise AssertionError("an object store was written under a temporary name and renamed (a copy and a delete)")

    monkeypatch.setattr(backend.fs, "mv", no_rename)  # objects are written in place: each upload is whole or absent
    _roundtrip(backend, tmp_path)
    keys = sorted(gcsfs.GCSFileSystem().find(gcs.BUCKET))
    assert keys[0] == f"{gcs.BUCKET}/buildsys/ac/{KEY}" and len(keys) == 2, keys
    assert keys[1].startswith(f"{gcs.BUCKET}/buildsys/cas/"), keys


def test_a_stopped_s3_server_is_one_line(s3) -> None:
    backend = open_backend(f"s3://{BUCKET}/buildsys")
    s3.stop()
    with pytest.raises(RemoteUnavailableError) as caught:
        backend.get_record(KEY, 1000)
    message = str(caught.value)
    assert message.startswith(f"s3://{BUCKET}/buildsys: reading a record failed: ") and "\n" not in message
    assert "test-secret-key" not in message


def test_unreachable_server_is_one_line_without_credentials(nginx) -> None:
    nginx.stop()
    url = nginx.url.replace("http://", "http://alice:hunter2@")
    backend = open_backend(url)
    with pytest.raises(RemoteUnavailableError) as caught:
        backend.get_record(KEY, 1000)
    assert str(caught.value) == f"{nginx.url}: connection refused or host unreachable"
    assert "hunter2" not in backend.display and "alice" not in backend.display


def test_token_from_a_header_file(nginx_factory, tmp_path: Path) -> None:
    server = nginx_factory(token=TOKEN)
    with pytest.raises(RemoteUnavailableError, match="HTTP 401 on GET ac/ \\(check the credentials"):
        open_backend(server.url).get_record(KEY, 1000)
    secrets = tmp_path / "headers"
    secrets.write_text(f"# the team's cache token\nAuthorization: Bearer {TOKEN}\n", encoding="utf-8")
    backend = open_backend(server.url, parse_headers([f"@{secrets}"]))
    assert backend.get_record(KEY, 1000) is None
    backend.put_record(KEY, b"{}")
    assert backend.get_record(KEY, 1000) == b"{}"


def test_tls_is_verified_and_a_private_ca_is_accepted(nginx_factory) -> None:
    server = nginx_factory(tls=True)
    with pytest.raises(RemoteUnavailableError, match="TLS verification failed"):
        open_backend(server.url).get_record(KEY, 1000)
    assert open_backend(server.url, ca_file=server.certificate).get_record(KEY, 1000) is None


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RemoteConfigError, match="expected an http://"):
        open_backend("ftp://cache.example/")
    with pytest.raises(RemoteConfigError, match="apply to http"):
        open_backend(tmp_path.as_uri(), {"Authorization": "x"})
    with pytest.raises(RemoteConfigError, match="no such file"):
        open_backend("https://127.0.0.1:1/", ca_file=tmp_path / "missing.pem")
    with pytest.raises(RemoteConfigError) as caught:
        parse_headers(["Authorization Bearer secret-value"])
    assert "secret-value" not in str(caught.value)
    assert parse_headers(["X-Team: ml", "Authorization: Basic YTpi"]) == {"X-Team": "ml", "Authorization": "Basic YTpi"}
    assert display_url("https://u:p@cache.example:8443/x/") == "https://cache.example:8443/x"
    # Text urllib cannot split still hides what may be a password.
    with pytest.raises(RemoteConfigError, match=r"^--remote-cache https://…@\[cache:8443/x: not a URL") as caught:
        open_backend("https://user:secret@[cache:8443/x")
    assert "secret" not in str(caught.value)
    assert display_url("https://user:secret@cache:port/x") == "https://…@cache:port/x"


@fuzz_settings(300)
@given(url=url_texts())
def test_any_remote_cache_url_opens_or_is_one_line_without_its_password(url: str) -> None:
    try:
        open_backend(url)
    except RemoteConfigError as error:
        assert "\n" not in str(error) or "\n" in url, error


@fuzz_settings(100)
@given(lines=st.lists(st.text(max_size=30), max_size=5))
def test_fuzzed_header_files_parse_or_fail_without_echoing_them(tmp_path_factory, lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("headers") / "headers"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        headers = parse_headers([f"@{path}"])
    except RemoteConfigError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    assert all(name and ":" not in name and not any(c.isspace() for c in name) for name in headers)
