"""An S3-compatible server for the remote cache tests: moto's in-process server on a free loopback port.

botocore (under s3fs) reads the endpoint and credentials from the environment, as a user's ``aws`` configuration
would provide them, so the backend under test is opened exactly as ``--remote-cache s3://bucket/prefix`` opens it.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
import requests
import s3fs
from moto.server import ThreadedMotoServer

BUCKET = "team-cache"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMotoServer]:
    """A running server (``stop()`` stops it) with an empty bucket ``BUCKET``; the environment points botocore
    at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in the process, not in the server: every test starts from an empty store.
    requests.post(f"http://{host}:{port}/moto-api/reset", timeout=10).raise_for_status()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # a stopped server fails at once instead of after botocore's retries
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses instances: one made for an earlier port must not serve
    try:
        yield server
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
