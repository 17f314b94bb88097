"""Cumulative per-model-version statistics in Triton's ModelStatistics terms, kept without any transport.

Triton's conventions: ``inference_count`` counts samples, ``execution_count`` counts model executions (merged
batches); the compute durations in ``inference_stats`` are counted once per request, in ``batch_stats`` once
per execution of a given batch size. Durations are nanoseconds. Failures are also counted by Triton's metrics'
reasons (``FAILURE_REASONS``): REJECTED by the scheduler (a full queue, a timeout or deadline that passed),
CANCELED (the client went away), BACKEND (the model failed) and OTHER (a bad request).
"""

import copy
import threading
import time
from dataclasses import dataclass, field

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class StatsSnapshot:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)


class ModelStats:
    """Thread-safe accumulation; ``snapshot()`` returns a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = StatsSnapshot()

    def record_request(self, succeeded: bool, duration_ns: int, failure_reason: str = "OTHER") -> None:
        """One request answered; a failed one is counted under ``failure_reason`` (one of ``FAILURE_REASONS``)."""
        with self._lock:
            if succeeded:
                self._data.success.add(duration_ns)
            else:
                self._data.fail.add(duration_ns)
                self._data.failures[failure_reason] += 1

    def record_cache(self, hit: bool, duration_ns: int) -> None:
        """A response cache lookup: on a hit the time to find the answer, on a miss to look and then keep it."""
        with self._lock:
            (self._data.cache_hit if hit else self._data.cache_miss).add(duration_ns)

    def record_execution(
        self, batch_size: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model execution of ``batch_size`` samples merged from ``requests`` requests."""
        with self._lock:
            data = self._data
            data.last_inference_ms = time.time_ns() // 1_000_000
            data.inference_count += batch_size
            data.execution_count += 1
            data.queue.add(queue_ns, requests)
            data.compute_input.add(input_ns * requests, requests)
            data.compute_infer.add(infer_ns * requests, requests)
            data.compute_output.add(output_ns * requests, requests)
            batch = data.batches.setdefault(batch_size, BatchDurations())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return copy.deepcopy(self._data)
