"""Reading a source batch by batch: the one interface that training streams, import, inspect and predict share,
and the loaded forms of a source that the data action checks (`Dataset` in memory, `StreamingDataset` in chunks).

A `Reader` exposes a source's splits as batches of (ids, uint8 images, labels), in a fixed order, so every
consumer holds at most one batch at a time; in-memory sources are wrapped by `ArrayReader`. Never TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Consecutive images of one split: their ids, uint8 pixels, and integer labels (None when unlabelled)."""

    ids: list[str]
    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


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


class Reader(Protocol):
    """A source opened for reading. `class_names` is None for unlabelled images."""

    description: str
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, ...]

    def splits(self) -> tuple[str, ...]:
        """The split names, in order ("train", "test", or "all" for a plain list of images)."""
        ...

    def count(self, split: str) -> int:
        """How many images `split` holds (cheap: no image is decoded)."""
        ...

    def batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The split's images in a fixed order, `batch_size` at a time (the last batch may be smaller)."""
        ...


class ArrayReader:
    """A reader over arrays already in memory (scikit-learn digits, Keras datasets, npz files)."""

    def __init__(
        self,
        description: str,
        arrays: dict[str, tuple[np.ndarray, np.ndarray | None]],
        class_names: tuple[str, ...] | None,
    ) -> None:
        self.description = description
        self.arrays = arrays
        self.class_names = class_names
        first = next(iter(arrays.values()))[0]
        self.image_shape = tuple(first.shape[1:])

    def splits(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def count(self, split: str) -> int:
        return len(self.arrays[split][0])

    def batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        images, labels = self.arrays[split]
        for start in range(0, len(images), batch_size):
            end = min(start + batch_size, len(images))
            ids = [f"{split}/{index}" for index in range(start, end)]
            yield Batch(ids, images[start:end], None if labels is None else labels[start:end])


def read_all(reader: Reader, split: str, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a labelled split, concatenated in memory."""
    images, labels = [], []
    for batch in reader.batches(split, batch_size):
        images.append(batch.images)
        labels.append(batch.labels)
    if not images:
        return np.zeros((0, *reader.image_shape), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
