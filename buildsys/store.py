"""The output tree: versioned model folders, their manifests, and atomic publishing.

This module owns the layout described in docs/output-tree.md — the only thing that crosses from building to
serving — and writes it through `modelrepo`, the format package both sides share (typed manifest, config.pbtxt
through Triton's ModelConfig). A version folder is assembled in `build-out/staging/`, made world-readable,
fsynced, and renamed into place in one step, so a version folder that exists is complete — its own copies of
config.pbtxt and labels.txt included — and the model-level config.pbtxt and labels.txt are never inconsistent
with the newest version (see `OutputTree.publish`). Version numbers are assigned under a file lock from a
high-water mark kept outside the model folder (`build-out/meta/<name>.json`), so two builds never share one and
`clean` never makes one mean other content. A per-target build lock (`target_lock`) serialises builds of one
target. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from buildsys.cache import file_sha256
from buildsys.errors import BuildsysError
from modelrepo import (
    CONFIG_FILE,
    LABELS_FILE,
    FormatError,
    Manifest,
    Tensor,
    list_versions,
    model_config,
    read_config,
    read_labels,
    read_manifest,
    write_atomic,  # noqa: F401 - one atomic writer for the tree, re-exported
    write_config,
    write_file_atomic,  # noqa: F401
    write_json_atomic,
    write_labels,
    write_manifest,
)
from modelrepo.atomic import fsync_dir

WEIGHTS_FILE = "model.weights.h5"  # every version's trained weights, which a dependent's base is rebuilt from
PUBLISHED_DIR_MODE = 0o755  # Triton or a server running as another user must read every published file
PUBLISHED_FILE_MODE = 0o644
KEPT_BY_CLEAN = ("meta", "locks")  # version high-water marks (servers know versions by number) and held locks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def seal(folder: Path) -> None:
    """Makes a staged folder readable by everyone (folders 0755, files 0644) and fsyncs every file and folder in
    it, deepest first, so that after the rename that publishes it no crash can leave a version folder with
    missing or partial contents, and no reader running as another user is locked out."""
    for parent, folders, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(parent, name)
            os.chmod(path, PUBLISHED_FILE_MODE)
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        for name in folders:
            os.chmod(os.path.join(parent, name), PUBLISHED_DIR_MODE)
        fsync_dir(Path(parent))
    os.chmod(folder, PUBLISHED_DIR_MODE)


def _signature(manifest: Manifest) -> tuple[object, ...]:
    """What a version's config.pbtxt and labels.txt depend on, apart from the serving settings."""
    return manifest.inputs, manifest.outputs, manifest.class_names


def _spanning(old: Manifest, new: Manifest) -> Manifest:
    """A manifest whose config is valid for both `old` and `new`: dims that differ become -1 (any size), and no
    label file, which can only fit one of them."""

    def merged(before: tuple[Tensor, ...], after: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if [(t.name, t.datatype, len(t.shape)) for t in before] != [(t.name, t.datatype, len(t.shape)) for t in after]:
            return after
        spanned = []
        for tensor, other in zip(after, before, strict=True):
            dims = tuple(mine if mine == theirs else -1 for mine, theirs in zip(tensor.shape, other.shape, strict=True))
            spanned.append(dataclasses.replace(tensor, shape=dims))
        return tuple(spanned)

    return new.replace(inputs=merged(old.inputs, new.inputs), outputs=merged(old.outputs, new.outputs), class_names=())


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

    def staging_root(self, name: str) -> Path:
        return self.root / "staging" / name

    def features_dir(self, owner: str) -> Path:
        """Cached base features computed through `owner` (a target's name, or `keras.<Application>`)."""
        return self.root / "features" / owner

    def meta_path(self, name: str) -> Path:
        """`build-out/meta/<name>.json`: the highest version number ever published for `name`."""
        return self.root / "meta" / f"{name}.json"

    def versions(self, name: str) -> list[int]:
        """Published versions, oldest first. Only decimal folder names count; staging folders never do."""
        return list_versions(self.model_dir(name))

    def highest_version(self, name: str) -> int:
        """The highest version number ever published for `name` (0 for none), `clean` or not."""
        recorded = 0
        path = self.meta_path(name)
        if path.is_file():
            try:
                recorded = int(json.loads(path.read_text(encoding="utf-8"))["highest_version"])
            except (ValueError, KeyError, TypeError) as error:
                raise BuildsysError(f"{path}: unreadable version high-water mark ({error}); fix or remove it") from None
        return max(recorded, *self.versions(name), 0)

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

    def manifest(self, name: str, version: int) -> Manifest:
        """A published version's manifest, checked.

        Raises:
            BuildsysError: for a manifest.json that does not follow the format (one line naming the file).
        """
        try:
            return read_manifest(self.model_dir(name) / str(version))
        except FormatError as error:
            raise BuildsysError(str(error)) from None

    def latest_manifest(self, name: str) -> Manifest | None:
        versions = self.versions(name)
        return self.manifest(name, versions[-1]) if versions else None

    def find_version(self, name: str, content_hash: str, newer_than: int = 0) -> int | None:
        """The newest published version built from exactly this content, if any (and above `newer_than`)."""
        for version in reversed(self.versions(name)):
            if version <= newer_than:
                break
            if self.manifest(name, version).content_hash == content_hash:
                return version
        return None

    def find_trained(self, name: str, training_digest: str, newer_than: int = 0) -> int | None:
        """The newest published version (above `newer_than`) trained from the inputs with `training_digest`, the
        digest of a key without its quality gate (`CacheKey.training_digest`): one whose manifest records it, or
        one built without a gate, whose key is that digest."""
        for version in reversed(self.versions(name)):
            if version <= newer_than:
                break
            manifest = self.manifest(name, version)
            if training_digest in (manifest.extra.get("training_digest"), manifest.content_hash):
                return version
        return None

    def weights_digest(self, name: str, version: int) -> str | None:
        """The sha256 of a version's trained Keras weights, as its manifest recorded it (or hashed now, for
        versions built before it was recorded); None when the version has no weights file."""
        recorded = self.manifest(name, version).extra.get("weights_sha256")
        if recorded:
            return recorded
        path = self.model_dir(name) / str(version) / WEIGHTS_FILE
        return file_sha256(path) if path.is_file() else None

    @contextlib.contextmanager
    def _lock(self, name: str, kind: str = "publish", waiting: Callable[[], None] | None = None) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.{kind}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def target_lock(self, name: str, waiting: Callable[[], None] | None = None) -> contextlib.AbstractContextManager:
        """Held by a build of `name` from its plan to its publish, so that a second build of the same target waits
        and then finds the first one's version, instead of sharing its work folder and publishing a duplicate.
        Builds of different targets hold different locks. `waiting` is called once if the lock is taken."""
        return self._lock(name, "build", waiting)

    def staging_dir(self, name: str) -> Path:
        """A fresh folder to assemble a version in, outside the model repository (on the same file system, so
        publishing is one rename); leftovers of dead builds are removed first."""
        folder = self.staging_root(name)
        folder.mkdir(parents=True, exist_ok=True)
        for child in folder.iterdir():
            pid = child.name.split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(child, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=folder))

    def publish(self, name: str, staging: Path, manifest: Manifest, max_batch_size: int) -> int:
        """Moves a complete staging folder into place as the next version and returns its number.

        The version gets its own config.pbtxt and labels.txt, the manifest is written last, and the folder is
        sealed (world-readable, fsynced) and renamed: readers either see no new version or a complete one. The
        model-level config.pbtxt and labels.txt (what Triton reads) are ordered around the rename so that a
        reader that lists the versions, reads the config, and lists again unchanged never gets a pair that
        disagrees: when the new config also fits the version published before (same tensors and class names:
        only serving settings changed) it is written before the rename; otherwise a config valid for both
        (differing dims as -1, no label file) is written before the rename, and labels.txt and the new config
        after it. The high-water mark is raised before the rename, so a kill can waste a number, never reuse one.
        """
        folder = self.model_dir(name)
        with self._lock(name):
            version = self.highest_version(name) + 1
            previous = self.latest_manifest(name)
            manifest = manifest.replace(version=version)
            config = model_config(manifest, max_batch_size)
            write_labels(staging, manifest.class_names)
            write_config(staging, config)
            write_manifest(staging, manifest)
            seal(staging)
            write_json_atomic(self.meta_path(name), {"highest_version": version})
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, PUBLISHED_DIR_MODE)
            compatible = previous is None or _signature(previous) == _signature(manifest)
            if compatible:
                write_labels(folder, manifest.class_names)
                write_config(folder, config)
            else:
                write_config(folder, model_config(_spanning(previous, manifest), max_batch_size))
            os.rename(staging, folder / str(version))
            fsync_dir(folder)
            if not compatible:
                write_labels(folder, manifest.class_names)
                write_config(folder, config)
        return version

    def refresh_model_files(self, name: str, max_batch_size: int) -> list[str]:
        """Rewrites the latest version's config.pbtxt and labels.txt, and the model-level ones, where they differ
        from what that version and `max_batch_size` call for: what an up-to-date build does, so that a build killed
        between its rename and the model-level writes, or a changed serving setting, is repaired without a
        retrain. Reads only, and takes no lock, when nothing differs. Returns the paths rewritten (relative to the
        model folder)."""
        folder = self.model_dir(name)
        if not self._stale_model_files(name, max_batch_size):
            return []
        rewritten: list[str] = []
        with self._lock(name):
            for path in self._stale_model_files(name, max_batch_size):  # the version's own copies first
                manifest = self.latest_manifest(name)
                if path.name == LABELS_FILE:
                    write_labels(path.parent, manifest.class_names)
                else:
                    write_config(path.parent, model_config(manifest, max_batch_size))
                rewritten.append(str(path.relative_to(folder)))
        return rewritten

    def _stale_model_files(self, name: str, max_batch_size: int) -> list[Path]:
        versions = self.versions(name)
        if not versions:
            return []
        manifest = self.manifest(name, versions[-1])
        config = model_config(manifest, max_batch_size)
        stale = []
        for place in (self.model_dir(name) / str(versions[-1]), self.model_dir(name)):
            try:
                labels_ok = read_labels(place / LABELS_FILE) == manifest.class_names
            except FormatError:
                labels_ok = False
            try:
                config_ok = read_config(place / CONFIG_FILE) == config
            except FormatError:
                config_ok = False
            stale += [place / LABELS_FILE] if not labels_ok else []
            stale += [place / CONFIG_FILE] if not config_ok else []
        return stale

    def remove_version(self, name: str, version: int) -> None:
        """Removes one published version that is not the newest (which config.pbtxt describes and servers load).

        Under the publish lock the folder is first renamed out of the model folder into this process's staging
        space, so a reader sees the version whole or not at all, never half deleted.

        Raises:
            BuildsysError: for the newest version, or one that is not published.
        """
        with self._lock(name):
            versions = self.versions(name)
            if version not in versions or version == versions[-1]:
                raise BuildsysError(f"{name} version {version} is not an older published version; not removed")
            doomed = self.staging_root(name) / f"{os.getpid()}-removed-{version}"
            doomed.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.model_dir(name) / str(version), doomed)
        shutil.rmtree(doomed)

    def clean(self, name: str | None = None) -> list[Path]:
        """Removes one target's outputs (models, work and staging folders, rejected candidates, the features
        computed through its model) or the whole tree; the version high-water marks and locks stay, so a later
        build never reuses a version number a server may have seen."""
        if name is None:
            children = sorted(self.root.iterdir()) if self.root.is_dir() else []
            paths = [child for child in children if child.name not in KEPT_BY_CLEAN]
        else:
            paths = [
                self.model_dir(name),
                *(self.root / kind / name for kind in ("work", "staging", "rejected")),
                self.features_dir(name),
            ]
        removed = [path for path in paths if path.exists()]
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return removed
