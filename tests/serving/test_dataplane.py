"""serving.dataplane in-process: the transport-free API every front end translates to (values in, values out)."""

import asyncio
import time
from collections.abc import Callable

import numpy as np
import onnx
import pytest

from serving.dataplane import DataPlane, InferenceRequest, InputTensor, RequestedOutput
from serving.errors import ServingError, Status
from serving.runtime import RuntimeOptions
from tests.serving.conftest import (
    CLASS_NAMES,
    HOLDING_BATCH,
    images,
    publish_optional,
    publish_version,
    reference_probabilities,
    replace_dynamic_batching,
)


def run(scenario, repo, **options):
    """Runs ``scenario(dataplane)`` on a fresh data plane over ``repo`` (``options`` for it: a response cache...),
    closing it afterwards."""

    async def main():
        dataplane = DataPlane([repo], RuntimeOptions(device="cpu", intra_op_threads=1), poll_interval_s=0, **options)
        await dataplane.start()
        try:
            return await scenario(dataplane)
        finally:
            await dataplane.close()

    return asyncio.run(main())


def request(batch: np.ndarray, **fields) -> InferenceRequest:
    return InferenceRequest(model="digits", inputs=[InputTensor("image", "UINT8", batch.shape, batch)], **fields)


def test_infer_returns_arrays_and_classification_and_counts_statistics(digits_repo):
    batch = images(3, seed=21)

    async def scenario(dataplane):
        plain = await dataplane.infer(request(batch, id="a"))
        top = await dataplane.infer(
            request(batch, outputs=[RequestedOutput.from_parameters("probabilities", {"classification": 2})])
        )
        return plain, top, dataplane.statistics("digits"), dataplane.ready()

    plain, top, statistics, ready = run(scenario, digits_repo)
    expected = reference_probabilities(digits_repo / "digits" / "1", batch)
    assert (plain.model, plain.version, plain.id) == ("digits", "1", "a") and ready
    [output] = plain.outputs
    assert (output.name, output.datatype, output.shape) == ("probabilities", "FP32", (3, 10))
    np.testing.assert_array_equal(output.data, expected)
    [labels] = top.outputs
    assert (labels.datatype, labels.shape) == ("BYTES", (3, 2))
    assert labels.data[0, 0].decode().split(":")[2] == CLASS_NAMES[int(expected[0].argmax())]
    [stats] = statistics
    assert stats.stats.success.count == 2 and stats.stats.inference_count == 6


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"model": "nope"}, Status.NOT_FOUND, "unknown model 'nope'"),
        ({"version": "9" * 5000}, Status.NOT_FOUND, "no loaded version"),
        ({"inputs": []}, Status.INVALID_ARGUMENT, "missing input 'image'"),
        ({"parameters": {"timeout": "soon"}}, Status.INVALID_ARGUMENT, "timeout must be an integer"),
        ({"parameters": {"priority": -1}}, Status.INVALID_ARGUMENT, "priority must be an integer >= 0"),
        ({"parameters": {"priority": 1.5}}, Status.INVALID_ARGUMENT, "priority must be an integer >= 0"),
        ({"outputs": [RequestedOutput("logits")]}, Status.INVALID_ARGUMENT, "unknown output 'logits'"),
        ({"deadline": 0.0}, Status.DEADLINE_EXCEEDED, "timed out"),
    ],
)
def test_infer_refuses_with_a_status_and_one_line(digits_repo, change, status, fragment):
    async def scenario(dataplane):
        fields = {"model": "digits", "inputs": request(images(1)).inputs, **change}
        with pytest.raises(ServingError) as raised:
            await dataplane.infer(InferenceRequest(**fields))
        return raised.value

    error = run(scenario, digits_repo)
    assert error.status is status and fragment in error.message and "\n" not in error.message


def test_an_optional_input_may_be_left_out_but_a_request_needs_some_input(tmp_path):
    publish_optional(tmp_path)
    # A model whose only input is optional: a request must still send something to be a request.
    publish_optional(tmp_path, "constant")
    config = tmp_path / "constant" / "config.pbtxt"
    config.write_text(config.read_text().replace('{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] },', ""))
    graph = onnx.load(tmp_path / "constant" / "1" / "model.onnx")
    graph.graph.node[0].CopyFrom(onnx.helper.make_node("Identity", ["bias"], ["y"]))
    graph.graph.input.pop(0)
    onnx.save(graph, tmp_path / "constant" / "1" / "model.onnx")
    bias = InputTensor("bias", "FP32", (3,), np.full(3, 10, np.float32))
    x = InputTensor("x", "FP32", (3,), np.arange(3, dtype=np.float32))

    async def scenario(dataplane):
        answers = [(await dataplane.infer(InferenceRequest(model="biased", inputs=[x]))).outputs[0].data.tolist()]
        answers.append((await dataplane.infer(InferenceRequest(model="biased", inputs=[bias, x]))).outputs[0].data)
        answers.append((await dataplane.infer(InferenceRequest(model="constant", inputs=[bias]))).outputs[0].data)
        refusals = []
        for model, inputs in (("biased", [bias]), ("constant", [])):
            with pytest.raises(ServingError) as raised:
                await dataplane.infer(InferenceRequest(model=model, inputs=inputs))
            refusals.append((raised.value.status, raised.value.message))
        return answers, refusals

    answers, refusals = run(scenario, tmp_path)
    assert answers[0] == [1, 2, 3] and answers[1].tolist() == [10, 11, 12] and answers[2].tolist() == [10] * 3
    assert refusals == [
        (Status.INVALID_ARGUMENT, "missing input 'x' (FP32 [3])"),
        (Status.INVALID_ARGUMENT, "the request has no inputs; send at least one of: bias"),
    ]


async def dropped_behind_a_running_request(dataplane, late: Callable[[], InferenceRequest]) -> ServingError:
    """HOLDING_BATCH images keep the slow one-instance model busy; the request that ``late`` makes then queues
    behind them and must be dropped while they still run. Returns its error."""
    holding = asyncio.create_task(dataplane.infer(request(images(HOLDING_BATCH))))
    await asyncio.sleep(0.2)  # the holding request runs; the next one queues behind it
    with pytest.raises(ServingError) as raised:
        await dataplane.infer(late())
    assert not holding.done(), "the holding request ended before the queued one could time out"
    await holding
    return raised.value


def test_the_config_queue_timeout_drops_a_request_that_waits_longer_whatever_timeout_it_asks_for(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1, slow=True, instances=1)  # one instance: the next request queues
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("max_queue_size: 256", "max_queue_size: 256 default_timeout_microseconds: 50000")
    )

    def late() -> InferenceRequest:
        return request(images(1), parameters={"timeout": 60_000_000})

    # Dropped while the holding request still runs: the config's 50 ms applied, not the request's 60 s.
    error = run(lambda dataplane: dropped_behind_a_running_request(dataplane, late), tmp_path)
    assert error.status is Status.UNAVAILABLE and "timed out" in error.message  # Triton's status for it


@pytest.mark.parametrize(
    ("timeout_us", "deadline_s", "status"),
    [
        (20_000, None, Status.UNAVAILABLE),  # the request's own queue timeout: shed load, as Triton answers it
        (60_000_000, 0.02, Status.DEADLINE_EXCEEDED),  # the transport's deadline is the tighter one
        (20_000, 60.0, Status.UNAVAILABLE),
    ],
)
def test_the_tighter_of_queue_timeout_and_deadline_decides_the_status(tmp_path, timeout_us, deadline_s, status):
    publish_version(tmp_path, "digits", 1, seed=1, slow=True, instances=1)

    def late() -> InferenceRequest:  # the deadline counts from when the request is sent
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return request(images(1), parameters={"timeout": timeout_us}, deadline=deadline)

    error = run(lambda dataplane: dropped_behind_a_running_request(dataplane, late), tmp_path)
    assert error.status is status and "timed out after" in error.message


def finishing_order(sends: list[tuple[str, int, dict]]) -> Callable:
    """A scenario: the first of ``sends`` (label, images, parameters) starts the slow one-instance model, the others
    queue behind it in one turn of the loop; returns the labels in the order their answers came."""

    async def scenario(dataplane):
        finished: list[str] = []

        async def send(label: str, size: int, parameters: dict) -> None:
            await dataplane.infer(request(images(size), parameters=parameters))
            finished.append(label)

        (first, *queued) = sends
        holding = asyncio.create_task(send(*first))
        await asyncio.sleep(0.01)  # the first request runs; the others arrive while it does
        await asyncio.gather(holding, *(send(*each) for each in queued))
        return finished

    return scenario


def test_a_request_of_a_higher_priority_level_runs_before_those_queued_ahead_of_it(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1, slow=True, instances=1, max_batch_size=8)  # 5 + 5 do not fit
    config = tmp_path / "digits" / "config.pbtxt"
    levels = "dynamic_batching { priority_levels: 2 default_priority_level: 2"
    config.write_text(config.read_text().replace("dynamic_batching {", levels, 1))
    sends = [("holding", 8, {}), ("first", 5, {}), ("second", 5, {"priority": 2}), ("urgent", 5, {"priority": 1})]
    assert run(finishing_order(sends), tmp_path) == ["holding", "urgent", "first", "second"]


def test_under_timeout_action_delay_a_request_past_its_timeout_runs_after_those_still_in_time(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1, slow=True, instances=1, max_batch_size=8)
    config = tmp_path / "digits" / "config.pbtxt"
    policy = "default_timeout_microseconds: 60000000 allow_timeout_override: true timeout_action: DELAY"
    config.write_text(config.read_text().replace("max_queue_size: 256", f"max_queue_size: 256 {policy}"))
    sends = [("holding", 8, {}), ("late", 5, {"timeout": 1000}), ("in time", 5, {})]
    assert run(finishing_order(sends), tmp_path) == ["holding", "in time", "late"]  # late, but not dropped


def test_without_dynamic_batching_in_config_each_request_runs_in_a_call_of_its_own(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1, slow=True, instances=1)
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(replace_dynamic_batching(config.read_text()))
    sends = [("holding", 8, {}), ("a", 1, {}), ("b", 2, {}), ("c", 1, {})]

    async def scenario(dataplane):
        finished = await finishing_order(sends)(dataplane)
        return finished, dataplane.statistics("digits")[0].stats, dataplane.model_config("digits")

    finished, stats, applied = run(scenario, tmp_path)
    assert finished == ["holding", "a", "b", "c"]
    # With dynamic batching the three queued requests would make one call: here each made its own.
    assert (stats.execution_count, stats.inference_count) == (4, 12)
    assert not applied.HasField("dynamic_batching")


def test_drain_refuses_new_work_and_waits_for_admitted_requests(digits_repo):
    async def scenario(dataplane):
        dataplane.admit()
        dataplane.begin_drain()
        with pytest.raises(ServingError, match="shutting down"):
            dataplane.admit()
        assert dataplane.live() and not dataplane.ready()
        assert not await dataplane.wait_idle(0.01)
        asyncio.get_running_loop().call_later(0.01, dataplane.release)
        # Every front end's drain and the server wait at once: the last answer must wake all of them.
        started = time.monotonic()
        woken = await asyncio.gather(*(dataplane.wait_idle(10) for _ in range(3)))
        return woken, time.monotonic() - started

    woken, waited_s = run(scenario, digits_repo)
    assert woken == [True, True, True] and waited_s < 5, f"a waiter slept {waited_s:.1f} s of its 10 s grace"


def test_admission_is_bounded_across_callers_and_reopens_when_one_is_answered(digits_repo):
    async def scenario(dataplane):
        dataplane.max_inflight = 2
        dataplane.admit()
        dataplane.admit()
        with pytest.raises(ServingError) as refused:
            dataplane.admit()
        dataplane.release()
        dataplane.admit()  # room again
        return refused.value, dataplane.inflight

    refused, inflight = run(scenario, digits_repo)
    assert refused.status is Status.UNAVAILABLE and "2 requests in flight" in refused.message
    assert inflight == 2


def test_metadata_config_and_repository_are_plain_values(digits_repo):
    async def scenario(dataplane):
        await dataplane.unload("digits")
        unloaded = (dataplane.model_ready("digits"), dataplane.repository_index())
        await dataplane.load("digits")
        return dataplane.model_metadata("digits"), dataplane.model_config("digits"), unloaded

    metadata, config, (ready_after_unload, index) = run(scenario, digits_repo)
    assert (metadata.name, metadata.versions, metadata.platform) == ("digits", ("1",), "onnxruntime_onnx")
    assert metadata.execution_providers == ("CPUExecutionProvider",)
    assert config.max_batch_size == 1024 and config.parameters["execution_providers"].string_value
    assert not ready_after_unload and index[0].reason == "unloaded through the repository API"


def test_each_output_is_classified_with_its_own_label_file(tmp_path):
    """Triton's classification names an output's classes from that output's label_filename (or gives indices)."""
    import onnx
    from onnx import TensorProto, helper

    version_dir = tmp_path / "two_heads" / "1"
    version_dir.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Neg", ["x"], ["negated"])],
        "two_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3])
            for name in (
                "same",
                "negated",
            )
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), version_dir / "model.onnx")
    (tmp_path / "two_heads" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx" max_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "same" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "colours.txt" },\n'
        '         { name: "negated" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "sizes.txt" } ]\n'
    )
    (tmp_path / "two_heads" / "colours.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "two_heads" / "sizes.txt").write_text("small\nmedium\nlarge\n")
    values = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)

    async def scenario(dataplane):
        top = {name: RequestedOutput.from_parameters(name, {"classification": 1}) for name in ("same", "negated")}
        response = await dataplane.infer(
            InferenceRequest("two_heads", [InputTensor("x", "FP32", values.shape, values)], outputs=list(top.values()))
        )
        return {output.name: output.data[0, 0].decode() for output in response.outputs}

    assert run(scenario, tmp_path) == {"same": "0.700000:1:green", "negated": "-0.100000:0:small"}


def test_explicit_model_control_loads_the_models_named_at_start_then_on_load_requests(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    publish_version(tmp_path, "other", 1, seed=2)

    async def scenario(dataplane):
        def serving() -> list[str]:
            return sorted(served.name for served in dataplane.repository.loaded())

        at_start, ready = serving(), dataplane.ready()
        held = next(entry for entry in dataplane.repository_index() if entry.name == "other")
        await dataplane.load("other")
        loaded = serving()
        await dataplane.unload("digits")
        return at_start, ready, held, loaded, serving()

    at_start, ready, held, loaded, after_unload = run(
        scenario, tmp_path, model_control="explicit", load_models=("digits",)
    )
    assert at_start == ["digits"] and ready, "a model not asked for does not make the server unready"
    assert held.state == "UNAVAILABLE" and "--model-control-mode explicit" in held.reason
    assert loaded == ["digits", "other"] and after_unload == ["other"]
    nothing = run(lambda dataplane: asyncio.sleep(0, dataplane.repository.loaded()), tmp_path, model_control="explicit",
                  load_models=())  # fmt: skip
    assert nothing == []


def test_with_model_control_none_every_model_loads_and_load_and_unload_requests_are_refused(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)

    async def scenario(dataplane):
        refusals = []
        for action in (dataplane.load, dataplane.unload):
            with pytest.raises(ServingError) as refused:
                await action("digits")
            refusals.append(refused.value)
        return refusals, dataplane.model_ready("digits")

    refusals, ready = run(scenario, tmp_path, model_control="none")
    assert ready and all(r.status is Status.UNAVAILABLE and "--model-control-mode none" in r.message for r in refusals)
