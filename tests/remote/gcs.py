"""A Google Cloud Storage stand-in for the remote cache tests: gcp-storage-emulator's in-memory server on a free
loopback port.

gcsfs, like Google's own client libraries, talks to ``STORAGE_EMULATOR_HOST`` when it is set and then sends no
credentials, so the backend under test is opened exactly as ``--remote-cache gs://bucket/prefix`` opens it.
"""

from __future__ import annotations

from collections.abc import Iterator

import gcsfs
import pytest
from gcp_storage_emulator.server import Server, create_server

from tests.ports import free_port

BUCKET = "team-cache"


@pytest.fixture
def gcs_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A running emulator (``stop()`` stops it) with an empty bucket ``BUCKET``; the environment points gcsfs at
    it."""
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    gcsfs.GCSFileSystem.clear_instance_cache()  # fsspec reuses instances: one made for an earlier port must not serve
    try:
        yield server
    finally:
        server.wipe()  # the emulator's in-memory store outlives the server: the next test starts empty
        server.stop()
        gcsfs.GCSFileSystem.clear_instance_cache()
