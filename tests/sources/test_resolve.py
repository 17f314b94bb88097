"""SOURCE texts from the command line (`predict --input`, `data import`, `data inspect`): any text opens a source
or is refused with one line; fuzzed, and the cases the fuzz found."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildsys.errors import BuildsysError
from buildsys.sources.resolve import ImageFormat, open_sources
from buildsys.workspace import Workspace
from tests.conftest import fuzz_settings, write_definition
from tests.data_helpers import digits, write_folder

DIGITS = """
    from buildsys.dsl import *

    model(
        name="digits",
        data=datasets.sklearn_digits(),
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(epochs=1),
    )
"""

PIECES = st.sampled_from(
    ["imgs", "imgs/", "d.npz", "digits", ":digits", "//model_defs:digits", "//model_defs:", "//", "#train", "#test",
     "#", "#x", "*", "**", "*.png", "[", "]", "?", "/", "..", "sqlite:///", "x.db", "mysql://", "hdfs://x", "s3a://b",
     "\x00", " ", "é", "imgs/digit 1", "digit 1/00001.png", "~", ":", "@"]
)  # fmt: skip
FORMATS = st.sampled_from([ImageFormat(), ImageFormat((8, 8), "grayscale"), ImageFormat((4, 4), "rgb")])


@pytest.fixture
def sources_folder(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A workspace holding a target, an image folder and an .npz file, made the current folder (paths on the
    command line are relative to it)."""
    images, labels = digits(20)
    write_folder(workspace / "imgs", images, labels)
    np.savez(workspace / "d.npz", x_train=images[:10], y_train=labels[:10], x_test=images[10:], y_test=labels[10:])
    write_definition(workspace, "digits.py", DIGITS)
    monkeypatch.chdir(workspace)
    return Workspace(workspace)


@fuzz_settings(200)
@given(texts=st.lists(st.lists(PIECES | st.text(max_size=3), max_size=5).map("".join), min_size=1, max_size=2),
       image_format=FORMATS)  # fmt: skip
def test_any_source_text_opens_or_is_refused_in_one_line(
    sources_folder: Workspace, texts: list[str], image_format: ImageFormat
) -> None:
    try:
        opened = open_sources(texts, image_format, sources_folder)
    except BuildsysError as error:
        assert "\n" not in str(error), error
        return
    assert opened.splits


def test_the_fuzz_findings_are_one_line_each(sources_folder: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NUL character (the operating system's ValueError), a database URL whose driver is not installed
    (ModuleNotFoundError), and a file in a folder that cannot be looked at (PermissionError; the tests run as
    root, so the refusal is simulated)."""
    with pytest.raises(BuildsysError, match=r"a source cannot contain a NUL character"):
        open_sources(["\x00imgs/*"], ImageFormat(), sources_folder)
    with pytest.raises(BuildsysError, match=r"its driver MySQLdb is not installed .*mysql\+pymysql://"):
        open_sources(["mysql://user@localhost/images"], ImageFormat(), sources_folder)

    unreadable = sorted((Path("imgs") / "digit 3").iterdir())[0]  # what stat refuses: a link into /proc, say
    is_file = Path.is_file

    def refuse(path: Path) -> bool:
        if path.name == unreadable.name and path.parent.name == unreadable.parent.name:
            raise PermissionError(13, os.strerror(13), str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", refuse)
    with pytest.raises(BuildsysError, match=r"digit 3/\S+\.png: cannot read it \(Permission denied\)$"):
        open_sources(["imgs"], ImageFormat(), sources_folder)
