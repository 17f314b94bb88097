"""Data files and cells from outside, fuzzed: image files and database cells (PNG, JPEG, BMP, .npy, raw pixels),
`.npz` sources, and whole SQLite tables (cells, labels, class names), valid ones mutated byte by byte and
structurally. Every input decodes to what its declaration says
or is refused with one `DataError` line naming it; nothing else escapes. Bounded here; `bench/fuzz_data.py` runs
the same checks for 10,000+ examples each."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from buildsys.errors import DataError
from buildsys.sources import npz
from buildsys.sources.images import decode_cell, encode_npy, encode_png, read_image_file
from buildsys.sources.records import read_all
from tests.conftest import fuzz_settings
from tests.data_helpers import CLASS_NAMES, sql_definition

SHAPES = ((8, 8), (8, 8, 1), (6, 5, 3))
FUZZ = fuzz_settings(250)


def _encoded(pixels: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    if kind == "png":
        return encode_png(pixels)
    if kind == "npy":
        return encode_npy(pixels)
    if kind == "raw":
        return pixels.tobytes()
    buffer = io.BytesIO()
    array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    Image.fromarray(array).save(buffer, format={"jpeg": "JPEG", "bmp": "BMP"}[kind])
    return buffer.getvalue()


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` cut short, with bytes overwritten, inserted or deleted, or spliced with itself."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite" and data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def image_bytes(draw: st.DrawFn) -> tuple[bytes, tuple[int, ...]]:
    """Bytes of a small image in any stored format (valid or mutated, or not an image at all), and a shape."""
    shape = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    kind = draw(st.sampled_from(["png", "jpeg", "bmp", "npy", "raw"]))
    valid = _encoded(pixels, kind)
    choice = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "magic", "random"]))
    if choice == "valid":
        return valid, shape
    if choice == "mutated":
        return draw(mutated(valid)), shape
    magic = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"\x93NUMPY", b"\x80\x04"]))
    if choice == "magic":
        return magic + draw(st.binary(max_size=200)), shape
    return draw(st.binary(max_size=300)), shape


def _refused_in_one_line(error: DataError, where: str) -> None:
    message = str(error)
    assert message.startswith(where) and "\n" not in message, message


@FUZZ
@given(image_bytes(), st.sampled_from(["auto", "png", "jpeg", "bmp", "npy", "raw"]))
def test_any_stored_cell_decodes_to_its_declared_shape_or_is_one_data_error(
    cell: tuple[bytes, tuple[int, ...]], cell_format: str
) -> None:
    data, shape = cell
    try:
        pixels = decode_cell(data, shape=shape, cell_format=cell_format, where="images.pixels row 7")
    except DataError as error:
        _refused_in_one_line(error, "images.pixels row 7")
        return
    assert pixels.shape == shape and pixels.dtype == np.uint8


@FUZZ
@given(image_bytes(), st.sampled_from([None, (8, 8), (3, 11)]), st.sampled_from([None, "grayscale", "rgb"]))
def test_any_image_file_decodes_or_is_one_data_error_naming_it(
    cell: tuple[bytes, tuple[int, ...]], size: tuple[int, int] | None, color_mode: str | None
) -> None:
    data, _ = cell
    try:
        pixels = read_image_file("s3://bucket/images/cat/001.png", size, color_mode, data)
    except DataError as error:
        _refused_in_one_line(error, "s3://bucket/images/cat/001.png: ")
        return
    assert pixels.dtype == np.uint8 and pixels.ndim in (2, 3)
    if size is not None:
        assert pixels.shape[:2] == size
    if color_mode is not None:
        assert (pixels.ndim == 3) == (color_mode == "rgb")


def test_an_image_that_claims_billions_of_pixels_is_refused_without_decoding_it() -> None:
    """A PNG header of 100,000 × 100,000 pixels (Pillow's decompression-bomb check) is a DataError, not an
    exception of Pillow's own."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(DataError, match=r"^huge\.png: cannot decode the image \(.*pixels.*\)$"):
        read_image_file("huge.png", (8, 8), "grayscale", data)


ARRAY_KINDS = ("uint8", "float32", "float64", "int64", "bool", "str", "object", "complex", "huge")


def _array(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "huge":  # labels of a damaged file: class names "0".."N" must not be made for them
        return np.full(shape, 2**62, np.int64)
    if kind == "object":
        return np.empty(shape, dtype=object)
    if kind == "str":
        return np.full(shape, "x")
    if kind == "complex":
        return np.zeros(shape, np.complex64)
    return rng.integers(0, 12, size=shape).astype(kind)


@st.composite
def npz_bytes(draw: st.DrawFn) -> bytes:
    """An `.npz` file: the four arrays (and maybe class names) of assorted dtypes and shapes, some missing or
    extra, saved as NumPy saves them; then maybe mutated byte by byte."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays: dict[str, Any] = {}
    for name in ("x_train", "y_train", "x_test", "y_test", "class_names"):
        presence = draw(st.sampled_from(["usual", "usual", "usual", "odd", "missing"]))
        if presence == "missing" or (name == "class_names" and presence == "usual"):
            continue
        rows = draw(st.integers(0, 5))
        usual = name.startswith("x_") and ("uint8", (rows, 8, 8)) or ("int64", (rows,))
        if name == "class_names":
            usual = ("str", (draw(st.integers(0, 13)),))
        if presence == "odd":
            kind = draw(st.sampled_from(ARRAY_KINDS))
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        else:
            kind, shape = usual
        arrays[name] = _array(kind, shape, rng)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    return draw(mutated(data)) if draw(st.booleans()) else data


@FUZZ
@given(npz_bytes())
def test_any_npz_file_loads_as_its_declaration_says_or_is_one_data_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(data)
    try:
        shape, class_names = npz.describe(path)
        reader = npz.open_npz(path)
        splits = {split: read_all(reader, split) for split in ("train", "test")}
    except DataError as error:
        _refused_in_one_line(error, str(path))
        return
    assert len(shape) in (2, 3) and class_names and all(isinstance(name, str) for name in class_names)
    for images, labels in splits.values():
        assert images.shape[1:] == shape and len(images) == len(labels) and labels.dtype == np.int64


def test_a_zip_member_cut_short_is_one_data_error(tmp_path: Path) -> None:
    """A member whose compressed bytes end early (a copy interrupted mid-file) is refused, naming the file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64),
                        x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, np.int64))  # fmt: skip
    with zipfile.ZipFile(buffer) as archive:
        info = archive.getinfo("y_test.npy")
    data = bytearray(buffer.getvalue())
    start = info.header_offset + 30 + len(info.filename)
    data[start : start + info.compress_size] = bytes(info.compress_size)  # the member's deflate stream zeroed
    path = tmp_path / "cut.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        npz.open_npz(path)
    _refused_in_one_line(caught.value, str(path))


CELL_VALUES = st.one_of(
    image_bytes().map(lambda cell: cell[0]),
    st.sampled_from([None, 0, -3, 2.5, "text", b"", "\x89PNG"]),
)
LABEL_VALUES = st.sampled_from([0, 1, 2, 9, -1, 10, 2**63 - 1, None, 1.5, "2", "two", b"\x01"])
VALID_PNG = encode_png(np.zeros((8, 8), np.uint8))
NAME_VALUES = st.sampled_from(["a", "b", "c", "", None, 7, "a", b"x", "é" * 40])


@FUZZ
@given(
    cells=st.lists(st.tuples(CELL_VALUES, LABEL_VALUES), min_size=0, max_size=12),
    names=st.lists(NAME_VALUES, min_size=0, max_size=4) | st.just(CLASS_NAMES),
)
@example(cells=[(VALID_PNG, 0), (VALID_PNG, None)], names=CLASS_NAMES)  # a NULL label was a TypeError
def test_any_sql_table_trains_as_declared_or_is_one_error(
    workspace: Path, cells: list[tuple[Any, Any]], names: list[Any]
) -> None:
    """A SQLite table of fuzzed cells and labels, and fuzzed class names: the definition loads and every
    streamed training chunk and the test split check out, or one line says what is wrong and where (the
    definition's line, or the database and rows)."""
    import sqlite3

    from buildsys import sources
    from buildsys.actions.data import check_and_split
    from buildsys.errors import DefinitionError
    from buildsys.workspace import Workspace
    from tests.conftest import write_definition

    rows = [(VALID_PNG, 0), (VALID_PNG, 1)] + cells  # at least one test row (every third) and training rows
    # A new file each example: the process keeps one pooled engine per URL, which would go on reading a replaced file.
    (workspace / "data").mkdir(exist_ok=True)
    database = workspace / "data" / f"images-{len(list((workspace / 'data').iterdir()))}.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE images (id INTEGER, pixels BLOB, label, part TEXT)")
        connection.execute("CREATE TABLE cats (idx INTEGER, name)")
        connection.executemany(
            "INSERT INTO images VALUES (?, ?, ?, ?)",
            [(row, cell, label, "test" if row % 3 == 0 else "train") for row, (cell, label) in enumerate(rows)],
        )
        connection.executemany("INSERT INTO cats VALUES (?, ?)", list(enumerate(names or CLASS_NAMES)))
    connection.close()
    url = f"sqlite:///data/{database.name}"
    write_definition(workspace, "fuzzed.py", sql_definition(url, name="fuzzed", epochs=1, extra="chunk_size=4,"))
    try:
        spec = Workspace(workspace).targets["//model_defs:fuzzed"].spec
        splits = check_and_split(sources.load(spec.data, None), spec, spec.train.seed)
        for validation in (False, True):
            for images, labels in splits.rows(validation):
                assert images.shape[1:] == (8, 8) and images.dtype == np.uint8 and labels.dtype == np.int64
    except (DefinitionError, DataError) as error:
        assert "\n" not in str(error), error
        return
    assert len(splits.x_test) == len(splits.y_test) > 0


def test_labels_that_imply_millions_of_classes_are_refused_before_naming_them(tmp_path: Path) -> None:
    """Without a class_names array the labels imply "0".."N": a damaged label of 2**62 must not make that list."""
    path = tmp_path / "damaged.npz"
    images = np.zeros((2, 8, 8), np.uint8)
    np.savez(path, x_train=images, y_train=np.array([0, 2**62]), x_test=images, y_test=np.array([0, 1]))
    with pytest.raises(DataError, match=r"the labels run up to 4611686018427387904, which would imply .* classes"):
        npz.describe(path)
