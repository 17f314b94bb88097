"""Triton's ensembles: the wiring of the steps checked when the ensemble loads (every tensor made once, taken from
somewhere, no cycle, every input used and every output made), a request run through its steps' models (which
count and batch it as their own requests), a step that fails or is not loaded named in one line, and a live server
answering tritonclient over gRPC and HTTP; any ensemble config, fuzzed, loads or is refused in one line."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import given
from hypothesis import strategies as st

from serving.dataplane import InferenceRequest, InputTensor, RequestedOutput
from serving.ensemble import Step, read_steps, run_steps
from serving.errors import ModelLoadError, ServingError, Status
from serving.model_files import read_config, read_version
from tests.conftest import fuzz_settings
from tests.serving.conftest import CLASS_NAMES, ENSEMBLE_CONFIG, images, publish_ensemble, reference_probabilities
from tests.serving.test_dataplane import run
from tests.serving.test_model_files import mutations


def test_the_steps_are_read_in_an_order_that_runs_each_after_those_it_takes_tensors_from(tmp_path):
    """The argmax step is written first, and the digits step asks for version 1."""
    head = ENSEMBLE_CONFIG[: ENSEMBLE_CONFIG.index("ensemble_scheduling")]
    publish_ensemble(
        tmp_path,
        head + "ensemble_scheduling { step [\n"
        '  { model_name: "argmax" model_version: -1\n'
        '    input_map { key: "scores" value: "PROBABILITIES" } output_map { key: "best" value: "CLASS" } },\n'
        '  { model_name: "digits" model_version: 1\n'
        '    input_map { key: "image" value: "IMAGE" } output_map { key: "probabilities" value: "PROBABILITIES" } }\n'
        "] }\n",
    )
    steps = read_steps(read_config(tmp_path / "pipeline"), "pipeline", "config.pbtxt")
    assert [(step.model, step.version) for step in steps] == [("digits", "1"), ("argmax", "")]
    assert steps[1].inputs == {"scores": "PROBABILITIES"} and steps[1].outputs == {"best": "CLASS"}
    assert read_version(tmp_path / "pipeline" / "1", read_config(tmp_path / "pipeline")).onnx_path is None


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (("value: \"CLASS\"", "value: \"PROBABILITIES\""), "tensor 'PROBABILITIES' is produced twice"),
        (("key: \"scores\" value: \"PROBABILITIES\"", "key: \"scores\" value: \"SCORES\""),
         "tensor 'SCORES' is neither an input of the ensemble nor another step's output"),
        (("key: \"image\" value: \"IMAGE\"", "key: \"image\" value: \"CLASS\""), "the steps form a cycle"),
        (("output_map { key: \"best\" value: \"CLASS\" }", "output_map { key: \"best\" value: \"BEST\" }"),
         "output 'CLASS' of the ensemble is produced by no step"),
        (('model_name: "argmax"', 'model_name: "pipeline"'), "model_name must name another model"),
        (('model_name: "argmax" model_version: -1', 'model_name: "argmax" model_version: 0'),
         "model_version must be -1 (the newest) or a version number, got 0"),
        (("ensemble_scheduling { step [", "ensemble_scheduling { } #"), "has no step"),
        (("max_batch_size: 8", "max_batch_size: 8 response_cache { enable: true }"), "response_cache on an ensemble"),
        (("max_batch_size: 8", 'max_batch_size: 8 instance_group [ { count: 2 } ]'),
         "an ensemble has no instance_group"),
    ],
)  # fmt: skip
def test_wiring_that_cannot_run_refuses_the_ensemble_in_one_line(tmp_path, edit, words):
    text = ENSEMBLE_CONFIG.replace(*edit)
    if "#" in edit[1]:  # cut the steps out whole
        text = text[: text.index("ensemble_scheduling")] + "ensemble_scheduling { }\n"
    publish_ensemble(tmp_path, text)
    with pytest.raises(ModelLoadError) as refused:
        read_config(tmp_path / "pipeline")
    assert words in str(refused.value) and "config.pbtxt" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (('name: "CLASS" data_type: TYPE_INT64', 'name: "CLASS" data_type: TYPE_INT32'),
         "output 'CLASS' of the ensemble is INT32, but it is INT64 (output 'best' of model 'argmax')"),
        (('key: "scores" value', 'key: "logits" value'),
         "step 1 (model 'argmax'): input_map names 'logits', which is not an input of the model"),
        (('key: "best" value', 'key: "top" value'), "output_map names 'top', which is not an output of the model"),
        (('input [ { name: "IMAGE" data_type: TYPE_UINT8', 'input [ { name: "IMAGE" data_type: TYPE_FP32'),
         "input 'image' is UINT8, but tensor 'IMAGE' is FP32 (an input of the ensemble)"),
    ],
)  # fmt: skip
def test_wiring_that_disagrees_with_the_steps_models_refuses_the_ensemble_when_it_loads(tmp_path, edit, words):
    """The ensemble (\"pipeline\") loads after the models of its steps, whatever the names, and is checked
    against them."""
    publish_ensemble(tmp_path, ENSEMBLE_CONFIG.replace(*edit))

    async def scenario(dataplane):
        index = {(e.name, e.version): e for e in dataplane.repository_index()}
        return index, sorted(s.name for s in dataplane.repository.loaded())

    index, loaded = run(scenario, tmp_path)
    refused = index[("pipeline", "1")]
    assert loaded == ["argmax", "digits"] and words in refused.reason and "\n" not in refused.reason, refused


def test_an_input_no_step_takes_is_refused(tmp_path):
    text = ENSEMBLE_CONFIG.replace("input [", 'input [ { name: "UNUSED" data_type: TYPE_FP32 dims: [ 1 ] },')
    publish_ensemble(tmp_path, text)
    with pytest.raises(ModelLoadError, match="input 'UNUSED' of the ensemble is taken by no step"):
        read_config(tmp_path / "pipeline")


def test_independent_steps_run_at_once_and_a_failing_step_cancels_the_others():
    started: list[str] = []

    async def run_step(step, given):
        started.append(step.model)
        await asyncio.sleep(0.01)
        if step.model == "broken":
            raise RuntimeError("broken step")
        return {"y": given["x"] + 1}

    left, right = Step("left", "", {"x": "IN"}, {"y": "A"}), Step("right", "", {"x": "IN"}, {"y": "B"})
    after = Step("after", "", {"x": "A"}, {"y": "C"})
    tensors = asyncio.run(run_steps((left, right, after), {"IN": 1}, run_step))
    assert started[:2] == ["left", "right"] and started[2] == "after" and tensors["C"] == 3
    with pytest.raises(RuntimeError, match="broken step"):
        asyncio.run(run_steps((Step("broken", "", {"x": "IN"}, {"y": "A"}), after), {"IN": 1}, run_step))


def request(batch: np.ndarray, **fields) -> InferenceRequest:
    return InferenceRequest(model="pipeline", inputs=[InputTensor("IMAGE", "UINT8", batch.shape, batch)], **fields)


def test_a_request_runs_through_the_steps_models_which_count_it_as_their_own(tmp_path):
    version_dir = publish_ensemble(tmp_path)
    batch = images(3, seed=2)
    expected = reference_probabilities(tmp_path / "digits" / "1", batch)

    async def scenario(dataplane):
        answer = await dataplane.infer(request(batch, id="e1"))
        top = await dataplane.infer(
            request(batch, outputs=[RequestedOutput.from_parameters("PROBABILITIES", {"classification": 1})])
        )
        metadata, config = dataplane.model_metadata("pipeline"), dataplane.model_config("pipeline")
        stats = {entry.name: entry.stats for entry in dataplane.statistics()}
        return answer, top, metadata, config, stats, dataplane.model_ready("pipeline")

    answer, top, metadata, config, stats, ready = run(scenario, version_dir.parents[1])
    outputs = {output.name: output for output in answer.outputs}
    np.testing.assert_allclose(outputs["PROBABILITIES"].data, expected, rtol=1e-6)
    np.testing.assert_array_equal(outputs["CLASS"].data, expected.argmax(axis=1).reshape(3, 1))
    assert (answer.model, answer.id, outputs["CLASS"].datatype) == ("pipeline", "e1", "INT64")
    assert [label.decode().split(":")[2] for label in top.outputs[0].data[:, 0]] == [
        CLASS_NAMES[i] for i in expected.argmax(axis=1)
    ]
    assert metadata.platform == "ensemble" and config.ensemble_scheduling.step[1].model_name == "argmax" and ready
    assert stats["pipeline"].success.count == 2 and stats["pipeline"].execution_count == 0
    assert stats["digits"].success.count == 2 and stats["argmax"].success.count == 2


def test_a_step_whose_model_is_gone_or_whose_output_differs_from_the_config_is_named_in_one_line(tmp_path):
    version_dir = publish_ensemble(
        tmp_path,
        ENSEMBLE_CONFIG.replace(
            'name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ]', 'name: "CLASS" data_type: TYPE_INT64 dims: [ 2 ]'
        ),
    )

    async def scenario(dataplane):
        failures = []
        for unload in (False, True):
            if unload:
                await dataplane.unload("argmax")
            with pytest.raises(ServingError) as failed:
                await dataplane.infer(request(images(1)))
            failures.append(failed.value)
        return failures, dataplane.model_ready("pipeline")

    (differs, gone), ready = run(scenario, version_dir.parents[1])
    assert differs.status is Status.INTERNAL
    assert "its step made output 'CLASS' INT64 [1, 1], but config.pbtxt says INT64 [-1, 2]" in differs.message
    assert gone.status is Status.NOT_FOUND and "ensemble 'pipeline', step model 'argmax': unknown model" in gone.message
    assert not ready, "an ensemble is ready only while every model of its steps is"


def test_ensembles_that_run_each_other_are_refused_at_the_request(tmp_path):
    publish_ensemble(tmp_path)
    loop = ENSEMBLE_CONFIG.replace('name: "pipeline"', 'name: "loop"').replace(
        'model_name: "argmax"', 'model_name: "pipeline"'
    )
    loop = loop.replace('key: "scores" value: "PROBABILITIES"', 'key: "IMAGE" value: "IMAGE"').replace(
        'key: "best" value: "CLASS"', 'key: "CLASS" value: "CLASS"'
    )
    (tmp_path / "loop" / "1").mkdir(parents=True)
    (tmp_path / "loop" / "config.pbtxt").write_text(loop)
    (tmp_path / "loop" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    (tmp_path / "pipeline" / "config.pbtxt").write_text(
        ENSEMBLE_CONFIG.replace('model_name: "argmax"', 'model_name: "loop"')
        .replace('key: "scores" value: "PROBABILITIES"', 'key: "IMAGE" value: "IMAGE"')
        .replace('key: "best" value: "CLASS"', 'key: "CLASS" value: "CLASS"')
    )

    async def scenario(dataplane):
        with pytest.raises(ServingError) as refused:
            await dataplane.infer(request(images(1)))
        return refused.value

    refused = run(scenario, tmp_path)
    assert (
        refused.status is Status.FAILED_PRECONDITION and "runs itself: pipeline -> loop -> pipeline" in refused.message
    )


def test_a_live_server_answers_an_ensemble_over_both_front_ends(start_server, tmp_path):
    version_dir = publish_ensemble(tmp_path)
    server = start_server(version_dir.parents[1])
    batch = images(2, seed=6)
    expected = reference_probabilities(tmp_path / "digits" / "1", batch)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.get_model_metadata("pipeline").platform == "ensemble"
        tensor = grpcclient.InferInput("IMAGE", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        answer = client.infer("pipeline", [tensor])
    np.testing.assert_allclose(answer.as_numpy("PROBABILITIES"), expected, rtol=1e-6)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("IMAGE", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        best = http.infer("pipeline", [tensor], outputs=[httpclient.InferRequestedOutput("CLASS")]).as_numpy("CLASS")
        assert http.get_model_config("pipeline")["platform"] == "ensemble"
    finally:
        http.close()
    np.testing.assert_array_equal(best, expected.argmax(axis=1).reshape(2, 1))


@fuzz_settings(60)
@given(data=st.data())
def test_any_ensemble_config_reads_or_raises_model_load_error(tmp_path_factory, data):
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = publish_ensemble(repo, data.draw(mutations(ENSEMBLE_CONFIG.encode()), label="config").decode(
        "utf-8", "replace"))  # fmt: skip
    try:
        config = read_config(version_dir.parent)
        read_version(version_dir, config)
        if config.platform == "ensemble":
            read_steps(config, "pipeline", "config.pbtxt")
    except ModelLoadError as error:
        assert "\n" not in str(error)


def test_an_ensemble_named_before_its_steps_models_still_loads_after_them_and_is_checked(tmp_path):
    publish_ensemble(tmp_path)
    wrong = ENSEMBLE_CONFIG.replace('name: "pipeline"', 'name: "a_first"').replace(
        'name: "CLASS" data_type: TYPE_INT64', 'name: "CLASS" data_type: TYPE_INT32'
    )
    (tmp_path / "a_first" / "1").mkdir(parents=True)
    (tmp_path / "a_first" / "config.pbtxt").write_text(wrong)
    (tmp_path / "a_first" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")

    async def scenario(dataplane):
        index = {(e.name, e.version): e for e in dataplane.repository_index()}
        return index, sorted(s.name for s in dataplane.repository.loaded())

    index, loaded = run(scenario, tmp_path)
    assert loaded == ["argmax", "digits", "pipeline"]
    assert "output 'CLASS' of the ensemble is INT32, but it is INT64" in index[("a_first", "1")].reason
