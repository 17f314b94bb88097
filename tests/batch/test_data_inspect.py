"""`data inspect`: split sizes, shape and dtype, pixel statistics, class balance, and the 5x5 sample grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildsys.cli import main
from tests.data_helpers import digits


def test_npz_statistics_and_the_sample_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digits(200)
    np.savez(tmp_path / "d.npz", x_train=images[:150], y_train=labels[:150], x_test=images[150:], y_test=labels[150:])
    assert main(["data", "inspect", str(tmp_path / "d.npz"), "--json", "--plot", str(tmp_path / "grid.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert (train["images"], test["images"]) == (150, 50)
    assert train["shape"] == [8, 8] and train["dtype"] == "uint8"
    assert train["pixel_min"] == int(images[:150].min()) and train["pixel_max"] == int(images[:150].max())
    assert train["pixel_mean"] == pytest.approx(images[:150].mean(), abs=1e-3)
    assert train["class_counts"] == np.bincount(labels[:150], minlength=10).tolist()
    counts = np.bincount(labels, minlength=10)
    assert report["balance"] == pytest.approx(counts.min() / counts.max(), abs=1e-3)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.size[0] >= 500


def test_a_label_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model_defs").mkdir()
    (tmp_path / "model_defs" / "d.py").write_text(
        "from buildsys.dsl import *\n"
        "model(name='d', data=datasets.sklearn_digits(), inputs=image_input(shape=(8, 8)),\n"
        "      layers=[Flatten(), Dense(10, activation='softmax')], train=train(epochs=1))\n"
    )
    assert main(["data", "inspect", "d", "--workspace", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "1,437" in text and "360" in text and "balance" in text
