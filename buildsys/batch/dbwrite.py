"""Writing rows into a database: idempotent upserts, one transaction per batch.

Used by `data import` and by `predict` into a table. Each batch is one transaction, so a failure (a broken
connection, a constraint) leaves only whole batches behind; rows are keyed, so running the same job again
updates them instead of adding duplicates. Upserts use the dialect's own statement (SQLite and PostgreSQL
`ON CONFLICT DO UPDATE`, MariaDB/MySQL `ON DUPLICATE KEY UPDATE`); other dialects delete the keys and insert
inside the same transaction. Never TensorFlow.
"""

from __future__ import annotations

from typing import Any


def upsert(connection: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Inserts `rows` into `table`, replacing rows with the same primary key. Runs inside the caller's transaction."""
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    others = [column.name for column in table.columns if column.name not in keys]
    dialect = connection.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        statement = insert(table)
        update = {name: statement.excluded[name] for name in others}
        statement = (
            statement.on_conflict_do_update(index_elements=keys, set_=update)
            if update
            else statement.on_conflict_do_nothing(index_elements=keys)
        )
        connection.execute(statement, rows)
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        statement = insert(table)
        update = {name: statement.inserted[name] for name in others} or {keys[0]: statement.inserted[keys[0]]}
        connection.execute(statement.on_duplicate_key_update(update), rows)
    else:
        from sqlalchemy import and_, or_

        matches = [and_(*(table.c[key] == row[key] for key in keys)) for row in rows]
        connection.execute(table.delete().where(or_(*matches)))
        connection.execute(table.insert(), rows)
