"""serving.repository in-process: version policies and overrides, and that no model's files can stop the scan."""

import json
import logging
import os
import shutil
import threading

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import ServingError, Status
from serving.repository import BatchingOverrides, ModelRepository
from serving.runtime import RuntimeOptions, shared_threads
from serving.version_policy import VersionPolicy
from tests.conftest import fuzz_settings
from tests.serving.conftest import (
    CLASS_NAMES,
    classifier_onnx,
    images,
    publish_unbatched,
    publish_version,
    reference_probabilities,
    replace_dynamic_batching,
)
from tests.serving.test_model_files import mutations, triton_repository

CPU = RuntimeOptions(device="cpu", intra_op_threads=1)


def test_repository_serves_versions_by_policy_and_flags_override_batching(tmp_path):
    for version in (1, 2, 3):
        publish_version(tmp_path, "digits", version, seed=version)
    repository = ModelRepository(
        [tmp_path],
        CPU,
        version_policy=VersionPolicy.parse("latest:2"),
        batching=BatchingOverrides(max_batch_size=16, max_queue_delay_us=0),
    )
    assert repository.load_all() == []
    assert [s.version for s in repository.versions("digits")] == [2, 3]
    assert repository.get("digits").version == 3
    served = repository.get("digits", "2")
    assert (served.batcher.max_batch_size, served.batcher.max_queue_delay_us) == (16, 0)
    assert served.batcher.max_queue_size == 256  # from config.pbtxt
    with pytest.raises(ServingError) as raised:
        repository.get("digits", "1")
    assert raised.value.status is Status.NOT_FOUND and "loaded versions: 2, 3" in raised.value.message
    assert {s.version for s in repository.take_all()} == {2, 3} and repository.loaded() == []


def test_max_batch_size_from_the_command_line_leaves_a_model_that_does_not_batch_unbatched(tmp_path):
    publish_unbatched(tmp_path)
    publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository([tmp_path], CPU, batching=BatchingOverrides(max_batch_size=16))
    assert repository.load_all() == []
    unbatched, digits = repository.get("dense_onnx"), repository.get("digits")
    assert (unbatched.max_batch_size, unbatched.batcher.max_batch_size) == (0, 1)  # one request per call
    assert (digits.max_batch_size, digits.batcher.max_batch_size) == (16, 16)
    repository.take_all()


@pytest.mark.parametrize(
    ("policy", "requested_us", "timeout_us", "rejects"),
    [
        ("", 0, 0, True),
        ("", 5_000, 5_000, True),  # no policy: the request's own timeout
        ("default_timeout_microseconds: 50000", 0, 50_000, True),
        ("default_timeout_microseconds: 50000", 5_000, 50_000, True),  # not overridable: the request cannot change it
        ("default_timeout_microseconds: 50000 allow_timeout_override: true", 5_000, 5_000, True),
        ("default_timeout_microseconds: 50000 allow_timeout_override: true", 90_000, 50_000, True),  # only shorter
        ("default_timeout_microseconds: 50000 timeout_action: DELAY", 5_000, 50_000, False),  # then behind the rest
    ],
)
def test_the_queue_timeout_follows_the_config_queue_policy_as_triton_does(
    tmp_path, policy, requested_us, timeout_us, rejects
):
    publish_version(tmp_path, "digits", 1, seed=1)
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_size: 256", f"max_queue_size: 256 {policy}"))
    repository = ModelRepository([tmp_path], CPU)
    assert repository.load_all() == []
    queue_policy = repository.get("digits").batching.default_policy
    assert (queue_policy.timeout_us(requested_us), queue_policy.rejects) == (timeout_us, rejects)
    repository.take_all()


def test_priority_levels_map_a_request_priority_to_a_level_with_its_own_queue_policy_as_triton_does(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    config = tmp_path / "digits" / "config.pbtxt"
    levels = (
        "priority_levels: 3 default_priority_level: 2 priority_queue_policy { key: 1 value: { max_queue_size: 4 "
        "default_timeout_microseconds: 1000 } } priority_queue_policy { key: 3 value: { timeout_action: DELAY "
        "default_timeout_microseconds: 7 } }"
    )
    config.write_text(config.read_text().replace("dynamic_batching {", f"dynamic_batching {{ {levels}", 1))
    repository = ModelRepository([tmp_path], CPU, batching=BatchingOverrides(max_queue_size=32))
    assert repository.load_all() == []
    batching = repository.get("digits").batching
    # 0 and anything beyond the levels is the default level.
    assert [batching.level(priority) for priority in (0, 1, 2, 3, 4, 2**64 - 1)] == [2, 1, 2, 3, 2, 2]
    assert (batching.policy(1).max_queue_size, batching.policy(1).timeout_us(0), batching.policy(1).rejects) == (
        4,
        1000,
        True,
    )
    assert (batching.policy(2).max_queue_size, batching.policy(2).timeout_us(0)) == (32, 0)  # the default policy
    assert (batching.policy(3).max_queue_size, batching.policy(3).rejects) == (32, False)  # 0: the default bound
    repository.take_all()


def test_a_config_without_dynamic_batching_runs_each_request_alone_and_says_so(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(replace_dynamic_batching(config.read_text()))
    repository = ModelRepository([tmp_path], CPU)
    assert repository.load_all() == []
    batching = repository.get("digits").batching
    assert not batching.merges and batching.max_batch_size == 1024  # it still takes batches from clients
    assert batching.describe().startswith("no dynamic batching (each request runs alone)")
    repository.take_all()


def test_an_unknown_timeout_action_refuses_the_model_in_one_line(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_size: 256", "max_queue_size: 256 timeout_action: 7"))
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    assert "timeout_action 7 is neither REJECT nor DELAY" in repository.unready_models()["digits"]


def test_threads_per_call_come_from_config_pbtxt_as_for_triton_unless_the_command_line_sets_them(tmp_path):
    publish_version(tmp_path, "small", 1, seed=1)
    publish_version(tmp_path, "large", 1, seed=2)
    with open(tmp_path / "small" / "config.pbtxt", "a") as config:
        config.write('parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n')

    def threads(options: RuntimeOptions) -> dict[str, int]:
        repository = ModelRepository([tmp_path], options)
        assert repository.load_all() == []
        return {s.name: s.model.session.get_session_options().intra_op_num_threads for s in repository.loaded()}

    # Without a thread count, each of large's two instances (Triton's default) takes its share of the cores.
    shared_cores = shared_threads(2)
    assert threads(RuntimeOptions(device="cpu")) == {"small": 1, "large": shared_cores}
    assert threads(RuntimeOptions(device="cpu", intra_op_threads=2)) == {"small": 2, "large": 2}


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_a_model_whose_instance_groups_are_all_kind_cpu_runs_on_the_cpu_whatever_the_device(tmp_path, caplog):
    publish_version(tmp_path, "on_cpu", 1, seed=1, instances=1)  # instance_group [ { count: 1 kind: KIND_CPU } ]
    publish_version(tmp_path, "anywhere", 1, seed=2)  # no instance_group: the device the server was asked for
    # This machine's ONNX Runtime has no CUDA: a model that --device cuda puts on a GPU is refused in one line.
    repository = ModelRepository([tmp_path], RuntimeOptions(device="cuda", intra_op_threads=1))
    with caplog.at_level(logging.ERROR, logger="serving.repository"):
        repository.load_all()
    assert repository.get("on_cpu").model.providers == ["CPUExecutionProvider"]
    assert "anywhere" in repository.unready_models() and "CUDA was requested (--device cuda)" in caplog.text
    repository.take_all()


def test_graph_optimizations_come_from_config_pbtxt_as_for_triton_unless_the_command_line_sets_them(tmp_path):
    for name, level in (("plain", ""), ("basic", "-1"), ("extended", "1"), ("none", "2"), ("unknown", "7")):
        publish_version(tmp_path, name, 1, seed=1)
        if level:
            with open(tmp_path / name / "config.pbtxt", "a") as config:
                config.write(f"optimization {{ graph {{ level: {level} }} }}\n")

    def levels(options: RuntimeOptions) -> dict[str, str]:
        repository = ModelRepository([tmp_path], options)
        assert repository.load_all() == []
        applied = {s.name: s.model.session.get_session_options().graph_optimization_level for s in repository.loaded()}
        repository.take_all()
        return {name: level.name for name, level in applied.items()}

    # Triton's onnxruntime backend: -1 basic, 1 extended, 2 disables them, anything else (or nothing) all.
    assert levels(CPU) == {
        "plain": "ORT_ENABLE_ALL",
        "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED",
        "none": "ORT_DISABLE_ALL",
        "unknown": "ORT_ENABLE_ALL",
    }
    assert set(levels(RuntimeOptions(device="cpu", graph_optimization_level="basic")).values()) == {"ORT_ENABLE_BASIC"}


@pytest.mark.parametrize(
    ("instance_group", "instances", "threads"),
    [
        ("", 2, "shared"),  # no instance_group: Triton's default for ONNX Runtime on the CPU
        ("instance_group [ { count: 1 kind: KIND_CPU } ]", 1, 0),  # one instance keeps one thread per core
        ("instance_group [ { count: 3 kind: KIND_CPU }, { kind: KIND_AUTO } ]", 5, "shared"),  # 3 + the default 2
        ("instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] } ]", 2, "shared"),  # a count is per GPU listed
    ],
)
def test_instance_group_says_how_many_sessions_run_batches_at_once(tmp_path, instance_group, instances, threads):
    publish_version(tmp_path, "digits", 1, seed=1)
    with open(tmp_path / "digits" / "config.pbtxt", "a") as config:
        config.write(instance_group + "\n")
    repository = ModelRepository([tmp_path], RuntimeOptions(device="cpu"))
    assert repository.load_all() == []
    served = repository.get("digits")
    assert served.batcher.instance_count == len(served.model.sessions) == instances
    if threads == "shared":
        threads = shared_threads(instances)
    assert {s.get_session_options().intra_op_num_threads for s in served.model.sessions} == {threads}
    # Instances that share the cores come with one more session on all of them, for a lone long call.
    wide = served.model.wide_session
    if instances > 1 and shared_threads(1) > threads:
        assert wide is not None and wide.get_session_options().intra_op_num_threads == shared_threads(1)
    else:
        assert wide is None


def test_no_wide_session_where_the_threads_were_set(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository([tmp_path], RuntimeOptions(device="cpu", intra_op_threads=1))
    assert repository.load_all() == []
    served = repository.get("digits")
    assert served.batcher.instance_count == 2 and served.model.wide_session is None


@pytest.mark.parametrize("version", ["9" * 5000, "1" + "0" * 18, "0", "-1", "1.0", " 1", "١"])
def test_any_version_string_is_not_found_never_an_error_of_the_server(tmp_path, version):
    publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    with pytest.raises(ServingError) as raised:
        repository.get("digits", version)
    assert raised.value.status is Status.NOT_FOUND and len(raised.value.message) < 200
    assert not repository.is_ready("digits", version)


def test_a_triton_repository_s_folder_names_are_served_but_none_that_could_leave_it(tmp_path):
    """Names as Triton users give them (capitals, dashes, dots) are models; a dot-folder is not, and a name with
    a slash or a leading dash is refused, in a request as on disk."""
    publish_unbatched(tmp_path, "ResNet-50.v1")
    publish_unbatched(tmp_path, "-rf")
    (tmp_path / ".git").mkdir()
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    assert [served.name for served in repository.loaded()] == ["ResNet-50.v1"]
    states = {entry.name: (entry.state, entry.reason) for entry in repository.index()}
    assert set(states) == {"ResNet-50.v1", "-rf"} and "folder name does not match" in states["-rf"][1]
    for name in ("../ResNet-50.v1", "ResNet-50.v1/..", "-rf", ".git", ""):
        with pytest.raises(ServingError) as raised:
            repository.get(name)
        assert raised.value.status is Status.NOT_FOUND, name


def break_files(repo, name: str, how: str) -> None:
    """Publishes model ``name`` and then damages one of its files in the way ``how`` says."""
    version_dir = publish_version(repo, name, 1, seed=7)
    if how == "config not UTF-8":
        (repo / name / "config.pbtxt").write_bytes(b"\xff\xfe name: \x80\x81")
    elif how == "manifest of wrong JSON types":
        (version_dir / "manifest.json").write_text(
            json.dumps({"format": 1, "name": name, "version": 1, "files": ["model.onnx"], "inputs": "image"})
        )
    elif how == "manifest shape of strings":
        data = json.loads((version_dir / "manifest.json").read_text())
        data["inputs"][0]["shape"] = [-1, "eight", {}]
        (version_dir / "manifest.json").write_text(json.dumps(data))
    elif how == "manifest not JSON":
        (version_dir / "manifest.json").write_bytes(b"\xff{not json")
    elif how == "ONNX that fails to load":
        (version_dir / "model.onnx").write_bytes(b"\x08\x07garbage")
    elif how == "thread count not a number":
        with open(repo / name / "config.pbtxt", "a") as config:
            config.write('parameters { key: "intra_op_thread_count" value { string_value: "many" } }\n')
    elif how in INSTANCE_GROUPS:
        with open(repo / name / "config.pbtxt", "a") as config:
            config.write(INSTANCE_GROUPS[how] + "\n")
    elif how == "unknown datatype":
        data = json.loads((version_dir / "manifest.json").read_text())
        data["outputs"][0]["datatype"] = "COMPLEX128"
        (version_dir / "manifest.json").write_text(json.dumps(data))


INSTANCE_GROUPS = {
    "negative instance count": "instance_group [ { count: -1 kind: KIND_CPU } ]",
    "instances of KIND_MODEL": "instance_group [ { name: 'mine' kind: KIND_MODEL } ]",
    "too many instances": "instance_group [ { count: 65 kind: KIND_CPU } ]",
}
BREAKAGES = [
    "config not UTF-8",
    "manifest of wrong JSON types",
    "manifest shape of strings",
    "manifest not JSON",
    "ONNX that fails to load",
    "unknown datatype",
    "thread count not a number",
    *INSTANCE_GROUPS,
]


@pytest.mark.parametrize("how", BREAKAGES)
def test_a_bad_file_at_startup_refuses_only_its_model_with_one_line_naming_it(tmp_path, caplog, how):
    publish_version(tmp_path, "digits", 1, seed=1)
    break_files(tmp_path, "alpha", how)  # scanned before digits
    publish_version(tmp_path, "zulu", 1, seed=2)  # and one after
    repository = ModelRepository([tmp_path], CPU)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["digits", "zulu"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage() and not errors[0].exc_info
    assert str(tmp_path / "alpha") in errors[0].getMessage(), errors[0].getMessage()
    assert list(repository.unready_models()) == ["alpha"]
    index = {(e.name, e.state) for e in repository.index()}
    assert ("alpha", "UNAVAILABLE") in index and ("digits", "READY") in index
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        repository.load_all()  # the next poll: no second log line, nothing else changes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sorted(s.name for s in repository.loaded()) == ["digits", "zulu"]


def test_a_bad_file_during_polling_refuses_only_itself_and_a_fixed_version_is_retried(tmp_path, caplog):
    publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    broken = publish_version(tmp_path, "digits", 2, seed=2, broken=True)
    publish_version(tmp_path, "alpha", 1, seed=3)
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "config.pbtxt").write_bytes(b"\xff")
    publish_version(tmp_path, "omega", 1, seed=4)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        repository.load_all()
        repository.load_all()
    assert {(s.name, s.version) for s in repository.loaded()} == {("alpha", 1), ("digits", 1), ("omega", 1)}
    refusals = [r.getMessage() for r in caplog.records if "version 2 refused" in r.getMessage()]
    assert len(refusals) == 1 and str(broken / "model.onnx") in refusals[0], refusals
    assert repository.unready_models().keys() == {"beta"}
    # The version's files change (a fixed model.onnx): the next scan tries it again and it serves.
    (broken / "model.onnx").write_bytes((tmp_path / "digits" / "1" / "model.onnx").read_bytes() + b"")
    os.utime(broken / "model.onnx", ns=(1, 1))
    retired = repository.load_all()
    assert [s.version for s in repository.versions("digits")] == [2]
    assert [(s.name, s.version) for s in retired] == [("digits", 1)]


def test_an_onnx_model_kept_as_a_folder_with_external_data_serves_and_a_fix_inside_that_folder_is_retried(
    tmp_path, caplog
):
    """Triton's ONNX Runtime backend takes a model file that is a folder as the model.onnx inside it, next to its
    external-data files: how models too large for one protobuf are kept."""
    import onnx

    model_dir, version_dir = triton_repository(tmp_path)
    batch = images(3)
    expected = reference_probabilities(version_dir, batch)
    proto = onnx.load(version_dir / "model.onnx")
    (version_dir / "model.onnx").unlink()
    (version_dir / "model.onnx").mkdir()
    onnx.save_model(
        proto, version_dir / "model.onnx" / "model.onnx", save_as_external_data=True, location="weights.bin"
    )
    shutil.copytree(version_dir, model_dir / "2")
    weights = model_dir / "2" / "model.onnx" / "weights.bin"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:100])  # version 2's external data is cut short
    repository = ModelRepository([tmp_path], CPU, version_policy=VersionPolicy.parse("all"))
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        repository.load_all()
        repository.load_all()
    assert [s.version for s in repository.versions("digits")] == [1]
    refusals = [r.getMessage() for r in caplog.records if "version 2 refused" in r.getMessage()]
    assert len(refusals) == 1 and "model.onnx/model.onnx: ONNX Runtime cannot load it" in refusals[0], refusals
    served = repository.get("digits", "1")
    np.testing.assert_allclose(served.model.run({"image": batch})["probabilities"], expected, rtol=1e-5, atol=1e-6)
    weights.write_bytes(intact)  # fixed inside the model's folder: the next scan tries version 2 again
    repository.load_all()
    assert [s.version for s in repository.versions("digits")] == [1, 2]
    repository.take_all()


def test_a_version_refused_for_its_label_file_is_retried_when_the_label_file_is_fixed(tmp_path):
    model_dir, _ = triton_repository(tmp_path)
    labels = model_dir / "labels.txt"
    text = labels.read_text()
    labels.write_bytes(b"\xff\xfe not text")
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    assert repository.loaded() == [] and "digits" in repository.unready_models()
    labels.write_text(text)
    repository.load_all()
    assert repository.get("digits").manifest.class_names["probabilities"][0] == "zero"
    repository.take_all()


def test_a_poll_reloads_a_served_version_whose_files_changed_in_place_and_only_that_one(tmp_path):
    publish_version(tmp_path, "digits", 1, seed=1)
    v2 = publish_version(tmp_path, "digits", 2, seed=2)
    repository = ModelRepository([tmp_path], CPU, version_policy=VersionPolicy.parse("all"))
    repository.load_all()
    first, second = repository.versions("digits")
    assert repository.load_all() == [], "nothing changed: nothing reloads"
    onnx.save(classifier_onnx(3), v2 / "model.onnx")
    os.utime(v2 / "model.onnx", ns=(1, 1))  # a distinct time whatever the file system's clock granularity
    assert repository.load_all() == [second]
    assert repository.get("digits", "1") is first
    batch = images(2)
    answer = repository.get("digits", "2").model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(v2, batch), rtol=1e-5, atol=1e-6)
    repository.take_all()


def test_a_changed_configuration_reloads_every_version_and_an_edit_that_changes_nothing_reloads_none(tmp_path):
    """What a load reads is compared, not the model folder's times: a comment in config.pbtxt, labels.txt
    rewritten as it was (every publish does) or a new index.html reloads nothing; a setting that changes does."""
    publish_version(tmp_path, "digits", 1, seed=1)
    publish_version(tmp_path, "digits", 2, seed=2)
    repository = ModelRepository([tmp_path], CPU, version_policy=VersionPolicy.parse("all"))
    repository.load_all()
    served = repository.versions("digits")
    model_dir = tmp_path / "digits"
    config = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(config + "# a comment\n")
    (model_dir / "labels.txt").write_text((model_dir / "labels.txt").read_text())
    os.utime(model_dir / "labels.txt", ns=(1, 1))
    (model_dir / "index.html").write_text("<p>versions 1 and 2</p>")
    assert repository.load_all() == []
    (model_dir / "config.pbtxt").write_text(
        replace_dynamic_batching(config, "dynamic_batching { max_queue_delay_microseconds: 700 }\n")
    )
    assert repository.load_all() == served
    assert [s.batching.max_queue_delay_us for s in repository.versions("digits")] == [700, 700]
    repository.take_all()


def test_a_triton_model_whose_label_file_changes_reloads_with_the_new_labels(tmp_path):
    model_dir, _ = triton_repository(tmp_path)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    labels = model_dir / "labels.txt"
    labels.write_text(labels.read_text().replace("zero", "nought"))
    assert len(repository.load_all()) == 1
    assert repository.get("digits").manifest.class_names["probabilities"][0] == "nought"
    repository.take_all()


def test_a_changed_version_that_fails_to_reload_serves_as_it_was_until_its_files_change_again(tmp_path, caplog):
    v1 = publish_version(tmp_path, "digits", 1, seed=1)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    served = repository.get("digits")
    batch = images(2)
    expected = reference_probabilities(v1, batch)
    intact = (v1 / "model.onnx").read_bytes()
    (v1 / "model.onnx").write_bytes(b"not an onnx file")
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == []
        assert repository.load_all() == [], "not tried again while its files stay as they were"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("model 'digits' version 1 failed to reload, serves as it was: ")
    assert str(v1 / "model.onnx") in errors[0]
    assert repository.get("digits") is served and repository.unready_models() == {}
    assert [(e.version, e.state, e.reason) for e in repository.index()] == [("1", "READY", errors[0])]
    answer = served.model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    (v1 / "model.onnx").write_bytes(intact)
    os.utime(v1 / "model.onnx", ns=(1, 1))
    assert repository.load_all() == [served]
    assert repository.get("digits") is not served
    assert [(e.version, e.state, e.reason) for e in repository.index()] == [("1", "READY", "")]
    repository.take_all()


def test_models_of_several_repositories_serve_together_and_a_name_in_two_serves_from_neither(tmp_path, caplog):
    """Triton's repeated --model-repository: the models of every repository serve; a model name found in more than
    one is served from none (unloaded if it served), with one line naming both folders, until only one holds it."""
    first, second = tmp_path / "first", tmp_path / "second"
    publish_version(first, "digits", 1, seed=1)
    publish_version(second, "letters", 1, seed=2)
    repository = ModelRepository([first, second], CPU)
    repository.load_all()
    assert sorted(s.name for s in repository.loaded()) == ["digits", "letters"]
    served = repository.get("digits")
    publish_version(second, "digits", 1, seed=3)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == [served]
        repository.load_all()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"model 'digits' is in more than one repository ({first / 'digits'}, {second / 'digits'}); it serves from none"
    ]
    assert [s.name for s in repository.loaded()] == ["letters"]
    assert repository.unready_models() == {"digits": errors[0]}
    assert [(e.name, e.state, e.reason) for e in repository.index() if e.name == "digits"] == [
        ("digits", "UNAVAILABLE", errors[0])
    ]
    retired, failure = repository.load("digits")
    assert failure == f"model 'digits' has no loadable version: {errors[0]}"
    shutil.rmtree(first / "digits")
    repository.load_all()
    batch = images(2)
    answer = repository.get("digits").model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(second / "digits" / "1", batch), rtol=1e-5, atol=1e-6)
    assert repository.unready_models() == {}
    repository.take_all()


def test_a_repository_that_cannot_be_listed_leaves_what_served_from_it_serving_and_says_so_once(tmp_path, caplog):
    first, second = tmp_path / "first", tmp_path / "second"
    publish_version(first, "digits", 1, seed=1)
    publish_version(second, "letters", 1, seed=2)
    repository = ModelRepository([first, second], CPU)
    repository.load_all()
    served = repository.get("digits")
    os.rename(first, tmp_path / "away")  # as a network mount that dropped
    publish_version(second, "zulu", 1, seed=3)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == []
        assert repository.load_all() == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"cannot list repository {first}: No such file or directory; what serves from it stays"]
    assert repository.get("digits") is served and {s.name for s in repository.loaded()} == {"digits", "letters", "zulu"}
    caplog.clear()
    os.rename(tmp_path / "away", first)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        assert repository.load_all() == []
    assert [r.getMessage() for r in caplog.records] == [f"repository {first} can be listed again"]
    assert repository.get("digits") is served
    repository.take_all()


class _Records(logging.Handler):
    """The repository's log records of one example (caplog is function-scoped, and examples share a function)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """The file with a few bytes flipped (a protobuf keeps its structure and gets wrong lengths, tags and values),
    or the edits and random bytes of the other file fuzz tests."""

    @st.composite
    def flipped(draw) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)

    return flipped() | mutations(valid)


@fuzz_settings(100)
@given(data=st.data())
def test_a_damaged_onnx_or_labels_file_refuses_only_its_model_in_one_line(tmp_path_factory, data) -> None:
    """Damaged before the first scan, or in place while the version serves (a poll then reloads it, or it serves
    as it was); whole again, the version serves from its files at the next poll."""
    repo = tmp_path_factory.mktemp("fuzz")
    version_dir = publish_version(repo, "alpha", 1, seed=1)
    publish_version(repo, "zulu", 1, seed=2)
    if data.draw(st.booleans(), label="a Triton folder, labels from label_filename"):
        (version_dir / "manifest.json").unlink()  # the class names now come from config.pbtxt's labels.txt
        damaged_file = repo / "alpha" / "labels.txt"
    else:
        damaged_file = version_dir / "model.onnx"
    intact = damaged_file.read_bytes()
    serving_first = data.draw(st.booleans(), label="damaged in place while it serves")
    records, logger = _Records(), logging.getLogger("serving.repository")
    logger.addHandler(records)
    try:
        repository = ModelRepository([repo], CPU)
        if serving_first:
            repository.load_all()
        damaged_file.write_bytes(data.draw(damaged(intact), label=damaged_file.name))
        os.utime(damaged_file, ns=(1, 1))  # changed, whatever the file system's clock granularity
        repository.load_all()  # the server's scan or poll: it must not raise
    finally:
        logger.removeHandler(records)
    loaded = {served.name for served in repository.loaded()}
    assert "zulu" in loaded and ("alpha" in loaded or not serving_first)
    for record in records.records:
        if record.levelno >= logging.WARNING:
            assert "\n" not in record.getMessage() and not record.exc_info, record.getMessage()
    batch = images(2)
    if "alpha" in loaded:
        answer = repository.get("alpha").model.run({"image": batch})  # a model it loaded runs
        assert answer["probabilities"].shape == (2, 10)
    damaged_file.write_bytes(intact)
    os.utime(damaged_file, ns=(2, 2))
    repository.load_all()
    whole = repository.get("alpha")
    assert list(whole.manifest.class_names["probabilities"]) == CLASS_NAMES
    answer = whole.model.run({"image": batch})["probabilities"]
    np.testing.assert_allclose(answer, reference_probabilities(version_dir, batch), rtol=1e-5, atol=1e-6)
    repository.take_all()


def test_a_scan_loads_new_models_side_by_side_and_each_sync_takes_the_load_of_its_files(tmp_path, monkeypatch):
    """Triton's --model-load-thread-count: the models that serve nothing yet load several at once (two loads
    must be under way together to pass the barrier), and each serves what a load one after another would."""
    for index in range(4):
        publish_version(tmp_path, f"model{index}", 1, seed=index)
    repository = ModelRepository([tmp_path], CPU, load_threads=2)
    load = repository._load
    together = threading.Barrier(2, timeout=20)

    def side_by_side(version_dir, config, state):
        together.wait()
        return load(version_dir, config, state)

    monkeypatch.setattr(repository, "_load", side_by_side)
    assert repository.load_all() == []
    batch = images(2)
    for index in range(4):
        answer = repository.get(f"model{index}").model.run({"image": batch})["probabilities"]
        expected = reference_probabilities(tmp_path / f"model{index}" / "1", batch)
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    repository.take_all()


def test_a_load_ahead_of_its_sync_that_failed_or_went_stale_changes_nothing_the_sync_decides(tmp_path, monkeypatch):
    """A version whose load fails is refused in the same one line as when it loads alone, and the policy falls
    back as before; a load whose files changed before its model's sync is not served, but retired."""
    publish_version(tmp_path, "digits", 1, seed=1)
    publish_version(tmp_path, "digits", 2, seed=2)
    (tmp_path / "digits" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    publish_version(tmp_path, "letters", 1, seed=3)
    repository = ModelRepository([tmp_path], CPU, version_policy=VersionPolicy.parse("latest:1"), load_threads=4)
    load = repository._load
    stale = []

    def then_touched(version_dir, config, state):
        served = load(version_dir, config, state)
        if version_dir.parent.name == "letters" and not stale:  # its files change once the first load read them
            os.utime(version_dir / "model.onnx", ns=(1, 1))
            stale.append(served)
        return served

    monkeypatch.setattr(repository, "_load", then_touched)
    retired = repository.load_all()
    assert [(s.name, s.version) for s in repository.loaded()] == [("digits", 1), ("letters", 1)]
    assert retired == stale and repository.get("letters") is not stale[0]
    assert repository.load_all() == [], "what serves was loaded from the files as they are"
    (refusal,) = [e for e in repository.index() if e.state == "UNAVAILABLE"]
    assert refusal.reason.startswith("model 'digits' version 2 refused: ") and "\n" not in refusal.reason
    repository.take_all()


def test_refusals_name_what_should_serve_and_does_not_but_not_what_is_kept_unloaded(tmp_path):
    """What --exit-on-error stops the server for: a refused version and the model it leaves without one; a model
    held back by explicit model control is not a refusal."""
    publish_version(tmp_path, "digits", 1, seed=1)
    publish_version(tmp_path, "letters", 1, seed=2)
    broken = publish_version(tmp_path, "broken", 1, seed=3)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    repository = ModelRepository([tmp_path], CPU)
    assert repository.hold_back({"digits", "broken"}) == []
    repository.load_all()
    refusals = repository.refusals()
    assert [r.split(":")[0] for r in refusals] == ["model 'broken' version 1 refused", "model 'broken'"], refusals
    repository.take_all()
