"""Data sources: where a declared dataset's images come from, and what fingerprints their content.

`fingerprint` must stay cheap and TensorFlow-free: the no-op build path calls it. `load` may import heavy
libraries; it returns plain NumPy arrays (`Dataset`), or for SQL sources a `StreamingDataset` whose training rows
are read chunk by chunk on every pass; `buildsys.actions.data` checks either and turns it into `tf.data`.
`reader` opens any declared source batch by batch (`records.Reader`) for import, inspection and prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from buildsys.dsl.datasets import DataSource

if TYPE_CHECKING:
    from buildsys.sources.records import Reader


@dataclass(frozen=True)
class Dataset:
    """Train and test images with integer labels, as loaded from a source."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str = ""  # where the arrays came from ("npz file data/digits.npz"), for the data check's messages


@dataclass(frozen=True)
class StreamingDataset:
    """A source too large to hold: each call of `train_chunks` starts a new pass over the training rows, yielding
    (uint8 images, int64 labels) chunks; the test split is small enough to hold (evaluation and parity use it)."""

    train_chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
    train_size: int
    image_shape: tuple[int, ...]
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str = ""


def fingerprint(source: DataSource, data_dir: Path | None, memo_dir: Path | None = None) -> str | None:
    """A digest of the source's content, or None when the content is not on this machine yet.

    None means the build cannot be up to date (its data has to be fetched first); the key is computed again
    once the data is loaded. Files are digested by content, so a copy of a workspace on another machine has the
    same fingerprints; `memo_dir` (`build-out/digests/`) remembers the digests of unchanged files
    (`buildsys.cache.DigestMemo`), so that only a changed file is read again.
    """
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.fingerprint(source)
    if source.kind == "sql":
        from buildsys.sources import sql

        return sql.fingerprint(source)
    if source.kind in ("image_folder", "npz"):
        return _module(source).fingerprint(source, memo_dir)
    from buildsys.sources import keras_datasets

    return keras_datasets.fingerprint(source, data_dir, memo_dir)


def _module(source: DataSource) -> ModuleType:
    """The module that reads and fingerprints a file or database source."""
    from buildsys.sources import image_folder, npz, sql

    return {"image_folder": image_folder, "npz": npz, "sql": sql}[source.kind]


def reader(source: DataSource, data_dir: Path | None) -> Reader:
    """The declared source opened batch by batch; built-in datasets are loaded and wrapped."""
    if source.kind in ("image_folder", "npz", "sql"):
        return _module(source).source_reader(source)
    from buildsys.sources.records import ArrayReader

    dataset = load(source, data_dir)
    arrays = {"train": (dataset.x_train, dataset.y_train), "test": (dataset.x_test, dataset.y_test)}
    return ArrayReader(f"{source.kind} dataset", arrays, source.class_names)


def load(source: DataSource, data_dir: Path | None) -> Dataset | StreamingDataset:
    """Loads the source; raises `DataError` with one line saying what is missing or wrong.

    SQL sources stream their training rows (`StreamingDataset`); files are read into memory.
    """
    if source.kind == "sql":
        from buildsys.sources import sql

        return sql.load(source)
    if source.kind in ("image_folder", "npz"):
        from buildsys.sources.records import read_all

        opened = _module(source).source_reader(source)
        x_train, y_train = read_all(opened, "train")
        x_test, y_test = read_all(opened, "test")
        return Dataset(x_train, y_train, x_test, y_test, source.class_names, opened.description)
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.load(source)
    from buildsys.sources import keras_datasets

    return keras_datasets.load(source, data_dir)
