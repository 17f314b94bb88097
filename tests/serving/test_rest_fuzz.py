"""Hypothesis fuzz of the REST front end of a real server: mutated JSON bodies (inputs and outputs in a registered
shared memory region too), binary header lengths, headers, methods and paths, shared memory registrations, and
bytes on the socket that are barely HTTP; every answer must be a success, a client error, 503 or 501 (a feature
the server refuses: CUDA shared memory), never 500, every error a one-line JSON body, and the server must stay live
without flooding its log. ``bench/fuzz_serve.py`` runs the same strategies for 10,000+ examples."""

import http.client
import json
import socket
import urllib.parse

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import images, shared_memory_object
from tests.serving.test_grpc_frontend import (
    FUZZ_REGION,
    FUZZ_REGION_BYTES,
    fuzz_server_flags,
    trace_setting_changes,
)

IMAGE = images(1, seed=4)
VALID_HEADER = {
    "id": "fuzz",
    "parameters": {"binary_data_output": True},
    "inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 64}}],
    "outputs": [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": False}}],
}
PATHS = [
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/digits",
    "/v2/models/digits/versions/1",
    "/v2/models/digits/ready",
    "/v2/models/digits/config",
    "/v2/models/digits/stats",
    "/v2/models/stats",
    "/v2/models/digits/infer",
    "/v2/models/digits/versions/1/infer",
    "/v2/repository/index",
    "/v2/repository/models/digits/load",
    "/v2/logging",
    "/v2/systemsharedmemory/status",
    f"/v2/systemsharedmemory/region/{FUZZ_REGION}/status",
    "/v2/systemsharedmemory/region/fuzzed/register",
    "/v2/systemsharedmemory/region/fuzzed/unregister",
    "/v2/cudasharedmemory/status",
    "/v2/cudasharedmemory/region/fuzzed/register",
    "/v2/cudasharedmemory/unregister",
    "/v2/trace/setting",
    "/v2/models/digits/trace/setting",
]
SHARED_MEMORY_KEYS = ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@st.composite
def infer_bodies(draw) -> tuple[bytes, dict[str, str]]:
    """A valid binary infer request with one JSON field replaced, or its bytes edited, with its headers."""
    header = json.loads(json.dumps(VALID_HEADER))
    image = IMAGE.tobytes()
    if draw(st.integers(0, 3)) == 0:  # the input in the fuzz's shared memory region
        header["inputs"][0]["parameters"] = {"shared_memory_region": FUZZ_REGION, "shared_memory_byte_size": 64}
        image = b""
    if draw(st.integers(0, 3)) == 0:  # the output into it
        header["outputs"][0]["parameters"] = {
            "shared_memory_region": FUZZ_REGION,
            "shared_memory_byte_size": 40,
            "shared_memory_offset": draw(st.sampled_from([64, 0, FUZZ_REGION_BYTES - 40, FUZZ_REGION_BYTES])),
        }
    targets = [header, header["parameters"], header["inputs"][0], header["inputs"][0]["parameters"]]
    targets += [header["outputs"][0], header["outputs"][0]["parameters"]]
    target = draw(st.sampled_from(targets))
    if draw(st.booleans()):
        keys = [*target, "data", "binary_data_size", "timeout", "priority", "classification", *SHARED_MEMORY_KEYS]
        target[draw(st.sampled_from(keys))] = draw(json_values | st.integers(0, FUZZ_REGION_BYTES + 8))
    text = json.dumps(header).encode()
    body = text + image
    if draw(st.booleans()):
        start = draw(st.integers(0, len(body)))
        end = draw(st.integers(start, min(len(body), start + 30)))
        body = body[:start] + draw(st.binary(max_size=12)) + body[end:]
    headers = {"Inference-Header-Content-Length": str(len(text))}
    choice = draw(st.sampled_from(["keep", "drop", "shift", "text"]))
    if choice == "drop":
        del headers["Inference-Header-Content-Length"]
    elif choice == "shift":
        headers["Inference-Header-Content-Length"] = str(len(text) + draw(st.integers(-80, 80)))
    elif choice == "text":
        headers["Inference-Header-Content-Length"] = draw(header_text)
    if draw(st.integers(0, 9)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity"]) | header_text)
    return body, headers


@st.composite
def http_requests(draw) -> tuple[str, str, bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["infer", "infer", "infer", "path", "body", "trace", "unload"]))
    if kind == "infer":
        body, headers = draw(infer_bodies())
        return "POST", draw(st.sampled_from(PATHS[9:11])), body, headers
    if kind == "trace":
        model, changes = draw(trace_setting_changes())
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}/trace/setting" if model else "/v2/trace/setting"
        values = {name: value[0] if value and draw(st.booleans()) else value for name, value in changes.items()}
        return draw(st.sampled_from(["GET", "POST"])), path, json.dumps(values).encode(), {}
    if kind == "unload":  # of a model that is not there: the parameters are checked first
        parameters = draw(
            st.dictionaries(st.sampled_from(["unload_dependents"]) | st.text(max_size=8), json_values, max_size=2)
        )
        body = json.dumps({"parameters": parameters} if draw(st.booleans()) else parameters).encode()
        return "POST", "/v2/repository/models/nothing_here/unload", body, {}
    if kind == "path":
        segments = draw(
            st.lists(st.text(max_size=12) | st.sampled_from(["v2", "models", "digits", "versions"]), max_size=6)
        )
        path = "/" + urllib.parse.quote("/".join(segments), safe="/")
        return draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"])), path, b"", {}
    body = draw(st.binary(max_size=80) | json_values.map(lambda value: json.dumps(value).encode()))
    return draw(st.sampled_from(["GET", "POST"])), draw(st.sampled_from(PATHS)), body, {}


def raw_requests() -> st.SearchStrategy[bytes]:
    """Bytes on the socket: a valid HTTP request with a slice replaced, or anything at all."""
    header = json.dumps(VALID_HEADER).encode()
    body = header + IMAGE.tobytes()
    valid = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: fuzz\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(header), len(body))
    ) + body

    @st.composite
    def edited(draw) -> bytes:
        start = draw(st.integers(0, len(valid)))
        end = draw(st.integers(start, min(len(valid), start + 30)))
        return valid[:start] + draw(st.binary(max_size=12)) + valid[end:]

    return edited() | st.binary(max_size=120)


def check_raw_answer(url: str, data: bytes) -> int:
    """Sends ``data`` and closes the sending side; returns the answer's status (0 when the server just closed)."""
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer:
        return 0
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    status = int(answer[9:12])
    assert status < 500 or status == 503, answer[:300]
    return status


def check_answer(url: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    host, port = url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    status = response.status
    assert 200 <= status < 300 or 400 <= status < 500 or status in (501, 503), f"{status} {content[:300]!r} for {path}"
    if status >= 400 and content:
        error = json.loads(content)["error"]
        assert isinstance(error, str) and "\n" not in error
    return status


def fuzz_rest(url: str, max_examples: int) -> dict[int, int]:
    """Sends ``max_examples`` fuzzed requests and as many fuzzed byte strings; returns how often each status code
    answered (0: the server closed the connection without an answer, as it does for a cut-off body). The server
    runs with ``fuzz_server_flags``: some requests use a region registered here."""
    with shared_memory_object(FUZZ_REGION_BYTES) as (key, _):
        register = json.dumps({"key": key, "offset": 0, "byte_size": FUZZ_REGION_BYTES}).encode()
        assert check_answer(url, "POST", f"/v2/systemsharedmemory/region/{FUZZ_REGION}/register", register, {}) == 200
        seen = _fuzz_rest(url, max_examples)
        assert check_answer(url, "POST", "/v2/systemsharedmemory/unregister", b"", {}) == 200
    return seen


def _fuzz_rest(url: str, max_examples: int) -> dict[int, int]:
    seen: dict[int, int] = {}
    bounded = settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=max_examples <= 500,
        suppress_health_check=list(HealthCheck),
        database=None,
    )

    @bounded
    @given(http_requests())
    def requests(request):
        status = check_answer(url, *request)
        seen[status] = seen.get(status, 0) + 1

    @bounded
    @given(raw_requests())
    def raw(data):
        status = check_raw_answer(url, data)
        seen[status] = seen.get(status, 0) + 1

    requests()
    raw()
    assert check_answer(url, "GET", "/v2/health/live", b"", {}) == 200
    headers = {"Inference-Header-Content-Length": str(len(json.dumps(VALID_HEADER)))}
    assert check_answer(url, "POST", PATHS[9], json.dumps(VALID_HEADER).encode() + IMAGE.tobytes(), headers) == 200
    return seen


def test_fuzzed_http_requests_get_only_success_or_client_errors_and_the_server_stays_live(
    start_server, digits_repo, tmp_path
):
    server = start_server(digits_repo, *fuzz_server_flags(tmp_path))
    seen = fuzz_rest(server.http_url, max_examples=200)
    assert server.stop() == 0, server.log()
    written = [json.loads(path.read_text()) for path in tmp_path.glob("trace.json*")]
    assert written and all(written), "traced requests' files, each a whole JSON array"
    assert seen.get(200) and seen.get(400) and seen.get(404), seen
    log_lines = server.log().splitlines()
    assert len(log_lines) < 20, "a flood of bad requests must not flood the log:\n" + "\n".join(log_lines[-30:])
    assert "Traceback" not in server.log()
