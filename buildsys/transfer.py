"""Planning a transfer target without TensorFlow: what its cache key holds beyond the spec, and where its
features are cached.

A transfer target's key covers its dependency's content hash (so rebuilding a base from changed content makes its
dependents stale) and the content of a local weights file; ImageNet weights are fixed by the Keras version, which
every key holds. Features are cached under `build-out/features/<owner>/`, named by the digest of the base's
*weights* and the data's, so that heads on the same base and data featurise once, and a base retrained from the
same content (after `clean`, or with --force) — whose weights differ — is never read through stale features. The
owner is the base target's name (so `clean BASE` removes them) or `keras.<Application>` for a pretrained network.
Everything here runs on the no-op build path: no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from buildsys.cache import canonical_json, framework_versions, sha256_text
from buildsys.dsl.bases import TargetBase
from buildsys.errors import BuildsysError
from buildsys.graph import Dependency
from buildsys.store import OutputTree, file_sha256
from buildsys.workspace import Target


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


def split_digest(data_fingerprint: str, seed: int, validation_split: float) -> str:
    """The digest of the three splits' images: the data, and the seed and fraction that carve validation."""
    return sha256_text(canonical_json({"data": data_fingerprint, "seed": seed, "validation_split": validation_split}))


def features_path(
    tree: OutputTree, target: Target, dependencies: Sequence[Dependency], data_fingerprint: str, seed: int
) -> Path | None:
    """`build-out/features/<owner>/<base digest>-<data digest>.npz` (Spark writes the same name with `.parquet`);
    None while a `target(...)` base has no published version to read the weights of.

    The base digest covers the base's declaration, the image input, the framework versions and the digest of the
    weights the features are computed with: a target base's published `model.weights.h5`, or a pretrained
    network's weights file (ImageNet weights are fixed by the Keras version).
    """
    spec = target.spec
    base = spec.transfer.base
    declared = base.to_json()
    if isinstance(base, TargetBase):
        (dependency,) = dependencies
        if dependency.weights_digest is None:
            return None
        declared["label"] = dependency.target.label  # "digits_cnn" and "//model_defs:digits_cnn" are one base
        owner, weights = dependency.target.name, dependency.weights_digest
    else:
        owner, weights = f"keras.{base.application}", dependency_digests(target, dependencies).get("weights")
    material = {"base": declared, "inputs": spec.inputs.to_json(), "weights": weights, "versions": framework_versions()}
    data = split_digest(data_fingerprint, seed, spec.train.validation_split)
    return tree.features_dir(owner) / f"{sha256_text(canonical_json(material))[:24]}-{data[:24]}.npz"
