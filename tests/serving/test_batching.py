"""Dynamic batching: the batcher in-process (merging, limits, timeouts, failures) and merging end to end."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.batcher import DynamicBatcher
from serving.errors import ServingError, Status
from serving.statistics import ModelStats
from tests.serving.conftest import images, reference_probabilities


class RecordingModel:
    """Doubles its input and records every batch size it was called with; can be held to build up a queue."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.fail = False

    def __call__(self, inputs):
        self.release.wait(10)
        self.batch_sizes.append(len(inputs["x"]))
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}


def make_batcher(model, **limits) -> DynamicBatcher:
    settings = {"max_batch_size": 8, "max_queue_delay_us": 0, "max_queue_size": 16, **limits}
    return DynamicBatcher(name="test", execute=model, stats=ModelStats(), **settings)


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


def test_concurrent_requests_merge_and_each_gets_its_own_rows():
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=64, max_queue_delay_us=2_000_000)
    futures = [batcher.submit(rows(10 * i, i + 1), i + 1) for i in range(5)]
    results = [f.result(10) for f in futures]
    batcher.close()
    assert model.batch_sizes == [15]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(10 * i, i + 1)["x"] * 2)


def test_a_full_batch_does_not_wait_for_the_delay_and_never_exceeds_max_batch_size():
    model = RecordingModel()
    model.release.clear()
    batcher = make_batcher(model, max_batch_size=8, max_queue_delay_us=60_000_000)
    first = batcher.submit(rows(0, 1), 1)
    futures = [first] + [batcher.submit(rows(i, 4), 4) for i in range(3)]
    model.release.set()
    for future in futures:
        future.result(10)  # would take 60 s if a full batch waited for the delay
    batcher.close()
    assert sum(model.batch_sizes) == 13 and max(model.batch_sizes) <= 8


def test_queue_full_is_refused_at_once_with_unavailable():
    model = RecordingModel()
    batcher = make_batcher(model, max_queue_size=2, max_queue_delay_us=60_000_000)
    queued = [batcher.submit(rows(0, 1), 1), batcher.submit(rows(1, 1), 1)]
    with pytest.raises(ServingError) as refused:
        batcher.submit(rows(2, 1), 1)
    assert refused.value.status is Status.UNAVAILABLE and "queue is full (2 requests waiting)" in refused.value.message
    batcher.close()  # flushes without waiting for the 60 s delay
    assert [f.result(1)["y"][0, 0] for f in queued] == [0.0, 2.0]
    with pytest.raises(ServingError, match="shutting down"):
        batcher.submit(rows(0, 1), 1)


def test_request_that_times_out_in_the_queue_fails_with_deadline_exceeded():
    model = RecordingModel()
    model.release.clear()
    batcher = make_batcher(model, max_batch_size=1)
    busy = batcher.submit(rows(0, 1), 1)
    late = batcher.submit(rows(1, 1), 1, timeout_s=0.01)
    time.sleep(0.05)
    model.release.set()
    busy.result(10)
    with pytest.raises(ServingError) as expired:
        late.result(10)
    batcher.close()
    assert expired.value.status is Status.DEADLINE_EXCEEDED
    assert model.batch_sizes == [1]


def test_model_failure_fails_the_batch_with_internal_and_the_batcher_keeps_working():
    model = RecordingModel()
    model.fail = True
    batcher = make_batcher(model)
    with pytest.raises(ServingError) as failed:
        batcher.submit(rows(0, 2), 2).result(10)
    assert failed.value.status is Status.INTERNAL and "boom" in failed.value.message
    model.fail = False
    np.testing.assert_array_equal(batcher.submit(rows(3, 1), 1).result(10)["y"], [[6.0]])
    batcher.close()


def test_concurrent_clients_are_merged_and_each_gets_its_own_answer(start_server, digits_repo):
    server = start_server(digits_repo, "--max-queue-delay-us", "1000000")
    version_dir = digits_repo / "digits" / "1"
    batches = [images(size, seed=100 + size) for size in range(1, 9)]
    barrier = threading.Barrier(len(batches))

    def call(batch):
        with grpcclient.InferenceServerClient(server.url) as client:
            tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            barrier.wait()
            return client.infer("digits", [tensor]).as_numpy("probabilities")

    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(call, batches))
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, reference_probabilities(version_dir, batch))
    with grpcclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics("digits").model_stats[0]
    assert stats.inference_stats.success.count == len(batches)
    assert stats.inference_count == sum(len(b) for b in batches)
    assert stats.execution_count < len(batches), "no request was merged with another"
    assert max(b.batch_size for b in stats.batch_stats) > max(len(b) for b in batches)


def test_queue_full_end_to_end_is_unavailable_and_accepted_requests_succeed(start_server, digits_repo):
    server = start_server(digits_repo, "--max-queue-size", "2", "--max-queue-delay-us", "2000000")
    barrier = threading.Barrier(6)

    def call(seed):
        with grpcclient.InferenceServerClient(server.url) as client:
            tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
            tensor.set_data_from_numpy(images(1, seed))
            barrier.wait()
            try:
                return client.infer("digits", [tensor]).as_numpy("probabilities")
            except InferenceServerException as error:
                return error

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(call, range(6)))
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    served = [o for o in outcomes if isinstance(o, np.ndarray)]
    assert refused and served and len(served) <= 2
    assert all(e.status() == "StatusCode.UNAVAILABLE" and "queue is full" in e.message() for e in refused)
    assert all(o.shape == (1, 10) for o in served)
