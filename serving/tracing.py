"""Triton's trace extension: sampled requests' timestamps (and tensors) written as JSON to a trace file, or sent as
OpenTelemetry spans, with the settings read and changed while the server runs (``GET/POST
/v2[/models/NAME]/trace/setting``, gRPC ``TraceSetting``, tritonclient's ``get_trace_settings``/
``update_trace_settings``).

The server starts with Triton's ``--trace-config`` flags (``level=TIMESTAMPS``, ``rate=N``, ``count=N``, and for the
``triton`` mode ``triton,file=PATH`` and ``triton,log-frequency=N``, for the ``opentelemetry`` mode
``opentelemetry,url=...``, ``resource=KEY=VALUE`` and the batch span processor's ``bsp_*``); tracing is off by
default. Where traces go is chosen at startup only and never over the network, as in Triton: a client must not
choose where the server writes. One request in ``trace_rate`` is traced while ``trace_count`` (-1: no limit) lasts;
in the ``opentelemetry`` mode a request that carries a sampled W3C ``traceparent`` is traced whatever the rate and
count say (as in Triton: ``rate=0`` traces only those), and its spans join the caller's trace.

In the ``triton`` mode a trace is Triton's JSON: a record naming the model, version and request id, then one record
per timestamp (``REQUEST_START``, ``QUEUE_START``, ``COMPUTE_START``, ``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``,
``COMPUTE_END``, ``REQUEST_END``, and the front end's ``HTTP_RECV_*``/``HTTP_SEND_*`` or ``GRPC_*``; nanoseconds of
the monotonic clock, as Triton's steady clock), and at level ``TENSORS`` one record per input as queued and per
output as the model gave it. So Triton's own ``trace_summary.py`` reads our files. With ``log_frequency`` N every N
traces go to ``FILE.0``, ``FILE.1``, ...; with 0 they are held until shutdown and written to ``FILE`` (more than
``MAX_HELD_TRACES`` held go to the next numbered file, so that a long run cannot fill the memory). When
``trace_count`` runs out, what was collected is written to the next numbered file, as Triton does. Every file
appears whole (written aside, then renamed). The ``opentelemetry`` mode is ``serving.otel``.

A model may have settings of its own; a setting it does not give follows the global one, and a null (gRPC: no
value) hands it back. A change is checked whole before any of it applies, and it starts a new sampling (the
counts restart) for the settings it touches, as Triton's does. Nothing here costs a request anything while no
setting traces: ``Tracer.sample`` returns None at once.
"""

import itertools
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from modelrepo.atomic import write_atomic
from serving.errors import RateLimitedLog, ServingError, Status

log = logging.getLogger(__name__)

LEVELS = ("TIMESTAMPS", "TENSORS")
FILES, OTEL = "triton", "opentelemetry"  # the trace modes: Triton's JSON files, OpenTelemetry spans
# Traces held for the trace file (log_frequency 0) before they are written to the next numbered file instead.
MAX_HELD_TRACES = 10_000
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
# The settings a client may change, by protocol name, and the field of TraceSettings each one is.
CHANGEABLE = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}
# A sampled W3C trace context (``traceparent``): version 00, trace id, parent span id, flags with the sampled bit.
SAMPLED_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][13579bdf]")


@dataclass(frozen=True)
class OtelOptions:
    """Where the ``opentelemetry`` mode sends spans and how it batches them, named as Triton's ``--trace-config
    opentelemetry,...`` names them (its defaults, but ``service.name``: the server's own name)."""

    url: str = "http://localhost:4318/v1/traces"
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int = 2048
    bsp_schedule_delay: int = 5000
    bsp_max_export_batch_size: int = 512

    def shown(self) -> dict[str, object]:
        """As the trace settings show them: every value a string, ``resource`` a list of ``KEY=VALUE``."""
        return {
            "url": self.url,
            "resource": [f"{key}={value}" for key, value in self.resource],
            "bsp_max_queue_size": str(self.bsp_max_queue_size),
            "bsp_schedule_delay": str(self.bsp_schedule_delay),
            "bsp_max_export_batch_size": str(self.bsp_max_export_batch_size),
        }


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class TraceSettings:
    """One scope's settings (the server's, or a model's), named as Triton's ``--trace-config`` names them.

    ``level`` empty is ``OFF``; ``count`` -1 is no limit; ``log_frequency`` 0 writes the traces at shutdown.
    ``mode``, ``file`` and ``otel`` are the server's, chosen at startup.
    """

    level: tuple[str, ...] = ()
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = FILES
    otel: OtelOptions = OtelOptions()

    def problem(self) -> str | None:
        """Why these settings cannot trace, or None; settings that trace nothing (level OFF) are always valid."""
        if not self.level:
            return None
        if self.mode == OTEL:
            if "TENSORS" in self.level:
                return "level TENSORS is for trace files (mode triton); OpenTelemetry spans take TIMESTAMPS"
            return None  # rate 0: only the requests that carry a sampled trace context, as in Triton
        if self.rate == 0:
            return "trace_rate must be at least 1 to trace"
        if not self.file:
            return "there is no trace file: start the server with --trace-config triton,file=PATH"
        return None

    @classmethod
    def from_flags(cls, flags: Sequence[str]) -> "TraceSettings":
        """Settings from Triton's ``--trace-config`` values: ``level=TIMESTAMPS`` (repeatable: ``TENSORS`` too),
        ``rate=N``, ``count=N``, ``mode=triton|opentelemetry``, ``triton,file=PATH``, ``triton,log-frequency=N``,
        ``opentelemetry,url=URL``, ``opentelemetry,resource=KEY=VALUE`` (repeatable) and
        ``opentelemetry,bsp_max_queue_size|bsp_schedule_delay|bsp_max_export_batch_size=N``.

        Raises:
            ValueError: a value that is not one of those, with the flag it came from.
        """
        settings, levels, otel = cls(), [], {}
        for flag in flags:
            head, equals, value = flag.partition("=")
            mode, _, key = head.rpartition(",")
            where = f"--trace-config {flag}"
            if not equals:
                raise ValueError(f"{where}: expected [MODE,]SETTING=VALUE")
            if mode == FILES and key == "file":
                settings = replace(settings, file=value)
            elif mode == FILES and key == "log-frequency":
                settings = replace(settings, log_frequency=_number(value, 0, UINT32_MAX, where))
            elif mode == OTEL and key == "url":
                otel["url"] = value
            elif mode == OTEL and key == "resource":
                name, equals, attribute = value.partition("=")
                if not equals or not name:
                    raise ValueError(f"{where}: expected opentelemetry,resource=KEY=VALUE")
                otel["resource"] = (*otel.get("resource", ()), (name, attribute))
            elif mode == OTEL and key in ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size"):
                otel[key] = _number(value, 1, INT32_MAX, where)
            elif not mode and key == "level":
                levels.append(value)
            elif not mode and key == "rate":
                settings = replace(settings, rate=_number(value, 0, UINT32_MAX, where))
            elif not mode and key == "count":
                settings = replace(settings, count=_number(value, -1, INT32_MAX, where))
            elif not mode and key == "mode" and value in (FILES, OTEL):
                settings = replace(settings, mode=value)
            elif mode not in ("", FILES, OTEL) or (not mode and key == "mode"):
                raise ValueError(f"{where}: the trace modes are {FILES} (trace files) and {OTEL}")
            else:
                raise ValueError(
                    f"{where}: unknown setting; use level=, rate=, count=, mode=, triton,file=, triton,log-frequency=, "
                    "opentelemetry,url=, opentelemetry,resource= or opentelemetry,bsp_..."
                )
        settings = replace(settings, otel=replace(settings.otel, **otel))
        if settings.otel.bsp_max_export_batch_size > settings.otel.bsp_max_queue_size:
            raise ValueError(
                "--trace-config: opentelemetry,bsp_max_export_batch_size must not exceed bsp_max_queue_size"
            )
        if levels:
            settings = replace(settings, level=_levels(levels, "--trace-config level"))
        if settings.problem():
            raise ValueError(f"--trace-config: {settings.problem()}")
        return settings


def _number(text: str, low: int, high: int, where: str) -> int:
    """A decimal integer in [low, high]; raises ValueError naming ``where``."""
    stripped = text.strip()
    digits = stripped[1:] if stripped.startswith("-") else stripped
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 12 or not low <= int(stripped) <= high:
        raise ValueError(f"{where}: expected an integer from {low} to {high}, got {text[:40]!r}")
    return int(stripped)


def _levels(values: Sequence[str], where: str) -> tuple[str, ...]:
    if "OFF" in values:
        if len(values) > 1:
            raise ValueError(f"{where}: OFF cannot be given with other levels")
        return ()
    unknown = next((value for value in values if value not in LEVELS), None)
    if unknown is not None:
        raise ValueError(f"{where}: unknown trace level {unknown[:40]!r}; the levels are OFF, {', '.join(LEVELS)}")
    return tuple(level for level in LEVELS if level in values)


class Trace:
    """One sampled request: its timestamps and tensors, until it is finished; then Triton's JSON records, or spans."""

    __slots__ = ("id", "sampler", "parent", "tensors", "stamps", "model", "version", "request_id", "_tensor_records")

    def __init__(self, trace_id: int, sampler: "_Sampler", parent: str | None = None) -> None:
        self.id = trace_id
        self.sampler = sampler
        # The caller's W3C trace context (``traceparent``), whose trace the spans join (mode opentelemetry).
        self.parent = parent
        # Whether the data plane should describe the request's tensors (level TENSORS).
        self.tensors = "TENSORS" in sampler.settings.level
        # (Triton's activity name, time.monotonic_ns()), in the order stamped; none unless level TIMESTAMPS.
        self.stamps: list[tuple[str, int]] | None = [] if "TIMESTAMPS" in sampler.settings.level else None
        self.model: str | None = None  # None until the request reaches a model
        self.version = 0
        self.request_id = ""
        self._tensor_records: list[str] = []

    def stamp(self, name: str, ns: int) -> None:
        """Records that the request reached ``name`` (Triton's activity names) at ``ns``, a ``time.monotonic_ns()``."""
        if self.stamps is not None:
            self.stamps.append((name, ns))

    def begin(self, model: str, version: int, request_id: str, ns: int) -> None:
        """The request reached its model: names it and stamps ``REQUEST_START``."""
        self.model, self.version, self.request_id = model, version, request_id
        self.stamp("REQUEST_START", ns)

    def tensor(self, activity: str, name: str, datatype: str, array: np.ndarray) -> None:
        """Describes one tensor as Triton's TENSORS level does: its values joined by commas, its shape, its type."""
        record = {
            "id": self.id,
            "activity": activity,
            "tensor": {
                "name": name,
                "data": _joined(datatype, array),
                "shape": ",".join(str(size) for size in array.shape),
                "dtype": datatype,
            },
        }
        self._tensor_records.append(json.dumps(record, separators=(",", ":")))

    def records(self) -> list[str] | None:
        """The trace as Triton's JSON records (text), or None for a request that never reached a model (nothing
        to say of it)."""
        if self.model is None:
            return None
        header = {"id": self.id, "model_name": self.model, "model_version": self.version}
        if self.request_id:
            header["request_id"] = self.request_id
        stamps = [f'{{"id":{self.id},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}' for name, ns in self.stamps or ()]
        return [json.dumps(header, separators=(",", ":")), *stamps, *self._tensor_records]


def _joined(datatype: str, array: np.ndarray) -> str:
    """Values as Triton's trace writes them: numbers in C++'s default form (6 significant digits), booleans as 0
    and 1, strings quoted; half-precision floats are left out, as in Triton."""
    values = array.ravel().tolist()
    if datatype in ("FP32", "FP64"):
        return ",".join(f"{value:g}" for value in values)
    if datatype in ("FP16", "BF16"):
        return ""
    if datatype == "BYTES":
        return ",".join(
            json.dumps(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)) for value in values
        )
    return ",".join(str(int(value)) for value in values)


@dataclass
class _Sampler:
    """The live state of one scope's settings: which request is next traced, and the traces it collected."""

    settings: TraceSettings
    remaining: int = field(init=False)
    seen: int = 0
    sampled: int = 0
    collected: int = 0
    held: list[list[str]] = field(default_factory=list)
    retired: bool = False

    def __post_init__(self) -> None:
        self.remaining = self.settings.count

    @property
    def traces(self) -> bool:
        """Whether a request may still be sampled by rate and count."""
        settings = self.settings
        return bool(settings.level) and settings.rate > 0 and self.remaining != 0 and settings.problem() is None

    def take(self) -> bool:
        """Counts one request; True when it is the one in ``rate`` to trace and the count allows one more."""
        if not self.traces:
            return False
        self.seen += 1
        if self.seen % self.settings.rate:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        self.sampled += 1
        return True


class _TraceFile:
    """The trace file named at startup and its numbered siblings; every file is written aside, then renamed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._next_index = 0
        self._held: list[list[str]] = []
        self._failure_log = RateLimitedLog(log)
        self._warned_held = False

    def write_numbered(self, traces: list[list[str]]) -> None:
        if traces:
            self._write(f"{self.path}.{self._next_index}", traces)
            self._next_index += 1

    def hold(self, traces: list[list[str]]) -> None:
        """Keeps traces for the file written at shutdown; past ``MAX_HELD_TRACES`` they go to a numbered file."""
        self._held.extend(traces)
        if len(self._held) > MAX_HELD_TRACES:
            held, self._held = self._held, []
            self.overflow(held)

    def overflow(self, traces: list[list[str]]) -> None:
        """Writes traces held past ``MAX_HELD_TRACES`` to the next numbered file, saying so once."""
        if not self._warned_held:
            self._warned_held = True
            log.warning(
                "more than %d traces held for %s (log_frequency 0); writing them to numbered files (%s.N) "
                "instead; set log_frequency to choose how many go in each",
                MAX_HELD_TRACES,
                self.path,
                self.path,
            )
        self.write_numbered(traces)

    def close(self) -> None:
        if self._held:
            self._write(self.path, self._held)
            self._held = []

    def _write(self, path: str, traces: list[list[str]]) -> None:
        try:
            write_atomic(Path(path), "[" + ",".join(record for trace in traces for record in trace) + "]")
        except OSError as error:  # tracing must never fail a request or the server: say so and go on
            self._failure_log.warning("cannot write trace file %s: %s; %d trace(s) lost", path, error, len(traces))


class Tracer:
    """The server's trace settings, global and per model, and the sampling of requests under them.

    Args:
        startup: the ``--trace-config`` settings: the global settings' starting point, and what a null hands back.
        service_name: the ``service.name`` of the spans (mode opentelemetry) unless a ``resource`` sets it.
    """

    def __init__(self, startup: TraceSettings | None = None, service_name: str = "buildsys-serving") -> None:
        self.startup = startup or TraceSettings()
        # Whether front ends should pass each request's W3C ``traceparent`` to ``sample`` (mode opentelemetry).
        self.propagates = self.startup.mode == OTEL
        self._file = _TraceFile(self.startup.file) if self.startup.file and not self.propagates else None
        self._spans = None
        if self.propagates:
            from serving.otel import SpanExporter  # the optional `otel` extra: only this mode imports it

            self._spans = SpanExporter(self.startup.otel, service_name)
        # The settings each scope was given over the network (setting -> value), on top of the startup settings
        # (global) or of the global settings (a model's).
        self._global_given: dict[str, object] = {}
        self._model_given: dict[str, dict[str, object]] = {}
        self._global = _Sampler(self.startup)
        self._models: dict[str, _Sampler] = {}
        self._ids = itertools.count(1)
        # False while no request can be traced: ``sample`` then costs a request one attribute read.
        self.active = self._any_traces()

    def sample(self, model: str, parent: str | None = None) -> Trace | None:
        """A trace for this request to the model, when it is the one to sample or (mode opentelemetry) it carries a
        sampled W3C trace context ``parent``; None otherwise (almost always)."""
        if not self.active:
            return None
        sampler = self._models.get(model, self._global)
        if not self.propagates:
            parent = None  # trace files have no use for it
        elif parent is not None and sampler.settings.level and SAMPLED_TRACEPARENT.fullmatch(parent):
            sampler.sampled += 1  # the caller chose: rate and count do not apply, as in Triton
            return Trace(next(self._ids), sampler, parent)
        if not sampler.take():
            if not sampler.traces:  # the count ran out
                self.active = self._any_traces()
            return None
        return Trace(next(self._ids), sampler, parent)

    def finish(self, trace: Trace, last: str = "") -> None:
        """Hands in a finished trace, after stamping ``last`` (the front end's end of sending) now if given: its
        spans go out, or it is written with the others of its scope when its settings say so."""
        if last:
            trace.stamp(last, time.monotonic_ns())
        sampler = trace.sampler
        sampler.collected += 1
        if self._spans is not None:
            if trace.model is not None:
                self._spans.export(trace)
            return
        records = trace.records()
        if records is not None:
            sampler.held.append(records)
        frequency = sampler.settings.log_frequency
        if sampler.retired or (frequency and len(sampler.held) >= frequency):
            self._flush(sampler)
        elif sampler.remaining == 0 and sampler.collected == sampler.sampled:
            self._flush(sampler, numbered=True)  # the count ran out: what it collected goes out now, as in Triton
        elif len(sampler.held) > MAX_HELD_TRACES and self._file is not None:
            held, sampler.held = sampler.held, []
            self._file.overflow(held)
        if not sampler.traces:
            self.active = self._any_traces()

    def settings(self, model: str = "") -> dict[str, object]:
        """The settings in force for a model (its own, or the global ones it follows) or globally, as the protocol
        shows them: every value a string or a list of them, ``trace_count`` what remains; the trace file and
        ``log_frequency`` in mode triton, the OpenTelemetry options in mode opentelemetry."""
        sampler = self._models.get(model, self._global) if model else self._global
        settings = sampler.settings
        shown: dict[str, object] = {
            "trace_level": list(settings.level) or ["OFF"],
            "trace_rate": str(settings.rate),
            "trace_count": str(sampler.remaining),
        }
        if settings.mode == FILES:
            shown |= {"log_frequency": str(settings.log_frequency), "trace_file": settings.file}
        shown["trace_mode"] = settings.mode
        if settings.mode == OTEL:
            shown |= settings.otel.shown()
        return shown

    def update(self, model: str, changes: Mapping[str, Sequence[str] | None]) -> dict[str, object]:
        """Applies ``changes`` (setting -> its values; None hands the setting back to the global or startup value)
        to a model's settings, or the global ones when ``model`` is "", and returns the settings then in force.

        Raises:
            ServingError: INVALID_ARGUMENT for an unknown setting, a bad value, or settings that could not trace
                (no file, rate 0 in mode triton; TENSORS in mode opentelemetry); UNIMPLEMENTED for ``trace_file``.
                Nothing changes then.
        """
        parsed = {CHANGEABLE[name]: _parse(name, values) for name, values in _known(changes, self.startup).items()}
        given = dict(self._model_given.get(model, {}) if model else self._global_given)
        current = self._models.get(model) if model else self._global
        if current is not None and "count" in given:
            given["count"] = current.remaining  # a count left as it was goes on from what remains, as in Triton
        for key, value in parsed.items():
            if value is None:
                given.pop(key, None)
            else:
                given[key] = value
        if model:
            proposed = {model: replace(self._global.settings, **given)}
        else:
            base = replace(self.startup, **given)
            proposed = {"": base} | {name: replace(base, **own) for name, own in self._model_given.items()}
        for name, settings in proposed.items():
            if settings.problem() is not None:
                scope = f"model '{name}'" if name else "the server"
                raise _bad(f"the trace settings of {scope} would be unusable: {settings.problem()}")
        if not model:
            self._global_given = given
            self._replace("", proposed[""])
            for name, settings in proposed.items():
                if name:
                    self._replace(name, settings)
        elif given:
            self._model_given[model] = given
            self._replace(model, proposed[model])
        else:  # nothing of its own is left: the model follows the global settings again
            self._model_given.pop(model, None)
            self._retire(self._models.pop(model, None))
        self.active = self._any_traces()
        return self.settings(model)

    def close(self) -> None:
        """Writes every trace still held: each scope's, then the trace file itself (log_frequency 0); or sends the
        spans still queued (blocking: call it off the event loop)."""
        for sampler in (self._global, *self._models.values()):
            self._retire(sampler)
        if self._file is not None:
            self._file.close()
        if self._spans is not None:
            self._spans.close()

    def _replace(self, scope: str, settings: TraceSettings) -> None:
        if scope:
            self._retire(self._models.get(scope))
            self._models[scope] = _Sampler(settings)
        else:
            self._retire(self._global)
            self._global = _Sampler(settings)

    def _retire(self, sampler: _Sampler | None) -> None:
        """A scope's settings are replaced: what it collected is written as its settings say, and the traces still
        in flight under it are written as they finish."""
        if sampler is not None:
            sampler.retired = True
            self._flush(sampler)

    def _flush(self, sampler: _Sampler, numbered: bool = False) -> None:
        held, sampler.held = sampler.held, []
        if not held or self._file is None:
            return
        if numbered or sampler.settings.log_frequency:
            self._file.write_numbered(held)
        else:
            self._file.hold(held)

    def _any_traces(self) -> bool:
        """Whether some request could be traced: by rate and count, or (mode opentelemetry) by its trace context."""
        samplers = (self._global, *self._models.values())
        return any(sampler.traces or (self.propagates and bool(sampler.settings.level)) for sampler in samplers)


def _known(changes: Mapping[str, Sequence[str] | None], startup: TraceSettings) -> Mapping[str, Sequence[str] | None]:
    for name in changes:
        if name == "trace_file":
            raise ServingError(Status.UNIMPLEMENTED, "the trace file cannot be changed over the network")
        if name == "trace_mode" or name in OtelOptions.__dataclass_fields__:
            raise _bad(f"{name} is chosen at startup (--trace-config)")
        if name == "log_frequency" and startup.mode == OTEL:
            raise _bad("log_frequency is for trace files (mode triton); spans are sent as their batches fill")
        if name not in CHANGEABLE:
            raise _bad(f"unknown trace setting {str(name)[:40]!r}; the settings are: {', '.join(CHANGEABLE)}")
    return changes


def _parse(name: str, values: Sequence[str] | None) -> object:
    """One setting's values as the protocol carries them (strings), as a TraceSettings field; None: hand back."""
    if values is None or len(values) == 0:
        return None
    try:
        if name == "trace_level":
            return _levels(list(values), name)
        if len(values) != 1:
            raise ValueError(f"{name}: expected one value, got {len(values)}")
        if name == "trace_count":
            return _number(values[0], -1, INT32_MAX, name)
        return _number(values[0], 0, UINT32_MAX, name)
    except ValueError as error:
        raise _bad(str(error)) from None
