"""SQL sources: cell formats, the pickle refusal, fingerprints, streaming checks, and training from SQLite/MariaDB."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from buildsys import sources
from buildsys.actions.data import StreamSplits, check_and_split
from buildsys.errors import DataError, DefinitionError
from buildsys.sources.images import decode_cell, encode_npy, encode_png
from buildsys.sources.sql import expand_url, is_database_url, is_filesystem_url, run_query
from buildsys.workspace import Workspace
from tests.conftest import fuzz_settings, run_buildsys, write_definition
from tests.data_helpers import CLASS_NAMES, ONE_EPOCH_MEMORY, digits, sql_definition, url_texts, write_table


def target(root: Path, name: str = "sqldigits"):
    return Workspace(root).targets[f"//model_defs:{name}"]


@pytest.fixture
def sqlite_workspace(workspace: Path) -> Path:
    """A workspace whose definition trains on `data/digits.db` (a relative path, so under the workspace)."""
    (workspace / "data").mkdir()
    images, labels = digits()
    write_table(f"sqlite:///{workspace / 'data' / 'digits.db'}", images, labels)
    write_definition(workspace, "sqldigits.py", sql_definition("sqlite:///data/digits.db"))
    return workspace


def test_cells_decode_from_png_npy_jpeg_and_raw_bytes() -> None:
    images, _ = digits(3)
    image = images[0]
    np.testing.assert_array_equal(decode_cell(encode_png(image), shape=(8, 8)), image)
    np.testing.assert_array_equal(decode_cell(encode_npy(image), shape=(8, 8, 1)), image[..., None])
    np.testing.assert_array_equal(decode_cell(image.tobytes(), shape=(8, 8)), image)
    looks_like_bmp = np.frombuffer(b"BM" + bytes(range(62)), np.uint8).reshape(8, 8)  # raw pixels, not a header
    np.testing.assert_array_equal(decode_cell(looks_like_bmp.tobytes(), shape=(8, 8)), looks_like_bmp)
    rgb = np.repeat(image[..., None], 3, axis=2)
    assert decode_cell(encode_png(rgb), shape=(16, 16, 3)).shape == (16, 16, 3)  # converted and resized
    with pytest.raises(DataError, match=r"row 4: holds 63 bytes|row 4: 63 bytes in no known image format"):
        decode_cell(image.tobytes()[:-1], shape=(8, 8), where="row 4")
    with pytest.raises(DataError, match=r"row 5: image is shaped \(4, 4\); the source declares \(8, 8\)"):
        decode_cell(encode_npy(image[:4, :4]), shape=(8, 8), where="row 5")


def test_npy_object_arrays_are_never_unpickled() -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([None, 1], dtype=object), allow_pickle=True)  # what a careless writer produces
    with pytest.raises(DataError, match="object arrays are refused"):
        decode_cell(buffer.getvalue(), shape=(8, 8))


def test_training_rows_stream_from_sqlite_and_the_test_split_is_in_memory(sqlite_workspace: Path) -> None:
    spec = target(sqlite_workspace).spec
    assert spec.class_names == tuple(CLASS_NAMES)
    dataset = sources.load(spec.data, None)
    assert isinstance(dataset, sources.StreamingDataset) and dataset.train_size == 1437
    splits = check_and_split(dataset, spec, seed=1)
    assert isinstance(splits, StreamSplits) and splits.x_test.shape == (360, 8, 8)
    train = sum(len(images) for images, _ in splits.rows(validation=False))
    held = sum(len(images) for images, _ in splits.rows(validation=True))
    assert (train, held) == (splits.train_size, splits.val_size) and train + held == 1437
    assert 100 < held < 190  # about 10 %, chosen by a seeded hash of the row position
    again = check_and_split(sources.load(spec.data, None), spec, seed=1)
    first = np.concatenate([labels for _, labels in splits.rows(validation=True)])
    np.testing.assert_array_equal(first, np.concatenate([labels for _, labels in again.rows(validation=True)]))


def test_a_bad_label_in_a_streamed_chunk_is_one_line_and_kept_for_the_build(sqlite_workspace: Path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{sqlite_workspace / 'data' / 'digits.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE images SET label = 42 WHERE id = 1201")
    spec = target(sqlite_workspace).spec
    splits = check_and_split(sources.load(spec.data, None), spec, seed=0)
    expected = r"^database sqlite:///\S+digits.db: train rows 0..1023: y_train\[\d+\] is 42, outside 0..9 \(10 class"
    with pytest.raises(DataError, match=expected):
        list(splits.rows(validation=False))
    assert isinstance(splits.failure, DataError)


def test_pickled_cells_are_refused_unless_the_definition_opts_in(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, labels = digits(100)
    write_table(f"sqlite:///{workspace / 'pickled.db'}", images, labels, encode=pickle.dumps)
    write_definition(workspace, "refused.py", sql_definition("sqlite:///pickled.db", name="refused"))
    with pytest.raises(DataError, match=r"pickled Python object; unpickling runs whatever code .* unsafe_pickle=True"):
        sources.load(target(workspace, "refused").spec.data, None)

    write_definition(
        workspace, "refused.py", sql_definition("sqlite:///pickled.db", "trusted", extra="unsafe_pickle=True,")
    )
    with caplog.at_level(logging.WARNING, logger="buildsys"):
        dataset = sources.load(target(workspace, "trusted").spec.data, None)
        chunk, _ = next(dataset.train_chunks())
    assert chunk.shape == (80, 8, 8)
    assert "unsafe_pickle=True" in caplog.text


def test_fingerprint_follows_rows_and_labels(sqlite_workspace: Path) -> None:
    import sqlalchemy as sa

    source = target(sqlite_workspace).spec.data
    first = sources.fingerprint(source, None)
    assert first is not None and first == sources.fingerprint(source, None)
    engine = sa.create_engine(f"sqlite:///{sqlite_workspace / 'data' / 'digits.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE images SET label = 3 WHERE id = 1001 AND label != 3")
    second = sources.fingerprint(source, None)
    assert second != first
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM images WHERE id = 1002")
    assert sources.fingerprint(source, None) not in (first, second)


def test_a_database_file_replaced_at_its_path_is_read_anew(sqlite_workspace: Path) -> None:
    """A tool that writes safely writes a new file and renames it over the old one; a pooled connection would
    go on reading the old file in this process (it did, before SQLite files got a connection per use)."""
    source = target(sqlite_workspace).spec.data
    first = sources.fingerprint(source, None)
    images, labels = digits()
    replacement = sqlite_workspace / "data" / "digits.db.new"
    write_table(f"sqlite:///{replacement}", images[:-1], labels[:-1])
    replacement.replace(sqlite_workspace / "data" / "digits.db")
    assert sources.fingerprint(source, None) != first
    assert run_query("sqlite:///data/digits.db", sqlite_workspace, "SELECT COUNT(*) FROM images") == [
        (len(labels) - 1,)
    ]


def test_url_variables_come_from_the_environment(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = digits(50)
    write_table(f"sqlite:///{workspace / 'env.db'}", images, labels)
    monkeypatch.delenv("BUILDSYS_TEST_DB", raising=False)
    write_definition(workspace, "env.py", sql_definition("sqlite:///${BUILDSYS_TEST_DB}", name="env"))
    with pytest.raises(DefinitionError, match=r"env.py:\d+: .*uses \$\{BUILDSYS_TEST_DB\}, which is not set"):
        Workspace(workspace)
    monkeypatch.setenv("BUILDSYS_TEST_DB", str(workspace / "env.db"))
    assert target(workspace, "env").spec.data.to_json()["url"] == "sqlite:///${BUILDSYS_TEST_DB}"


def test_a_missing_table_fails_the_declaration_with_its_line(workspace: Path) -> None:
    write_definition(workspace, "missing.py", sql_definition("sqlite:///nothing.db", name="missing"))
    with pytest.raises(
        DefinitionError, match=r"missing.py:\d+: sql\(class_names_query=...\): sqlite:///.*no such table"
    ):
        Workspace(workspace)


def _train_and_check(root: Path) -> dict:
    result = run_buildsys("build", "sqldigits", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((root / "build-out" / "models" / "sqldigits" / "1" / "manifest.json").read_text())
    assert manifest["class_names"] == CLASS_NAMES
    assert manifest["data_sizes"]["test"] == 360
    assert manifest["data_sizes"]["train"] + manifest["data_sizes"]["validation"] == 1437
    assert manifest["metrics"]["test"]["accuracy"] >= 0.85
    probe = (
        "import sys\nfrom buildsys.cli import main\ncode = main(['build', 'sqldigits'])\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\nsys.exit(code)\n"
    )
    again = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True)
    assert "up to date (version 1)" in again.stdout, again.stderr  # the fingerprint queries, TensorFlow-free
    assert "tensorflow not imported" in again.stdout
    return manifest


@pytest.mark.slow
def test_training_from_sqlite(sqlite_workspace: Path) -> None:
    _train_and_check(sqlite_workspace)


@pytest.mark.slow
def test_training_from_mariadb(workspace: Path, mariadb: str) -> None:
    images, labels = digits()
    write_table(mariadb, images, labels, encode=encode_png)
    write_definition(workspace, "sqldigits.py", sql_definition(mariadb))
    manifest = _train_and_check(workspace)
    assert manifest["spec"]["data"]["url"] == mariadb


BIG_DEFINITION = """
    from buildsys.dsl import *

    for name, only in (("warm", "AND id < 11000"), ("big", "")):
        model(
            name=name,
            data=datasets.sql(
                "sqlite:///big.db",
                f"SELECT pixels, label FROM images WHERE part = 'train' {only}",
                "SELECT pixels, label FROM images WHERE part = 'test'",
                "pixels", "label", class_names=[str(d) for d in range(10)], image_shape=(28, 28), chunk_size=2048,
            ),
            inputs=image_input("image", shape=(28, 28)),
            layers=[Flatten(), Dense(10, activation="softmax")],
            train=train(epochs=1, batch_size=256, validation_split=0.05),
        )
"""


@pytest.mark.slow
def test_a_table_of_200k_images_trains_an_epoch_in_bounded_memory(workspace: Path) -> None:
    import sqlite3

    rows, pixels = 200_000, 28 * 28
    connection = sqlite3.connect(workspace / "big.db")
    connection.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, pixels BLOB, label INTEGER, part TEXT)")
    rng = np.random.default_rng(0)
    for start in range(0, rows, 20_000):
        labels = rng.integers(0, 10, 20_000)
        images = rng.integers(0, 256, (20_000, pixels), dtype=np.uint8)
        cells = ((start + i, images[i].tobytes(), int(labels[i]), "test" if start + i < 1000 else "train")
                 for i in range(20_000))  # fmt: skip
        connection.executemany("INSERT INTO images VALUES (?, ?, ?, ?)", cells)
    connection.commit()
    connection.close()
    write_definition(workspace, "big.py", BIG_DEFINITION)
    result = subprocess.run(
        [sys.executable, "-c", ONE_EPOCH_MEMORY, str(workspace)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    decoded = (rows - 1000) * pixels  # the training table as uint8 pixels: 155 MB
    assert measured["rows"] == rows - 1000
    assert measured["growth_bytes"] < decoded / 3, measured


PASSWORD = "p@ss/w%rd@evil.example:1/x?y=z"  # every character that ends a URL field


def test_url_variables_fill_each_field_without_being_parsed_as_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.sources.sql import expand_url, shown

    monkeypatch.setenv("BUILDSYS_TEST_PASSWORD", PASSWORD)
    monkeypatch.setenv("BUILDSYS_TEST_PORT", "3307")
    url = expand_url("mysql+pymysql://reader:${BUILDSYS_TEST_PASSWORD}@db.example:${BUILDSYS_TEST_PORT}/images")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "reader", PASSWORD, "db.example", 3307, "images"
    )  # fmt: skip
    assert shown(url) == "mysql+pymysql://reader:***@db.example:3307/images"
    monkeypatch.setenv("BUILDSYS_TEST_PORT", "33o7")
    with pytest.raises(DataError, match=r"\$\{BUILDSYS_TEST_PORT\} stands for the port, a number; received '33o7'"):
        expand_url("mysql+pymysql://reader@db.example:${BUILDSYS_TEST_PORT}/images")


def test_a_sqlite_path_from_a_variable_may_hold_url_characters(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = workspace / "odd ? #name @ 50%"
    folder.mkdir()
    images, labels = digits(50)
    write_table(f"sqlite:///{workspace / 'plain.db'}", images, labels)
    (workspace / "plain.db").rename(folder / "env.db")
    monkeypatch.setenv("BUILDSYS_TEST_DB", str(folder / "env.db"))
    write_definition(workspace, "env.py", sql_definition("sqlite:///${BUILDSYS_TEST_DB}", name="env"))
    dataset = sources.load(target(workspace, "env").spec.data, None)
    assert dataset.train_size == 40


def test_a_password_with_url_characters_reaches_mariadb(workspace: Path, mariadb: str, monkeypatch) -> None:
    import sqlalchemy as sa

    from buildsys.sources.sql import expand_url, shown

    images, labels = digits(50)
    write_table(mariadb, images, labels, encode=encode_png)
    database = mariadb.rsplit("/", 1)[1]
    server = sa.create_engine(mariadb)
    with server.begin() as connection:
        connection.exec_driver_sql("DROP USER IF EXISTS 'reader'@'127.0.0.1'")
        connection.execute(sa.text("CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY :password"), {"password": PASSWORD})
        connection.exec_driver_sql(f"GRANT SELECT ON {database}.* TO 'reader'@'127.0.0.1'")
    server.dispose()
    monkeypatch.setenv("BUILDSYS_TEST_PASSWORD", PASSWORD)
    host_and_database = mariadb.split("@", 1)[1]
    url = f"mysql+pymysql://reader:${{BUILDSYS_TEST_PASSWORD}}@{host_and_database}"
    write_definition(workspace, "sqldigits.py", sql_definition(url))
    spec = target(workspace).spec
    assert spec.class_names == tuple(CLASS_NAMES)  # class_names_query ran as `reader`
    assert spec.data.to_json()["url"] == url  # the definition's text, never the password
    assert sources.load(spec.data, None).train_size == 40
    monkeypatch.setenv("BUILDSYS_TEST_PASSWORD", PASSWORD[:-1])
    with pytest.raises(DefinitionError) as refused:
        target(workspace)
    message = str(refused.value)
    assert "Access denied for user 'reader'" in message and shown(expand_url(url)) in message
    assert all(fragment not in message for fragment in ("p@ss", "w%rd", "evil", "y=z")), message


@fuzz_settings(300)
@given(url=url_texts())
def test_any_url_text_is_told_apart_and_parsed_or_refused_in_one_line(url: str) -> None:
    """Whether text names a database or a filesystem never fails; parsing it gives a URL or one DataError."""
    assert not (is_filesystem_url(url) and not is_database_url(url))
    try:
        expand_url(url)
    except DataError as error:
        assert "\n" not in str(error) or "\n" in url, error


def test_a_null_class_name_is_one_line_at_the_definition(workspace: Path) -> None:
    """A NULL in the class-names query is refused (it would become the class "None"); UTF-8 bytes are text."""
    import sqlite3

    url = f"sqlite:///{workspace / 'names.db'}"
    images, labels = digits(20)
    write_table(url, images, labels)
    with sqlite3.connect(workspace / "names.db") as connection:
        connection.execute("UPDATE cats SET name = CAST(name AS BLOB) WHERE idx = 0")
        connection.execute("UPDATE cats SET name = NULL WHERE idx = 3")
    connection.close()
    write_definition(workspace, "sqldigits.py", sql_definition(url))
    with pytest.raises(DefinitionError, match=r"class_names_query row 3: the class name is NULL\.$") as caught:
        Workspace(workspace)
    assert "\n" not in str(caught.value)
