"""Fixtures of the remote cache tests: real nginx servers (tests/remote/nginx.py), an S3-compatible server
(tests/remote/s3.py) and a Google Cloud Storage emulator (tests/remote/gcs.py)."""

from tests.remote.gcs import gcs_server  # noqa: F401 - fixture
from tests.remote.nginx import nginx, nginx_factory  # noqa: F401 - fixtures
from tests.remote.s3 import s3  # noqa: F401 - fixture
