"""serving.backend_config: a Triton repository's onnxruntime tuning reaches the sessions, and a wrong value is
refused in one line as Triton's backend refuses it."""

import logging

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.backend_config import session_settings
from serving.errors import ModelLoadError
from serving.model_files import read_config
from serving.repository import ModelRepository
from tests.conftest import fuzz_settings
from tests.serving.conftest import images, reference_probabilities
from tests.serving.test_model_files import triton_repository
from tests.serving.test_repository import CPU, _Records


def parameters(**values: str) -> str:
    return "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n' for key, value in values.items()
    )


def with_config(tmp_path, text: str):
    model_dir, version_dir = triton_repository(tmp_path)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + text)
    return model_dir, version_dir


def test_the_sessions_run_as_the_parameters_of_triton_s_onnxruntime_backend_ask(tmp_path):
    text = parameters(
        execution_mode="1",
        inter_op_thread_count="2",
        enable_mem_arena="true",
        enable_mem_pattern="OFF",
        **{"session.use_device_allocator_for_initializers": "1", "memory.enable_memory_arena_shrinkage": "cpu:0"},
    )
    _, version_dir = with_config(tmp_path, text)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    served = repository.get("digits")
    for session in served.model.sessions:
        options = session.get_session_options()
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert options.inter_op_num_threads == 2
        assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
        assert options.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    batch = images(3)
    answer = served.model.run({"image": batch})["probabilities"]  # each run shrinks the arena: it still answers
    np.testing.assert_allclose(answer, reference_probabilities(version_dir, batch), rtol=1e-5, atol=1e-6)
    repository.take_all()


def test_without_parameters_the_sessions_keep_serving_s_own_defaults(tmp_path):
    triton_repository(tmp_path)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    options = repository.get("digits").model.session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and options.inter_op_num_threads == 1
    assert options.enable_cpu_mem_arena and options.enable_mem_pattern
    repository.take_all()


def test_onnx_runtime_checks_the_entries_it_is_handed_and_a_wrong_one_refuses_the_version_in_one_line(tmp_path):
    """Shrinking an arena that was turned off: ONNX Runtime refuses it at the version's test run."""
    with_config(tmp_path, parameters(enable_mem_arena="0", **{"memory.enable_memory_arena_shrinkage": "cpu:0"}))
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    [entry] = [e for e in repository.index() if e.version == "1"]
    assert entry.state == "UNAVAILABLE" and "\n" not in entry.reason
    assert "a test run on zeros failed" in entry.reason and "memory arena shrink list: cpu:0" in entry.reason


def test_the_cuda_provider_gets_the_options_the_backend_maps_from_the_parameters_and_the_cuda_accelerator(tmp_path):
    """Only a GPU can run them; here the mapping itself is checked, value by value as the backend maps them."""
    text = parameters(cudnn_conv_algo_search="1", gpu_mem_limit="4294967296", arena_extend_strategy="1")
    text += parameters(do_copy_in_default_stream="true")
    text += (
        'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" parameters { '
        'key: "use_ep_level_unified_stream" value: "on" } parameters { key: "prefer_nhwc" value: "1" } '
        'parameters { key: "cudnn_conv_algo_search" value: "DEFAULT" } } ] } }\n'  # the older parameter wins
    )
    model_dir, _ = with_config(tmp_path, text)
    settings = session_settings(read_config(model_dir), model_dir, on_gpu=True)
    assert dict(settings.cuda_options) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": "4294967296",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
        "use_ep_level_unified_stream": "1",
        "prefer_nhwc": "1",
    }
    assert settings.not_applied == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (parameters(execution_mode="2"), "parameter execution_mode '2' must be 0 (sequential) or 1 (parallel)"),
        (parameters(inter_op_thread_count="-1"), "parameter inter_op_thread_count '-1' must be an integer from 0"),
        (parameters(enable_mem_arena="maybe"), "parameter enable_mem_arena 'maybe' must be true or false"),
        (parameters(cudnn_conv_algo_search="3"), "parameter cudnn_conv_algo_search '3' must be one of 0 (EXHAUSTIVE)"),
        (parameters(arena_extend_strategy="x"), "parameter arena_extend_strategy 'x' must be one of 0 (kNextPower"),
        (parameters(gpu_mem_limit="lots"), "parameter gpu_mem_limit 'lots' must be a number of bytes"),
        ('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "rocm" } ] } }',
         "gpu_execution_accelerator 'rocm' is not an accelerator of Triton's onnxruntime backend (tensorrt, cuda)"),
        ('optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "tensorrt" } ] } }',
         "cpu_execution_accelerator 'tensorrt' is not an accelerator of Triton's onnxruntime backend (openvino)"),
        ('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" parameters { '
         'key: "do_copy_in_default_stream" value: "2" } } ] } }',
         "cuda accelerator parameter do_copy_in_default_stream '2' must be true or false"),
        ('model_operations { op_library_filename: [ "libcustom_ops.so" ] }',
         "model_operations op_library_filename 'libcustom_ops.so': serving loads no operator library"),
    ],
)  # fmt: skip
def test_a_value_the_backend_would_refuse_refuses_the_model_in_one_line_naming_config_pbtxt(tmp_path, text, message):
    model_dir, _ = with_config(tmp_path, text)
    with pytest.raises(ModelLoadError) as refused:
        session_settings(read_config(model_dir), model_dir, on_gpu=False)
    assert str(refused.value) == f"{model_dir / 'config.pbtxt'}: {str(refused.value).split(': ', 1)[1]}"
    assert message in str(refused.value) and "\n" not in str(refused.value)
    repository = ModelRepository([tmp_path], CPU)
    repository.load_all()
    [entry] = [e for e in repository.index() if e.version == "1"]
    assert repository.loaded() == [] and message in entry.reason


def test_an_accelerator_serving_does_not_run_is_said_once_a_load_and_the_model_serves_on_onnx_runtime(tmp_path, caplog):
    """OpenVINO on the CPU is named; TensorRT is a GPU accelerator, which the backend does not use on the CPU
    either, so it is not."""
    with_config(
        tmp_path,
        'optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] '
        'gpu_execution_accelerator: [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }\n',
    )
    repository = ModelRepository([tmp_path], CPU)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        repository.load_all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"model 'digits' version 1: {tmp_path / 'digits' / 'config.pbtxt'} asks for cpu_execution_accelerator "
        "openvino, which serving does not run; ONNX Runtime's CPU provider runs it"
    ]
    assert repository.get("digits").model.providers == ["CPUExecutionProvider"]
    repository.take_all()


KEYS = [
    "execution_mode",
    "inter_op_thread_count",
    "intra_op_thread_count",
    "enable_mem_arena",
    "enable_mem_pattern",
    "session.use_device_allocator_for_initializers",
    "memory.enable_memory_arena_shrinkage",
    "cudnn_conv_algo_search",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
]
VALUES = ["0", "1", "2", "-1", "true", "Off", "cpu:0", "gpu:0", "", " 1", "99999", "1e3", "\u0661", "x"]


@fuzz_settings(60)
@given(data=st.data())
def test_any_backend_parameters_serve_the_model_or_refuse_it_in_one_line(tmp_path_factory, data):
    """Any of the backend's parameters with any value, and accelerators of any name: the model loads and answers,
    or is refused in one line; the scan never raises."""
    repo = tmp_path_factory.mktemp("fuzz")
    free_text = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cc", "Cs")), max_size=12)
    chosen = data.draw(
        st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES) | free_text, max_size=4), label="parameters"
    )
    names = st.sampled_from(["cuda", "tensorrt", "openvino", "rocm", ""])
    gpu, cpu = data.draw(st.lists(names, max_size=2), label="gpu"), data.draw(st.lists(names, max_size=2), label="cpu")
    text = parameters(**chosen)
    if gpu or cpu:
        listed = [f'gpu_execution_accelerator: [ {{ name: "{name}" }} ]' for name in gpu]
        listed += [f'cpu_execution_accelerator: [ {{ name: "{name}" }} ]' for name in cpu]
        text += f"optimization {{ execution_accelerators {{ {' '.join(listed)} }} }}\n"
    with_config(repo, text)
    records, logger = _Records(), logging.getLogger("serving.repository")
    logger.addHandler(records)
    try:
        repository = ModelRepository([repo], CPU)
        repository.load_all()
    finally:
        logger.removeHandler(records)
    for record in records.records:
        if record.levelno >= logging.WARNING:
            assert "\n" not in record.getMessage() and not record.exc_info, record.getMessage()
    if repository.loaded():
        assert repository.get("digits").model.run({"image": images(2)})["probabilities"].shape == (2, 10)
        repository.take_all()
    else:
        reasons = [entry.reason for entry in repository.index() if entry.state == "UNAVAILABLE"]
        assert reasons and all(reason and "\n" not in reason for reason in reasons), reasons
