"""Planning a transfer target without TensorFlow: what its cache key holds beyond the spec, and where its
features are cached.

A transfer target's key covers its dependency's content hash (so rebuilding a base makes its dependents stale)
and the content of a local weights file; ImageNet weights are fixed by the Keras version, which every key holds.
Features are cached under `build-out/features/`, named by the base's digest and the data's, so that heads on the
same base and data featurise once. Everything here runs on the no-op build path: no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from buildsys.cache import canonical_json, file_sha256, framework_versions, sha256_text
from buildsys.dsl.bases import TargetBase
from buildsys.errors import BuildsysError
from buildsys.graph import Dependency
from buildsys.workspace import Target

WEIGHTS_FILE = "model.weights.h5"  # every version's trained weights, which a dependent's base is rebuilt from
FEATURES_DIR = "features"


def dependency_digests(target: Target, dependencies: Sequence[Dependency]) -> dict[str, str]:
    """What a transfer target's base depends on, as it enters the cache key; {} for other targets.

    Raises:
        BuildsysError: when a `target(...)` base's dependency was not handed in (a caller that bypassed the
            target graph), rather than computing a key that ignores the base.
    """
    transfer = target.spec.transfer
    if transfer is None:
        return {}
    base = transfer.base
    if isinstance(base, TargetBase):
        if len(dependencies) != 1:
            raise BuildsysError(
                f"{target.label} is built on {base.label}, which was not planned first; "
                f"run: python -m buildsys build {target.label}"
            )
        return {dependencies[0].target.label: dependencies[0].content_hash}
    path = base.weights_path()
    if path is None:
        return {}
    return {"weights": file_sha256(path) if path.is_file() else "missing"}


def base_digest(target: Target, dependencies: Sequence[Dependency]) -> str:
    """The digest of everything that decides the base's features: its declaration, the image input, what it
    depends on, and the framework versions."""
    base = target.spec.transfer.base
    declared = base.to_json()
    if isinstance(base, TargetBase):  # "digits_cnn" and "//model_defs:digits_cnn" are the same base
        declared["label"] = dependencies[0].target.label
    material = {
        "base": declared,
        "inputs": target.spec.inputs.to_json(),
        "dependencies": dependency_digests(target, dependencies),
        "versions": framework_versions(),
    }
    return sha256_text(canonical_json(material))


def split_digest(data_fingerprint: str, seed: int, validation_split: float) -> str:
    """The digest of the three splits' images: the data, and the seed and fraction that carve validation."""
    return sha256_text(canonical_json({"data": data_fingerprint, "seed": seed, "validation_split": validation_split}))


def features_path(output_root: Path, base: str, data: str) -> Path:
    """`build-out/features/<base digest>-<data digest>.npz`; Spark writes the same name with `.parquet`."""
    return output_root / FEATURES_DIR / f"{base[:24]}-{data[:24]}.npz"
