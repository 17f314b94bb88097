"""An Azure Blob Storage stand-in: Microsoft's Azurite emulator (Node.js, from npm) on a free loopback port.

adlfs, like Azure's own client libraries, takes its endpoint and key from ``AZURE_STORAGE_CONNECTION_STRING`` when
it is set, so a repository named as Triton names one (``as://account/container/path``) is opened as it is in
production, here with the emulator's published development account. The tests that use it are skipped, with the
reason shown, only when Azurite is not installed outside CI (`.ci/run` installs it with npm).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import adlfs
import pytest
from azure.storage.blob import BlobServiceClient

from tests.ports import free_port
from tests.processes import stop

# Where .ci/run installs it: npm install --prefix tests/remote/.azurite azurite
INSTALLED = Path(__file__).resolve().parent / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one account and its key, as Microsoft publishes them for development (not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "team-models"


def _binary() -> str | None:
    found = shutil.which("azurite-blob")
    return found or (str(INSTALLED) if INSTALLED.exists() else None)


@pytest.fixture
def azurite(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobServiceClient]:
    """A running emulator with an empty container ``CONTAINER``, and a client of it; the environment points adlfs
    at it. Stopped after the test."""
    binary = _binary()
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("Azurite is not installed; .ci/run installs it (npm install azurite)")
        pytest.skip("Azurite is not installed (npm install --prefix tests/remote/.azurite azurite; .ci/run does this)")
    port = free_port()
    folder = tmp_path_factory.mktemp("azurite")
    command = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
               "--skipApiVersionCheck"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=folder)
    try:
        _wait_for(port, process)
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        )
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
        adlfs.AzureBlobFileSystem.clear_instance_cache()  # an instance made for an earlier port must not serve
        client = BlobServiceClient.from_connection_string(connection)
        client.create_container(CONTAINER)
        yield client
    finally:
        stop(process)
        process.stderr.close()
        adlfs.AzureBlobFileSystem.clear_instance_cache()


def _wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not listen on port {port} within 30 s") from None
            time.sleep(0.05)
