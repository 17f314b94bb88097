"""`data import`: the tutorial tables, PNG or .npy blobs, batched upserts, idempotent re-runs, SQLite and MariaDB."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from buildsys.cli import main
from tests.data_helpers import CLASS_NAMES, digits, write_folder


def tables(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = {
            "tf_images": connection.exec_driver_sql(
                "SELECT img_idx, img_label, img_vector, img_use FROM tf_images ORDER BY img_idx"
            ).all(),
            "img_use": connection.exec_driver_sql("SELECT use_id, use_name FROM img_use ORDER BY use_id").all(),
            "categories": connection.exec_driver_sql("SELECT class_idx, class_name FROM categories ORDER BY 1").all(),
        }
    engine.dispose()
    return found


def import_twice(source: str, url: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["data", "import", source, "--to", url, "--batch-size", "40", *extra]) == 0
    first = tables(url)
    assert main(["data", "import", source, "--to", url, "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the first run's summary line
    assert tables(url) == first  # the second run rewrote the same rows
    return {"tables": first, "summary": summary}


def test_a_folder_into_sqlite_as_png_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digits(120)
    folder = write_folder(tmp_path / "digits", images, labels)
    url = f"sqlite:///{tmp_path / 'tutorial.db'}"
    result = import_twice(str(folder), url, capsys=capsys)
    found = result["tables"]
    held = int(sum(round(n * 0.2) for n in np.bincount(labels)))  # 20 % of each class, as image_folder splits
    assert result["summary"]["rows"] == {"train": 120 - held, "test": held} and result["summary"]["classes"] == 10
    assert found["img_use"] == [(1, "Training"), (2, "Testing")]
    assert found["categories"] == list(enumerate(CLASS_NAMES))
    assert [row.img_idx for row in found["tf_images"]] == list(range(120))
    assert [row.img_use for row in found["tf_images"]] == [1] * (120 - held) + [2] * held
    first = found["tf_images"][0]
    assert first.img_vector.startswith(b"\x89PNG")
    pixels = np.asarray(Image.open(io.BytesIO(first.img_vector)))
    assert pixels.shape == (8, 8) and any((pixels == image).all() for image in images[labels == first.img_label])


def test_npz_into_mariadb_as_npy_is_idempotent_and_reads_back(
    tmp_path: Path, mariadb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = digits(100)
    np.savez(tmp_path / "d.npz", x_train=images[:70], y_train=labels[:70], x_test=images[70:], y_test=labels[70:])
    result = import_twice(str(tmp_path / "d.npz"), mariadb, "--format", "npy", capsys=capsys)
    rows = result["tables"]["tf_images"]
    assert len(rows) == 100 and rows[0].img_vector.startswith(b"\x93NUMPY")
    np.testing.assert_array_equal(np.load(io.BytesIO(rows[75].img_vector), allow_pickle=False), images[75])
    assert main(["data", "inspect", f"{mariadb}#test", "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["splits"]["test"]["images"] == 30 and inspected["splits"]["test"]["shape"] == [8, 8]


def test_a_database_holding_other_classes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digits(40)
    url = f"sqlite:///{tmp_path / 'tutorial.db'}"
    assert main(["data", "import", str(write_folder(tmp_path / "a", images, labels)), "--to", url]) == 0
    renamed = [f"other {n}" for n in range(10)]
    other = write_folder(tmp_path / "b", images, labels, class_names=renamed)
    assert main(["data", "import", str(other), "--to", url]) == 1
    assert "already holds the classes digit 0" in capsys.readouterr().err
