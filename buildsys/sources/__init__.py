"""Data sources: where a declared dataset's images come from, and what fingerprints their content.

`fingerprint` must stay cheap and TensorFlow-free: the no-op build path calls it. `load` may import heavy
libraries; it returns plain NumPy arrays (`Dataset`), or for SQL sources and streamed image folders a
`StreamingDataset` whose training rows are read chunk by chunk on every pass (both defined in `records`, which
every source module shares); `buildsys.actions.data` checks either and turns it into `tf.data`.
`reader` opens any declared source batch by batch (`records.Reader`) for import, inspection and prediction.
`probe` answers what a declaration needs from its files or database (the workspace lends it to the definitions
it runs, `buildsys.dsl.datasets.declaring`). Each file or database kind is one module here (`KINDS`), imported
when first used.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from buildsys.dsl.datasets import DataSource, Probed
from buildsys.sources.records import Dataset, StreamingDataset

if TYPE_CHECKING:
    from buildsys.sources.records import Reader

# The kinds read from files or a database, each by its module here: `probe`, `fingerprint`, `source_reader`.
KINDS = ("image_folder", "npz", "sql")


def fingerprint(source: DataSource, data_dir: Path | None, memo_dir: Path | None = None) -> str | None:
    """A digest of the source's content, or None when the content is not on this machine yet.

    None means the build cannot be up to date (its data has to be fetched first); the key is computed again
    once the data is loaded. Files are digested by content, so a copy of a workspace on another machine has the
    same fingerprints; `memo_dir` (`build-out/digests/`) remembers the digests of unchanged files
    (`buildsys.cache.DigestMemo`), so that only a changed file is read again.
    """
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.fingerprint(source)
    if source.kind == "sql":
        return _module("sql").fingerprint(source)
    if source.kind in ("image_folder", "npz"):
        return _module(source.kind).fingerprint(source, memo_dir)
    from buildsys.sources import keras_datasets

    return keras_datasets.fingerprint(source, data_dir, memo_dir)


def _module(kind: str) -> ModuleType:
    """The module that probes, reads and fingerprints a file or database source of `kind`, imported on first use
    (SQL's brings SQLAlchemy)."""
    from buildsys.sources import image_folder, npz, sql

    return {"image_folder": image_folder, "npz": npz, "sql": sql}[kind]


def probe(kind: str, params: dict[str, Any], base_dir: Path) -> Probed:
    """What a file or database source's data says while its definition is declared (`dsl.datasets.SourceProbe`).

    Raises:
        DataError: for a missing or unreadable file, folder or database.
    """
    return _module(kind).probe(params, base_dir)


def reader(source: DataSource, data_dir: Path | None) -> Reader:
    """The declared source opened batch by batch; built-in datasets are loaded and wrapped."""
    if source.kind in KINDS:
        return _module(source.kind).source_reader(source)
    from buildsys.sources.records import ArrayReader

    dataset = load(source, data_dir)
    arrays = {"train": (dataset.x_train, dataset.y_train), "test": (dataset.x_test, dataset.y_test)}
    return ArrayReader(f"{source.kind} dataset", arrays, source.class_names)


def load(source: DataSource, data_dir: Path | None) -> Dataset | StreamingDataset:
    """Loads the source; raises `DataError` with one line saying what is missing or wrong.

    SQL sources, and image folders declared with `stream=True`, stream their training rows (`StreamingDataset`);
    other files are read into memory.
    """
    if source.kind in ("sql", "image_folder"):
        return _module(source.kind).load(source)
    if source.kind == "npz":
        from buildsys.sources.records import read_all

        opened = _module(source.kind).source_reader(source)
        x_train, y_train = read_all(opened, "train")
        x_test, y_test = read_all(opened, "test")
        return Dataset(x_train, y_train, x_test, y_test, source.class_names, opened.description)
    if source.kind == "sklearn_digits":
        from buildsys.sources import sklearn_digits

        return sklearn_digits.load(source)
    from buildsys.sources import keras_datasets

    return keras_datasets.load(source, data_dir)
