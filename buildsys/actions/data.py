"""The data action: check loaded arrays against the definition, carve the validation split, make `tf.data`.

Checks happen on the NumPy arrays before anything trains, so bad data (wrong shapes, NaNs, labels out of range)
fails with one line naming the split and what was wrong. A `StreamingDataset` (SQL) becomes `StreamSplits`: its
training rows flow chunk by chunk through `tf.data.Dataset.from_generator`, checked chunk by chunk, with the
validation rows chosen by a seeded hash of each row's position, so memory stays bounded by the shuffle buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from buildsys.dsl.specs import ModelSpec
from buildsys.errors import DataError
from buildsys.sources import Dataset, StreamingDataset


@dataclass(frozen=True)
class Splits:
    """Checked arrays, shaped like the model's input, with the validation split carved from training."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check_split(
    split: str, images: np.ndarray, labels: np.ndarray, spec: ModelSpec, origin: str = "", rows: str = ""
) -> np.ndarray:
    """Returns the images shaped exactly as the input declares (a channel axis is added for (H, W, 1)).

    Errors name the arrays as an npz file does (`x_train`, `y_test`), prefixed by the source (`origin`: the file,
    folder or database) and, for a streamed chunk, its `rows`, so one line says where the bad value is.
    """
    where = ": ".join(part for part in (origin, rows) if part)
    prefix = f"{where}: " if where else ""
    images_name, labels_name = f"x_{split}", f"y_{split}"
    declared = tuple(spec.inputs.shape)
    if images.ndim >= 1 and tuple(images.shape[1:]) + (1,) == declared:
        images = images[..., np.newaxis]
    if tuple(images.shape[1:]) != declared:
        raise DataError(
            f"{prefix}{images_name} images are shaped {tuple(images.shape[1:])} but the input declares {declared}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{prefix}{images_name} has {len(images)} images but {labels_name} is shaped {labels.shape}; "
            f"expected ({len(images)},)"
        )
    if len(images) == 0:
        raise DataError(f"{prefix}the {split} split is empty")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        bad = int(np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))[0])
        raise DataError(f"{prefix}{images_name}[{bad}] contains NaN or infinite pixels")
    _check_pixel_type(images, spec.inputs.dtype, f"{prefix}{images_name}")
    classes = len(spec.class_names)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{prefix}{labels_name} must hold integer class indices; received dtype {labels.dtype}")
    out_of_range = np.flatnonzero((labels < 0) | (labels >= classes))
    if out_of_range.size:
        index = int(out_of_range[0])
        raise DataError(
            f"{prefix}{labels_name}[{index}] is {labels[index]}, outside 0..{classes - 1} ({classes} class names); "
            "labels must be class indices"
        )
    return images.astype(spec.inputs.dtype, copy=False)


def _check_pixel_type(images: np.ndarray, declared: str, name: str) -> None:
    """Refuses pixels whose dtype is not the declared one, unless casting them keeps every value.

    Under `dtype="uint8"` only integer arrays whose values lie in 0..255 pass: float pixels are refused even when
    they would cast exactly, because their scale (0..1, 0..16, 0..255) cannot be told from the values, and a model
    trained on 0..16 serves 0..255 PNGs wrongly. Under `float32` any integer or float array passes (the declared
    `scale` says what its values mean).
    """
    kind = images.dtype.kind
    if declared == "uint8":
        fits = kind in "iu" and images.min() >= 0 and images.max() <= 255
        need = "integer pixels 0..255"
        fix = "store the pixels as uint8 0..255"
    else:
        fits = kind in "iuf"
        need = "integer or float pixels"
        fix = "store the pixels as numbers"
    if not fits:
        shown = f" with values {images.min()}..{images.max()}" if kind in "iufb" else ""
        raise DataError(f"{name} is {images.dtype}{shown}, but image_input declares dtype={declared!r} ({need}); {fix}")


def check_and_split(dataset: Dataset | StreamingDataset, spec: ModelSpec, seed: int) -> Splits | StreamSplits:
    """Checks both splits and carves a seeded validation set from training (never from test)."""
    if isinstance(dataset, StreamingDataset):
        return _stream_splits(dataset, spec, seed)
    origin = dataset.origin
    x_train = _check_split("train", np.asarray(dataset.x_train), np.asarray(dataset.y_train), spec, origin)
    x_test = _check_split("test", np.asarray(dataset.x_test), np.asarray(dataset.y_test), spec, origin)
    y_train, y_test = np.asarray(dataset.y_train, np.int64), np.asarray(dataset.y_test, np.int64)
    fit, val = carve_validation(len(x_train), spec.train.validation_split, seed)
    return Splits(x_train[fit], y_train[fit], x_train[val], y_train[val], x_test, y_test)


def carve_validation(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training rows to fit on and to hold out for validation, in the order the splits take them.

    One seeded permutation, shared by `check_and_split` and by `featurize --engine spark`, which assigns an image
    folder's files to splits from their names alone and must put each file where the loaded arrays would.
    """
    order = np.random.default_rng(seed).permutation(count)
    held = int(round(count * fraction))
    return order[held:], order[:held]


def make_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0
) -> Any:
    """A `tf.data` pipeline: cache the decoded arrays, reshuffle each epoch with a seed, batch, prefetch."""
    from buildsys.actions import tensorflow

    tf = tensorflow()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle_buffer:
        dataset = dataset.shuffle(min(shuffle_buffer, len(images)), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass
class StreamSplits:
    """Training and validation rows streamed from a `StreamingDataset`; the test split checked and in memory.

    `failure` keeps a DataError raised inside a `tf.data` generator, which TensorFlow would otherwise re-raise
    as an opaque error with a Python traceback in its message (see `stream_failures`).
    """

    dataset: StreamingDataset
    spec: ModelSpec
    seed: int
    train_size: int
    val_size: int
    x_test: np.ndarray
    y_test: np.ndarray
    failure: DataError | None = None

    def rows(self, validation: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over the training rows (or the validation rows), checked chunk by chunk."""
        start = 0
        try:
            for images, labels in self.dataset.train_chunks():
                end = start + len(images) - 1
                rows = f"train rows {start}..{end}"
                images = _check_split("train", images, np.asarray(labels), self.spec, self.dataset.origin, rows)
                held = _held_out(start, len(images), self.seed, self.spec.train.validation_split)
                keep = held if validation else ~held
                start = end + 1
                if keep.any():
                    yield images[keep], labels[keep].astype(np.int64)
        except DataError as error:
            self.failure = error
            raise


def _held_out(start: int, count: int, seed: int, fraction: float) -> np.ndarray:
    """Whether each row position in [start, start + count) belongs to validation: a splitmix64 hash of the
    position and seed compared with `fraction`, so the choice needs no table-sized permutation in memory."""
    with np.errstate(over="ignore"):
        x = np.arange(start, start + count, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def _stream_splits(dataset: StreamingDataset, spec: ModelSpec, seed: int) -> StreamSplits:
    x_test = _check_split("test", np.asarray(dataset.x_test), np.asarray(dataset.y_test), spec, dataset.origin)
    if dataset.train_size == 0:
        raise DataError("train split is empty")
    held = sum(
        int(_held_out(start, min(1 << 20, dataset.train_size - start), seed, spec.train.validation_split).sum())
        for start in range(0, dataset.train_size, 1 << 20)
    )
    y_test = np.asarray(dataset.y_test, np.int64)
    return StreamSplits(dataset, spec, seed, dataset.train_size - held, held, x_test, y_test)


def data_sizes(splits: Splits | StreamSplits) -> dict[str, int]:
    """How many images each split holds, for the manifest."""
    if isinstance(splits, StreamSplits):
        return {"train": splits.train_size, "validation": splits.val_size, "test": len(splits.x_test)}
    return {"train": len(splits.x_train), "validation": len(splits.x_val), "test": len(splits.x_test)}


def training_data(splits: Splits | StreamSplits, global_batch: int, shuffle_buffer: int, seed: int) -> tuple[Any, Any]:
    """The `tf.data` pipelines `fit` consumes: (training, validation or None).

    Streamed rows are never cached (that would hold the table); they are shuffled through a buffer of
    `shuffle_buffer` rows, reshuffled each epoch with `seed`.
    """
    if isinstance(splits, Splits):
        train = make_dataset(splits.x_train, splits.y_train, global_batch, shuffle_buffer=shuffle_buffer, seed=seed)
        validation = make_dataset(splits.x_val, splits.y_val, global_batch) if len(splits.x_val) else None
        return train, validation
    from buildsys.actions import tensorflow

    tf = tensorflow()
    signature = (
        tf.TensorSpec((None, *splits.spec.inputs.shape), tf.dtypes.as_dtype(splits.spec.inputs.dtype)),
        tf.TensorSpec((None,), tf.int64),
    )

    def stream(validation: bool) -> Any:
        """Rows of one side; the known row count lets Keras size its progress bar and end epochs cleanly."""
        rows = tf.data.Dataset.from_generator(lambda: splits.rows(validation), output_signature=signature)
        count = splits.val_size if validation else splits.train_size
        return rows.unbatch().apply(tf.data.experimental.assert_cardinality(count))

    train = stream(False).shuffle(min(shuffle_buffer, splits.train_size), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(global_batch).prefetch(tf.data.AUTOTUNE)
    validation = stream(True).batch(global_batch).prefetch(tf.data.AUTOTUNE) if splits.val_size else None
    return train, validation


@contextmanager
def stream_failures(splits: Splits | StreamSplits) -> Iterator[None]:
    """Re-raises the DataError behind a failed streamed pass as itself, so the user sees one line."""
    try:
        yield
    except Exception:
        failure = getattr(splits, "failure", None)
        if failure is not None:
            raise failure from None
        raise
