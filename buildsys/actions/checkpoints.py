"""Training that survives being killed: a checkpoint after every finished epoch, and epoch progress lines.

A build's checkpoint lives in its work folder (`build-out/work/<name>/<content hash>/checkpoint/`), so a changed
definition, data set, seed, hyperparameter or training option — anything in the cache key — never resumes from
another build's weights. Each checkpoint is a Keras weights file (model and optimizer variables) plus `state.json`
(finished epochs and the history so far); the weights are written under a new name first and `state.json` is
replaced by rename last, so a kill at any moment leaves either the previous checkpoint or the new one, never a torn
one. Keras' own `BackupAndRestore` writes its weights in place and forgets the history of the finished epochs,
which the manifest needs, hence this small equivalent.

This module imports Keras (and so TensorFlow); only the training code imports it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildsys.actions import tensorflow
from buildsys.console import clear_progress_line, epoch_line
from buildsys.store import write_json_atomic

tensorflow()
import keras  # noqa: E402 - after tensorflow() has chosen the backend and silenced TensorFlow's start-up logs

STATE_FILE = "state.json"


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was kept and how to resume."""


class TrainingCheckpoint:
    """The last finished epoch of one build: weights, optimizer state and history, in `folder`.

    A multi-worker task other than the chief reads the chief's checkpoint but never writes one (`writable=False`):
    every worker holds the same weights after each step, so one copy is enough, and restoring all workers from the
    same copy keeps them at the same epoch — which needs the work folder on storage they share.
    """

    def __init__(self, folder: Path, *, writable: bool = True) -> None:
        self.folder = folder
        self.writable = writable

    def state(self) -> dict[str, Any] | None:
        """`{"epoch": N, "history": {...}, "weights": FILE}` of the last saved epoch, or None when there is none."""
        path = self.folder / STATE_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        return state if (self.folder / state["weights"]).exists() else None

    def restore(self, model: Any) -> tuple[int, dict[str, list[float]]]:
        """Loads the last checkpoint into `model` (building its optimizer first); returns (finished epochs, history).

        Returns (0, {}) when there is nothing to resume.
        """
        state = self.state()
        if state is None:
            return 0, {}
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(self.folder / state["weights"]))
        return int(state["epoch"]), {key: list(values) for key, values in state["history"].items()}

    def save(self, model: Any, epoch: int, history: dict[str, list[float]]) -> None:
        """Records that `epoch` epochs are finished, with the model as it stands and the history so far."""
        if not self.writable:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epoch}.weights.h5"
        model.save_weights(str(self.folder / weights), overwrite=True)
        write_json_atomic(self.folder / STATE_FILE, {"epoch": epoch, "history": history, "weights": weights})
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def interrupted_message(checkpoint: TrainingCheckpoint, epochs: int) -> str:
    """What Ctrl-C during training kept, and how to go on."""
    state = checkpoint.state()
    if state is None:
        return "nothing was published and no epoch had finished; run the same command again to start over"
    return (
        f"nothing was published; {state['epoch']}/{epochs} epochs are saved in {checkpoint.folder}, and running the "
        f"same command again resumes at epoch {state['epoch'] + 1} (clean the target to start over)"
    )


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a `TrainingCheckpoint` at the end of every epoch, extending the history restored at the start; each
    epoch's logs go in under `prefix` + their name (a transfer target's fine-tuning keeps `fine_tune_loss` beside
    its head's `loss`)."""

    def __init__(self, checkpoint: TrainingCheckpoint, history: dict[str, list[float]], prefix: str = "") -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.history = {key: list(values) for key, values in history.items()}
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(f"{self.prefix}{key}", []).append(float(value))
        self.checkpoint.save(self.model, epoch + 1, self.history)


class EpochProgress(keras.callbacks.Callback):
    """One line per finished epoch through `say`, and Keras' progress bar for the epoch in progress.

    The lines are the build's progress in logs, and they let a test or a supervisor see which epoch finished. With
    `bar` (a terminal) a `keras.utils.Progbar` shows the running epoch's steps and metrics and is erased when the
    epoch's line replaces it, so a terminal ends up showing the same lines as a log.
    """

    def __init__(self, say: Callable[[str], None], epochs: int, *, bar: bool = False) -> None:
        super().__init__()
        self.say = say
        self.epochs = epochs
        self.bar = bar
        self.started = 0.0
        self.progress: keras.utils.Progbar | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        if self.bar:
            self.progress = keras.utils.Progbar(self.params.get("steps"), verbose=1, unit_name="step")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress is not None:
            self.progress.update(batch + 1, list((logs or {}).items()), finalize=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress is not None:
            clear_progress_line()
            self.progress = None
        shown = {name: float(value) for name, value in (logs or {}).items()}
        self.say(epoch_line(epoch + 1, self.epochs, time.perf_counter() - self.started, shown))
