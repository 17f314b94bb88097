"""Bad data fails before training with one line naming the split and what was wrong."""

from __future__ import annotations

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
            r"train images are shaped \(7, 8\) but the input declares \(8, 8, 1\)",
        ),
        ({"x_test": np.full((10, 8, 8), np.nan)}, r"test image 0 contains NaN"),
        ({"y_train": np.full(40, 10)}, r"train label 0 is 10, outside 0..9 \(10 class names\)"),
        ({"y_test": np.full(10, -1)}, r"test label 0 is -1, outside 0..9"),
        ({"y_train": np.zeros(39, np.int64)}, r"train has 40 images but labels shaped \(39,\)"),
        ({"x_train": np.full((40, 8, 8), 300.0)}, r"train pixels range 300.0..300.0, outside 0..255"),
    ],
)
def test_bad_data_is_refused(broken: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_and_split(dataset(**broken), SPEC, seed=0)
