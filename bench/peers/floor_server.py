"""The transport floor that bench/serve_bench.py measures as "floor-grpc" and "floor-rest": the same stacks as
`buildsys serve` (grpc.aio on uvloop; uvicorn with httptools) answering every inference request with one fixed,
pre-encoded answer, without decoding the request or running a model.

What a server costs per request can never be less than what its transport costs, so this is the physical ceiling
for the front end on the machine at hand: `buildsys serve`'s server CPU per request minus this one is what its own
code (decode, validate, batch, run, encode) adds. Its answers are not checked (they are the same ten zeros for
every request); readiness says yes for any model.

`--grpc-stack` picks another gRPC stack, which bench/serve_bench.py measures as `floor-grpc-sync` (grpcio's
synchronous server, a thread pool) and `floor-grpclib` (pure-Python HTTP/2 on asyncio; needs the grpclib package).

Usage: python floor_server.py --grpc-port 8001 [--grpc-stack aio|sync|grpclib] | --http-port 8000
"""

import argparse
import json
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import uvicorn
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from serving.protocol import grpc_service_pb2 as pb  # noqa: E402 - the checkout's copy of the protocol messages

LOOPBACK = "127.0.0.1"
SERVICE = "inference.GRPCInferenceService"
ANSWER = np.zeros((1, 10), dtype=np.float32)


def fixed_grpc_answers() -> dict[str, bytes]:
    infer = pb.ModelInferResponse(model_name="floor", model_version="1")
    infer.outputs.add(name="probabilities", datatype="FP32", shape=list(ANSWER.shape))
    infer.raw_output_contents.append(ANSWER.tobytes())
    return {
        "ModelInfer": infer.SerializeToString(),
        "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
        "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
    }


async def serve_grpc(port: int) -> None:
    def answer_with(payload: bytes) -> grpc.RpcMethodHandler:
        async def answer(request: bytes, context) -> bytes:
            return payload

        return grpc.unary_unary_rpc_method_handler(answer)  # no (de)serializers: bytes in, bytes out

    handlers = {name: answer_with(payload) for name, payload in fixed_grpc_answers().items()}
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_grpc_sync(port: int) -> None:
    """grpcio's synchronous server: C-core hands each call to a pool thread, with no event loop in between."""

    def answer_with(payload: bytes) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: payload)

    handlers = {name: answer_with(payload) for name, payload in fixed_grpc_answers().items()}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    server.start()
    server.wait_for_termination()


async def serve_grpclib(port: int) -> None:
    """grpclib: gRPC over the h2 package's HTTP/2 on the event loop itself (no C-core, no poller thread)."""
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server

    class RawBytes(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message: bytes, message_type: type) -> bytes:
            return message

        def decode(self, data: bytes, message_type: type) -> bytes:
            return data

    def answer_with(payload: bytes) -> Handler:
        async def answer(stream) -> None:
            await stream.recv_message()
            await stream.send_message(payload)

        return Handler(answer, Cardinality.UNARY_UNARY, bytes, bytes)

    class Floor:
        def __mapping__(self) -> dict[str, Handler]:
            return {f"/{SERVICE}/{name}": answer_with(payload) for name, payload in fixed_grpc_answers().items()}

    server = Server([Floor()], codec=RawBytes())
    await server.start(LOOPBACK, port)
    await server.wait_closed()


def rest_app():
    """A raw ASGI app: reads the whole body (as any server must), answers Triton's binary-output form."""
    header = json.dumps(
        {
            "model_name": "floor",
            "model_version": "1",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(ANSWER.shape),
                    "parameters": {"binary_data_size": ANSWER.nbytes},
                }
            ],
        }
    ).encode()
    infer_headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
        (b"content-length", str(len(header) + ANSWER.nbytes).encode()),
    ]
    infer_body = header + ANSWER.tobytes()
    ready_headers = [(b"content-length", b"0")]

    async def app(scope, receive, send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if scope["method"] == "POST":
            await send({"type": "http.response.start", "status": 200, "headers": infer_headers})
            await send({"type": "http.response.body", "body": infer_body})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": ready_headers})
            await send({"type": "http.response.body", "body": b""})

    return app


async def serve_rest(port: int) -> None:
    config = uvicorn.Config(
        rest_app(), host=LOOPBACK, port=port, http="httptools", lifespan="off", access_log=False,
        log_level="warning", server_header=False,
    )  # fmt: skip
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    transport = parser.add_mutually_exclusive_group(required=True)
    transport.add_argument("--grpc-port", type=int)
    transport.add_argument("--http-port", type=int)
    parser.add_argument("--grpc-stack", choices=("aio", "sync", "grpclib"), default="aio")
    args = parser.parse_args()
    if args.http_port:
        uvloop.run(serve_rest(args.http_port))
    elif args.grpc_stack == "sync":
        serve_grpc_sync(args.grpc_port)
    else:
        uvloop.run(serve_grpclib(args.grpc_port) if args.grpc_stack == "grpclib" else serve_grpc(args.grpc_port))


if __name__ == "__main__":
    main()
