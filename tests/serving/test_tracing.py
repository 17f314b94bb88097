"""Triton's trace extension: the settings in process (startup flags, sampling by rate and count, numbered files and
the file written at shutdown, a model's own settings over the global ones, a change checked whole), traced
requests merged into one model call, and a real server whose requests clients trace with tritonclient.grpc and
tritonclient.http, read back from the trace file."""

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving import tracing
from serving.errors import ServingError, Status
from serving.tracing import Tracer, TraceSettings
from tests.serving.conftest import images, stream_answers
from tests.serving.test_batching import RecordingModel, hold, make_batcher, rows

# The order of Triton's timestamps in one request that ran, front end's first and last.
REQUEST_ORDER = (
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
)


def finished(tracer: Tracer, model: str = "m", count: int = 1) -> None:
    """Samples ``count`` requests to ``model`` and finishes the traces of those sampled, as a front end does."""
    for _ in range(count):
        trace = tracer.sample(model)
        if trace is not None:
            trace.begin(model, 1, f"r{trace.id}", 10)
            trace.stamp("REQUEST_END", 20)
            tracer.finish(trace)


def read_traces(path: Path) -> dict[str, dict]:
    """A trace file's traces by request id (or trace id): model, version, timestamps by name, tensors by name."""
    records = json.loads(path.read_text())
    by_id: dict[int, dict] = {}
    for record in records:
        trace = by_id.setdefault(record["id"], {"timestamps": {}, "tensors": {}})
        if "model_name" in record:
            trace.update(model=record["model_name"], version=record["model_version"], request=record.get("request_id"))
        for stamp in record.get("timestamps", []):
            trace["timestamps"][stamp["name"]] = stamp["ns"]
        if "tensor" in record:
            trace["tensors"][(record["activity"], record["tensor"]["name"])] = record["tensor"]
    return {trace.get("request") or str(trace_id): trace for trace_id, trace in by_id.items()}


def test_startup_flags_are_tritons_trace_config():
    settings = TraceSettings.from_flags(
        ["triton,file=/tmp/a,b.json", "level=TENSORS", "level=TIMESTAMPS", "rate=5", "count=-1",
         "triton,log-frequency=10", "mode=triton"]
    )  # fmt: skip
    assert settings == TraceSettings(("TIMESTAMPS", "TENSORS"), 5, -1, 10, "/tmp/a,b.json")
    assert TraceSettings.from_flags([]) == TraceSettings() and not Tracer().active
    spans = TraceSettings.from_flags(
        ["mode=opentelemetry", "level=TIMESTAMPS", "rate=0", "opentelemetry,url=http://collector:4318/v1/traces",
         "opentelemetry,resource=service.name=digits-server", "opentelemetry,resource=team=vision",
         "opentelemetry,bsp_schedule_delay=100"]
    )  # fmt: skip
    assert (spans.mode, spans.rate, spans.otel.url, spans.otel.bsp_schedule_delay) == (
        "opentelemetry",
        0,
        "http://collector:4318/v1/traces",
        100,
    )
    assert spans.otel.resource == (("service.name", "digits-server"), ("team", "vision"))


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["level=TIMESTAMPS"], "there is no trace file"),
        (["triton,file=t.json", "level=LOUD"], "unknown trace level 'LOUD'"),
        (["triton,file=t.json", "level=OFF", "level=TIMESTAMPS"], "OFF cannot be given with other levels"),
        (["triton,file=t.json", "level=TIMESTAMPS", "rate=0"], "trace_rate must be at least 1"),
        (["rate=-1"], "--trace-config rate=-1: expected an integer from 0 to 4294967295"),
        (["count=-2"], "expected an integer from -1"),
        (["zipkin,url=http://collector"], "the trace modes are triton (trace files) and opentelemetry"),
        (["mode=jaeger"], "the trace modes are triton"),
        (["level"], "expected [MODE,]SETTING=VALUE"),
        (["mode=opentelemetry", "level=TENSORS"], "level TENSORS is for trace files (mode triton)"),
        (["opentelemetry,bsp_max_export_batch_size=99", "opentelemetry,bsp_max_queue_size=10"], "must not exceed"),
        (["opentelemetry,resource=team"], "expected opentelemetry,resource=KEY=VALUE"),
        (["opentelemetry,bsp_schedule_delay=0"], "expected an integer from 1"),
        (["speed=3"], "unknown setting"),
    ],
)
def test_startup_flags_that_cannot_trace_are_refused_in_one_line(flags, words):
    with pytest.raises(ValueError, match=r".") as raised:
        TraceSettings.from_flags(flags)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_one_request_in_rate_is_traced_while_the_count_lasts_then_they_go_to_a_numbered_file(tmp_path):
    path = tmp_path / "trace.json"
    tracer = Tracer(TraceSettings(("TIMESTAMPS",), rate=3, count=2, file=str(path)))
    sampled = [tracer.sample("m") for _ in range(9)]
    assert [index for index, trace in enumerate(sampled) if trace] == [2, 5]
    assert not tracer.active and tracer.settings()["trace_count"] == "0"
    first, second = (trace for trace in sampled if trace)
    for trace in (first, second):
        trace.begin("m", 3, "", 100)
        trace.stamp("REQUEST_END", 200)
    tracer.finish(first)
    assert not list(tmp_path.iterdir()), "written only once the count's last trace is in"
    tracer.finish(second)
    traces = read_traces(tmp_path / "trace.json.0")
    assert sorted(traces) == [str(first.id), str(second.id)]
    assert traces[str(first.id)] == {
        "model": "m", "version": 3, "request": None, "timestamps": {"REQUEST_START": 100, "REQUEST_END": 200},
        "tensors": {},
    }  # fmt: skip
    tracer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json.0"], "nothing half-written left behind"


def test_log_frequency_writes_numbered_files_and_zero_holds_the_traces_for_the_file_at_shutdown(tmp_path):
    numbered = Tracer(TraceSettings(("TIMESTAMPS",), rate=1, log_frequency=2, file=str(tmp_path / "n.json")))
    finished(numbered, count=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json.0", "n.json.1"]
    numbered.close()
    assert [len(read_traces(tmp_path / f"n.json.{i}")) for i in range(3)] == [2, 2, 1]
    held = Tracer(TraceSettings(("TIMESTAMPS",), rate=1, file=str(tmp_path / "h.json")))
    finished(held, count=3)
    trace = held.sample("m")  # a request for a model that is not loaded: counted, never written
    held.finish(trace)
    assert not (tmp_path / "h.json").exists()
    held.close()
    assert sorted(read_traces(tmp_path / "h.json")) == ["r1", "r2", "r3"]


def test_past_the_bound_of_held_traces_they_go_to_a_numbered_file_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tracing, "MAX_HELD_TRACES", 3)
    tracer = Tracer(TraceSettings(("TIMESTAMPS",), rate=1, file=str(tmp_path / "t.json")))
    finished(tracer, count=9)
    tracer.close()
    assert [len(read_traces(tmp_path / name)) for name in ("t.json.0", "t.json.1", "t.json")] == [4, 4, 1]
    assert len(caplog.records) == 1 and "more than 3 traces held" in caplog.text


def test_a_model_follows_the_global_settings_except_where_it_has_its_own(tmp_path):
    tracer = Tracer(TraceSettings(file=str(tmp_path / "t.json")))
    on = tracer.update("", {"trace_level": ["TENSORS", "TIMESTAMPS"], "trace_rate": ["1"]})
    assert on == {
        "trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
        "trace_file": str(tmp_path / "t.json"), "trace_mode": "triton",
    }  # fmt: skip
    own = tracer.update("a", {"trace_rate": ["2"], "trace_count": ["5"]})
    assert (own["trace_rate"], own["trace_level"]) == ("2", ["TIMESTAMPS", "TENSORS"])
    assert tracer.settings("b") == tracer.settings("") and tracer.active
    tracer.update("", {"trace_level": ["OFF"]})  # what model 'a' does not set itself follows
    assert tracer.settings("a")["trace_level"] == ["OFF"] and tracer.settings("a")["trace_rate"] == "2"
    assert not tracer.active
    tracer.update("", {"trace_level": ["TIMESTAMPS"]})
    finished(tracer, "a", count=4)
    assert tracer.settings("a")["trace_count"] == "3", "two of four sampled at rate 2"
    assert tracer.update("a", {"trace_rate": ["1"]})["trace_count"] == "3", "a count left alone goes on"
    assert tracer.update("a", {"trace_rate": None, "trace_count": None}) == tracer.settings("")
    assert tracer.update("", {"trace_level": None, "trace_rate": None})["trace_level"] == ["OFF"], "startup's"


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        (
            {"trace_level": ["TIMESTAMPS"], "trace_rate": ["0"]},
            Status.INVALID_ARGUMENT,
            "trace_rate must be at least 1",
        ),
        ({"trace_level": ["TIMESTAMPS"], "trace_file": ["/etc/x"]}, Status.UNIMPLEMENTED, "cannot be changed over"),
        ({"trace_mode": ["opentelemetry"]}, Status.INVALID_ARGUMENT, "trace_mode is chosen at startup"),
        ({"trace_rate": ["1", "2"]}, Status.INVALID_ARGUMENT, "trace_rate: expected one value, got 2"),
        ({"trace_count": ["-5"]}, Status.INVALID_ARGUMENT, "trace_count: expected an integer from -1"),
        ({"trace_rate": ["9" * 5000]}, Status.INVALID_ARGUMENT, "trace_rate: expected an integer from 0"),
        ({"log_frequency": ["often"]}, Status.INVALID_ARGUMENT, "log_frequency: expected an integer"),
        ({"trace_level": ["TIMESTAMPS", "OFF"]}, Status.INVALID_ARGUMENT, "OFF cannot be given with other levels"),
        ({"trace_level": ["TIMESTAMPS"], "trace_speed": ["1"]}, Status.INVALID_ARGUMENT, "unknown trace setting"),
    ],
)
def test_a_change_with_one_bad_setting_changes_nothing(tmp_path, changes, status, words):
    tracer = Tracer(TraceSettings(file=str(tmp_path / "t.json")))
    before = tracer.settings()
    with pytest.raises(ServingError) as raised:
        tracer.update("", changes)
    assert raised.value.status is status and words in raised.value.message
    assert tracer.settings() == before and not tracer.active


def test_without_a_trace_file_a_client_cannot_turn_tracing_on():
    with pytest.raises(ServingError, match="there is no trace file: start the server with --trace-config"):
        Tracer().update("digits", {"trace_level": ["TIMESTAMPS"]})


def test_a_trace_file_that_cannot_be_written_costs_its_traces_and_one_log_line(tmp_path, caplog):
    (tmp_path / "not a folder").write_text("a file where the trace file's folder should be")
    trace_file = tmp_path / "not a folder" / "t.json"
    tracer = Tracer(TraceSettings(("TIMESTAMPS",), rate=1, log_frequency=1, file=str(trace_file)))
    finished(tracer, count=3)
    assert tracer.active and len(caplog.records) == 1
    assert "cannot write trace file" in caplog.text and "1 trace(s) lost" in caplog.text


def test_traced_requests_merged_into_one_call_share_its_times_in_order():
    tracer = Tracer(TraceSettings(("TIMESTAMPS",), rate=1, file="unused.json"))

    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=64, max_queue_delay_us=100_000)
        busy = await hold(model, batcher)
        traces = [tracer.sample("m") for _ in range(3)]
        for trace in traces:
            trace.begin("m", 1, "", time.monotonic_ns())
        waiting = [asyncio.create_task(batcher.infer(rows(i, 1), 1, trace=trace)) for i, trace in enumerate(traces)]
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.gather(busy, *waiting)
        await batcher.close()
        return model, traces

    model, traces = asyncio.run(scenario())
    assert model.batch_sizes == [1, 3]
    records = [[json.loads(record) for record in trace.records()[1:]] for trace in traces]
    stamps = [{r["timestamps"][0]["name"]: r["timestamps"][0]["ns"] for r in trace} for trace in records]
    computed = [[trace_stamps[name] for name in REQUEST_ORDER[2:6]] for trace_stamps in stamps]
    assert computed[0] == computed[1] == computed[2], "one call: the same compute times for each of its requests"
    assert computed[0] == sorted(computed[0]) and max(s["REQUEST_START"] for s in stamps) < computed[0][0]


def test_clients_trace_a_live_servers_requests_over_both_front_ends_into_the_trace_file(
    start_server, digits_repo, tmp_path
):
    path = tmp_path / "trace.json"
    server = start_server(digits_repo, "--trace-config", f"triton,file={path}")
    batch = images(2, seed=4)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert "trace" in client.get_server_metadata().extensions
        assert client.get_trace_settings(as_json=True)["settings"]["trace_level"] == {"value": ["OFF"]}
        on = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "1"})
        assert list(on.settings["trace_level"].value) == ["TIMESTAMPS", "TENSORS"]
        assert list(on.settings["trace_file"].value) == [str(path)]
        with pytest.raises(InferenceServerException) as raised:
            client.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
        with pytest.raises(InferenceServerException) as raised:
            client.get_trace_settings(model_name="digitz")
        assert raised.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'digitz'" in str(raised.value)
        tensor = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        client.infer("digits", [tensor], request_id="grpc-1")
    [(result, error)] = stream_answers(server.url, [("digits", batch, "stream-1")])
    assert error is None
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)  # binary tensor data
        http.infer("digits", [tensor], request_id="http-1")
        wrong = httpclient.InferInput("image", [2, 8, 9], "UINT8")
        wrong.set_data_from_numpy(np.zeros((2, 8, 9), np.uint8))
        with pytest.raises(InferenceServerException):
            http.infer("digits", [wrong], request_id="bad-1")
        own = http.update_trace_settings(model_name="digits", settings={"log_frequency": "2"})
        assert own["log_frequency"] == "2" and own["trace_level"] == ["TIMESTAMPS", "TENSORS"]
        for request_id in ("numbered-1", "numbered-2"):
            http.infer("digits", [tensor], request_id=request_id)
        numbered = Path(f"{path}.0")
        deadline = time.monotonic() + 10  # a trace ends once its answer is sent, a moment after the client has it
        while not numbered.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(read_traces(numbered)) == ["numbered-1", "numbered-2"], "written while serving"
        assert http.update_trace_settings(model_name="digits", settings={"log_frequency": None}) == (
            http.get_trace_settings()
        )
        with pytest.raises(InferenceServerException) as raised:
            http.update_trace_settings(settings={"trace_rate": True})
        assert raised.value.status() == "400" and "must be a string" in str(raised.value)
    finally:
        http.close()
    assert not path.exists(), "log_frequency 0: the global settings' traces are written at shutdown"
    assert server.stop() == 0
    traces = read_traces(path)
    assert sorted(traces) == ["bad-1", "grpc-1", "http-1", "stream-1"]
    for request_id, front_end in (("grpc-1", "GRPC"), ("stream-1", "GRPC"), ("http-1", "HTTP")):
        trace = traces[request_id]
        assert (trace["model"], trace["version"]) == ("digits", 1)
        stamps = trace["timestamps"]
        received = ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END") if front_end == "GRPC" else (
            "HTTP_RECV_START", "HTTP_RECV_END")  # fmt: skip
        order = (*received, *REQUEST_ORDER, f"{front_end}_SEND_START", f"{front_end}_SEND_END")
        assert sorted(stamps) == sorted(order), request_id
        assert [stamps[name] for name in order] == sorted(stamps.values()), f"{request_id}: {stamps}"
        queued = trace["tensors"][("TENSOR_QUEUE_INPUT", "image")]
        assert queued == {
            "name": "image",
            "data": ",".join(map(str, batch.ravel())),
            "shape": "2,8,8",
            "dtype": "UINT8",
        }
        output = trace["tensors"][("TENSOR_BACKEND_OUTPUT", "probabilities")]
        assert (output["shape"], output["dtype"]) == ("2,10", "FP32")
        assert np.allclose(np.array(output["data"].split(","), float).sum(), 2.0, atol=1e-4)
    refused = traces["bad-1"]["timestamps"]
    assert set(refused) == {"HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "REQUEST_END"}, "it ran nothing"
