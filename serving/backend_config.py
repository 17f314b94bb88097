"""What a model's config.pbtxt asks of ONNX Runtime, read as Triton's onnxruntime backend reads it.

A repository tuned for Triton keeps its tuning here: execution instances (``instance_group``), threads and
execution mode, graph optimizations, memory arena and pattern, session and run config entries, and the CUDA
execution provider's options (the ``parameters`` that the backend reads, and ``optimization {
execution_accelerators }``). Each value is checked as the backend checks it, and a wrong one refuses the model in
one line naming config.pbtxt, where the backend would refuse it too; nothing it reads is silently dropped. The
accelerators serving does not run (TensorRT, OpenVINO) are reported in ``SessionSettings.not_applied``.
"""

from pathlib import Path

from serving.codec import shown
from serving.errors import ModelLoadError
from serving.protocol import model_config_pb2
from serving.runtime import SessionSettings

# Execution instances of a version when config.pbtxt names no count: Triton's defaults for ONNX Runtime models.
DEFAULT_CPU_INSTANCES = 2
DEFAULT_GPU_INSTANCES = 1
# More sessions than this of one version is a typo, not a deployment; each holds the weights and a thread.
MAX_INSTANCES = 64
# Triton's spellings of a boolean parameter (triton::common ParseBoolValue), case aside.
_TRUE, _FALSE = ("true", "on", "1"), ("false", "off", "0")
# The parameters the backend reads for the CUDA execution provider, with the values it maps them to.
_CUDNN_CONV_ALGO_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
_ARENA_EXTEND_STRATEGY = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
# Accelerators the backend knows, by where they run; serving runs neither TensorRT nor OpenVINO.
_GPU_ACCELERATORS = ("tensorrt", "cuda")
_CPU_ACCELERATORS = ("openvino",)


def instance_count(config: model_config_pb2.ModelConfig, model_dir: Path, on_gpu: bool) -> int:
    """How many execution instances config.pbtxt's ``instance_group`` asks for, counted as Triton counts them: the
    sum over its groups of ``count`` (per listed GPU), a group without a count, or a config without groups, taking
    Triton's default for ONNX Runtime (2 on the CPU, 1 on a GPU). Every instance runs on the device ``--device``
    chose; one ONNX Runtime process does not split a version between devices.

    Raises:
        ModelLoadError: a negative count, KIND_MODEL, or more than MAX_INSTANCES in all.
    """
    default = DEFAULT_GPU_INSTANCES if on_gpu else DEFAULT_CPU_INSTANCES
    if not config.instance_group:
        return default
    total = 0
    for index, group in enumerate(config.instance_group):
        where = f"{model_dir / 'config.pbtxt'}: instance_group {shown(group.name) if group.name else index}"
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_MODEL:
            raise ModelLoadError(
                f"{where}: KIND_MODEL is for backends that place the model themselves; use KIND_CPU, KIND_GPU or "
                "KIND_AUTO"
            )
        if group.count < 0:
            raise ModelLoadError(f"{where}: count {group.count} must be at least 1 (or left out for the default)")
        total += (group.count or default) * max(1, len(group.gpus))
    if total > MAX_INSTANCES:
        raise ModelLoadError(
            f"{model_dir / 'config.pbtxt'}: instance_group asks for {total} instances of the model; at most "
            f"{MAX_INSTANCES}"
        )
    return total


def placed_on_cpu(config: model_config_pb2.ModelConfig) -> bool:
    """Whether config.pbtxt puts every instance on the CPU (each ``instance_group`` of ``kind: KIND_CPU``): Triton
    then runs the model on the CPU whatever GPUs the machine has, often to leave GPU memory to other models, and
    so does this server whatever ``--device`` says. (A KIND_CPU group beside a GPU group runs on the GPU.)"""
    return bool(config.instance_group) and all(
        group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for group in config.instance_group
    )


def graph_optimization_level(config: model_config_pb2.ModelConfig) -> str:
    """config.pbtxt's ``optimization { graph { level } }`` as Triton's onnxruntime backend maps it to ONNX Runtime's
    levels: -1 basic, 1 extended, 2 none, anything else all. A model that an optimization breaks is served by
    turning it down here, as its users do under Triton."""
    return {-1: "basic", 1: "extended", 2: "disable"}.get(config.optimization.graph.level, "all")


def intra_op_thread_count(config: model_config_pb2.ModelConfig, model_dir: Path) -> int:
    """The ``intra_op_thread_count`` parameter (0 or absent: one thread per core). Small models serve faster on
    one: splitting a call of a few microseconds per operator costs more in thread wake-ups than it saves.

    Raises:
        ModelLoadError: the value is not an integer >= 0.
    """
    return _count(config, model_dir / "config.pbtxt", "intra_op_thread_count", "one thread per core") or 0


def session_settings(config: model_config_pb2.ModelConfig, model_dir: Path, on_gpu: bool) -> SessionSettings:
    """The session, run and CUDA provider settings that config.pbtxt's ``parameters`` and ``optimization {
    execution_accelerators }`` ask for. A GPU accelerator counts as not applied only ``on_gpu``: on the CPU the
    backend does not use it either.

    Raises:
        ModelLoadError: a value the backend would refuse too, an accelerator it does not know, or a custom operator
            library (``model_operations``): a shared library named by a repository would run its code in the
            server, so serving loads none.
    """
    path = model_dir / "config.pbtxt"
    if libraries := config.model_operations.op_library_filename:
        raise ModelLoadError(
            f"{path}: model_operations op_library_filename {shown(libraries[0])}: serving loads no operator library "
            "that a repository names (its code would run in the server)"
        )
    mode = _text(config, "execution_mode")
    if mode not in (None, "0", "1"):
        raise ModelLoadError(f"{path}: parameter execution_mode {mode[:40]!r} must be 0 (sequential) or 1 (parallel)")
    # The `cuda` accelerator's options first, then the older parameters over them, in the backend's order.
    cuda_options = _cuda_accelerator_options(config, path)
    for key, choices in (
        ("cudnn_conv_algo_search", _CUDNN_CONV_ALGO_SEARCH),
        ("arena_extend_strategy", _ARENA_EXTEND_STRATEGY),
    ):
        if (text := _text(config, key)) is not None:
            cuda_options[key] = _one_of(path, key, text, choices)
    if (limit := _text(config, "gpu_mem_limit")) is not None:
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 20):
            raise ModelLoadError(f"{path}: parameter gpu_mem_limit {limit[:40]!r} must be a number of bytes")
        cuda_options["gpu_mem_limit"] = limit
    if (copy := _flag(config, path, "do_copy_in_default_stream")) is not None:
        cuda_options["do_copy_in_default_stream"] = "1" if copy else "0"
    not_applied: list[str] = []
    accelerators = config.optimization.execution_accelerators
    for where, known, listed in (
        ("gpu_execution_accelerator", _GPU_ACCELERATORS, accelerators.gpu_execution_accelerator),
        ("cpu_execution_accelerator", _CPU_ACCELERATORS, accelerators.cpu_execution_accelerator),
    ):
        for accelerator in listed:
            if accelerator.name not in known:
                raise ModelLoadError(
                    f"{path}: {where} {shown(accelerator.name)} is not an accelerator of Triton's onnxruntime backend "
                    f"({', '.join(known)})"
                )
            if accelerator.name != "cuda" and (on_gpu or where == "cpu_execution_accelerator"):
                not_applied.append(f"{where} {accelerator.name}")
    return SessionSettings(
        parallel_execution=mode == "1",
        inter_op_threads=_count(config, path, "inter_op_thread_count", "ONNX Runtime's default"),
        cpu_mem_arena=_flag(config, path, "enable_mem_arena"),
        mem_pattern=_flag(config, path, "enable_mem_pattern"),
        session_config=_entries(config, "session.use_device_allocator_for_initializers"),
        run_config=_entries(config, "memory.enable_memory_arena_shrinkage"),
        cuda_options=tuple(sorted(cuda_options.items())),
        not_applied=tuple(not_applied),
    )


def _cuda_accelerator_options(config: model_config_pb2.ModelConfig, path: Path) -> dict[str, str]:
    """The options of the ``cuda`` GPU accelerator: the CUDA provider's own option names, passed on as the backend
    passes them (ONNX Runtime checks them where CUDA runs), its two booleans checked here."""
    options = {}
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "cuda":
            for key, value in accelerator.parameters.items():
                if key in ("do_copy_in_default_stream", "use_ep_level_unified_stream"):
                    value = "1" if _boolean(path, f"cuda accelerator parameter {key}", value) else "0"
                options[key] = value
    return options


def _text(config: model_config_pb2.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value.strip() if key in config.parameters else None


def _entries(config: model_config_pb2.ModelConfig, *keys: str) -> tuple[tuple[str, str], ...]:
    """Parameters passed on to ONNX Runtime as config entries by their own names (it checks their values)."""
    return tuple((key, config.parameters[key].string_value) for key in keys if key in config.parameters)


def _count(config: model_config_pb2.ModelConfig, path: Path, key: str, zero_means: str) -> int | None:
    text = _text(config, key)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 4:
        raise ModelLoadError(f"{path}: parameter {key} {text[:40]!r} must be an integer from 0 ({zero_means}) to 9999")
    return int(text)


def _flag(config: model_config_pb2.ModelConfig, path: Path, key: str) -> bool | None:
    text = _text(config, key)
    return None if text is None else _boolean(path, f"parameter {key}", text)


def _boolean(path: Path, what: str, text: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ModelLoadError(f"{path}: {what} {text[:40]!r} must be true or false (or on/off, 1/0)")


def _one_of(path: Path, key: str, text: str, choices: dict[str, str]) -> str:
    if text not in choices:
        raise ModelLoadError(
            f"{path}: parameter {key} {text[:40]!r} must be one of "
            + ", ".join(f"{number} ({value})" for number, value in choices.items())
        )
    return choices[text]
