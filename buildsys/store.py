"""The output tree: versioned model folders, their manifests, and atomic publishing.

This module owns the layout described in docs/output-tree.md — the only thing that crosses from building to
serving. A version folder is assembled in `build-out/staging/` and renamed into place in one step, so a
version folder that exists is complete; config.pbtxt and labels.txt are replaced by rename too. Version numbers
are assigned under a file lock, so two builds publishing at once never share one. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from modelrepo import write_atomic, write_file_atomic, write_json_atomic  # noqa: F401 - one atomic writer for the tree

MANIFEST = "manifest.json"
TRITON_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def triton_config(
    manifest: dict[str, Any], max_batch_size: int, max_queue_delay_us: int = 500, max_queue_size: int = 256
) -> str:
    """The Triton model configuration (text protobuf) for a published model.

    `dims` leave out the batch axis, as Triton requires when `max_batch_size > 0`.
    """

    def tensor(spec: dict[str, Any], labels: bool) -> str:
        dims = ", ".join(str(d) for d in spec["shape"][1:])
        label_line = '\n    label_filename: "labels.txt"' if labels else ""
        return (
            f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["datatype"]]}\n'
            f"    dims: [ {dims} ]{label_line}\n  }}"
        )

    inputs = ",\n".join(tensor(spec, False) for spec in manifest["inputs"])
    outputs = ",\n".join(tensor(spec, True) for spec in manifest["outputs"])
    return (
        f'name: "{manifest["name"]}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        f"  default_queue_policy {{\n    max_queue_size: {max_queue_size}\n  }}\n}}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


class OutputTree:
    """The `build-out/` folder: published models, per-target work folders and rejected candidates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"

    def model_dir(self, name: str) -> Path:
        return self.models / name

    def work_dir(self, name: str, content_hash: str) -> Path:
        """Scratch space for one build (checkpoints, intermediate exports), keyed by the content hash."""
        return self.root / "work" / name / content_hash[:16]

    def versions(self, name: str) -> list[int]:
        """Published versions, oldest first. Only decimal folder names count; staging folders never do."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        found = [
            int(child.name)
            for child in folder.iterdir()
            if child.is_dir() and child.name.isdigit() and not child.name.startswith("0")
        ]
        return sorted(found)

    def published_version(self, label: str, name: str, version: int | None = None) -> int:
        """`version`, or the latest when None, checked to be published; otherwise one line saying what is.

        Raises:
            BuildsysError: when the target has no published version, or not that one.
        """
        versions = self.versions(name)
        if not versions:
            raise BuildsysError(f"{label} has not been built; run: python -m buildsys build {label}")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise BuildsysError(f"{label} has no version {version}; published: {', '.join(map(str, versions))}")
        return version

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        return json.loads((self.model_dir(name) / str(version) / MANIFEST).read_text(encoding="utf-8"))

    def latest_manifest(self, name: str) -> dict[str, Any] | None:
        versions = self.versions(name)
        return self.manifest(name, versions[-1]) if versions else None

    def find_version(self, name: str, content_hash: str) -> int | None:
        """The newest published version built from exactly this content, if any."""
        for version in reversed(self.versions(name)):
            if self.manifest(name, version).get("content_hash") == content_hash:
                return version
        return None

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def staging_dir(self, name: str) -> Path:
        """A fresh folder to assemble a version in, outside the model repository (on the same file system, so
        publishing is one rename); leftovers of dead builds are removed first."""
        folder = self.root / "staging" / name
        folder.mkdir(parents=True, exist_ok=True)
        for child in folder.iterdir():
            pid = child.name.split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(child, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=folder))

    def publish(self, name: str, staging: Path, manifest: dict[str, Any], max_batch_size: int) -> int:
        """Moves a complete staging folder into place as the next version and returns its number.

        The manifest is written last into the staging folder, then the folder is renamed: readers either see
        no new version or a complete one. config.pbtxt and labels.txt then describe the newest version.
        """
        with self._lock(name):
            version = (self.versions(name) or [0])[-1] + 1
            manifest = {**manifest, "version": version}
            write_json_atomic(staging / MANIFEST, manifest)
            self.model_dir(name).mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.model_dir(name) / str(version))
            write_atomic(
                self.model_dir(name) / "labels.txt",
                "".join(f"{label}\n" for label in manifest["class_names"]),
            )
            write_atomic(self.model_dir(name) / "config.pbtxt", triton_config(manifest, max_batch_size))
        return version

    def clean(self, name: str | None = None) -> list[Path]:
        """Removes one target's outputs (models, work folders, rejected candidates) or the whole tree."""
        if name is None:
            paths = [self.root]
        else:
            paths = [
                self.model_dir(name),
                *(self.root / kind / name for kind in ("work", "staging", "rejected")),
            ]
        removed = [path for path in paths if path.exists()]
        for path in removed:
            shutil.rmtree(path)
        return removed
