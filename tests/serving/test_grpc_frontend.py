"""serving.grpc_frontend against a real server: no well-formed request answers INTERNAL, bytes that do not decode
answer INVALID_ARGUMENT with one rate-limited log line, deadlines drop queued requests, and a Hypothesis fuzz of
ModelInfer (mutated messages and mutated bytes, alone and in ModelStreamInfer streams) gets only OK or client-error
statuses while the server stays live. ModelStreamInfer with tritonclient's stream API answers in order, and a failed
request in a stream gets its error and id while the stream goes on.

``fuzz_model_infer`` is also what ``bench/fuzz_serve.py`` runs, with 10,000+ examples.
"""

import json
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from serving.protocol import grpc_service_pb2 as pb
from serving.protocol import grpc_service_pb2_grpc
from tests.serving.conftest import (
    HOLDING_BATCH,
    images,
    infer_request,
    reference_probabilities,
    shared_memory_object,
    stream_answers,
)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# The fuzz runs with a system shared memory region registered under this name (and the server allowing it).
FUZZ_REGION, FUZZ_REGION_BYTES = "fuzz", 4096
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
# What a client may be told; INTERNAL and UNKNOWN are what a well-formed request must never get.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
}
INT64 = st.integers(-(2**63), 2**63 - 1)
DATATYPES = ["UINT8", "FP32", "INT64", "BOOL", "FP16", "UINT64", "INT8", "BYTES", "", "uint8", "COMPLEX64"]
ITEM_SIZES = {"UINT8": 1, "INT8": 1, "BOOL": 1, "FP16": 2, "FP32": 4, "INT64": 8, "UINT64": 8}


def valid_request(batch: int = 1) -> pb.ModelInferRequest:
    return infer_request(images(batch))


@st.composite
def parameters(draw, keys: list[str]) -> dict[str, pb.InferParameter]:
    values = {}
    for key in draw(st.lists(st.sampled_from(keys) | st.text(max_size=12), max_size=3, unique=True)):
        choice = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
        value = {
            "bool_param": st.booleans(),
            "int64_param": INT64 | st.integers(-3, 3),
            "string_param": st.text(max_size=30),
            "double_param": st.floats(allow_nan=True, allow_infinity=True),
            "uint64_param": st.integers(0, 2**64 - 1),
        }[choice]
        values[key] = pb.InferParameter(**{choice: draw(value)})
    return values


@st.composite
def shared_memory_parameters(draw, exact_size: int) -> dict[str, pb.InferParameter]:
    """A tensor's shared memory parameters: often the fuzz region with the tensor's exact size, else anything."""
    sizes = st.sampled_from([exact_size, FUZZ_REGION_BYTES]) | st.integers(0, FUZZ_REGION_BYTES + 8) | INT64
    values = {
        "shared_memory_region": pb.InferParameter(
            string_param=draw(st.sampled_from([FUZZ_REGION, FUZZ_REGION, "nope", ""]) | st.text(max_size=12))
        ),
        "shared_memory_byte_size": pb.InferParameter(int64_param=draw(sizes)),
    }
    if draw(st.booleans()):
        values["shared_memory_offset"] = pb.InferParameter(int64_param=draw(st.integers(0, FUZZ_REGION_BYTES) | INT64))
    mutated = draw(st.lists(st.sampled_from(list(values)), max_size=2, unique=True)) if draw(st.booleans()) else []
    for key in mutated:
        if draw(st.booleans()):
            del values[key]
        else:
            values[key] = draw(parameters([key])).get(key, values[key])
    return values


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    """A ModelInferRequest that starts valid and has any of its fields replaced by something else."""
    request = valid_request(draw(st.integers(1, 4)))
    if draw(st.booleans()):
        request.model_name = draw(st.sampled_from(["", "nope", "../digits", "DIGITS"]) | st.text(max_size=80))
    if draw(st.booleans()):
        request.model_version = draw(
            st.sampled_from(["1", "2", "0", "-1", "01", "1.0", "9" * 5000, "1" * 19]) | st.text(max_size=30)
        )
    if draw(st.booleans()):
        request.id = draw(st.text(max_size=50))
    if draw(st.booleans()):
        del request.inputs[:]
        del request.raw_input_contents[:]
        for _ in range(draw(st.integers(0, 3))):
            batch = draw(st.integers(0, 1100) | INT64)
            shape = draw(st.sampled_from([[batch, 8, 8], [batch, 8], [batch, 8, 9], []]) | st.lists(INT64, max_size=5))
            datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=10))
            name = draw(st.sampled_from(["image", "image", "pixels", ""]) | st.text(max_size=20))
            tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
            count = math.prod(shape) if all(0 <= d < 2**20 for d in shape) else -1
            content = draw(st.sampled_from(["exact raw", "random raw", "typed", "both", "nothing"]))
            if content == "exact raw" and 0 <= count * ITEM_SIZES.get(datatype, 1) <= 1 << 20:
                request.raw_input_contents.append(bytes(count * ITEM_SIZES.get(datatype, 1)))
            elif content in ("random raw", "both"):
                request.raw_input_contents.append(draw(st.binary(max_size=300)))
            if content in ("typed", "both"):
                size = count if 0 <= count <= 256 and draw(st.booleans()) else draw(st.integers(0, 70))
                values = draw(st.lists(st.integers(0, 2**32 - 1), min_size=size, max_size=size))
                tensor.contents.uint_contents.extend(values)
    if request.inputs and draw(st.integers(0, 7)) == 0:  # the first input from shared memory
        tensor = request.inputs[0]
        if request.raw_input_contents and draw(st.integers(0, 7)):
            del request.raw_input_contents[0]
        size = math.prod(tensor.shape) * ITEM_SIZES.get(tensor.datatype, 1) if _small(tensor.shape) else 0
        for key, value in draw(shared_memory_parameters(size)).items():
            tensor.parameters[key].CopyFrom(value)
    if draw(st.booleans()):
        for key, value in draw(parameters(["timeout", "priority", "sequence_id", "binary_data_output"])).items():
            request.parameters[key].CopyFrom(value)
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(st.sampled_from(["probabilities", "logits", ""]) | st.text(max_size=20)))
        for key, value in draw(parameters(["classification", "binary_data", "shared_memory_region"])).items():
            output.parameters[key].CopyFrom(value)
        if draw(st.integers(0, 7)) == 0:
            shape = request.inputs[0].shape if request.inputs else []
            batch = shape[0] if shape and _small(shape) else 1
            for key, value in draw(shared_memory_parameters(batch * 40)).items():
                output.parameters[key].CopyFrom(value)
    return request


def _small(shape) -> bool:
    return all(0 <= d < 2**20 for d in shape) and math.prod(shape) < 2**40


@st.composite
def register_requests(draw, key: str) -> pb.SystemSharedMemoryRegisterRequest:
    """A SystemSharedMemoryRegisterRequest for the fuzz's object ``key`` or a key that must be refused."""
    bad_keys = ["/../../etc/passwd", "/proc/self/mem", "../" + key.lstrip("/"), key + "/x", "/", "", "/.", "/..", "/\0"]
    return pb.SystemSharedMemoryRegisterRequest(
        name=draw(st.sampled_from(["r", "", FUZZ_REGION]) | st.text(max_size=12)),
        key=draw(st.sampled_from([key, key, *bad_keys]) | st.text(max_size=20)),
        offset=draw(st.integers(0, FUZZ_REGION_BYTES + 8) | st.integers(0, 2**64 - 1)),
        byte_size=draw(st.integers(0, FUZZ_REGION_BYTES + 8) | st.integers(0, 2**64 - 1)),
    )


def fuzz_server_flags(folder: Path) -> list[str]:
    """A fuzzed server's flags: clients' shared memory allowed (some requests use a region registered by the fuzz),
    and every request traced with its tensors into ``folder``, so that tracing meets every kind of request."""
    trace = ["triton,file=" + str(folder / "trace.json"), "triton,log-frequency=100", "rate=1"]
    return [
        "--allow-client-shm",
        *(f for c in [*trace, "level=TIMESTAMPS", "level=TENSORS"] for f in ("--trace-config", c)),
    ]


@st.composite
def trace_setting_changes(draw) -> tuple[str, dict[str, list[str] | None]]:
    """A trace settings change: (model name, setting -> values; None hands the setting back), often refused."""
    names = st.sampled_from(["trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode"])
    values = st.sampled_from(["OFF", "TIMESTAMPS", "TENSORS", "0", "1", "-1", "7", "-2", "4294967296", "9" * 5000])
    changes = draw(
        st.dictionaries(
            names | st.text(max_size=12), st.none() | st.lists(values | st.text(max_size=12), max_size=3), max_size=3
        )
    )
    return draw(st.sampled_from(["", "", "digits", "nope"]) | st.text(max_size=12)), changes


@st.composite
def mutated_bytes(draw) -> bytes:
    """A valid request's bytes, truncated, extended or with bytes overwritten: often not a message at all."""
    data = bytearray(draw(infer_requests()).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["overwrite", "truncate", "insert"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "overwrite" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def check_answer(call, payload) -> grpc.StatusCode:
    try:
        call(payload, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, f"{error.code()}: {error.details()} for {payload!r:.300}"
        return error.code()
    return grpc.StatusCode.OK


def check_stream(call, payloads: list[bytes]) -> list[str]:
    """Sends ``payloads`` on one ModelStreamInfer stream: it must end OK with one answer each, in order, each a
    response or a client error ("OK" or "error" each; an INTERNAL failure is reported as "internal error in")."""
    answers = list(call(iter(payloads), timeout=60))
    assert len(answers) == len(payloads), f"{len(answers)} answers to {len(payloads)} requests"
    kinds = []
    for answer in answers:
        assert answer.error_message or answer.infer_response.model_name == "digits", answer
        assert not answer.error_message.startswith("internal error"), answer.error_message
        kinds.append("stream error" if answer.error_message else "stream OK")
    return kinds


@st.composite
def unload_requests(draw) -> pb.RepositoryModelUnloadRequest:
    """An unload of a model that is not the one served (its parameters are checked first), with any parameters."""
    request = pb.RepositoryModelUnloadRequest(
        model_name=draw(
            st.sampled_from(["nothing_here", "", "../digits"])
            | st.text(max_size=12).filter(lambda name: name != "digits")
        )  # fmt: skip
    )
    for key in draw(st.lists(st.sampled_from(["unload_dependents"]) | st.text(max_size=12), max_size=2, unique=True)):
        choice = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "bytes_param", None]))
        value = {
            "bool_param": st.booleans(),
            "int64_param": INT64,
            "string_param": st.text(max_size=20),
            "bytes_param": st.binary(max_size=20),
            None: st.none(),
        }[choice]
        parameter = request.parameters[key]
        if choice is not None:
            setattr(parameter, choice, draw(value))
    return request


def fuzz_model_infer(url: str, max_examples: int) -> dict[str, int]:
    """Sends ``max_examples`` mutated messages, as many mutated byte strings, as many streams of one to three of
    either or valid requests, as many shared memory registrations, as many trace settings changes and as many
    unloads of models that are not there; returns the codes seen (answers in streams as "stream OK" and "stream
    error"). The server runs with ``fuzz_server_flags``."""
    seen: dict[str, int] = {}
    with grpc.insecure_channel(url) as channel, shared_memory_object(FUZZ_REGION_BYTES) as (key, _):
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        raw = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        stream = channel.stream_stream(
            MODEL_STREAM_INFER, request_serializer=None, response_deserializer=pb.ModelStreamInferResponse.FromString
        )
        options = settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=max_examples <= 500,
            suppress_health_check=list(HealthCheck),
            database=None,
        )

        @options
        @given(infer_requests())
        def messages(request):
            code = check_answer(stub.ModelInfer, request).name
            seen[code] = seen.get(code, 0) + 1

        @options
        @given(mutated_bytes())
        def byte_strings(data):
            code = check_answer(raw, data).name
            seen[code] = seen.get(code, 0) + 1

        # Valid requests among the fuzzed ones, so that streams that succeed are sent whatever the strategies draw.
        valid = st.integers(1, 4).map(lambda batch: valid_request(batch).SerializeToString())
        payloads = valid | infer_requests().map(lambda request: request.SerializeToString()) | mutated_bytes()

        @options
        @given(st.lists(payloads, min_size=1, max_size=3))
        def streams(payloads):
            for kind in check_stream(stream, payloads):
                seen[kind] = seen.get(kind, 0) + 1

        @options
        @given(trace_setting_changes())
        def trace_settings(change):
            model, changes = change
            request = pb.TraceSettingRequest(model_name=model)
            for name, values in changes.items():
                request.settings[name].value.extend(values or [])
            code = check_answer(stub.TraceSetting, request).name
            seen[f"trace {code}"] = seen.get(f"trace {code}", 0) + 1

        @options
        @given(unload_requests())
        def unloads(request):
            code = check_answer(stub.RepositoryModelUnload, request).name
            seen[f"unload {code}"] = seen.get(f"unload {code}", 0) + 1

        @options
        @given(register_requests(key))
        def registrations(request):
            code = check_answer(stub.SystemSharedMemoryRegister, request).name
            seen[f"register {code}"] = seen.get(f"register {code}", 0) + 1
            if request.name != FUZZ_REGION:
                stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=request.name), timeout=10)

        region = pb.SystemSharedMemoryRegisterRequest(name=FUZZ_REGION, key=key, byte_size=FUZZ_REGION_BYTES)
        stub.SystemSharedMemoryRegister(region, timeout=10)
        messages()
        byte_strings()
        streams()
        registrations()
        trace_settings()
        unloads()
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ModelInfer(valid_request(), timeout=10).model_name == "digits"
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=10)
    return seen


def test_model_stream_infer_answers_in_order_and_a_failed_request_with_its_error_while_the_stream_goes_on(
    shared_server, digits_repo
):
    batches = [images(size, seed=size) for size in (1, 3, 2)]
    sends = [("digits", batches[0], "a"), ("digits", batches[1], "b"), ("nope", batches[1], "c")]
    answers = stream_answers(shared_server.url, [*sends, ("digits", batches[2], "d")])
    assert [result.get_response().id if result else None for result, _ in answers] == ["a", "b", None, "d"]
    version_dir = digits_repo / "digits" / "1"
    for (result, _), batch in zip([answers[0], answers[1], answers[3]], batches, strict=True):
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), reference_probabilities(version_dir, batch), rtol=1e-5, atol=1e-6
        )
    assert isinstance(answers[2][1], InferenceServerException) and "unknown model 'nope'" in str(answers[2][1])
    # The failed answer carries the request's id (tritonclient shows only the message).
    with grpc.insecure_channel(shared_server.url) as channel:
        stream = channel.stream_stream(MODEL_STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString)
        bad = infer_request(images(1))
        bad.model_name, bad.id = "nope", "the-bad-one"
        [answer] = stream(iter([bad.SerializeToString()]), timeout=30)
    assert answer.infer_response.id == "the-bad-one" and "unknown model" in answer.error_message


def test_requests_of_one_stream_run_concurrently_and_are_merged(start_server, slow_repo):
    server = start_server(slow_repo)
    answers = stream_answers(server.url, [("digits", images(1, seed=i), str(i)) for i in range(8)])
    assert [result.get_response().id for result, _ in answers] == [str(i) for i in range(8)]
    with grpcclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics("digits").model_stats[0]
    assert stats.inference_count == 8 and stats.execution_count < 8, "the stream's requests ran one after another"


def test_fuzzed_model_infer_gets_only_ok_or_client_errors_and_the_server_stays_live(
    start_server, digits_repo, tmp_path
):
    server = start_server(digits_repo, *fuzz_server_flags(tmp_path))
    seen = fuzz_model_infer(server.url, max_examples=100)
    assert seen.get("OK") and seen.get("INVALID_ARGUMENT") and seen.get("NOT_FOUND"), seen
    assert seen.get("register OK") and seen.get("register INVALID_ARGUMENT"), seen
    assert seen.get("stream OK") and seen.get("stream error"), seen
    assert seen.get("trace OK") and seen.get("trace INVALID_ARGUMENT"), seen
    assert server.stop() == 0, server.log()
    written = [json.loads(path.read_text()) for path in tmp_path.glob("trace.json*")]
    assert written and all(written), "traced requests' files, each a whole JSON array"
    log_lines = server.log().splitlines()
    assert len(log_lines) < 20, "a flood of bad requests must not flood the log:\n" + "\n".join(log_lines[-30:])
    assert "Traceback" not in server.log()


def test_undecodable_bytes_are_invalid_argument_with_one_rate_limited_log_line(shared_server):
    with grpc.insecure_channel(shared_server.url) as channel:
        raw = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        for garbage in [b"\xff" * 10, b"\x0a\x05\xff\xfe\xfd\xfc\xfb"] * 100:  # 0x0a: model_name, not UTF-8
            with pytest.raises(grpc.RpcError) as raised:
                raw(garbage, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details() == "the request is not a valid ModelInferRequest"
    assert shared_server.log().count("a request that is not a valid message was refused") == 1
    assert "Traceback" not in shared_server.log()


@pytest.mark.parametrize("version", ["9" * 5000, "1" * 19, "0", "-1", "01", " 1", "1e3"])
def test_any_version_string_is_not_found_never_internal(client, version):
    with pytest.raises(InferenceServerException, match="StatusCode.NOT_FOUND"):
        client.infer(
            "digits", [grpcclient.InferInput("image", [1, 8, 8], "UINT8").set_data_from_numpy(images(1))], version
        )
    for call in (client.get_model_metadata, client.get_model_config, client.get_inference_statistics):
        with pytest.raises(InferenceServerException, match="StatusCode.NOT_FOUND"):
            call("digits", version)
    assert not client.is_model_ready("digits", version)


@pytest.mark.parametrize(
    ("where", "key", "parameter", "outcome"),
    [
        ("request", "timeout", pb.InferParameter(string_param="soon"), "INVALID_ARGUMENT"),
        ("request", "timeout", pb.InferParameter(int64_param=-5), "INVALID_ARGUMENT"),
        ("request", "timeout", pb.InferParameter(int64_param=2**63 - 1), "OK"),
        ("request", "timeout", pb.InferParameter(uint64_param=2**64 - 1), "OK"),
        ("request", "timeout", pb.InferParameter(), "INVALID_ARGUMENT"),
        ("request", "priority", pb.InferParameter(double_param=float("nan")), "INVALID_ARGUMENT"),
        ("request", "priority", pb.InferParameter(uint64_param=2**64 - 1), "OK"),  # beyond the levels: the default
        ("output", "classification", pb.InferParameter(string_param="3"), "INVALID_ARGUMENT"),
        ("output", "classification", pb.InferParameter(int64_param=2**63 - 1), "OK"),
        ("output", "classification", pb.InferParameter(int64_param=0), "INVALID_ARGUMENT"),
        ("output", "classification", pb.InferParameter(bool_param=True), "INVALID_ARGUMENT"),
    ],
)
def test_any_parameter_value_is_answered_with_ok_or_a_client_error(shared_server, where, key, parameter, outcome):
    request = valid_request()
    if where == "request":
        request.parameters[key].CopyFrom(parameter)
    else:
        request.outputs.add(name="probabilities").parameters[key].CopyFrom(parameter)
    with grpc.insecure_channel(shared_server.url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert check_answer(stub.ModelInfer, request).name == outcome


@pytest.mark.parametrize("timeout_s", [1e-6, 1e-3, 1e9])
def test_any_grpc_timeout_is_answered_without_internal(shared_server, timeout_s):
    with grpc.insecure_channel(shared_server.url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(valid_request(), timeout=timeout_s)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_request_whose_timeout_or_deadline_passes_in_the_queue_is_dropped_before_it_runs(start_server, slow_repo):
    server = start_server(slow_repo, "--max-queue-delay-us", "0")
    with grpc.insecure_channel(server.url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # HOLDING_BATCH images through the slow model: it finds the model idle, runs at once, and keeps it busy.
        running = stub.ModelInfer.future(valid_request(HOLDING_BATCH), timeout=60)
        time.sleep(0.1)
        late = valid_request()
        late.parameters["timeout"].int64_param = 20_000  # 20 ms, far shorter than the running execution
        # The server's queue timeout sheds load, and Triton says so with UNAVAILABLE: the client may come back.
        assert check_answer(stub.ModelInfer, late) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as raised:  # the client's own deadline: it goes away
            stub.ModelInfer(valid_request(), timeout=0.02)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert running.result().outputs[0].shape == [HOLDING_BATCH, 10]
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits")).model_stats[0]
    assert stats.execution_count == 1 and stats.inference_count == HOLDING_BATCH, "a request past its deadline was run"
