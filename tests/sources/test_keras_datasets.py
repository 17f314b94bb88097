"""Keras' datasets read offline from --data-dir in their published file formats, with no pickle."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from buildsys.dsl import datasets
from buildsys.errors import DataError
from buildsys.sources import fingerprint, keras_datasets, load


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def empty_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.delenv("BUILDSYS_DATA_DIR", raising=False)
    return tmp_path


def test_fashion_mnist_idx_files(empty_keras_home: Path) -> None:
    rng = np.random.default_rng(0)
    folder = empty_keras_home / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    x_train, x_test = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    y_train, y_test = rng.integers(0, 10, 12), rng.integers(0, 10, 5)
    for name, array in zip(keras_datasets.FASHION_FILES, (x_train, y_train, x_test, y_test), strict=True):
        write_idx(folder / name, array)
    source = datasets.keras("fashion_mnist")
    loaded = load(source, empty_keras_home / "data")
    np.testing.assert_array_equal(loaded.x_train, x_train)
    np.testing.assert_array_equal(loaded.y_test, y_test)
    assert loaded.class_names[0] == "T-shirt/top"
    assert fingerprint(source, empty_keras_home / "data") == fingerprint(source, empty_keras_home / "data")


def test_mnist_npz_is_read_without_pickle(empty_keras_home: Path) -> None:
    folder = empty_keras_home / "data"
    folder.mkdir()
    arrays = {
        "x_train": np.zeros((4, 28, 28), np.uint8),
        "y_train": np.arange(4),
        "x_test": np.ones((2, 28, 28), np.uint8),
        "y_test": np.arange(2),
    }
    np.savez(folder / "mnist.npz", **arrays)
    loaded = load(datasets.keras("mnist"), folder)
    assert loaded.x_train.shape == (4, 28, 28) and loaded.y_test.tolist() == [0, 1]

    np.savez(folder / "mnist.npz", **{**arrays, "x_train": np.array([object()] * 4, dtype=object)})
    with pytest.raises(DataError, match=r"cannot read the mnist files: .*allow_pickle"):
        load(datasets.keras("mnist"), folder)


def test_cifar10_binary_batches(empty_keras_home: Path) -> None:
    folder = empty_keras_home / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in keras_datasets.CIFAR_BIN_FILES:
        labels = rng.integers(0, 10, (3, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        np.concatenate([labels, pixels], axis=1).tofile(folder / name)
    loaded = load(datasets.keras("cifar10"), empty_keras_home / "data")
    assert loaded.x_train.shape == (15, 32, 32, 3) and loaded.x_test.shape == (3, 32, 32, 3)
    record = np.fromfile(folder / "test_batch.bin", dtype=np.uint8)[:3073]
    assert loaded.y_test[0] == record[0]
    np.testing.assert_array_equal(loaded.x_test[0, :, :, 0].reshape(-1), record[1:1025])


def test_missing_dataset_says_what_to_put_where(empty_keras_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras_datasets, "_unreachable", lambda host: None)  # the host answers, the download fails
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    source = datasets.keras("fashion_mnist")
    assert fingerprint(source, empty_keras_home / "nothing") is None
    with pytest.raises(DataError) as caught:
        load(source, empty_keras_home / "nothing")
    message = str(caught.value)
    assert "\n" not in message
    assert "could not be downloaded (network is unreachable)" in message
    assert "train-images-idx3-ubyte.gz" in message and str(empty_keras_home / "nothing") in message
    assert "pass --data-dir" not in message and "named by --data-dir" not in message  # the user passed it


def test_offline_the_hint_comes_before_any_download(
    empty_keras_home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import keras

    def offline(address, timeout):
        raise OSError(101, "Network is unreachable")

    def never(*args, **kwargs):
        raise AssertionError("Keras' loader ran (and printed Downloading...) although the host is unreachable")

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(keras_datasets.socket, "create_connection", offline)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", never)
    with pytest.raises(DataError) as caught:
        load(datasets.keras("mnist"), None)
    assert "could not be downloaded (storage.googleapis.com cannot be reached: Network is unreachable)" in str(
        caught.value
    )
    assert "or into a folder named by --data-dir or $BUILDSYS_DATA_DIR" in str(caught.value)
    captured = capfd.readouterr()
    assert "Downloading" not in captured.out + captured.err
