"""Atomic, durable file writes: the one way any file of the output tree is written.

Readers (a polling server, Triton, a second build) see either the old file or the whole new one, never a part,
and a crash right after the rename does not leave an empty file behind: the data is fsynced before the rename
and the folder after it. Published files are readable by everyone (0644) whatever the umask, since servers
often run as another user.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(folder: Path) -> None:
    """Makes a rename or a new entry in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes `path` by calling `write` on a temporary file in the same folder, then fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, content: str | bytes) -> None:
    """`write_file_atomic` for text (UTF-8) or bytes."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    write_file_atomic(path, lambda stream: stream.write(data))


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_atomic` of `data` as indented JSON with sorted keys, so that equal data gives equal bytes."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
