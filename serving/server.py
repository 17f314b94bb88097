"""Wires the serving process together: repository, gRPC server, health, reflection, TLS, token, metrics,
shutdown.

Shutdown on SIGTERM or SIGINT: health turns NOT_SERVING and ServerReady false, new RPCs are refused with
UNAVAILABLE, in-flight ones get up to ``grace_period_s`` to finish, queued batches are flushed, and the
process exits 0.
"""

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.auth import BearerTokenInterceptor
from serving.metrics import Metrics
from serving.protocol import grpc_service_pb2, grpc_service_pb2_grpc
from serving.repository import BatchingOverrides, ModelRepository
from serving.runtime import RuntimeOptions, check_device_available
from serving.servicer import InferenceServicer, ServerState
from serving.version_policy import VersionPolicy

log = logging.getLogger("serving")

# 1,024 CIFAR images (32x32x3 float32) are 12.6 MB; 64 MiB leaves room for larger models and batches.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class StartupError(Exception):
    """Configuration that prevents starting; the message is the one line the user sees."""


@dataclass
class ServerSettings:
    repository: Path = Path("build-out/models")
    host: str = "127.0.0.1"
    port: int = 8001
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    batching: BatchingOverrides = field(default_factory=BatchingOverrides)
    version_policy: VersionPolicy | None = None
    poll_interval_s: float = 2.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token_file: Path | None = None
    metrics_port: int | None = None
    grace_period_s: float = 30.0
    threads: int = 64


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise StartupError(f"cannot read {what} {path}: {error.strerror}") from error


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    if settings.tls_cert is None:
        return None
    key = _read_file(settings.tls_key, "TLS key")
    cert = _read_file(settings.tls_cert, "TLS certificate")
    return grpc.ssl_server_credentials([(key, cert)])


def _token(settings: ServerSettings) -> str | None:
    if settings.auth_token_file is None:
        return None
    token = _read_file(settings.auth_token_file, "token file").decode("utf-8", "replace").strip()
    if not token:
        raise StartupError(f"token file {settings.auth_token_file} is empty")
    return token


def serve(settings: ServerSettings) -> int:
    """Runs the server until SIGTERM/SIGINT, then drains; returns the process exit code.

    Raises:
        StartupError: a flag or file that makes serving impossible (the caller prints it and exits 2).
    """
    if not settings.repository.is_dir():
        raise StartupError(
            f"model repository {settings.repository} does not exist; build a model first "
            "(python -m buildsys build ...) or pass --repository"
        )
    try:
        check_device_available(settings.runtime.device)
    except ValueError as error:
        raise StartupError(str(error)) from error
    credentials = _credentials(settings)
    token = _token(settings)

    metrics = Metrics()
    repository = ModelRepository(
        settings.repository,
        settings.runtime,
        version_policy=settings.version_policy,
        batching=settings.batching,
        on_batch=metrics.observe_batch,
    )
    repository.load_all()
    metrics.watch_queue_depth(repository.queue_depths)
    loaded = repository.loaded()
    if not loaded:
        log.warning("no model could be loaded from %s; RepositoryIndex says why", settings.repository)
    for warning in repository.device_warnings():
        log.warning("!!! %s", warning)

    state = ServerState()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rpc"),
        interceptors=[BearerTokenInterceptor(token)] if token else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(repository, state, metrics), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as error:
        raise StartupError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise StartupError(f"cannot listen on {address} (in use, or not a local address)")
    if settings.metrics_port is not None:
        try:
            metrics.serve_http(settings.host, settings.metrics_port)
        except OSError as error:
            raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {error}") from error

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.set())
    server.start()
    if settings.poll_interval_s > 0:
        repository.start_polling(settings.poll_interval_s)
    for status_name in ("", SERVICE_NAME):
        health_servicer.set(status_name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving %d model version(s) from %s on %s%s%s (ready)",
        len(loaded),
        settings.repository,
        f"{settings.host}:{port}",
        " with TLS" if credentials else "",
        " and a bearer token" if token else "",
    )
    stop.wait()
    return _drain(server, health_servicer, state, repository, settings.grace_period_s)


def _drain(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    state: ServerState,
    repository: ModelRepository,
    grace_period_s: float,
) -> int:
    log.info("shutting down: refusing new requests, %d in flight, grace %.1f s", state.inflight, grace_period_s)
    state.draining = True
    health_servicer.enter_graceful_shutdown()
    if not state.wait_idle(grace_period_s):
        log.warning("grace period over with %d request(s) still in flight; cancelling them", state.inflight)
    server.stop(grace=0).wait()
    repository.close()
    log.info("stopped")
    return 0
