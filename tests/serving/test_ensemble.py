"""Triton's ensembles: the wiring of the steps checked when the ensemble loads (every tensor made once, taken from
somewhere, no cycle, every input used and every output made) and against its steps' models (loaded, their tensors,
datatypes and shapes, no ensemble running itself), checked again whenever one of those models changes or goes,
loaded with its steps' models under explicit model control and unloaded with them (unload_dependents); a request
run through its steps' models (which count and batch it as their own requests), a step that fails named in one
line, and a live server answering tritonclient over gRPC and HTTP; any ensemble config, fuzzed, loads or is
refused in one line."""

import asyncio
import logging
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from serving.dataplane import InferenceRequest, InputTensor, RequestedOutput
from serving.ensemble import Step, check_steps, read_steps, run_steps
from serving.errors import ModelLoadError, ServingError, Status
from serving.model_files import read_config, read_version
from serving.repository import ModelRepository
from serving.signature import ModelSignature
from tests.conftest import fuzz_settings
from tests.serving.conftest import (
    ARGMAX_CONFIG,
    CLASS_NAMES,
    ENSEMBLE_CONFIG,
    classifier_onnx,
    images,
    publish_ensemble,
    reference_probabilities,
    save_step_model,
)
from tests.serving.test_dataplane import run
from tests.serving.test_model_files import mutations
from tests.serving.test_repository import CPU, _Records


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
         "output 'CLASS' of the ensemble is INT32 [-1, 1], but it is INT64 [-1, 1] (output 'best' of model 'argmax')"),
        (('name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ]', 'name: "CLASS" data_type: TYPE_INT64 dims: [ 2 ]'),
         "output 'CLASS' of the ensemble is INT64 [-1, 2], but it is INT64 [-1, 1] (output 'best' of model 'argmax')"),
        (("dims: [ 8, 8 ]", "dims: [ 8, 9 ]"),
         "step 0 (model 'digits'): input 'image' is UINT8 [-1, 8, 8], but tensor 'IMAGE' is UINT8 [-1, 8, 9] (an "
         "input of the ensemble)"),
        (('model_name: "argmax"', 'model_name: "nothing"'),
         "step 1 (model 'nothing'): ensemble 'pipeline' depends on 'nothing', which has no loaded version"),
        (('model_name: "digits" model_version: -1', 'model_name: "digits" model_version: 7'),
         "ensemble 'pipeline' depends on version 7 of 'digits', which is not loaded (loaded: [1])"),
        (('key: "scores" value', 'key: "logits" value'),
         "step 1 (model 'argmax'): input_map names 'logits', which is not an input of the model"),
        (('key: "best" value', 'key: "top" value'), "output_map names 'top', which is not an output of the model"),
        (('input [ { name: "IMAGE" data_type: TYPE_UINT8', 'input [ { name: "IMAGE" data_type: TYPE_FP32'),
         "input 'image' is UINT8 [-1, 8, 8], but tensor 'IMAGE' is FP32 [-1, 8, 8] (an input of the ensemble)"),
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


@pytest.mark.parametrize(
    "edit",
    [
        ("dims: [ 8, 8 ]", "dims: [ -1, 8 ]"),  # a variable size fits any
        # An ensemble that does not batch may declare the batch itself, as in Triton.
        ("max_batch_size: 8", "max_batch_size: 0"),
    ],
)
def test_shapes_that_can_agree_at_run_time_load(tmp_path, edit):
    text = ENSEMBLE_CONFIG.replace(*edit)
    if edit[1] == "max_batch_size: 0":
        text = text.replace("dims: [ 8, 8 ]", "dims: [ -1, 8, 8 ]").replace("dims: [ 10 ]", "dims: [ -1, 10 ]")
        text = text.replace("TYPE_INT64 dims: [ 1 ]", "TYPE_INT64 dims: [ -1, 1 ]")
    publish_ensemble(tmp_path, text)

    async def scenario(dataplane):
        answer = await dataplane.infer(request(images(2)))
        return {output.name: output.data.shape for output in answer.outputs}

    assert run(scenario, tmp_path) == {"PROBABILITIES": (2, 10), "CLASS": (2, 1)}


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


def nested_ensemble(name: str) -> str:
    """The config of an ensemble with one step: the ensemble ``pipeline``."""
    config = ENSEMBLE_CONFIG.replace('name: "pipeline"', f'name: "{name}"')
    return config[: config.index("ensemble_scheduling")] + (
        'ensemble_scheduling { step [ { model_name: "pipeline" model_version: -1\n'
        '  input_map { key: "IMAGE" value: "IMAGE" }\n'
        '  output_map [ { key: "PROBABILITIES" value: "PROBABILITIES" }, { key: "CLASS" value: "CLASS" } ] } ] }\n'
    )


def publish_config(repo, name: str, config: str) -> None:
    """An ensemble ``name`` of ``config``, beside ``pipeline``, with the labels of its probabilities."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")


def save_argmax(version_dir, datatype: int = TensorProto.INT64) -> None:
    """argmax's ONNX file, answering ``datatype``."""
    nodes = [
        helper.make_node("ArgMax", ["scores"], ["index"], axis=1),
        helper.make_node("Cast", ["index"], ["best"], to=datatype),
    ]
    save_step_model(version_dir, nodes, ["batch", 10], datatype, ["batch", 1])


def test_an_output_that_differs_from_the_config_at_run_time_is_named_in_one_line(tmp_path):
    """The step's model answers its input's width, variable, which the ensemble's [2] fits when it loads; the
    answer's 10 does not."""
    version_dir = publish_ensemble(
        tmp_path,
        ENSEMBLE_CONFIG.replace(
            'name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ]', 'name: "CLASS" data_type: TYPE_INT64 dims: [ 2 ]'
        ),
    )
    cast = [helper.make_node("Cast", ["scores"], ["best"], to=TensorProto.INT64)]
    save_step_model(tmp_path / "argmax" / "1", cast, ["batch", "width"], TensorProto.INT64, ["batch", "width"])
    (tmp_path / "argmax" / "config.pbtxt").write_text(
        ARGMAX_CONFIG.replace("dims: [ 10 ]", "dims: [ -1 ]").replace("dims: [ 1 ]", "dims: [ -1 ]")
    )

    async def scenario(dataplane):
        with pytest.raises(ServingError) as failed:
            await dataplane.infer(request(images(1)))
        return failed.value

    differs = run(scenario, version_dir.parents[1])
    assert differs.status is Status.INTERNAL
    assert "its step made output 'CLASS' INT64 [1, 10], but config.pbtxt says INT64 [-1, 2]" in differs.message


def test_an_ensemble_stops_serving_while_a_model_of_its_steps_is_unloaded_and_serves_again_after(tmp_path):
    version_dir = publish_ensemble(tmp_path)

    async def scenario(dataplane):
        await dataplane.unload("argmax")
        with pytest.raises(ServingError) as gone:
            await dataplane.infer(request(images(1)))
        index = {(entry.name, entry.version): entry for entry in dataplane.repository_index()}
        unready = (dataplane.model_ready("pipeline"), dataplane.ready())
        await dataplane.load("argmax")
        answer = await dataplane.infer(request(images(1)))
        return gone.value, index, unready, answer, dataplane.model_ready("pipeline")

    gone, index, unready, answer, ready = run(scenario, version_dir.parents[1])
    assert gone.status is Status.NOT_FOUND and "unknown model 'pipeline'" in gone.message
    refused = index[("pipeline", "1")]
    assert refused.state == "UNAVAILABLE" and "version 1 stopped serving: " in refused.reason
    assert "ensemble 'pipeline' depends on 'argmax', which has no loaded version" in refused.reason
    assert unready == (False, False)
    assert answer.outputs[1].name == "CLASS" and ready


def test_an_ensemble_is_checked_again_when_a_model_of_its_steps_changes_its_tensors(tmp_path):
    """argmax's new version answers INT32, which the ensemble's CLASS (INT64) cannot take: the ensemble stops
    serving, in one line, until argmax answers INT64 again."""
    publish_ensemble(tmp_path)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    assert repository.is_ready("pipeline")
    save_argmax(tmp_path / "argmax" / "2", TensorProto.INT32)
    (tmp_path / "argmax" / "config.pbtxt").write_text(ARGMAX_CONFIG.replace("TYPE_INT64", "TYPE_INT32"))
    retired = repository.load_all()
    assert {(s.name, s.version) for s in retired} == {("argmax", 1), ("pipeline", 1)}
    assert not repository.is_ready("pipeline") and repository.get("argmax").version == 2
    reason = next(e.reason for e in repository.index() if e.name == "pipeline")
    assert "output 'CLASS' of the ensemble is INT64 [-1, 1], but it is INT32 [-1, 1]" in reason

    shutil.rmtree(tmp_path / "argmax" / "2")
    (tmp_path / "argmax" / "config.pbtxt").write_text(ARGMAX_CONFIG)
    repository.load_all()
    assert repository.get("argmax").version == 1 and repository.is_ready("pipeline")
    assert [e.state for e in repository.index() if e.name == "pipeline"] == ["READY"]
    repository.take_all()


def test_ensembles_that_would_run_each_other_never_load(tmp_path):
    """``loop`` runs ``pipeline``, and ``pipeline`` is changed to run ``loop``: the reload is refused and the
    version that served goes on serving."""
    publish_ensemble(tmp_path)
    loop = ENSEMBLE_CONFIG.replace('name: "pipeline"', 'name: "loop"').replace(
        'model_name: "argmax"', 'model_name: "pipeline"'
    )
    loop = loop.replace('key: "scores" value: "PROBABILITIES"', 'key: "IMAGE" value: "IMAGE"').replace(
        'key: "best" value: "CLASS"', 'key: "CLASS" value: "CLASS"'
    )
    publish_config(tmp_path, "loop", loop)

    async def scenario(dataplane):
        loaded = sorted(s.name for s in dataplane.repository.loaded())
        (tmp_path / "pipeline" / "config.pbtxt").write_text(
            ENSEMBLE_CONFIG.replace('model_name: "argmax"', 'model_name: "loop"')
            .replace('key: "scores" value: "PROBABILITIES"', 'key: "IMAGE" value: "IMAGE"')
            .replace('key: "best" value: "CLASS"', 'key: "CLASS" value: "CLASS"')
        )
        with pytest.raises(ServingError) as refused:
            await dataplane.load("pipeline")
        answer = await dataplane.infer(request(images(1)))
        return loaded, refused.value, [output.name for output in answer.outputs]

    loaded, refused, outputs = run(scenario, tmp_path)
    assert loaded == ["argmax", "digits", "loop", "pipeline"]
    assert refused.status is Status.FAILED_PRECONDITION
    assert "model 'pipeline' was not reloaded, versions [1] serve as they were" in refused.message
    assert "the ensemble would run itself: pipeline -> loop -> pipeline" in refused.message
    assert outputs == ["PROBABILITIES", "CLASS"]


def test_explicit_model_control_loads_an_ensemble_with_its_steps_models_and_unloads_them_with_it(tmp_path):
    publish_ensemble(tmp_path)
    publish_config(tmp_path, "a_outer", nested_ensemble("a_outer"))

    async def scenario(dataplane):
        def loaded():
            return sorted(s.name for s in dataplane.repository.loaded())

        states = [loaded()]
        answer = await dataplane.infer(
            InferenceRequest(model="a_outer", inputs=[InputTensor("IMAGE", "UINT8", (1, 8, 8), images(1))])
        )
        await dataplane.unload("a_outer")  # without unload_dependents: what it pulled in stays
        states.append(loaded())
        await dataplane.load("digits")  # asked for by name: it stays when its ensembles go
        await dataplane.load("a_outer")
        states.append(loaded())
        await dataplane.unload("a_outer", {"unload_dependents": True})
        states.append(loaded())
        with pytest.raises(ServingError) as wrong:
            await dataplane.unload("digits", {"unload_dependents": "yes"})
        index = {entry.name: entry.reason for entry in dataplane.repository_index()}
        return states, answer, wrong.value, index

    states, answer, wrong, index = run(scenario, tmp_path, model_control="explicit", load_models=("a_outer",))
    assert states[0] == states[2] == ["a_outer", "argmax", "digits", "pipeline"]
    assert states[1] == ["argmax", "digits", "pipeline"]
    assert states[3] == ["digits"]
    assert [output.name for output in answer.outputs] == ["PROBABILITIES", "CLASS"]
    assert wrong.status is Status.INVALID_ARGUMENT and "'unload_dependents' must be a boolean" in wrong.message
    assert index["argmax"] == "unloaded with ensemble 'pipeline' (unload_dependents)"
    assert index["pipeline"] == "unloaded with ensemble 'a_outer' (unload_dependents)"


def test_loading_an_ensemble_reloads_the_steps_models_whose_files_changed_as_triton_s_polling_chain_does(tmp_path):
    """Explicit model control, so no poll: the load request of the ensemble is what brings its steps' models up to
    date. The one whose file changed is reloaded; the one whose files did not is left as it was."""
    publish_ensemble(tmp_path)
    digits = tmp_path / "digits" / "1"
    batch = images(2, seed=3)

    async def scenario(dataplane):
        before = {s.name: s for s in dataplane.repository.loaded()}
        onnx.save(classifier_onnx(5), digits / "model.onnx")
        os.utime(digits / "model.onnx", ns=(1, 1))
        await dataplane.load("pipeline")
        after = {s.name: s for s in dataplane.repository.loaded()}
        return before, after, await dataplane.infer(request(batch))

    before, after, answer = run(scenario, tmp_path, model_control="explicit", load_models=("pipeline",))
    assert after["digits"] is not before["digits"]
    assert after["argmax"] is before["argmax"]
    outputs = {output.name: output.data for output in answer.outputs}
    np.testing.assert_allclose(outputs["PROBABILITIES"], reference_probabilities(digits, batch), rtol=1e-5, atol=1e-6)


def test_a_live_server_answers_an_ensemble_over_both_front_ends(start_server, tmp_path):
    """Under explicit model control, with only the ensemble named: its steps' models load with it, and
    tritonclient's unload_dependents takes them out with it (over HTTP, then over gRPC)."""
    version_dir = publish_ensemble(tmp_path)
    server = start_server(version_dir.parents[1], "--model-control-mode", "explicit", "--load-model", "pipeline")
    batch = images(2, seed=6)
    expected = reference_probabilities(tmp_path / "digits" / "1", batch)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.get_model_metadata("pipeline").platform == "ensemble"
        assert "model_repository(unload_dependents)" in client.get_server_metadata().extensions
        tensor = grpcclient.InferInput("IMAGE", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(batch)
        answer = client.infer("pipeline", [tensor])
        http = httpclient.InferenceServerClient(server.http_url)
        try:
            tensor = httpclient.InferInput("IMAGE", [2, 8, 8], "UINT8")
            tensor.set_data_from_numpy(batch)
            outputs = [httpclient.InferRequestedOutput("CLASS")]
            best = http.infer("pipeline", [tensor], outputs=outputs).as_numpy("CLASS")
            assert http.get_model_config("pipeline")["platform"] == "ensemble"
            http.unload_model("pipeline", unload_dependents=True)
            after_http = {entry["name"] for entry in http.get_model_repository_index() if entry.get("state") == "READY"}
        finally:
            http.close()
        client.load_model("pipeline")
        ready = client.is_model_ready("digits") and client.is_model_ready("argmax")
        client.unload_model("pipeline", unload_dependents=True)
        after_grpc = {entry.name for entry in client.get_model_repository_index().models if entry.state == "READY"}
    np.testing.assert_allclose(answer.as_numpy("PROBABILITIES"), expected, rtol=1e-6)
    np.testing.assert_array_equal(best, expected.argmax(axis=1).reshape(2, 1))
    assert after_http == after_grpc == set() and ready


@pytest.fixture(scope="module")
def loaded_steps(tmp_path_factory):
    """The steps' models (and the ensemble) loaded once, as a repository holds them, for the fuzz below."""
    repository = ModelRepository([publish_ensemble(tmp_path_factory.mktemp("steps")).parents[1]], CPU)
    repository.load_all()
    yield {name: {served.version: served for served in repository.versions(name)} for name in ("digits", "argmax")}
    repository.take_all()


@fuzz_settings(60)
@given(data=st.data())
def test_any_ensemble_config_reads_and_checks_against_its_models_or_raises_model_load_error(
    tmp_path_factory, loaded_steps, data
):
    repo = tmp_path_factory.mktemp("fuzz")
    (repo / "pipeline" / "1").mkdir(parents=True)
    text = data.draw(mutations(ENSEMBLE_CONFIG.encode()), label="config").decode("utf-8", "replace")
    (repo / "pipeline" / "config.pbtxt").write_text(text)
    (repo / "pipeline" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    try:
        config = read_config(repo / "pipeline")
        manifest = read_version(repo / "pipeline" / "1", config)
        if config.platform == "ensemble":
            steps = read_steps(config, "pipeline", "config.pbtxt")
            check_steps("pipeline", manifest.signature, steps, loaded_steps, repo / "pipeline" / "config.pbtxt")
    except ModelLoadError as error:
        assert "\n" not in str(error)


def test_an_ensemble_named_before_its_steps_models_still_loads_after_them_and_is_checked(tmp_path, caplog):
    """``a_first`` (checked against argmax, and refused) and ``a_nested`` (which runs the ensemble ``pipeline``)
    load after the models they run, so the nested one loads at once, with no refusal on the way."""
    publish_ensemble(tmp_path)
    wrong = ENSEMBLE_CONFIG.replace('name: "pipeline"', 'name: "a_first"').replace(
        'name: "CLASS" data_type: TYPE_INT64', 'name: "CLASS" data_type: TYPE_INT32'
    )
    publish_config(tmp_path, "a_first", wrong)
    publish_config(tmp_path, "a_nested", nested_ensemble("a_nested"))

    async def scenario(dataplane):
        index = {(e.name, e.version): e for e in dataplane.repository_index()}
        return index, sorted(s.name for s in dataplane.repository.loaded())

    index, loaded = run(scenario, tmp_path)
    assert loaded == ["a_nested", "argmax", "digits", "pipeline"]
    assert "output 'CLASS' of the ensemble is INT32 [-1, 1], but it is INT64 [-1, 1]" in index[("a_first", "1")].reason
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [index[("a_first", "1")].reason]


def test_configs_that_name_a_cycle_do_not_stop_the_check_of_dependents(tmp_path):
    """``pipeline`` serves (it runs argmax) and ``loop`` runs it; pipeline's config.pbtxt is then rewritten to run
    ``loop``, a cycle that only the files name. A reload of argmax checks both again, once, and returns."""
    publish_ensemble(tmp_path)
    publish_config(tmp_path, "loop", nested_ensemble("loop"))
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    (tmp_path / "pipeline" / "config.pbtxt").write_text(
        ENSEMBLE_CONFIG.replace('model_name: "argmax"', 'model_name: "loop"')
    )
    generations = {name: repository.get(name).generation for name in ("pipeline", "loop")}
    reload = threading.Thread(target=repository.load, args=("argmax",), daemon=True)
    reload.start()
    reload.join(timeout=60)
    assert not reload.is_alive(), "the check of dependents did not end"
    assert all(repository.get(name).generation != generations[name] for name in generations), "answers renewed"
    repository.take_all()


def assert_steps_served(repository: ModelRepository) -> None:
    """What the repository promises of every ensemble it serves: each of its steps' models serves the version the
    step asks for."""
    for served in repository.loaded():
        for step in served.steps:
            assert repository.is_ready(step.model, step.version), f"{served.name} serves without {step.model}"


@pytest.fixture(scope="module")
def nested_repository(tmp_path_factory) -> Path:
    """digits, argmax, the ensemble ``pipeline`` and the ensemble ``a_outer`` of it, published once to be copied."""
    repo = tmp_path_factory.mktemp("nested")
    publish_ensemble(repo)
    publish_config(repo, "a_outer", nested_ensemble("a_outer"))
    return repo


@fuzz_settings(40)
@given(data=st.data())
def test_mutated_configs_of_ensembles_and_their_models_never_break_the_repository_or_its_promise(
    tmp_path_factory, nested_repository, data
):
    """In a copy of ``nested_repository``, one config is mutated at the scan, another by a load request, then both
    are put back. The scan and the requests never raise, every refusal is one line, every ensemble served has its
    steps' models served, and once the files are whole again everything serves."""
    repo = tmp_path_factory.mktemp("fuzz") / "repository"
    shutil.copytree(nested_repository, repo)
    configs = {name: (repo / name / "config.pbtxt").read_text() for name in ("argmax", "pipeline", "a_outer")}
    first, then, _ = data.draw(st.permutations(sorted(configs)), label="mutated first, then")
    for name in (first, then):
        text = data.draw(mutations(configs[name].encode()), label=name).decode("utf-8", "replace")
        configs[name] = (configs[name], text)
    records, logger = _Records(), logging.getLogger("serving.repository")
    logger.addHandler(records)
    repository = ModelRepository([repo], CPU)
    try:
        (repo / first / "config.pbtxt").write_text(configs[first][1])
        repository.load_all()
        assert_steps_served(repository)
        (repo / then / "config.pbtxt").write_text(configs[then][1])
        repository.load(then)
        assert_steps_served(repository)
        for name in (first, then):
            (repo / name / "config.pbtxt").write_text(configs[name][0])
            repository.load(name)
            assert_steps_served(repository)
        assert sorted(served.name for served in repository.loaded()) == ["a_outer", "argmax", "digits", "pipeline"]
    finally:
        logger.removeHandler(records)
        repository.take_all()
    for record in records.records:
        if record.levelno >= logging.WARNING:
            assert "\n" not in record.getMessage() and not record.exc_info, record.getMessage()


def test_the_check_for_an_ensemble_running_itself_looks_into_each_model_once():
    """Forty ensembles, each running the two before it: 2**40 paths, and one look at each model."""
    signature = ModelSignature((), ())
    models = {"m0": {1: SimpleNamespace(signature=signature, steps=())}}
    models["m1"] = {1: SimpleNamespace(signature=signature, steps=(Step("m0", "", {}, {}),))}
    for index in range(2, 41):
        steps = (Step(f"m{index - 1}", "", {}, {}), Step(f"m{index - 2}", "", {}, {}))
        models[f"m{index}"] = {1: SimpleNamespace(signature=signature, steps=steps)}
    check_steps("outer", signature, (Step("m40", "", {}, {}),), models, Path("config.pbtxt"))
    models["m0"] = {1: SimpleNamespace(signature=signature, steps=(Step("outer", "", {}, {}),))}
    with pytest.raises(ModelLoadError, match="would run itself: outer -> m40 -> .* -> m0 -> outer"):
        check_steps("outer", signature, (Step("m40", "", {}, {}),), models, Path("config.pbtxt"))
