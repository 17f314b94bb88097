"""`tune`: a KerasTuner search over a definition's hp.* declarations, its results, resume, and chief/worker mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from buildsys.build import BuildOptions, plan
from buildsys.cli import _hparams_for, main
from buildsys.store import OutputTree
from buildsys.tuning import list_trials
from buildsys.workspace import Workspace
from tests.conftest import run_buildsys, write_definition
from tests.ports import free_port

pytestmark = pytest.mark.slow

TINY = """
from buildsys.dsl import *

model(
    name="tiny",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(hp.Int("units", 16, 64, step=16, default=32), activation="relu"),
        Dense(10, activation="softmax"),
    ],
    train=train(
        optimizer="adam",
        epochs=2,
        batch_size=64,
        learning_rate=hp.Float("learning_rate", 1e-3, 3e-2, sampling="log", default=3e-3),
    ),
)
"""


def test_search_records_best_resumes_and_feeds_build(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_definition(workspace, "tiny.py", TINY)
    command = ("tune", "tiny", "--tuner", "random", "--max-trials", "2", "--epochs", "1")
    first = run_buildsys(*command, cwd=workspace)
    assert first.returncode == 0, first.stderr
    assert "trial 1/2 started on tuner0: learning_rate=" in first.stdout
    assert "trial 2/2 completed on tuner0: val_accuracy" in first.stdout and "best so far" in first.stdout

    tree = OutputTree(workspace / "build-out")
    trials = list_trials(tree, "tiny")
    assert [trial["status"] for trial in trials] == ["COMPLETED", "COMPLETED"]
    best = json.loads((workspace / "build-out" / "tuning" / "tiny" / "best.json").read_text())
    assert best["score"] == max(trial["score"] for trial in trials)
    assert set(best["hparams"]) == {"units", "learning_rate"}

    again = run_buildsys(*command, cwd=workspace)  # the search is complete: resumed, nothing new runs
    assert again.returncode == 0, again.stderr
    assert "resuming the search" in again.stdout and "started on" not in again.stdout
    assert len(list_trials(tree, "tiny")) == 2

    other = run_buildsys("tune", "tiny", "--tuner", "bayesian", "--max-trials", "2", "--epochs", "1", cwd=workspace)
    assert other.returncode == 1 and "tuner 'random' → 'bayesian'" in other.stderr and "--overwrite" in other.stderr

    target = Workspace(workspace).targets["//model_defs:tiny"]
    hparams = _hparams_for("best", target, tree)
    assert hparams == best["hparams"]
    key = plan(target, tree, BuildOptions(hparams=hparams)).key
    assert key.hparams == dict(sorted(best["hparams"].items()))
    assert key.digest != plan(target, tree, BuildOptions()).key.digest
    assert _hparams_for("best,units=16", target, tree)["units"] == 16

    assert main(["show", "tiny", "--tuning", "--workspace", str(workspace), "--json"]) == 0
    assert [trial["trial_id"] for trial in json.loads(capsys.readouterr().out)["trials"]] == ["0", "1"]


def test_best_without_a_search_says_how_to_tune(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_definition(workspace, "tiny.py", TINY)
    assert main(["build", "tiny", "--hparams", "best", "--workspace", str(workspace)]) == 1
    assert "has no tuning results" in capsys.readouterr().err
    assert main(["tune", "tiny", "--tuner", "hyperband", "--max-trials", "3", "--workspace", str(workspace)]) == 2
    assert "--max-trials does not apply to hyperband" in capsys.readouterr().err


def test_chief_and_two_workers_share_the_trials(workspace: Path) -> None:
    write_definition(workspace, "tiny.py", TINY)
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
    }
    command = [sys.executable, "-m", "buildsys", "tune", "tiny", "--tuner", "random", "--max-trials", "6"]
    command += ["--epochs", "1"]
    chief = subprocess.Popen(
        [*command, "--role", "chief"], cwd=workspace, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [*command, "--role", "worker"],
            cwd=workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environment, "KERASTUNER_TUNER_ID": f"worker{n}"},
        )  # fmt: skip
        for n in range(2)
    ]
    outputs = [process.communicate(timeout=240) for process in (chief, *workers)]
    for process, (_, stderr) in zip((chief, *workers), outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    chief_out, worker_outs = outputs[0][0], [out for out, _ in outputs[1:]]

    ran = [{line.split("trial ")[1].split("/")[0] for line in out.splitlines() if "completed on" in line}
           for out in worker_outs]  # fmt: skip
    assert all(ran), worker_outs  # both workers ran trials
    assert not ran[0] & ran[1]  # no trial ran twice
    assert ran[0] | ran[1] == {str(n) for n in range(1, 7)}  # and none was lost
    assert "started on worker0" in chief_out and "started on worker1" in chief_out

    trials = list_trials(OutputTree(workspace / "build-out"), "tiny")
    assert [trial["trial_id"] for trial in trials] == [str(n) for n in range(6)]
    assert all(trial["status"] == "COMPLETED" for trial in trials)
    best = json.loads((workspace / "build-out" / "tuning" / "tiny" / "best.json").read_text())
    assert best["score"] == max(trial["score"] for trial in trials)
    assert "best val_accuracy" in chief_out


def test_trials_train_under_the_strategy_a_build_would_use(workspace: Path) -> None:
    """MirroredStrategy over two logical CPUs: the trials train on two replicas, the search records it, and a
    resume on one replica is refused with the difference named."""
    write_definition(workspace, "tiny.py", TINY)
    script = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from buildsys.cli import main
        tune = ["tune", "tiny", "--tuner", "random", "--max-trials", "1", "--epochs", "1"]
        assert main([*tune, "--strategy", "mirrored"]) == 0
        assert main([*tune, "--strategy", "default"]) == 1
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny: each trial trains under mirrored (2 CPUs)" in result.stdout
    assert "trial 1/1 completed on tuner0" in result.stdout
    assert json.loads((workspace / "build-out" / "tuning" / "tiny" / "search.json").read_text())["replicas"] == 2
    assert "holds a search started with other settings (replicas 2 → 1)" in result.stderr
