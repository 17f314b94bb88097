"""The report action: metrics equal scikit-learn's, report.html is self-contained and renders, and it is fast."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from buildsys.actions.report import (
    GRID_IMAGES,
    REPORT_FILE,
    classification_metrics,
    confident_mistakes,
    grid_samples,
    write_report,
)
from buildsys.cli import main

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def predictions(count: int, classes: int = 10, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax outputs of a fair but imperfect classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    logits = rng.normal(size=(count, classes))
    logits[np.arange(count), labels] += 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities.astype(np.float32)


def assert_equal_to_sklearn(computed: dict, labels: np.ndarray, probabilities: np.ndarray) -> None:
    classes = list(range(probabilities.shape[1]))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    assert computed["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    np.testing.assert_allclose([row["precision"] for row in computed["per_class"]], precision)
    np.testing.assert_allclose([row["recall"] for row in computed["per_class"]], recall)
    np.testing.assert_allclose([row["f1"] for row in computed["per_class"]], f1)
    assert [row["support"] for row in computed["per_class"]] == support.tolist()
    for average in ("macro", "weighted"):
        expected = sk.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        got = computed["averages"][average]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(expected[:3])
    assert computed["confusion_matrix"] == sk.confusion_matrix(labels, predicted, labels=classes).tolist()
    assert computed["roc_auc_macro"] == pytest.approx(
        sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=classes), rel=1e-6
    )


def test_metrics_equal_scikit_learn() -> None:
    labels, probabilities = predictions(2_000)
    computed = classification_metrics(labels, probabilities, FASHION)
    assert_equal_to_sklearn(computed, labels, probabilities)
    assert [row["class"] for row in computed["per_class"]] == FASHION
    assert computed["per_class"][3]["roc_auc"] == pytest.approx(sk.roc_auc_score(labels == 3, probabilities[:, 3]))
    json.dumps(computed, allow_nan=False)  # goes into manifest.json as is


def test_a_class_missing_from_the_test_split_has_no_roc_auc() -> None:
    labels, probabilities = predictions(500, classes=3)
    labels[labels == 2] = 0
    computed = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert computed["per_class"][2]["roc_auc"] is None and computed["per_class"][2]["support"] == 0
    assert computed["roc_auc_macro"] == pytest.approx(
        np.mean([sk.roc_auc_score(labels == k, probabilities[:, k]) for k in (0, 1)])
    )


def test_confident_mistakes_are_wrong_and_sorted_by_confidence() -> None:
    labels, probabilities = predictions(1_000)
    chosen = confident_mistakes(labels, probabilities, count=16)
    predicted = probabilities.argmax(axis=1)
    assert len(chosen) == 16 and (predicted[chosen] != labels[chosen]).all()
    confidence = probabilities[chosen, predicted[chosen]]
    assert (np.diff(confidence) <= 0).all()
    wrong = predicted != labels
    assert confidence[-1] >= np.sort(probabilities[wrong, predicted[wrong]])[-16]


def test_grid_opens_with_the_mistakes_most_confident_first() -> None:
    labels, probabilities = predictions(1_000)
    shown = grid_samples(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    assert len(shown) <= GRID_IMAGES and len(set(shown.tolist())) == len(shown)
    assert shown[:16].tolist() == confident_mistakes(labels, probabilities, 16).tolist()
    assert (predicted[shown[:16]] != labels[shown[:16]]).all()
    perfect = np.eye(10, dtype=np.float32)[labels]
    assert len(grid_samples(labels, perfect)) == GRID_IMAGES  # no mistakes: the seeded sample alone


class _References(HTMLParser):
    """Collects every src/href attribute and the tags that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.references += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "srcset")]


def assert_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    parser = _References()
    parser.feed(text)
    assert parser.references, "the report embeds no images"
    assert all(value.startswith("data:image/png;base64,") for _, _, value in parser.references), parser.references
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in text and "@import" not in text


def synthetic_manifest(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    return {
        "name": "fashion",
        "label": "//model_defs:fashion",
        "content_hash": "c" * 64,
        "data_fingerprint": "d" * 64,
        "created": "2026-11-22T12:00:00Z",
        "class_names": class_names,
        "metrics": {"test": {"loss": 0.4}, **classification_metrics(labels, probabilities, class_names)},
        "history": {
            "loss": [1.0, 0.6, 0.4],
            "val_loss": [1.1, 0.7, 0.5],
            "accuracy": [0.6, 0.8, 0.85],
            "val_accuracy": [0.55, 0.75, 0.8],
        },  # fmt: skip
        "hparams": {"units": 128},
        "params": 101_770,
        "timings": {"train": 30.0},
    }


def test_report_for_10000_test_images_builds_in_seconds(tmp_path: Path) -> None:
    labels, probabilities = predictions(10_000)
    images = np.random.default_rng(2).integers(0, 256, (10_000, 28, 28, 1)).astype(np.uint8)
    manifest = synthetic_manifest(labels, probabilities, FASHION)
    classification_metrics(labels[:10], probabilities[:10], FASHION)  # scikit-learn's import is not the report's
    started = time.perf_counter()
    path = write_report(tmp_path, manifest, images, labels, probabilities)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"report took {elapsed:.1f}s for 10,000 test images"
    assert path == tmp_path / REPORT_FILE
    pngs = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert pngs == [
        "confusion_matrix.png", "per_class_scores.png", "roc_curves.png", "test_images.png", "training_curves.png",
    ]  # fmt: skip
    assert not [p for p in tmp_path.rglob(".*")], "a temporary file was left behind"
    assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    assert "Ankle boot" in text and "macro average" in text and "weighted average" in text


@pytest.mark.slow
def test_built_digits_report_matches_sklearn_and_is_self_contained(digits_workspace: Path) -> None:
    import onnxruntime

    from buildsys import sources
    from buildsys.actions.data import check_and_split
    from buildsys.workspace import Workspace

    version = digits_workspace / "build-out" / "models" / "digits" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    spec = Workspace(digits_workspace).targets["//model_defs:digits"].spec
    splits = check_and_split(sources.load(spec.data, None), spec, manifest["seed"])
    session = onnxruntime.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"image": splits.x_test})[0]

    assert_equal_to_sklearn(manifest["metrics"], splits.y_test, probabilities)
    assert manifest["metrics"]["accuracy"] == pytest.approx(manifest["metrics"]["test"]["accuracy"], abs=1e-6)
    assert sum(map(sum, manifest["metrics"]["confusion_matrix"])) == manifest["data_sizes"]["test"] == 360
    assert [layer["type"] for layer in manifest["model_summary"]][-2:] == ["Dense", "Dense"]
    assert sum(layer["params"] for layer in manifest["model_summary"]) == manifest["params"]
    assert manifest["quality_gate"] == {**manifest["quality_gate"], "declared": False, "passed": True}
    assert {"report", "evaluate", "verify"} <= set(manifest["timings"])

    assert_self_contained(version / REPORT_FILE)
    for png in ("training_curves", "confusion_matrix", "roc_curves", "per_class_scores", "test_images"):
        assert (version / "report" / f"{png}.png").read_bytes().startswith(b"\x89PNG")

    # The grid shows what went wrong first: digits makes a few mistakes, and the grid opens with them.
    wrong = probabilities.argmax(axis=1) != splits.y_test
    assert wrong.any()
    shown = grid_samples(splits.y_test, probabilities)
    assert wrong[shown[0]] and wrong[shown[: wrong.sum()]].all() and not wrong[shown[wrong.sum() :]].any()
    assert f"First the {wrong.sum()} wrong predictions" in (version / REPORT_FILE).read_text(encoding="utf-8")
    # Layer names as `compile` shows them, though the build made a second model for evaluation.
    assert [layer["name"] for layer in manifest["model_summary"]] == ["image", "preprocess", "flatten", "dense",
                                                                       "probabilities"]  # fmt: skip


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(digits_workspace: Path, tmp_path: Path) -> None:
    from PIL import Image

    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found on PATH (looked for {', '.join(BROWSERS)}); .ci/run installs Debian's chromium")
    report = digits_workspace / "build-out" / "models" / "digits" / "1" / REPORT_FILE
    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--window-size=1200,3000",
             report.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert screenshot.is_file(), result.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (3000, 1200, 3)
    colours = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
    assert len(np.unique(colours)) > 200, "the screenshot is (nearly) one flat colour"
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80) & (pixels[..., 1] < 140)
    assert blue.sum() > 1_000, "no blue (correct) frames or confusion-matrix shading rendered"
    assert (pixels[:120] < 100).all(axis=2).sum() > 200, "the heading did not render"


@pytest.mark.slow
def test_report_command_prints_path_and_summary(digits_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "digits", "--workspace", str(digits_workspace)]) == 0
    out = capsys.readouterr().out
    assert f"report: {digits_workspace / 'build-out' / 'models' / 'digits' / '1' / REPORT_FILE}" in out
    assert "macro avg" in out and "weighted avg" in out and "ROC AUC" in out
    assert main(["report", "digits", "--workspace", str(digits_workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["confusion_matrix"]
    assert main(["report", "digits", "--version", "7", "--workspace", str(digits_workspace)]) == 1
    assert "has no version 7; published: 1" in capsys.readouterr().err

    probe = (
        "import sys\nfrom buildsys.cli import main\ncode = main(['report', 'digits'])\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=digits_workspace, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tensorflow not imported" in result.stdout
