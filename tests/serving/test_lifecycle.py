"""Process-level behaviour: SIGTERM draining, TLS and bearer token, metrics, startup errors, and the rule that
the serving process never imports TensorFlow, keras or buildsys."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.client import ClientError, InferenceClient
from serving.protocol import grpc_service_pb2 as pb
from tests.serving.conftest import (
    CLASS_NAMES,
    HOLDING_BATCH,
    PROJECT_ROOT,
    connected_stub,
    free_port,
    images,
    infer_request,
    probabilities,
    publish_version,
    reference_probabilities,
    scrape,
    stream_answers,
    wait_for_metric,
)
from tests.tls import self_signed_certificate


def health_status(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero(start_server, slow_repo):
    metrics_port = free_port()
    server = start_server(
        slow_repo, "--max-queue-delay-us", "1500000", "--metrics-port", str(metrics_port), "--grace-period", "20"
    )
    running_batch, queued_batch = images(HOLDING_BATCH, seed=8), images(3, seed=9)
    with grpc.insecure_channel(server.url) as channel:
        stub = connected_stub(channel)
        # A large batch finds the model idle and runs at once (a slow call); the next request queues behind it
        # and then waits out the 1.5 s delay, so it is in flight when SIGTERM comes.
        running = stub.ModelInfer.future(infer_request(running_batch), timeout=60)
        time.sleep(0.2)
        queued = stub.ModelInfer.future(infer_request(queued_batch), timeout=60)
        wait_for_metric(metrics_port, 'serving_queue_depth{model="digits"} 1.0')

        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while health_status(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health never turned NOT_SERVING"
            time.sleep(0.01)
        assert not queued.done(), "the queued request should still be waiting for its batch"
        with grpcclient.InferenceServerClient(server.url) as client:
            assert client.is_server_live() and not client.is_server_ready()
            tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
            tensor.set_data_from_numpy(images(1))
            with pytest.raises(InferenceServerException, match="UNAVAILABLE.*shutting down"):
                client.infer("digits", [tensor])
        version_dir = slow_repo / "digits" / "1"
        for future, batch in ((running, running_batch), (queued, queued_batch)):
            expected = reference_probabilities(version_dir, batch)
            np.testing.assert_allclose(probabilities(future.result()), expected, rtol=1e-5, atol=1e-6)
    assert server.process.wait(20) == 0
    assert re.search(r"shutting down: refusing new requests, [12] in flight", server.log()), server.log()


def test_requests_beyond_the_concurrency_limit_are_refused_at_once_while_health_is_answered(start_server, slow_repo):
    # One request at a time in the whole server: while a large batch holds the slow model, the next request on
    # either front end is refused at once instead of being held, and health and readiness still answer.
    server = start_server(slow_repo, "--max-concurrent-requests", "1")
    with grpc.insecure_channel(server.url) as channel:
        stub = connected_stub(channel)
        running = stub.ModelInfer.future(infer_request(images(HOLDING_BATCH, seed=1)), timeout=60)
        time.sleep(0.3)
        refused_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request(images(1)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "--max-concurrent-requests" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The limit is the server's, not each front end's: HTTP refuses too while gRPC holds the one request.
        second = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        second.request("POST", "/v2/models/digits/infer", body=infer_json(images(1)))
        answer = second.getresponse()
        assert answer.status == 503
        assert "--max-concurrent-requests" in json.loads(answer.read())["error"]
        # Health and readiness are not counted: probes are answered while the admitted work is at its limit (on
        # the connection whose refused body was never read).
        second.request("GET", "/v2/health/ready")
        assert second.getresponse().status == 200
        second.close()
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert not running.done(), "the refusals waited for the running request"
        assert probabilities(running.result()).shape == (HOLDING_BATCH, 10)
    assert time.monotonic() - refused_at < 30

    body = infer_json(images(HOLDING_BATCH, seed=2))
    holder = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    holder.request("POST", "/v2/models/digits/infer", body=body, headers={"Content-Type": "application/json"})
    time.sleep(0.3)
    with grpc.insecure_channel(server.url) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            connected_stub(channel).ModelInfer(infer_request(images(1)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    answer = holder.getresponse()
    assert answer.status == 200 and len(json.loads(answer.read())["outputs"][0]["data"]) == HOLDING_BATCH * 10
    holder.request("POST", "/v2/models/digits/infer", body=infer_json(images(2)))
    assert holder.getresponse().status == 200
    holder.close()


def infer_json(batch: np.ndarray) -> bytes:
    tensor = {"name": "image", "shape": list(batch.shape), "datatype": "UINT8", "data": batch.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def test_metrics_count_requests_by_status_and_batch_sizes(start_server, digits_repo):
    metrics_port = free_port()
    server = start_server(digits_repo, "--metrics-port", str(metrics_port))
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(images(2))
        client.infer("digits", [tensor])
        with pytest.raises(InferenceServerException):
            client.infer(
                "digits",
                [
                    grpcclient.InferInput("image", [1, 8, 8], "FP32").set_data_from_numpy(
                        np.zeros((1, 8, 8), np.float32)
                    )
                ],
            )
    text = scrape(metrics_port)
    assert 'serving_requests_total{code="OK",model="digits"} 1.0' in text
    assert 'serving_requests_total{code="INVALID_ARGUMENT",model="digits"} 1.0' in text
    assert 'serving_batch_size_bucket{le="2.0",model="digits"} 1.0' in text
    assert 'serving_request_latency_seconds_count{model="digits"} 2.0' in text
    labels = '{model="digits",version="1"}'
    for triton_metric in ("nv_inference_request_success", "nv_inference_exec_count"):
        assert f"{triton_metric}{labels} 1.0" in text, "Triton's names, so that its dashboards read them"
    assert f"nv_inference_count{labels} 2.0" in text
    assert 'nv_inference_request_failure{model="digits",reason="OTHER",version="1"} 1.0' in text
    assert re.search(r"^nv_inference_compute_infer_duration_us\{[^}]*\} [1-9]", text, re.MULTILINE)
    assert re.search(r"^process_cpu_seconds_total [0-9]", text, re.MULTILINE)
    utilization = float(re.search(r"^nv_cpu_utilization ([0-9.e+-]+)$", text, re.MULTILINE).group(1))
    total = float(re.search(r"^nv_cpu_memory_total_bytes ([0-9.e+]+)$", text, re.MULTILINE).group(1))
    used = float(re.search(r"^nv_cpu_memory_used_bytes ([0-9.e+]+)$", text, re.MULTILINE).group(1))
    assert 0 <= utilization <= 1 and 0 < used < total


def test_tls_and_bearer_token(start_server, digits_repo, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = start_server(
        digits_repo, "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token_file)
    )
    assert "with TLS and a bearer token" in server.log()
    tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
    tensor.set_data_from_numpy(images(1))
    good = {"authorization": "Bearer s3cret-token"}
    with grpcclient.InferenceServerClient(server.url, ssl=True, root_certificates=str(cert)) as client:
        assert client.infer("digits", [tensor], headers=good).as_numpy("probabilities").shape == (1, 10)
        assert client.get_model_metadata("digits", headers=good).name == "digits"
        for headers, message in (
            (None, "missing 'authorization"),
            ({"authorization": "Bearer nope"}, "invalid"),
        ):
            for call in (
                lambda h: client.infer("digits", [tensor], headers=h),
                lambda h: client.get_model_metadata("digits", headers=h),
                lambda h: client.get_server_metadata(headers=h),
                lambda h: client.get_model_repository_index(headers=h),
                lambda h: client.unload_model("digits", headers=h),
            ):
                with pytest.raises(InferenceServerException, match=f"UNAUTHENTICATED.*{message}"):
                    call(headers)
        assert client.is_model_ready("digits", headers=good), "a refused unload must not have unloaded"
    # A stream needs the token too; with it, it answers.
    tls = {"ssl": True, "root_certificates": str(cert)}
    [(result, _)] = stream_answers(server.url, [("digits", images(1), "with")], headers=good, **tls)
    assert result.as_numpy("probabilities").shape == (1, 10)
    [(result, error)] = stream_answers(server.url, [("digits", images(1), "without")], **tls)
    assert result is None and "UNAUTHENTICATED" in str(error) and "missing 'authorization" in str(error)
    with InferenceClient(server.url, token="s3cret-token", tls=cert) as ours:
        assert ours.classify("digits", images(2), top_k=1)[0][0][0] in CLASS_NAMES
    with InferenceClient(server.url, tls=cert) as ours, pytest.raises(ClientError, match="UNAUTHENTICATED"):
        ours.metadata("digits")
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.url, credentials) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING  # health needs no token
    with grpcclient.InferenceServerClient(server.url) as plaintext, pytest.raises(InferenceServerException):
        plaintext.get_server_metadata(headers=good)


def run_serving(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repository", "/nonexistent/models"], "model repository /nonexistent/models does not exist"),
        (["--device", "cuda"], "--device cuda, but this ONNX Runtime build offers only"),
        (["--tls-cert", "/tmp/only-cert.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--version-policy", "newest"], "invalid version policy 'newest'"),
        (["--auth-token-file", "/nonexistent/token"], "cannot read token file /nonexistent/token"),
        (["--trace-config", "level=TIMESTAMPS"], "--trace-config: there is no trace file"),
        (["--trace-config", "triton,file=/nonexistent/folder/trace.json"],
         "the trace file's folder /nonexistent/folder does not exist"),
        (["--cache-config", "redis,host=cache"], "--cache-config redis,host=cache: the one cache is 'local'"),
        (["--load-model", "digits"], "--load-model is for --model-control-mode explicit"),
        (["--model-control-mode", "explicit", "--load-model", "*", "--load-model", "digits"],
         "--load-model=* loads every model and must be the only --load-model"),
        (["--model-control-mode", "explicit", "--load-model", "digitz"], "--load-model digitz: no such model folder"),
        (["--model-repository", "{repo}/."], "is given twice; each of its models would be in two repositories"),
    ],
)  # fmt: skip
def test_startup_errors_are_one_clear_line_and_exit_2(digits_repo, args, message):
    if args[0] == "--device" and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this machine has CUDA; --device cuda is valid here")
    args = [arg.replace("{repo}", str(digits_repo)) for arg in args]
    full = args if args[0] == "--repository" else ["--repository", str(digits_repo), "--port", "0", *args]
    completed = run_serving(*full)
    assert completed.returncode == 2, completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("serve: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_tritonserver_command_line_runs_here_and_its_readiness_flag_is_read(start_server, tmp_path):
    """tritonserver's spellings, as a Triton or KServe deployment passes them: --model-store, --allow-grpc=false,
    --allow-metrics=false, and --strict-readiness=false, which keeps the server ready while a model is refused."""
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=1)
    broken = publish_version(repo, "broken", 1, seed=2)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "empty").mkdir()
    flags = ["--model-store", str(repo), "--allow-grpc=false", "--allow-metrics", "off", "--strict-readiness=false",
             "--strict-model-config=false"]  # fmt: skip
    server = start_server(tmp_path / "empty", *flags)
    assert "(ready)" in server.log()
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    for path, status in [("/v2/health/ready", 200), ("/v2/models/digits/ready", 200), ("/v2/models/broken/ready", 400)]:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == status, (path, response.status)
    assert "grpc on" not in server.log().lower(), "--allow-grpc=false serves no gRPC"
    assert "metrics on" not in server.log().lower()


def test_exit_on_error_stops_a_server_whose_model_is_refused_at_start_in_one_line(tmp_path):
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=1)
    broken = publish_version(repo, "broken", 1, seed=2)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    completed = run_serving("--model-repository", str(repo), "--port", "0", "--http-port", "0", "--exit-on-error=true")
    assert completed.returncode == 2, completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("serve: error:")]
    assert len(error_lines) == 1, completed.stderr
    assert error_lines[0].startswith(
        "serve: error: --exit-on-error: not everything loaded at start: model 'broken' version 1 refused: "
    )
    assert "Traceback" not in completed.stderr


def test_port_in_use_is_a_clear_error(start_server, digits_repo):
    server = start_server(digits_repo)
    completed = run_serving("--repository", str(digits_repo), "--port", str(server.port))
    assert completed.returncode == 2
    assert f"serve: error: cannot listen on 127.0.0.1:{server.port}" in completed.stderr


def test_the_import_guard_really_blocks_tensorflow(import_guard, tmp_path):
    """The positive control for the guard every server test runs under: it does catch an import."""
    log = tmp_path / "forbidden.log"
    env = dict(
        os.environ,
        PYTHONPATH=str(import_guard),
        SERVING_IMPORT_GUARD_LOG=str(log),
        SERVING_IMPORT_GUARD_MODULES="tensorflow,keras,buildsys",
    )
    completed = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True, env=env)
    assert completed.returncode != 0 and "must never be imported by the serving process" in completed.stderr
    assert log.read_text().split() == ["tensorflow"]


def test_buildsys_serve_runs_the_same_server_without_tensorflow(start_server, digits_repo):
    """The seam: buildsys finds `serve` through its buildsys.plugins entry point and never imports the server
    itself; the process may import buildsys's command line, but neither TensorFlow nor keras."""
    server = start_server(digits_repo, command=("-m", "buildsys", "serve"), forbidden=("tensorflow", "keras"))
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("digits")
        assert client.get_server_metadata().name == "buildsys-serving"
    assert server.stop() == 0


def test_cli_module_is_light_and_matches_the_runtime():
    """buildsys imports serving.cli to register `serve`: that must not load gRPC, numpy or ONNX Runtime."""
    code = (
        "import sys, serving.cli as c; "
        "heavy = [m for m in ('grpc', 'numpy', 'onnxruntime', 'google.protobuf') if m in sys.modules]; "
        "print(heavy, c.COMMAND)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert completed.stdout.strip() == "[] serve"
    from serving import cli, runtime

    assert cli.DEVICES == runtime.DEVICES
    assert tuple(runtime.GRAPH_OPTIMIZATION_LEVELS) == cli.GRAPH_OPTIMIZATION_LEVELS


def test_disable_auto_complete_config_refuses_a_model_without_config_pbtxt(start_server, tmp_path):
    from tests.serving.test_model_files import triton_repository

    model_dir, _ = triton_repository(tmp_path / "models", config=False, labels=False)
    server = start_server(model_dir.parent, "--disable-auto-complete-config")
    with grpcclient.InferenceServerClient(server.url) as client:
        assert not client.is_model_ready("digits") and not client.is_server_ready()
        (entry,) = client.get_model_repository_index().models
    assert entry.reason.endswith("config.pbtxt: missing, and auto-completion is off (--disable-auto-complete-config)")


def test_each_front_end_binds_the_address_tritonserver_s_flag_gives_it(start_server, digits_repo):
    """--grpc-address and --http-address (127.0.0.2 is loopback too): each front end listens there and only there."""
    server = start_server(digits_repo, "--grpc-address", "127.0.0.2", "--http-address", "127.0.0.1")
    with grpcclient.InferenceServerClient(f"127.0.0.2:{server.port}") as client:
        assert client.is_server_ready()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    connection.request("GET", "/v2/health/ready")
    assert connection.getresponse().status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", server.http_port), timeout=5).close()
