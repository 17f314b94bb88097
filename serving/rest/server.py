"""The HTTP front end: the REST application served by uvicorn (httptools) inside the server's own event loop.

uvicorn was chosen by measurement (bench/http_stack_bench.py, BENCHMARKS.md). It is embedded rather than run:
the socket is bound here, so a port in use is a clear startup error and port 0 works; uvicorn's signal handlers
are left out, so SIGTERM belongs to the server's shutdown sequence; and its logging configuration is not applied,
so its few lines go through the process's logging like every other module's.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path

import uvicorn

from serving.auth import BearerToken
from serving.dataplane import DataPlane
from serving.errors import RateLimitFilter
from serving.rest.app import RestFrontEnd

# After the drain: how long uvicorn waits for answers still being written before closing the connections.
CLOSE_GRACE_S = 1.0


# uvicorn's warnings ("Invalid HTTP request received.") are triggered by clients: bytes that are not HTTP must not
# become a log line each.
UVICORN_LOG_LIMIT = RateLimitFilter()


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The serving process handles SIGTERM/SIGINT itself (drain, then stop every front end).
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. It is made with ``IPPROTO_TCP`` on purpose: asyncio turns Nagle's algorithm off
    only for sockets whose protocol says TCP, and with it on, a response written in two parts (headers, body) waits
    out the client's delayed ACK, about 40 ms per request."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class HttpFrontend:
    """The REST front end on the data plane's event loop (``serving.server.FrontEnd``).

    Args:
        tls_cert, tls_key: PEM files for HTTPS, or None for plain HTTP.
        token: the bearer token every route but /v2/health/* must carry, or None.
        max_calls: connections and requests at once, health included, before uvicorn answers 503 itself (None: no
            limit); the data plane's own limit on admitted requests is lower.
    """

    name = "HTTP"

    def __init__(
        self,
        dataplane: DataPlane,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: BearerToken | None = None,
        max_calls: int | None = None,
    ) -> None:
        self.dataplane = dataplane
        self._max_calls = max_calls
        self.host = host
        self.port = port
        self._tls = (tls_cert, tls_key) if tls_cert is not None else None
        self.app = RestFrontEnd(dataplane, token=token)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Binds and starts serving.

        Raises:
            OSError: the address cannot be bound, or the TLS files cannot be used (one line).
        """
        try:
            sock = _listen(self.host, self.port)
        except OSError as error:
            raise OSError(f"cannot listen on {self.address}: {error.strerror or error}") from error
        config = uvicorn.Config(
            self.app,
            http="auto",  # httptools when installed (the measured choice), else h11
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            ssl_certfile=str(self._tls[0]) if self._tls else None,
            ssl_keyfile=str(self._tls[1]) if self._tls else None,
            server_header=False,
            proxy_headers=False,  # nothing reads the client's address; the middleware would cost every request
            # Beyond it uvicorn answers 503 at once. It counts the asking connection among those open, so one more
            # makes N mean N requests at once, as for gRPC.
            limit_concurrency=None if self._max_calls is None else self._max_calls + 1,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as error:
            sock.close()
            raise OSError(f"cannot serve HTTPS with --tls-cert/--tls-key: {error}") from error
        self.port = sock.getsockname()[1]
        if UVICORN_LOG_LIMIT not in logging.getLogger("uvicorn.error").filters:
            logging.getLogger("uvicorn.error").addFilter(UVICORN_LOG_LIMIT)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on {self.address} stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self, grace_s: float) -> None:
        """Keeps answering (503 for new work, readiness false) until nothing is in flight or ``grace_s`` ran out,
        so that load balancers see the drain; then closes the listener and the connections."""
        await self.dataplane.wait_idle(grace_s)
        if self._server is not None and self._task is not None:
            self._server.config.timeout_graceful_shutdown = CLOSE_GRACE_S
            self._server.should_exit = True
            await self._task
