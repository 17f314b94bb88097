"""SQL databases through SQLAlchemy: SQLite, MariaDB/MySQL (PyMySQL), or any dialect SQLAlchemy knows.

Owns connecting (`${VAR}` expansion into each URL field, so passwords stay out of definitions; SQLite paths
relative to the workspace root; passwords hidden in every message), streaming query results in chunks with
server-side cursors where the driver has them, decoding image cells (through `images.decode_cell`, which refuses
pickles), and the source's fingerprint: per split, a checksum query (row count, total image bytes, label
sum/min/max by default) plus the bytes of the first rows. Never TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from buildsys.dsl.datasets import DataSource, Probed
from buildsys.errors import DataError
from buildsys.sources.images import decode_cell, warn_unsafe_pickle
from buildsys.sources.records import Batch, StreamingDataset, read_all

SAMPLE_ROWS = 64
_VARIABLE = re.compile(r"\$\{(\w+)\}")
_PORT_VARIABLE = re.compile(r"(?<=[^/:]:)\$\{(\w+)\}(?=[/?]|$)")  # host:${PORT}/ (not user:${PASSWORD}@)


def expand_url(url: str, base_dir: Path | None = None) -> Any:
    """The SQLAlchemy URL for `url`: `${VAR}` read from the environment, relative SQLite paths under `base_dir`.

    The definition's text is parsed first and each variable then fills its own field (user name, password, host,
    port, database, query values) through SQLAlchemy's URL API, so a value is never parsed as part of a URL: a
    password holding `@`, `/`, `%` or `?` reaches the right host as written, and messages, which print the URL
    with the password hidden, show no fragment of it.

    Raises:
        DataError: for an unset variable, a port variable that is not a number, or a URL SQLAlchemy cannot parse.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    def expand(text: str) -> str:
        return _VARIABLE.sub(lambda match: _variable(match.group(1)), text)

    try:
        parsed = make_url(_PORT_VARIABLE.sub(lambda match: _port(match.group(1)), url))
    except (ArgumentError, ValueError) as error:
        raise DataError(f"{url!r} is not a database URL ({error})") from None
    fields = {name: getattr(parsed, name) for name in ("username", "password", "host", "database")}
    parsed = parsed.set(
        **{name: expand(value) for name, value in fields.items() if isinstance(value, str)},
        query={
            key: expand(value) if isinstance(value, str) else tuple(expand(item) for item in value)
            for key, value in parsed.query.items()
        },
    )
    database = parsed.database
    local_file = database and database != ":memory:" and not database.startswith("file:")
    if parsed.get_backend_name() == "sqlite" and local_file and not Path(database).is_absolute():
        parsed = parsed.set(database=str((base_dir or Path.cwd()) / database))
    return parsed


def _variable(name: str) -> str:
    if name not in os.environ:
        raise DataError(f"the database URL uses ${{{name}}}, which is not set in the environment")
    return os.environ[name]


def _port(name: str) -> str:
    """A `${VAR}` standing for the port is put into the text before parsing (SQLAlchemy parses ports as numbers);
    only digits are accepted, so it cannot change any other field."""
    value = _variable(name)
    if not value.isdigit():
        raise DataError(f"the database URL's ${{{name}}} stands for the port, a number; received {value!r}")
    return value


def shown(url: Any) -> str:
    """The URL as messages print it: password hidden."""
    return url.render_as_string(hide_password=True) if hasattr(url, "render_as_string") else str(url)


def is_database_url(text: str) -> bool:
    """True for text that names a database (`dialect[+driver]://...`) rather than a path."""
    return re.match(r"^[a-z][a-z0-9]*(\+[a-z0-9_]+)?://", text) is not None


def is_filesystem_url(text: str) -> bool:
    """True for a URL whose scheme is no installed SQLAlchemy dialect's (`hdfs://`, `s3a://`, `gs://`, `abfss://`,
    `file:///`...): a path on one of the filesystems Spark reads through Hadoop's connectors, not a database."""
    if not is_database_url(text):
        return False
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(text).get_dialect()
    except NoSuchModuleError:
        return True
    except (ArgumentError, ValueError):  # not a well-formed URL (a port that is no number, say): the database
        return False  # path that parses it says what is wrong
    return False


@cache
def _engine(url: Any) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # A pooled connection keeps the file it opened: a database replaced since (written elsewhere and renamed
        # over the path, as tools that write safely do) would still be read from the old file. Opening a SQLite
        # file costs microseconds, so every use opens the path anew.
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True)


def engine_for(url: str, base_dir: Path | None = None) -> Any:
    """One engine per URL for the whole process: pooled connections for a database server, a fresh connection
    per use for a SQLite file.

    Raises:
        DataError: for a URL whose driver is not installed (`mysql://` names mysqlclient's MySQLdb; the tested
            driver is PyMySQL, `mysql+pymysql://`).
    """
    expanded = expand_url(url, base_dir)
    try:
        return _engine(expanded)
    except ModuleNotFoundError as error:
        raise DataError(
            f"{shown(expanded)}: its driver {error.name} is not installed (for MariaDB/MySQL, the installed driver "
            "is PyMySQL: mysql+pymysql://...)"
        ) from None


def database_error(url: Any, error: Exception) -> DataError:
    """A driver error as one line: the URL (password hidden) and the database's own message."""
    original = getattr(error, "orig", None) or error
    reason = " ".join(str(original).split()) or type(original).__name__
    return DataError(f"{shown(getattr(error, 'url', None) or url)}: {reason}")


def _is_int64(value: Any) -> bool:
    """A label cell that is an integer NumPy's int64 holds (not a bool, a float, NULL, or an unsigned BIGINT
    beyond 2**63 - 1)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _sql_error_types() -> tuple[type[Exception], ...]:
    """SQLAlchemy's error base, imported on first use: loading definitions without SQL sources never loads it."""
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError,)


def _inner(query: str) -> str:
    """A query usable as a sub-query: trailing semicolons and whitespace removed."""
    return query.strip().rstrip(";").strip()


def run_query(url: str, base_dir: Path | None, query: str) -> list[tuple[Any, ...]]:
    """Runs a small query and returns all its rows; a database error becomes one DataError line."""
    from sqlalchemy import text

    engine = engine_for(url, base_dir)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(_inner(query)))]
    except _sql_error_types() as error:
        raise database_error(engine.url, error) from None


def query_class_names(url: str, query: str, base_dir: Path | None) -> list[str]:
    """Runs a class-names query: one row per class, in class-index order, name in the first column (text, a
    number, or UTF-8 bytes).

    Raises:
        DataError: for a NULL name or bytes that are not UTF-8, naming the row (a NULL would become "None").
    """
    rows = run_query(url, base_dir, query)
    database = f"database {shown(engine_for(url, base_dir).url)}"
    names = []
    for row, (value, *_) in enumerate(rows):
        if value is None:
            raise DataError(f"{database}, class_names_query row {row}: the class name is NULL")
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                reason = "the class name is bytes that are not UTF-8"
                raise DataError(f"{database}, class_names_query row {row}: {reason}") from None
        names.append(str(value))
    return names


def probe(params: dict[str, Any], base_dir: Path) -> Probed:
    """A declared source's class names from its `class_names_query`."""
    return Probed(class_names=query_class_names(params["url"], params["class_names_query"], base_dir))


class SqlReader:
    """Reads one query per split, `batch_size` rows at a time, decoding image cells as they arrive."""

    def __init__(
        self,
        url: str,
        base_dir: Path | None,
        queries: dict[str, str],
        image_column: str,
        label_column: str | None,
        *,
        image_shape: tuple[int, ...],
        class_names: tuple[str, ...] | None,
        id_column: str | None = None,
        image_format: str = "auto",
        unsafe_pickle: bool = False,
    ) -> None:
        self.url, self.base_dir = url, base_dir
        self.engine = engine_for(url, base_dir)
        self.description = f"database {shown(self.engine.url)}"
        self.queries = {split: _inner(query) for split, query in queries.items()}
        self.image_column, self.label_column, self.id_column = image_column, label_column, id_column
        self.image_shape = tuple(image_shape)
        self.class_names = class_names
        self.image_format = image_format
        self.unsafe_pickle = unsafe_pickle
        self._warned = False

    def splits(self) -> tuple[str, ...]:
        return tuple(self.queries)

    def count(self, split: str) -> int:
        return int(run_query(self.url, self.base_dir, f"SELECT COUNT(*) FROM ({self.queries[split]}) AS counted")[0][0])

    def batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Streams the split's rows: `yield_per` makes SQLAlchemy use a server-side cursor where the driver has
        one (PyMySQL's SSCursor), so neither the driver nor this process holds more than one chunk."""
        from sqlalchemy import text

        if self.unsafe_pickle and not self._warned:
            warn_unsafe_pickle(self.description)
            self._warned = True
        position = 0
        try:
            with self.engine.connect() as connection:
                result = connection.execution_options(yield_per=batch_size).execute(text(self.queries[split]))
                columns = self._columns(list(result.keys()), split)
                for rows in result.partitions(batch_size):
                    yield self._decode(split, rows, columns, position)
                    position += len(rows)
        except _sql_error_types() as error:
            raise database_error(self.engine.url, error) from None

    def _columns(self, keys: list[str], split: str) -> tuple[int, int | None, int | None]:
        wanted = [self.image_column, self.label_column, self.id_column]
        missing = [name for name in wanted if name is not None and name not in keys]
        if missing:
            raise DataError(
                f"{self.description}: the {split} query returns columns {', '.join(keys)}; "
                f"it lacks {', '.join(missing)}"
            )
        return tuple(None if name is None else keys.index(name) for name in wanted)  # type: ignore[return-value]

    def _decode(self, split: str, rows: list[Any], columns: tuple[int, int | None, int | None], start: int) -> Batch:
        image_at, label_at, id_at = columns
        images = np.empty((len(rows), *self.image_shape), np.uint8)
        for offset, row in enumerate(rows):
            cell = row[image_at]
            where = f"{self.description}, {split} row {start + offset}"
            if cell is None:
                raise DataError(f"{where}: the {self.image_column} cell is NULL")
            images[offset] = decode_cell(
                cell if isinstance(cell, bytes | bytearray | memoryview) else str(cell).encode("latin-1"),
                shape=self.image_shape,
                cell_format=self.image_format,
                unsafe_pickle=self.unsafe_pickle,
                where=where,
            )
        labels = None
        if label_at is not None:
            values = [row[label_at] for row in rows]
            # Each cell must be an integer: np.array(values, np.int64) would truncate 1.5 to 1 without a word.
            bad = [value for value in values if not _is_int64(value)]
            if bad:  # (a NULL label is None, so None cannot mean "none found")
                received = "NULL" if bad[0] is None else repr(bad[0])
                raise DataError(
                    f"{self.description}, {split} rows {start}..{start + len(rows) - 1}: {self.label_column} must "
                    f"hold integer class indices; received {received}"
                )
            labels = np.array(values, dtype=np.int64)
        ids = (
            [str(row[id_at]) for row in rows]
            if id_at is not None
            else [f"{split}/{start + i}" for i in range(len(rows))]
        )
        return Batch(ids, images, labels)

    def checksum(self, split: str, checksum_query: str | None) -> str:
        """A digest of one split: the checksum query's rows (by default row count, total image bytes, and the
        sum, min and max of the labels) and the bytes of the first 64 rows."""
        quote = self.engine.dialect.identifier_preparer.quote
        image, label, query = quote(self.image_column), quote(self.label_column), self.queries[split]
        summary = checksum_query or (
            f"SELECT COUNT(*), SUM(LENGTH({image})), SUM({label}), MIN({label}), MAX({label}) FROM ({query}) AS checked"
        )
        digest = hashlib.sha256(repr(run_query(self.url, self.base_dir, summary)).encode())
        for row in run_query(
            self.url, self.base_dir, f"SELECT {image}, {label} FROM ({query}) AS sampled LIMIT {SAMPLE_ROWS}"
        ):
            digest.update(
                bytes(row[0]) if isinstance(row[0], bytes | bytearray | memoryview) else repr(row[0]).encode()
            )
            digest.update(repr(row[1]).encode())
        return digest.hexdigest()


def source_reader(source: DataSource) -> SqlReader:
    params = dict(source.params)
    return SqlReader(
        params["url"],
        source.base_dir,
        {"train": params["query_train"], "test": params["query_test"]},
        params["image_column"],
        params["label_column"],
        image_shape=source.image_shape,
        class_names=source.class_names,
        id_column=params["id_column"],
        image_format=params["image_format"],
        unsafe_pickle=params["unsafe_pickle"],
    )


def fingerprint(source: DataSource) -> str | None:
    """Per split, the checksum query's result and the first rows' bytes (see `SqlReader.checksum`); None when
    the database cannot be reached or queried, so that loading reports why."""
    params = dict(source.params)
    try:
        reader = source_reader(source)
        digest = hashlib.sha256(repr(sorted(source.params)).encode())
        for split in reader.splits():
            digest.update(reader.checksum(split, params["checksum_query"]).encode())
    except DataError:
        return None
    return digest.hexdigest()


def load(source: DataSource) -> StreamingDataset:
    """The test split read now; the training rows `chunk_size` at a time on every pass."""

    reader = source_reader(source)
    chunk_size = dict(source.params)["chunk_size"]
    x_test, y_test = read_all(reader, "test", chunk_size)

    def train_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in reader.batches("train", chunk_size):
            yield batch.images, batch.labels

    return StreamingDataset(
        train_chunks, reader.count("train"), source.image_shape, x_test, y_test, source.class_names, reader.description
    )
