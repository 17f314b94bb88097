"""What serving reads from one model's files (docs/output-tree.md), through the shared ``modelrepo`` format.

A buildsys version folder has ``manifest.json``; any other Triton ONNX repository is served as Triton serves it:
the signature comes from ``config.pbtxt`` (class labels from an output's ``label_filename``, the model file from
``default_model_filename``), and a model without ``config.pbtxt`` is completed from its ONNX file's inputs and
outputs when their first dimension is dynamic. Every malformed file (not UTF-8, wrong JSON types, unknown datatype,
inconsistent config, an ONNX file that does not load) raises ``ModelLoadError`` with one line naming the file and
the reason, never another exception, so the repository refuses that model or version and goes on with the others.
This module reads files only; it never runs a model (that is serving/runtime.py) and never imports buildsys.
"""

from dataclasses import dataclass
from pathlib import Path

import modelrepo
from modelrepo import CONFIG_FILE, MANIFEST_FILE, MODEL_NAME, ONNX_FILE, PLATFORM, VERSION_NAME, FormatError
from modelrepo import list_versions as list_versions
from serving.errors import ModelLoadError, first_line
from serving.protocol import model_config_pb2
from serving.signature import NUMPY_DTYPES, ONNX_DATATYPES, ModelSignature, TensorSpec

__all__ = ["MODEL_NAME", "VERSION_NAME", "Manifest", "list_versions", "read_config", "read_version"]

# Triton's platform name and its backend spelling; a config may give either.
ONNX_BACKEND = "onnxruntime"
# Triton's default max_batch_size for a model whose config it completes (``--backend-config=default-max-batch-size``);
# ``serve --max-batch-size`` overrides it like any config value.
AUTOCOMPLETE_MAX_BATCH_SIZE = 4


@dataclass(frozen=True)
class Manifest:
    """What serving needs of one version, read from its manifest.json or, without one, from config.pbtxt and the
    ONNX file as Triton would."""

    name: str
    version: int
    platform: str
    onnx_file: str
    signature: ModelSignature
    class_names: tuple[str, ...]


def _load_error(error: FormatError) -> ModelLoadError:
    return ModelLoadError(" ".join(str(error).split()))


def _file_name(value: str, path: Path, field: str) -> str:
    """A file name from a config or manifest, refused when it would leave its folder."""
    if not value or value in (".", "..") or Path(value).name != value or "\\" in value:
        raise ModelLoadError(f"{path}: {field} {value[:80]!r} must be a file name inside the model's folder")
    return value


def _datatype(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, path: Path, kind: str) -> str:
    known = tensor.data_type in model_config_pb2.DataType.values()
    name = model_config_pb2.DataType.Name(tensor.data_type) if known else str(tensor.data_type)
    datatype = name.removeprefix("TYPE_")
    if datatype not in NUMPY_DTYPES:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' has data_type {name}; serving supports {', '.join(NUMPY_DTYPES)}"
        )
    return datatype


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """The model's config.pbtxt, checked for what serving needs; completed from the ONNX file when it is missing.

    Raises:
        ModelLoadError: unreadable, not UTF-8, not a valid Triton config, another model's name, another platform,
            no batch dimension, or (without config.pbtxt) an ONNX file that cannot complete one.
    """
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return _complete_config(model_dir)
    try:
        config = modelrepo.read_config(path)
    except FormatError as error:
        raise _load_error(error) from error
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(f"{path}: name '{config.name[:80]}' does not match its folder '{model_dir.name}'")
    if config.platform not in ("", PLATFORM) or config.backend not in ("", ONNX_BACKEND):
        given = config.platform if config.platform not in ("", PLATFORM) else config.backend
        raise ModelLoadError(f"{path}: platform/backend '{given[:80]}' is not supported; expected '{PLATFORM}'")
    if config.max_batch_size <= 0:
        raise ModelLoadError(
            f"{path}: max_batch_size is {config.max_batch_size}; serving needs a batch dimension (> 0)"
        )
    if config.default_model_filename:
        _file_name(config.default_model_filename, path, "default_model_filename")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            _datatype(tensor, path, kind)
            if any(d < -1 for d in tensor.dims):
                raise ModelLoadError(f"{path}: {kind} '{tensor.name}' dims {list(tensor.dims)} must be >= -1")
            if getattr(tensor, "label_filename", ""):
                _file_name(tensor.label_filename, path, f"{kind} '{tensor.name}' label_filename")
    return config


def _complete_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """A config for a model folder without config.pbtxt, from the newest version's ONNX file (Triton's
    auto-complete): its inputs and outputs, with dynamic batching, when every tensor's first dimension is dynamic."""
    versions = list_versions(model_dir)
    if not versions:
        raise ModelLoadError(f"{model_dir / CONFIG_FILE}: missing, and no version folder to complete it from")
    onnx_path = model_dir / str(versions[-1]) / ONNX_FILE
    signature = onnx_signature(onnx_path)
    config = model_config_pb2.ModelConfig(
        name=model_dir.name, platform=PLATFORM, max_batch_size=AUTOCOMPLETE_MAX_BATCH_SIZE
    )
    for target, specs in ((config.input, signature.inputs), (config.output, signature.outputs)):
        for spec in specs:
            target.add(
                name=spec.name, data_type=model_config_pb2.DataType.Value(f"TYPE_{spec.datatype}"), dims=spec.shape[1:]
            )
    config.dynamic_batching.SetInParent()
    config.version_policy.latest.num_versions = 1
    return config


def onnx_signature(path: Path) -> ModelSignature:
    """The inputs and outputs an ONNX file declares, read with ONNX Runtime (no TensorFlow, no onnx package).

    Raises:
        ModelLoadError: the file does not load, a tensor has a datatype serving cannot carry, or a first
            dimension is not dynamic (no batch dimension to batch on).
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
            datatype = ONNX_DATATYPES.get(node.type)
            if datatype is None:
                raise ModelLoadError(f"{path}: {kind} '{node.name}' is {node.type}, which serving cannot carry")
            shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
            if not shape or shape[0] != -1:
                raise ModelLoadError(
                    f"{path}: {kind} '{node.name}' has shape {list(shape)}; without config.pbtxt the first "
                    "dimension must be dynamic (the batch)"
                )
            specs[kind].append(TensorSpec(node.name, datatype, shape))
    return ModelSignature(inputs=tuple(specs["input"]), outputs=tuple(specs["output"]))


def read_version(version_dir: Path, config: model_config_pb2.ModelConfig) -> Manifest:
    """What serving needs of one version: from manifest.json when the folder has one (checked against the config),
    else from the config and the ONNX file alone.

    Raises:
        ModelLoadError: one line naming the file that is wrong and why.
    """
    if (version_dir / MANIFEST_FILE).exists():
        return _from_manifest(version_dir, config)
    return _from_config(version_dir, config)


def _from_manifest(version_dir: Path, config: model_config_pb2.ModelConfig) -> Manifest:
    path = version_dir / MANIFEST_FILE
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
        onnx_file=onnx_file,
        signature=signature,
        class_names=manifest.class_names,
    )
    _check_config_matches(config, served, version_dir.parent / CONFIG_FILE)
    return served


def _spec(path: Path, kind: str, tensor: modelrepo.Tensor) -> TensorSpec:
    if tensor.datatype not in NUMPY_DTYPES:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' has datatype {tensor.datatype}; serving supports {', '.join(NUMPY_DTYPES)}"
        )
    if tensor.shape[0] != -1:
        raise ModelLoadError(
            f"{path}: {kind} '{tensor.name}' shape {list(tensor.shape)} must start with -1 (the batch)"
        )
    return TensorSpec(tensor.name, tensor.datatype, tensor.shape)


def _from_config(version_dir: Path, config: model_config_pb2.ModelConfig) -> Manifest:
    """A Triton version folder: the config's tensors (or the ONNX file's, when the config lists none) and labels."""
    model_dir = version_dir.parent
    config_path = model_dir / CONFIG_FILE
    onnx_file = config.default_model_filename or ONNX_FILE
    if config.input and config.output:
        signature = ModelSignature(
            inputs=tuple(TensorSpec(t.name, _datatype(t, config_path, "input"), (-1, *t.dims)) for t in config.input),
            outputs=tuple(
                TensorSpec(t.name, _datatype(t, config_path, "output"), (-1, *t.dims)) for t in config.output
            ),
        )
    else:
        signature = onnx_signature(version_dir / onnx_file)
    class_names: tuple[str, ...] = ()
    label_files = [t.label_filename for t in config.output if t.label_filename]
    if label_files:
        try:
            class_names = modelrepo.read_labels(model_dir / label_files[0])
        except FormatError as error:
            raise _load_error(error) from error
    return Manifest(
        name=model_dir.name,
        version=int(version_dir.name),
        platform=PLATFORM,
        onnx_file=onnx_file,
        signature=signature,
        class_names=class_names,
    )


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
            if datatype != spec.datatype or tuple(tensor.dims) != spec.shape[1:]:
                raise ModelLoadError(
                    f"{config_path}: {kind} '{spec.name}' is {datatype} {list(tensor.dims)} but the manifest "
                    f"says {spec.datatype} {list(spec.shape[1:])} (batch dimension left out)"
                )
