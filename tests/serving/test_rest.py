"""The REST front end end to end: a real server subprocess and tritonclient.http (JSON and binary tensors,
classification, metadata, health, statistics, the repository API, compression), the HTTP status and JSON body of
every error, TLS and the bearer token, hot reload under load and the SIGTERM drain over HTTP."""

import http.client
import json
import signal
import socket
import ssl
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.client import InferenceClient
from tests.serving.conftest import (
    CLASS_NAMES,
    HOLDING_BATCH,
    UNBATCHED_CLASSES,
    free_port,
    images,
    publish_optional,
    publish_unbatched,
    publish_version,
    reference_probabilities,
    unbatched_reference,
    wait_for_metric,
)
from tests.serving.test_lifecycle import run_serving
from tests.tls import self_signed_certificate


def call(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None, context=None):
    """One raw HTTP request: (status, headers, body), for what tritonclient does not expose."""
    host, port = url.split(":")
    if context is None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
    else:
        connection = http.client.HTTPSConnection(host, int(port), timeout=30, context=context)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def infer_input(batch: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


@pytest.fixture
def rest(shared_server):
    client = httpclient.InferenceServerClient(shared_server.http_url)
    yield client
    client.close()


def test_health_metadata_and_config(rest, shared_server):
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.is_model_ready("digits") and rest.is_model_ready("digits", "1")
    assert not rest.is_model_ready("digits", "2") and not rest.is_model_ready("nope")
    server = rest.get_server_metadata()
    assert server["name"] == "buildsys-serving" and "classification" in server["extensions"]
    metadata = rest.get_model_metadata("digits")
    assert metadata == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert rest.get_model_metadata("digits", "1") == metadata
    config = rest.get_model_config("digits")
    assert config["max_batch_size"] == 1024 and config["input"][0]["dims"] == [8, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    status, headers, _ = call(shared_server.http_url, "GET", "/v2/models/digits")
    assert status == 200 and headers["x-execution-providers"] == "CPUExecutionProvider"


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_infer_with_json_and_binary_tensors_matches_onnx_runtime(rest, digits_repo, binary_in, binary_out):
    batch = images(3, seed=int(binary_in) * 2 + int(binary_out))
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)]
    result = rest.infer("digits", [infer_input(batch, binary_in)], outputs=outputs, request_id="r-7")
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    response = result.get_response()
    assert (response["id"], response["model_version"]) == ("r-7", "1")
    assert ("parameters" in response["outputs"][0]) == binary_out


def test_infer_without_named_outputs_returns_all_in_binary(rest, digits_repo):
    batch = images(2, seed=5)
    result = rest.infer("digits", [infer_input(batch)], model_version="1")
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4


@pytest.mark.parametrize("binary_out", [True, False])
def test_classification_extension(rest, digits_repo, binary_out):
    batch = images(2, seed=11)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary_out, class_count=3)]
    labels = rest.infer("digits", [infer_input(batch)], outputs=outputs).as_numpy("probabilities")
    assert labels.shape == (2, 3)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    for row, scores in zip(labels, expected, strict=True):
        text = [item.decode() if isinstance(item, bytes) else item for item in row]
        best = int(np.argmax(scores))
        score, index, label = text[0].split(":")
        assert (int(index), label) == (best, CLASS_NAMES[best])
        assert float(score) == pytest.approx(scores[best], abs=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(rest, digits_repo, algorithm):
    batch = images(2, seed=3)
    result = rest.infer("digits", [infer_input(batch)], request_compression_algorithm=algorithm)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)


def test_statistics_count_requests(rest):
    before = rest.get_inference_statistics("digits")["model_stats"][0]
    rest.infer("digits", [infer_input(images(4))])
    after = rest.get_inference_statistics("digits", "1")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] >= before["inference_count"] + 4
    everything = rest.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [("digits", "1")]


INFER = "/v2/models/digits/infer"
GOOD_HEADER = {"inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "UINT8", "data": [0] * 64}]}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("GET", "/v2/models/nope", b"", {}, 404, "unknown model 'nope'"),
        ("GET", "/v2/models/digits/versions/7", b"", {}, 404, "no loaded version '7'"),
        ("GET", "/v2/models/digits/versions/" + "9" * 5000, b"", {}, 404, "no loaded version"),
        ("POST", "/v2/models/nope/infer", json.dumps(GOOD_HEADER).encode(), {}, 404, "unknown model"),
        ("POST", INFER, b"{not json", {}, 400, "not valid JSON"),
        ("POST", INFER, b"[]", {}, 400, "must be a JSON object"),
        (
            "POST",
            INFER,
            json.dumps({"inputs": [{**GOOD_HEADER["inputs"][0], "datatype": "FP32"}]}).encode(),
            {},
            400,
            "datatype FP32 does not match the model's UINT8",
        ),
        (
            "POST",
            INFER,
            json.dumps({"inputs": [{**GOOD_HEADER["inputs"][0], "name": "pixels"}]}).encode(),
            {},
            400,
            "unexpected input 'pixels'",
        ),
        (
            "POST",
            INFER,
            json.dumps({**GOOD_HEADER, "outputs": [{"name": "logits"}]}).encode(),
            {},
            400,
            "unknown output 'logits'",
        ),
        (
            "POST",
            INFER,
            json.dumps(GOOD_HEADER).encode(),
            {"Inference-Header-Content-Length": "99999"},
            400,
            "Inference-Header-Content-Length",
        ),
        (
            "POST",
            INFER,
            json.dumps(GOOD_HEADER).encode(),
            {"Inference-Header-Content-Length": "\u00b9"},  # a digit to str.isdigit, not to int()
            400,
            "Inference-Header-Content-Length",
        ),
        ("POST", INFER, b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ("POST", INFER, b"{}", {"Content-Encoding": "br"}, 400, "Content-Encoding 'br' is not supported"),
        ("GET", "/v2/nowhere", b"", {}, 404, "no route"),
        ("DELETE", "/v2/models/digits", b"", {}, 405, "DELETE is not allowed"),
        ("POST", "/v2/repository/models/Bad-Name/load", b"", {}, 404, "unknown model"),
        ("POST", "/v2/repository/index", b'{"ready": "yes"}', {}, 400, "'ready' must be true or false"),
        ("POST", "/v2/repository/models/digits/load", b'{"parameters": {"file:1/x": "AA=="}}', {}, 400, "publish"),
        ("POST", "/v2/repository/models/digits/load", b'{"parameters": {"config": "{}"}}', {}, 400, "was not reloaded"),
    ],
)
def test_errors_are_triton_status_codes_with_a_json_error(shared_server, method, path, body, headers, status, message):
    got, response_headers, content = call(shared_server.http_url, method, path, body, headers)
    assert got == status, content
    assert response_headers["content-type"] == "application/json"
    error = json.loads(content)["error"]
    assert message in error and "\n" not in error and len(error) < 600


def test_tritonclient_raises_with_the_status_and_message(rest):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as raised:
        rest.infer("nope", [infer_input(images(1))])
    assert raised.value.status() == "404"


def test_repository_index_load_and_unload(start_server, tmp_path):
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=1)
    publish_version(repo, "broken", 1, seed=1, broken=True)
    server = start_server(repo, "--poll-interval", "0")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        index = {(e["name"], e["version"]): e for e in client.get_model_repository_index()}
        assert index[("digits", "1")]["state"] == "READY"
        assert index[("broken", "1")]["state"] == "UNAVAILABLE" and "model.onnx" in index[("broken", "1")]["reason"]
        status, _, content = call(server.http_url, "POST", "/v2/repository/index", b'{"ready": true}')
        assert status == 200 and [e["name"] for e in json.loads(content)] == ["digits"]
        client.unload_model("digits")
        assert not client.is_model_ready("digits")
        with pytest.raises(InferenceServerException, match="unknown model 'digits'"):
            client.infer("digits", [infer_input(images(1))])
        client.load_model("digits")
        assert client.is_model_ready("digits")
        with pytest.raises(InferenceServerException, match="no loadable version") as raised:
            client.load_model("broken")
        assert raised.value.status() == "400"
    finally:
        client.close()


def test_tls_and_bearer_token(start_server, digits_repo, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = start_server(
        digits_repo, "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token_file)
    )
    context = ssl.create_default_context(cafile=str(cert))
    good = {"Authorization": "Bearer s3cret-token"}
    for headers, message in (
        ({}, "missing 'authorization: Bearer <token>' header"),
        ({"Authorization": "Bearer no"}, "invalid"),
    ):
        for method, path in (
            ("GET", "/v2"),
            ("GET", "/v2/models/digits"),
            ("POST", INFER),
            ("POST", "/v2/repository/index"),
        ):
            status, response_headers, content = call(server.http_url, method, path, b"{}", headers, context)
            assert status == 401 and message in json.loads(content)["error"], (path, content)
            assert response_headers["www-authenticate"].startswith("Bearer")
    assert call(server.http_url, "GET", "/v2/health/ready", context=context)[0] == 200  # probes need no token
    assert call(server.http_url, "GET", "/v2/models/digits", headers=good, context=context)[0] == 200
    client = httpclient.InferenceServerClient(
        server.http_url, ssl=True, ssl_context_factory=lambda: ssl.create_default_context(cafile=str(cert))
    )
    try:
        result = client.infer("digits", [infer_input(images(2))], headers=good)
        assert result.as_numpy("probabilities").shape == (2, 10)
        with pytest.raises(InferenceServerException, match="invalid bearer token"):
            client.get_model_metadata("digits", headers={"Authorization": "Bearer wrong"})
    finally:
        client.close()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        call(server.http_url, "GET", "/v2/health/live")  # plain HTTP to the HTTPS port


def test_hot_reload_under_http_load_fails_no_request(start_server, tmp_path):
    repo = tmp_path / "models"
    v1 = publish_version(repo, "digits", 1, seed=1)
    server = start_server(repo, "--poll-interval", "0.2")
    batch = images(4, seed=42)
    answers: list[tuple[str, np.ndarray]] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def load():
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            while not stop.is_set():
                try:
                    result = client.infer("digits", [infer_input(batch)])
                    answers.append((result.get_response()["model_version"], result.as_numpy("probabilities")))
                except InferenceServerException as error:
                    failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(answers) > 20)
        v2 = publish_version(repo, "digits", 2, seed=2)
        wait_until(lambda: any(version == "2" for version, _ in list(answers)))
        count = len(answers)
        wait_until(lambda: len(answers) > count + 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    expected = {"1": reference_probabilities(v1, batch), "2": reference_probabilities(v2, batch)}
    assert {version for version, _ in answers} == {"1", "2"}
    for version, answer in answers:
        np.testing.assert_allclose(answer, expected[version], rtol=1e-6, atol=1e-7)


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_drains_http_requests_and_refuses_new_ones(start_server, slow_repo):
    metrics_port = free_port()
    server = start_server(
        slow_repo, "--max-queue-delay-us", "1500000", "--metrics-port", str(metrics_port), "--exit-timeout-secs", "20"
    )
    outcome: dict[str, object] = {}
    batches = {"running": images(HOLDING_BATCH, seed=8), "queued": images(3, seed=9)}

    def infer(key: str) -> None:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        try:
            outcome[key] = client.infer("digits", [infer_input(batches[key])]).as_numpy("probabilities")
        finally:
            client.close()

    callers = [threading.Thread(target=infer, args=("running",))]
    callers[0].start()
    time.sleep(0.2)
    callers.append(threading.Thread(target=infer, args=("queued",)))
    callers[1].start()
    # The first request is large enough to keep the idle model busy for about a second (a one-image call would be
    # over before the second request arrives); the second waits in the queue behind it.
    wait_for_metric(metrics_port, 'serving_queue_depth{model="digits"} 1.0')
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: call(server.http_url, "GET", "/v2/health/ready")[0] == 400, timeout_s=10)
    assert call(server.http_url, "GET", "/v2/health/live")[0] == 200
    status, _, content = call(server.http_url, "POST", INFER, json.dumps(GOOD_HEADER).encode())
    assert status == 503 and "shutting down" in json.loads(content)["error"]
    assert callers[1].is_alive(), "the queued request should still be waiting for its batch"
    for caller in callers:
        caller.join(30)
    version_dir = slow_repo / "digits" / "1"
    for key, batch in batches.items():
        np.testing.assert_allclose(outcome[key], reference_probabilities(version_dir, batch), rtol=1e-5, atol=1e-6)
    assert server.process.wait(20) == 0


def test_either_front_end_can_be_turned_off(start_server, digits_repo):
    http_only = start_server(digits_repo, "--no-grpc")
    assert f"HTTP on {http_only.http_url}" in http_only.log() and "gRPC on" not in http_only.log()
    client = httpclient.InferenceServerClient(http_only.http_url)
    try:
        assert client.is_model_ready("digits")
    finally:
        client.close()
    grpc_only = start_server(digits_repo, "--no-http")
    assert "gRPC on" in grpc_only.log() and "HTTP on" not in grpc_only.log()
    with pytest.raises(OSError):
        call(grpc_only.http_url, "GET", "/v2/health/live")
    completed = run_serving("--repository", str(digits_repo), "--no-grpc", "--no-http")
    assert completed.returncode == 2
    assert "serve: error: --no-grpc and --no-http leave nothing to serve" in completed.stderr


def test_http_port_in_use_is_a_clear_error(start_server, digits_repo):
    server = start_server(digits_repo)
    completed = run_serving("--repository", str(digits_repo), "--port", "0", "--http-port", str(server.http_port))
    assert completed.returncode == 2
    assert f"serve: error: cannot listen on 127.0.0.1:{server.http_port}" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_triton_repository_without_manifests_serves_over_http(start_server, tmp_path):
    repo = tmp_path / "triton"
    version_dir = publish_version(repo, "digits", 1, seed=3)
    (version_dir / "manifest.json").unlink()
    server = start_server(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        batch = images(2, seed=1)
        outputs = [httpclient.InferRequestedOutput("probabilities", class_count=1)]
        labels = client.infer("digits", [infer_input(batch)], outputs=outputs).as_numpy("probabilities")
        best = np.argmax(reference_probabilities(version_dir, batch), axis=1)
        assert [row[0].decode().split(":")[2] for row in labels] == [CLASS_NAMES[i] for i in best]
    finally:
        client.close()


def test_a_triton_model_that_does_not_batch_serves_whole_tensors_over_http_and_grpc(start_server, tmp_path):
    """The Triton quickstart's shape of model (max_batch_size 0, reshaped input and output, labels) beside a
    batching one and one with an optional input, through both of Triton's clients."""
    repo = tmp_path / "triton"
    version_dir = publish_unbatched(repo, "Dense-ONNX.v1")  # a name as Triton users give them
    publish_version(repo, "digits", 1, seed=3)
    publish_optional(repo)
    server = start_server(repo)
    sample = np.random.default_rng(2).normal(size=(3, 4, 4)).astype(np.float32)
    expected = unbatched_reference(version_dir, sample)
    best = [UNBATCHED_CLASSES[i] for i in np.argsort(-expected)[:2]]
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        metadata = http.get_model_metadata("Dense-ONNX.v1")
        assert [(t["name"], t["shape"]) for t in metadata["inputs"] + metadata["outputs"]] == [
            ("data_0", [3, 4, 4]),
            ("fc6_1", [5]),
        ]
        assert http.get_model_config("Dense-ONNX.v1")["max_batch_size"] == 0
        request = httpclient.InferInput("data_0", [3, 4, 4], "FP32")
        request.set_data_from_numpy(sample, binary_data=True)
        result = http.infer("Dense-ONNX.v1", [request])
        np.testing.assert_allclose(result.as_numpy("fc6_1"), expected, rtol=1e-5)
        wanted = [httpclient.InferRequestedOutput("fc6_1", class_count=2)]
        labels = http.infer("Dense-ONNX.v1", [request], outputs=wanted).as_numpy("fc6_1")
        assert labels.shape == (2,) and [label.decode().split(":")[2] for label in labels] == best
        batched = httpclient.InferInput("data_0", [1, 3, 4, 4], "FP32")
        batched.set_data_from_numpy(sample[np.newaxis], binary_data=True)
        with pytest.raises(InferenceServerException, match="does not batch") as refused:
            http.infer("Dense-ONNX.v1", [batched])
        assert refused.value.status() == "400"
        x, bias = (httpclient.InferInput(name, [3], "FP32") for name in ("x", "bias"))
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32), binary_data=True)
        bias.set_data_from_numpy(np.array([10, 20, 30], np.float32), binary_data=False)
        assert http.infer("biased", [x]).as_numpy("y").tolist() == [2, 3, 4]  # the optional input at its default
        assert http.infer("biased", [x, bias]).as_numpy("y").tolist() == [11, 22, 33]
        assert http.get_model_config("biased")["input"][1]["optional"] is True
        with pytest.raises(InferenceServerException, match="missing input 'x'") as refused:
            http.infer("biased", [bias])
        assert refused.value.status() == "400"
    finally:
        http.close()
    with grpcclient.InferenceServerClient(server.url) as grpc_client:
        request = grpcclient.InferInput("data_0", [3, 4, 4], "FP32")
        request.set_data_from_numpy(sample)
        np.testing.assert_allclose(grpc_client.infer("Dense-ONNX.v1", [request]).as_numpy("fc6_1"), expected, rtol=1e-5)
        assert grpc_client.get_model_config("Dense-ONNX.v1").config.max_batch_size == 0
        x = grpcclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        assert grpc_client.infer("biased", [x]).as_numpy("y").tolist() == [2, 3, 4]
        batch = images(3, seed=1)
        digits = grpcclient.InferInput("image", list(batch.shape), "UINT8")
        digits.set_data_from_numpy(batch)
        probabilities = grpc_client.infer("digits", [digits]).as_numpy("probabilities")
        np.testing.assert_allclose(probabilities, reference_probabilities(repo / "digits" / "1", batch), rtol=1e-5)
    with InferenceClient(server.url) as own_client:  # this project's client sends such a model one sample at a time
        scores = own_client.predict("Dense-ONNX.v1", np.stack([sample, -sample]))
        np.testing.assert_allclose(scores, [expected, unbatched_reference(version_dir, -sample)], rtol=1e-5)
        assert [label for label, _ in own_client.classify("Dense-ONNX.v1", sample[np.newaxis], top_k=2)[0]] == best


def stats(url: str) -> dict:
    return json.loads(call(url, "GET", "/v2/models/digits/stats")[2])["model_stats"][0]


def test_a_full_queue_answers_503_and_a_client_that_left_is_dropped_before_it_runs(start_server, slow_repo):
    metrics_port = free_port()
    server = start_server(slow_repo, "--max-queue-size", "1", "--metrics-port", str(metrics_port))
    baseline = stats(server.http_url)["inference_count"]
    # The first request finds the model idle and runs at once: 512 images make the slow model's call last seconds.
    big = {"inputs": [{"name": "image", "shape": [512, 8, 8], "datatype": "UINT8", "data": [0] * 512 * 64}]}
    running = threading.Thread(target=call, args=(server.http_url, "POST", INFER, json.dumps(big).encode()))
    running.start()
    time.sleep(0.3)
    # A second request queues behind the running one, and its client goes away while it waits.
    header = {"inputs": [{"name": "image", "shape": [3, 8, 8], "datatype": "UINT8", "data": [0] * 192}]}
    body = json.dumps(header).encode()
    leaving = http.client.HTTPConnection(*server.http_url.split(":"), timeout=30)
    leaving.request("POST", INFER, body=body)
    wait_for_metric(metrics_port, 'serving_queue_depth{model="digits"} 1.0')
    status, _, content = call(server.http_url, "POST", INFER, json.dumps(GOOD_HEADER).encode())
    assert status == 503 and "queue" in json.loads(content)["error"], content
    assert call(server.http_url, "GET", "/v2/health/ready")[0] == 200  # health is answered under overload
    leaving.sock.shutdown(socket.SHUT_RDWR)
    leaving.close()
    wait_for_metric(metrics_port, 'serving_queue_depth{model="digits"} 0.0')
    running.join(30)
    time.sleep(1.0)  # had the abandoned request been dequeued to run, its slow call would have finished by now
    assert stats(server.http_url)["inference_count"] == baseline + 512, "the abandoned 3-image request must not run"
