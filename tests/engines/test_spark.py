"""The Spark engine on local[2]: predictions equal the local engine's row for row, and features written as Parquet
by `featurize --engine spark` equal the local ones and are what the head's build reads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_buildsys, write_definition

pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'buildsys[spark]')")
pytestmark = pytest.mark.slow


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_spark_predictions_equal_the_local_engine_row_for_row(digits_workspace: Path, tmp_path: Path) -> None:
    local, spark = tmp_path / "local.csv", tmp_path / "spark.csv"
    common = ("predict", "//model_defs:digits", "--input", "digits#test", "--batch-size", "200")
    first = run_buildsys(*common, "--output", str(local), cwd=digits_workspace)
    assert first.returncode == 0, first.stderr
    second = run_buildsys(
        *common, "--engine", "spark", "--master", "local[2]", "--output", str(spark), cwd=digits_workspace
    )
    assert second.returncode == 0, second.stderr
    expected, received = read_rows(local), read_rows(spark)
    assert len(expected) == len(received) == 360
    for want, got in zip(expected, received, strict=True):
        assert got.keys() == want.keys()
        for column, value in want.items():
            if column.startswith("p_") or column == "probability":
                assert float(got[column]) == pytest.approx(float(value), abs=1e-6), column
            else:
                assert got[column] == value, column


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
    assert "small_cnn: published version 1" in locally.stdout  # the base was built first
    (npz,) = (workspace / "build-out" / "features").glob("*.npz")
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
    assert f"small_head: features from {folder}" in built.stdout
