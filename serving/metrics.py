"""Prometheus metrics: request counts by status, request latency, merged batch sizes and queue depth; Triton's
per-version metrics under Triton's names; and the process's CPU and memory.

Always recorded (a few counter increments per request) in a private registry, and exposed over HTTP only when
``--metrics-port`` is given, so there is one code path whether or not anyone scrapes. Triton's metrics
(``nv_inference_request_success``, ``nv_inference_request_failure`` by reason, ``nv_inference_count``,
``nv_inference_exec_count``, the cumulative ``nv_inference_*_duration_us`` and
``nv_inference_pending_request_count``, labelled ``model`` and ``version``) are read from each version's statistics
at scrape time, costing a request nothing, so that dashboards and alerts built on a Triton server read this one.
They are exposed untyped: the Prometheus library would name every counter ``..._total``, and Triton's are not.
Triton's CPU metrics are there too, as Triton computes them: ``nv_cpu_utilization`` (busy share of every core
since the previous scrape, 0 to 1), ``nv_cpu_memory_total_bytes`` and ``nv_cpu_memory_used_bytes`` (total less
available).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.statistics import FAILURE_REASONS, StatsSnapshot

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self):
        family = GaugeMetricFamily("serving_queue_depth", "Requests waiting for a batch, by model", labels=["model"])
        for model, depth in sorted(self._depths().items()):
            family.add_metric([model], depth)
        yield family


@dataclass(frozen=True)
class VersionState:
    """What Triton's metrics say of one loaded version: its statistics and the requests queued for it."""

    model: str
    version: str
    stats: StatsSnapshot
    pending: int


# Triton's cumulative per-version metrics: name, help, and the value from a version's statistics.
TRITON_COUNTERS: tuple[tuple[str, str, Callable[[StatsSnapshot], int]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (a batch of n is n)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (merged batches)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
    ("nv_cache_num_hits_per_model", "Number of response cache hits per model", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of response cache misses per model", lambda s: s.cache_miss.count),
    ("nv_cache_hit_duration_per_model", "Cumulative time spent finding answers on cache hits, microseconds",
     lambda s: s.cache_hit.ns // 1000),
    ("nv_cache_miss_duration_per_model", "Cumulative time spent looking up and keeping answers on cache misses, "
     "microseconds", lambda s: s.cache_miss.ns // 1000),
)  # fmt: skip


class _TritonMetrics(Collector):
    def __init__(self, versions: Callable[[], Iterable[VersionState]]) -> None:
        self._versions = versions

    def collect(self):
        versions = sorted(self._versions(), key=lambda v: (v.model, int(v.version)))
        failure = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "unknown")  # fmt: skip
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "Requests waiting for an execution", labels=["model", "version"]
        )
        for state in versions:
            labels = {"model": state.model, "version": state.version}
            for reason in FAILURE_REASONS:
                failure.add_sample(failure.name, {**labels, "reason": reason}, state.stats.failures[reason])
            pending.add_metric([state.model, state.version], state.pending)
        for name, documentation, value in TRITON_COUNTERS:
            family = Metric(name, documentation, "unknown")
            for state in versions:
                family.add_sample(name, {"model": state.model, "version": state.version}, value(state.stats))
            yield family
        yield failure
        yield pending


class _SystemMetrics(Collector):
    """Triton's nv_cpu_* gauges, the utilization over the time since the previous scrape."""

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def collect(self):
        now = psutil.cpu_times()
        moved = {field: max(0.0, getattr(now, field) - getattr(self._last, field)) for field in now._fields}
        self._last = now
        busy = sum(moved.get(field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal"))
        idle = moved.get("idle", 0.0) + moved.get("iowait", 0.0)
        memory = psutil.virtual_memory()
        yield GaugeMetricFamily(
            "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=busy / (busy + idle) if busy + idle else 0
        )
        yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory.total)
        yield GaugeMetricFamily(
            "nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=memory.total - memory.available
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.registry.register(_SystemMetrics())
        self._requests = Counter(
            "serving_requests",
            "ModelInfer requests by model and status code",
            ["model", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "serving_request_latency_seconds",
            "ModelInfer latency in the server",
            ["model"],
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "serving_batch_size",
            "Samples per model execution (merged batch)",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple] = {}
        self._batch_children: dict[str, Histogram] = {}

    def watch_queue_depth(self, depths: Callable[[], dict[str, int]]) -> None:
        """Registers the function read at each scrape for the queue-depth gauge."""
        self.registry.register(_QueueDepth(depths))

    def watch_versions(self, versions: Callable[[], Iterable[VersionState]]) -> None:
        """Registers the function read at each scrape for Triton's per-version metrics."""
        self.registry.register(_TritonMetrics(versions))

    def observe_request(self, model: str, code: str, seconds: float) -> None:
        children = self._children.get((model, code))
        if children is None:  # looked up once per model and code: labels() costs more than the increment
            children = self._children[(model, code)] = (self._requests.labels(model, code), self._latency.labels(model))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        histogram = self._batch_children.get(model)
        if histogram is None:
            histogram = self._batch_children[model] = self._batch_size.labels(model)
        histogram.observe(size)

    def serve_http(self, host: str, port: int) -> None:
        """Starts the /metrics endpoint on a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
