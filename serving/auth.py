"""Bearer-token authentication: the check every front end shares, and the grpc.aio interceptor that applies it.

The token is compared in constant time. Health stays open so that load balancers and orchestrators can probe
without the secret; everything else (inference, metadata, repository, reflection) needs
``authorization: Bearer <token>``.
"""

import hmac

import grpc

OPEN_SERVICE_PREFIX = "/grpc.health.v1.Health/"


class BearerToken:
    """The expected ``authorization`` value; ``refusal`` says why a given value is not it."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def refusal(self, authorization: str | bytes | None) -> str | None:
        """None when ``authorization`` carries the token, else the one-line reason to answer UNAUTHENTICATED."""
        if authorization is None:
            return "missing 'authorization: Bearer <token>' metadata"
        given = authorization if isinstance(authorization, bytes) else authorization.encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._expected):
            return "invalid bearer token"
        return None


def _refusal_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only answers UNAUTHENTICATED."""

    async def deny(request_or_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: BearerToken) -> None:
        self._token = token

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICE_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        refusal = self._token.refusal(metadata.get("authorization"))
        return handler if refusal is None else _refusal_handler(handler, refusal)
