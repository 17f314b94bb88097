"""Keras' built-in datasets (MNIST, Fashion-MNIST, CIFAR-10), online or offline.

Files are looked for first in the data folder (`--data-dir` or `$BUILDSYS_DATA_DIR`), then in Keras' cache
(`$KERAS_HOME/datasets`, default `~/.keras/datasets`); when neither has them, Keras downloads them into its cache
with its own checksums. Files found locally are parsed here without pickle: MNIST's `mnist.npz` with
`allow_pickle=False`, Fashion-MNIST's IDX files, CIFAR-10's binary version (`cifar-10-batches-bin/`). Only the
download path for CIFAR-10 goes through Keras' loader, which reads the checksum-verified python version it fetched.
Keras is imported only for a download, through `buildsys.actions.tensorflow()` (TensorFlow's start-up chatter
silenced), and only after the dataset's host answered: offline, the missing-dataset hint comes at once.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
from pathlib import Path

import numpy as np

from buildsys.cache import DigestMemo
from buildsys.dsl.datasets import DataSource
from buildsys.errors import DataError, one_line
from buildsys.sources.records import Dataset

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_BIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
KERAS_PYTHON_CIFAR = "cifar-10-batches-py-target/cifar-10-batches-py"  # what Keras' loader downloads and reads
CIFAR_PY_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

# Where each dataset's files sit relative to a data folder or to Keras' cache, in order of preference.
LAYOUTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "mnist": [("", ("mnist.npz",))],
    "fashion_mnist": [("fashion-mnist", FASHION_FILES), ("", FASHION_FILES)],
    "cifar10": [
        ("cifar-10-batches-bin", CIFAR_BIN_FILES),
        ("cifar-10-batches-py-target/cifar-10-batches-py", CIFAR_PY_FILES),
    ],
}
WHERE_TO_GET = {
    "mnist": "mnist.npz (from storage.googleapis.com/tensorflow/tf-keras-datasets/)",
    "fashion_mnist": "fashion-mnist/{" + ",".join(FASHION_FILES) + "} (from the Fashion-MNIST release)",
    "cifar10": "cifar-10-batches-bin/ (unpack cifar-10-binary.tar.gz from www.cs.toronto.edu/~kriz/cifar.html)",
}


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def data_dir_from_environment(data_dir: Path | None) -> Path | None:
    if data_dir is not None:
        return data_dir
    value = os.environ.get("BUILDSYS_DATA_DIR")
    return Path(value) if value else None


def _locate(name: str, data_dir: Path | None) -> tuple[str, list[Path]] | None:
    """The first complete set of files for `name`: (layout folder, paths)."""
    roots = [root for root in (data_dir_from_environment(data_dir), keras_cache_dir()) if root is not None]
    for root in roots:
        for folder, files in LAYOUTS[name]:
            paths = [root / folder / file for file in files]
            if all(path.is_file() for path in paths):
                return folder, paths
    return None


def fingerprint(source: DataSource, data_dir: Path | None, memo_dir: Path | None = None) -> str | None:
    """sha256 over the dataset's file names and contents when they are here; None when they still have to be
    downloaded. Where the files were found (data folder or Keras' cache) does not matter."""
    found = _locate(dict(source.params)["name"], data_dir)
    if found is None:
        return None
    memo = DigestMemo(found[1][0].parent, memo_dir)
    digest = hashlib.sha256()
    for path in found[1]:
        digest.update(f"{path.name}\0{memo.digest(path)}\n".encode())
    memo.save()
    return digest.hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST family's format): magic, dimensions, then uint8 values."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: holds {body.size} values, its header says {dims}")
    return body.reshape(dims)


def _read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch: records of 1 label byte and 3,072 pixel bytes (channels first)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise DataError(f"{path}: size {raw.size} is not a whole number of 3,073-byte CIFAR-10 records")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0].astype(np.int64)


def _from_files(name: str, folder: str, paths: list[Path]) -> tuple[np.ndarray, ...]:
    if name == "mnist":
        with np.load(paths[0], allow_pickle=False) as arrays:
            return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    if name == "fashion_mnist":
        x_train, y_train, x_test, y_test = (_read_idx(path) for path in paths)
        return x_train, y_train, x_test, y_test
    batches = [_read_cifar_binary(path) for path in paths]
    train = batches[:5]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), *batches[5])


# Where Keras' loaders download each dataset from, for a quick reachability check before they print `Downloading`.
ORIGIN_HOSTS = {"mnist": "storage.googleapis.com", "fashion_mnist": "storage.googleapis.com",
                "cifar10": "www.cs.toronto.edu"}  # fmt: skip


def _unreachable(host: str) -> str | None:
    """Why `host` cannot be reached over HTTPS (None when it can, or when a proxy decides).

    Checked before Keras' loader runs so that an offline machine gets the one-line hint at once, instead of Keras'
    `Downloading data from ...` followed by a failure.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as error:
        return f"{host} cannot be reached: {error.strerror or error}"
    return None


def _missing(name: str, data_dir: Path | None, reason: str) -> DataError:
    """The missing-dataset error: what to put where, and `--data-dir` only for a user who did not pass it."""
    if data_dir is not None:
        where = f"{data_dir} (the --data-dir folder)"
    elif os.environ.get("BUILDSYS_DATA_DIR"):
        where = f"{os.environ['BUILDSYS_DATA_DIR']} ($BUILDSYS_DATA_DIR)"
    else:
        where = f"{keras_cache_dir()} (or into a folder named by --data-dir or $BUILDSYS_DATA_DIR)"
    return DataError(
        f"dataset {name!r} is not on this machine and could not be downloaded ({reason}); "
        f"put {WHERE_TO_GET[name]} into {where}"
    )


def _download(name: str, data_dir: Path | None) -> tuple[np.ndarray, ...]:
    """Keras' own loader: its cache, or a checksum-verified download; one line on failure."""
    reason = _unreachable(ORIGIN_HOSTS[name])
    if reason is not None:
        raise _missing(name, data_dir, reason)
    from buildsys.actions import tensorflow

    tensorflow()
    import keras

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
              "cifar10": keras.datasets.cifar10}[name]  # fmt: skip
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # a failed download: say what to put where instead of a traceback
        raise _missing(name, data_dir, one_line(error)) from None
    return x_train, y_train.reshape(-1), x_test, y_test.reshape(-1)


def load(source: DataSource, data_dir: Path | None) -> Dataset:
    name = dict(source.params)["name"]
    found = _locate(name, data_dir)
    if found is None or found[0] == KERAS_PYTHON_CIFAR:
        arrays = _download(name, data_dir)
    else:
        try:
            arrays = _from_files(name, *found)
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise DataError(f"{found[1][0].parent}: cannot read the {name} files: {error}") from None
    x_train, y_train, x_test, y_test = arrays
    origin = f"keras dataset {name}" + (f" ({found[1][0].parent})" if found else "")
    return Dataset(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), source.class_names, origin)
