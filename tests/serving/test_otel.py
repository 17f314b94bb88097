"""The trace extension's opentelemetry mode against a real OTLP/HTTP receiver: Triton's three spans with their
events and attributes, a caller's W3C trace context joined (and forcing the trace), the settings a client sees and
may change, and a live server whose gRPC and REST requests arrive at the receiver as spans."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from tritonclient.utils import InferenceServerException

from serving.errors import ServingError
from serving.tracing import OtelOptions, Tracer, TraceSettings
from tests.serving.conftest import images

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def traceparent(flags: str = "01") -> str:
    return f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}"


class OtlpReceiver:
    """A collector's OTLP/HTTP trace endpoint on a free local port: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        self.resources: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver._lock:
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                            receiver.resources.extend(attributes for _ in scope_spans.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1/traces"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def spans_by_request(spans: list) -> dict[str, dict[str, object]]:
    """The spans of each traced request, by its request id (or its trace id): {"InferRequest": ..., "model":
    ..., "compute": ...}."""
    by_id = {span.span_id: span for span in spans}
    requests: dict[str, dict[str, object]] = {}
    for span in spans:
        if span.name in ("InferRequest", "compute"):
            continue
        attributes = {a.key: a.value for a in span.attributes}
        key = attributes["triton.request_id"].string_value if "triton.request_id" in attributes else span.trace_id.hex()
        computes = [s for s in spans if s.name == "compute" and s.parent_span_id == span.span_id]
        requests[key] = {
            "InferRequest": by_id[span.parent_span_id],
            "model": span,
            "compute": next(iter(computes), None),
        }
    return requests


def check_request_spans(request: dict, model: str, front_end: str) -> None:
    """Triton's three spans: a root with the front end's events, the model's span with the request's, the compute
    span with the call's; each inside its parent, all of kind SERVER."""
    root, model_span, compute = request["InferRequest"], request["model"], request["compute"]
    assert model_span.name == model and {s.kind for s in (root, model_span, compute)} == {2}  # SPAN_KIND_SERVER
    assert model_span.trace_id == root.trace_id == compute.trace_id and compute.parent_span_id == model_span.span_id
    assert root.start_time_unix_nano <= model_span.start_time_unix_nano <= compute.start_time_unix_nano
    assert compute.end_time_unix_nano <= model_span.end_time_unix_nano <= root.end_time_unix_nano
    assert [e.name for e in root.events][-2:] == [f"{front_end}_SEND_START", f"{front_end}_SEND_END"]
    assert [e.name for e in model_span.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e.name for e in compute.events] == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                                                 "COMPUTE_END"]  # fmt: skip
    wall_clock = time.time_ns()
    assert wall_clock - 600e9 < root.start_time_unix_nano < wall_clock, "span times are wall-clock times"


def test_a_finished_trace_becomes_tritons_three_spans_and_joins_its_callers_trace(receiver):
    settings = TraceSettings(("TIMESTAMPS",), rate=1, mode="opentelemetry", otel=OtelOptions(url=receiver.url,
                             resource=(("team", "vision"),), bsp_schedule_delay=50))  # fmt: skip
    tracer = Tracer(settings, "test-server")
    for request_id, parent in (("joined", traceparent()), ("alone", None)):
        trace = tracer.sample("digits", parent)
        now = time.monotonic_ns()
        trace.stamp("GRPC_WAITREAD_START", now)
        trace.begin("digits", 3, request_id, now + 10)
        for offset, name in enumerate(["QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                                       "COMPUTE_END", "REQUEST_END", "GRPC_SEND_START"]):  # fmt: skip
            trace.stamp(name, now + 20 + offset)
        tracer.finish(trace, "GRPC_SEND_END")
    tracer.close()
    spans = receiver.wait_for(6)
    requests = spans_by_request(spans)
    assert sorted(requests) == ["alone", "joined"] and len(spans) == 6
    for request in requests.values():
        check_request_spans(request, "digits", "GRPC")
        attributes = {a.key: a.value for a in request["model"].attributes}
        assert attributes["triton.model_name"].string_value == "digits"
        assert attributes["triton.model_version"].int_value == 3
    joined, alone = requests["joined"]["InferRequest"], requests["alone"]["InferRequest"]
    assert joined.trace_id.hex() == CALLER_TRACE and joined.parent_span_id.hex() == CALLER_SPAN
    assert alone.trace_id.hex() != CALLER_TRACE and not alone.parent_span_id
    assert receiver.resources[0]["service.name"] == "test-server" and receiver.resources[0]["team"] == "vision"


def test_a_sampled_trace_context_is_traced_whatever_the_rate_and_an_unsampled_one_is_not(receiver):
    settings = TraceSettings(("TIMESTAMPS",), rate=0, mode="opentelemetry", otel=OtelOptions(url=receiver.url))
    tracer = Tracer(settings)
    try:
        assert tracer.active and tracer.sample("digits") is None
        assert tracer.sample("digits", traceparent("00")) is None, "the caller did not sample it"
        assert tracer.sample("digits", "00-not-a-context") is None
        assert tracer.sample("digits", traceparent("01")) is not None
        assert tracer.settings() == {
            "trace_level": ["TIMESTAMPS"], "trace_rate": "0", "trace_count": "-1", "trace_mode": "opentelemetry",
            "url": receiver.url, "resource": [], "bsp_max_queue_size": "2048", "bsp_schedule_delay": "5000",
            "bsp_max_export_batch_size": "512",
        }  # fmt: skip
        for changes, words in [
            ({"log_frequency": ["10"]}, "log_frequency is for trace files"),
            ({"url": ["http://elsewhere"]}, "url is chosen at startup"),
            ({"trace_level": ["TENSORS"]}, "level TENSORS is for trace files"),
        ]:
            with pytest.raises(ServingError, match=words):
                tracer.update("", changes)
        tracer.update("", {"trace_level": ["OFF"]})
        assert not tracer.active and tracer.sample("digits", traceparent()) is None, "off is off"
    finally:
        tracer.close()


def test_a_live_servers_requests_arrive_at_the_collector_as_spans(start_server, digits_repo, receiver):
    flags = ["mode=opentelemetry", "level=TIMESTAMPS", "rate=0", f"opentelemetry,url={receiver.url}",
             "opentelemetry,bsp_schedule_delay=50"]  # fmt: skip
    server = start_server(digits_repo, *(arg for flag in flags for arg in ("--trace-config", flag)))
    batch = images(1, seed=2)
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        client.infer("digits", [tensor], request_id="grpc-joined", headers={"traceparent": traceparent()})
        client.infer("digits", [tensor], request_id="untraced")  # rate 0: only requests that carry a context
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_mode"] == {"value": ["opentelemetry"]} and settings["url"] == {"value": [receiver.url]}
        with pytest.raises(InferenceServerException) as raised:
            client.update_trace_settings(settings={"log_frequency": "5"})
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("image", [1, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        http.infer("digits", [tensor], request_id="http-joined", headers={"traceparent": traceparent()})
        assert http.update_trace_settings(settings={"trace_rate": "1"})["trace_rate"] == "1"
        http.infer("digits", [tensor], request_id="http-alone")
    finally:
        http.close()
    requests = spans_by_request(receiver.wait_for(9))
    assert sorted(requests) == ["grpc-joined", "http-alone", "http-joined"]
    for request_id, request in requests.items():
        check_request_spans(request, "digits", "GRPC" if request_id.startswith("grpc") else "HTTP")
    for request_id in ("grpc-joined", "http-joined"):
        root = requests[request_id]["InferRequest"]
        assert root.trace_id.hex() == CALLER_TRACE and root.parent_span_id.hex() == CALLER_SPAN
    assert requests["http-alone"]["InferRequest"].trace_id.hex() != CALLER_TRACE
    assert server.stop() == 0 and "Traceback" not in server.log()


def test_a_collector_that_is_down_costs_spans_and_a_log_line_never_a_request(start_server, digits_repo):
    flags = ["mode=opentelemetry", "level=TIMESTAMPS", "rate=1", "opentelemetry,url=http://127.0.0.1:9/v1/traces",
             "opentelemetry,bsp_schedule_delay=50"]  # fmt: skip
    server = start_server(digits_repo, *(arg for flag in flags for arg in ("--trace-config", flag)))
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
        tensor.set_data_from_numpy(images(1, seed=2))
        for _ in range(200):
            client.infer("digits", [tensor])
        server.wait_for_log("opentelemetry")
        time.sleep(1.5)  # the exporter retries meanwhile: a line a second or so, were they let through
    assert server.stop() == 0
    lines = [line for line in server.log().splitlines() if "opentelemetry" in line]
    assert 1 <= len(lines) <= 2 and "Traceback" not in server.log(), "\n".join(lines)
