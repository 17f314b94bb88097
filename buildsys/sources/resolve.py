"""Sources named on the command line (`predict --input`, `data import`, `data inspect`), opened as readers.

A SOURCE is, optionally followed by `#train` or `#test` to take one split:
  * a target label (`//model_defs:digits`, `:digits`, or a bare name that is not a path): its declared data;
  * a database URL (`sqlite:///images.db`, `mysql+pymysql://user:${PASSWORD}@host/db`): the tutorial layout
    (`tf_images`, `img_use`, `categories`) that `data import` writes;
  * an `.npz` file with x_train, y_train, x_test, y_test;
  * a folder: `train/` and `test/` trees of class folders, class folders (split 80/20 with seed 0, as
    `datasets.image_folder` does by default), or loose images without labels;
  * image files (PNG/JPEG/BMP) or glob patterns, without labels;
  * with `--engine spark` only (buildsys.engines.spark), a Parquet table or an image folder at a filesystem URL
    (`hdfs://`, `s3a://`, `gs://`, `file:///`...), which Spark lists and reads itself.
Paths here are relative to the current folder (paths inside definitions are relative to the workspace root).
Never TensorFlow.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import SourceError
from buildsys.sources.image_folder import FolderReader, LocalFolder, folder_layout, is_image, native_size
from buildsys.sources.records import Reader

if TYPE_CHECKING:
    from buildsys.workspace import Workspace

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageFormat:
    """How file and database images are decoded: (height, width) and colour mode; None keeps the first image's."""

    size: tuple[int, int] | None = None
    color_mode: str | None = None


@dataclass(frozen=True)
class Opened:
    """A reader and the splits of it that were asked for."""

    reader: Reader
    splits: tuple[str, ...]


def open_sources(texts: list[str], image_format: ImageFormat, workspace: Workspace | None = None) -> Opened:
    """Opens SOURCE texts: one source of any kind, or several image files.

    Raises:
        SourceError: saying what the text did not match.
    """
    for text in texts:
        if "\x00" in text:  # no path, label or URL holds one; the operating system refuses it in a path
            raise SourceError(f"{text!r}: a source cannot contain a NUL character")
    if len(texts) > 1:
        files = _files([path for text in texts for path in _expand(text)], image_format)
        return Opened(files, files.splits())
    text, _, split = texts[0].partition("#")
    if split and split not in SPLITS:
        raise SourceError(f"{texts[0]!r}: a split suffix must be #train or #test")
    reader = _open_one(text, image_format, workspace)
    chosen = (split,) if split else reader.splits()
    if split and split not in reader.splits():
        raise SourceError(f"{text!r} has no {split} split (it has: {', '.join(reader.splits())})")
    return Opened(reader, chosen)


def _open_one(text: str, image_format: ImageFormat, workspace: Workspace | None) -> Reader:
    from buildsys.sources.sql import is_database_url, is_filesystem_url

    if is_filesystem_url(text):
        raise SourceError(
            f"{text!r}: no database driver has the scheme {text.partition(':')[0]!r}; a filesystem URL (hdfs://, "
            "s3a://, gs://, file://...) is read by --engine spark, as a Parquet table or an image folder"
        )
    if is_database_url(text):
        from buildsys.sources.tutorial_schema import open_database

        shape = None
        if image_format.size is not None:
            shape = image_format.size if image_format.color_mode == "grayscale" else (*image_format.size, 3)
        return open_database(text, Path.cwd(), shape)
    path = Path(text)
    if text.startswith(("//", ":")) or (not path.exists() and not glob.has_magic(text) and "/" not in text):
        return _declared(text, workspace)
    if path.is_file() and path.suffix.lower() == ".npz":
        from buildsys.sources.npz import open_npz

        return open_npz(path)
    if path.is_dir():
        return _folder(path, image_format)
    return _files(_expand(text), image_format)


def _declared(label: str, workspace: Workspace | None) -> Reader:
    from buildsys import sources

    if workspace is None:
        raise SourceError(f"{label!r} is neither a file, a folder, a database URL nor (outside a workspace) a label")
    target = workspace.resolve([label])[0]
    return sources.reader(target.spec.data, None)


def _folder(folder: Path, image_format: ImageFormat) -> Reader:
    names, files = folder_layout(LocalFolder(folder))
    if names is None:
        return _files([path for path, _ in files["all"]], image_format, root=folder)
    first = next((path for pairs in files.values() for path, _ in pairs), None)
    if first is None:
        raise SourceError(f"{folder} has class folders but no PNG/JPEG/BMP images in them")
    size, color_mode = _format_of(first, image_format)
    return FolderReader(folder, files, names, size, color_mode)


def _format_of(first: Path, image_format: ImageFormat) -> tuple[tuple[int, int], str]:
    if image_format.size is not None and image_format.color_mode is not None:
        return image_format.size, image_format.color_mode
    size, color_mode = native_size(first)
    return image_format.size or size, image_format.color_mode or color_mode


def _expand(text: str) -> list[Path]:
    paths = [Path(p) for p in sorted(glob.glob(text))] if glob.has_magic(text) else [Path(text)]
    missing = [str(path) for path in paths if not path.exists()]
    if missing or not paths:
        raise SourceError(f"{text!r} matches no file, folder, database URL or label")
    return paths


def _files(paths: list[Path], image_format: ImageFormat, root: Path | None = None) -> Reader:
    images = [path for path in paths if is_image(path)]
    others = [str(path) for path in paths if not is_image(path)]
    if others:
        raise SourceError(f"not PNG/JPEG/BMP images: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}")
    if not images:
        raise SourceError(f"{root or 'the input'} holds no PNG/JPEG/BMP images")
    size, color_mode = _format_of(images[0], image_format)
    return FolderReader(root, {"all": [(path, None) for path in images]}, None, size, color_mode)
