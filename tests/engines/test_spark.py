"""The Spark engine on local[2]: predictions equal the local engine's row for row, and features written as Parquet
by `featurize --engine spark` equal the local ones and are what the head's build reads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from buildsys.cli import main
from buildsys.sources.images import encode_png
from tests.conftest import run_buildsys, write_definition
from tests.data_helpers import digits, upload, write_folder
from tests.remote.s3 import s3  # noqa: F401 - fixture

pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'buildsys[spark]')")
pytestmark = pytest.mark.slow


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


DIGIT_NAMES = [str(d) for d in range(10)]


def assert_same_rows(expected: list[dict[str, str]], received: list[dict[str, str]]) -> None:
    """Row for row: equal ids, classes and labels, and probabilities within float32 rounding."""
    assert len(received) == len(expected)
    for want, got in zip(expected, received, strict=True):
        assert got.keys() == want.keys()
        for column, value in want.items():
            if column.startswith("prob"):  # prob_<class> and probability
                assert float(got[column]) == pytest.approx(float(value), abs=1e-6), column
            else:
                assert got[column] == value, column


def test_spark_predictions_equal_the_local_engine_row_for_row(digits_workspace: Path, tmp_path: Path) -> None:
    local, spark = tmp_path / "local.csv", tmp_path / "spark.csv"
    common = ("predict", "//model_defs:digits", "--input", "digits#test", "--batch-size", "200")
    first = run_buildsys(*common, "--output", str(local), cwd=digits_workspace)
    assert first.returncode == 0, first.stderr
    second = run_buildsys(
        *common, "--engine", "spark", "--master", "local[2]", "--output", str(spark), cwd=digits_workspace
    )
    assert second.returncode == 0, second.stderr
    expected = read_rows(local)
    assert len(expected) == 360
    assert_same_rows(expected, read_rows(spark))


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real digits as PNG files in class folders named like the model's classes ("0".."9")."""
    images, labels = digits(100)
    return write_folder(tmp_path_factory.mktemp("spark-inputs") / "digits", images, labels, class_names=DIGIT_NAMES)


def predict_here(workspace: Path, *args: str) -> int:
    """`predict digits ARGS` in this process, so the tests below share one SparkSession (one JVM start)."""
    return main(["predict", "digits", "--workspace", str(workspace), "--batch-size", "32", *args])


def test_spark_reads_an_image_folder_on_the_executors(
    digits_workspace: Path, digit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, spark = tmp_path / "local.csv", tmp_path / "spark.csv"
    assert predict_here(digits_workspace, "--input", str(digit_folder), "--output", str(local)) == 0
    assert (
        predict_here(digits_workspace, "--input", str(digit_folder), "--engine", "spark", "--output", str(spark)) == 0
    )
    assert "wrote 100 rows" in capsys.readouterr().out
    expected = read_rows(local)
    assert expected[0]["image_id"].startswith("0/") and expected[0]["true_class"] == "0"
    assert_same_rows(expected, read_rows(spark))


@pytest.mark.parametrize("layout", ["class folders, #test", "train and test trees", "loose images"])
def test_spark_reads_an_image_folder_at_a_url_as_the_local_engine_reads_the_folder(
    digits_workspace: Path, tmp_path: Path, layout: str
) -> None:
    """At a filesystem URL (file:///..., the same Hadoop filesystem API as hdfs:// or s3a://) Spark lists the
    folder itself: the same ids, class labels, split and order as the local engine's reading of it on disk."""
    images, labels = digits(60)
    folder = tmp_path / "images"
    if layout == "train and test trees":
        write_folder(folder / "train", images[:40], labels[:40], class_names=DIGIT_NAMES)
        write_folder(folder / "test", images[40:], labels[40:], class_names=DIGIT_NAMES)
    elif layout == "loose images":
        for index, image in enumerate(images[:12]):
            (folder / f"{index:03d}.png").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:03d}.png").write_bytes(encode_png(image))
    else:
        write_folder(folder, images, labels, suffixes=(".png", ".jpg"), class_names=DIGIT_NAMES)
    split = "#test" if layout.endswith("#test") else ""
    local, spark = tmp_path / "local.csv", tmp_path / "spark.csv"
    assert predict_here(digits_workspace, "--input", f"{folder}{split}", "--output", str(local)) == 0
    url = f"{folder.as_uri()}{split}"
    assert predict_here(digits_workspace, "--input", url, "--engine", "spark", "--output", str(spark)) == 0
    expected = read_rows(local)
    assert len(expected) == {"class folders, #test": 11, "train and test trees": 60, "loose images": 12}[layout]
    assert_same_rows(expected, read_rows(spark))


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_spark_reads_a_parquet_table_of_png_bytes(
    digits_workspace: Path, digit_folder: Path, tmp_path: Path, as_url: bool
) -> None:
    """As a local path, and as a filesystem URL (file:///...), which goes to Spark's Hadoop filesystem as hdfs://,
    s3a:// or gs:// do: the driver never opens it."""
    import pandas
    import pyarrow
    import pyarrow.parquet as parquet

    local = tmp_path / "local.csv"
    assert predict_here(digits_workspace, "--input", str(digit_folder), "--output", str(local)) == 0
    expected = read_rows(local)
    paths = [digit_folder / row["image_id"] for row in expected]
    table = pandas.DataFrame(
        {"picture": [path.read_bytes() for path in paths], "label": [path.parent.name for path in paths],
         "name": [row["image_id"] for row in expected]}
    )  # fmt: skip
    # Two files, so the rows come back ordered by file, then by row. The URL names a folder without the suffix: a
    # folder holding *.parquet files is a table, as on disk.
    folder = tmp_path / ("table" if as_url else "table.parquet")
    folder.mkdir()
    parquet.write_table(pyarrow.Table.from_pandas(table[:60]), folder / "part-0.parquet")
    parquet.write_table(pyarrow.Table.from_pandas(table[60:]), folder / "part-1.parquet")
    spark = tmp_path / "spark.csv"
    columns = ("--image-column", "picture", "--id-column", "name")
    table_input = folder.as_uri() if as_url else str(folder)
    assert (
        predict_here(digits_workspace, "--input", table_input, "--engine", "spark", *columns, "--output", str(spark))
        == 0
    )
    assert_same_rows(expected, read_rows(spark))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///nonexistent/table.parquet", "Spark cannot read it as a Parquet table: [PATH_NOT_FOUND]"),
        ("file:///nonexistent/images", "Spark cannot read it as a folder: [PATH_NOT_FOUND]"),
        ("s3a://bucket/t.parquet", "S3AFileSystem not found (put the filesystem's connector on Spark's classpath"),
        ("s3://bucket/images", 'No FileSystem for scheme "s3" (Hadoop\'s S3 connector reads s3a://bucket/images,'),
    ],
)
def test_spark_names_a_url_it_cannot_read_in_one_line(
    digits_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    assert predict_here(digits_workspace, "--input", url, "--engine", "spark", "--output", str(tmp_path / "o.csv")) != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {url}: ") and reason in line, line
    assert not (tmp_path / "o.csv").exists()


def test_spark_names_an_undecodable_image_in_one_line(
    digits_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = digits(6)
    folder = write_folder(tmp_path / "broken", images, labels, class_names=DIGIT_NAMES)
    (folder / "3" / "corrupt.png").write_bytes(b"not an image at all")
    assert (
        predict_here(digits_workspace, "--input", str(folder), "--engine", "spark", "--output", str(tmp_path / "o.csv"))
        != 0
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {folder / '3' / 'corrupt.png'}: cannot decode the image"), line


BASE_AND_HEAD = """
from buildsys.dsl import *

model(
    name="small_cnn",
    data=datasets.sklearn_digits(),
    inputs=image_input(shape=(8, 8, 1), scale=1 / 255),
    layers=[Conv2D(8, 3, activation="relu"), Flatten(), Dense(16, activation="relu", name="features"),
            Dense(10, activation="softmax")],
    train=train(epochs=3),
)
model(
    name="small_head",
    data=datasets.sklearn_digits(split_seed=3),
    inputs=image_input(shape=(8, 8, 1), scale=1 / 255),
    base=target("small_cnn", layer="features"),
    head=logistic_regression(reg_param=0.01, elastic_net_param=0.5),
    train=train(epochs=3),
)
"""


def test_spark_features_as_parquet_feed_the_head(workspace: Path) -> None:
    import pyarrow.parquet as parquet

    write_definition(workspace, "small.py", BASE_AND_HEAD)
    locally = run_buildsys("featurize", "small_head", cwd=workspace)
    assert locally.returncode == 0, locally.stderr
    # the base was built first
    assert locally.stdout.startswith("//model_defs:small_cnn\n") and "  published version 1 to " in locally.stdout
    (npz,) = (workspace / "build-out" / "features").glob("small_cnn/*.npz")
    on_spark = run_buildsys("featurize", "small_head", "--engine", "spark", "--master", "local[2]", cwd=workspace)
    assert on_spark.returncode == 0, on_spark.stderr
    folder = npz.with_suffix(".parquet")
    assert f"feature rows written to {folder}" in on_spark.stdout
    table = parquet.read_table(folder).to_pandas()
    with np.load(npz, allow_pickle=False) as arrays:
        for split in ("train", "validation", "test"):
            rows = table[table["split"] == split].sort_values("index")
            np.testing.assert_allclose(np.stack(rows["features"].to_numpy()), arrays[split], atol=1e-5)
    npz.unlink()
    built = run_buildsys("build", "small_head", cwd=workspace)
    assert built.returncode == 0, built.stderr
    assert f"  features from {folder}" in built.stdout


FOLDER_HEAD = """
from buildsys.dsl import *

model(
    name="small_cnn",
    data=datasets.sklearn_digits(),
    inputs=image_input(shape=(8, 8, 1), scale=1 / 255),
    layers=[Conv2D(8, 3, activation="relu"), Flatten(), Dense(16, activation="relu", name="features"),
            Dense(10, activation="softmax")],
    train=train(epochs=2),
)
model(
    name="folder_head",
    data=datasets.image_folder({folder!r}, image_size=(8, 8), color_mode="grayscale", split=0.25, split_seed=2),
    inputs=image_input(shape=(8, 8, 1), scale=1 / 255),
    base=target("small_cnn", layer="features"),
    head=logistic_regression(reg_param=0.01, elastic_net_param=0.5),
    train=train(epochs=2, validation_split=0.2),
)
"""


@pytest.mark.parametrize("where", ["local", "object storage"])
def test_spark_featurizes_an_image_folder_on_the_executors(
    workspace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    """On a local path the executors read the files (the driver opens none); in object storage (s3:// through
    fsspec, which the executors' Hadoop connectors do not read) the driver reads them and ships pixels."""
    import pyarrow.parquet as parquet
    from PIL import Image

    images, labels = digits(60)
    folder = tmp_path / "colour-digits"
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):  # RGB at 16x16: converted and resized
        (folder / DIGIT_NAMES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((16, 16)).convert("RGB").save(folder / DIGIT_NAMES[label] / f"{index:03d}.png")
    location = str(folder)
    if where == "object storage":
        request.getfixturevalue("s3")
        location = upload(folder, "colour-digits")
    write_definition(workspace, "folder.py", FOLDER_HEAD.format(folder=location))
    featurize = ["featurize", "folder_head", "--workspace", str(workspace)]
    assert main(featurize) == 0
    (npz,) = (workspace / "build-out" / "features").glob("small_cnn/*.npz")

    def driver_opens(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver opened an image")

    with monkeypatch.context() as patched:  # executors are other processes: only the driver's Pillow is patched
        if where == "local":
            patched.setattr("PIL.Image.open", driver_opens)
        assert main([*featurize, "--engine", "spark", "--master", "local[2]"]) == 0
    folder_out = npz.with_suffix(".parquet")
    assert f"60 feature rows written to {folder_out}" in capsys.readouterr().out
    table = parquet.read_table(folder_out).to_pandas()
    with np.load(npz, allow_pickle=False) as arrays:
        for split in ("train", "validation", "test"):
            rows = table[table["split"] == split].sort_values("index")
            assert len(rows) == len(arrays[split]) > 0, split
            np.testing.assert_allclose(np.stack(rows["features"].to_numpy()), arrays[split], atol=1e-5)
    npz.unlink()
    assert main(["build", "folder_head", "--workspace", str(workspace)]) == 0
    assert f"  features from {folder_out}" in capsys.readouterr().out
    assert not npz.exists()  # the build read the Parquet features instead of running the base again
