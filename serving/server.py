"""Wires the serving process together: one event loop, one data plane, and the front ends that share them.

``serve`` checks the settings (one clear line for anything that makes serving impossible), builds the data
plane, loads the models, and starts each front end (gRPC, and HTTP/REST from serving/rest/) on the same loop.
Shutdown on SIGTERM or SIGINT: readiness turns false and every front end's health NOT_SERVING, new requests are
refused with UNAVAILABLE, in-flight ones get up to ``grace_period_s`` to finish, queued batches are flushed, and
the process exits 0. uvloop runs the loop when it is installed (it measured faster for the gRPC front end).
"""

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc

from serving.auth import BearerToken
from serving.dataplane import SERVER_NAME, DataPlane
from serving.grpc_frontend import GrpcFrontend
from serving.log_settings import LogControl
from serving.metrics import Metrics
from serving.mirror import MirrorError, RepositoryMirror, mount_variable
from serving.repository import DEFAULT_LOAD_THREADS, BatchingOverrides
from serving.response_cache import ResponseCache
from serving.rest.server import HttpFrontend
from serving.runtime import RuntimeOptions, check_device_available
from serving.shared_memory import SystemSharedMemory
from serving.tracing import OTEL, Tracer, TraceSettings
from serving.version_policy import VersionPolicy

log = logging.getLogger("serving")

# Calls each transport takes beyond the data plane's limit before it refuses everything itself (gRPC
# RESOURCE_EXHAUSTED, uvicorn's 503): room for health and readiness probes, which the data plane does not count,
# so that they are answered while the admitted work is at its limit; the transport's own bound still holds when
# the callers flood it with probes or idle connections.
PROBE_HEADROOM = 64


class StartupError(Exception):
    """Configuration that prevents starting; the message is the one line the user sees."""


class FrontEnd(Protocol):
    """A protocol's server over the shared data plane; ``address`` is valid once ``start`` returned."""

    name: str

    @property
    def address(self) -> str: ...

    async def start(self) -> None:
        """Binds and serves; raises OSError with a one-line message when the address cannot be bound."""

    async def stop(self, grace_s: float) -> None:
        """Stops taking new requests, lets in-flight ones finish within ``grace_s``, then closes."""


@dataclass
class ServerSettings:
    # The repositories (Triton's --model-repository, repeatable): local folders, or object storage URLs (s3://, gs://, as://)
    # served from a local mirror. A model name must be in only one of them.
    repositories: tuple[Path | str, ...] = (Path("build-out/models"),)
    host: str = "127.0.0.1"
    # Triton's --grpc-address, --http-address and --metrics-address: one front end's address, else ``host``'s.
    grpc_host: str | None = None
    http_host: str | None = None
    metrics_host: str | None = None
    port: int | None = 8001  # gRPC; None: off
    http_port: int | None = 8000  # HTTP/REST; None: off
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    batching: BatchingOverrides = field(default_factory=BatchingOverrides)
    version_policy: VersionPolicy | None = None
    poll_interval_s: float = 2.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token_file: Path | None = None
    metrics_port: int | None = None
    grace_period_s: float = 30.0
    # Requests admitted at once across the front ends (DataPlane.max_inflight); health and readiness are not counted.
    max_concurrent_requests: int = 1024
    # Whether clients may register system shared memory regions (Triton's --allow-client-shm, off by default).
    allow_client_shm: bool = False
    # The --log-level the process's logging was configured with: where the log settings that clients see start.
    log_level: str = "info"
    # tritonserver's --log-file (where the log is written, reported by the logging extension) and its other log flags,
    # as the logging extension's settings that they set: (name, value) pairs.
    log_file: str = ""
    log_changes: tuple[tuple[str, object], ...] = ()
    # The --trace-config settings: the trace file, and where the trace settings that clients see start.
    trace: TraceSettings = field(default_factory=TraceSettings)
    # The response cache's size (--cache-config local,size=BYTES), or None for none.
    response_cache_bytes: int | None = None
    # Triton's model control mode (DataPlane's MODEL_CONTROL_MODES) and, for "explicit", the models loaded at start.
    model_control: str = "poll"
    load_models: tuple[str, ...] = ()
    # Versions a scan loads at once (Triton's --model-load-thread-count).
    model_load_threads: int = DEFAULT_LOAD_THREADS
    # Triton's --strict-readiness (ready only while every model serves) and --exit-on-error (a refusal at start stops
    # the server; off by default here: a bad file refuses only itself).
    strict_readiness: bool = True
    exit_on_error: bool = False
    # Whether a model without config.pbtxt, or one listing no tensors, takes them from its ONNX file (Triton's default;
    # off with --disable-auto-complete-config).
    auto_complete_config: bool = True


@dataclass(frozen=True)
class Security:
    """TLS key pair (PEM bytes, and the files they came from) and bearer token, shared by every front end."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: BearerToken | None = None

    @property
    def tls(self) -> bool:
        return self.cert_pem is not None


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise StartupError(f"cannot read {what} {path}: {error.strerror}") from error


def read_security(settings: ServerSettings) -> Security:
    """Reads the TLS files and the token file named in the settings.

    Raises:
        StartupError: one of them is missing, unreadable or empty, or only half of the TLS pair is given.
    """
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    cert_pem = key_pem = token = None
    if settings.tls_cert is not None:
        key_pem = _read_file(settings.tls_key, "TLS key")
        cert_pem = _read_file(settings.tls_cert, "TLS certificate")
    if settings.auth_token_file is not None:
        text = _read_file(settings.auth_token_file, "token file").decode("utf-8", "replace").strip()
        if not text:
            raise StartupError(f"token file {settings.auth_token_file} is empty")
        token = BearerToken(text)
    return Security(settings.tls_cert, settings.tls_key, cert_pem, key_pem, token)


def _check(settings: ServerSettings) -> Security:
    if settings.port is None and settings.http_port is None:
        raise StartupError("--no-grpc and --no-http leave nothing to serve; keep at least one front end")
    for repository in settings.repositories:
        if isinstance(repository, Path) and not repository.is_dir():
            raise StartupError(
                f"model repository {repository} does not exist; build a model first "
                "(python -m buildsys build ...) or pass --repository"
            )
    resolved = [r.resolve() if isinstance(r, Path) else r.rstrip("/") for r in settings.repositories]
    if len(set(resolved)) < len(resolved):
        twice = next(r for r, same in zip(settings.repositories, resolved, strict=True) if resolved.count(same) > 1)
        raise StartupError(f"model repository {twice} is given twice; each of its models would be in two repositories")
    try:
        check_device_available(settings.runtime.device)
    except ValueError as error:
        raise StartupError(str(error)) from error
    if settings.trace.mode == OTEL and importlib.util.find_spec("opentelemetry") is None:
        raise StartupError(
            "--trace-config mode=opentelemetry needs OpenTelemetry's SDK and OTLP exporter: "
            "pip install 'buildsys[otel]'"
        )
    # A store's models are known only once it is listed; the data plane names a missing one then.
    if all(isinstance(repository, Path) for repository in settings.repositories):
        missing = [
            name
            for name in settings.load_models
            if name != "*" and not any((repository / name).is_dir() for repository in settings.repositories)
        ]
        if missing:
            folders = ", ".join(map(str, settings.repositories))
            raise StartupError(f"--load-model {missing[0][:80]}: no such model folder in {folders}")
    trace_folder = Path(settings.trace.file).parent
    if settings.trace.file and not trace_folder.is_dir():
        raise StartupError(f"the trace file's folder {trace_folder} does not exist (--trace-config triton,file=...)")
    return read_security(settings)


def build_frontends(dataplane: DataPlane, settings: ServerSettings, security: Security) -> list[FrontEnd]:
    """The front ends the settings ask for, all over the same data plane (a new protocol is one more entry)."""
    frontends: list[FrontEnd] = []
    if settings.port is not None:
        credentials = grpc.ssl_server_credentials([(security.key_pem, security.cert_pem)]) if security.tls else None
        frontends.append(
            GrpcFrontend(
                dataplane,
                settings.grpc_host or settings.host,
                settings.port,
                credentials=credentials,
                token=security.token,
                max_calls=settings.max_concurrent_requests + PROBE_HEADROOM,
            )
        )
    if settings.http_port is not None:
        frontends.append(
            HttpFrontend(
                dataplane,
                settings.http_host or settings.host,
                settings.http_port,
                tls_cert=security.tls_cert,
                tls_key=security.tls_key,
                token=security.token,
                max_calls=settings.max_concurrent_requests + PROBE_HEADROOM,
            )
        )
    return frontends


def serve(settings: ServerSettings) -> int:
    """Runs the server until SIGTERM/SIGINT, then drains; returns the process exit code.

    Raises:
        StartupError: a flag or file that makes serving impossible (the caller prints it and exits 2).
    """
    security = _check(settings)
    with contextlib.ExitStack() as scratch:  # each mirror's local folder, removed at exit
        repositories = [r if isinstance(r, Path) else _mirror(r, scratch) for r in settings.repositories]
        try:
            import uvloop
        except ImportError:
            return asyncio.run(_serve(settings, security, repositories))
        return uvloop.run(_serve(settings, security, repositories))


def _mirror(url: str, scratch: contextlib.ExitStack) -> RepositoryMirror:
    """The mirror of a store, in a temporary folder of its own that ``scratch`` removes: inside the folder that
    Triton's mount variable names when it is set (as Triton makes its copies), else in the system's temporary
    folder. The folder is named after the store, so that a message naming a mirrored file says where it came from."""
    variable = mount_variable(url)
    mount = os.environ.get(variable) or None
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", url)[:80]
    try:
        folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix=f"mirror-of-{readable}-", dir=mount)))
    except OSError as error:
        where = f"{variable}={mount}" if mount else "the temporary folder"
        raise StartupError(f"{where}: {error.strerror or error} (the local copy of {url} is made there)") from None
    try:
        return RepositoryMirror(url, folder)
    except MirrorError as error:
        raise StartupError(str(error)) from None


async def _serve(settings: ServerSettings, security: Security, repositories: list[Path | RepositoryMirror]) -> int:
    metrics = Metrics()
    log_control = LogControl(settings.log_level, log_file=settings.log_file)
    log_control.install(logging.getLogger())
    log_control.update(dict(settings.log_changes))
    dataplane = DataPlane(
        repositories,
        settings.runtime,
        version_policy=settings.version_policy,
        batching=settings.batching,
        poll_interval_s=settings.poll_interval_s,
        metrics=metrics,
        max_inflight=settings.max_concurrent_requests,
        shared_memory=SystemSharedMemory(allowed=settings.allow_client_shm),
        log_control=log_control,
        tracer=Tracer(settings.trace, SERVER_NAME),
        response_cache=ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None,
        model_control=settings.model_control,
        load_models=settings.load_models,
        model_load_threads=settings.model_load_threads,
        strict_readiness=settings.strict_readiness,
        auto_complete_config=settings.auto_complete_config,
    )
    await dataplane.start()
    refusals = dataplane.repository.refusals()
    if settings.exit_on_error and refusals:
        await dataplane.close()
        raise StartupError(f"--exit-on-error: not everything loaded at start: {'; '.join(refusals)}")
    loaded = dataplane.repository.loaded()
    if not loaded and settings.model_control == "explicit" and not settings.load_models:
        log.info("no model loaded at start (--model-control-mode explicit): load requests load them")
    elif not loaded:
        log.warning(
            "no model could be loaded from %s; RepositoryIndex says why", ", ".join(map(str, settings.repositories))
        )
    for warning in dataplane.repository.device_warnings():
        log.warning("!!! %s", warning)

    frontends = build_frontends(dataplane, settings, security)
    started: list[FrontEnd] = []
    try:
        for frontend in frontends:
            await frontend.start()
            started.append(frontend)
        if settings.metrics_port is not None:
            try:
                metrics_host = settings.metrics_host or settings.host
                metrics.serve_http(metrics_host, settings.metrics_port)
            except OSError as error:
                raise OSError(f"cannot serve metrics on {metrics_host}:{settings.metrics_port}: {error}") from error
    except OSError as error:
        for frontend in started:
            await frontend.stop(0)
        await dataplane.close()
        raise StartupError(str(error)) from error

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    unready = dataplane.repository.unready_models()
    log.info(
        "serving %d model version(s) from %s, %s%s%s%s (%s)",
        len(loaded),
        ", ".join(map(str, settings.repositories)),
        ", ".join(f"{f.name} on {f.address}" for f in frontends),
        " with TLS" if security.tls else "",
        " and a bearer token" if security.token else "",
        ", clients' shared memory allowed" if settings.allow_client_shm else "",
        "ready" if dataplane.ready() else f"not ready: {'; '.join(unready.values())}",
    )
    await stop.wait()

    log.info(
        "shutting down: refusing new requests, %d in flight, grace %.1f s",
        dataplane.inflight,
        settings.grace_period_s,
    )
    dataplane.begin_drain()
    stopping = [loop.create_task(frontend.stop(settings.grace_period_s)) for frontend in frontends]
    if not await dataplane.wait_idle(settings.grace_period_s):
        log.warning("grace period over with %d request(s) still in flight; cancelling them", dataplane.inflight)
    await asyncio.gather(*stopping)
    await dataplane.close()
    log.info("stopped")
    return 0
