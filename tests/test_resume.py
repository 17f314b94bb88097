"""Training that survives faults: Ctrl-C and SIGKILL in the middle of an epoch, then the same build resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildsys.build import BuildOptions, plan
from buildsys.store import OutputTree
from buildsys.workspace import Workspace
from tests.conftest import run_buildsys, write_definition

pytestmark = pytest.mark.slow

# Real digits with a wide network and tiny batches: about 1-2 s per epoch on 2 cores, slow enough to kill mid-epoch.
SLOW = """
from buildsys.dsl import *

model(
    name="slow",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[
        Flatten(),
        Dense(hp.Int("units", 16, 512, step=16, default=512), activation="relu"),
        Dense(512, activation="relu"),
        Dense(10, activation="softmax"),
    ],
    train=train(optimizer="adam", epochs=4, batch_size=4, learning_rate=1e-3),
)
"""


def _run_until(root: Path, marker: str, send: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Builds `slow`, sends `send` shortly after a stdout line containing `marker`, and returns the result."""
    process = subprocess.Popen(
        [sys.executable, "-m", "buildsys", "build", "slow"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(0.3)  # inside the epoch, well before its end
            process.send_signal(send)
            break
    _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(seen), stderr), seen


def _state(root: Path) -> dict:
    (state,) = (root / "build-out" / "work" / "slow").glob("*/checkpoint/state.json")
    return json.loads(state.read_text())


def test_interrupt_then_kill_then_resume_publishes_once(workspace: Path) -> None:
    write_definition(workspace, "slow.py", SLOW)

    interrupted, _ = _run_until(workspace, "  epoch 1/4 ", signal.SIGINT)  # epoch 1's line: epoch 2 is running
    assert interrupted.returncode == 130, interrupted.stderr
    assert "interrupted: nothing was published; 1/4 epochs are saved in" in interrupted.stderr
    assert "resumes at epoch 2" in interrupted.stderr
    assert _state(workspace)["epoch"] == 1

    killed, seen = _run_until(workspace, "  epoch 2/4 ", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, "".join(seen)
    assert "resuming after epoch 1/4" in killed.stdout and "  epoch 1/4 " not in killed.stdout
    assert _state(workspace)["epoch"] == 2  # killed in the middle of epoch 3

    # A changed definition is keyed differently, so it can never pick up this checkpoint.
    target = Workspace(workspace).targets["//model_defs:slow"]
    tree = OutputTree(workspace / "build-out")
    changed = plan(target, tree, BuildOptions(hparams={"units": 256})).key.digest
    assert not tree.work_dir("slow", changed).exists()
    assert tree.work_dir("slow", plan(target, tree, BuildOptions()).key.digest).is_dir()

    resumed = run_buildsys("build", "slow", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2/4" in resumed.stdout
    finished = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("  epoch ")]
    assert finished == ["3/4", "4/4"]
    versions = [path.name for path in (workspace / "build-out" / "models" / "slow").iterdir() if path.name.isdigit()]
    assert versions == ["1"]
    manifest = json.loads((workspace / "build-out" / "models" / "slow" / "1" / "manifest.json").read_text())
    assert all(len(values) == 4 for values in manifest["history"].values())
    assert set(manifest["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert manifest["metrics"]["test"]["accuracy"] > 0.85
    assert not (workspace / "build-out" / "work" / "slow").exists() or not any(
        (workspace / "build-out" / "work" / "slow").iterdir()
    )
