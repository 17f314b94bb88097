"""The trace extension's ``opentelemetry`` mode: traced requests as OpenTelemetry spans, sent over OTLP/HTTP.

Only this mode imports OpenTelemetry (the optional ``otel`` extra: ``pip install 'buildsys[otel]'``), so a server
that does not use it installs and starts without it. A finished trace becomes the three spans Triton makes, of
kind SERVER: ``InferRequest`` (the front end's part, a child of the caller's span when the request carried a W3C
``traceparent``), a span named after the model (``REQUEST_START`` to ``REQUEST_END``, with Triton's attributes
``triton.model_name``, ``triton.model_version``, ``triton.trace_id`` and ``triton.request_id``) and ``compute``
(``COMPUTE_START`` to ``COMPUTE_END``); every timestamp is an event of the span it belongs to.

The spans are made once the request is answered, from the times it recorded on the monotonic clock (moved onto the
wall clock that spans carry), so a request pays nothing for them while it runs. They are made whole, as the SDK's
``ReadableSpan`` that span processors receive, and handed to a batch span processor, which encodes and sends them
from a thread of its own: starting, annotating and ending them through the SDK's tracer took 117 µs of the event
loop's time a trace, made whole 21 µs (the encoding and sending, in that thread, take about 110 µs more of the
process's CPU: bench/trace_bench.py). A collector that is down costs spans, never a request: an export retries
for ``EXPORT_TIMEOUT_S``, OpenTelemetry's lines about it are let through once a minute, and the server's stop waits
``CLOSE_TIMEOUT_S`` at most for the spans still queued.
"""

import logging
import threading
import time

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving import __version__
from serving.errors import RateLimitFilter
from serving.tracing import OtelOptions, Trace

log = logging.getLogger(__name__)

FRONT_END_PREFIXES = ("HTTP_", "GRPC_")
SAMPLED = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)
EXPORT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
# OpenTelemetry's exporter logs every retry of a collector that is down: a line a second or so.
OPENTELEMETRY_LOG_LIMIT = RateLimitFilter(60.0)


class SpanExporter:
    """Makes each finished trace's spans and hands them to a batch span processor exporting to ``options.url``."""

    def __init__(self, options: OtelOptions, service_name: str) -> None:
        self._resource = Resource.create({"service.name": service_name, **dict(options.resource)})
        self._scope = InstrumentationScope("buildsys-serving", __version__)
        self._url = options.url
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=options.url, timeout=EXPORT_TIMEOUT_S),
            max_queue_size=options.bsp_max_queue_size,
            schedule_delay_millis=options.bsp_schedule_delay,
            max_export_batch_size=options.bsp_max_export_batch_size,
        )
        self._ids = RandomIdGenerator()
        self._propagator = TraceContextTextMapPropagator()
        for name in list(logging.root.manager.loggerDict):  # every OpenTelemetry module imported by now
            logger = logging.getLogger(name)
            if name.startswith("opentelemetry") and OPENTELEMETRY_LOG_LIMIT not in logger.filters:
                logger.addFilter(OPENTELEMETRY_LOG_LIMIT)

    def export(self, trace: Trace) -> None:
        """Makes the trace's spans and queues them for sending (a trace without timestamps has nothing to show)."""
        stamps = trace.stamps
        if not stamps:
            return
        to_wall_clock = time.time_ns() - time.monotonic_ns()
        times = dict(stamps)
        started, ended = min(times.values()), max(times.values())
        request_start, request_end = times.get("REQUEST_START", started), times.get("REQUEST_END", ended)
        caller = self._caller(trace.parent)
        trace_id = caller.trace_id if caller is not None else self._ids.generate_trace_id()
        root, model, compute = (
            trace_api.SpanContext(trace_id, self._ids.generate_span_id(), False, SAMPLED) for _ in range(3)
        )
        root_events, model_events, compute_events = [], [], []
        for name, ns in stamps:
            front_end, computing = name.startswith(FRONT_END_PREFIXES), name.startswith("COMPUTE_")
            events = root_events if front_end else compute_events if computing else model_events
            events.append(Event(name, timestamp=ns + to_wall_clock))
        attributes = {
            "triton.model_name": trace.model or "",
            "triton.model_version": trace.version,
            "triton.trace_id": trace.id,
            "triton.trace_parent_id": 0,
        }
        if trace.request_id:
            attributes["triton.request_id"] = trace.request_id
        spans = [
            self._span("InferRequest", root, caller, root_events, {}, started, ended, to_wall_clock),
            self._span(trace.model or "", model, root, model_events, attributes, request_start, request_end,
                       to_wall_clock),
        ]  # fmt: skip
        if "COMPUTE_START" in times:
            compute_end = times.get("COMPUTE_END", request_end)
            spans.append(
                self._span("compute", compute, model, compute_events, {}, times["COMPUTE_START"], compute_end,
                           to_wall_clock)
            )  # fmt: skip
        for span in spans:
            self._processor.on_end(span)

    def close(self) -> None:
        """Sends what is queued and stops the processor's thread, waiting ``CLOSE_TIMEOUT_S`` at most."""
        stopping = threading.Thread(target=self._processor.shutdown, name="otel-shutdown", daemon=True)
        stopping.start()
        stopping.join(CLOSE_TIMEOUT_S)
        if stopping.is_alive():
            log.warning(
                "spans still unsent after %.0f s (is the collector at %s up?); they are dropped", CLOSE_TIMEOUT_S,
                self._url,
            )  # fmt: skip

    def _caller(self, traceparent: str | None) -> trace_api.SpanContext | None:
        """The caller's span from its W3C ``traceparent``, or None when there is none or it does not parse."""
        if not traceparent:
            return None
        context = trace_api.get_current_span(self._propagator.extract({"traceparent": traceparent})).get_span_context()
        return context if context.is_valid else None

    def _span(
        self,
        name: str,
        context: trace_api.SpanContext,
        parent: trace_api.SpanContext | None,
        events: list[Event],
        attributes: dict[str, object],
        start_ns: int,
        end_ns: int,
        to_wall_clock: int,
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            events=events,
            kind=trace_api.SpanKind.SERVER,
            instrumentation_scope=self._scope,
            start_time=start_ns + to_wall_clock,
            end_time=end_ns + to_wall_clock,
        )
