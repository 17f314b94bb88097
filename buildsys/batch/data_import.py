"""`data import`: a labelled source written into the tutorials' database layout (`sources.tutorial_schema`).

Images are stored as PNG (lossless, small) or `.npy` bytes, never pickles. Each image's `img_idx` is its position
in the source (training images first, then test images), and every batch is one upsert transaction, so importing
the same source again rewrites the same rows instead of adding duplicates, and an interrupted import leaves whole
batches that the next run completes. Never TensorFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from buildsys.batch.dbwrite import upsert
from buildsys.batch.progress import Progress
from buildsys.errors import DataError
from buildsys.sources.images import encode_npy, encode_png
from buildsys.sources.resolve import Opened
from buildsys.sources.tutorial_schema import USES, tables

ENCODERS = {"png": encode_png, "npy": encode_npy}


@dataclass
class ImportSummary:
    database: str
    rows: dict[str, int] = field(default_factory=dict)
    classes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "rows": self.rows,
            "classes": self.classes,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        counts = ", ".join(f"{count:,} {split}" for split, count in self.rows.items())
        return f"imported {counts} images and {self.classes} classes into {self.database} in {self.seconds:.1f}s"


def import_source(opened: Opened, url: str, image_format: str = "png", batch_size: int = 500) -> ImportSummary:
    """Writes the opened source's chosen splits into `url`, creating the tables when missing.

    Raises:
        DataError: for an unlabelled source, a database that holds other class names, or a failed write.
    """
    import sqlalchemy as sa

    from buildsys.sources.sql import database_error, engine_for, shown

    reader = opened.reader
    if reader.class_names is None or not set(opened.splits) <= set(USES):
        raise DataError(f"{reader.description}: import needs labelled train/test images (class folders, npz, ...)")
    engine = engine_for(url)
    summary = ImportSummary(shown(engine.url), classes=len(reader.class_names))
    encode = ENCODERS[image_format]
    offsets, position = {}, 0
    for split in reader.splits():
        offsets[split] = position
        position += reader.count(split)
    images, uses, categories = tables(sa.MetaData())
    started = time.perf_counter()
    progress = Progress("import", sum(reader.count(split) for split in opened.splits))
    try:
        images.metadata.create_all(engine)
        with engine.begin() as connection:
            stored = [row[0] for row in connection.execute(sa.select(categories.c.class_name).order_by("class_idx"))]
            if stored and stored != list(reader.class_names):
                raise DataError(
                    f"{summary.database} already holds the classes {', '.join(stored[:5])}...; this source has "
                    f"{', '.join(reader.class_names[:5])}...; import it into another database"
                )
            upsert(connection, uses, [{"use_id": use_id, "use_name": name} for use_id, name in USES.values()])
            upsert(
                connection, categories, [{"class_idx": i, "class_name": n} for i, n in enumerate(reader.class_names)]
            )
        for split in opened.splits:
            done = 0
            for batch in reader.batches(split, batch_size):
                rows = [
                    {"img_idx": offsets[split] + done + i, "img_label": int(label), "img_vector": encode(image),
                     "img_use": USES[split][0]}
                    for i, (image, label) in enumerate(zip(batch.images, batch.labels, strict=True))
                ]  # fmt: skip
                with engine.begin() as connection:
                    upsert(connection, images, rows)
                done += len(rows)
                progress.advance(len(rows))
            summary.rows[split] = done
    except sa.exc.SQLAlchemyError as error:
        raise database_error(engine.url, error) from None
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - started
    return summary
