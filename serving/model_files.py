"""Reads one model's files from the output tree (docs/output-tree.md): config.pbtxt and a version's
manifest.json.

Only reads and checks files; it never loads ONNX (that is serving/runtime.py) and never imports buildsys.
``config.pbtxt`` is parsed with protobuf's text_format into Triton's compiled ``ModelConfig`` message, so any
file Triton accepts is read the same way here.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from serving.errors import ModelLoadError
from serving.protocol import model_config_pb2
from serving.signature import NUMPY_DTYPES, ModelSignature, TensorSpec

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
VERSION_NAME = re.compile(r"^[1-9][0-9]*$")
MANIFEST_FORMAT = 1
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class Manifest:
    """The fields of manifest.json that serving uses; unknown keys are ignored as the contract requires."""

    name: str
    version: int
    platform: str
    onnx_file: str
    signature: ModelSignature
    class_names: tuple[str, ...]


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parses ``<model_dir>/config.pbtxt``.

    Raises:
        ModelLoadError: the file is missing, is not valid text protobuf, or names another model.
    """
    path = model_dir / "config.pbtxt"
    try:
        text = path.read_text()
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read ({error.strerror})") from error
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ModelLoadError(f"{path}: not a valid Triton model config: {error}") from error
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(f"{path}: name '{config.name}' does not match its folder '{model_dir.name}'")
    if config.platform and config.platform != PLATFORM:
        raise ModelLoadError(f"{path}: platform '{config.platform}' is not supported; expected '{PLATFORM}'")
    if config.max_batch_size <= 0:
        raise ModelLoadError(
            f"{path}: max_batch_size is {config.max_batch_size}; serving needs a batch dimension (> 0)"
        )
    return config


def _tensor_specs(path: Path, key: str, entries: object) -> tuple[TensorSpec, ...]:
    if not isinstance(entries, list) or not entries:
        raise ModelLoadError(f"{path}: '{key}' must be a non-empty list of {{name, datatype, shape}}")
    specs = []
    for entry in entries:
        try:
            name, datatype, shape = entry["name"], entry["datatype"], tuple(int(d) for d in entry["shape"])
        except (TypeError, KeyError, ValueError) as error:
            raise ModelLoadError(f"{path}: '{key}' entry {entry!r} lacks name, datatype or shape") from error
        if datatype not in NUMPY_DTYPES:
            raise ModelLoadError(
                f"{path}: {key} '{name}' has datatype {datatype}; supported: {', '.join(NUMPY_DTYPES)}"
            )
        if not shape or shape[0] != -1:
            raise ModelLoadError(f"{path}: {key} '{name}' shape {list(shape)} must start with -1 (the batch)")
        specs.append(TensorSpec(name=name, datatype=datatype, shape=shape))
    return tuple(specs)


def read_manifest(version_dir: Path, model_name: str) -> Manifest:
    """Parses ``<version_dir>/manifest.json`` and checks that it describes this folder.

    Raises:
        ModelLoadError: the file is missing, not JSON, of an unknown format, or inconsistent with its folder.
    """
    path = version_dir / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise ModelLoadError(f"{path}: format {data.get('format')!r} is not supported; expected {MANIFEST_FORMAT}")
    if data.get("name") != model_name:
        raise ModelLoadError(f"{path}: name {data.get('name')!r} does not match the model folder '{model_name}'")
    if str(data.get("version")) != version_dir.name:
        raise ModelLoadError(f"{path}: version {data.get('version')!r} does not match its folder '{version_dir.name}'")
    platform = data.get("platform", PLATFORM)
    if platform != PLATFORM:
        raise ModelLoadError(f"{path}: platform {platform!r} is not supported; expected '{PLATFORM}'")
    onnx_file = (data.get("files") or {}).get("onnx", "model.onnx")
    if not isinstance(onnx_file, str) or Path(onnx_file).name != onnx_file:
        raise ModelLoadError(f"{path}: files.onnx {onnx_file!r} must be a file name inside the version folder")
    class_names = data.get("class_names") or []
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise ModelLoadError(f"{path}: class_names must be a list of strings")
    signature = ModelSignature(
        inputs=_tensor_specs(path, "inputs", data.get("inputs")),
        outputs=_tensor_specs(path, "outputs", data.get("outputs")),
    )
    return Manifest(
        name=model_name,
        version=int(version_dir.name),
        platform=platform,
        onnx_file=onnx_file,
        signature=signature,
        class_names=tuple(class_names),
    )


def check_config_matches(config: model_config_pb2.ModelConfig, manifest: Manifest, config_path: Path) -> None:
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
            datatype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
            if datatype != spec.datatype or tuple(tensor.dims) != spec.shape[1:]:
                raise ModelLoadError(
                    f"{config_path}: {kind} '{spec.name}' is {datatype} {list(tensor.dims)} but the manifest "
                    f"says {spec.datatype} {list(spec.shape[1:])} (batch dimension left out)"
                )


def list_versions(model_dir: Path) -> list[int]:
    """The version folders of a model, ascending; staging folders and other files are not versions."""
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return []
    return sorted(int(e.name) for e in entries if VERSION_NAME.match(e.name) and e.is_dir())
