"""Bad data fails before training with one line naming the split and what was wrong."""

from __future__ import annotations

import re

import numpy as np
import pytest

from buildsys.actions.data import check_and_split
from buildsys.dsl import Dense, Flatten, datasets, image_input, model, train
from buildsys.errors import DataError
from buildsys.sources import Dataset

SPEC = model(
    name="tiny",
    data=datasets.sklearn_digits(),
    inputs=image_input(shape=(8, 8, 1)),
    layers=[Flatten(), Dense(10, activation="softmax")],
    train=train(validation_split=0.25, seed=3),
)


def dataset(x_train=None, y_train=None, x_test=None, y_test=None) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        rng.integers(0, 256, (40, 8, 8)).astype(np.uint8) if x_train is None else x_train,
        rng.integers(0, 10, 40) if y_train is None else y_train,
        rng.integers(0, 256, (10, 8, 8)).astype(np.uint8) if x_test is None else x_test,
        rng.integers(0, 10, 10) if y_test is None else y_test,
        SPEC.class_names,
    )


def test_good_data_gets_a_channel_axis_and_a_seeded_validation_split() -> None:
    first = check_and_split(dataset(), SPEC, seed=3)
    assert first.x_train.shape == (30, 8, 8, 1) and first.x_val.shape == (10, 8, 8, 1)
    assert first.x_test.shape == (10, 8, 8, 1)
    again = check_and_split(dataset(), SPEC, seed=3)
    np.testing.assert_array_equal(first.x_val, again.x_val)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            {"x_train": np.zeros((40, 7, 8), np.uint8)},
            r"x_train images are shaped \(7, 8\) but the input declares \(8, 8, 1\)",
        ),
        ({"x_test": np.full((10, 8, 8), np.nan)}, r"x_test\[0\] contains NaN"),
        ({"y_train": np.full(40, 10)}, r"y_train\[0\] is 10, outside 0..9 \(10 class names\)"),
        ({"y_test": np.full(10, -1)}, r"y_test\[0\] is -1, outside 0..9"),
        ({"y_train": np.zeros(39, np.int64)}, r"x_train has 40 images but y_train is shaped \(39,\)"),
        ({"x_train": np.full((40, 8, 8), 300.0)}, r"x_train is float64 with values 300.0..300.0, but image_input"),
    ],
)
def test_bad_data_is_refused(broken: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_and_split(dataset(**broken), SPEC, seed=0)


NPZ_DEFINITION = """
    from buildsys.dsl import *

    model(
        name="arrays",
        data=datasets.npz("data/digits.npz", class_names=[str(d) for d in range(10)]),
        inputs=image_input("image", shape=(8, 8), dtype="uint8"),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
"""


def _npz_target(workspace, **arrays):
    from buildsys.workspace import Workspace
    from tests.conftest import write_definition

    rng = np.random.default_rng(0)
    defaults = {
        "x_train": rng.integers(0, 256, (40, 8, 8)).astype(np.uint8),
        "y_train": rng.integers(0, 10, 40),
        "x_test": rng.integers(0, 256, (10, 8, 8)).astype(np.uint8),
        "y_test": rng.integers(0, 10, 10),
    }
    (workspace / "data").mkdir()
    path = workspace / "data" / "digits.npz"
    np.savez(path, **{**defaults, **arrays})
    write_definition(workspace, "arrays.py", NPZ_DEFINITION)
    return Workspace(workspace).targets["//model_defs:arrays"].spec, path


@pytest.mark.parametrize(
    ("pixels", "shown"),
    [
        (np.rint(np.random.default_rng(1).uniform(0, 16, (40, 8, 8))), r"float64 with values 0.0..16.0"),
        (np.random.default_rng(1).uniform(0, 1, (40, 8, 8)).astype(np.float32), r"float32 with values \S+\.\.0\.9\d*"),
    ],
)
def test_float_pixels_under_a_uint8_declaration_are_refused_in_one_line(workspace, pixels, shown: str) -> None:
    from buildsys import sources

    spec, path = _npz_target(workspace, x_train=pixels)
    with pytest.raises(DataError) as raised:
        check_and_split(sources.load(spec.data, None), spec, seed=0)
    message = str(raised.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"npz file {re.escape(str(path))}: x_train is {shown}, but image_input declares dtype='uint8' "
        r"\(integer pixels 0..255\); store the pixels as uint8 0..255",
        message,
    ), message


def test_integer_pixels_that_fit_are_accepted_and_those_that_do_not_are_refused(workspace) -> None:
    from buildsys import sources

    spec, path = _npz_target(workspace, x_test=np.ones((10, 8, 8), np.int16))
    assert check_and_split(sources.load(spec.data, None), spec, seed=0).x_test.dtype == np.uint8
    np.savez(path, x_train=np.full((40, 8, 8), 300), y_train=np.zeros(40, int), x_test=np.ones((10, 8, 8), np.uint8),
             y_test=np.zeros(10, int))  # fmt: skip
    with pytest.raises(DataError, match=rf"^npz file {re.escape(str(path))}: x_train is int64 with values 300..300, "):
        check_and_split(sources.load(spec.data, None), spec, seed=0)


def test_out_of_range_labels_are_refused_naming_the_file(workspace) -> None:
    from buildsys import sources

    spec, path = _npz_target(workspace, y_test=np.full(10, 12))
    with pytest.raises(DataError) as raised:
        check_and_split(sources.load(spec.data, None), spec, seed=0)
    assert str(raised.value) == (
        f"npz file {path}: y_test[0] is 12, outside 0..9 (10 class names); labels must be class indices"
    )
