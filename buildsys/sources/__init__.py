"""Data sources: where a declared dataset's images come from, and what fingerprints their content.

`fingerprint` must stay cheap and TensorFlow-free: the no-op build path calls it. `load` may import heavy
libraries; it returns plain NumPy arrays, which `buildsys.actions.data` checks and turns into `tf.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from buildsys.dsl.datasets import DataSource


@dataclass(frozen=True)
class Dataset:
    """Train and test images with integer labels, as loaded from a source."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def fingerprint(source: DataSource, data_dir: Path | None) -> str | None:
    """A digest of the source's content, or None when the content is not on this machine yet.

    None means the build cannot be up to date (its data has to be fetched first); the key is computed again
    once the data is loaded.
    """
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.fingerprint(source)
    from buildsys.sources import keras_datasets

    return keras_datasets.fingerprint(source, data_dir)


def load(source: DataSource, data_dir: Path | None) -> Dataset:
    """Loads the source's arrays; raises `DataError` with one line saying what is missing or wrong."""
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.load(source)
    from buildsys.sources import keras_datasets

    return keras_datasets.load(source, data_dir)
