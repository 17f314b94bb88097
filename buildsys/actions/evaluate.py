"""The evaluate action: loss and metrics on the test split, which training never saw."""

from __future__ import annotations

from typing import Any

from buildsys.actions.data import Splits, make_dataset
from buildsys.dsl.specs import ModelSpec


def evaluate(model: Any, spec: ModelSpec, splits: Splits) -> dict[str, float]:
    test = make_dataset(splits.x_test, splits.y_test, spec.train.batch_size)
    results = model.evaluate(test, verbose=0, return_dict=True)
    return {name: float(value) for name, value in sorted(results.items())}
