"""``config.pbtxt`` and ``labels.txt``: the model-level files Triton reads.

The config is built as Triton's own ``ModelConfig`` protobuf message and written and parsed with protobuf's
text_format, so what the builder writes is by construction what the server (and Triton) parses.
"""

import functools
from pathlib import Path

from google.protobuf import text_format

from modelrepo.atomic import write_atomic
from modelrepo.layout import CONFIG_FILE, LABELS_FILE, FormatError
from modelrepo.manifest import PLATFORM, Manifest, Tensor
from serving.protocol import model_config_pb2


def _read_text(path: Path) -> str:
    """A model-level file's text; unreadable or non-UTF-8 bytes are one FormatError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FormatError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FormatError(f"{path}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})") from error


def _data_type(datatype: str) -> int:
    """Triton's enum value for an Open Inference Protocol datatype (BYTES is Triton's TYPE_STRING)."""
    return model_config_pb2.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def model_config(
    manifest: Manifest, max_batch_size: int, max_queue_delay_us: int = 500, max_queue_size: int = 256
) -> model_config_pb2.ModelConfig:
    """The Triton config of a published model: its tensors without the batch dimension (Triton's rule when
    ``max_batch_size > 0``), class labels on the outputs, dynamic batching, and the latest version served."""
    config = model_config_pb2.ModelConfig(name=manifest.name, platform=PLATFORM, max_batch_size=max_batch_size)

    def add(target, tensor: Tensor, labels: bool) -> None:
        entry = target.add(name=tensor.name, data_type=_data_type(tensor.datatype), dims=tensor.shape[1:])
        if labels:
            entry.label_filename = LABELS_FILE

    for tensor in manifest.inputs:
        add(config.input, tensor, labels=False)
    for tensor in manifest.outputs:
        add(config.output, tensor, labels=bool(manifest.class_names))
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
    config.version_policy.latest.num_versions = 1
    return config


def format_config(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(model_dir: Path, config: model_config_pb2.ModelConfig) -> None:
    """Writes ``<model_dir>/config.pbtxt`` atomically."""
    write_atomic(model_dir / CONFIG_FILE, format_config(config))


# Configs up to this size are parsed once per distinct text (see _parsed); larger ones every time they are read.
_CACHED_CONFIG_CHARS = 1 << 16


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parses a config.pbtxt.

    Raises:
        FormatError: unreadable, not UTF-8, or not a valid Triton model config (one line).
    """
    text = _read_text(path)
    config = model_config_pb2.ModelConfig()
    try:
        config.CopyFrom(_parsed(text) if len(text) <= _CACHED_CONFIG_CHARS else _parse(text))
    except (text_format.ParseError, ValueError, RecursionError) as error:  # ValueError: a number out of range
        reason = " ".join(str(error).split())
        raise FormatError(f"{path}: not a valid Triton model config: {reason}") from error
    return config


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> model_config_pb2.ModelConfig:
    """``_parse``, kept by the text itself: a server's poll reads every model's config.pbtxt every few seconds,
    and protobuf's text parser takes about 0.3 ms a config where reading the file takes microseconds. Keyed by the
    text, not the file's times, a changed file is never answered from before. Callers get copies: never change it."""
    return _parse(text)


def _parse(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


def write_labels(model_dir: Path, class_names: tuple[str, ...] | list[str]) -> None:
    """Writes ``<model_dir>/labels.txt`` (one class name per line, Triton's label_filename) atomically."""
    write_atomic(model_dir / LABELS_FILE, "".join(f"{name}\n" for name in class_names))


def read_labels(path: Path) -> tuple[str, ...]:
    """The class names of a labels file, one per line.

    Raises:
        FormatError: unreadable or not UTF-8.
    """
    text = _read_text(path)
    return tuple(line.rstrip("\r") for line in text.split("\n")[: -1 if text.endswith("\n") else None])
