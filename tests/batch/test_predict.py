"""`predict`: ONNX Runtime over folders, npz, databases and files into stdout, CSV, JSONL or prediction_results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import sqlalchemy as sa

from buildsys.batch.predict import predict
from buildsys.cli import main
from buildsys.errors import DataError
from buildsys.sources.resolve import ImageFormat, open_sources
from buildsys.store import OutputTree
from buildsys.workspace import Workspace
from tests.data_helpers import digits, write_folder

pytestmark = pytest.mark.slow  # the digits model is built once per session
DIGIT_NAMES = [str(d) for d in range(10)]
AVAILABLE = onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real digits as PNG files in class folders named like the model's classes ("0".."9")."""
    images, labels = digits(300)
    return write_folder(tmp_path_factory.mktemp("inputs") / "digits", images, labels, class_names=DIGIT_NAMES)


def run_predict(workspace: Path, *args: str) -> int:
    return main(["predict", "digits", "--workspace", str(workspace), *args])


def reading_order(folder: Path) -> list[str]:
    """The image ids in the order predict reads them (training split first, then test)."""
    opened = open_sources([str(folder)], ImageFormat((8, 8), "grayscale"))
    return [image_id for split in opened.splits for batch in opened.reader.batches(split, 64) for image_id in batch.ids]


def count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT COUNT(*) FROM prediction_results").scalar_one()


def test_a_folder_into_sqlite_reruns_upsert_and_reports_accuracy(
    digits_workspace: Path, digit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert (
        run_predict(digits_workspace, "--input", str(digit_folder), "--output", url, "--batch-size", "64", "--json")
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 300 and summary["batches"] == 5 and summary["labelled"] == 300
    assert summary["accuracy"] >= 0.9 and summary["images_per_second"] > 0
    assert run_predict(digits_workspace, "--input", str(digit_folder), "--output", url) == 0
    assert "wrote 300 rows" in capsys.readouterr().out
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT image_id, model_name, model_version, prob_0, prob_9, predicted_index, predicted_class, "
            "true_index, true_class FROM prediction_results ORDER BY image_id"
        ).all()
    assert len(rows) == 300 and count(url) == 300  # the re-run updated the same rows
    first = rows[0]
    assert first.image_id.startswith("0/") and first.model_name == "digits" and first.model_version == 1
    assert first.true_index == 0 and first.true_class == "0" and 0 <= first.prob_0 <= 1
    assert sum(row.predicted_index == row.true_index for row in rows) >= 270


def test_csv_jsonl_and_stdout(digits_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digits(40)
    np.savez(tmp_path / "few.npz", x_train=images[:30], y_train=labels[:30], x_test=images[30:], y_test=labels[30:])
    assert (
        run_predict(digits_workspace, "--input", f"{tmp_path / 'few.npz'}#test", "--output", str(tmp_path / "p.csv"))
        == 0
    )
    with open(tmp_path / "p.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 10 and rows[0]["image_id"] == "test/0" and "prob_7" in rows[0]
    np.testing.assert_allclose(sum(float(rows[0][f"prob_{d}"]) for d in range(10)), 1.0, atol=1e-5)

    assert (
        run_predict(digits_workspace, "--input", str(tmp_path / "few.npz"), "--output", str(tmp_path / "p.jsonl")) == 0
    )
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 40 and {"predicted_class", "true_class", "prob_0"} <= set(lines[0])

    capsys.readouterr()
    assert run_predict(digits_workspace, "--input", f"{tmp_path / 'few.npz'}#train", "--output", "-") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split() == ["image_id", "predicted", "probability", "true"]
    assert len(captured.out.splitlines()) == 31 and "wrote 30 rows to stdout" in captured.err


def test_the_device_is_read_back_from_onnx_runtime_and_cuda_is_never_assumed(
    digits_workspace: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_predict(digits_workspace, "--input", str(digit_folder), "--output", "-", "--device", "cpu") == 0
    assert " on CPU)" in capsys.readouterr().err
    assert run_predict(digits_workspace, "--input", str(digit_folder), "--output", "-", "--json") == 0
    active = json.loads(capsys.readouterr().err)["providers"]
    assert (
        active
        == onnxruntime.InferenceSession(
            str(next((digits_workspace / "build-out" / "models" / "digits").glob("*/model.onnx"))),
            providers=[p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in AVAILABLE],
        ).get_providers()
    )
    if "CUDAExecutionProvider" not in active:  # CI and most machines: cuda must refuse, not fall back quietly
        assert run_predict(digits_workspace, "--input", str(digit_folder), "--output", "-", "--device", "cuda") != 0
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: --device cuda, but ONNX Runtime's CUDA provider") and "or cpu" in line


def test_loose_image_files_have_no_labels(digits_workspace: Path, digit_folder: Path, capsys) -> None:
    files = sorted((digit_folder / "3").iterdir())[:4]
    assert run_predict(digits_workspace, "--input", *map(str, files), "--output", "-") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5 and "accuracy" not in captured.err
    assert str(files[0]) in captured.out


def test_predict_never_imports_tensorflow(digits_workspace: Path, digit_folder: Path, tmp_path: Path) -> None:
    arguments = ["predict", "digits", "--input", str(digit_folder), "--output", str(tmp_path / "p.csv")]
    probe = (
        f"import sys\nfrom buildsys.cli import main\ncode = main({arguments!r})\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=digits_workspace, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tensorflow not imported" in result.stdout


def test_a_failing_batch_leaves_only_whole_batches(digits_workspace: Path, digit_folder: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_predict(digits_workspace, "--input", str(digit_folder), "--output", url, "--batch-size", "64") == 0
    third_batch_row = reading_order(digit_folder)[150]  # rows 128..191 are the third batch of 64
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM prediction_results")
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON prediction_results "
            f"WHEN NEW.image_id = '{third_batch_row}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )
    workspace = Workspace(digits_workspace)
    tree = OutputTree(digits_workspace / "build-out")
    with pytest.raises(DataError, match=r"refused by a test trigger; 2 whole batches \(128 rows\) were written"):
        predict(workspace, tree, "digits", [str(digit_folder)], url, batch_size=64)
    assert count(url) == 128  # the third batch's rows before the refused one were rolled back
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER refuse")
    assert predict(workspace, tree, "digits", [str(digit_folder)], url, batch_size=64).rows == 300
    assert count(url) == 300


def test_a_connection_broken_mid_batch_in_mariadb(digits_workspace: Path, digit_folder: Path, mariadb: str) -> None:
    """MariaDB: predict -> table -> query back; a connection killed inside a batch's insert loses only that batch."""
    workspace, tree = Workspace(digits_workspace), OutputTree(digits_workspace / "build-out")
    first = predict(workspace, tree, "digits", [str(digit_folder)], mariadb, batch_size=64)
    assert first.rows == 300 and count(mariadb) == 300
    engine = sa.create_engine(mariadb)
    with engine.connect() as connection:
        classes = connection.exec_driver_sql(
            "SELECT predicted_class, COUNT(*) FROM prediction_results GROUP BY 1"
        ).all()
    assert sum(n for _, n in classes) == 300 and len(classes) == 10

    third_batch_row = reading_order(digit_folder)[150]  # rows 128..191 are the third batch of 64
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM prediction_results")
        connection.exec_driver_sql(
            "CREATE TRIGGER stall BEFORE INSERT ON prediction_results FOR EACH ROW "
            f"BEGIN IF NEW.image_id = '{third_batch_row}' THEN DO SLEEP(30); END IF; END"
        )
    killed = []

    def kill_the_stalled_insert() -> None:
        deadline = time.monotonic() + 30
        with engine.connect() as admin:
            while time.monotonic() < deadline and not killed:
                for (process_id,) in admin.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE state = 'User sleep'"
                ):
                    admin.exec_driver_sql(f"KILL {process_id}")
                    killed.append(process_id)
                time.sleep(0.05)

    killer = threading.Thread(target=kill_the_stalled_insert)
    killer.start()
    with pytest.raises(DataError, match=r"2 whole batches \(128 rows\) were written"):
        predict(workspace, tree, "digits", [str(digit_folder)], mariadb, batch_size=64)
    killer.join()
    assert killed and count(mariadb) == 128
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER stall")
    assert predict(workspace, tree, "digits", [str(digit_folder)], mariadb, batch_size=64).rows == 300
    assert count(mariadb) == 300
    engine.dispose()
