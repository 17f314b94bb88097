"""The REST front end: the Open Inference Protocol over HTTP/JSON as a bare ASGI application on the data plane.

Routes are KServe v2's (``/v2``, health, model metadata, ready, config, infer) plus Triton's extensions that
``tritonclient.http`` uses (binary tensor data, classification, repository index/load/unload, statistics). Like
the gRPC servicer it only translates, here HTTP/JSON ↔ the data plane's arrays and values; nothing about models
lives here. Errors become Triton's HTTP status codes (400 bad request, 404 unknown model or version, 503
unavailable or overloaded, 401 a missing or wrong bearer token) with a one-line ``{"error": "..."}`` body;
anything unexpected is logged once and answered 500, and the server never stops on a request. The health routes
stay open without a token, as gRPC's health service does, so that probes need no secret.
"""

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serving.errors import ServingError, Status
from serving.rest import codec

log = logging.getLogger(__name__)

# Triton's http_server.cc: NOT_FOUND 404, UNAVAILABLE 503, INTERNAL 500, everything else a bad request.
HTTP_STATUS = {
    Status.INVALID_ARGUMENT: 400,
    Status.NOT_FOUND: 404,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 503,
    Status.FAILED_PRECONDITION: 400,
    Status.INTERNAL: 500,
}
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
JSON = (b"content-type", b"application/json")
MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]*))?"


@dataclass
class HttpRequest:
    """What a route handler sees of one request: its path parameters, headers (lower-case names) and body."""

    method: str
    path: str
    name: str
    version: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpResponse:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[["RestFrontEnd", HttpRequest], Awaitable[HttpResponse]]


def json_response(value: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, codec.dump_json(value), (JSON,))


def error_response(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpResponse:
    return HttpResponse(status, codec.dump_json({"error": message}), (JSON, *headers))


class _Route:
    def __init__(self, method: str, pattern: str, handler: Handler) -> None:
        self.method = method
        self.pattern = re.compile(f"^{pattern}$")
        self.handler = handler


class RestFrontEnd:
    """The ASGI application; one instance serves every connection, on the event loop the data plane runs on."""

    def __init__(self, plane, *, token: str | None = None) -> None:
        self.plane = plane
        self._expected_authorization = f"Bearer {token}".encode() if token else None
        # Order matters where Triton's paths overlap: /v2/models/stats is the statistics of every model.
        self._routes = [
            _Route("GET", "/v2/health/live", RestFrontEnd.server_live),
            _Route("GET", "/v2/health/ready", RestFrontEnd.server_ready),
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
        ]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan and websocket scopes: nothing to do
            return
        try:
            response = await self._respond(scope, receive)
        except ServingError as error:
            response = error_response(HTTP_STATUS[error.status], error.message)
        except Exception as error:  # one request never takes the server down; say what happened, once
            log.exception("%s %s failed", scope.get("method"), scope.get("path", "")[:200])
            response = error_response(500, f"internal error: {error!r}"[:500])
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [*response.headers, (b"content-length", str(len(response.body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: dict, receive: Callable) -> HttpResponse:
        path = scope["path"]
        method = scope["method"]
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self._expected_authorization is not None and path not in OPEN_PATHS:
            refusal = self._check_token(headers)
            if refusal is not None:
                return refusal
        matched = [(route, route.pattern.match(path)) for route in self._routes]
        matched = [(route, match) for route, match in matched if match]
        if not matched:
            return error_response(404, f"no route {path[:200]!r}; see the Open Inference Protocol's /v2 paths")
        for route, match in matched:
            if route.method == method:
                break
        else:
            allowed = ", ".join(sorted({route.method for route, _ in matched}))
            return error_response(405, f"{method} is not allowed on {path[:200]}", ((b"allow", allowed.encode()),))
        body = await _read_body(receive, headers) if method == "POST" else b""
        groups = match.groupdict()
        request = HttpRequest(method, path, groups.get("name") or "", groups.get("version") or "", headers, body)
        return await route.handler(self, request)

    def _check_token(self, headers: dict[str, str]) -> HttpResponse | None:
        given = headers.get("authorization")
        challenge = ((b"www-authenticate", b'Bearer realm="buildsys-serving"'),)
        if given is None:
            return error_response(401, "missing 'Authorization: Bearer <token>' header", challenge)
        if not hmac.compare_digest(given.encode("latin-1"), self._expected_authorization):
            return error_response(401, "invalid bearer token", challenge)
        return None


async def _read_body(receive: Callable, headers: dict[str, str]) -> bytes:
    """The whole request body, refused past ``MAX_BODY_BYTES`` before it is all read when the length is known."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > codec.MAX_BODY_BYTES:
        raise ServingError(Status.INVALID_ARGUMENT, f"the body is {declared} bytes; the limit is {codec.MAX_BODY_BYTES}")
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
    body = b"".join(chunks)
    return codec.decompress(body, headers.get("content-encoding"))
