"""What serving reads from one model's files (docs/output-tree.md), through the shared ``modelrepo`` format.

A buildsys version folder has ``manifest.json``; any other Triton ONNX repository is served as Triton serves it:
the signature comes from ``config.pbtxt`` (class labels from an output's ``label_filename``, the model file from
``default_model_filename``, ``max_batch_size: 0`` for a model that does not batch, a tensor's ``reshape`` where the
ONNX file's shape differs from the one clients use, and ``optional`` inputs), and a model without ``config.pbtxt``
is completed from its ONNX file's inputs and outputs: with a batch dimension when every first dimension is
dynamic, without one otherwise. An ensemble (``platform: "ensemble"``) has only its config: its tensors and its
steps, checked by serving.ensemble; its version folders are empty. Every malformed file (not UTF-8, wrong JSON
types, unknown datatype, inconsistent config, an ONNX file that does not load) raises ``ModelLoadError`` with one
line naming the file and the reason, never another exception, so the repository refuses that model or version and
goes on with the others.
This module reads files only; it never runs a model (that is serving/runtime.py) and never imports buildsys.
"""

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

import modelrepo
from modelrepo import CONFIG_FILE, MANIFEST_FILE, MODEL_NAME, ONNX_FILE, PLATFORM, VERSION_NAME, FormatError
from modelrepo import list_versions as list_versions
from serving.codec import shown
from serving.ensemble import ENSEMBLE_PLATFORM, read_steps
from serving.errors import ModelLoadError, first_line
from serving.protocol import model_config_pb2
from serving.signature import BYTES, DATATYPES, ONNX_DATATYPES, ModelSignature, TensorSpec

__all__ = [
    "MODEL_NAME",
    "VERSION_NAME",
    "Manifest",
    "list_versions",
    "parse_config_json",
    "read_config",
    "read_version",
]

# Triton's platform name and its backend spelling; a config may give either.
ONNX_BACKEND = "onnxruntime"
# Triton's default max_batch_size for a model whose config it completes (``--backend-config=default-max-batch-size``);
# ``serve --max-batch-size`` overrides it like any config value.
AUTOCOMPLETE_MAX_BATCH_SIZE = 4


@dataclass(frozen=True)
class Manifest:
    """What serving needs of one version, read from its manifest.json or, without one, from config.pbtxt and the
    ONNX file as Triton would. ``class_names`` are by output: the classification extension names an output's
    classes from its own label file, as Triton does; an output without one gets class indices. ``declared_in``
    says where the signature comes from, for the messages that compare it with the ONNX file."""

    name: str
    version: int
    platform: str
    onnx_path: Path | None  # None for an ensemble, which has no file of its own
    signature: ModelSignature
    class_names: dict[str, tuple[str, ...]]
    declared_in: str


def model_file(version_dir: Path, file_name: str) -> Path:
    """The ONNX file a version serves: ``file_name`` in its folder or, where that is a folder, the ``model.onnx``
    inside it, as Triton's ONNX Runtime backend takes it (a large model kept beside its external-data files)."""
    path = version_dir / file_name
    return path / ONNX_FILE if path.is_dir() else path


def _load_error(error: FormatError) -> ModelLoadError:
    return ModelLoadError(" ".join(str(error).split()))


def file_name(value: str, path: Path | str, field: str, folder: str = "the model's folder") -> str:
    """A file name from a config or manifest (``path``'s ``field``), refused when it would leave ``folder``."""
    if not value or value in (".", "..") or Path(value).name != value or "\\" in value or "\x00" in value:
        raise ModelLoadError(f"{path}: {field} {value[:80]!r} must be a file name inside {folder}")
    return value


def _datatype(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, path: Path | str, kind: str) -> str:
    known = tensor.data_type in model_config_pb2.DataType.values()
    name = model_config_pb2.DataType.Name(tensor.data_type) if known else str(tensor.data_type)
    datatype = name.removeprefix("TYPE_")
    datatype = BYTES if datatype == "STRING" else datatype  # Triton's config name for the protocol's BYTES
    if datatype not in DATATYPES:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' has data_type {name}; serving supports {', '.join(DATATYPES)}"
        )
    return datatype


def parse_config_json(text: str, model: str) -> model_config_pb2.ModelConfig:
    """A model configuration in JSON, as a load request carries it (Triton's ``config`` load parameter, the JSON
    form of config.pbtxt that ``ModelConfig`` answers with); check it with ``read_config(..., override=...)``.

    Raises:
        ModelLoadError: not JSON, or not a model configuration (an unknown field, a value of the wrong type).
    """
    try:
        return json_format.Parse(text, model_config_pb2.ModelConfig())
    except (json_format.ParseError, ValueError, RecursionError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"the load request's config of '{model}' is not a model configuration: {reason}") from None


def read_config(
    model_dir: Path, override: model_config_pb2.ModelConfig | None = None, auto_complete: bool = True
) -> model_config_pb2.ModelConfig:
    """The model's config.pbtxt, checked for what serving needs; completed from the ONNX file when it is missing
    (unless ``auto_complete`` is off: Triton's --disable-auto-complete-config). ``override``, the configuration that
    a load request carries (Triton's ``config`` load parameter), is checked the same way and used instead of the file.

    Raises:
        ModelLoadError: unreadable, not UTF-8, not a valid Triton config, another model's name, another platform,
            a negative max_batch_size or dimension, a reshape that cannot apply, or (without config.pbtxt) an ONNX
            file that cannot complete one.
    """
    path: Path | str = model_dir / CONFIG_FILE
    if override is not None:
        config, path = override, f"the load request's config of '{model_dir.name}'"
    elif not path.exists():
        if not auto_complete:
            raise ModelLoadError(f"{path}: missing, and auto-completion is off (--disable-auto-complete-config)")
        return _complete_config(model_dir)
    else:
        try:
            config = modelrepo.read_config(path)
        except FormatError as error:
            raise _load_error(error) from error
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(f"{path}: name {shown(config.name)} does not match its folder '{model_dir.name}'")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:  # every message that names a tensor stays one line
            _check_printable(tensor.name, path, kind)
    if config.platform == ENSEMBLE_PLATFORM:
        _check_ensemble(config, model_dir.name, path)
    elif config.platform not in ("", PLATFORM) or config.backend not in ("", ONNX_BACKEND):
        given = config.platform if config.platform not in ("", PLATFORM) else config.backend
        raise ModelLoadError(
            f"{path}: platform/backend {shown(given)} is not supported; expected '{PLATFORM}' or '{ENSEMBLE_PLATFORM}'"
        )
    if config.max_batch_size < 0:
        raise ModelLoadError(
            f"{path}: max_batch_size is {config.max_batch_size}; it must be 0 (the model does not batch) or more"
        )
    _refuse_what_changes_a_request(config, path)
    if config.default_model_filename:
        file_name(config.default_model_filename, path, "default_model_filename")
    _check_queue_policies(config.dynamic_batching, path)
    for size in config.dynamic_batching.preferred_batch_size:
        if size < 1 or (config.max_batch_size and size > config.max_batch_size):
            raise ModelLoadError(
                f"{path}: dynamic_batching preferred_batch_size {size} must be from 1 to max_batch_size "
                f"{config.max_batch_size}"
            )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            _datatype(tensor, path, kind)
            if any(d < -1 for d in tensor.dims):
                raise ModelLoadError(f"{path}: {kind} '{tensor.name}' dims {list(tensor.dims)} must be >= -1")
            if tensor.HasField("reshape"):
                _check_reshape(tensor, path, kind, config.max_batch_size > 0)
            if getattr(tensor, "label_filename", ""):
                file_name(tensor.label_filename, path, f"{kind} '{tensor.name}' label_filename")
    for tensor in config.input:
        if tensor.optional and config.max_batch_size > 0:
            raise ModelLoadError(
                f"{path}: input '{tensor.name}' is optional, which Triton's ONNX Runtime backend allows only in a "
                "model that does not batch (max_batch_size: 0)"
            )
    return config


def _check_ensemble(config: model_config_pb2.ModelConfig, name: str, path: Path | str) -> None:
    """An ensemble's own rules: its tensors declared, its steps wired (serving.ensemble), and none of what only a
    model with a file of its own has."""
    if not config.input or not config.output:
        raise ModelLoadError(f"{path}: an ensemble declares its inputs and outputs; nothing can complete them")
    for field, what in (
        ("model_warmup", "model_warmup (warm up the models of its steps)"),
        ("instance_group", "instance_group (the models of its steps run it)"),
    ):
        if getattr(config, field):
            raise ModelLoadError(f"{path}: an ensemble has no {what}")
    if any(tensor.HasField("reshape") for tensor in [*config.input, *config.output]):
        raise ModelLoadError(f"{path}: an ensemble's tensors cannot be reshaped; its steps' models can")
    read_steps(config, name, path)


def _check_queue_policies(dynamic: model_config_pb2.ModelDynamicBatching, path: Path | str) -> None:
    """Triton's rules for priority levels and queue policies: levels are numbered from 1 (the highest priority)
    to ``priority_levels``, and the default level and each level's policy must name one of them."""
    policies = [("default_queue_policy", dynamic.default_queue_policy)]
    levels = dynamic.priority_levels
    if levels:
        if not 1 <= dynamic.default_priority_level <= levels:
            raise ModelLoadError(
                f"{path}: default_priority_level {dynamic.default_priority_level} is outside [1, {levels}], the "
                "priority_levels"
            )
        for level, policy in sorted(dynamic.priority_queue_policy.items()):
            if not 1 <= level <= levels:
                raise ModelLoadError(
                    f"{path}: priority_queue_policy names level {level}, outside [1, {levels}], the priority_levels"
                )
            policies.append((f"priority_queue_policy {level}", policy))
    for where, policy in policies:
        if policy.timeout_action not in model_config_pb2.ModelQueuePolicy.TimeoutAction.values():
            action = policy.timeout_action
            raise ModelLoadError(f"{path}: {where}'s timeout_action {action} is neither REJECT nor DELAY")


def _refuse_what_changes_a_request(config: model_config_pb2.ModelConfig, path: Path | str) -> None:
    """Refuses the Triton features under which a model means something else than a stateless call per batch.

    Triton's ONNX Runtime backend runs these, but each makes the server supply tensors that no request carries
    (sequence control inputs and state, batch inputs) or answer in another way (ragged batches, shape tensors,
    several responses per request). Served as a plain model, such a model would be refused later by a confusing
    signature mismatch, or would answer wrongly; one line here says which feature it is.
    """
    problems = []
    if config.HasField("sequence_batching"):
        problems.append("sequence_batching (a stateful model, whose requests carry sequence ids and control inputs)")
    if config.batch_input or config.batch_output:
        problems.append("batch_input/batch_output (tensors the server builds from the whole batch)")
    if config.model_transaction_policy.decoupled:
        problems.append("model_transaction_policy { decoupled: true } (several responses per request)")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if getattr(tensor, "allow_ragged_batch", False):
                problems.append(f"{kind} {tensor.name[:80]!r} allow_ragged_batch (requests batched without padding)")
            if tensor.is_shape_tensor:
                problems.append(f"{kind} {tensor.name[:80]!r} is_shape_tensor (a TensorRT shape tensor)")
    if problems:
        raise ModelLoadError(f"{path}: {problems[0]} is not supported; this server serves stateless models")


def _check_reshape(
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, path: Path | str, kind: str, batched: bool
) -> None:
    """Triton's rules for ``reshape``: dimensions >= 1 or -1, not empty for a model that does not batch, and, run
    by run between variable dimensions, as many elements as ``dims``."""
    dims, reshape = list(tensor.dims), list(tensor.reshape.shape)
    problem = ""
    if any(d < 1 and d != -1 for d in reshape):
        problem = "must have dimensions >= 1, or -1 for a variable one"
    elif not reshape and not batched:
        problem = "cannot be empty in a model that does not batch (a scalar tensor)"
    elif _element_runs(dims) != _element_runs(reshape):
        problem = f"does not hold the elements of dims {dims} (run by run between variable dimensions)"
    if problem:
        raise ModelLoadError(f"{path}: {kind} '{tensor.name}' reshape {reshape} {problem}")


def _element_runs(shape: list[int]) -> list[int]:
    """The element counts of the runs of fixed dimensions between variable (-1) ones: [2, 4, -1, 6] is [8, 6]."""
    runs = [1]
    for dimension in shape:
        if dimension == -1:
            runs.append(1)
        else:
            runs[-1] *= dimension
    return runs


def _complete_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """A config for a model folder without config.pbtxt, from the newest version's ONNX file (Triton's
    auto-complete): its inputs and outputs, with dynamic batching when every tensor's first dimension is dynamic,
    else as a model that does not batch (``max_batch_size: 0``, each tensor whole)."""
    versions = list_versions(model_dir)
    if not versions:
        raise ModelLoadError(f"{model_dir / CONFIG_FILE}: missing, and no version folder to complete it from")
    signature = onnx_signature(model_file(model_dir / str(versions[-1]), ONNX_FILE))
    batched = signature.batched
    config = model_config_pb2.ModelConfig(
        name=model_dir.name, platform=PLATFORM, max_batch_size=AUTOCOMPLETE_MAX_BATCH_SIZE if batched else 0
    )
    for target, specs in ((config.input, signature.inputs), (config.output, signature.outputs)):
        for spec in specs:
            target.add(
                name=spec.name,
                data_type=model_config_pb2.DataType.Value(
                    "TYPE_STRING" if spec.datatype == BYTES else f"TYPE_{spec.datatype}"
                ),
                dims=spec.shape[batched:],
            )
    if batched:
        config.dynamic_batching.SetInParent()
    config.version_policy.latest.num_versions = 1
    return config


def _batchable(specs: list[TensorSpec]) -> bool:
    """Whether every tensor's first dimension is dynamic, so that the model can be batched on it."""
    return all(spec.shape and spec.shape[0] == -1 for spec in specs)


def onnx_signature(path: Path, batched: bool | None = None) -> ModelSignature:
    """The inputs and outputs an ONNX file declares, read with ONNX Runtime (no TensorFlow, no onnx package), for
    a model that batches (``batched``: every first dimension must be dynamic), one that does not, or (None) as
    the file allows.

    Raises:
        ModelLoadError: the file does not load, a tensor has a datatype serving cannot carry, or a first
            dimension is not dynamic in a model that batches.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises several unrelated types for a missing or bad file
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {first_line(error)}") from error
    specs: dict[str, list[TensorSpec]] = {"input": [], "output": []}
    for kind, nodes in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for node in nodes:
            _check_printable(node.name, path, kind)
            datatype = ONNX_DATATYPES.get(node.type)
            if datatype is None:
                raise ModelLoadError(f"{path}: {kind} '{node.name}' is {node.type}, which serving cannot carry")
            shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
            if batched and (not shape or shape[0] != -1):
                raise ModelLoadError(
                    f"{path}: {kind} '{node.name}' has shape {list(shape)}; config.pbtxt's max_batch_size needs "
                    "a dynamic first dimension (the batch), or max_batch_size: 0 for a model that does not batch"
                )
            specs[kind].append(TensorSpec(node.name, datatype, shape))
    if batched is None:
        batched = _batchable([*specs["input"], *specs["output"]])
    return ModelSignature(inputs=tuple(specs["input"]), outputs=tuple(specs["output"]), batched=batched)


def read_version(version_dir: Path, config: model_config_pb2.ModelConfig, auto_complete: bool = True) -> Manifest:
    """What serving needs of one version: from manifest.json when the folder has one (checked against the config),
    else from the config and the ONNX file alone (the tensors from the file when the config lists none, unless
    ``auto_complete`` is off).

    Raises:
        ModelLoadError: one line naming the file that is wrong and why.
    """
    if (version_dir / MANIFEST_FILE).exists() and config.platform != ENSEMBLE_PLATFORM:
        return _from_manifest(version_dir, config)
    return _from_config(version_dir, config, auto_complete)


def _from_manifest(version_dir: Path, config: model_config_pb2.ModelConfig) -> Manifest:
    path = version_dir / MANIFEST_FILE
    if config.max_batch_size == 0:
        raise ModelLoadError(
            f"{version_dir.parent / CONFIG_FILE}: max_batch_size is 0, but {path}'s tensors have a batch dimension"
        )
    try:
        manifest = modelrepo.read_manifest(version_dir)
    except FormatError as error:
        raise _load_error(error) from error
    try:
        onnx_file = manifest.onnx_file
    except FormatError as error:  # modelrepo names the model; the user needs the file
        raise ModelLoadError(f"{path}: {str(error).removeprefix(f'{manifest.name}: ')}") from error
    if manifest.platform != PLATFORM:
        raise ModelLoadError(f"{path}: platform {manifest.platform[:80]!r} is not supported; expected '{PLATFORM}'")
    signature = ModelSignature(
        inputs=tuple(_spec(path, "input", t) for t in manifest.inputs),
        outputs=tuple(_spec(path, "output", t) for t in manifest.outputs),
    )
    served = Manifest(
        name=manifest.name,
        version=int(version_dir.name),
        platform=manifest.platform,
        onnx_path=model_file(version_dir, onnx_file),
        signature=signature,
        # A buildsys model has one output, the classifier's.
        class_names={signature.outputs[0].name: manifest.class_names},
        declared_in=MANIFEST_FILE,
    )
    _check_config_matches(config, served, version_dir.parent / CONFIG_FILE)
    return served


def _check_printable(name: str, path: Path | str, kind: str) -> None:
    """Refuses a tensor name with a line break or another character that cannot be printed: every message that
    names the tensor, in the log and in answers, must stay one line."""
    if not name.isprintable():
        raise ModelLoadError(f"{path}: {kind} {shown(name)} has a character that cannot be printed in its name")


def _spec(path: Path, kind: str, tensor: modelrepo.Tensor) -> TensorSpec:
    _check_printable(tensor.name, path, kind)
    if tensor.datatype not in DATATYPES:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' has datatype {tensor.datatype}; serving supports {', '.join(DATATYPES)}"
        )
    if tensor.shape[0] != -1:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' shape {list(tensor.shape)} must start with -1 (the batch)"
        )
    return TensorSpec(tensor.name, tensor.datatype, tensor.shape)


def _from_config(version_dir: Path, config: model_config_pb2.ModelConfig, auto_complete: bool) -> Manifest:
    """A Triton version folder: the config's tensors (or the ONNX file's, when the config lists none) and labels."""
    model_dir = version_dir.parent
    config_path = model_dir / CONFIG_FILE
    ensemble = config.platform == ENSEMBLE_PLATFORM
    onnx_path = None if ensemble else model_file(version_dir, config.default_model_filename or ONNX_FILE)
    batched = config.max_batch_size > 0
    if config.input and config.output:
        signature = ModelSignature(
            inputs=tuple(_config_spec(t, config_path, "input", batched) for t in config.input),
            outputs=tuple(_config_spec(t, config_path, "output", batched) for t in config.output),
            batched=batched,
        )
        declared_in = CONFIG_FILE if config_path.exists() else "the config completed from the newest version"
    elif not auto_complete:
        raise ModelLoadError(
            f"{config_path}: lists no inputs or no outputs, and auto-completion is off (--disable-auto-complete-config)"
        )
    else:
        signature = onnx_signature(onnx_path, batched)
        declared_in = f"{onnx_path.name}'s own declaration"
    class_names = {}
    for output in config.output:
        if output.label_filename:
            try:
                class_names[output.name] = modelrepo.read_labels(model_dir / output.label_filename)
            except FormatError as error:
                raise _load_error(error) from error
    return Manifest(
        name=model_dir.name,
        version=int(version_dir.name),
        platform=ENSEMBLE_PLATFORM if ensemble else PLATFORM,
        onnx_path=onnx_path,
        signature=signature,
        class_names=class_names,
        declared_in=declared_in,
    )


def _config_spec(
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, path: Path, kind: str, batched: bool
) -> TensorSpec:
    """A config tensor as serving sees it: ``dims`` after the batch dimension of a model that batches, and the
    ONNX file's shape from ``reshape`` where the config gives one."""
    batch = (-1,) if batched else ()
    model_shape = (*batch, *tensor.reshape.shape) if tensor.HasField("reshape") else None
    optional = isinstance(tensor, model_config_pb2.ModelInput) and tensor.optional
    return TensorSpec(tensor.name, _datatype(tensor, path, kind), (*batch, *tensor.dims), model_shape, optional)


def _check_config_matches(config: model_config_pb2.ModelConfig, manifest: Manifest, config_path: Path) -> None:
    """Checks that config.pbtxt declares the manifest's tensors (names, datatypes, non-batch dims).

    Raises:
        ModelLoadError: naming the tensor and both declarations.
    """
    for kind, declared, specs in (
        ("input", config.input, manifest.signature.inputs),
        ("output", config.output, manifest.signature.outputs),
    ):
        by_name = {t.name: t for t in declared}
        if declared and set(by_name) != {s.name for s in specs}:
            raise ModelLoadError(
                f"{config_path}: {kind}s {sorted(by_name)} differ from the manifest's {[s.name for s in specs]}"
            )
        for spec in specs:
            tensor = by_name.get(spec.name)
            if tensor is None:
                continue
            datatype = _datatype(tensor, config_path, kind)
            if tensor.HasField("reshape") and tuple(tensor.reshape.shape) != spec.shape[1:]:
                raise ModelLoadError(
                    f"{config_path}: {kind} '{spec.name}' has a reshape, which the manifest's model does not need"
                )
            if datatype != spec.datatype or tuple(tensor.dims) != spec.shape[1:]:
                raise ModelLoadError(
                    f"{config_path}: {kind} '{spec.name}' is {datatype} {list(tensor.dims)} but the manifest "
                    f"says {spec.datatype} {list(spec.shape[1:])} (batch dimension left out)"
                )
