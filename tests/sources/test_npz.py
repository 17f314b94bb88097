"""npz sources: the four arrays read with allow_pickle=False, class names from the file, and header probing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from buildsys import sources
from buildsys.errors import DataError, DefinitionError
from buildsys.workspace import Workspace
from tests.conftest import write_definition
from tests.data_helpers import digits

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="arrays",
        data=datasets.npz("digits.npz"),
        inputs=image_input("image", shape=(8, 8, 1)),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
"""


def test_arrays_and_class_names_from_the_file(workspace: Path) -> None:
    images, labels = digits(100)
    names = np.array([f"n{d}" for d in range(10)])
    np.savez(workspace / "digits.npz", x_train=images[:80], y_train=labels[:80], x_test=images[80:],
             y_test=labels[80:], class_names=names)  # fmt: skip
    write_definition(workspace, "arrays.py", DEFINITION)
    source = Workspace(workspace).targets["//model_defs:arrays"].spec.data
    assert source.class_names == tuple(names) and source.image_shape == (8, 8)
    dataset = sources.load(source, None)
    np.testing.assert_array_equal(dataset.x_test, images[80:])
    assert sources.fingerprint(source, None) == sources.fingerprint(source, None)


def test_object_arrays_are_refused(workspace: Path) -> None:
    images, labels = digits(10)
    np.savez(workspace / "digits.npz", x_train=images, y_train=labels, x_test=images,
             y_test=np.array([None] * 10, dtype=object))  # fmt: skip
    write_definition(workspace, "arrays.py", DEFINITION)
    with pytest.raises(DefinitionError, match="object arrays are refused"):
        Workspace(workspace)


def test_missing_arrays_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 8, 8), np.uint8))
    from buildsys.sources.npz import describe

    with pytest.raises(DataError, match="lacks y_train, x_test, y_test"):
        describe(tmp_path / "partial.npz")
