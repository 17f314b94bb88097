"""A one-line progress bar on stderr for long batch jobs (predict, data import), shown only on a terminal.

It redraws at most five times a second and only once a job has run for a second, so short runs and logs stay
clean. Standard library only.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished items of a job of `total` items and draws `label [#####.....] done/total rate/s`."""

    def __init__(self, label: str, total: int, unit: str = "images", stream: TextIO | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.done = 0
        self.started = time.perf_counter()
        self._drawn = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def advance(self, count: int) -> None:
        self.done += count
        now = self.elapsed
        if self.enabled and now >= 1.0 and now - self._drawn >= 0.2:
            self._drawn = now
            fraction = self.done / self.total if self.total else 1.0
            bar = "#" * int(fraction * 30)
            rate = self.done / now
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done:,}/{self.total:,} {self.unit} ({rate:,.0f}/s)")
            self.stream.flush()

    def close(self) -> None:
        """Clears the bar's line so the summary that follows starts on a clean line."""
        if self.enabled and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
