"""The REST front end: the Open Inference Protocol over HTTP/JSON as a bare ASGI application on the data plane.

Routes are KServe v2's (``/v2``, health, model metadata, ready, config, infer) plus Triton's extensions that
``tritonclient.http`` uses (binary tensor data, classification, repository index/load/unload, statistics, logging,
trace settings, system shared memory); a traced request's trace ends once its answer is sent. Like
the gRPC servicer it only translates, here HTTP/JSON ↔ the data plane's arrays and values; nothing about models
lives here. Errors become Triton's HTTP status codes (400 bad request, 404 unknown model or version, 503
unavailable or overloaded, 401 a missing or wrong bearer token) with a one-line ``{"error": "..."}`` body;
anything unexpected is logged once and answered 500, and the server never stops on a request. The health routes
stay open without a token, as gRPC's health service does, so that probes need no secret.
"""

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from serving.auth import BearerToken
from serving.codec import non_negative_int
from serving.dataplane import DataPlane, VersionStatistics
from serving.errors import RateLimitedLog, ServingError, Status
from serving.protocol import model_config_pb2
from serving.rest import codec
from serving.shared_memory import cuda_status, register_cuda
from serving.tracing import Trace

log = logging.getLogger(__name__)

# Triton's http_server.cc: NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501, INTERNAL 500, everything else a bad
# request.
HTTP_STATUS = {
    Status.INVALID_ARGUMENT: 400,
    Status.NOT_FOUND: 404,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 503,
    Status.FAILED_PRECONDITION: 400,
    Status.ALREADY_EXISTS: 400,
    Status.UNIMPLEMENTED: 501,
    Status.INTERNAL: 500,
}
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
JSON = (b"content-type", b"application/json")
MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]*))?"
SYSTEM_REGION = r"/v2/systemsharedmemory(?:/region/(?P<name>[^/]+))?"
CUDA_REGION = r"/v2/cudasharedmemory(?:/region/(?P<name>[^/]+))?"
TRACE_MODEL = r"/v2/models/(?P<name>[^/]+)/trace/setting"


@dataclass
class HttpRequest:
    """What a route handler sees of one request: its path parameters, headers (lower-case names), body, the ASGI
    ``receive`` (which reports the client going away), and when (``time.monotonic_ns()``) it arrived and its body
    was read."""

    name: str
    version: str
    headers: dict[str, str]
    body: bytes
    receive: Callable
    arrived_ns: int
    read_ns: int


@dataclass
class HttpResponse:
    """An answer; a traced request's ``trace`` is finished once the answer is sent."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    trace: Trace | None = None


Handler = Callable[["RestFrontEnd", HttpRequest], Awaitable[HttpResponse]]


def json_response(value: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, codec.dump_json(value), (JSON,))


def error_response(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpResponse:
    return HttpResponse(status, codec.dump_json({"error": message}), (JSON, *headers))


def _int64_fields(descriptor: Descriptor) -> set[str]:
    """Names of the 64-bit integer fields anywhere in a message type: protobuf's JSON writes them as strings,
    Triton's model configuration JSON as numbers."""
    wide = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64)
    names: set[str] = set()
    pending, seen = [descriptor], {descriptor.full_name}
    while pending:
        for item in pending.pop().fields:
            if item.type in wide:
                names.add(item.name)
            elif item.message_type is not None and item.message_type.full_name not in seen:
                seen.add(item.message_type.full_name)
                pending.append(item.message_type)
    return names


INT64_CONFIG_FIELDS = _int64_fields(model_config_pb2.ModelConfig.DESCRIPTOR)


def _numbers(value: object, key: str = "") -> object:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in INT64_CONFIG_FIELDS and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def config_json(config: model_config_pb2.ModelConfig) -> dict:
    """A ModelConfig as Triton's HTTP endpoint writes it: proto field names, every field even at its default (so
    that ``max_batch_size`` 0 is there for clients to read), 64-bit integers as numbers."""
    as_dict = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(as_dict)


def statistics_json(entry: VersionStatistics) -> dict:
    snap = entry.stats

    def duration(d) -> dict:
        return {"count": d.count, "ns": d.ns}

    return {
        "name": entry.name,
        "version": entry.version,
        "last_inference": snap.last_inference_ms,
        "inference_count": snap.inference_count,
        "execution_count": snap.execution_count,
        "inference_stats": {
            "success": duration(snap.success),
            "fail": duration(snap.fail),
            "queue": duration(snap.queue),
            "compute_input": duration(snap.compute_input),
            "compute_infer": duration(snap.compute_infer),
            "compute_output": duration(snap.compute_output),
            "cache_hit": duration(snap.cache_hit),
            "cache_miss": duration(snap.cache_miss),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(b.compute_input),
                "compute_infer": duration(b.compute_infer),
                "compute_output": duration(b.compute_output),
            }
            for size, b in snap.batches.items()
        ],
    }


def _tensors(tensors) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def _optional_json(body: bytes, what: str) -> dict:
    """A repository request's optional JSON object body (tritonclient sends none, or ``{"parameters": ...}``)."""
    if not body.strip():
        return {}
    value = codec.parse_json(body, what)
    if not isinstance(value, dict):
        raise ServingError(Status.INVALID_ARGUMENT, f"the {what} must be a JSON object")
    return value


class RestFrontEnd:
    """The ASGI application; one instance serves every connection, on the event loop the data plane runs on."""

    def __init__(self, dataplane: DataPlane, *, token: BearerToken | None = None) -> None:
        self.dataplane = dataplane
        self._token = token
        self._unexpected_log = RateLimitedLog(log)
        # Order matters where Triton's paths overlap: /v2/models/stats is the statistics of every model.
        self._routes = [
            _Route("GET", "/v2/health/live", RestFrontEnd.server_live, admitted=False),
            _Route("GET", "/v2/health/ready", RestFrontEnd.server_ready, admitted=False),
            _Route("GET", "/v2", RestFrontEnd.server_metadata),
            _Route("GET", "/v2/models/stats", RestFrontEnd.model_statistics),
            _Route("GET", MODEL, RestFrontEnd.model_metadata),
            _Route("GET", f"{MODEL}/ready", RestFrontEnd.model_ready),
            _Route("GET", f"{MODEL}/config", RestFrontEnd.model_config),
            _Route("GET", f"{MODEL}/stats", RestFrontEnd.model_statistics),
            _Route("POST", f"{MODEL}/infer", RestFrontEnd.model_infer),
            _Route("POST", "/v2/repository/index", RestFrontEnd.repository_index),
            _Route("POST", "/v2/repository/models/(?P<name>[^/]+)/load", RestFrontEnd.repository_model_load),
            _Route("POST", "/v2/repository/models/(?P<name>[^/]+)/unload", RestFrontEnd.repository_model_unload),
            _Route("GET", "/v2/trace/setting", RestFrontEnd.trace_settings),
            _Route("POST", "/v2/trace/setting", RestFrontEnd.trace_settings),
            _Route("GET", TRACE_MODEL, RestFrontEnd.trace_settings),
            _Route("POST", TRACE_MODEL, RestFrontEnd.trace_settings),
            _Route("GET", "/v2/logging", RestFrontEnd.log_settings),
            _Route("POST", "/v2/logging", RestFrontEnd.log_settings),
            _Route("GET", f"{SYSTEM_REGION}/status", RestFrontEnd.system_shared_memory_status),
            _Route("POST", f"{SYSTEM_REGION}/register", RestFrontEnd.system_shared_memory_register),
            _Route("POST", f"{SYSTEM_REGION}/unregister", RestFrontEnd.system_shared_memory_unregister),
            _Route("GET", f"{CUDA_REGION}/status", RestFrontEnd.cuda_shared_memory_status),
            _Route("POST", f"{CUDA_REGION}/register", RestFrontEnd.cuda_shared_memory_register),
            _Route("POST", f"{CUDA_REGION}/unregister", RestFrontEnd.cuda_shared_memory_unregister),
        ]

    # --- the protocol's endpoints ------------------------------------------------------------------------

    async def server_live(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200 if self.dataplane.live() else 400)

    async def server_ready(self, request: HttpRequest) -> HttpResponse:
        # Triton's answer for "not ready" is 400; probes only look at the status.
        return HttpResponse(200 if self.dataplane.ready() else 400)

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        metadata = self.dataplane.server_metadata()
        return json_response(
            {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
        )

    async def model_metadata(self, request: HttpRequest) -> HttpResponse:
        metadata = self.dataplane.model_metadata(request.name, request.version)
        response = json_response(
            {
                "name": metadata.name,
                "versions": list(metadata.versions),
                "platform": metadata.platform,
                "inputs": _tensors(metadata.inputs),
                "outputs": _tensors(metadata.outputs),
            }
        )
        extra = [(b"x-execution-providers", ",".join(metadata.execution_providers).encode())]
        if metadata.device_warning:
            extra.append((b"x-device-warning", metadata.device_warning.encode("ascii", "replace")))
        response.headers = (*response.headers, *extra)
        return response

    async def model_ready(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200 if self.dataplane.model_ready(request.name, request.version) else 400)

    async def model_config(self, request: HttpRequest) -> HttpResponse:
        return json_response(config_json(self.dataplane.model_config(request.name, request.version)))

    async def model_statistics(self, request: HttpRequest) -> HttpResponse:
        entries = self.dataplane.statistics(request.name, request.version)
        return json_response({"model_stats": [statistics_json(entry) for entry in entries]})

    async def model_infer(self, request: HttpRequest) -> HttpResponse:
        trace = self.dataplane.tracer.sample(request.name, request.headers.get("traceparent"))
        if trace is None:
            return await self._infer(request, None)
        trace.stamp("HTTP_RECV_START", request.arrived_ns)
        trace.stamp("HTTP_RECV_END", request.read_ns)
        try:
            return await self._infer(request, trace)
        except BaseException:
            self.dataplane.tracer.finish(trace)
            raise

    async def _infer(self, request: HttpRequest, trace: Trace | None) -> HttpResponse:
        decoded, binary = codec.decode_infer_request(
            request.body,
            request.headers.get("inference-header-content-length"),
            request.name,
            request.version,
            self.dataplane.shared_memory,
        )
        decoded.trace = trace
        watch = _ClientWatch(request.receive)
        try:
            result = await self.dataplane.infer(decoded, on_wait=watch.start)
        except asyncio.CancelledError:
            if watch.disconnected:
                raise ServingError(Status.UNAVAILABLE, "the client went away before the answer was ready") from None
            raise
        finally:
            watch.stop()
        encoded = codec.encode_infer_response(result.model, result.version, result.id, result.outputs, binary)
        if encoded.header_length is None:
            return HttpResponse(200, encoded.body, (JSON,), trace)
        headers = (
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(encoded.header_length).encode()),
        )
        return HttpResponse(200, encoded.body, headers, trace)

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        ready = _optional_json(request.body, "repository index request").get("ready", False)
        if not isinstance(ready, bool):
            raise ServingError(Status.INVALID_ARGUMENT, f"'ready' must be true or false, got {ready!r:.40}")
        entries = self.dataplane.repository_index(ready)
        return json_response(
            [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]
        )

    async def repository_model_load(self, request: HttpRequest) -> HttpResponse:
        parameters = _optional_json(request.body, "load request").get("parameters", {})
        if not isinstance(parameters, dict):
            raise ServingError(Status.INVALID_ARGUMENT, "'parameters' of a load request must be a JSON object")
        await self.dataplane.load(request.name, parameters)
        return HttpResponse(200)

    async def repository_model_unload(self, request: HttpRequest) -> HttpResponse:
        parameters = _optional_json(request.body, "unload request").get("parameters", {})
        if not isinstance(parameters, dict):
            raise ServingError(Status.INVALID_ARGUMENT, "'parameters' of an unload request must be a JSON object")
        await self.dataplane.unload(request.name, parameters)
        return HttpResponse(200)

    async def log_settings(self, request: HttpRequest) -> HttpResponse:
        changes = _optional_json(request.body, "log settings request")  # a GET has no body: no change
        return json_response(self.dataplane.log_control.update(changes).as_dict())

    async def trace_settings(self, request: HttpRequest) -> HttpResponse:
        changes = _optional_json(request.body, "trace settings request")  # a GET has no body: no change
        return json_response(self.dataplane.trace_settings(request.name, _trace_changes(changes)))

    async def system_shared_memory_status(self, request: HttpRequest) -> HttpResponse:
        regions = self.dataplane.shared_memory.status(request.name)
        return json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def system_shared_memory_register(self, request: HttpRequest) -> HttpResponse:
        if not request.name:
            raise ServingError(Status.NOT_FOUND, "register a region at /v2/systemsharedmemory/region/NAME/register")
        body = _optional_json(request.body, "register request")
        key = body.get("key")
        if not isinstance(key, str):
            raise ServingError(Status.INVALID_ARGUMENT, f"'key' must be a string, got {key!r:.40}")
        offset = non_negative_int(body.get("offset", 0), "'offset'")
        byte_size = non_negative_int(body.get("byte_size"), "'byte_size'")
        self.dataplane.shared_memory.register(request.name, key, offset, byte_size)
        return HttpResponse(200)

    async def system_shared_memory_unregister(self, request: HttpRequest) -> HttpResponse:
        self.dataplane.shared_memory.unregister(request.name)
        return HttpResponse(200)

    async def cuda_shared_memory_status(self, request: HttpRequest) -> HttpResponse:
        return json_response(cuda_status(request.name))

    async def cuda_shared_memory_register(self, request: HttpRequest) -> HttpResponse:
        register_cuda()  # raises: the server takes no CUDA shared memory

    async def cuda_shared_memory_unregister(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200)  # there is never one to unregister

    # --- ASGI --------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan and websocket scopes: nothing to do
            return
        arrived_ns = time.monotonic_ns()
        try:
            response = await self._respond(scope, receive, arrived_ns)
        except ServingError as error:
            response = error_response(HTTP_STATUS[error.status], error.message)
        except Exception as error:  # one request never takes the server down; say what happened, rate-limited
            self._unexpected_log.warning(
                "%s %s failed: %r", scope.get("method"), scope.get("path", "")[:200], error, exc_info=True
            )
            response = error_response(500, f"internal error: {error!r}"[:500])
        trace = response.trace
        if trace is None:
            await self._send(send, response)
            return
        trace.stamp("HTTP_SEND_START", time.monotonic_ns())
        try:
            await self._send(send, response)
        finally:
            self.dataplane.tracer.finish(trace, "HTTP_SEND_END")

    @staticmethod
    async def _send(send: Callable, response: HttpResponse) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [*response.headers, (b"content-length", str(len(response.body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: dict, receive: Callable, arrived_ns: int) -> HttpResponse:
        path = scope["path"]
        method = scope["method"]
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self._token is not None and path not in OPEN_PATHS:
            refusal = self._token.refusal(headers.get("authorization"))
            if refusal is not None:
                challenge = (b"www-authenticate", b'Bearer realm="buildsys-serving"')
                return error_response(401, refusal.replace("metadata", "header"), (challenge,))
        route, match = next(
            ((r, m) for r in self._routes if r.method == method and (m := r.pattern.match(path))), (None, None)
        )
        if route is None:
            allowed = ", ".join(sorted({r.method for r in self._routes if r.pattern.match(path)}))
            if not allowed:
                return error_response(404, f"no route {path[:200]!r}; see the Open Inference Protocol's /v2 paths")
            return error_response(405, f"{method} is not allowed on {path[:200]}", ((b"allow", allowed.encode()),))
        if not route.admitted:
            return await route.handler(self, await self._request(match, headers, method, receive, arrived_ns))
        self.dataplane.admit()  # before the body is read: a refused request's bytes are never held
        try:
            return await route.handler(self, await self._request(match, headers, method, receive, arrived_ns))
        finally:
            self.dataplane.release()

    @staticmethod
    async def _request(
        match: re.Match, headers: dict[str, str], method: str, receive: Callable, arrived_ns: int
    ) -> HttpRequest:
        body = await _read_body(receive, headers) if method == "POST" else b""
        groups = match.groupdict()
        name, version = groups.get("name") or "", groups.get("version") or ""
        return HttpRequest(name, version, headers, body, receive, arrived_ns, time.monotonic_ns())


def _trace_changes(body: dict) -> dict[str, list[str] | None]:
    """A trace settings request's JSON as the protocol's values: a string or a list of them (a number is taken
    as its digits), null to hand a setting back."""
    changes: dict[str, list[str] | None] = {}
    for name, value in body.items():
        if isinstance(value, str):
            changes[name] = [value]
        elif isinstance(value, int) and not isinstance(value, bool):
            changes[name] = [str(value)]
        elif value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            changes[name] = value
        else:
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"trace setting {name[:40]!r} must be a string, a list of strings or null, got {value!r:.40}",
            )
    return changes


class _Route:
    def __init__(self, method: str, pattern: str, handler: Handler, *, admitted: bool = True) -> None:
        self.method = method
        self.pattern = re.compile(f"^{pattern}$")
        self.handler = handler
        # Health and readiness are answered even while draining, so that orchestrators can watch the shutdown.
        self.admitted = admitted


class _ClientWatch:
    """Cancels the request's task when its client disconnects, so that a queued request never runs.

    Watching needs a task reading ``receive``, about 50 µs of CPU, a sixth of what a batch-1 request costs the
    server in all; so it starts only when the data plane says the request is going to wait (``on_wait``), and an
    answer that comes in the next turn of the loop is never watched. A client that left before the watch starts is
    noticed at once: ``receive`` then reports the disconnect."""

    def __init__(self, receive: Callable) -> None:
        self._receive = receive
        # Taken now: ``start`` may be called from the batcher's worker task, which must not be the one cancelled.
        self._request_task = asyncio.current_task()
        self._watcher: asyncio.Future | None = None
        self.disconnected = False

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._receive())
        self._watcher.add_done_callback(self._on_message)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._on_message)
            self._watcher.cancel()

    def _on_message(self, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is None and done.result().get("type") == "http.disconnect":
            self.disconnected = True
            self._request_task.cancel()


async def _read_body(receive: Callable, headers: dict[str, str]) -> bytes:
    """The whole request body, refused past ``MAX_BODY_BYTES`` (before reading it when its length is declared)."""
    declared = headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > codec.MAX_BODY_BYTES:
        raise ServingError(
            Status.INVALID_ARGUMENT, f"the body is {declared} bytes; the limit is {codec.MAX_BODY_BYTES}"
        )
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServingError(Status.UNAVAILABLE, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > codec.MAX_BODY_BYTES:
            raise ServingError(Status.INVALID_ARGUMENT, f"the body is over the limit of {codec.MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return codec.decompress(b"".join(chunks), headers.get("content-encoding"))
