"""NumPy `.npz` files holding `x_train`, `y_train`, `x_test`, `y_test`, always read with `allow_pickle=False`.

Owns the cheap header probe used at declaration time (image shape without reading the pixels), loading, and the
file's fingerprint (the sha256 of its bytes). Never TensorFlow.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.cache import DigestMemo
from buildsys.dsl.datasets import DataSource, Probed
from buildsys.errors import DataError, one_line
from buildsys.sources.image_folder import resolve
from buildsys.sources.images import OBJECT_ARRAYS_REFUSED
from buildsys.sources.records import ArrayReader

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
MAX_IMPLIED_CLASSES = 100_000  # class names "0".."N-1" implied by the labels, without a class_names array


def _damaged(path: Path, error: BaseException) -> DataError:
    """One line for a file that zipfile or NumPy cannot read. A damaged archive or array raises many types
    (BadZipFile, zlib.error, EOFError, OSError, ValueError; SyntaxError and tokenize errors from an `.npy` header,
    which NumPy parses as a Python literal; NotImplementedError for an unknown compression): all mean the same."""
    if isinstance(error, ValueError) and "allow_pickle" in str(error):
        return DataError(f"{path}: {OBJECT_ARRAYS_REFUSED}")
    detail = one_line(error)
    shown = type(error).__name__ if detail == type(error).__name__ else f"{type(error).__name__}: {detail}"
    return DataError(f"{path} is not a readable .npz file ({shown})")


def _check_members(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
    except Exception as error:  # see _damaged
        raise _damaged(path, error) from None
    missing = [name for name in ARRAYS if f"{name}.npy" not in archive.namelist()]
    if missing:
        archive.close()
        raise DataError(f"{path} lacks {', '.join(missing)}; an npz source needs {', '.join(ARRAYS)}")
    return archive


def describe(path: Path) -> tuple[tuple[int, ...], list[str]]:
    """The image shape (from x_train's header, without reading pixels) and the class names the file implies:
    its `class_names` array when present, else "0".."K-1" for labels up to K-1.

    Raises:
        DataError: for a missing or malformed file.
    """
    with _check_members(path) as archive:
        try:
            with archive.open("x_train.npy") as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(stream)
            names = None
            if "class_names.npy" in archive.namelist():
                with archive.open("class_names.npy") as stream:
                    names = np.load(stream, allow_pickle=False)
        except Exception as error:  # see _damaged
            raise _damaged(path, error) from None
    if len(shape) not in (3, 4):
        raise DataError(f"{path}: x_train is shaped {shape}; expected (N, H, W) or (N, H, W, C)")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "USiu" or not names.size:
            raise DataError(
                f"{path}: class_names must be a non-empty 1-D array of strings; it is {names.dtype} shaped "
                f"{names.shape}"
            )
        return tuple(shape[1:]), [str(name) for name in names]
    arrays = _load(path)
    labels = np.concatenate([_labels(path, arrays, split) for split in ("train", "test")])
    top = int(labels.max()) if labels.size else 0
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: labels must be class indices from 0; y holds {int(labels.min())}")
    if top >= MAX_IMPLIED_CLASSES:  # "0".."N" for a damaged label would be millions of class names
        raise DataError(
            f"{path}: the labels run up to {top}, which would imply {top + 1:,} classes; give the class names "
            "(a class_names array in the file, or npz(..., class_names=[...]))"
        )
    return tuple(shape[1:]), [str(index) for index in range(top + 1)]


def probe(params: dict[str, Any], base_dir: Path) -> Probed:
    """A declared npz file's image shape and the class names it implies (`describe`)."""
    shape, class_names = describe(base_dir / params["path"])
    return Probed(shape, class_names)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except Exception as error:  # members are read here, lazily: see _damaged
        raise _damaged(path, error) from None


def _labels(path: Path, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    labels = arrays[f"y_{split}"].reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: y_{split} must hold integer class indices; received dtype {labels.dtype}")
    return labels.astype(np.int64)


def open_npz(path: Path, class_names: tuple[str, ...] | None = None) -> ArrayReader:
    """A reader over the file's two splits: images of one numeric type and shape, one integer label each."""
    _check_members(path).close()
    arrays = _load(path)
    names = class_names or tuple(describe(path)[1])
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], _labels(path, arrays, split)
        if images.ndim not in (3, 4) or images.shape[1:] != arrays["x_train"].shape[1:]:
            raise DataError(
                f"{path}: x_{split} is shaped {images.shape}; expected (N, H, W) or (N, H, W, C) with the images of "
                f"x_train ({arrays['x_train'].shape[1:]})"
            )
        if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
            raise DataError(f"{path}: x_{split} must hold pixel numbers; received dtype {images.dtype}")
        if len(images) != len(labels):
            raise DataError(f"{path}: x_{split} has {len(images)} images but y_{split} {len(labels)} labels")
        splits[split] = (images, labels)
    return ArrayReader(f"npz file {path}", splits, names)


def source_reader(source: DataSource) -> ArrayReader:
    return open_npz(resolve(source, dict(source.params)["path"]), source.class_names)


def fingerprint(source: DataSource, memo_dir: Path | None = None) -> str | None:
    """The sha256 of the file's bytes and the source's settings; None when the file is not on this machine."""
    path = resolve(source, dict(source.params)["path"])
    if not path.is_file():
        return None
    memo = DigestMemo(path.parent, memo_dir)
    digest = hashlib.sha256(f"{sorted(source.params)}\0{memo.digest(path)}".encode())
    memo.save()
    return digest.hexdigest()
