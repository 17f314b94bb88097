"""A real nginx for the remote cache tests: Debian's `nginx` with its WebDAV module, as Bazel's docs set it up.

Each server gets a generated config in a throw-away folder (its pid file, logs, temp folders and the cache's files
all inside it), a free loopback port, `dav_methods PUT` with `create_full_put_path` under `/cache/`, and optionally
a bearer token it demands and a self-signed TLS certificate. The tests that use it are skipped, with the reason
shown, only when nginx is not installed outside CI (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mariadb import _binary
from tests.ports import free_port
from tests.processes import stop
from tests.tls import self_signed_certificate

TOKEN = "test-token-0123456789"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # nginx writes each into its own folder


class Nginx:
    """One nginx process serving `<folder>/www/cache/` over WebDAV PUT/GET/HEAD at `url`."""

    def __init__(self, folder: Path, token: str | None = None, tls: bool = False) -> None:
        self.binary = _binary("nginx")
        self.folder = folder
        self.token = token
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.storage = folder / "www" / "cache"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.certificate = self_signed_certificate(folder, certificate_authority=True)[0] if tls else None
        (folder / "nginx.conf").write_text(self._config(), encoding="utf-8")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/cache"

    def _config(self) -> str:
        folder = self.folder
        temporary = "\n".join(f"  {kind}_temp_path {folder / 'tmp' / kind};" for kind in TEMP_KINDS)
        user = "user root;\n" if os.geteuid() == 0 else ""
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        tls = (
            f"    ssl_certificate {folder / 'server.crt'};\n    ssl_certificate_key {folder / 'server.key'};\n"
            if self.tls
            else ""
        )
        guard = f'      if ($http_authorization != "Bearer {self.token}") {{ return 401; }}\n' if self.token else ""
        return (
            f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log {folder / 'access.log'};\n{temporary}\n"
            f"  server {{\n    listen {listen};\n{tls}"
            f"    location /cache/ {{\n{guard}      root {folder / 'www'};\n      dav_methods PUT;\n"
            "      create_full_put_path on;\n      dav_access user:rw group:r all:r;\n"
            "      client_max_body_size 4G;\n    }\n  }\n}\n"
        )

    def start(self) -> None:
        for kind in TEMP_KINDS:
            (self.folder / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
             "-e", str(self.folder / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        stop(self.process)
        self.process.stderr.close()
        self.process = None

    def blobs(self) -> list[Path]:
        return sorted((self.storage / "cas").iterdir())


def _require_nginx() -> None:
    if _binary("nginx") is None:
        if os.environ.get("CI"):
            raise RuntimeError("nginx is not installed; .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does this)")


@pytest.fixture
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """A fresh, empty nginx WebDAV cache on a free loopback port, stopped after the test."""
    _require_nginx()
    server = Nginx(tmp_path_factory.mktemp("nginx"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture
def nginx_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Starts nginx servers with a token or TLS on demand; all are stopped after the test."""
    _require_nginx()
    started: list[Nginx] = []

    def start(token: str | None = None, tls: bool = False) -> Nginx:
        server = Nginx(tmp_path_factory.mktemp("nginx"), token=token, tls=tls)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
