"""The model repository's on-disk format: the one contract between building and serving (docs/output-tree.md).

`buildsys` writes a model repository and `serving` (or Triton, or KServe) reads it; both go through this package
so that writer and reader cannot disagree. It owns the names that are valid, the typed ``manifest.json``, the
Triton ``config.pbtxt`` (written and parsed with protobuf's text_format from Triton's ``ModelConfig`` message),
``labels.txt``, the listing of versions, and the atomic file writes every published file goes through. It imports
neither TensorFlow nor buildsys, so a serving-only install carries it.
"""

from modelrepo.atomic import write_atomic, write_file_atomic, write_json_atomic
from modelrepo.config import format_config, model_config, read_config, read_labels, write_config, write_labels
from modelrepo.layout import (
    CONFIG_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_NAME,
    ONNX_FILE,
    VERSION_NAME,
    FormatError,
    list_versions,
)
from modelrepo.manifest import MANIFEST_FORMAT, PLATFORM, Manifest, Tensor, read_manifest, write_manifest

__all__ = [
    "CONFIG_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MODEL_NAME",
    "ONNX_FILE",
    "PLATFORM",
    "VERSION_NAME",
    "FormatError",
    "Manifest",
    "Tensor",
    "format_config",
    "list_versions",
    "model_config",
    "read_config",
    "read_labels",
    "read_manifest",
    "write_atomic",
    "write_config",
    "write_file_atomic",
    "write_json_atomic",
    "write_labels",
    "write_manifest",
]
