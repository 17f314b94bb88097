"""Dynamic batching: the batcher in-process (merging, limits, timeouts, failures) and merging end to end."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.batcher import DynamicBatcher
from serving.errors import ServingError, Status
from serving.protocol import grpc_service_pb2 as pb
from serving.statistics import ModelStats
from tests.serving.conftest import (
    HOLDING_BATCH,
    connected_stub,
    free_port,
    images,
    infer_request,
    probabilities,
    publish_version,
    reference_probabilities,
    scrape,
    wait_for_metric,
)


class RecordingModel:
    """Doubles its input and records every batch size it was called with; can be held to build up a queue."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.firsts: list[float] = []  # the first row's value of each batch: which request led it
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail = False

    def __call__(self, inputs):
        self.started.set()
        self.release.wait(10)
        self.batch_sizes.append(len(inputs["x"]))
        self.firsts.append(float(inputs["x"][0, 0]))
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}


def make_batcher(model, **limits) -> DynamicBatcher:
    """A batcher that always calls the model in its thread: these models block on an event the loop sets."""
    settings = {"max_batch_size": 8, "max_queue_delay_us": 0, "max_queue_size": 16, "inline_below_ns": 0,
                "instances": [model], **limits}  # fmt: skip
    return DynamicBatcher(name="test", stats=ModelStats(), **settings)


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


async def hold(model: RecordingModel, batcher: DynamicBatcher) -> asyncio.Task:
    """Starts one request that finds the model idle and keeps it busy until ``model.release`` is set."""
    model.release.clear()
    model.started.clear()
    busy = asyncio.create_task(batcher.infer(rows(100, 1), 1))
    while not model.started.is_set():
        await asyncio.sleep(0.001)
    return busy


def test_a_lone_request_runs_at_once_without_waiting_for_the_delay():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_queue_delay_us=60_000_000)
        result = await asyncio.wait_for(batcher.infer(rows(0, 2), 2), 10)  # 60 s if it waited for the delay
        await batcher.close()
        return model, result

    model, result = asyncio.run(scenario())
    assert model.batch_sizes == [2]
    np.testing.assert_array_equal(result["y"], [[0.0], [2.0]])


def test_a_call_cheaper_than_the_hand_off_runs_on_the_loop_and_a_slow_one_in_the_pool():
    def threads_of(seconds_per_call: float, sizes: list[int]) -> list[str]:
        callers: list[str] = []

        def model(inputs):
            callers.append("loop" if threading.current_thread() is threading.main_thread() else "pool")
            busy_until = time.thread_time() + seconds_per_call
            while time.thread_time() < busy_until:  # a model computes: it spends CPU, it does not sleep
                pass
            return {"y": inputs["x"] * 2}

        async def scenario():
            batcher = DynamicBatcher(
                name="test", instances=[model], stats=ModelStats(),
                max_batch_size=8, max_queue_delay_us=0, max_queue_size=16,
            )  # fmt: skip
            for size in sizes:
                result = await batcher.infer(rows(0, size), size)
                np.testing.assert_array_equal(result["y"], rows(0, size)["x"] * 2)
            await batcher.close()

        asyncio.run(scenario())
        return callers

    # A size not seen before is measured in the pool; once measured fast (a cold first call may take a few calls
    # to forget), that size runs on the loop. Sizes are grouped by powers of two: 2 and 3 share an estimate.
    fast = threads_of(0, [1] * 8 + [2] + [3] * 8)
    assert fast[0] == "pool" and fast[7] == "loop"
    assert fast[8] == "pool" and fast[-1] == "loop"
    # A call of 5 ms of CPU would stall every other request on the loop: it always runs in the pool.
    assert threads_of(0.005, [1, 1, 1]) == ["pool", "pool", "pool"]


def test_a_warmup_through_the_measuring_runners_sends_the_first_requests_where_their_size_belongs():
    """config.pbtxt's model_warmup runs through ``measuring_runners`` before the batcher serves: the sizes it ran
    are measured, so their first requests need no measuring call in the pool."""
    callers: list[str] = []

    def model(inputs):
        callers.append("loop" if threading.current_thread() is threading.main_thread() else "pool")
        return {"y": inputs["x"] * 2}

    batcher = DynamicBatcher(
        name="test", instances=[model, model], stats=ModelStats(), max_batch_size=8, max_queue_delay_us=0,
        max_queue_size=16,
    )  # fmt: skip
    runners = batcher.measuring_runners()
    for _ in range(4):  # what a sample with count 4 makes each session do
        for runner in runners:
            np.testing.assert_array_equal(runner(rows(0, 4))["y"], rows(0, 4)["x"] * 2)
    assert len(runners) == 2 and len(callers) == 8
    callers.clear()

    async def scenario():
        for size in (4, 5, 1):
            await batcher.infer(rows(0, size), size)
        await batcher.close()

    asyncio.run(scenario())
    assert callers == ["loop", "loop", "pool"], "4 and 5 share a measured estimate; 1 was never warmed up"


def test_of_requests_that_arrive_together_at_an_idle_model_the_first_runs_at_once_and_the_rest_make_one_call():
    async def scenario():
        model = RecordingModel()
        batcher = DynamicBatcher(
            name="test", instances=[model], stats=ModelStats(),
            max_batch_size=64, max_queue_delay_us=60_000_000, max_queue_size=16,
        )  # fmt: skip
        for size in (1, 4, 4):  # measures sizes 1 and 4-7 (the first of a size runs in the pool)
            await batcher.infer(rows(0, size), size)
        model.batch_sizes.clear()
        # Five requests in one turn of the loop, as a transport reads them from five connections at once.
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.infer(rows(10 * i, 1), 1) for i in range(5))), 10
        )  # 60 s if they waited for the delay
        await asyncio.sleep(0)  # a later turn of the loop
        turns: list[int] = []
        asyncio.get_running_loop().call_soon(turns.append, 1)
        lone = await batcher.infer(rows(7, 1), 1)
        assert not turns, "a lone request on an idle model waited for a turn of the loop"
        await batcher.close()
        return model, results, lone

    model, results, lone = asyncio.run(scenario())
    # The first ran on the loop before the others were read; the four after it, none of which waited for the
    # delay, made one call; a request in a later turn of the loop runs at once again.
    assert model.batch_sizes == [1, 4, 1]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(10 * i, 1)["x"] * 2)
    np.testing.assert_array_equal(lone["y"], [[14.0]])


def test_on_wait_is_called_once_for_each_request_that_waits_and_never_for_one_answered_in_the_next_turn():
    """The REST front end watches for a client going away only when told (a watch costs ~50 µs a request)."""

    async def scenario():
        waited: list[str] = []

        def call(label: str, size: int, batcher: DynamicBatcher):
            return batcher.infer(rows(0, size), size, on_wait=lambda: waited.append(label))

        fast = RecordingModel()
        inline = DynamicBatcher(
            name="inline", instances=[fast], stats=ModelStats(),
            max_batch_size=4, max_queue_delay_us=2_000, max_queue_size=16,
        )  # fmt: skip
        for size in (1, 1, 4, 4):  # sizes 1 and 4-7 measured fast: they now run on the loop
            await inline.infer(rows(0, size), size)
        await call("lone", 1, inline)
        # Seven requests in one turn: the first runs at once, the next four fill a call without waiting, and the
        # last two wait for the delay.
        await asyncio.gather(*(call(f"burst{i}", 1, inline) for i in range(7)))
        await inline.close()
        inline_waits = list(waited)

        waited.clear()
        slow = RecordingModel()
        pooled = make_batcher(slow)
        await call("idle, in the pool", 1, pooled)
        busy = await hold(slow, pooled)
        queued = asyncio.create_task(call("behind a busy model", 1, pooled))
        await asyncio.sleep(0.01)
        told_while_queued = list(waited)
        slow.release.set()
        await asyncio.gather(busy, queued)
        await pooled.close()
        return inline_waits, told_while_queued, waited

    inline_waits, told_while_queued, pooled_waits = asyncio.run(scenario())
    assert inline_waits == ["burst5", "burst6"]
    assert told_while_queued == ["idle, in the pool", "behind a busy model"]  # before it ran, not after
    assert pooled_waits == told_while_queued


def test_requests_queued_behind_a_busy_model_merge_and_each_gets_its_own_rows():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=64, max_queue_delay_us=100_000)
        busy = await hold(model, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(10 * i, i + 1), i + 1)) for i in range(5)]
        await asyncio.sleep(0.01)
        model.release.set()
        results = await asyncio.gather(*waiting)
        await busy
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert model.batch_sizes == [1, 15]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(10 * i, i + 1)["x"] * 2)


def test_a_batch_takes_the_longest_run_of_requests_that_adds_up_to_a_preferred_size():
    """Five one-sample requests queued behind a busy model, preferred sizes 2 and 4: a batch of 4, then the last."""

    async def scenario(preferred):
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=64, max_queue_delay_us=1000, preferred_batch_sizes=preferred)
        busy = await hold(model, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(i, 1), 1)) for i in range(5)]
        await asyncio.sleep(0.01)
        model.release.set()
        results = await asyncio.gather(busy, *waiting)
        await batcher.close()
        return model.batch_sizes, results[1:]

    sizes, results = asyncio.run(scenario((2, 4)))
    assert sizes == [1, 4, 1]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(i, 1)["x"] * 2)
    assert asyncio.run(scenario(()))[0] == [1, 5], "without preferred sizes a batch takes what fits"
    assert asyncio.run(scenario((100,)))[0] == [1, 5], "a preferred size above max_batch_size is left out"


def test_a_queue_that_adds_up_to_a_preferred_size_runs_without_waiting_out_the_delay():
    """One instance busy, one free, a delay of a minute: the fourth sample makes a preferred batch, which runs."""

    async def scenario():
        model = RecordingModel()
        other = RecordingModel()
        batcher = make_batcher(model, max_batch_size=64, max_queue_delay_us=60_000_000, instances=[model, other],
                               preferred_batch_sizes=(4,))  # fmt: skip
        busy = await hold(model, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(i, 1), 1)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*waiting), timeout=20)
        model.release.set()
        await busy
        await batcher.close()
        return other.batch_sizes, results

    sizes, results = asyncio.run(scenario())
    assert sizes == [4] and len(results) == 4


def test_each_instance_runs_one_batch_at_a_time_and_a_free_one_takes_the_queue():
    async def scenario():
        first, second = RecordingModel(), RecordingModel()
        batcher = make_batcher(first, instances=[first, second])
        assert batcher.instance_count == 2
        busy_first = await hold(first, batcher)
        second.release.clear()
        busy_second = asyncio.create_task(batcher.infer(rows(200, 2), 2))
        await asyncio.wait_for(asyncio.to_thread(second.started.wait, 10), 10)  # beside the first, not behind it
        assert batcher.queue_depth == 0
        waiting = [asyncio.create_task(batcher.infer(rows(10 * i, 1), 1)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 3, "a third batch ran while both instances were busy"
        second.release.set()
        results = await asyncio.wait_for(asyncio.gather(busy_second, *waiting), 10)
        assert not busy_first.done()
        first.release.set()
        await busy_first
        await batcher.close()
        return first, second, results

    first, second, results = asyncio.run(scenario())
    # The three queued requests went to the instance that was freed first, merged into one call.
    assert first.batch_sizes == [1] and second.batch_sizes == [2, 3]
    np.testing.assert_array_equal(results[0]["y"], [[400.0], [402.0]])
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result["y"], [[20.0 * i]])


def test_a_request_that_arrives_while_an_instance_runs_waits_for_the_delay_to_merge_with_others():
    async def scenario():
        first, second = RecordingModel(), RecordingModel()
        batcher = make_batcher(first, instances=[first, second], max_queue_delay_us=60_000_000)
        busy = await hold(first, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(10 * i, 1), 1)) for i in range(3)]
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 3 and not second.started.is_set(), "a request did not wait for the delay"
        closing = asyncio.create_task(batcher.close())  # flushes the queue without waiting for the 60 s delay
        results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        first.release.set()
        await busy
        await closing
        return second, results

    second, results = asyncio.run(scenario())
    assert second.batch_sizes == [3]  # on the free instance, while the first still ran
    assert [r["y"][0, 0] for r in results] == [0.0, 20.0, 40.0]


class Computing:
    """A model that spends ``cpu_s`` of its thread's CPU per call (a model computes, it does not sleep), records
    ``(name, batch size)`` in ``calls``, and can be held while it runs."""

    def __init__(self, name: str, calls: list, cpu_s: float) -> None:
        self.name, self.calls, self.cpu_s = name, calls, cpu_s
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, inputs):
        self.started.set()
        busy_until = time.thread_time() + self.cpu_s
        while time.thread_time() < busy_until:
            pass
        self.release.wait(10)
        self.calls.append((self.name, len(inputs["x"])))
        self.threads.append(threading.current_thread())
        return {"y": inputs["x"] * 2}


def wide_batcher(cpu_s: float, **settings) -> tuple[DynamicBatcher, list, dict[str, Computing]]:
    """Two instances and a wide session, all recording into one list of calls."""
    calls: list = []
    models = {name: Computing(name, calls, cpu_s) for name in ("first", "second", "wide")}
    batcher = DynamicBatcher(
        name="test", instances=[models["first"], models["second"]], wide=models["wide"], stats=ModelStats(),
        max_batch_size=8, max_queue_delay_us=0, max_queue_size=16, **settings,
    )  # fmt: skip
    return batcher, calls, models


def test_a_long_call_that_finds_the_model_quiet_runs_on_the_wide_session_holding_every_instance():
    async def scenario():
        batcher, calls, models = wide_batcher(0.002, wide_after_quiet_ns=60_000_000_000)
        wide = models["wide"]
        await batcher.infer(rows(0, 1), 1)  # a size not seen yet runs on an instance, which measures it
        wide.release.clear()
        busy = asyncio.create_task(batcher.infer(rows(1, 1), 1))
        await asyncio.wait_for(asyncio.to_thread(wide.started.wait, 10), 10)
        waiting = [asyncio.create_task(batcher.infer(rows(10 * i, 1), 1)) for i in range(2)]
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 2, "a request ran beside the wide session's call"
        wide.release.set()
        results = await asyncio.wait_for(asyncio.gather(busy, *waiting), 10)
        # Requests waited for the model a moment ago: it is under load, so a request finding it idle takes one
        # instance, leaving the other for those that come after it.
        await batcher.infer(rows(5, 1), 1)
        await batcher.close()
        return calls, results

    calls, results = asyncio.run(scenario())
    assert calls[:2] == [("first", 1), ("wide", 1)]
    assert [name for name, _ in calls[2:-1]] in (["first"], ["second"], ["first", "second"], ["second", "first"])
    assert sum(size for _, size in calls[2:-1]) == 2 and calls[-1][0] in ("first", "second")
    assert [r["y"][0, 0] for r in results] == [2.0, 0.0, 20.0]


def test_the_wide_session_runs_again_once_the_model_is_quiet_and_never_for_a_short_call():
    async def lone_calls(cpu_s: float, quiet_ns: int) -> list:
        batcher, calls, _ = wide_batcher(cpu_s, wide_after_quiet_ns=quiet_ns)
        await batcher.infer(rows(0, 1), 1)
        held = asyncio.gather(*(batcher.infer(rows(i, 1), 1) for i in range(3)))  # three at once: they wait
        await asyncio.wait_for(held, 10)
        await asyncio.sleep(0.05)
        await batcher.infer(rows(0, 1), 1)
        await batcher.close()
        return [name for name, _ in calls]

    # 50 ms after the last request that waited, a lone long call has both cores again.
    assert asyncio.run(lone_calls(0.002, 10_000_000))[-1] == "wide"
    # A call of a few microseconds loses more to waking a second thread than it gains: it keeps one instance.
    assert "wide" not in asyncio.run(lone_calls(0, 10_000_000))


def test_a_short_call_measured_long_once_goes_back_to_an_instance_after_one_wide_call():
    async def scenario():
        batcher, calls, models = wide_batcher(0.002)
        await batcher.infer(rows(0, 1), 1)  # a cold first call: an instance measures it long
        for model in models.values():
            model.cpu_s = 0  # every later call is short
        for _ in range(4):
            await batcher.infer(rows(0, 1), 1)
            await asyncio.sleep(0)
        await batcher.close()
        return [name for name, _ in calls]

    # The wide call measured short, so the size goes back to an instance, whose estimate is then short too.
    assert asyncio.run(scenario()) == ["first", "wide", "first", "first", "first"]


def test_a_wide_call_measured_short_enough_runs_on_the_loop_and_a_longer_one_in_the_pool():
    async def lone_wide_threads(**settings) -> list[threading.Thread]:
        batcher, _, models = wide_batcher(0.002, wide_after_quiet_ns=0, **settings)
        for _ in range(4):  # an instance measures the size, then the wide session: in the pool, then measured
            await batcher.infer(rows(0, 1), 1)
            await asyncio.sleep(0)
        await batcher.close()
        return models["wide"].threads

    loop_thread = threading.current_thread()
    first, *measured = asyncio.run(lone_wide_threads(wide_inline_below_ns=1_000_000_000))
    assert first is not loop_thread and measured == [loop_thread] * 2
    # A wide call of 2 ms above a 1 ms threshold keeps to the pool: the loop never pauses that long for it.
    assert loop_thread not in asyncio.run(lone_wide_threads(wide_inline_below_ns=1_000_000))


def test_a_full_batch_does_not_wait_for_the_delay_and_never_exceeds_max_batch_size():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=8, max_queue_delay_us=60_000_000)
        busy = await hold(model, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(i, 4), 4)) for i in range(4)]
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.wait_for(asyncio.gather(busy, *waiting), 10)  # 60 s if a full batch waited for the delay
        await batcher.close()
        return model

    assert asyncio.run(scenario()).batch_sizes == [1, 8, 8]


def test_queue_full_is_refused_at_once_with_unavailable():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_queue_size=2, max_queue_delay_us=60_000_000)
        busy = await hold(model, batcher)
        queued = [asyncio.create_task(batcher.infer(rows(i, 1), 1)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as refused:
            await batcher.infer(rows(2, 1), 1)
        model.release.set()
        await busy
        closing = asyncio.create_task(batcher.close())  # flushes without waiting for the 60 s delay
        results = await asyncio.wait_for(asyncio.gather(*queued), 10)
        await closing
        with pytest.raises(ServingError, match="shutting down"):
            await batcher.infer(rows(0, 1), 1)
        return refused.value, results

    refused, results = asyncio.run(scenario())
    assert refused.status is Status.UNAVAILABLE and "queue is full (2 requests waiting)" in refused.message
    assert [r["y"][0, 0] for r in results] == [0.0, 2.0]


def test_without_dynamic_batching_every_queued_request_runs_in_a_call_of_its_own_without_a_delay():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_queue_delay_us=60_000_000, merges=False)
        busy = await hold(model, batcher)
        waiting = [asyncio.create_task(batcher.infer(rows(10 * size, size), size)) for size in (1, 2, 3)]
        await asyncio.sleep(0.01)
        model.release.set()
        results = await asyncio.wait_for(asyncio.gather(busy, *waiting), 10)  # 60 s if one waited for the delay
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert model.batch_sizes == [1, 1, 2, 3] and model.firsts == [100.0, 10.0, 20.0, 30.0]
    np.testing.assert_array_equal(results[3]["y"], rows(30, 3)["x"] * 2)


def test_the_highest_priority_level_queued_runs_first_and_each_level_has_its_own_bound():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=2, max_queue_size=8, level_queue_sizes={1: 2})
        busy = await hold(model, batcher)
        # Arrival order: two of level 2, two of level 1, one more of level 2 (level 1 is the highest priority).
        waiting = [
            asyncio.create_task(batcher.infer(rows(value, 1), 1, level=level))
            for value, level in ((0, 2), (1, 2), (2, 1), (3, 1), (4, 2))
        ]
        await asyncio.sleep(0.01)
        with pytest.raises(ServingError) as refused:  # level 1 holds its bound of 2
            await batcher.infer(rows(5, 1), 1, level=1)
        model.release.set()
        await asyncio.gather(busy, *waiting)
        await batcher.close()
        return model, refused.value

    model, refused = asyncio.run(scenario())
    assert refused.status is Status.UNAVAILABLE
    assert "queue of priority level 1 is full (2 requests waiting)" in refused.message
    assert model.batch_sizes == [1, 2, 2, 1] and model.firsts == [100.0, 2.0, 0.0, 4.0]


def test_a_request_past_its_delay_goes_behind_the_requests_of_its_level_still_in_time_and_still_runs():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=1)
        busy = await hold(model, batcher)
        now = time.monotonic()
        waiting = [
            asyncio.create_task(batcher.infer(rows(value, 1), 1, delay_at=delay_at))
            for value, delay_at in ((0, now + 0.01), (1, None), (2, now + 60))
        ]
        await asyncio.sleep(0.05)  # the first request's delay passes while it is queued
        model.release.set()
        results = await asyncio.gather(busy, *waiting)
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert model.firsts == [100.0, 1.0, 2.0, 0.0]
    assert [r["y"][0, 0] for r in results[1:]] == [0.0, 2.0, 4.0]


def test_a_request_whose_deadline_passes_in_the_queue_fails_and_never_runs():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=1)
        busy = await hold(model, batcher)
        with pytest.raises(ServingError) as expired:
            await batcher.infer(rows(1, 1), 1, deadline=time.monotonic() + 0.01)
        assert batcher.queue_depth == 0, "an expired request must leave the queue at once"
        model.release.set()
        await busy
        await batcher.close()
        return model, expired.value

    model, expired = asyncio.run(scenario())
    assert expired.status is Status.DEADLINE_EXCEEDED
    assert model.batch_sizes == [1], "the expired request ran"


def test_a_cancelled_request_leaves_the_queue_and_never_runs():
    async def scenario():
        model = RecordingModel()
        batcher = make_batcher(model, max_batch_size=1)
        busy = await hold(model, batcher)
        gone = asyncio.create_task(batcher.infer(rows(1, 1), 1))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 1
        gone.cancel()  # what grpc.aio does when the client goes away
        await asyncio.gather(gone, return_exceptions=True)
        assert batcher.queue_depth == 0
        model.release.set()
        await busy
        await batcher.close()
        return model

    assert asyncio.run(scenario()).batch_sizes == [1]


def test_model_failure_fails_the_batch_with_internal_and_the_batcher_keeps_working():
    async def scenario():
        model = RecordingModel()
        model.fail = True
        batcher = make_batcher(model)
        with pytest.raises(ServingError) as failed:
            await batcher.infer(rows(0, 2), 2)
        model.fail = False
        result = await batcher.infer(rows(3, 1), 1)
        await batcher.close()
        return failed.value, result

    failed, result = asyncio.run(scenario())
    assert failed.status is Status.INTERNAL and "boom" in failed.message
    np.testing.assert_array_equal(result["y"], [[6.0]])


def test_concurrent_clients_are_merged_and_each_gets_its_own_answer(start_server, slow_repo):
    server = start_server(slow_repo, "--max-queue-delay-us", "1000000")
    version_dir = slow_repo / "digits" / "1"
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
        np.testing.assert_allclose(result, reference_probabilities(version_dir, batch), rtol=1e-5, atol=1e-6)
    with grpcclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics("digits").model_stats[0]
    assert stats.inference_stats.success.count == len(batches)
    assert stats.inference_count == sum(len(b) for b in batches)
    assert stats.execution_count < len(batches), "no request was merged with another"
    assert max(b.batch_size for b in stats.batch_stats) > max(len(b) for b in batches)


@pytest.mark.parametrize("client_module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_a_triton_client_priority_overtakes_requests_queued_before_it(start_server, tmp_path, client_module):
    repo = tmp_path / "repository"
    publish_version(repo, "digits", 1, seed=1, slow=True, instances=1, max_batch_size=HOLDING_BATCH)
    config = repo / "digits" / "config.pbtxt"
    levels = "dynamic_batching { priority_levels: 2 default_priority_level: 2"
    config.write_text(config.read_text().replace("dynamic_batching {", levels, 1))
    server = start_server(repo)
    url = server.url if client_module is grpcclient else server.http_url
    finished: list[str] = []

    def call(label: str, size: int, priority: int) -> None:
        with client_module.InferenceServerClient(url) as client:
            tensor = client_module.InferInput("image", [size, 8, 8], "UINT8")
            tensor.set_data_from_numpy(images(size, seed=size))
            assert client.infer("digits", [tensor], priority=priority).as_numpy("probabilities").shape == (size, 10)
        finished.append(label)

    # HOLDING_BATCH images keep the one instance busy for most of a second; the others queue behind them in the
    # order sent, and no two of them fit in one batch.
    sends = [("holding", HOLDING_BATCH, 0), ("first", 300, 0), ("second", 300, 2), ("urgent", 300, 1)]
    with ThreadPoolExecutor(len(sends)) as pool:
        calls = []
        for send in sends:
            calls.append(pool.submit(call, *send))
            time.sleep(0.1)
        for each in calls:
            each.result()
    assert finished == ["holding", "urgent", "first", "second"]


def test_full_queue_answers_unavailable_at_once_and_health_still_answers(start_server, slow_repo):
    """Also what Triton's metrics say of it: the requests pending, and the failures by reason."""
    metrics_port = free_port()
    server = start_server(
        slow_repo, "--max-queue-size", "2", "--max-queue-delay-us", "2000000", "--metrics-port", str(metrics_port)
    )
    version = 'model="digits",version="1"'
    with grpc.insecure_channel(server.url) as channel:
        stub = connected_stub(channel)
        running = stub.ModelInfer.future(infer_request(images(HOLDING_BATCH, seed=0)), timeout=60)
        time.sleep(0.2)
        kept, cancelled = (stub.ModelInfer.future(infer_request(images(1, seed=i)), timeout=60) for i in (1, 2))
        wait_for_metric(metrics_port, 'serving_queue_depth{model="digits"} 2.0')
        assert f"nv_inference_pending_request_count{{{version}}} 2.0" in scrape(metrics_port)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request(images(1, seed=3)), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "queue is full" in refused.value.details()
        assert not kept.done() and not cancelled.done(), "the refusal waited for the queued requests"
        assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        cancelled.cancel()  # the client goes away: Triton's CANCELED
        wait_for_metric(metrics_port, 'nv_inference_request_failure{model="digits",reason="CANCELED",version="1"} 1.0')
        assert probabilities(running.result()).shape == (HOLDING_BATCH, 10)
        assert probabilities(kept.result()).shape == (1, 10)
    text = scrape(metrics_port)
    assert 'nv_inference_request_failure{model="digits",reason="REJECTED",version="1"} 1.0' in text
    assert f"nv_inference_request_success{{{version}}} 2.0" in text
    assert f"nv_inference_pending_request_count{{{version}}} 0.0" in text
