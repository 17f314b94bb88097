"""The data plane: everything a request needs that does not depend on the protocol it arrived in.

It resolves a model and version, validates inputs against the signature, answers from the response cache where
the model keeps one, queues them into the version's dynamic batcher (which runs ONNX Runtime off the event loop)
or runs an ensemble's steps as requests to their models, splits the results, applies the classification
extension, records statistics and metrics, and stamps a traced request's times (the front end samples it and
finishes it); it also answers health, metadata, configuration, statistics, the trace settings and the repository's
index, load and unload, and owns the polling of the repository and the drain at shutdown.
Its requests and answers are the plain values below (NumPy arrays, strings, ints, dicts); no protocol message
(gRPC, HTTP) enters it, so every front end is a thin translator: protocol message <-> these values, and
``ServingError.status`` <-> the protocol's code. All methods are called on the server's one event loop.

Example:
    request = InferenceRequest(model="digits", inputs=[InputTensor("image", "UINT8", (1, 8, 8), pixels)])
    response = await dataplane.infer(request)
    response.outputs[0].data  # float32 probabilities, shape (1, 10)
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving import __version__, codec
from serving.ensemble import Step, run_steps
from serving.errors import ModelLoadError, ServingError, Status
from serving.log_settings import LogControl
from serving.metrics import Metrics, VersionState
from serving.mirror import RepositoryMirror
from serving.model_files import parse_config_json
from serving.protocol import model_config_pb2
from serving.repository import (
    DEFAULT_LOAD_THREADS,
    Batching,
    BatchingOverrides,
    IndexEntry,
    ModelRepository,
    ServedVersion,
)
from serving.response_cache import ResponseCache
from serving.runtime import CUDA, RuntimeOptions
from serving.shared_memory import SharedMemorySlice, SystemSharedMemory
from serving.signature import BYTES, format_shape
from serving.statistics import StatsSnapshot
from serving.tracing import Trace, Tracer
from serving.version_policy import VersionPolicy

log = logging.getLogger(__name__)

SERVER_NAME = "buildsys-serving"
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
    "trace",
    "logging",
)
SHARED_MEMORY_EXTENSION = "system_shared_memory"
# Triton's model control modes: how the repository's models are loaded after the first scan. "poll": changes on disk
# are picked up every poll interval and load/unload requests work too (Triton's POLL refuses the requests);
# "explicit": only the models named at start, then load/unload requests, no polling; "none": every model at start,
# nothing after (load/unload requests are refused).
MODEL_CONTROL_MODES = ("poll", "explicit", "none")
# A timeout or deadline further away than this is no limit at all (and would overflow some timers).
NO_DEADLINE_S = 86_400.0
# Triton's metrics' reasons for a failed request, by status (any other status is OTHER: a bad request).
FAILURE_REASONS = {
    Status.UNAVAILABLE: "REJECTED",  # a full queue, a queue timeout, shutting down
    Status.DEADLINE_EXCEEDED: "REJECTED",
    Status.INTERNAL: "BACKEND",
}


# --- request and response values -----------------------------------------------------------------------------


@dataclass(slots=True)
class InputTensor:
    """One input as the front end decoded it: ``data`` already has ``shape`` and ``datatype``'s dtype."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    """An output to return; ``class_count`` > 0 asks for the classification extension's top k."""

    name: str
    class_count: int = 0
    parameters: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, name: str, parameters: Mapping[str, object]) -> "RequestedOutput":
        """Reads the protocol's ``classification`` parameter out of an output's parameters.

        Raises:
            ServingError: INVALID_ARGUMENT when ``classification`` is not a positive integer.
        """
        class_count = parameters.get("classification", 0)
        if "classification" in parameters and (
            isinstance(class_count, bool) or not isinstance(class_count, int) or class_count < 1
        ):
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"output {codec.shown(name)}: classification must be an integer >= 1, got {class_count!r:.40}",
            )
        return cls(name, class_count, dict(parameters))


@dataclass(slots=True)
class InferenceRequest:
    """A request for one model; ``version`` "" means the newest loaded one.

    ``deadline`` is a ``time.monotonic()`` value (the transport's deadline, e.g. gRPC's); the ``timeout``
    parameter (microseconds, Triton's) tightens it. ``outputs`` empty means every output of the model. ``trace``
    is the request's trace when the front end sampled it (``Tracer.sample``); the front end finishes it.
    """

    model: str
    inputs: list[InputTensor]
    version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)
    deadline: float | None = None
    trace: Trace | None = None


@dataclass(slots=True)
class OutputTensor:
    """One output: numbers as a NumPy array of ``datatype``, or BYTES as an object array of ``bytes``; for an
    output written into the client's shared memory (``in_shared_memory``), ``data`` is empty and the answer
    carries only its name, datatype and shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    in_shared_memory: bool = False


@dataclass(slots=True)
class InferenceResponse:
    model: str
    version: str
    id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """ModelMetadata of the protocol, plus the execution providers really used and any device warning."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    execution_providers: tuple[str, ...]
    device_warning: str | None


@dataclass(frozen=True)
class VersionStatistics:
    """Cumulative statistics of one loaded version, in Triton's terms (see serving/statistics.py)."""

    name: str
    version: str
    stats: StatsSnapshot


# --- the data plane ------------------------------------------------------------------------------------------


class DataPlane:
    """The transport-free server: one per process, shared by every front end on the same event loop.

    Lifecycle: ``await start()`` (first scan, then polling), requests, ``begin_drain()`` on shutdown (readiness
    turns false), ``await wait_idle(grace)``, ``await close()``. A front end brackets every call except health
    and readiness with ``admit()`` / ``release()``, which refuses new work while draining or beyond
    ``max_inflight`` requests at once and lets the drain wait for what is in flight, whichever front end it came
    through.
    """

    def __init__(
        self,
        repositories: Sequence[Path | RepositoryMirror],
        runtime: RuntimeOptions,
        *,
        version_policy: VersionPolicy | None = None,
        batching: BatchingOverrides | None = None,
        poll_interval_s: float = 2.0,
        metrics: Metrics | None = None,
        max_inflight: int | None = None,
        shared_memory: SystemSharedMemory | None = None,
        log_control: LogControl | None = None,
        tracer: Tracer | None = None,
        response_cache: ResponseCache | None = None,
        model_control: str = "poll",
        load_models: tuple[str, ...] = ("*",),
        model_load_threads: int = DEFAULT_LOAD_THREADS,
        strict_readiness: bool = True,
        auto_complete_config: bool = True,
    ) -> None:
        """Creates the data plane; models load in ``start()``.

        Args:
            repositories: the repository folders (see ``ModelRepository``).
            max_inflight: admitted requests at once, across every front end, before ``admit()`` refuses (None:
                no limit). Each model's queue is bounded too, but a request is held (and its bytes kept) while it
                is decoded and checked, whatever the number of models.
            shared_memory: the clients' system shared memory regions (default: none allowed). Front ends read
                inputs from it; the data plane writes outputs into it.
            log_control: the log settings that clients read and change (default: settings that drive no logger).
            tracer: the trace settings that clients read and change, and the sampling (default: tracing off, no
                trace file).
            response_cache: where the answers of the models whose config enables ``response_cache`` are kept
                (default: none kept).
            model_control: one of ``MODEL_CONTROL_MODES``; ``poll_interval_s`` applies only to "poll".
            load_models: with "explicit", the models loaded at start ("*": all of them).
            model_load_threads: versions loaded at once by a scan (see ``ModelRepository``).
            strict_readiness: whether readiness asks every model its policy selects to serve (Triton's
                --strict-readiness), or only that the server runs and is not shutting down.
            auto_complete_config: see ``ModelRepository``'s ``auto_complete``.
        """
        self.metrics = metrics or Metrics()
        self.max_inflight = max_inflight
        self.shared_memory = shared_memory or SystemSharedMemory(allowed=False)
        self.log_control = log_control or LogControl()
        self.tracer = tracer or Tracer()
        self.response_cache = response_cache
        self.model_control = model_control
        self.load_models = load_models
        self.strict_readiness = strict_readiness
        self.repository = ModelRepository(
            repositories,
            runtime,
            version_policy=version_policy,
            batching=batching or BatchingOverrides(),
            on_batch=self.metrics.observe_batch,
            caches_answers=response_cache is not None,
            load_threads=model_load_threads,
            auto_complete=auto_complete_config,
        )
        self.metrics.watch_queue_depth(self.repository.queue_depths)
        self.metrics.watch_versions(
            lambda: [
                VersionState(s.name, str(s.version), s.stats.snapshot(), s.queue_depth)
                for s in self.repository.loaded()
            ]
        )
        self.poll_interval_s = poll_interval_s
        self.draining = False
        self._inflight = 0
        # Set while nothing is in flight; every front end's drain and the server's wait on the same event.
        self._idle = asyncio.Event()
        self._idle.set()
        self._poller: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads every model (off the loop), or with explicit model control those named, and in "poll" mode starts
        polling the repository for changes."""
        if self.model_control == "explicit":
            keep = None if "*" in self.load_models else set(self.load_models)
            for name in self.repository.hold_back(keep):
                log.error(
                    "--load-model %s: there is no such model folder in %s",
                    codec.shown(name),
                    ", ".join(self.repository.locations),
                )
        self._retire(await asyncio.to_thread(self.repository.load_all))
        if self.poll_interval_s > 0 and self.model_control == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self._retire(await asyncio.to_thread(self.repository.load_all))
            except Exception:  # a poll must never end polling; the next one retries
                log.exception("repository poll failed")

    def _retire(self, versions: list[ServedVersion]) -> None:
        for served in versions:
            task = asyncio.get_running_loop().create_task(served.retire(), name=f"retire-{served.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def admit(self) -> None:
        """Counts one request in flight (for the drain and the bound); call ``release()`` when it is answered.

        Raises:
            ServingError: UNAVAILABLE while the server is shutting down, or with ``max_inflight`` requests in
                flight already.
        """
        if self.draining:
            raise ServingError(Status.UNAVAILABLE, "server is shutting down; retry on another instance")
        if self.max_inflight is not None and self._inflight >= self.max_inflight:
            raise ServingError(
                Status.UNAVAILABLE,
                f"server has {self._inflight} requests in flight, its limit (--max-concurrent-requests); retry later",
            )
        if self._inflight == 0:
            self._idle.clear()
        self._inflight += 1

    def release(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    def begin_drain(self) -> None:
        """From now on new requests get UNAVAILABLE and ``ready()`` is False; health keeps answering."""
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no admitted request is in flight; False when ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stops polling, finishes what is queued in every batcher, and stops the ONNX Runtime threads."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._retire(await asyncio.to_thread(self.repository.take_all))
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.shared_memory.allowed:
            self.shared_memory.unregister()
        await asyncio.to_thread(self.tracer.close)  # writes the trace file, or sends the last spans

    # --- health and metadata -------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """True when not shutting down and (with strict readiness) every model that its policy asks for serves at
        least one version."""
        return not self.draining and not (self.strict_readiness and self.repository.unready_models())

    def server_metadata(self) -> ServerMetadata:
        # The protocol has no field for warnings; an extension string is what every client prints.
        warnings = tuple(f"device_warning: {warning}" for warning in self.repository.device_warnings())
        shared_memory = (SHARED_MEMORY_EXTENSION,) if self.shared_memory.allowed else ()
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS + shared_memory + warnings)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) serves; an ensemble, when every model its steps run does too."""
        if not self.repository.is_ready(name, version):
            return False
        steps = self.repository.get(name, version).steps
        return all(self.repository.is_ready(step.model, step.version) for step in steps)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Raises ServingError NOT_FOUND for a model or version that is not loaded."""
        served = self.repository.get(name, version)
        signature = served.manifest.signature
        return ModelMetadata(
            name=served.name,
            versions=tuple(str(v.version) for v in self.repository.versions(name)),
            platform=served.manifest.platform,
            inputs=tuple(TensorMetadata(s.name, s.datatype, s.shape) for s in signature.inputs),
            outputs=tuple(TensorMetadata(s.name, s.datatype, s.shape) for s in signature.outputs),
            execution_providers=tuple(served.model.providers) if served.model else (),
            device_warning=served.model.device_warning if served.model else None,
        )

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """config.pbtxt as it is really applied: batching after flag overrides, and the device really used.

        The value is Triton's ``ModelConfig`` message because that is the model configuration's own format
        (config.pbtxt is its text form); the HTTP front end writes it as JSON the way Triton does.
        """
        served = self.repository.get(name, version)
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(served.config)
        config.name = served.name
        config.platform = served.manifest.platform
        config.max_batch_size = served.max_batch_size
        if served.model is None:  # an ensemble: its steps' models have the sessions and the queues
            return config
        if served.batching.merges:  # a model without dynamic batching is not shown one
            config.dynamic_batching.max_queue_delay_microseconds = served.batcher.max_queue_delay_us
            config.dynamic_batching.default_queue_policy.max_queue_size = served.batcher.max_queue_size
        on_gpu = CUDA in served.model.providers
        kind = model_config_pb2.ModelInstanceGroup.KIND_GPU if on_gpu else model_config_pb2.ModelInstanceGroup.KIND_CPU
        del config.instance_group[:]
        config.instance_group.add(name=f"{served.name}_0", kind=kind, count=served.batcher.instance_count)
        config.parameters["intra_op_thread_count"].string_value = str(served.model.intra_op_threads)
        config.parameters["graph_optimization_level"].string_value = served.model.graph_optimization_level
        if served.model.wide_threads:
            config.parameters["wide_session_intra_op_thread_count"].string_value = str(served.model.wide_threads)
        config.parameters["execution_providers"].string_value = ",".join(served.model.providers)
        if served.model.device_warning:
            config.parameters["device_warning"].string_value = served.model.device_warning
        return config

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Every loaded version's statistics, one model's, or one version's.

        Raises:
            ServingError: NOT_FOUND for a model or version that is not loaded.
        """
        if name and version:
            chosen = [self.repository.get(name, version)]
        elif name:
            chosen = self.repository.versions(name)
        else:
            chosen = sorted(self.repository.loaded(), key=lambda s: (s.name, s.version))
        return [VersionStatistics(s.name, str(s.version), s.stats.snapshot()) for s in chosen]

    def trace_settings(self, model: str = "", changes: Mapping[str, list[str] | None] | None = None) -> dict:
        """The trace settings in force for a model, or the server's when ``model`` is "", after applying
        ``changes`` if any (see ``Tracer.update``).

        Raises:
            ServingError: NOT_FOUND for a model that is not loaded; INVALID_ARGUMENT or UNIMPLEMENTED for a change
                that cannot apply (then nothing changes).
        """
        if model:
            self.repository.get(model)  # NOT_FOUND unless loaded, saying which models are
        if changes:
            return self.tracer.update(model, changes)
        return self.tracer.settings(model)

    # --- repository --------------------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return [e for e in self.repository.index() if e.state == "READY" or not ready_only]

    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        """Loads a model now, or reloads every version it serves with its current files and configuration (off the
        loop), as Triton's load request does. The ``config`` parameter, a model configuration in JSON, stands for
        the model's config.pbtxt from then on, until a load without one.

        Raises:
            ServingError: INVALID_ARGUMENT for a config that serving cannot use or another parameter (model files
                are not taken over the network), NOT_FOUND for an unknown model, FAILED_PRECONDITION with the
                reasons when a version could not be (re)loaded (those that did are swapped in); UNAVAILABLE with
                model control "none".
        """
        self._check_model_control()
        parameters = dict(parameters or {})
        config_text = parameters.pop("config", None)
        _refuse_parameters(
            parameters, "load", "'config': publish model files into the repository instead of sending them"
        )
        config = None
        if config_text is not None:
            if not isinstance(config_text, str):
                raise ServingError(Status.INVALID_ARGUMENT, "the load parameter 'config' must be a JSON string")
            try:
                config = parse_config_json(config_text, name)
            except ModelLoadError as error:
                raise ServingError(Status.INVALID_ARGUMENT, str(error)) from None
        retired, failure = await asyncio.to_thread(self.repository.load, name, config)
        self._retire(retired)
        if failure is not None:
            raise ServingError(Status.FAILED_PRECONDITION, failure)

    async def unload(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        """Unloads every version of a model; it stays unloaded until ``load``, and the ensembles that run it stop
        serving until then. The ``unload_dependents`` parameter (true) also unloads the models that were loaded
        only for this ensemble, as in Triton.

        Raises:
            ServingError: NOT_FOUND for an unknown model; INVALID_ARGUMENT for another parameter or a value that
                is not a boolean; UNAVAILABLE with model control "none".
        """
        self._check_model_control()
        parameters = dict(parameters or {})
        unload_dependents = parameters.pop("unload_dependents", False)
        _refuse_parameters(parameters, "unload", "'unload_dependents'")
        if not isinstance(unload_dependents, bool):
            raise ServingError(Status.INVALID_ARGUMENT, "the unload parameter 'unload_dependents' must be a boolean")
        self._retire(await asyncio.to_thread(self.repository.unload, name, unload_dependents))

    def _check_model_control(self) -> None:
        if self.model_control == "none":
            raise ServingError(
                Status.UNAVAILABLE,
                "model load and unload requests are off (--model-control-mode none); use --model-control-mode "
                "explicit or poll to allow them",
            )

    # --- inference -----------------------------------------------------------------------------------------

    def _look_up(
        self, served: ServedVersion, request: InferenceRequest, wanted: list[tuple]
    ) -> tuple[bytes, list[OutputTensor] | None, int]:
        """(the request's response cache digest, the outputs kept for it or None, the ns the lookup took), for a
        version whose answers are cached. A hit is counted here."""
        started = time.monotonic_ns()
        digest = self.response_cache.digest(served.generation, request.inputs, _asked(request, wanted))
        kept = self.response_cache.get(digest, served.generation, request.inputs, _asked(request, wanted))
        if kept is None:
            return digest, None, time.monotonic_ns() - started
        # New tensors over the kept arrays: writing an output into shared memory changes its tensor, not the copy.
        outputs = [OutputTensor(o.name, o.datatype, o.shape, o.data) for o in kept]
        served.stats.record_cache(True, time.monotonic_ns() - started)
        return digest, outputs, 0

    async def _ensemble(
        self, served: ServedVersion, request: InferenceRequest, on_wait: Callable[[], None] | None
    ) -> dict[str, np.ndarray]:
        """Runs an ensemble's steps, each as a request to its model (which batches it with its others), and returns
        its outputs as rows, as a batcher would.

        Raises:
            ServingError: a step's failure, with its status and the step's model named.
        """
        # A step's request is the caller's own: its deadline, priority and queue timeout go with it.
        parameters = {key: value for key, value in request.parameters.items() if key in ("priority", "timeout")}

        async def run(step: Step, given: dict[str, InputTensor]) -> dict[str, InputTensor]:
            asked = [RequestedOutput(name) for name in step.outputs]
            inputs = [InputTensor(name, t.datatype, t.shape, t.data) for name, t in given.items()]
            step_request = InferenceRequest(
                step.model, inputs, step.version, request.id, asked, parameters, request.deadline
            )
            try:
                answer = await self.infer(step_request)
            except ServingError as error:
                raise ServingError(
                    error.status, f"ensemble '{served.name}', step model '{step.model}': {error.message}"
                ) from None
            return {o.name: InputTensor(o.name, o.datatype, o.shape, o.data) for o in answer.outputs}

        if on_wait is not None:
            on_wait()  # the steps are requests of their own: this one waits for them
        tensors = await run_steps(served.steps, {tensor.name: tensor for tensor in request.inputs}, run)
        signature = served.manifest.signature
        outputs = {}
        for spec in signature.outputs:
            tensor = tensors[spec.name]
            declared = spec.shape[signature.batched :]
            given = tuple(tensor.shape[signature.batched :])
            if (
                tensor.datatype != spec.datatype
                or len(given) != len(declared)
                or any(want not in (-1, got) for want, got in zip(declared, given, strict=True))
            ):
                raise ServingError(
                    Status.INTERNAL,
                    f"ensemble '{served.name}': its step made output '{spec.name}' {tensor.datatype} "
                    f"{format_shape(tensor.shape)}, but config.pbtxt says {spec.datatype} {format_shape(spec.shape)}",
                )
            outputs[spec.name] = tensor.data if signature.batched else tensor.data[np.newaxis]
        return outputs

    def _remember(
        self,
        served: ServedVersion,
        digest: bytes,
        request: InferenceRequest,
        wanted: list[tuple],
        outputs: list[OutputTensor],
        lookup_ns: int,
    ) -> None:
        """Keeps a computed answer (its own copies: the rows may be views of a merged batch's outputs)."""
        started = time.monotonic_ns()
        kept = [OutputTensor(o.name, o.datatype, o.shape, o.data.copy()) for o in outputs]
        self.response_cache.put(digest, served.generation, request.inputs, _asked(request, wanted), kept)
        served.stats.record_cache(False, lookup_ns + time.monotonic_ns() - started)

    async def infer(self, request: InferenceRequest, on_wait: Callable[[], None] | None = None) -> InferenceResponse:
        """Validates, batches and runs one request.

        Args:
            on_wait: called once if the request is going to wait past this turn of the event loop (see
                ``DynamicBatcher.infer``); a front end that must watch for the client going away starts then.

        Raises:
            ServingError: NOT_FOUND (model/version), INVALID_ARGUMENT (inputs, outputs, parameters),
                UNAVAILABLE (queue full, shutting down, the queue's timeout passed), DEADLINE_EXCEEDED (the
                transport's deadline passed), INTERNAL (the model failed).
        """
        started = time.monotonic_ns()
        trace = request.trace
        try:
            served = self.repository.get(request.model, request.version)
        except ServingError as error:
            self.metrics.observe_request("(unknown)", error.status.name, (time.monotonic_ns() - started) / 1e9)
            raise
        if trace is not None:
            trace.begin(served.name, served.version, request.id, started)
        served.acquire()
        try:
            inputs, batch_size = _checked_inputs(request.inputs, served)
            wanted = _checked_outputs(request.outputs, served, self.shared_memory)
            queue = _queue_place(request, served.batching)
            key, outputs, lookup_ns = None, None, 0
            if self.response_cache is not None and served.caches_answers:
                key, outputs, lookup_ns = self._look_up(served, request, wanted)
            if outputs is None:
                if trace is not None:
                    _trace_queued(trace, request.inputs)
                if served.steps:
                    results = await self._ensemble(served, request, on_wait)
                else:
                    try:
                        results = await served.batcher.infer(
                            inputs, batch_size, queue.deadline, on_wait, level=queue.level, delay_at=queue.delay_at,
                            trace=trace,
                        )  # fmt: skip
                    except ServingError as error:
                        if error.status is Status.DEADLINE_EXCEEDED and queue.timeout_binds:
                            # Triton's answer to a request that its queue's timeout drops: the server shed load,
                            # and a client may come back (the transport's own deadline stays DEADLINE_EXCEEDED).
                            raise ServingError(Status.UNAVAILABLE, error.message) from None
                        raise
                outputs = _answer(served, wanted, results, trace)
                if key is not None:
                    self._remember(served, key, request, wanted, outputs, lookup_ns)
            _write_shared_memory(outputs, [target for _, _, target in wanted])
            response = InferenceResponse(served.name, str(served.version), request.id, outputs)
        except ServingError as error:
            elapsed = time.monotonic_ns() - started
            served.stats.record_request(False, elapsed, FAILURE_REASONS.get(error.status, "OTHER"))
            self.metrics.observe_request(served.name, error.status.name, elapsed / 1e9)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("infer '%s' id %r refused: %s: %s", served.name, request.id[:80], error.status.name, error)
            raise
        except asyncio.CancelledError:  # the client went away (or the server stops without waiting for it)
            elapsed = time.monotonic_ns() - started
            served.stats.record_request(False, elapsed, "CANCELED")
            self.metrics.observe_request(served.name, "CANCELLED", elapsed / 1e9)
            raise
        finally:
            served.release()
            if trace is not None:
                trace.stamp("REQUEST_END", time.monotonic_ns())
        elapsed = time.monotonic_ns() - started
        served.stats.record_request(True, elapsed)
        self.metrics.observe_request(served.name, "OK", elapsed / 1e9)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "infer '%s' version %s id %r: %s -> %s in %.3f ms",
                served.name,
                served.version,
                request.id[:80],
                ", ".join(f"{t.name} {t.datatype} {format_shape(t.shape)}" for t in request.inputs),
                ", ".join(f"{o.name} {format_shape(o.shape)}" for o in outputs),
                elapsed / 1e6,
            )
        return response


def _refuse_parameters(parameters: Mapping[str, object], request: str, supported: str) -> None:
    """Refuses the parameters of a repository request that are left once those it takes are taken out.

    Raises:
        ServingError: INVALID_ARGUMENT naming a few of them (escaped: names come from the client).
    """
    if parameters:
        names = ", ".join(codec.shown(name) for name in sorted(parameters)[:5])
        raise ServingError(
            Status.INVALID_ARGUMENT, f"{request} parameters ({names}) are not supported, only {supported}"
        )


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


def _asked(request: InferenceRequest, wanted: list[tuple]) -> list[tuple[str, int]]:
    """The outputs a request asks for as the response cache tells requests apart: (name, classification count),
    none when it asks for every output."""
    return [(spec.name, class_count) for spec, class_count, _ in wanted] if request.outputs else []


def _answer(
    served: ServedVersion, wanted: list[tuple], results: dict[str, np.ndarray], trace: Trace | None
) -> list[OutputTensor]:
    """The outputs asked for, from the model's rows: as clients get them, or their top classes."""
    batched = served.manifest.signature.batched
    if trace is not None and trace.tensors:
        for output, _, _ in wanted:
            trace.tensor("TENSOR_BACKEND_OUTPUT", output.name, output.datatype, results[output.name])
    outputs = []
    for output, class_count, _ in wanted:
        rows = results[output.name]
        if class_count:
            labels = codec.classify(rows, class_count, served.manifest.class_names.get(output.name, ()))
            labels = labels if batched else labels[0]
            outputs.append(OutputTensor(output.name, "BYTES", labels.shape, labels))
        else:
            array = output.rows_for_client(rows, batched)
            outputs.append(OutputTensor(output.name, output.datatype, array.shape, array))
    return outputs


def _trace_queued(trace: Trace, inputs: list[InputTensor]) -> None:
    """The request goes into its model's queue: Triton's QUEUE_START, and the inputs at level TENSORS."""
    if trace.tensors:
        for tensor in inputs:
            trace.tensor("TENSOR_QUEUE_INPUT", tensor.name, tensor.datatype, tensor.data)
    trace.stamp("QUEUE_START", time.monotonic_ns())


def _checked_inputs(tensors: list[InputTensor], served: ServedVersion) -> tuple[dict[str, np.ndarray], int]:
    """The request's arrays by input name, as rows in the model's shapes, and their common batch size (1 for a
    model that does not batch), checked against the signature."""
    signature = served.manifest.signature
    max_batch_size = served.max_batch_size
    arrays: dict[str, np.ndarray] = {}
    specs = signature.inputs
    for tensor in tensors:
        spec = next((s for s in specs if s.name == tensor.name), None)
        if spec is None:
            raise _bad(
                f"unexpected input {codec.shown(tensor.name)}; the model's inputs are: "
                + ", ".join(s.name for s in specs)
            )
        if spec.name in arrays:
            raise _bad(f"input '{spec.name}' is given more than once")
        spec.check_request(tensor.datatype, tuple(tensor.shape), max_batch_size)
        arrays[spec.name] = spec.rows_for_model(tensor.data, signature.batched)
    missing = next((s for s in specs if s.name not in arrays and not s.optional), None)
    if missing is not None:
        raise _bad(f"missing input '{missing.name}' ({missing.datatype} {format_shape(missing.shape)})")
    if not arrays:
        raise _bad("the request has no inputs; send at least one of: " + ", ".join(s.name for s in specs))
    batch_sizes = {array.shape[0] for array in arrays.values()}
    if len(batch_sizes) > 1:
        sizes = ", ".join(f"'{name}': {array.shape[0]}" for name, array in arrays.items())
        raise _bad(f"inputs disagree on the batch size ({sizes})")
    return arrays, batch_sizes.pop()


def _checked_outputs(
    requested: list[RequestedOutput], served: ServedVersion, shared_memory: SystemSharedMemory
) -> list[tuple]:
    """(output spec, class count, shared memory slice or None) for each output to return: all of them when none is
    named."""
    signature = served.manifest.signature
    if not requested:
        return [(spec, 0, None) for spec in signature.outputs]
    wanted = []
    for output in requested:
        spec = next((s for s in signature.outputs if s.name == output.name), None)
        if spec is None:
            raise _bad(
                f"unknown output {codec.shown(output.name)}; the model's outputs are: "
                + ", ".join(signature.output_names())
            )
        if output.class_count and spec.datatype == BYTES:
            raise _bad(f"output '{spec.name}' is {BYTES}: classification needs scores")
        target = shared_memory.slice_for("output", spec.name, output.parameters)
        if target is not None and output.class_count:
            raise _bad(f"output '{spec.name}': classification cannot go into shared memory; ask for one or the other")
        wanted.append((spec, output.class_count, target))
    return wanted


def _write_shared_memory(outputs: list[OutputTensor], targets: list[SharedMemorySlice | None]) -> None:
    """Writes the outputs that asked for shared memory into their slices, once every one is known to fit (a
    request that fails leaves the client's memory as it was), and leaves only their description in the answer."""
    chosen = [(output, target) for output, target in zip(outputs, targets, strict=True) if target is not None]
    if not chosen:
        return
    raw = [codec.raw_bytes(output.datatype, output.data) for output, _ in chosen]
    for (output, target), data in zip(chosen, raw, strict=True):
        target.check_fits(f"output '{output.name}'", len(data))
    for (output, target), data in zip(chosen, raw, strict=True):
        target.write(data)
        output.data = np.empty(0, dtype=output.data.dtype)
        output.in_shared_memory = True


@dataclass(slots=True)
class _QueuePlace:
    """Where a request queues: its priority level, the time it must run by (``deadline``, a ``time.monotonic()``
    value or None) and whether that is its queue timeout rather than the transport's deadline, and the time after
    which it waits behind the others of its level (``delay_at``, Triton's ``timeout_action: DELAY``)."""

    level: int
    deadline: float | None
    timeout_binds: bool
    delay_at: float | None


def _queue_place(request: InferenceRequest, batching: Batching) -> _QueuePlace:
    """The request's level from its ``priority`` parameter (0 = the default level), and its queue timeout: the
    level's policy (config.pbtxt) or the request's ``timeout`` parameter (microseconds, 0 = none), as the policy
    allows. A timeout that drops the request is tightened with the transport's deadline; Triton answers it with
    UNAVAILABLE when it is the tighter of the two, the deadline with DEADLINE_EXCEEDED."""
    now = time.monotonic()
    level = batching.level(_unsigned_parameter(request, "priority"))
    policy = batching.policy(level)
    timeout_us = policy.timeout_us(_unsigned_parameter(request, "timeout"))
    deadline, timeout_binds, delay_at = request.deadline, False, None
    if 0 < timeout_us < NO_DEADLINE_S * 1e6:
        limit = now + timeout_us / 1e6
        if not policy.rejects:
            delay_at = limit
        elif deadline is None or limit <= deadline:
            deadline, timeout_binds = limit, True
    if deadline is not None and deadline - now > NO_DEADLINE_S:
        deadline, timeout_binds = None, False
    return _QueuePlace(level, deadline, timeout_binds, delay_at)


def _unsigned_parameter(request: InferenceRequest, name: str) -> int:
    """An unsigned integer parameter (Triton's ``timeout`` and ``priority``); absent is 0."""
    return codec.non_negative_int(request.parameters.get(name, 0), name)
