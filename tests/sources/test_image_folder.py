"""Image folders: class sub-folders, PNG/JPEG/BMP resized on load, seeded ratio or train/test splits, fingerprint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from buildsys import sources
from buildsys.errors import DefinitionError
from buildsys.workspace import Workspace
from tests.conftest import write_definition
from tests.data_helpers import CLASS_NAMES, digits, write_folder

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="folders",
        data=datasets.image_folder("data/digits", image_size=(16, 12), color_mode="{mode}", split={split}),
        inputs=image_input("image", shape={shape}),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
"""


def declare(root: Path, mode: str = "grayscale", split: str = "0.25", shape: str = "(16, 12)"):
    write_definition(root, "folders.py", DEFINITION.format(mode=mode, split=split, shape=shape))
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
