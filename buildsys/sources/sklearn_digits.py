"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images that ship inside the package (offline).

Pixels are stored by scikit-learn as 0–16; they are scaled to 0–255 (x * 255 / 16, rounded) and kept as uint8,
which is exactly what a PNG of the digit holds, so serving a PNG gives the answer the build measured.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from buildsys.dsl.datasets import DataSource
from buildsys.sources import Dataset


def _data_file() -> Path:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it (no-op builds stay fast)
    if spec is None:  # the serving install; the command line says how to add the build side
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def fingerprint(source: DataSource) -> str:
    digest = hashlib.sha256(_data_file().read_bytes())
    digest.update(repr(sorted(source.params)).encode())
    return digest.hexdigest()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """scikit-learn's 0–16 intensities as 0–255 uint8 pixels."""
    return np.rint(np.asarray(pixels, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


def load(source: DataSource) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    params = dict(source.params)
    digits = load_digits()
    images = to_uint8(digits.images)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=params["test_fraction"], random_state=params["split_seed"], stratify=labels
    )
    return Dataset(x_train, y_train, x_test, y_test, source.class_names)
