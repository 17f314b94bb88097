"""What a build prints: one block per target, one line per finished action and epoch, one result line.

Output follows Bazel and Keras habits. The label heads the block once; each line under it is indented and shows an
action (or an epoch) when it has finished, with its wall time and what it found:

    //model_defs:digits
      load data     0.41s
      compile       0.08s  default (1 CPU), 4,810 parameters
      epoch 1/40    1.74s  accuracy 0.6187, loss 1.6582, val_accuracy 0.8056, val_loss 1.1011
      ...
      published version 1 to build-out/models/digits/1

Off a terminal (CI logs, pipes) that is all, so a log holds exactly one line per epoch and per action. On a terminal
Keras' progress bar shows the epoch in progress and is replaced by the epoch's line when it ends. `--quiet` prints
only the result line, then prefixed with the label (`//model_defs:digits: up to date (version 1)`), as is a block
that has nothing but its result. Warnings go to stderr, each once per process. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

NAME_WIDTH = 12
_warned: set[str] = set()


def warn_once(message: str) -> None:
    """`warning: MESSAGE` on stderr, the first time only: the warnings that matter, said once in our own words."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def epoch_line(epoch: int, epochs: int, seconds: float, logs: dict[str, float]) -> str:
    """The line of a finished epoch, aligned with the actions': `epoch 3/40    0.16s  accuracy 0.9312, ...`."""
    shown = ", ".join(f"{name} {value:.4f}" for name, value in logs.items())
    return f"{f'epoch {epoch}/{epochs}':<{NAME_WIDTH}}{seconds:6.2f}s  {shown}"


def clear_progress_line() -> None:
    """Erases a progress bar drawn on the terminal's current line, so that the next line starts clean."""
    if sys.stdout.isatty():
        sys.stdout.write("\r\033[K")


class Reporter:
    """Prints a target's block, and keeps the actions' wall times for the manifest.

    An action's line is held back until the next line is due, so that what the build learns right after the
    action (the strategy after compile, the parity after verify) joins its line through `note` instead of adding
    one.
    """

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self._headed = False
        self._pending: tuple[str, float, list[str]] | None = None

    def _print(self, line: str) -> None:
        if self.quiet:
            return
        if not self._headed:
            print(self.label, flush=True)
            self._headed = True
        print(f"  {line}", flush=True)

    def _flush(self) -> None:
        if self._pending is not None:
            name, seconds, notes = self._pending
            self._pending = None
            self._print(f"{name:<{NAME_WIDTH}}{seconds:6.2f}s" + (f"  {'; '.join(notes)}" if notes else ""))

    def say(self, message: str) -> None:
        """One line of its own in the block: an epoch, or something the user must know (a resumed build)."""
        self._flush()
        self._print(message)

    def note(self, message: str) -> None:
        """Adds `message` to the line of the action that just finished (a line of its own when there is none)."""
        if self._pending is None:
            self.say(message)
        else:
            self._pending[2].append(message)

    @contextmanager
    def action(self, name: str) -> Iterator[None]:
        """Times the action; its line is printed once it has finished (and nothing when it fails)."""
        self._flush()
        started = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - started, 3)
        self._pending = (name, self.timings[name], [])

    def result(self, message: str) -> None:
        """The block's last line (`published version 1 to ...`, `up to date (version 1)`); printed even when quiet."""
        self._flush()
        if self._headed:
            print(f"  {message}", flush=True)
        else:
            print(f"{self.label}: {message}", flush=True)
