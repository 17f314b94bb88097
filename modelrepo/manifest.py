"""``manifest.json``: everything known about one published version, as a typed object.

The builder creates a `Manifest` and writes it; `serving`, `predict`, reports and the quality gate read it back
through `read_manifest`, which checks every field's type once, so no reader indexes raw JSON by hand. Keys this
version of the format does not know are kept in `extra` and written back unchanged, as the contract requires
("a reader must ignore keys it does not know").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrepo.atomic import write_json_atomic
from modelrepo.layout import MANIFEST_FILE, MODEL_NAME, ONNX_FILE, VERSION_NAME, FormatError

MANIFEST_FORMAT = 1
PLATFORM = "onnxruntime_onnx"
# The Open Inference Protocol's datatype names.
DATATYPES = frozenset(
    ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
    + ("BF16", "BYTES")
)


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, Open Inference Protocol datatype, and shape with -1 for the batch."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Manifest:
    """The typed ``manifest.json`` of a version (docs/output-tree.md). `version` is None until published."""

    name: str
    content_hash: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    version: int | None = None
    label: str = ""
    created: str = ""
    platform: str = PLATFORM
    files: dict[str, str] = field(default_factory=lambda: {"onnx": ONNX_FILE})
    class_names: tuple[str, ...] = ()
    image: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    seed: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    framework_versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def onnx_file(self) -> str:
        """The ONNX file's name inside the version folder, checked to be a plain file name (no path)."""
        name = self.files.get("onnx", ONNX_FILE)
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise FormatError(f"{self.name}: files.onnx {name!r} must be a file name inside the version folder")
        return name

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (unknown keys from `extra` included)."""
        data: dict[str, Any] = {**self.extra, "format": MANIFEST_FORMAT}
        for item in dataclasses.fields(self):
            if item.name == "extra":
                continue
            value = getattr(self, item.name)
            if item.name in ("inputs", "outputs"):
                value = [tensor.to_json() for tensor in value]
            elif item.name == "class_names":
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_json(cls, data: Any, source: str) -> Manifest:
        """Checks the types of a parsed manifest.json; `source` names it in the one-line error.

        Raises:
            FormatError: not an object, an unknown format, or a field of the wrong type.
        """
        if not isinstance(data, dict):
            raise FormatError(f"{source}: expected a JSON object, found {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise FormatError(f"{source}: format {data.get('format')!r} is not supported; expected {MANIFEST_FORMAT}")
        check = _Checker(source, data)
        name = check.text("name")
        if not MODEL_NAME.match(name):
            raise FormatError(f"{source}: name {name[:80]!r} is not a model name (it must match {MODEL_NAME.pattern})")
        version = check.optional_int("version")
        if version is not None and version < 1:
            raise FormatError(f"{source}: version {version} must be a positive integer")
        known = {item.name for item in dataclasses.fields(cls)} | {"format"}
        return cls(
            name=name,
            version=version,
            content_hash=check.text("content_hash"),
            inputs=check.tensors("inputs"),
            outputs=check.tensors("outputs"),
            label=check.text("label", ""),
            created=check.text("created", ""),
            platform=check.text("platform", PLATFORM),
            files=check.mapping("files", {"onnx": ONNX_FILE}, value_type=str),
            class_names=tuple(check.strings("class_names")),
            image=check.optional_mapping("image"),
            metrics=check.mapping("metrics", {}),
            parity=check.mapping("parity", {}),
            data_fingerprint=check.optional_text("data_fingerprint"),
            seed=check.optional_int("seed"),
            hparams=check.mapping("hparams", {}),
            framework_versions=check.mapping("framework_versions", {}, value_type=str),
            timings=check.mapping("timings", {}, value_type=(int, float)),
            params=check.optional_int("params"),
            extra={key: value for key, value in data.items() if key not in known},
        )


class _Checker:
    """Reads typed fields out of a JSON object, failing with one line that names the file and the field."""

    def __init__(self, source: str, data: dict[str, Any]) -> None:
        self.source = source
        self.data = data

    def _fail(self, key: str, expected: str) -> FormatError:
        return FormatError(f"{self.source}: '{key}' must be {expected}, found {_shown(self.data.get(key))}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer or null")
        return value

    def mapping(self, key: str, default: dict[str, Any], value_type: type | tuple[type, ...] | None = None) -> dict:
        value = self.data.get(key, default)
        if not isinstance(value, dict) or (
            value_type is not None
            and not all(isinstance(v, value_type) and not isinstance(v, bool) for v in value.values())
        ):
            raise self._fail(key, "an object" if value_type is None else f"an object of {_type_name(value_type)}")
        return dict(value)

    def optional_mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            raise self._fail(key, "an object or null")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._fail(key, "a list of strings")
        return value

    def tensors(self, key: str) -> tuple[Tensor, ...]:
        entries = self.data.get(key)
        if not isinstance(entries, list) or not entries:
            raise self._fail(key, "a non-empty list of {name, datatype, shape}")
        tensors = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise self._fail(key, "a list of {name, datatype, shape} objects")
            name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
            if not isinstance(name, str) or not name:
                raise FormatError(f"{self.source}: a '{key}' entry has no name")
            if not isinstance(datatype, str) or datatype not in DATATYPES:
                raise FormatError(
                    f"{self.source}: {key} {_shown(name)} has datatype {_shown(datatype)}; known: "
                    f"{', '.join(sorted(DATATYPES))}"
                )
            if (
                not isinstance(shape, list)
                or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)
            ):
                raise FormatError(
                    f"{self.source}: {key} {_shown(name)} shape must be a non-empty list of integers >= -1, found "
                    f"{_shown(shape)}"
                )
            tensors.append(Tensor(name=name, datatype=datatype, shape=tuple(shape)))
        return tuple(tensors)


def _shown(value: Any) -> str:
    """A value read from the file as a message shows it: its repr when short (a repr has no line breaks), else
    its type."""
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _type_name(value_type: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (value_type if isinstance(value_type, tuple) else (value_type,))]
    return " or ".join({"str": "strings", "int": "integers", "float": "numbers"}.get(n, n) for n in names)


def read_manifest(version_dir: Path) -> Manifest:
    """Reads and checks ``<version_dir>/manifest.json``. When `version_dir` is a published version folder
    (``<model>/<N>``), the manifest must name that model and that version.

    Raises:
        FormatError: unreadable, not UTF-8 JSON, wrong types, or inconsistent with its folder.
    """
    path = version_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FormatError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FormatError(f"{path}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})") from error
    except (json.JSONDecodeError, RecursionError) as error:
        raise FormatError(f"{path}: not valid JSON ({error})") from error
    manifest = Manifest.from_json(data, str(path))
    if VERSION_NAME.match(version_dir.name):
        if manifest.version != int(version_dir.name):
            raise FormatError(f"{path}: version {manifest.version!r} does not match its folder '{version_dir.name}'")
        if manifest.name != version_dir.parent.name:
            raise FormatError(
                f"{path}: name '{manifest.name}' does not match the model folder '{version_dir.parent.name}'"
            )
    return manifest


def write_manifest(version_dir: Path, manifest: Manifest) -> None:
    """Writes ``<version_dir>/manifest.json`` atomically."""
    write_json_atomic(version_dir / MANIFEST_FILE, manifest.to_json())
