"""Data source declarations: which images and labels a target trains and tests on.

Only the declaration lives here (a `DataSource` value, hashed into the cache key); reading is in
`buildsys.sources`, which may import heavy libraries, and which this module never imports. What a declaration must
learn from its files or database (an npz file's image shape, class names from folders or a query) it asks the
`SourceProbe` that the loading workspace lends it (`declaring`), so the definition language stays free of I/O code.
Class names default to each dataset's published ones.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import DataError, DefinitionError, Location, caller_location, describe

COLOR_MODES = ("grayscale", "rgb")
CELL_FORMATS = ("auto", "png", "jpeg", "npy", "raw")

KERAS_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"shape": (28, 28), "classes": [str(digit) for digit in range(10)]},
    "fashion_mnist": {
        "shape": (28, 28),
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    },
    "cifar10": {
        "shape": (32, 32, 3),
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    },
}


@dataclass(frozen=True)
class DataSource:
    """A declared dataset: its kind, the settings that select its content, and the class names."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]
    location: Location | None = field(default=None, compare=False, repr=False)
    # Relative paths and SQLite files resolve against this folder (the declaring workspace's root); it is left out
    # of the cache key so that a moved workspace keys on the same content.
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.params), "class_names": list(self.class_names)}


# Seeds go to NumPy's and scikit-learn's generators, which take 32-bit seeds.
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, argument: str, location: Location | None) -> None:
    """Refuses a seed that is not an int in [0, 2**32 - 1] with one DefinitionError naming `argument`."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise DefinitionError(f"{argument} expects an int in [0, 2**32 - 1]. Received: {describe(seed)}.", location)


def _class_names(given: Any, default: list[str], location: Location | None) -> tuple[str, ...]:
    names = default if given is None else given
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise DefinitionError(
            f"class_names must be a non-empty list of strings. Received: {describe(names)}.", location
        )
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if list(names).count(name) > 1})
        raise DefinitionError(f"class_names has duplicates: {', '.join(duplicates)}.", location)
    return tuple(names)


def keras(name: str, class_names: list[str] | None = None) -> DataSource:
    """One of Keras' built-in datasets (downloaded once into Keras' cache, or read from `--data-dir`)."""
    location = caller_location()
    if name not in KERAS_DATASETS:
        raise DefinitionError(
            f"datasets.keras() knows {', '.join(KERAS_DATASETS)}. Received: {describe(name)}.", location
        )
    known = KERAS_DATASETS[name]
    names = _class_names(class_names, known["classes"], location)
    return DataSource("keras", (("name", name),), names, known["shape"], location)


def sklearn_digits(test_fraction: float = 0.2, split_seed: int = 0) -> DataSource:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits as uint8 pixels (0–16 scaled to 0–255).

    The held-out split is stratified and fixed by `split_seed`, independent of the training seed, so the test
    accuracy of two builds is measured on the same images.
    """
    location = caller_location()
    if not isinstance(test_fraction, float) or not 0 < test_fraction < 1:
        raise DefinitionError(
            f"test_fraction must be a float in (0, 1). Received: {describe(test_fraction)}.", location
        )
    check_seed(split_seed, "sklearn_digits(split_seed=...)", location)
    params = (("test_fraction", test_fraction), ("split_seed", split_seed))
    names = tuple(str(digit) for digit in range(10))
    return DataSource("sklearn_digits", params, names, (8, 8), location)


@dataclass(frozen=True)
class Probed:
    """What a source's files or database say about it at declaration time (None: not asked for)."""

    image_shape: tuple[int, ...] | None = None
    class_names: list[str] | None = None


SourceProbe = Callable[[str, dict[str, Any], Path], Probed]
"""(kind, declared settings, workspace root) -> what the data says; raises DataError. `buildsys.sources.probe`."""


@dataclass(frozen=True)
class Declaring:
    """What the workspace running a definition lends it: its root (relative paths resolve there) and its probe."""

    root: Path
    probe: SourceProbe


_declaring: contextvars.ContextVar[Declaring | None] = contextvars.ContextVar("buildsys_declaring", default=None)


@contextmanager
def declaring(root: Path, probe: SourceProbe) -> Iterator[None]:
    """Runs the definitions of the workspace at `root` with `probe` answering their sources' questions."""
    token = _declaring.set(Declaring(root, probe))
    try:
        yield
    finally:
        _declaring.reset(token)


def _context(function: str, location: Location | None) -> Declaring:
    context = _declaring.get()
    if context is None:
        raise DefinitionError(
            f"datasets.{function}() reads its data's files or database when declared, which only a workspace "
            "loading its definitions can do (buildsys.workspace.Workspace)",
            location,
        )
    return context


def _probe(context: Declaring, kind: str, params: dict[str, Any], what: str, location: Location | None) -> Probed:
    """Asks the workspace's probe about a source; its DataError becomes a DefinitionError at the declaring line."""
    try:
        return context.probe(kind, params, context.root)
    except DataError as error:
        raise DefinitionError(f"{what}: {error}.", location) from None


def image_shape(size: tuple[int, int], color_mode: str) -> tuple[int, ...]:
    """The array shape of an image of `size` (height, width): `(H, W)` for grayscale, `(H, W, 3)` for RGB."""
    return tuple(size) if color_mode == "grayscale" else (*size, 3)


def _check_size(size: Any, argument: str, location: Location | None) -> tuple[int, ...]:
    if not (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DefinitionError(
            f"{argument} expects (height, width) as positive ints. Received: {describe(size)}.", location
        )
    return tuple(size)


def image_folder(
    path: str,
    image_size: tuple[int, int],
    color_mode: str = "rgb",
    split: float | str = 0.2,
    split_seed: int = 0,
    class_names: list[str] | None = None,
    stream: bool = False,
) -> DataSource:
    """Images in one sub-folder per class (the folder's name is the class name): PNG, JPEG or BMP.

    Every image is converted to `color_mode` ("grayscale" or "rgb") and resized to `image_size` (height, width).
    `split` is the test fraction, drawn per class with `split_seed`, or "folders" for separate `train/` and `test/`
    trees. A relative `path` is relative to the workspace root; a URL (`s3://bucket/images`, `gs://...`) is read
    from object storage through fsspec (s3fs or gcsfs installed). Class names default to the sub-folders, sorted.
    `stream=True` decodes the training images again on every epoch instead of holding them, for a folder larger
    than memory (the test split is held either way).

    Example:
        `datasets.image_folder("data/flowers", image_size=(64, 64), color_mode="rgb", split=0.2)`
    """
    location = caller_location()
    if not isinstance(path, str) or not path:
        raise DefinitionError(f"image_folder(path=...) expects a folder path. Received: {describe(path)}.", location)
    size = _check_size(image_size, "image_folder(image_size=...)", location)
    if color_mode not in COLOR_MODES:
        raise DefinitionError(
            f"image_folder(color_mode=...) expects one of {', '.join(COLOR_MODES)}. Received: {describe(color_mode)}.",
            location,
        )
    if split != "folders" and not (isinstance(split, float) and 0 < split < 1):
        raise DefinitionError(
            f'image_folder(split=...) expects a test fraction in (0, 1) or "folders". Received: {describe(split)}.',
            location,
        )
    if not isinstance(stream, bool):
        raise DefinitionError(
            f"image_folder(stream=...) expects True or False. Received: {describe(stream)}.", location
        )
    check_seed(split_seed, "image_folder(split_seed=...)", location)
    context = _context("image_folder", location)
    params = (("path", path), ("image_size", list(size)), ("color_mode", color_mode), ("split", split),
              ("split_seed", split_seed))  # fmt: skip
    if stream:  # only when asked: a folder held in memory is declared as it was before the option existed
        params += (("stream", True),)
    if class_names is None:
        class_names = _probe(context, "image_folder", dict(params), f"image_folder({path!r})", location).class_names
    names = _class_names(class_names, [], location)
    return DataSource("image_folder", params, names, image_shape(size, color_mode), location, context.root)


def npz(path: str, class_names: list[str] | None = None) -> DataSource:
    """A NumPy `.npz` file with `x_train`, `y_train`, `x_test`, `y_test` (read with allow_pickle=False).

    Images are uint8 shaped (N, H, W) or (N, H, W, C). Class names come from `class_names`, else from a
    `class_names` string array in the file, else are "0", "1", ... up to the largest label. A relative `path` is
    relative to the workspace root.
    """
    location = caller_location()
    if not isinstance(path, str) or not path:
        raise DefinitionError(f"npz(path=...) expects a file path. Received: {describe(path)}.", location)
    context = _context("npz", location)
    params = (("path", path),)
    found = _probe(context, "npz", dict(params), f"npz({path!r})", location)
    names = _class_names(class_names, found.class_names, location)
    return DataSource("npz", params, names, found.image_shape, location, context.root)


def sql(
    url: str,
    query_train: str,
    query_test: str,
    image_column: str,
    label_column: str,
    class_names_query: str | None = None,
    *,
    image_shape: tuple[int, ...],
    class_names: list[str] | None = None,
    image_format: str = "auto",
    id_column: str | None = None,
    chunk_size: int = 1024,
    checksum_query: str | None = None,
    unsafe_pickle: bool = False,
) -> DataSource:
    """Images and labels from a database through SQLAlchemy (SQLite, MariaDB/MySQL via PyMySQL, ...).

    Each query returns one row per image with `image_column` (PNG/JPEG/BMP bytes, `.npy` bytes, or raw uint8
    pixels shaped `image_shape`) and `label_column` (class index). Training rows are streamed `chunk_size` at a
    time, so a table larger than memory trains in bounded memory; the test split is held in memory.
    `class_names_query` returns one class name per row, in class-index order (or pass `class_names`).
    `${VAR}` in `url` is read from the environment, so passwords stay out of definitions and manifests; a relative
    SQLite path is relative to the workspace root. Pickled cells are refused unless `unsafe_pickle=True`.

    Example:
        `datasets.sql("sqlite:///data/mnist.db", "SELECT img_vector, img_label FROM tf_images WHERE img_use = 1",
        "SELECT img_vector, img_label FROM tf_images WHERE img_use = 2", "img_vector", "img_label",
        class_names_query="SELECT class_name FROM categories ORDER BY class_idx", image_shape=(28, 28))`
    """
    location = caller_location()
    texts = {"url": url, "query_train": query_train, "query_test": query_test, "image_column": image_column,
             "label_column": label_column}  # fmt: skip
    for argument, value in texts.items():
        if not isinstance(value, str) or not value.strip():
            raise DefinitionError(
                f"sql({argument}=...) expects a non-empty string. Received: {describe(value)}.", location
            )
    shape = image_shape
    if not (
        isinstance(shape, tuple | list)
        and len(shape) in (2, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        and (len(shape) == 2 or shape[2] in (1, 3))
    ):
        raise DefinitionError(
            f"sql(image_shape=...) expects (height, width) or (height, width, 1 or 3). Received: {describe(shape)}.",
            location,
        )
    if image_format not in CELL_FORMATS:
        raise DefinitionError(
            f"sql(image_format=...) expects one of {', '.join(CELL_FORMATS)}. Received: {describe(image_format)}.",
            location,
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise DefinitionError(
            f"sql(chunk_size=...) expects a positive int. Received: {describe(chunk_size)}.", location
        )
    if (class_names is None) == (class_names_query is None):
        raise DefinitionError("sql() needs exactly one of class_names_query=... or class_names=[...].", location)
    context = _context("sql", location)
    params = (
        ("url", url),
        ("query_train", query_train),
        ("query_test", query_test),
        ("image_column", image_column),
        ("label_column", label_column),
        ("class_names_query", class_names_query),
        ("image_shape", list(shape)),
        ("image_format", image_format),
        ("id_column", id_column),
        ("chunk_size", chunk_size),
        ("checksum_query", checksum_query),
        ("unsafe_pickle", bool(unsafe_pickle)),
    )
    if class_names is None:
        class_names = _probe(context, "sql", dict(params), "sql(class_names_query=...)", location).class_names
    names = _class_names(class_names, [], location)
    return DataSource("sql", params, names, tuple(shape), location, context.root)
