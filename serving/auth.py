"""Bearer-token authentication for every RPC except the health service.

The token is compared in constant time. Health stays open so that load balancers and orchestrators can probe
without the secret; everything else (inference, metadata, repository, reflection) needs
``authorization: Bearer <token>``.
"""

import hmac

import grpc

OPEN_SERVICE_PREFIX = "/grpc.health.v1.Health/"


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only answers UNAUTHENTICATED."""

    def deny(request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICE_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        if given is None:
            return _refusal(handler, "missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(str(given).encode(), self._expected):
            return _refusal(handler, "invalid bearer token")
        return handler
