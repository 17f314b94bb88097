"""The quality gate: the definition's thresholds, the verdict, and a real weakened build kept out of the repository."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from buildsys import sources
from buildsys.actions.data import check_and_split
from buildsys.build import onnx_outputs
from buildsys.cache import cache_key
from buildsys.cli import main
from buildsys.dsl import Dense, Flatten, datasets, evaluate, image_input, model, train
from buildsys.dsl.specs import EvaluateSpec
from buildsys.errors import DefinitionError
from buildsys.gate import judge
from buildsys.workspace import Workspace
from modelrepo import Manifest
from tests.conftest import REPO, write_definition


def manifest(accuracy: float, fingerprint: str = "a" * 64, version: int | None = None) -> dict:
    found = {"label": "//model_defs:digits", "metrics": {"accuracy": accuracy}, "data_fingerprint": fingerprint}
    return {**found, "version": version} if version else found


def published(accuracy: float = 0.0, fingerprint: str = "a" * 64, version: int = 1, **metrics: dict) -> Manifest:
    found = metrics or {"accuracy": accuracy}
    return Manifest("digits", "c" * 64, (), (), version=version, metrics=found, data_fingerprint=fingerprint)


def test_without_a_gate_everything_passes() -> None:
    verdict = judge(None, manifest(0.1), published(0.99, version=4))
    assert verdict.passed and not verdict.declared and not verdict.notes


def test_min_accuracy() -> None:
    assert judge(EvaluateSpec(0.9, None), manifest(0.91), None).passed
    verdict = judge(EvaluateSpec(0.9, None), manifest(0.85), None)
    assert not verdict.passed
    assert verdict.failures == ["test accuracy 0.8500 is below min_accuracy 0.9000"]


def test_max_regression_against_the_published_version_on_the_same_data() -> None:
    passed = judge(EvaluateSpec(None, 0.01), manifest(0.965), published(0.97, version=3))
    assert passed.passed and passed.baseline_version == 3 and passed.same_data
    failed = judge(EvaluateSpec(None, 0.01), manifest(0.95), published(0.97, version=3))
    assert not failed.passed
    (failure,) = failed.failures
    assert "0.9500" in failure and "published version 3's 0.9700" in failure and "max_regression 0.0100" in failure


def test_different_test_data_is_said_and_not_compared() -> None:
    verdict = judge(EvaluateSpec(0.5, 0.01), manifest(0.6, "a" * 64), published(0.97, "b" * 64, version=2))
    assert verdict.passed and verdict.same_data is False
    assert any("was tested on different data" in note and "bbbbbbbbbbbb" in note for note in verdict.notes)


def test_the_first_version_has_nothing_to_regress_from() -> None:
    verdict = judge(EvaluateSpec(None, 0.0), manifest(0.2), None)
    assert verdict.passed and "no published version" in verdict.notes[0]


def test_versions_without_report_metrics_compare_on_keras_accuracy() -> None:
    old = published(test={"accuracy": 0.97, "loss": 0.1})
    assert not judge(EvaluateSpec(None, 0.01), manifest(0.9), old).passed


def tiny(**gate: float) -> object:
    return model(
        name="tiny",
        data=datasets.sklearn_digits(),
        inputs=image_input(shape=(8, 8)),
        layers=[Flatten(), Dense(10, activation="softmax")],
        train=train(),
        **({"evaluate": evaluate(**gate)} if gate else {}),
    )


def test_the_gate_is_part_of_the_cache_key_only_when_declared() -> None:
    plain, gated, stricter = tiny(), tiny(min_accuracy=0.9), tiny(min_accuracy=0.95)
    assert "evaluate" not in plain.to_json()
    assert gated.to_json()["evaluate"] == {"min_accuracy": 0.9, "max_regression": None}
    keys = {cache_key(spec, "f" * 64, 1, {}).digest for spec in (plain, gated, stricter)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_accuracy": 85}, "evaluate(min_accuracy=...) expects a number in [0, 1] (a fraction, not a percentage). "
         "Received: 85 (int)."),
        ({"max_regression": "0.01"}, 'evaluate(max_regression=...) expects a number in [0, 1]'),
    ],
)  # fmt: skip
def test_bad_thresholds_name_the_line(arguments: dict, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        evaluate(**arguments)
    assert message in str(caught.value)
    assert re.match(r".*test_gate\.py:\d+: ", str(caught.value))


WEAK = """
    from buildsys.dsl import *

    model(
        name="digits",
        data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
        inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
        layers=[Flatten(), Dense(4, activation="relu"), Dense(10, activation="softmax")],
        train=train(epochs=1, batch_size=64),
        evaluate=evaluate(max_regression=0.01),
    )
"""


@pytest.mark.slow
def test_weakened_model_is_rejected_and_a_gate_judges_the_published_model_again(
    digits_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(digits_workspace / "build-out", tmp_path / "build-out")
    write_definition(tmp_path, "digits.py", WEAK)
    models = tmp_path / "build-out" / "models" / "digits"
    config = (models / "config.pbtxt").read_text()
    published = json.loads((models / "1" / "manifest.json").read_text())

    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    found = re.search(r"test accuracy (0\.\d{4}) vs published version 1's (0\.\d{4})", error)
    assert found, error
    assert float(found[2]) == pytest.approx(published["metrics"]["accuracy"], abs=1e-4)
    assert float(found[1]) < float(found[2]) - 0.01
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1"]
    assert (models / "config.pbtxt").read_text() == config
    (rejected,) = (tmp_path / "build-out" / "rejected" / "digits").iterdir()
    assert str(rejected) in error
    verdict = json.loads((rejected / "manifest.json").read_text())
    # Kept by what it was trained from, the gate left out (so another gate can judge it again), with the test
    # split's probabilities it was judged on.
    assert re.fullmatch("[0-9a-f]{64}", rejected.name) and rejected.name != verdict["content_hash"]
    assert "version" not in verdict and (rejected / "test_probabilities.npy").is_file()
    assert verdict["quality_gate"]["passed"] is False and verdict["quality_gate"]["baseline_version"] == 1
    assert (rejected / "model.onnx").is_file()
    page = (rejected / "report.html").read_text()
    assert "Rejected by the quality gate" in page and f"published version 1&#x27;s {found[2]}" in page
    assert not list((tmp_path / "build-out" / "staging" / "digits").iterdir())

    # The same content again: the kept candidate is gated again against what is published, without training.
    kept = (rejected / "model.onnx").stat().st_mtime_ns
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 1
    again = capsys.readouterr().err.strip()
    assert again.startswith(f"error: //model_defs:digits: rejected by the quality gate: {found[0]}")
    assert f"this content was trained and rejected before (the candidate and its report are in {rejected})" in again
    assert again.endswith("build --force trains it again") and len(again.splitlines()) == 1
    assert (rejected / "model.onnx").stat().st_mtime_ns == kept
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet", "--force"]) == 1
    assert "trained and rejected before" not in capsys.readouterr().err
    assert (rejected / "model.onnx").stat().st_mtime_ns != kept  # trained again, and rejected again

    good = (
        (REPO / "model_defs" / "digits.py")
        .read_text()
        .replace(
            "    train=train(", "    evaluate=evaluate(min_accuracy=0.9, max_regression=0.02),\n    train=train(", 1
        )
    )
    # The published model's own definition with a gate added: the gate judges version 1, trained from the same
    # inputs, instead of training the same model again; a gate that version 1 fails fails at once.
    (tmp_path / "model_defs" / "digits.py").write_text(good)
    assert main(["build", "digits", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "version 1 was trained from these inputs under another quality gate; it passes this one" in out
    assert "up to date (version 1)" in out
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 0
    assert "up to date (version 1)" in capsys.readouterr().out
    (tmp_path / "model_defs" / "digits.py").write_text(good.replace("min_accuracy=0.9,", "min_accuracy=0.9999,"))
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(
        r"error: //model_defs:digits: rejected by the quality gate: test accuracy 0\.\d{4} is below min_accuracy "
        r"0\.9999; published version 1 was trained from these inputs under another gate and stays published; "
        r"nothing was trained; build --force trains it again",
        error,
    ), error
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1"]
    (tmp_path / "model_defs" / "digits.py").write_text(good)
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet", "--force"]) == 0
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1", "2"]
    gate = json.loads((models / "2" / "manifest.json").read_text())["quality_gate"]
    assert gate["passed"] and gate["baseline_version"] == 1 and gate["same_data"] is True
    assert "Quality gate passed" in (models / "2" / "report.html").read_text()


@pytest.mark.slow
def test_a_kept_candidate_that_a_relaxed_gate_passes_is_published_without_training(
    digits_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(digits_workspace / "build-out", tmp_path / "build-out")
    write_definition(tmp_path, "digits.py", WEAK)
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 1
    (rejected,) = (tmp_path / "build-out" / "rejected" / "digits").iterdir()
    kept = json.loads((rejected / "manifest.json").read_text())
    capsys.readouterr()

    write_definition(tmp_path, "digits.py", WEAK.replace("max_regression=0.01", "max_regression=0.9"))
    probabilities = rejected / "test_probabilities.npy"
    kept_probabilities = probabilities.read_bytes()
    np.save(probabilities, np.zeros((3, 10), np.float32))  # damaged: it must not be drawn into a report
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == (
        f"error: {probabilities}: not this test split's probabilities ((3, 10)); build --force trains the candidate "
        "again"
    )
    assert not (tmp_path / "build-out" / "models" / "digits" / "2").exists()
    probabilities.write_bytes(kept_probabilities)
    # A candidate kept without them (fetched from a remote cache and rejected here) has its ONNX model run over
    # the test split instead, which gives the probabilities its Keras model was judged on.
    spec = Workspace(tmp_path).targets["//model_defs:digits"].spec
    x_test = check_and_split(sources.load(spec.data, None), spec, spec.train.seed).x_test
    np.testing.assert_allclose(onnx_outputs(rejected, kept, x_test), np.load(probabilities), atol=1e-5)
    probabilities.unlink()
    assert main(["build", "digits", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"the candidate rejected earlier ({rejected}) passes the gate now; publishing it untrained" in out
    assert "published version 2" in out
    version = tmp_path / "build-out" / "models" / "digits" / "2"
    published = json.loads((version / "manifest.json").read_text())
    assert published["weights_sha256"] == kept["weights_sha256"]  # the kept model itself, not trained again
    assert published["metrics"] == kept["metrics"] and published["timings"] == kept["timings"]
    assert published["quality_gate"]["passed"] and published["spec"]["evaluate"]["max_regression"] == 0.9
    assert published["content_hash"] != kept["content_hash"]  # keyed by this build's definition, gate included
    assert "Quality gate passed" in (version / "report.html").read_text()
    assert not (version / "test_probabilities.npy").exists() and not rejected.exists()
    assert main(["build", "digits", "--workspace", str(tmp_path), "--quiet"]) == 0
    assert "up to date (version 2)" in capsys.readouterr().out
