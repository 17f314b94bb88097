"""Names and folders of a model repository: which folder names are models and versions, and the file names
inside them. Triton's rules: a version is a folder named by a positive decimal integer; anything else in a
model folder (config.pbtxt, labels.txt, index.html, dot-files) is not a version."""

import re
from pathlib import Path

# A model folder's name: buildsys writes identifiers (its targets' names); a Triton repository may hold names such
# as "ResNet-50" or "yolov8n.seg". Nothing that could leave the repository in a path or start like a flag: no
# slash, no leading dot or dash.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# At most 18 digits: every version then fits a signed 64-bit integer (Triton's int64 version numbers), and a
# 5,000-digit name in a request or on disk is simply not a version rather than a number to convert.
VERSION_NAME = re.compile(r"^[1-9][0-9]{0,17}$")

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
ONNX_FILE = "model.onnx"


class FormatError(ValueError):
    """A file of the model repository that does not follow the format; the message is one line that names the
    file and what is wrong with it."""


def list_versions(model_dir: Path) -> list[int]:
    """The version folders of a model, ascending; an unreadable or missing folder has none."""
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return []
    return sorted(int(entry.name) for entry in entries if VERSION_NAME.match(entry.name) and entry.is_dir())
