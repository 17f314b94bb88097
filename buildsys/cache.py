"""Cache keys: the digest of everything that can change a build's output.

A target's key is sha256 over the canonical JSON of its spec, the data fingerprint, the seed, the hyperparameter
values and the versions of TensorFlow, Keras, tf2onnx and buildsys. Versions are read from package metadata, not
by importing the packages, so computing a key — and so a no-op build — never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

import buildsys
from buildsys.dsl.specs import ModelSpec

KEYED_PACKAGES = ("tensorflow", "keras", "tf2onnx")


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
    """Installed versions of the packages whose behaviour is part of every output."""
    versions = {"buildsys": buildsys.__version__}
    for package in KEYED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


@dataclass(frozen=True)
class CacheKey:
    """The inputs of a build and their digest."""

    digest: str
    data_fingerprint: str
    seed: int
    hparams: dict[str, Any]
    versions: dict[str, str]


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
    """
    versions = framework_versions()
    material = {
        "spec": spec.to_json(),
        "data_fingerprint": data_fingerprint,
        "seed": seed,
        "hparams": hparams,
        "versions": versions,
    }
    if training:
        material["training"] = training
    if dependencies:
        material["dependencies"] = dependencies
    return CacheKey(sha256_text(canonical_json(material)), data_fingerprint, seed, dict(hparams), versions)
