"""The cache key changes when anything that can change the output changes, and only then."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from buildsys.cache import cache_key, canonical_json, framework_versions
from buildsys.workspace import Workspace
from tests.conftest import write_definition

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="tiny",
        data=datasets.sklearn_digits(),
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(hp.Int("units", 8, 64, default={units}), activation="relu"),
                Dense(10, activation="softmax")],
        train=train(epochs={epochs}),
    )
"""


def spec_of(workspace: Path, units: int = 16, epochs: int = 3, comment: str = ""):
    write_definition(workspace, "tiny.py", DEFINITION.format(units=units, epochs=epochs) + comment)
    return Workspace(workspace).targets["//model_defs:tiny"].spec


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


def test_key_is_stable_across_loads_and_formatting(workspace: Path) -> None:
    first = cache_key(spec_of(workspace), "data", 1, {"units": 16}).digest
    second = cache_key(
        spec_of(workspace, comment="\n    # a comment does not change the model\n"), "data", 1, {"units": 16}
    ).digest
    assert first == second and len(first) == 64


def test_key_changes_with_everything_that_matters(workspace: Path) -> None:
    base = spec_of(workspace)
    reference = cache_key(base, "data", 1, {"units": 16}).digest
    changed = {
        "spec (epochs)": cache_key(spec_of(workspace, epochs=4), "data", 1, {"units": 16}).digest,
        "spec (hp default)": cache_key(spec_of(workspace, units=32), "data", 1, {"units": 16}).digest,
        "data fingerprint": cache_key(base, "other data", 1, {"units": 16}).digest,
        "seed": cache_key(base, "data", 2, {"units": 16}).digest,
        "hparams": cache_key(base, "data", 1, {"units": 24}).digest,
    }
    for what, digest in changed.items():
        assert digest != reference, what


def test_key_changes_with_framework_versions(workspace: Path, monkeypatch) -> None:
    spec = spec_of(workspace)
    reference = cache_key(spec, "data", 1, {}).digest
    versions = dict(framework_versions())
    for package in ("tensorflow", "keras", "tf2onnx", "buildsys"):
        monkeypatch.setattr("buildsys.cache.framework_versions", lambda p=package: {**versions, p: "0.0.0-other"})
        assert cache_key(spec, "data", 1, {}).digest != reference, package


def test_source_locations_are_not_part_of_the_key(workspace: Path) -> None:
    spec = spec_of(workspace)
    moved = dataclasses.replace(spec, location=None)
    assert cache_key(spec, "d", 1, {}).digest == cache_key(moved, "d", 1, {}).digest
