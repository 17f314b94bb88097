"""Fixtures of the remote cache tests: real nginx servers (tests/remote/nginx.py)."""

from tests.remote.nginx import nginx, nginx_factory  # noqa: F401 - fixtures
