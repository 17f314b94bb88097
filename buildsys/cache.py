"""Cache keys: the digest of everything that can change a build's output, and content digests of files.

A target's key is sha256 over the canonical JSON of its spec (less its serving settings), the data fingerprint,
the seed, the hyperparameter values, the versions of the libraries that compute the model, and a digest of the
buildsys code that compiles, trains and exports it. A key means the same on every machine: nothing in it is an
absolute path, a user or host name or a modification time (data fingerprints come from content, `file_sha256`,
remembered by `DigestMemo` so that a no-op build does not reread big files). Versions are read from package
metadata and the code digest from the source files, never by importing anything, so computing a key — and so a
no-op build — never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import buildsys
from buildsys.dsl.specs import ModelSpec

KEYED_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "numpy", "pillow")
PACKAGE_DIR = Path(buildsys.__file__).resolve().parent
# The code whose output a version is: what reads and decodes the data (sources/), what the definition means (dsl/),
# and what compiles, trains, evaluates, exports and verifies (actions/, build.py, transfer.py). The report, its
# plots and tuning write no model; the command line, the output tree and the server do not change one either.
KEYED_CODE = ("actions", "build.py", "dsl", "sources", "transfer.py")
UNKEYED_CODE = ("actions/plots.py", "actions/report.py", "actions/tune.py")
# Settings of the served model's config.pbtxt rather than of the model: a change republishes the config only.
SERVING_SETTINGS = (("export", "max_batch_size"),)
DIGESTS_DIR = "digests"  # under the output tree: the `DigestMemo` files, private to this machine


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, and no NaN: equal data always gives equal text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode
    )


def _encode(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cannot hash a non-finite number: {value}")
    raise TypeError(f"cannot hash a value of type {type(value).__name__}: {value!r}")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@cache
def framework_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour is part of every output, and the digest of buildsys'
    own code that computes it (`code_digest`): a version string alone would let an edit reuse stale models."""
    versions = {"buildsys": buildsys.__version__, "buildsys_code": code_digest()}
    for package in KEYED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


@cache
def code_digest(root: Path = PACKAGE_DIR) -> str:
    """sha256 over the `KEYED_CODE` source files under `root` (names relative to it, and their bytes).

    Every byte counts, comments too — as in Bazel, where any change to a tool reruns its actions; reading some
    fifty small files takes about a millisecond and happens once per process.
    """
    excluded = {root / name for name in UNKEYED_CODE}
    files = []
    for name in KEYED_CODE:
        member = root / name
        files += sorted(member.rglob("*.py")) if member.is_dir() else [member]
    digest = hashlib.sha256()
    for path in files:
        if path in excluded:
            continue
        content = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def accelerator() -> str:
    """The device kind TensorFlow will train on, "gpu" (NVIDIA) or "cpu", guessed without importing TensorFlow.

    A GPU counts when a device node exists, `CUDA_VISIBLE_DEVICES` does not hide it, and TensorFlow's CUDA
    libraries are installed (`tensorflow[and-cuda]` brings `nvidia-cudnn-cu12`). It enters a key only where the
    device changes the arithmetic (`cache_key`).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1") or not Path("/dev/nvidia0").exists():
        return "cpu"
    try:
        metadata.version("nvidia-cudnn-cu12")
    except metadata.PackageNotFoundError:
        return "cpu"
    return "gpu"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class DigestMemo:
    """Content digests of the files under one folder, remembered by their size, mtime, ctime and inode.

    A fingerprint must come from content (a copied file keeps its content, not its mtime), but rereading a large
    dataset on every no-op build would be slow; like git's index, the memo rereads a file only when its status
    changed. The status never enters a key: it only decides whether the remembered digest may be reused. The memo
    is one JSON file per folder under `memo_dir` (`build-out/digests/`); without one every file is read.
    """

    def __init__(self, folder: Path, memo_dir: Path | None) -> None:
        self.folder = folder.resolve()
        self.path = memo_dir / f"{sha256_text(str(self.folder))[:24]}.json" if memo_dir else None
        self.known: dict[str, list[Any]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.known = loaded.get("files", {}) if loaded.get("folder") == str(self.folder) else {}
            except (OSError, ValueError, AttributeError):
                self.known = {}  # a damaged memo only costs a rehash

    def digest(self, path: Path) -> str:
        """The content digest of `path`, a file under the folder."""
        name = path.resolve().relative_to(self.folder).as_posix()
        status = path.stat()
        stamp = [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]
        remembered = self.known.get(name)
        if remembered is not None and remembered[:4] == stamp:
            return remembered[4]
        digest = file_sha256(path)
        self.known[name] = [*stamp, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Writes the memo when a digest was added (atomically: a concurrent build reads the old or the new one)."""
        if self.path is None or not self.changed:
            return
        from modelrepo import write_json_atomic

        write_json_atomic(self.path, {"folder": str(self.folder), "files": self.known})
        self.changed = False


@dataclass(frozen=True)
class CacheKey:
    """The inputs of a build and their digest.

    `training_digest` is the digest of the same inputs without the quality gate: what the trained model depends
    on. A rejected candidate is kept under it, so that a build with another gate judges that candidate again
    instead of training the same model again.
    """

    digest: str
    data_fingerprint: str
    seed: int
    hparams: dict[str, Any]
    versions: dict[str, str]
    training_digest: str


def cache_key(
    spec: ModelSpec,
    data_fingerprint: str,
    seed: int,
    hparams: dict[str, Any],
    training: dict[str, Any] | None = None,
    dependencies: dict[str, str] | None = None,
) -> CacheKey:
    """Computes the key of building `spec` on data with `data_fingerprint`.

    `training` holds the command-line training settings that change the weights (`BuildOptions.training_key`);
    it enters the key only when not empty, so builds without such settings keep their keys. `dependencies` (the
    content hashes a transfer target's base is built from, `buildsys.transfer.dependency_digests`) likewise.
    The device kind (`accelerator`) is keyed only for `mixed_precision` (float16 on a GPU, bfloat16 on a CPU) and
    `deterministic` (bit-reproducible only on one kind of device); otherwise a model trained on a GPU is as good
    a result of the same inputs as one trained on a CPU, and either machine may reuse it.
    """
    versions = framework_versions()
    keyed_spec = spec.to_json()
    for section, setting in SERVING_SETTINGS:
        keyed_spec.get(section, {}).pop(setting, None)
    if training and (training.get("mixed_precision") or training.get("deterministic")):
        training = {**training, "device": accelerator()}
    material = {
        "spec": keyed_spec,
        "data_fingerprint": data_fingerprint,
        "seed": seed,
        "hparams": hparams,
        "versions": versions,
    }
    if training:
        material["training"] = training
    if dependencies:
        material["dependencies"] = dependencies
    ungated = {**material, "spec": {section: value for section, value in keyed_spec.items() if section != "evaluate"}}
    return CacheKey(
        sha256_text(canonical_json(material)),
        data_fingerprint,
        seed,
        dict(hparams),
        versions,
        training_digest=sha256_text(canonical_json(ungated)),
    )
