"""Runs the REST front end's ASGI application with uvicorn (httptools) inside the server's own event loop.

uvicorn was chosen by measurement (bench/http_stack_bench.py, BENCHMARKS.md). It is embedded rather than run:
the socket is bound here, so a port in use is a clear startup error and port 0 works; uvicorn's signal handlers
are left out, so SIGTERM belongs to the server's shutdown sequence; and its logging configuration is not applied,
so its few lines go through the process's logging like every other module's.
"""

import asyncio
import contextlib
import socket
from pathlib import Path

import uvicorn


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The serving process handles SIGTERM/SIGINT itself (drain, then stop every front end).
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6 by the address).

    Raises:
        OSError: the address is in use or not local.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


class HttpServer:
    """One uvicorn server on an already bound socket; ``start`` and ``stop`` run on the server's event loop."""

    def __init__(
        self,
        app,
        sock: socket.socket,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        grace_period_s: float = 30.0,
    ) -> None:
        """Prepares the server; the TLS files are read here, so a bad one fails before anything listens.

        Raises:
            OSError, ssl.SSLError: a TLS file that cannot be read or used.
        """
        config = uvicorn.Config(
            app,
            http="auto",  # httptools when installed (the measured choice), else h11
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=grace_period_s,
            server_header=False,
        )
        config.load()
        self._server = _EmbeddedServer(config)
        self._socket = sock
        self._task: asyncio.Task | None = None
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stops accepting, lets open requests finish (up to the grace period), then closes the connections."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
