"""End-to-end: the Open Inference Protocol RPCs of a real server subprocess, called with tritonclient."""

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.runtime import shared_threads
from tests.serving.conftest import CLASS_NAMES, images, reference_probabilities


def infer_input(array: np.ndarray, name: str = "image", datatype: str = "UINT8") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert {"classification", "model_repository", "statistics"} <= set(server.extensions)
    assert not [e for e in server.extensions if e.startswith("device_warning")]
    model = client.get_model_metadata("digits")
    assert (model.name, list(model.versions), model.platform) == ("digits", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("image", "UINT8", [-1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("probabilities", "FP32", [-1, 10])]


def test_model_config_reports_effective_batching_and_device(client):
    config = client.get_model_config("digits").config
    assert config.max_batch_size == 1024
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert config.parameters["execution_providers"].string_value == "CPUExecutionProvider"
    assert config.parameters["graph_optimization_level"].string_value == "all"
    assert [(g.kind, g.count) for g in config.instance_group] == [(2, 2)]  # KIND_CPU, Triton's default count
    # Two instances share the cores instead of each taking one thread per core.
    assert config.parameters["intra_op_thread_count"].string_value == str(shared_threads(2))
    # A wide session on all of them serves a lone long call, where there are cores to widen to.
    wide = config.parameters.get("wide_session_intra_op_thread_count")
    expected = str(shared_threads(1)) if shared_threads(1) > shared_threads(2) else None
    assert (wide.string_value if wide is not None else None) == expected


def test_raw_inference_equals_in_process_onnx_runtime(client, digits_repo):
    batch = images(7, seed=3)
    result = client.infer("digits", [infer_input(batch)])
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("digits", "1")
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_typed_contents_inference_equals_raw(shared_server, digits_repo):
    batch = images(2, seed=4)
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8])
    tensor.contents.uint_contents.extend(int(v) for v in batch.reshape(-1))
    with grpc.insecure_channel(shared_server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed-1"
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_array_equal(got, reference_probabilities(digits_repo / "digits" / "1", batch))


def test_classification_extension_returns_top_k_with_labels(client, digits_repo):
    batch = images(4, seed=5)
    output = grpcclient.InferRequestedOutput("probabilities", class_count=3)
    result = client.infer("digits", [infer_input(batch)], outputs=[output])
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 3)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    for row, probabilities in zip(top, expected, strict=True):
        best = np.argsort(-probabilities, kind="stable")[:3]
        parsed = [entry.decode().split(":") for entry in row]
        assert [int(index) for _, index, _ in parsed] == list(best)
        assert [label for _, _, label in parsed] == [CLASS_NAMES[i] for i in best]
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], probabilities[best], atol=1e-6)


def test_statistics_count_requests_samples_and_batch_sizes(client):
    before = client.get_inference_statistics("digits").model_stats[0]
    client.infer("digits", [infer_input(images(5, seed=6))])
    after = client.get_inference_statistics("digits").model_stats[0]
    assert (after.name, after.version) == ("digits", "1")
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 5
    assert after.execution_count == before.execution_count + 1
    assert 5 in {b.batch_size for b in after.batch_stats}
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns


def test_repository_index_lists_the_model(client):
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("digits", "1", "READY")]


def test_health_and_reflection(shared_server):
    with grpc.insecure_channel(shared_server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def expect_error(code: str, *fragments: str):
    return pytest.raises(InferenceServerException, match=f"StatusCode.{code}.*" + ".*".join(fragments))


@pytest.mark.parametrize(
    ("model", "version", "fragment"),
    [
        ("nope", "", "unknown model 'nope'"),
        ("../digits", "", "unknown model"),
        ("digits", "7", "no loaded version"),
    ],
)
def test_unknown_model_or_version_is_not_found(client, model, version, fragment):
    with expect_error("NOT_FOUND", fragment):
        client.infer(model, [infer_input(images(1))], model_version=version)
    with expect_error("NOT_FOUND"):
        client.get_model_metadata(model, version)


def test_wrong_shape_is_invalid_argument_naming_input(client):
    bad = np.zeros((2, 8, 9), dtype=np.uint8)
    with expect_error("INVALID_ARGUMENT", "input 'image'", r"\[2, 8, 9\]", r"\[-1, 8, 8\]"):
        client.infer("digits", [infer_input(bad)])


def test_wrong_datatype_is_invalid_argument(client):
    with expect_error("INVALID_ARGUMENT", "input 'image'", "FP32", "UINT8"):
        client.infer("digits", [infer_input(np.zeros((1, 8, 8), np.float32), datatype="FP32")])


def test_missing_and_extra_inputs_are_invalid_argument(client):
    with expect_error("INVALID_ARGUMENT", "unexpected input 'pixels'", "image"):
        client.infer("digits", [infer_input(images(1), name="pixels")])
    with expect_error("INVALID_ARGUMENT", "unexpected input 'extra'"):
        client.infer("digits", [infer_input(images(1)), infer_input(images(1), name="extra")])
    with expect_error("INVALID_ARGUMENT", "missing input 'image'"):
        client.infer("digits", [])


def test_batch_larger_than_allowed_is_invalid_argument(client):
    with expect_error("INVALID_ARGUMENT", "input 'image'", "batch of 1025", "max_batch_size 1024"):
        client.infer("digits", [infer_input(np.zeros((1025, 8, 8), np.uint8))])


def test_raw_length_mismatch_is_invalid_argument(shared_server):
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8])
    request.raw_input_contents.append(b"\x00" * 100)
    with grpc.insecure_channel(shared_server.url) as channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "input 'image': raw contents are 100 bytes but shape [2, 8, 8] of UINT8 needs 128"


def test_typed_contents_out_of_range_or_wrong_count_is_invalid_argument(shared_server):
    with grpc.insecure_channel(shared_server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for values, fragment in (([300] * 64, "outside UINT8's range"), ([1] * 63, "has 63 values")):
            request = service_pb2.ModelInferRequest(model_name="digits")
            request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8]).contents.uint_contents.extend(values)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "input 'image'" in raised.value.details() and fragment in raised.value.details()


def test_unknown_output_is_invalid_argument(client):
    with expect_error("INVALID_ARGUMENT", "unknown output 'logits'", "probabilities"):
        client.infer("digits", [infer_input(images(1))], outputs=[grpcclient.InferRequestedOutput("logits")])


def test_errors_are_counted_and_server_keeps_serving(client):
    stats = client.get_inference_statistics("digits").model_stats[0]
    assert stats.inference_stats.fail.count >= 1
    assert client.infer("digits", [infer_input(images(1))]).as_numpy("probabilities").shape == (1, 10)
