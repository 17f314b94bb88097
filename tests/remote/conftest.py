"""Fixtures of the remote cache tests: real nginx servers (tests/remote/nginx.py)."""

from tests.remote.nginx import nginx, nginx_factory  # noqa: F401 - fixtures
from tests.remote.s3 import s3  # noqa: F401 - fixture
