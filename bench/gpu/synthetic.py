"""Generated images for the GPU bench: one fixed pattern per class plus noise, so a briefly trained model learns
something and a prediction run reports a meaningful accuracy, without downloading a data set.

The same function makes the training arrays here (prepare.py writes them as the definitions' .npz files) and the
image folder that batch prediction reads on the device (device_check.py), so both see the same distribution.
Imports only NumPy (and Pillow, lazily, to write PNG files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Folder names as well as class names, so no "/" (Fashion-MNIST's own "T-shirt/top" would not do).
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = {"fashion": ((28, 28), FASHION_CLASSES), "cifar": ((32, 32, 3), CIFAR_CLASSES)}


def images(dataset: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images of ``dataset``'s shape and their labels; the class patterns depend on ``dataset``
    only, the noise and the labels on ``seed``."""
    shape, classes = DATASETS[dataset]
    patterns = np.random.default_rng(len(shape)).integers(0, 256, size=(len(classes), *shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(classes), size=count)
    noise = rng.normal(0.0, 48.0, size=(count, *shape))
    return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_npz(dataset: str, path: Path, train: int, test: int) -> None:
    """The training file a definition's ``datasets.npz`` reads (``x_train``, ``y_train``, ``x_test``, ``y_test``,
    ``class_names``)."""
    x_train, y_train = images(dataset, train, seed=1)
    x_test, y_test = images(dataset, test, seed=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    class_names = np.array(DATASETS[dataset][1])
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, class_names=class_names)


def write_folder(dataset: str, root: Path, count: int, seed: int = 3) -> int:
    """An image folder (one sub-folder per class, PNG files) of ``count`` images; returns how many were written."""
    from PIL import Image

    pixels, labels = images(dataset, count, seed)
    classes = DATASETS[dataset][1]
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image).save(root / classes[label] / f"{index:06d}.png")
    return count
