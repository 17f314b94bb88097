"""Dynamic batching for one model version: merges concurrent requests into one model execution.

A request waits at most ``max_queue_delay_us`` (counted from the oldest waiting request) for others to join,
and a merged batch holds at most ``max_batch_size`` samples. The queue is bounded by ``max_queue_size``
requests: beyond it ``submit`` refuses at once with UNAVAILABLE instead of letting latency grow without limit.
One worker thread runs the executions, so the model sees one call at a time and ONNX Runtime's intra-op
threads do the parallel work. This module knows nothing about gRPC; results and errors travel in futures.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from serving.errors import ServingError, Status
from serving.statistics import ModelStats

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass
class _Pending:
    inputs: Tensors
    batch_size: int
    shape_key: tuple
    enqueued_ns: int
    deadline_ns: int | None
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Queues requests of one model version and executes them in merged batches on a worker thread."""

    def __init__(
        self,
        *,
        name: str,
        execute: Callable[[Tensors], Tensors],
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        stats: ModelStats,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.max_queue_size = max_queue_size
        self._execute = execute
        self._stats = stats
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_samples = 0
        self._closing = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an execution (not counting the batch being executed)."""
        return len(self._queue)

    def submit(self, inputs: Tensors, batch_size: int, timeout_s: float | None = None) -> "Future[Tensors]":
        """Queues one request whose inputs all have ``batch_size`` rows; the future yields its own rows.

        Args:
            inputs: validated arrays by input name, first dimension the batch.
            batch_size: rows in this request, at most ``max_batch_size``.
            timeout_s: optional limit on the wait before execution; expiry fails with DEADLINE_EXCEEDED.

        Raises:
            ServingError: UNAVAILABLE when the queue is full or the batcher is closing.
        """
        now = time.monotonic_ns()
        deadline = None if timeout_s is None else now + int(timeout_s * 1e9)
        shape_key = tuple((name, array.shape[1:]) for name, array in sorted(inputs.items()))
        pending = _Pending(inputs, batch_size, shape_key, now, deadline)
        with self._cond:
            if self._closing:
                raise ServingError(Status.UNAVAILABLE, f"model '{self.name}' is shutting down; retry")
            if len(self._queue) >= self.max_queue_size:
                raise ServingError(
                    Status.UNAVAILABLE,
                    f"model '{self.name}' queue is full ({self.max_queue_size} requests waiting); retry later",
                )
            self._queue.append(pending)
            self._queued_samples += batch_size
            self._cond.notify()
        return pending.future

    def close(self) -> None:
        """Stops accepting requests, executes everything already queued without waiting, and joins."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute_batch(batch)

    def _next_batch(self) -> list[_Pending] | None:
        """Waits for the oldest request's delay or a full batch, then takes the requests that fit.

        The oldest request always fits, so a large request skipped over once leads the next batch: no
        starvation.
        """
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            flush_at = self._queue[0].enqueued_ns + self.max_queue_delay_us * 1000
            while not self._closing and self._queued_samples < self.max_batch_size:
                remaining_s = (flush_at - time.monotonic_ns()) / 1e9
                if remaining_s <= 0:
                    break
                self._cond.wait(remaining_s)
            first = self._queue[0]
            batch, kept, samples = [], deque(), 0
            while self._queue:
                pending = self._queue.popleft()
                fits = pending.shape_key == first.shape_key and samples + pending.batch_size <= self.max_batch_size
                if fits:
                    batch.append(pending)
                    samples += pending.batch_size
                else:
                    kept.append(pending)
            self._queue = kept
            self._queued_samples -= samples
            return batch

    def _execute_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic_ns()
        live = []
        for pending in batch:
            if pending.deadline_ns is not None and started > pending.deadline_ns:
                waited_ms = (started - pending.enqueued_ns) / 1e6
                pending.future.set_exception(
                    ServingError(
                        Status.DEADLINE_EXCEEDED,
                        f"model '{self.name}': request timed out after {waited_ms:.1f} ms in the queue",
                    )
                )
            elif pending.future.set_running_or_notify_cancel():
                live.append(pending)
        if not live:
            return
        queue_ns = sum(started - p.enqueued_ns for p in live)
        samples = sum(p.batch_size for p in live)
        try:
            merged = {
                name: np.concatenate([p.inputs[name] for p in live]) if len(live) > 1 else live[0].inputs[name]
                for name in live[0].inputs
            }
            input_done = time.monotonic_ns()
            outputs = self._execute(merged)
            infer_done = time.monotonic_ns()
        except Exception as error:  # the model failing must fail these requests, never the server
            log.exception("model '%s': execution of a batch of %d failed", self.name, samples)
            failure = ServingError(Status.INTERNAL, f"model '{self.name}' failed to execute: {error}")
            for pending in live:
                pending.future.set_exception(failure)
            return
        offset = 0
        for pending in live:
            rows = slice(offset, offset + pending.batch_size)
            pending.future.set_result({name: array[rows] for name, array in outputs.items()})
            offset += pending.batch_size
        output_done = time.monotonic_ns()
        self._stats.record_execution(
            samples,
            len(live),
            queue_ns,
            input_done - started,
            infer_done - input_done,
            output_done - infer_done,
        )
        self._on_batch(samples)
