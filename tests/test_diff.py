"""Two real builds of one model with different hyperparameters: `diff`, the model's index.html, quiet output and
TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrepo import list_versions
from tests.conftest import run_buildsys, write_definition

pytestmark = pytest.mark.slow

SMALL = """
from buildsys.dsl import *

model(
    name="small",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[Flatten(), Dense(hp.Int("units", 8, 64, step=8, default=16), activation="relu"),
            Dense(10, activation="softmax")],
    train=train(optimizer="adam", epochs=2, batch_size=64, learning_rate=1e-2),
)
"""


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """`small` built twice: version 1 quietly with TensorBoard logs, version 2 with units=32. Returns the workspace
    and each build's stdout."""
    root = tmp_path_factory.mktemp("two-versions")
    write_definition(root, "small.py", SMALL)
    outputs = []
    for extra in (["--quiet", "--tensorboard"], ["--hparams", "units=32"]):
        result = run_buildsys("build", "small", *extra, cwd=root)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    return root, outputs


def test_quiet_prints_only_the_result_and_tensorboard_logs_hold_the_loss(two_versions: tuple[Path, list[str]]) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    root, (quiet, _) = two_versions
    lines = quiet.splitlines()
    assert len(lines) == 2, quiet
    assert lines[0] == f"//model_defs:small: published version 1 to {root / 'build-out' / 'models' / 'small' / '1'}"
    assert lines[1].startswith("//model_defs:small: TensorBoard logs: tensorboard --logdir ")
    logs = Path(lines[1].rsplit(" ", 1)[1])
    assert logs.parent.parent == root / "build-out" / "work" / "small" and logs.name == "tensorboard"
    assert not (logs.parent / "checkpoint").exists()  # the checkpoints go, the logs stay
    for split in ("train", "validation"):
        (events,) = (logs / split).glob("events.out.tfevents.*")
        steps = [
            event.step
            for event in EventFileLoader(str(events)).Load()
            for value in event.summary.value
            if value.tag == "epoch_loss"
        ]
        assert steps == [0, 1]  # one loss scalar per epoch


def test_diff_shows_the_changed_hyperparameter_as_text_and_json(two_versions: tuple[Path, list[str]]) -> None:
    root, _ = two_versions
    text = run_buildsys("diff", "small", cwd=root)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "//model_defs:small: version 1 → version 2"
    units = next(line for line in lines if line.strip().startswith("units"))
    assert units.split() == ["units", "16", "32", "+16"]
    parameters = next(line for line in lines if line.strip().startswith("parameters"))
    assert parameters.split()[1:] == ["1,210", "2,410", "+1,200"]
    for section in ("metrics", "hyperparameters", "model", "sizes", "timings"):
        assert section in lines

    as_json = run_buildsys("diff", "small", "1", "2", "--json", cwd=root)
    assert as_json.returncode == 0, as_json.stderr
    diff = json.loads(as_json.stdout)
    assert (diff["a"], diff["b"]) == (1, 2)
    (row,) = [row for row in diff["sections"]["hyperparameters"] if row["name"] == "units"]
    assert row == {"name": "units", "a": 16, "b": 32, "changed": True, "change": 16}
    fingerprints = [row for row in diff["sections"]["data"] if row["name"] == "fingerprint"]
    assert fingerprints[0]["changed"] is False and len(fingerprints[0]["a"]) == 64
    assert {row["name"] for row in diff["sections"]["per class"]} >= {"0 f1", "9 precision"}
    assert any(row["name"] == "model.onnx" and row["a"] > 0 for row in diff["sections"]["sizes"])

    only_one = run_buildsys("diff", "small", "2", cwd=root)
    assert only_one.returncode == 2 and "version 2 is the latest" in only_one.stderr


def test_index_lists_every_version_with_its_report_and_serving_ignores_it(two_versions: tuple[Path, list[str]]) -> None:
    root, _ = two_versions
    model_dir = root / "build-out" / "models" / "small"
    page = (model_dir / "index.html").read_text(encoding="utf-8")
    assert 'href="1/report.html"' in page and 'href="2/report.html"' in page
    assert page.index('href="2/report.html"') < page.index('href="1/report.html"')  # newest first
    assert page.count("<circle") == 4  # accuracy and loss, one point per version
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert list_versions(model_dir) == [1, 2]  # a file beside the versions is no version
    assert not list(model_dir.glob(".*"))  # written atomically: no temporary file left
