"""Hot reload under load, refusal of a broken version, and the repository load/unload RPCs, end to end."""

import json
import os
import shutil
import threading
import time

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import (
    classifier_onnx,
    images,
    publish_version,
    reference_probabilities,
    write_config,
)


def wait_until(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ContinuousLoad:
    """Threads that call the model without pause, keeping every answer and every failure."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.batch = images(4, seed=42)
        self.answers: list[tuple[str, np.ndarray]] = []
        self.failures: list[Exception] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url,)) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            tensor = grpcclient.InferInput("image", list(self.batch.shape), "UINT8")
            tensor.set_data_from_numpy(self.batch)
            while not self._stop.is_set():
                try:
                    result = client.infer("digits", [tensor])
                    self.answers.append((result.get_response().model_version, result.as_numpy("probabilities")))
                except InferenceServerException as error:
                    self.failures.append(error)

    def versions_seen(self) -> set[str]:
        return {version for version, _ in list(self.answers)}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_new_version_hot_swaps_under_load_with_no_failed_request(start_server, tmp_path):
    repo = tmp_path / "models"
    v1 = publish_version(repo, "digits", 1, seed=1)
    server = start_server(repo, "--poll-interval", "0.2")
    load = ContinuousLoad(server.url)
    try:
        wait_until(lambda: len(load.answers) > 20, what="answers from version 1")
        v2 = publish_version(repo, "digits", 2, seed=2)
        wait_until(lambda: "2" in load.versions_seen(), what="answers from version 2")
        count = len(load.answers)
        wait_until(lambda: len(load.answers) > count + 20, what="more answers after the swap")
    finally:
        load.stop()
    assert load.failures == []
    assert load.versions_seen() == {"1", "2"}
    expected = {"1": reference_probabilities(v1, load.batch), "2": reference_probabilities(v2, load.batch)}
    assert not np.array_equal(expected["1"], expected["2"])
    for version, answer in load.answers:
        np.testing.assert_array_equal(answer, expected[version])
    # After the swap only the newest version serves (latest policy); version 1 is unloaded.
    with grpcclient.InferenceServerClient(server.url) as client:
        wait_until(lambda: not client.is_model_ready("digits", "1"), what="version 1 to unload")
        assert list(client.get_model_metadata("digits").versions) == ["2"]
    server.wait_for_log("model 'digits' version 1 unloaded")


def test_a_model_file_replaced_in_place_reloads_under_load_with_no_failed_request(start_server, tmp_path):
    """As under Triton's POLL: a version whose files change in place reloads at the next poll. A replacement that
    does not load leaves the version serving as it was, logged once, until its files change again."""
    repo = tmp_path / "models"
    v1 = publish_version(repo, "digits", 1, seed=1)
    server = start_server(repo, "--poll-interval", "0.2")
    load = ContinuousLoad(server.url)
    before = reference_probabilities(v1, load.batch)
    replacement = v1 / ".model.onnx.tmp"
    try:
        wait_until(lambda: len(load.answers) > 20, what="answers from version 1")
        replacement.write_bytes(b"not an onnx file")
        os.replace(replacement, v1 / "model.onnx")
        server.wait_for_log("model 'digits' version 1 failed to reload, serves as it was")
        with grpcclient.InferenceServerClient(server.url) as client:
            (entry,) = client.get_model_repository_index().models
        assert (entry.version, entry.state) == ("1", "READY") and "failed to reload" in entry.reason, entry
        count = len(load.answers)
        wait_until(lambda: len(load.answers) > count + 20, what="answers after the failed reload")
        onnx.save(classifier_onnx(2), replacement)
        os.replace(replacement, v1 / "model.onnx")
        after = reference_probabilities(v1, load.batch)
        wait_until(lambda: np.array_equal(load.answers[-1][1], after), what="answers from the replaced model")
    finally:
        load.stop()
    assert load.failures == [] and load.versions_seen() == {"1"}
    assert not np.array_equal(before, after)
    for _, answer in load.answers:
        assert np.array_equal(answer, before) or np.array_equal(answer, after)
    assert server.log().count("failed to reload") == 1, "a failed reload must not be retried on every poll"


def test_broken_new_version_is_refused_and_the_previous_keeps_serving(start_server, tmp_path):
    repo = tmp_path / "models"
    v1 = publish_version(repo, "digits", 1, seed=1)
    server = start_server(repo, "--poll-interval", "0.2")
    load = ContinuousLoad(server.url, threads=2)
    try:
        publish_version(repo, "digits", 2, seed=2, broken=True)
        server.wait_for_log("model 'digits' version 2 refused")
        count = len(load.answers)
        wait_until(lambda: len(load.answers) > count + 10, what="answers after the refusal")
    finally:
        load.stop()
    assert load.failures == [] and load.versions_seen() == {"1"}
    assert "ONNX Runtime cannot load it" in server.log()
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("digits", "1") and not client.is_model_ready("digits", "2")
        index = {(m.version, m.state): m.reason for m in client.get_model_repository_index().models}
        assert ("1", "READY") in index and "refused" in index[("2", "UNAVAILABLE")]
        np.testing.assert_array_equal(
            client.infer("digits", [_tensor(load.batch)]).as_numpy("probabilities"),
            reference_probabilities(v1, load.batch),
        )
    assert server.log().count("version 2 refused") == 1, "a refused version must not be retried on every poll"


def _tensor(batch: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return tensor


def test_repository_unload_and_load(start_server, tmp_path):
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=1)
    publish_version(repo, "broken", 1, seed=3, broken=True)
    server = start_server(repo, "--poll-interval", "0.2")
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("digits")
        client.unload_model("digits")
        assert not client.is_model_ready("digits")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.infer("digits", [_tensor(images(1))])
        time.sleep(0.6)  # several polls: an unloaded model stays unloaded
        assert not client.is_model_ready("digits")
        index = {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert index[("digits", "")] == ("UNAVAILABLE", "unloaded through the repository API")

        client.load_model("digits")
        assert client.is_model_ready("digits")
        assert client.infer("digits", [_tensor(images(2))]).as_numpy("probabilities").shape == (2, 10)

        with pytest.raises(InferenceServerException, match="FAILED_PRECONDITION.*broken.*ONNX Runtime cannot load"):
            client.load_model("broken")
        for name in ("ghost", "../digits", "Digits"):
            with pytest.raises(InferenceServerException, match="NOT_FOUND"):
                client.load_model(name)
            with pytest.raises(InferenceServerException, match="NOT_FOUND"):
                client.unload_model(name)
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*publish model files"):
            client.load_model("digits", config='{"max_batch_size": 1}', files={"file:1/model.onnx": b"onnx"})

        publish_version(repo, "letters", 1, seed=4)  # a model folder that appears while serving
        wait_until(lambda: client.is_model_ready("letters"), what="the new model to load")


def test_several_repositories_under_tritonserver_s_own_flags(start_server, tmp_path):
    """--model-repository repeated, --repository-poll-secs and --model-load-thread-count, as a tritonserver
    command line has them: a model name that appears in a second repository stops serving (the server is not
    ready) until only one holds it."""
    first, second = tmp_path / "first", tmp_path / "second"
    publish_version(first, "digits", 1, seed=1)
    publish_version(second, "letters", 1, seed=2)
    flags = ["--model-repository", str(second), "--repository-poll-secs", "0.2", "--model-load-thread-count", "2"]
    server = start_server(first, *flags)
    batch = images(2)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("digits") and client.is_model_ready("letters")
        publish_version(second, "digits", 1, seed=3)
        wait_until(lambda: not client.is_model_ready("digits"), what="the model in two repositories to stop")
        assert not client.is_server_ready() and client.is_model_ready("letters")
        index = {m.name: m.reason for m in client.get_model_repository_index().models}
        assert index["digits"].endswith("digits); it serves from none"), index
        shutil.rmtree(first / "digits")
        wait_until(lambda: client.is_model_ready("digits"), what="the model to serve from the other repository")
        assert client.is_server_ready()
        answer = client.infer("digits", [_tensor(batch)]).as_numpy("probabilities")
        np.testing.assert_allclose(
            answer, reference_probabilities(second / "digits" / "1", batch), rtol=1e-5, atol=1e-6
        )


def test_a_load_reloads_every_version_with_its_config_or_the_requests_until_a_load_without_one(start_server, tmp_path):
    repo = tmp_path / "models"
    version_dir = publish_version(repo, "digits", 1, seed=1)
    server = start_server(repo, "--poll-interval", "0.2")
    batch = images(3)
    expected = reference_probabilities(version_dir, batch[:2])
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.get_model_config("digits").config.max_batch_size == 1024
        write_config(repo / "digits", "digits", max_batch_size=8)  # a changed config.pbtxt: a poll reloads with it
        wait_until(lambda: client.get_model_config("digits").config.max_batch_size == 8, what="the poll to reload")
        client.load_model("digits")
        assert client.get_model_config("digits").config.max_batch_size == 8
        override = {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 100}}
        client.load_model("digits", config=json.dumps(override))
        time.sleep(0.5)  # polls keep the request's config
        config = client.get_model_config("digits").config
        assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (2, 100)
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
            client.infer("digits", [_tensor(batch)])
        for bad, words in [
            ("{not json", "is not a model configuration"),
            ('{"max_batch_size": "many"}', "is not a model configuration"),
            ('{"max_batch_size": -1}', "max_batch_size is -1"),
            ('{"name": "letters"}', "does not match its folder"),
            ('{"sequence_batching": {}}', "sequence_batching"),
        ]:
            with pytest.raises(InferenceServerException, match=f"INVALID_ARGUMENT.*{words}"):
                client.load_model("digits", config=bad)
        assert client.get_model_config("digits").config.max_batch_size == 2, "a refused config changes nothing"
        nothing = {"max_batch_size": 4, "version_policy": {"specific": {"versions": [7]}}}
        with pytest.raises(InferenceServerException, match="FAILED_PRECONDITION.*no version .* matches policy"):
            client.load_model("digits", config=json.dumps(nothing))
        assert client.is_model_ready("digits") and client.get_model_config("digits").config.max_batch_size == 2
        (version_dir / "model.onnx").write_bytes(b"no longer an onnx file")
        with pytest.raises(InferenceServerException, match="FAILED_PRECONDITION.*version 1 failed to reload"):
            client.load_model("digits")
        answer = client.infer("digits", [_tensor(batch[:2])]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
        assert client.get_model_config("digits").config.max_batch_size == 2, "the failed reload kept the version"
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        publish_version(repo, "digits", 2, seed=2)
        http.load_model("digits")  # without a config: config.pbtxt again, and the new version its policy picks
        assert http.get_model_config("digits")["max_batch_size"] == 8
        assert http.infer("digits", [_http_tensor(batch)]).as_numpy("probabilities").shape == (3, 10)
        with pytest.raises(InferenceServerException, match="max_batch_size is -1") as raised:
            http.load_model("digits", config='{"max_batch_size": -1}')
        assert raised.value.status() == "400"
    finally:
        http.close()
    assert "Traceback" not in server.log()


def _http_tensor(batch: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return tensor


def test_bad_files_at_startup_and_while_polling_refuse_only_their_model(start_server, tmp_path):
    repo = tmp_path / "models"
    publish_version(repo, "digits", 1, seed=1)
    publish_version(repo, "alpha", 1, seed=2)
    (repo / "alpha" / "config.pbtxt").write_bytes(b"\xff\xfe not UTF-8")
    server = start_server(repo, "--poll-interval", "0.2")
    assert "(not ready: " in server.log()
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_server_live() and not client.is_server_ready()
        assert client.is_model_ready("digits") and not client.is_model_ready("alpha")
        assert client.infer("digits", [_tensor(images(1))]).as_numpy("probabilities").shape == (1, 10)
        beta = publish_version(repo, "beta", 1, seed=3)
        (beta / "manifest.json").write_text('{"format": 1, "name": "beta", "version": 1, "inputs": 5}')
        publish_version(repo, "omega", 1, seed=4)  # scanned after the broken one
        wait_until(lambda: client.is_model_ready("omega"), what="the model after the broken one to load")
        server.wait_for_log("model 'beta' version 1 refused")
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models if m.state != "READY"}
        assert str(repo / "alpha" / "config.pbtxt") in reasons["alpha"] and "beta" in reasons
        for name in ("alpha", "beta"):
            client.unload_model(name)
        assert client.is_server_ready(), "with the broken models unloaded every model asked for is loaded"
    errors = [line for line in server.log().splitlines() if " ERROR " in line]
    assert len(errors) == 2 and str(repo / "alpha" / "config.pbtxt") in errors[0] and "'beta' version 1" in errors[1]
    assert "Traceback" not in server.log()
