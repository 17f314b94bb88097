"""The database layout the SQL image tutorials use, which `data import` writes and a bare database URL reads.

    tf_images(img_idx PK, img_label, img_vector BLOB, img_use -> img_use.use_id)
    img_use(use_id PK, use_name)            1 'Training', 2 'Testing'
    categories(class_idx PK, class_name)

`img_vector` holds PNG or `.npy` bytes (never pickles). Never TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildsys.errors import DataError
from buildsys.sources.images import decode_cell, sniff
from buildsys.sources.sql import SqlReader, engine_for, query_class_names, run_query, shown

USES = {"train": (1, "Training"), "test": (2, "Testing")}
QUERIES = {
    split: f"SELECT img_idx, img_vector, img_label FROM tf_images WHERE img_use = {use_id} ORDER BY img_idx"
    for split, (use_id, _) in USES.items()
}
CLASS_NAMES_QUERY = "SELECT class_name FROM categories ORDER BY class_idx"


def tables(metadata: Any) -> tuple[Any, Any, Any]:
    """(tf_images, img_use, categories) as SQLAlchemy tables. Keys are never auto-incremented: index 0 is a real
    class and image (MariaDB would otherwise turn an inserted 0 into the next counter value)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql

    blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    uses = sa.Table(
        "img_use", metadata,
        sa.Column("use_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("use_name", sa.String(16), nullable=False),
    )  # fmt: skip
    categories = sa.Table(
        "categories", metadata,
        sa.Column("class_idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("class_name", sa.String(255), nullable=False),
    )  # fmt: skip
    images = sa.Table(
        "tf_images", metadata,
        sa.Column("img_idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("img_label", sa.Integer, nullable=False),
        sa.Column("img_vector", blob, nullable=False),
        sa.Column("img_use", sa.Integer, sa.ForeignKey("img_use.use_id"), nullable=False),
    )  # fmt: skip
    return images, uses, categories


def open_database(url: str, base_dir: Path | None, image_shape: tuple[int, ...] | None) -> SqlReader:
    """A reader over a database in this layout; without `image_shape`, the first stored image gives it.

    Raises:
        DataError: when the tables are missing or empty, or the first image is raw bytes (no shape to read).
    """
    class_names = tuple(query_class_names(url, CLASS_NAMES_QUERY, base_dir))
    if image_shape is None:
        first = run_query(url, base_dir, "SELECT img_vector FROM tf_images ORDER BY img_idx LIMIT 1")
        where = shown(engine_for(url, base_dir).url)
        if not first:
            raise DataError(f"{where}: tf_images is empty")
        cell = bytes(first[0][0])
        if sniff(cell) not in ("png", "jpeg", "bmp", "npy"):
            raise DataError(f"{where}: the first img_vector is not PNG or .npy, so its shape is unknown")
        image_shape = _native_shape(cell)
    return SqlReader(
        url, base_dir, QUERIES, "img_vector", "img_label",
        image_shape=image_shape, class_names=class_names, id_column="img_idx",
    )  # fmt: skip


def _native_shape(cell: bytes) -> tuple[int, ...]:
    import io

    import numpy as np

    if sniff(cell) == "npy":
        return tuple(np.load(io.BytesIO(cell), allow_pickle=False).shape)
    from PIL import Image

    with Image.open(io.BytesIO(cell)) as image:
        width, height = image.size
        shape = (height, width) if image.mode in ("1", "L", "I", "I;16", "F") else (height, width, 3)
    return tuple(decode_cell(cell, shape=shape).shape)
