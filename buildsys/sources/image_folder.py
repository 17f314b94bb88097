"""Image folders: one sub-folder per class (its name is the class name), or loose image files without labels.

Owns listing, the seeded per-class train/test split, decoding with resizing, loading (into memory, or with
`stream=True` the training images decoded again on every pass), and the folder's fingerprint (every image file's
path relative to the folder and the sha256 of its bytes). Never TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from buildsys.cache import DigestMemo
from buildsys.dsl.datasets import DataSource, Probed, image_shape
from buildsys.errors import DataError
from buildsys.sources.images import IMAGE_SUFFIXES, read_image_file
from buildsys.sources.records import Batch, Dataset, StreamingDataset, read_all

File = TypeVar("File")

STREAM_CHUNK = 256  # training images decoded at a time when streaming
MEMORY_SHARE = 0.5  # a folder held in memory may take at most this share of the machine's memory


def resolve(source: DataSource, path: str) -> Path:
    """A path from a definition: absolute as written, else relative to the declaring workspace's root."""
    given = Path(path)
    return given if given.is_absolute() else (source.base_dir or Path.cwd()) / given


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if is_image(path))


def class_folders(folder: Path, split: float | str) -> list[str]:
    """The class names of an image folder: its sub-folders (of `train/` when split="folders"), sorted.

    Raises:
        DataError: when the folder is missing or has no class sub-folders.
    """
    root = folder / "train" if split == "folders" else folder
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    names = sorted(child.name for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not names:
        raise DataError(f"{root} has no class sub-folders (expected one folder of images per class)")
    return names


def probe(params: dict[str, Any], base_dir: Path) -> Probed:
    """The class names a declared image folder implies: its class sub-folders."""
    return Probed(class_names=class_folders(base_dir / params["path"], params["split"]))


def split_files(
    folder: Path, class_names: tuple[str, ...], split: float | str, split_seed: int
) -> dict[str, list[tuple[Path, int]]]:
    """(file, label) pairs per split. A ratio split draws each class's test files with `split_seed`, so both
    splits keep the class balance and adding a class does not reshuffle the others."""
    index = {name: position for position, name in enumerate(class_names)}
    if split == "folders":
        found: dict[str, list[tuple[Path, int]]] = {}
        for part in ("train", "test"):
            root = folder / part
            if not root.is_dir():
                raise DataError(f"{root} is missing; split='folders' expects train/ and test/ trees")
            unknown = sorted(c.name for c in root.iterdir() if c.is_dir() and c.name not in index)
            if unknown:
                raise DataError(f"{root} has folders that are not classes: {', '.join(unknown)}")
            found[part] = [(path, index[name]) for name in class_names for path in _images_under(root / name)]
        return found
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected one sub-folder of images per class)")
    return draw_test_split([_images_under(folder / name) for name in class_names], split, split_seed)


def draw_test_split(
    files_by_class: list[list[File]], split: float, split_seed: int
) -> dict[str, list[tuple[File, int]]]:
    """(file, label) pairs per split from each class's sorted files (label = the class's position): each class's
    test files drawn with `split_seed`, so both splits keep the class balance and adding a class does not reshuffle
    the others. Files may be local paths or another filesystem's names (`predict --engine spark` on a URL)."""
    rng = np.random.default_rng(split_seed)
    train: list[tuple[File, int]] = []
    test: list[tuple[File, int]] = []
    for label, files in enumerate(files_by_class):
        held = max(1, round(len(files) * split)) if len(files) > 1 else 0
        chosen = set(rng.permutation(len(files))[:held].tolist())
        for position, path in enumerate(files):
            (test if position in chosen else train).append((path, label))
    return {"train": train, "test": test}


class FolderReader:
    """Reads labelled image files, decoding each batch on demand (at most one batch of pixels in memory)."""

    def __init__(
        self,
        root: Path | None,
        files: dict[str, list[tuple[Path, int | None]]],
        class_names: tuple[str, ...] | None,
        size: tuple[int, int],
        color_mode: str,
    ) -> None:
        self.root = root
        self.description = f"image folder {root}" if root else f"{sum(map(len, files.values()))} image files"
        self.files = files
        self.class_names = class_names
        self.size = size
        self.color_mode = color_mode
        self.image_shape = image_shape(size, color_mode)

    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def count(self, split: str) -> int:
        return len(self.files[split])

    def batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        files = self.files[split]
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = np.stack([read_image_file(path, self.size, self.color_mode) for path, _ in chunk])
            labels = None if self.class_names is None else np.array([label for _, label in chunk], np.int64)
            yield Batch([self.image_id(path) for path, _ in chunk], images, labels)

    def image_id(self, path: Path) -> str:
        """Image ids are paths relative to the folder, or as given for loose files."""
        return path.relative_to(self.root).as_posix() if self.root else str(path)


def native_size(path: Path) -> tuple[tuple[int, int], str]:
    """(height, width) and colour mode of an image file, for sources named on the command line."""
    pixels = read_image_file(path, None, None)
    return pixels.shape[:2], "rgb" if pixels.ndim == 3 else "grayscale"


def source_reader(source: DataSource) -> FolderReader:
    params = dict(source.params)
    folder = resolve(source, params["path"])
    files = split_files(folder, source.class_names, params["split"], params["split_seed"])
    return FolderReader(folder, files, source.class_names, tuple(params["image_size"]), params["color_mode"])


def load(source: DataSource) -> Dataset | StreamingDataset:
    """The folder's images in memory, or with `stream=True` its test split in memory and its training images
    decoded `STREAM_CHUNK` at a time on every pass, in one fixed order that interleaves the classes (a seeded
    permutation: the shuffle buffer then mixes classes, and positions, which pick the validation images, stay put).

    Raises:
        DataError: for an unreadable image, or a folder too large to hold that does not stream.
    """
    reader = source_reader(source)
    if not dict(source.params).get("stream"):
        _check_fits_in_memory(reader)
        x_train, y_train = read_all(reader, "train")
        x_test, y_test = read_all(reader, "test")
        return Dataset(x_train, y_train, x_test, y_test, source.class_names, reader.description)
    x_test, y_test = read_all(reader, "test")
    files = reader.files["train"]
    order = np.random.default_rng(dict(source.params)["split_seed"]).permutation(len(files))
    reader.files["train"] = [files[i] for i in order]

    def train_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in reader.batches("train", STREAM_CHUNK):
            yield batch.images, batch.labels

    return StreamingDataset(
        train_chunks, len(files), reader.image_shape, x_test, y_test, source.class_names, reader.description
    )


def _check_fits_in_memory(reader: FolderReader) -> None:
    """Refuses, before decoding anything, a folder whose decoded images would take more than `MEMORY_SHARE` of
    the machine's memory: one line that says how to stream it, instead of a process killed for memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
        return
    images = sum(reader.count(split) for split in reader.splits())
    size = images * int(np.prod(reader.image_shape))
    if size > memory * MEMORY_SHARE:
        raise DataError(
            f"{reader.description}: its {images:,} images decode to {size / 1e9:.1f} GB, more than "
            f"{MEMORY_SHARE:.0%} of this machine's {memory / 1e9:.1f} GB of memory; declare "
            "image_folder(..., stream=True) to decode the training images on every epoch instead of holding them"
        )


def fingerprint(source: DataSource, memo_dir: Path | None = None) -> str | None:
    """Covers every image file's path relative to the folder and the sha256 of its bytes (files unchanged since
    the last build are not read again: `DigestMemo`); None when the folder is not on this machine."""
    folder = resolve(source, dict(source.params)["path"])
    if not folder.is_dir():
        return None
    memo = DigestMemo(folder, memo_dir)
    digest = hashlib.sha256(repr(sorted(source.params)).encode())
    for path in _images_under(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{memo.digest(path)}\n".encode())
    memo.save()
    return digest.hexdigest()
