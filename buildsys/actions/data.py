"""The data action: check loaded arrays against the definition, carve the validation split, make `tf.data`.

Checks happen on the NumPy arrays before anything trains, so bad data (wrong shapes, NaNs, labels out of range)
fails with one line naming the split and what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from buildsys.dsl.specs import ModelSpec
from buildsys.errors import DataError
from buildsys.sources import Dataset


@dataclass(frozen=True)
class Splits:
    """Checked arrays, shaped like the model's input, with the validation split carved from training."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check_split(split: str, images: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Returns the images shaped exactly as the input declares (a channel axis is added for (H, W, 1))."""
    declared = tuple(spec.inputs.shape)
    if images.ndim >= 1 and tuple(images.shape[1:]) + (1,) == declared:
        images = images[..., np.newaxis]
    if tuple(images.shape[1:]) != declared:
        raise DataError(f"{split} images are shaped {tuple(images.shape[1:])} but the input declares {declared}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{split} has {len(images)} images but labels shaped {labels.shape}; expected ({len(images)},)")
    if len(images) == 0:
        raise DataError(f"{split} split is empty")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        bad = int(np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))[0])
        raise DataError(f"{split} image {bad} contains NaN or infinite pixels")
    if spec.inputs.dtype == "uint8" and (images.min() < 0 or images.max() > 255):
        raise DataError(f"{split} pixels range {images.min()}..{images.max()}, outside 0..255 for a uint8 input")
    classes = len(spec.class_names)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{split} labels must be integer class indices; received dtype {labels.dtype}")
    out_of_range = np.flatnonzero((labels < 0) | (labels >= classes))
    if out_of_range.size:
        index = int(out_of_range[0])
        raise DataError(f"{split} label {index} is {labels[index]}, outside 0..{classes - 1} ({classes} class names)")
    return images.astype(spec.inputs.dtype, copy=False)


def check_and_split(dataset: Dataset, spec: ModelSpec, seed: int) -> Splits:
    """Checks both splits and carves a seeded validation set from training (never from test)."""
    x_train = _check_split("train", np.asarray(dataset.x_train), np.asarray(dataset.y_train), spec)
    x_test = _check_split("test", np.asarray(dataset.x_test), np.asarray(dataset.y_test), spec)
    y_train, y_test = np.asarray(dataset.y_train, np.int64), np.asarray(dataset.y_test, np.int64)
    order = np.random.default_rng(seed).permutation(len(x_train))
    held = int(round(len(x_train) * spec.train.validation_split))
    val, fit = order[:held], order[held:]
    return Splits(x_train[fit], y_train[fit], x_train[val], y_train[val], x_test, y_test)


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
