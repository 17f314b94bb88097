"""Image folders: class sub-folders, PNG/JPEG/BMP resized on load, seeded ratio or train/test splits, fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from buildsys import sources
from buildsys.cli import main
from buildsys.errors import DataError, DefinitionError
from buildsys.sources import image_folder
from buildsys.sources.images import encode_png
from buildsys.sources.records import StreamingDataset
from buildsys.workspace import Workspace
from tests.conftest import write_definition
from tests.data_helpers import CLASS_NAMES, ONE_EPOCH_MEMORY, digits, upload, write_folder
from tests.remote.gcs import gcs_server  # noqa: F401 - fixture
from tests.remote.s3 import BUCKET, s3  # noqa: F401 - fixture

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="folders",
        data=datasets.image_folder("{path}", image_size=(16, 12), color_mode="{mode}", split={split}{extra}),
        inputs=image_input("image", shape={shape}),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
"""


def declare(
    root: Path,
    mode: str = "grayscale",
    split: str = "0.25",
    shape: str = "(16, 12)",
    extra: str = "",
    path: str = "data/digits",
):
    definition = DEFINITION.format(mode=mode, split=split, shape=shape, extra=extra, path=path)
    write_definition(root, "folders.py", definition)
    return Workspace(root).targets["//model_defs:folders"].spec.data


def test_classes_come_from_sub_folders_and_images_are_resized(workspace: Path) -> None:
    images, labels = digits(200)
    write_folder(workspace / "data" / "digits", images, labels, suffixes=(".png", ".jpg", ".bmp"))
    source = declare(workspace)
    assert source.class_names == tuple(CLASS_NAMES) and source.image_shape == (16, 12)
    dataset = sources.load(source, None)
    assert dataset.x_train.shape[1:] == (16, 12) and dataset.x_train.dtype == np.uint8
    assert len(dataset.x_train) + len(dataset.x_test) == 200
    per_class = np.bincount(labels, minlength=10)
    np.testing.assert_array_equal(np.bincount(dataset.y_test, minlength=10), np.round(per_class * 0.25))
    again = sources.load(declare(workspace), None)
    np.testing.assert_array_equal(dataset.x_test, again.x_test)  # the split is seeded

    rgb = sources.load(declare(workspace, mode="rgb", shape="(16, 12, 3)"), None)
    assert rgb.x_train.shape[1:] == (16, 12, 3)


def test_separate_train_and_test_trees(workspace: Path) -> None:
    images, labels = digits(60)
    write_folder(workspace / "data" / "digits" / "train", images[:40], labels[:40])
    write_folder(workspace / "data" / "digits" / "test", images[40:], labels[40:])
    dataset = sources.load(declare(workspace, split='"folders"'), None)
    assert (len(dataset.x_train), len(dataset.x_test)) == (40, 20)
    np.testing.assert_array_equal(np.sort(dataset.y_test), np.sort(labels[40:]))


def test_fingerprint_covers_names_and_content_but_not_mtimes(workspace: Path) -> None:
    images, labels = digits(30)
    folder = write_folder(workspace / "data" / "digits", images, labels)
    source = declare(workspace)
    first = sources.fingerprint(source, None)
    assert first == sources.fingerprint(source, None)
    some_file = next((folder / CLASS_NAMES[0]).iterdir())
    os.utime(some_file, ns=(1, 1))
    assert sources.fingerprint(source, None) == first  # touched, or copied to another machine: the same content
    some_file.rename(some_file.with_name("renamed.png"))
    renamed = sources.fingerprint(source, None)
    assert renamed != first
    (folder / CLASS_NAMES[1] / "renamed.png").write_bytes((folder / CLASS_NAMES[0] / "renamed.png").read_bytes())
    assert sources.fingerprint(source, None) not in (first, renamed)


def test_a_missing_folder_names_the_definition_line(workspace: Path) -> None:
    with pytest.raises(DefinitionError, match=r"folders.py:\d+: image_folder\('data/digits'\): .* is not a folder"):
        declare(workspace)


def _rows(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted(zip((image.tobytes() for image in images), labels.tolist(), strict=True))


def test_a_streamed_folder_decodes_its_training_images_on_every_pass_in_one_mixed_order(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = digits(200)
    write_folder(workspace / "data" / "digits", images, labels)
    held = sources.load(declare(workspace), None)
    source = declare(workspace, extra=", stream=True")
    assert source.params[-1] == ("stream", True)
    assert sources.fingerprint(source, None) != sources.fingerprint(declare(workspace), None)
    monkeypatch.setattr(image_folder, "STREAM_CHUNK", 32)
    streamed = sources.load(source, None)
    assert isinstance(streamed, StreamingDataset) and streamed.train_size == len(held.x_train)
    np.testing.assert_array_equal(streamed.x_test, held.x_test)  # the same split, held in memory
    passes = [list(streamed.train_chunks()) for _ in range(2)]
    assert [len(chunk[0]) for chunk in passes[0]] == [32] * 4 + [len(held.x_train) - 128]
    for first, second in zip(*passes, strict=True):  # every pass decodes the same images in the same order
        np.testing.assert_array_equal(first[0], second[0])
    train = np.concatenate([chunk[0] for chunk in passes[0]]), np.concatenate([chunk[1] for chunk in passes[0]])
    assert _rows(*train) == _rows(held.x_train, held.y_train)
    assert len(set(passes[0][0][1].tolist())) > 5  # the classes interleave: a shuffle buffer can mix them


def test_a_folder_too_large_to_hold_says_how_to_stream_it(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = digits(40)
    write_folder(workspace / "data" / "digits", images, labels)
    monkeypatch.setattr(image_folder, "MEMORY_SHARE", 1e-12)
    with pytest.raises(DataError) as caught:
        sources.load(declare(workspace), None)
    message = str(caught.value)
    assert message.startswith(f"image folder {workspace / 'data' / 'digits'}: its 40 images decode to 0.0 GB")
    assert message.endswith("declare image_folder(..., stream=True) to decode the training images on every epoch "
                            "instead of holding them") and "\n" not in message  # fmt: skip
    assert isinstance(sources.load(declare(workspace, extra=", stream=True"), None), StreamingDataset)


def test_stream_must_be_a_boolean(workspace: Path) -> None:
    write_folder(workspace / "data" / "digits", *digits(20))
    with pytest.raises(DefinitionError, match=r"folders.py:\d+: image_folder\(stream=...\) expects True or False"):
        declare(workspace, extra=", stream='yes'")


@pytest.mark.slow
def test_a_streamed_folder_builds(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digits(300)
    write_folder(workspace / "data" / "digits", images, labels)
    declare(workspace, extra=", stream=True")
    assert main(["build", "folders", "--workspace", str(workspace), "--quiet"]) == 0
    manifest = (workspace / "build-out" / "models" / "folders" / "1" / "manifest.json").read_text()
    assert '"stream": true' in manifest
    assert main(["build", "folders", "--workspace", str(workspace)]) == 0
    assert "up to date (version 1)" in capsys.readouterr().out


BIG_FOLDERS = """
    from buildsys.dsl import *

    for name in ("warm", "big"):
        model(
            name=name,
            data=datasets.image_folder(f"data/{name}", image_size=(32, 32), split=0.05, stream=True),
            inputs=image_input("image", shape=(32, 32, 3)),
            layers=[Flatten(), Dense(10, activation="softmax")],
            train=train(epochs=1, batch_size=256, validation_split=0.05, shuffle_buffer=1024),
        )
"""


@pytest.mark.slow
def test_a_streamed_folder_of_40k_images_trains_an_epoch_in_bounded_memory(workspace: Path) -> None:
    rng = np.random.default_rng(0)
    for name, count in (("warm", 300), ("big", 40_000)):
        labels = np.arange(count) % 10
        shades = rng.integers(0, 256, (count, 1, 1, 3), dtype=np.uint8)  # flat colours: small files, same decoding
        write_folder(workspace / "data" / name, np.broadcast_to(shades, (count, 32, 32, 3)), labels)
    write_definition(workspace, "big.py", BIG_FOLDERS)
    result = subprocess.run(
        [sys.executable, "-c", ONE_EPOCH_MEMORY, str(workspace)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    decoded = 40_000 * 32 * 32 * 3  # the folder's images as uint8 pixels: 123 MB
    assert measured["rows"] == 40_000 - 10 * round(4_000 * 0.05)
    # Holding the training images would take all of `decoded` (and tf.data's cache a second copy); what grows is
    # the test split (6 MB), the list of 40,000 file paths, the shuffle buffer and TensorFlow's prefetching.
    assert measured["growth_bytes"] < decoded / 2, measured


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_folder_in_object_storage_reads_as_the_same_folder_on_disk(
    workspace: Path, scheme: str, request: pytest.FixtureRequest
) -> None:
    """Through s3fs against an S3-compatible server and gcsfs against a GCS emulator: the same classes, split,
    order and pixels as on disk, held or streamed; the fingerprint comes from the listing (S3's ETag, GCS's MD5
    and CRC32C) and follows each object's content."""
    import fsspec

    request.getfixturevalue("s3" if scheme == "s3" else "gcs_server")
    images, labels = digits(120)
    folder = write_folder(workspace / "data" / "digits", images, labels, suffixes=(".png", ".jpg"))
    url = upload(folder, "datasets/digits", scheme)
    on_disk = sources.load(declare(workspace), None)
    source = declare(workspace, path=url)
    assert source.class_names == tuple(CLASS_NAMES)
    remote = sources.load(source, None)
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(remote, split), getattr(on_disk, split))
    assert remote.origin == f"image folder {url}"

    streamed = sources.load(declare(workspace, path=url, extra=", stream=True"), None)
    assert isinstance(streamed, StreamingDataset)
    np.testing.assert_array_equal(streamed.x_test, on_disk.x_test)
    chunks = list(streamed.train_chunks())
    train = np.concatenate([chunk[0] for chunk in chunks]), np.concatenate([chunk[1] for chunk in chunks])
    assert _rows(*train) == _rows(on_disk.x_train, on_disk.y_train)

    first = sources.fingerprint(source, None)
    assert first == sources.fingerprint(source, None) and first != sources.fingerprint(declare(workspace), None)
    some_object = f"{BUCKET}/datasets/digits/{CLASS_NAMES[3]}/00003.png"
    fsspec.filesystem(scheme).pipe_file(some_object, (folder / CLASS_NAMES[0] / "00000.png").read_bytes())
    assert sources.fingerprint(source, None) != first


@pytest.mark.usefixtures("s3")
def test_train_and_test_trees_in_object_storage(workspace: Path) -> None:
    images, labels = digits(60)
    write_folder(workspace / "data" / "digits" / "train", images[:40], labels[:40])
    write_folder(workspace / "data" / "digits" / "test", images[40:], labels[40:])
    url = upload(workspace / "data" / "digits", "trees")
    on_disk = sources.load(declare(workspace, split='"folders"'), None)
    # s3a://, Hadoop's spelling (what Spark's executors read), names the same folder.
    for spelling in (url, url.replace("s3://", "s3a://")):
        remote = sources.load(declare(workspace, split='"folders"', path=spelling), None)
        for split in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(remote, split), getattr(on_disk, split))


@pytest.mark.slow
@pytest.mark.usefixtures("s3")
def test_a_folder_in_object_storage_builds_and_a_changed_object_rebuilds(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command lists the folder once: the definition's class names, the key and the training images come
    from one listing (each `ObjectFolder` lists once, when it is made)."""
    import s3fs

    listed: list[str] = []
    list_folder = image_folder.ObjectFolder.__init__

    def counted(folder: image_folder.ObjectFolder, url: str) -> None:
        listed.append(url)
        list_folder(folder, url)

    monkeypatch.setattr(image_folder.ObjectFolder, "__init__", counted)
    images, labels = digits(100)
    folder = write_folder(workspace / "data" / "digits", images, labels)
    url = upload(folder, "digits")
    declare(workspace, path=url)
    listed.clear()
    assert main(["build", "folders", "--workspace", str(workspace), "--quiet"]) == 0
    assert listed == [url]
    assert main(["build", "folders", "--workspace", str(workspace)]) == 0
    assert "up to date (version 1)" in capsys.readouterr().out
    assert listed == [url, url]
    s3fs.S3FileSystem().pipe_file(f"{BUCKET}/digits/{CLASS_NAMES[1]}/00001.png", encode_png(images[0]))
    assert main(["build", "folders", "--workspace", str(workspace), "--quiet"]) == 0
    assert (workspace / "build-out" / "models" / "folders" / "2" / "manifest.json").is_file()
    assert listed == [url, url, url]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"s3://{BUCKET}/nothing/here", rf"s3://{BUCKET}/nothing/here is not a folder"),
        ("s3://no-such-bucket/images", r"s3://no-such-bucket/images: cannot list it: .*"),
    ],
)
@pytest.mark.usefixtures("s3")
def test_a_folder_in_object_storage_that_cannot_be_read_names_the_definition_line(
    workspace: Path, url: str, message: str
) -> None:
    with pytest.raises(DefinitionError, match=rf"folders.py:\d+: image_folder\('{url}'\): {message}") as caught:
        declare(workspace, path=url)
    assert "\n" not in str(caught.value)
