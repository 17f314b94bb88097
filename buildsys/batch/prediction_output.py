"""Where batch predictions go: a table on stdout, a CSV or JSON Lines file, or a database's `prediction_results`.

Every destination receives whole batches: files are written and flushed one batch at a time, and a database
gets one transaction per batch, keyed on (model_name, model_version, image_id), so a re-run upserts and a
failure leaves only whole batches. Probability columns are named `prob_<class name>` made SQL-safe (lowercase
letters, digits and `_`, at most 64 characters, unique). Never TensorFlow.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from buildsys.errors import DataError

TABLE = "prediction_results"
MAX_IDENTIFIER = 64  # MariaDB/MySQL's limit, the strictest of the common databases


def probability_columns(class_names: list[str]) -> list[str]:
    """`prob_<name>` per class, SQL-safe and unique: "T-shirt/top" -> prob_t_shirt_top, "0" -> prob_0."""
    columns: list[str] = []
    for name in class_names:
        safe = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"
        column = f"prob_{safe}"
        if len(column) > MAX_IDENTIFIER or column in columns:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            column = f"{column[: MAX_IDENTIFIER - 9]}_{digest}"
        while column in columns:
            column = f"{column[: MAX_IDENTIFIER - 2]}_x"
        columns.append(column)
    return columns


class Sink:
    """A destination for prediction rows; `write` takes one batch, `close` finishes."""

    description: str

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to finish by default: every batch was complete when written."""


class StdoutTable(Sink):
    """An aligned table of the answer per image (the probabilities stay in file and table destinations)."""

    def __init__(self, stream: TextIO, labelled: bool) -> None:
        self.stream, self.labelled = stream, labelled
        self.description = "stdout"
        self.header = False

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not self.header:
            self.stream.write(f"{'image_id':<32} {'predicted':<20} {'probability':>11}" +
                              (f"  {'true':<20}" if self.labelled else "") + "\n")  # fmt: skip
            self.header = True
        for row in rows:
            line = f"{row['image_id']:<32} {row['predicted_class']:<20} {row['probability']:>11.4f}"
            if self.labelled:
                line += f"  {row['true_class'] if row['true_class'] is not None else '-':<20}"
            self.stream.write(line + "\n")
        self.stream.flush()


class CsvFile(Sink):
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.description = str(path)
        self.stream = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = csv.DictWriter(self.stream, fieldnames=columns, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.writerows(rows)
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


class JsonLinesFile(Sink):
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.description = str(path)
        self.columns = columns
        self.stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.stream.write("".join(json.dumps({c: row[c] for c in self.columns}) + "\n" for row in rows))
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


class ResultsTable(Sink):
    """`prediction_results` in a database: created when missing, probability columns added for new classes.

    One connection serves the whole run and each batch is one transaction on it, so a connection that breaks
    mid-run fails the run at that batch (rolled back) instead of silently reconnecting.
    """

    def __init__(self, url: str, probability_names: list[str]) -> None:
        import sqlalchemy as sa

        from buildsys.sources.sql import database_error, engine_for, shown

        self.engine = engine_for(url, Path.cwd())
        self.description = f"{shown(self.engine.url)} table {TABLE}"
        self._error = lambda error: database_error(self.engine.url, error)
        metadata = sa.MetaData()
        self.table = sa.Table(
            TABLE, metadata,
            sa.Column("image_id", sa.String(255), primary_key=True),
            sa.Column("model_name", sa.String(64), primary_key=True),
            sa.Column("model_version", sa.Integer, primary_key=True, autoincrement=False),
            *(sa.Column(name, sa.Double, nullable=True) for name in probability_names),
            sa.Column("predicted_index", sa.Integer, nullable=False),
            sa.Column("predicted_class", sa.String(255), nullable=False),
            sa.Column("probability", sa.Double, nullable=False),
            sa.Column("true_index", sa.Integer, nullable=True),
            sa.Column("true_class", sa.String(255), nullable=True),
            sa.Column("predicted_at", sa.DateTime, nullable=False),
        )  # fmt: skip
        try:
            self.connection = self.engine.connect()
            with self.connection.begin():
                metadata.create_all(self.connection)
                self._add_missing_columns(probability_names)
        except sa.exc.SQLAlchemyError as error:
            raise self._error(error) from None

    def _add_missing_columns(self, probability_names: list[str]) -> None:
        """A table made for another model lacks this model's class columns; they are added (NULL elsewhere)."""
        import sqlalchemy as sa

        present = {column["name"] for column in sa.inspect(self.connection).get_columns(TABLE)}
        quote = self.engine.dialect.identifier_preparer.quote
        double = sa.Double().compile(dialect=self.engine.dialect)
        for name in probability_names:
            if name not in present:
                self.connection.exec_driver_sql(f"ALTER TABLE {quote(TABLE)} ADD COLUMN {quote(name)} {double} NULL")

    def write(self, rows: list[dict[str, Any]]) -> None:
        import sqlalchemy as sa

        from buildsys.batch.dbwrite import upsert

        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
        names = {column.name for column in self.table.columns}
        try:
            with self.connection.begin():
                upsert(self.connection, self.table, [{**{k: v for k, v in r.items() if k in names},
                                                      "predicted_at": now} for r in rows])  # fmt: skip
        except sa.exc.SQLAlchemyError as error:
            raise self._error(error) from None

    def close(self) -> None:
        self.connection.close()


def open_sink(destination: str, columns: list[str], probability_names: list[str], labelled: bool) -> Sink:
    """`-`, a `.csv` or `.jsonl` path, or a database URL.

    Raises:
        DataError: for any other destination.
    """
    from buildsys.sources.sql import is_database_url

    if destination == "-":
        return StdoutTable(sys.stdout, labelled)
    if is_database_url(destination):
        return ResultsTable(destination, probability_names)
    path = Path(destination)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataError(f"--output {destination!r}: expected -, a .csv or .jsonl file, or a database URL")
    if not path.parent.is_dir():
        raise DataError(f"--output {destination!r}: the folder {path.parent} does not exist")
    return CsvFile(path, columns) if suffix == ".csv" else JsonLinesFile(path, columns)
