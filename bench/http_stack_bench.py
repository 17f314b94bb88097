"""Which HTTP stack should carry the REST front end: requests/s of the same two handlers on each candidate.

Each candidate server runs in its own process and answers ``GET /v2/health/live`` (an empty 200) and
``POST /v2/models/digits/infer`` with Triton's binary tensor extension (a JSON header of
``Inference-Header-Content-Length`` bytes, then the raw tensor; the answer is a JSON header plus the tensor echoed
back), so what is measured is the stack's own cost per request: parsing, routing, writing. The ``serving`` row is
the real thing for comparison: ``python -m serving`` (the REST front end on the data plane) answering the same
requests with the tests' tiny 8x8 classifier, so its infer column includes batching and an ONNX Runtime call. The
load comes from a raw-socket HTTP/1.1 keep-alive client (``--connections`` connections, one request in flight on
each) in another process, so the client's own cost is as small as it can be and is the same for every candidate.

Examples:
    python bench/http_stack_bench.py                 # every installed candidate, 3 s each
    python bench/http_stack_bench.py --duration 10 --connections 16 --stacks uvicorn-asgi aiohttp serving
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

INFER_HEADER = json.dumps(
    {"inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 64}}]}
).encode()
INFER_BODY = INFER_HEADER + bytes(64)
ANSWER_HEADER = json.dumps(
    {"outputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 64}}]}
).encode()


def _infer_answer(body: bytes, header_length: int) -> bytes:
    json.loads(body[:header_length])
    return ANSWER_HEADER + body[header_length:]


def run_uvicorn_asgi(port: int, http: str) -> None:
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/v2/health/live":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = dict(scope["headers"])
        answer = _infer_answer(body, int(headers[b"inference-header-content-length"]))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", str(len(ANSWER_HEADER)).encode()),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, http=http, log_level="warning", access_log=False, lifespan="off")


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    async def live(request: web.Request) -> web.Response:
        return web.Response()

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        answer = _infer_answer(body, int(request.headers["Inference-Header-Content-Length"]))
        return web.Response(
            body=answer,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(ANSWER_HEADER))},
        )

    app = web.Application()
    app.router.add_get("/v2/health/live", live)
    app.router.add_post("/v2/models/digits/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def run_serving(port: int) -> None:
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.serving.conftest import free_port, publish_version

    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "models"
        publish_version(repo, "digits", 1, seed=1)
        command = [sys.executable, "-m", "serving", "--repository", str(repo), "--http-port", str(port)]
        command += ["--port", str(free_port()), "--poll-interval", "0", "--log-level", "warning"]
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
        server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(0))  # so that the server is stopped too
        try:
            server.wait()
        finally:
            server.terminate()
            server.wait()


STACKS = {
    "uvicorn-asgi": lambda port: run_uvicorn_asgi(port, "httptools"),
    "uvicorn-h11": lambda port: run_uvicorn_asgi(port, "h11"),
    "aiohttp": run_aiohttp,
    "serving": run_serving,
}


def _request(kind: str) -> bytes:
    if kind == "live":
        return b"GET /v2/health/live HTTP/1.1\r\nHost: b\r\n\r\n"
    return (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(INFER_HEADER), len(INFER_BODY))
    ) + INFER_BODY


async def _connection(port: int, payload: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < stop_at:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        counts[0] += 1
    writer.close()


def _load(port: int, kind: str, connections: int, duration_s: float, result) -> None:
    counts = [0]

    async def main() -> None:
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(*(_connection(port, _request(kind), stop_at, counts) for _ in range(connections)))

    asyncio.run(main())
    result.put(counts[0] / duration_s)


def _wait_listening(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"http_stack_bench: nothing listens on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=sorted(STACKS))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    print(f"{'stack':<14} {'live req/s':>11} {'infer req/s':>12}  ({args.connections} connections)")
    for name in args.stacks:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = multiprocessing.Process(target=STACKS[name], args=(port,), daemon=True)
        server.start()
        try:
            _wait_listening(port)
            rates = []
            for kind in ("live", "infer"):
                result = multiprocessing.Queue()
                client = multiprocessing.Process(
                    target=_load, args=(port, kind, args.connections, args.duration, result)
                )
                client.start()
                rates.append(result.get())
                client.join()
            print(f"{name:<14} {rates[0]:>11,.0f} {rates[1]:>12,.0f}")
        finally:
            server.terminate()
            server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
