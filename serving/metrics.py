"""Prometheus metrics: request counts by status, request latency, merged batch sizes and queue depth.

Always recorded (a few counter increments per request) in a private registry, and exposed over HTTP only when
``--metrics-port`` is given, so there is one code path whether or not anyone scrapes.
"""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self):
        family = GaugeMetricFamily("serving_queue_depth", "Requests waiting for a batch, by model", labels=["model"])
        for model, depth in sorted(self._depths().items()):
            family.add_metric([model], depth)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
