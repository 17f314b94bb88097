"""Image folders: one sub-folder per class (its name is the class name), or loose image files without labels.

Owns listing, the seeded per-class train/test split, decoding with resizing, loading (into memory, or with
`stream=True` the training images decoded again on every pass), and the folder's fingerprint (every image file's
path relative to the folder and a digest of its bytes). A folder is a local path (`LocalFolder`) or a URL of
object storage that fsspec opens (`ObjectFolder`: `s3://`, `gs://`, ...; s3fs or gcsfs installed): both answer
the same few questions (its sub-folders, the images under one), so the layout, the split and the order are
computed once, the same way, for both. Within `listed_once()` (one command of the command line) a URL is listed
once: the class names a definition takes, the build's fingerprint and the images it reads come from one listing, so
a bucket that changes during a build cannot key one set of objects and train on another. Never TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from buildsys.cache import DigestMemo
from buildsys.dsl.datasets import DataSource, Probed, image_shape
from buildsys.errors import DataError, describe_failure
from buildsys.sources.images import IMAGE_SUFFIXES, read_image_file
from buildsys.sources.records import Batch, Dataset, StreamingDataset, read_all

STREAM_CHUNK = 256  # training images decoded at a time when streaming
MEMORY_SHARE = 0.5  # a folder held in memory may take at most this share of the machine's memory
# The fields of an object's listing that change with its content, by storage (S3's ETag, GCS's MD5 and CRC32C,
# Azure's content MD5): the fingerprint takes them from the listing instead of reading every object.
CONTENT_FIELDS = ("ETag", "etag", "md5Hash", "crc32c", "content_md5", "checksum")


def is_url(path: str) -> bool:
    """A folder named by a URL (`s3://bucket/images`), which fsspec opens, rather than a path on this machine."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def resolve(source: DataSource, path: str) -> Path:
    """A path from a definition: absolute as written, else relative to the declaring workspace's root."""
    given = Path(path)
    return given if given.is_absolute() else (source.base_dir or Path.cwd()) / given


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _listed(folder: Path, listing: Callable[[], list[Any]]) -> list[Any]:
    """`listing()` sorted, with a folder or file that cannot be read (no permission, gone meanwhile) as one
    `DataError` line naming it instead of an OSError."""
    try:
        return sorted(listing())
    except OSError as error:
        raise DataError(f"{error.filename or folder}: cannot read it ({error.strerror or error})") from None


class LocalFolder:
    """A folder on this machine; its files are `Path`s."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def is_folder(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).is_dir()

    def subfolders(self, *parts: str) -> list[str]:
        folder = self.root.joinpath(*parts)
        children = _listed(folder, lambda: [child for child in folder.iterdir() if child.is_dir()])
        return [child.name for child in children if not child.name.startswith(".")]

    def images_under(self, *parts: str) -> list[Path]:
        folder = self.root.joinpath(*parts)
        return _listed(folder, lambda: [path for path in folder.rglob("*") if is_image(path)])

    def loose_images(self) -> list[Path]:
        """The images directly in the folder, not in a sub-folder."""
        return _listed(self.root, lambda: [path for path in self.root.iterdir() if is_image(path)])

    def digests(self, memo_dir: Path | None) -> Iterator[tuple[str, str]]:
        """(relative path, sha256) of every image; unchanged files are not read again (`DigestMemo`)."""
        memo = DigestMemo(self.root, memo_dir)
        for path in self.images_under():
            yield path.relative_to(self.root).as_posix(), memo.digest(path)
        memo.save()


class ListedFolder:
    """A folder known only by a listing of its image files: their paths relative to it, and the name each is read
    by (its URL). There are no folders in a listing, only names with slashes, so a sub-folder is a prefix that some
    image has (an empty folder does not exist). What Spark lists (`predict --engine spark` on a URL) is one."""

    def __init__(self, url: str, names: dict[PurePosixPath, str]) -> None:
        self.url = url.rstrip("/")
        self.names = names
        self.listed = sorted(names)

    def where(self, *parts: str) -> str:
        return "/".join((self.url, *parts))

    def is_folder(self, *parts: str) -> bool:
        return any(path.parts[: len(parts)] == parts and len(path.parts) > len(parts) for path in self.listed)

    def subfolders(self, *parts: str) -> list[str]:
        depth = len(parts)
        names = {
            path.parts[depth] for path in self.listed if path.parts[:depth] == parts and len(path.parts) > depth + 1
        }
        return sorted(name for name in names if not name.startswith("."))

    def images_under(self, *parts: str) -> list[str]:
        return [
            self.names[path]
            for path in self.listed
            if path.parts[: len(parts)] == parts and len(path.parts) > len(parts)
        ]

    def loose_images(self) -> list[str]:
        return [self.names[path] for path in self.listed if len(path.parts) == 1]


class ObjectFolder(ListedFolder):
    """A folder in object storage through fsspec, listed once when it is opened; its files are URLs. Errors of the
    storage library (no such bucket, no credentials, an endpoint that does not answer) are one `DataError` line
    naming the URL."""

    def __init__(self, url: str) -> None:
        import fsspec

        url = url.rstrip("/")
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
            self.root = root.rstrip("/")
            listing = self.fs.find(self.root, detail=True)
        except Exception as error:  # the storage libraries raise their own types, not only OSError
            raise DataError(f"{url}: cannot list it: {describe_failure(error)}") from None
        self.info: dict[PurePosixPath, dict[str, Any]] = {}
        for name, info in listing.items():
            relative = name[len(self.root) + 1 :] if name.startswith(f"{self.root}/") else ""
            path = PurePosixPath(relative)
            if relative and path.suffix.lower() in IMAGE_SUFFIXES and info.get("type", "file") == "file":
                self.info[path] = info
        super().__init__(url, {path: "/".join((url, *path.parts)) for path in self.info})

    def read(self, urls: list[str]) -> list[bytes]:
        """The objects' bytes, fetched together (concurrently where the storage library can)."""
        names = [f"{self.root}/{url[len(self.url) + 1 :]}" for url in urls]  # as the filesystem names them
        try:
            found = self.fs.cat(names)
        except Exception as error:
            raise DataError(f"{self.url}: reading {len(urls)} images failed: {describe_failure(error)}") from None
        return [found[name] for name in names]

    def digests(self, memo_dir: Path | None) -> Iterator[tuple[str, str]]:
        """(relative path, content digest) of every image, from the listing's content fields (an object without
        any, as on a `file://` folder, is read and hashed)."""
        for path in self.listed:
            info = self.info[path]
            fields = [f"{field}={info[field]}" for field in CONTENT_FIELDS if info.get(field)]
            if fields:
                yield path.as_posix(), f"{info.get('size')}:{','.join(fields)}"
            else:
                (data,) = self.read([self.where(*path.parts)])
                yield path.as_posix(), hashlib.sha256(data).hexdigest()


Folder = LocalFolder | ListedFolder

# The folders in object storage listed in the current `listed_once()` scope, by URL; None outside one.
_listings: ContextVar[dict[str, ObjectFolder] | None] = ContextVar("listings", default=None)


@contextmanager
def listed_once() -> Iterator[None]:
    """A scope in which each folder in object storage is listed once, however often it is opened: declaring the
    definition, fingerprinting and loading a folder of a million objects would otherwise list it three times, and
    could see three different listings. Local folders are read as they are each time (their fingerprint digests
    the files themselves)."""
    token = _listings.set({})
    try:
        yield
    finally:
        _listings.reset(token)


def open_folder(path: str, base_dir: Path | None) -> Folder:
    """The folder a definition names: a URL opened through fsspec (its listing shared within `listed_once()`),
    else a path (relative to `base_dir`)."""
    if is_url(path):
        listings = _listings.get()
        if listings is None:
            return ObjectFolder(path)
        url = path.rstrip("/")
        if url not in listings:
            listings[url] = ObjectFolder(url)
        return listings[url]
    given = Path(path)
    return LocalFolder(given if given.is_absolute() else (base_dir or Path.cwd()) / given)


def class_folders(folder: Folder, split: float | str) -> list[str]:
    """The class names of an image folder: its sub-folders (of `train/` when split="folders"), sorted.

    Raises:
        DataError: when the folder is missing or has no class sub-folders.
    """
    parts = ("train",) if split == "folders" else ()
    if not folder.is_folder(*parts):
        raise DataError(f"{folder.where(*parts)} is not a folder")
    names = folder.subfolders(*parts)
    if not names:
        raise DataError(f"{folder.where(*parts)} has no class sub-folders (expected one folder of images per class)")
    return names


def probe(params: dict[str, Any], base_dir: Path) -> Probed:
    """The class names a declared image folder implies: its class sub-folders."""
    return Probed(class_names=class_folders(open_folder(params["path"], base_dir), params["split"]))


def split_files(
    folder: Folder, class_names: tuple[str, ...], split: float | str, split_seed: int
) -> dict[str, list[tuple[Any, int]]]:
    """(file, label) pairs per split: the `train/` and `test/` trees, or each class's sorted files with its test
    files drawn with `split_seed`, so both splits keep the class balance and adding a class does not reshuffle the
    others."""
    index = {name: position for position, name in enumerate(class_names)}
    if split == "folders":
        found: dict[str, list[tuple[Any, int]]] = {}
        for part in ("train", "test"):
            if not folder.is_folder(part):
                raise DataError(f"{folder.where(part)} is missing; split='folders' expects train/ and test/ trees")
            unknown = [name for name in folder.subfolders(part) if name not in index]
            if unknown:
                raise DataError(f"{folder.where(part)} has folders that are not classes: {', '.join(unknown)}")
            found[part] = [(path, index[name]) for name in class_names for path in folder.images_under(part, name)]
        return found
    if not folder.is_folder():
        raise DataError(f"{folder.where()} is not a folder (expected one sub-folder of images per class)")
    rng = np.random.default_rng(split_seed)
    train: list[tuple[Any, int]] = []
    test: list[tuple[Any, int]] = []
    for label, name in enumerate(class_names):
        files = folder.images_under(name)
        held = max(1, round(len(files) * split)) if len(files) > 1 else 0
        chosen = set(rng.permutation(len(files))[:held].tolist())
        for position, path in enumerate(files):
            (test if position in chosen else train).append((path, label))
    return {"train": train, "test": test}


def folder_layout(folder: Folder) -> tuple[tuple[str, ...] | None, dict[str, list[tuple[Any, int | None]]]]:
    """How a folder named on the command line reads (no definition says its layout): `train/` and `test/` trees of
    class folders, class folders split 80/20 with seed 0 (as `datasets.image_folder` does by default), or, without
    sub-folders, its loose images unlabelled. Returns the class names (None for loose images) and the (file,
    label) pairs per split (`all` for loose images)."""
    children = folder.subfolders()
    if not children:
        return None, {"all": [(path, None) for path in folder.loose_images()]}
    split: float | str = "folders" if {"train", "test"} <= set(children) else 0.2
    names = tuple(class_folders(folder, split))
    return names, split_files(folder, names, split, 0)


class FolderReader:
    """Reads labelled image files, decoding each batch on demand (at most one batch of pixels in memory).

    Files are paths, or URLs with `fetch` giving their bytes (an `ObjectFolder`'s, one request per batch).
    """

    def __init__(
        self,
        root: Path | str | None,
        files: dict[str, list[tuple[Any, int | None]]],
        class_names: tuple[str, ...] | None,
        size: tuple[int, int],
        color_mode: str,
        fetch: Callable[[list[str]], list[bytes]] | None = None,
    ) -> None:
        self.root = root
        self.description = f"image folder {root}" if root else f"{sum(map(len, files.values()))} image files"
        self.files = files
        self.class_names = class_names
        self.size = size
        self.color_mode = color_mode
        self.image_shape = image_shape(size, color_mode)
        self.fetch = fetch

    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def count(self, split: str) -> int:
        return len(self.files[split])

    def batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        files = self.files[split]
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            paths = [path for path, _ in chunk]
            contents = self.fetch(paths) if self.fetch is not None else [None] * len(paths)
            images = np.stack(
                [
                    read_image_file(path, self.size, self.color_mode, data)
                    for path, data in zip(paths, contents, strict=True)
                ]
            )
            labels = None if self.class_names is None else np.array([label for _, label in chunk], np.int64)
            yield Batch([self.image_id(path) for path in paths], images, labels)

    def image_id(self, path: Path | str) -> str:
        """Image ids are paths relative to the folder, or as given for loose files."""
        if isinstance(self.root, str):
            return str(path)[len(self.root) + 1 :]
        return path.relative_to(self.root).as_posix() if self.root else str(path)


def native_size(path: Path) -> tuple[tuple[int, int], str]:
    """(height, width) and colour mode of an image file, for sources named on the command line."""
    pixels = read_image_file(path, None, None)
    return pixels.shape[:2], "rgb" if pixels.ndim == 3 else "grayscale"


def source_reader(source: DataSource) -> FolderReader:
    params = dict(source.params)
    folder = open_folder(params["path"], source.base_dir)
    files = split_files(folder, source.class_names, params["split"], params["split_seed"])
    size, color_mode = tuple(params["image_size"]), params["color_mode"]
    if isinstance(folder, ObjectFolder):
        return FolderReader(folder.url, files, source.class_names, size, color_mode, fetch=folder.read)
    return FolderReader(folder.root, files, source.class_names, size, color_mode)


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
    """Covers every image file's path relative to the folder and a digest of its bytes: the sha256 on disk (files
    unchanged since the last build are not read again: `DigestMemo`), the content fields of the listing in
    object storage (`CONTENT_FIELDS`); None when a local folder is not on this machine.

    Raises:
        DataError: when a folder in object storage cannot be listed.
    """
    folder = open_folder(dict(source.params)["path"], source.base_dir)
    if isinstance(folder, LocalFolder) and not folder.is_folder():
        return None
    digest = hashlib.sha256(repr(sorted(source.params)).encode())
    for relative, content in folder.digests(memo_dir):
        digest.update(f"{relative}\0{content}\n".encode())
    return digest.hexdigest()
