"""The gRPC service ``inference.GRPCInferenceService``: a thin translation between protocol messages and the
transport-free data plane (repository, batcher, codec).

Each RPC method is named after the protocol. Failures inside are ``ServingError``s; ``_rpc`` maps their status
to a gRPC code in one place, turns anything unexpected into INTERNAL with a one-line message (the server never
crashes on a request), refuses new work while draining, and counts in-flight calls for the drain.
"""

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable

import grpc

from serving import __version__, codec
from serving.errors import ServingError, Status
from serving.metrics import Metrics
from serving.protocol import grpc_service_pb2 as pb
from serving.protocol import grpc_service_pb2_grpc, model_config_pb2
from serving.repository import ModelRepository, ServedVersion
from serving.runtime import CUDA

log = logging.getLogger(__name__)

SERVER_NAME = "buildsys-serving"
EXTENSIONS = ["classification", "model_repository", "model_configuration", "statistics"]
GRPC_CODES = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
}
# Answered even while draining, so that orchestrators can watch the shutdown.
ALWAYS_ANSWERED = {"ServerLive", "ServerReady"}
NO_DEADLINE_S = 86_400.0


class ServerState:
    """Draining flag and in-flight RPC count, shared by the servicer and the shutdown sequence."""

    def __init__(self) -> None:
        self.draining = False
        self._inflight = 0
        self._cond = threading.Condition()

    def begin(self) -> None:
        with self._cond:
            self._inflight += 1

    def end(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no RPC is in flight; False when ``timeout_s`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    @property
    def inflight(self) -> int:
        return self._inflight


def _rpc(method: Callable) -> Callable:
    @functools.wraps(method)
    def handler(self: "InferenceServicer", request, context: grpc.ServicerContext):
        # Counted before the draining check, so the drain cannot miss a call that got past the check.
        self.state.begin()
        try:
            if self.state.draining and method.__name__ not in ALWAYS_ANSWERED:
                raise ServingError(Status.UNAVAILABLE, "server is shutting down; retry on another instance")
            return method(self, request, context)
        except ServingError as error:
            context.abort(GRPC_CODES[error.status], error.message)
        except Exception as error:  # never let one request take the server down; say what happened
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {error!r}"[:500])
        finally:
            self.state.end()

    return handler


def _request_timeout_s(request: pb.ModelInferRequest, context: grpc.ServicerContext) -> float | None:
    """The tighter of the request's ``timeout`` parameter (microseconds, Triton's) and the gRPC deadline."""
    # Without a client deadline gRPC reports "infinite future" as a huge number of seconds, which Python's
    # waits cannot take; anything over a day is treated as no deadline.
    remaining = context.time_remaining()
    limits = [remaining if remaining is not None and remaining < NO_DEADLINE_S else None]
    if "timeout" in request.parameters:
        timeout_us = request.parameters["timeout"].int64_param
        if timeout_us < 0:
            raise ServingError(Status.INVALID_ARGUMENT, f"timeout must be >= 0 microseconds, got {timeout_us}")
        if timeout_us > 0:
            limits.append(timeout_us / 1e6)
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, state: ServerState, metrics: Metrics) -> None:
        self.repository = repository
        self.state = state
        self.metrics = metrics

    @_rpc
    def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.state.draining)

    @_rpc
    def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(request.name, request.version))

    @_rpc
    def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        # The protocol has no field for warnings; an extension string is what every client prints.
        warnings = [f"device_warning: {warning}" for warning in self.repository.device_warnings()]
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS + warnings)

    @_rpc
    def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        served = self.repository.get(request.name, request.version)
        versions = [str(v.version) for v in self.repository.versions(request.name)]
        signature = served.manifest.signature
        trailing = [("x-execution-providers", ",".join(served.model.providers))]
        if served.model.device_warning:
            trailing.append(("x-device-warning", served.model.device_warning))
        context.set_trailing_metadata(trailing)
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=versions,
            platform=served.manifest.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in signature.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in signature.outputs
            ],
        )

    @_rpc
    def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        served = self.repository.get(request.name, request.version)
        return pb.ModelConfigResponse(config=_effective_config(served))

    @_rpc
    def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        started = time.monotonic_ns()
        model_label, code = "(unknown)", "OK"
        served: ServedVersion | None = None
        try:
            with self.repository.lease(request.model_name, request.model_version) as served:
                model_label = served.name
                signature = served.manifest.signature
                inputs, batch_size = codec.decode_inputs(request, signature, served.batcher.max_batch_size)
                wanted = codec.requested_outputs(request, signature)
                timeout_s = _request_timeout_s(request, context)
                future = served.batcher.submit(inputs, batch_size, timeout_s)
                try:
                    results = future.result(timeout=timeout_s)
                except concurrent.futures.TimeoutError as error:
                    raise ServingError(
                        Status.DEADLINE_EXCEEDED, f"model '{served.name}': no result within {timeout_s:.3f} s"
                    ) from error
                response = pb.ModelInferResponse(
                    model_name=served.name, model_version=str(served.version), id=request.id
                )
                codec.encode_outputs(response, results, wanted, served.manifest.class_names)
                served.stats.record_request(True, time.monotonic_ns() - started)
                return response
        except ServingError as error:
            code = error.status.name
            if served is not None:
                served.stats.record_request(False, time.monotonic_ns() - started)
            raise
        finally:
            self.metrics.observe_request(model_label, code, (time.monotonic_ns() - started) / 1e9)

    @_rpc
    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        if request.name and request.version:
            chosen = [self.repository.get(request.name, request.version)]
        elif request.name:
            chosen = self.repository.versions(request.name)
        else:
            chosen = sorted(self.repository.loaded(), key=lambda s: (s.name, s.version))
        return pb.ModelStatisticsResponse(model_stats=[_statistics(served) for served in chosen])

    @_rpc
    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        entries = [e for e in self.repository.index() if e.state == "READY" or not request.ready]
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in entries
            ]
        )

    @_rpc
    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            names = ", ".join(sorted(request.parameters))
            raise ServingError(
                Status.INVALID_ARGUMENT,
                f"load parameters ({names}) are not supported; publish the model into the repository instead",
            )
        self.repository.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context
    ) -> pb.RepositoryModelUnloadResponse:
        self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _effective_config(served: ServedVersion) -> model_config_pb2.ModelConfig:
    """config.pbtxt as it is actually applied: batching after flag overrides, and the device really used."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(served.config)
    config.name = served.name
    config.platform = served.manifest.platform
    config.max_batch_size = served.batcher.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = served.batcher.max_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = served.batcher.max_queue_size
    on_gpu = CUDA in served.model.providers
    kind = model_config_pb2.ModelInstanceGroup.KIND_GPU if on_gpu else model_config_pb2.ModelInstanceGroup.KIND_CPU
    del config.instance_group[:]
    config.instance_group.add(name=f"{served.name}_0", kind=kind, count=1)
    config.parameters["execution_providers"].string_value = ",".join(served.model.providers)
    if served.model.device_warning:
        config.parameters["device_warning"].string_value = served.model.device_warning
    return config


def _statistics(served: ServedVersion) -> pb.ModelStatistics:
    snap = served.stats.snapshot()

    def duration(d) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=served.name,
        version=str(served.version),
        last_inference=snap.last_inference_ms,
        inference_count=snap.inference_count,
        execution_count=snap.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(snap.success),
            fail=duration(snap.fail),
            queue=duration(snap.queue),
            compute_input=duration(snap.compute_input),
            compute_infer=duration(snap.compute_infer),
            compute_output=duration(snap.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=duration(b.compute_input),
                compute_infer=duration(b.compute_infer),
                compute_output=duration(b.compute_output),
            )
            for size, b in snap.batches.items()
        ],
    )
