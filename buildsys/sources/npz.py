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
from buildsys.errors import DataError
from buildsys.sources.image_folder import resolve
from buildsys.sources.records import ArrayReader

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _check_members(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path} is not an .npz file ({error})") from None
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
        with archive.open("x_train.npy") as stream:
            try:
                version = np.lib.format.read_magic(stream)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(stream)
            except ValueError as error:
                raise DataError(f"{path}: x_train is not a .npy array ({error})") from None
        if len(shape) not in (3, 4):
            raise DataError(f"{path}: x_train is shaped {shape}; expected (N, H, W) or (N, H, W, C)")
        if "class_names.npy" in archive.namelist():
            with archive.open("class_names.npy") as stream:
                return tuple(shape[1:]), [str(name) for name in np.load(stream, allow_pickle=False)]
    labels = np.concatenate([_load(path)[name] for name in ("y_train", "y_test")])
    top = int(labels.max()) if labels.size else 0
    return tuple(shape[1:]), [str(index) for index in range(top + 1)]


def probe(params: dict[str, Any], base_dir: Path) -> Probed:
    """A declared npz file's image shape and the class names it implies (`describe`)."""
    shape, class_names = describe(base_dir / params["path"])
    return Probed(shape, class_names)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except ValueError as error:
        raise DataError(f"{path}: cannot read ({error}); object arrays are refused") from None


def open_npz(path: Path, class_names: tuple[str, ...] | None = None) -> ArrayReader:
    """A reader over the file's two splits; labels must be integers."""
    _check_members(path).close()
    arrays = _load(path)
    names = class_names or tuple(describe(path)[1])
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must hold integer class indices; received dtype {labels.dtype}")
        splits[split] = (images, labels.astype(np.int64))
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
