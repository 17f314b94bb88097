"""The gRPC front end on grpc.aio: ``inference.GRPCInferenceService``, health and reflection, thin over the data
plane.

Each RPC method is named after the protocol and only translates: protocol message -> data plane values, the
data plane's answer -> protocol message, ``ServingError.status`` -> gRPC code (``GRPC_CODES``, the one table).
Requests arrive as bytes and are parsed here, so bytes that do not decode answer INVALID_ARGUMENT with one
rate-limited log line instead of a stack trace each; anything unexpected answers INTERNAL with a one-line
message, and the server never goes down on a request. Every RPC except liveness and readiness is admitted by
the data plane, which refuses new work while draining and lets the drain wait for what is in flight.

``ModelStreamInfer`` (tritonclient's ``start_stream``/``async_stream_infer``) runs each request of a stream as
``ModelInfer`` does, concurrently, so the batcher can merge them, and writes the answers in the order of the
requests, as Triton does for a model that is not decoupled. A request that fails gets an answer with
``error_message`` and its id, and the stream goes on. A stream owes at most ``STREAM_WINDOW`` answers at once; beyond
that it reads no further request until the client reads an answer.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import message as protobuf_message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import codec
from serving.auth import BearerToken, BearerTokenInterceptor
from serving.dataplane import (
    NO_DEADLINE_S,
    DataPlane,
    InferenceRequest,
    InputTensor,
    RequestedOutput,
    VersionStatistics,
)
from serving.errors import RateLimitedLog, ServingError, Status
from serving.protocol import grpc_service_pb2 as pb
from serving.shared_memory import SystemSharedMemory, cuda_status, register_cuda
from serving.tracing import Trace

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# 1,024 CIFAR images (32x32x3 float32) are 12.6 MB; 64 MiB leaves room for larger models and batches.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_CODES = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Status.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
}
# Which ``LogSettingsResponse.SettingValue`` field carries a log setting of each Python type.
LOG_SETTING_FIELDS = {bool: "bool_param", int: "uint32_param", str: "string_param"}
# Answers a stream may owe at once (read, not yet written): a client that sends without reading holds no more.
STREAM_WINDOW = 256
# Answered even while draining, so that orchestrators can watch the shutdown.
ALWAYS_ANSWERED = {"ServerLive", "ServerReady"}
# Which typed ``InferTensorContents`` field carries each datatype (the protocol's table). FP16 travels raw only.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


def _choice(value) -> object:
    """The value of a ``parameter_choice`` oneof (InferParameter, a log setting), None when none is set."""
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(parameters) -> dict[str, object]:
    """``map<string, InferParameter>`` as plain values (None for a parameter with no value set)."""
    return {key: _choice(parameter) for key, parameter in parameters.items()}


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """One value of the call's metadata (lower-case key), None when it has none."""
    return next((value for name, value in context.invocation_metadata() or () if name == key), None)


def _inputs(request: pb.ModelInferRequest, shared_memory: SystemSharedMemory) -> list[InputTensor]:
    """The request's inputs as arrays, from shared memory, ``raw_input_contents`` (one entry for each input not in
    shared memory, in order, as tritonclient sends them) or typed contents."""
    in_shared_memory = [
        shared_memory.slice_for("input", tensor.name, _parameters(tensor.parameters)) if tensor.parameters else None
        for tensor in request.inputs
    ]
    raw = request.raw_input_contents
    carried = len(in_shared_memory) - in_shared_memory.count(None)
    if raw and len(raw) != len(request.inputs) - carried:
        raise _bad(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs) - carried} inputs not in shared "
            "memory; send one per input"
        )
    tensors = []
    raw_index = 0
    for tensor, shared in zip(request.inputs, in_shared_memory, strict=True):
        shape = tuple(tensor.shape)
        if shared is not None:
            where = f"input {codec.shown(tensor.name)}"
            if tensor.HasField("contents"):
                raise _bad(f"{where} has both shared memory and typed contents; send one")
            data = codec.array_from_raw(tensor.name, tensor.datatype, shape, shared.read(where))
        elif raw:
            if tensor.HasField("contents"):
                raise _bad(f"input {codec.shown(tensor.name)} has both raw contents and typed contents; send one")
            data = codec.array_from_raw(tensor.name, tensor.datatype, shape, raw[raw_index])
            raw_index += 1
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if field is None:
                raise _bad(
                    f"input {codec.shown(tensor.name)}: {tensor.datatype[:20] or '(no datatype)'} can only be sent "
                    "in raw_input_contents"
                )
            values = getattr(tensor.contents, field)
            data = codec.array_from_values(tensor.name, tensor.datatype, shape, values, f"contents.{field}")
        tensors.append(InputTensor(tensor.name, tensor.datatype, shape, data))
    return tensors


def _outputs(request: pb.ModelInferRequest) -> list[RequestedOutput]:
    return [
        RequestedOutput.from_parameters(output.name, _parameters(output.parameters) if output.parameters else {})
        for output in request.outputs
    ]


def _statistics(entry: VersionStatistics) -> pb.ModelStatistics:
    snap = entry.stats

    def duration(d) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=entry.name,
        version=entry.version,
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
            cache_hit=duration(snap.cache_hit),
            cache_miss=duration(snap.cache_miss),
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


def _tensor_metadata(tensors) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in tensors]


class InferenceService:
    """The protocol's RPCs, each translating to one data plane call."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        metadata = self.dataplane.model_metadata(request.name, request.version)
        trailing = [("x-execution-providers", ",".join(metadata.execution_providers))]
        if metadata.device_warning:
            trailing.append(("x-device-warning", metadata.device_warning))
        context.set_trailing_metadata(tuple(trailing))
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=list(metadata.versions),
            platform=metadata.platform,
            inputs=_tensor_metadata(metadata.inputs),
            outputs=_tensor_metadata(metadata.outputs),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.dataplane.model_config(request.name, request.version))

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        response, trace = await self.infer(request, context)
        if trace is not None:  # grpc.aio sends the answer after this returns: the trace ends when the call does
            trace.stamp("GRPC_SEND_START", time.monotonic_ns())
            context.add_done_callback(lambda _: self.dataplane.tracer.finish(trace, "GRPC_SEND_END"))
        return response

    async def infer(self, request: pb.ModelInferRequest, context) -> tuple[pb.ModelInferResponse, Trace | None]:
        """One inference request, of ``ModelInfer`` or of a stream: the answer, and the request's trace when it is
        sampled (then the caller stamps the sending and finishes it; a failed request's trace is finished here)."""
        tracer = self.dataplane.tracer
        parent = _metadata(context, "traceparent") if tracer.propagates and tracer.active else None
        trace = tracer.sample(request.model_name, parent)
        if trace is not None:
            # grpc.aio hands over a message already read: both of Triton's read stamps are the moment it arrived.
            arrived = time.monotonic_ns()
            trace.stamp("GRPC_WAITREAD_START", arrived)
            trace.stamp("GRPC_WAITREAD_END", arrived)
        try:
            # Without a client deadline gRPC reports no time limit (None); a huge one is no limit either.
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None and remaining < NO_DEADLINE_S else None
            result = await self.dataplane.infer(
                InferenceRequest(
                    model=request.model_name,
                    version=request.model_version,
                    id=request.id,
                    inputs=_inputs(request, self.dataplane.shared_memory),
                    outputs=_outputs(request),
                    parameters=_parameters(request.parameters) if request.parameters else {},
                    deadline=deadline,
                    trace=trace,
                )
            )
        except BaseException:
            if trace is not None:
                self.dataplane.tracer.finish(trace)
            raise
        response = pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
        for output in result.outputs:
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
            # Triton's answer has a raw entry for every output, empty for one written into shared memory.
            raw = b"" if output.in_shared_memory else codec.raw_bytes(output.datatype, output.data)
            response.raw_output_contents.append(raw)
        return response, trace

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        entries = self.dataplane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(entry) for entry in entries])

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self.dataplane.repository_index(request.ready)
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context
    ) -> pb.RepositoryModelLoadResponse:
        await self.dataplane.load(request.model_name, _parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload(request.model_name, _parameters(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(
            regions={
                region.name: status(name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size)
                for region in self.dataplane.shared_memory.status(request.name)
            }
        )

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.dataplane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context
    ) -> pb.CudaSharedMemoryStatusResponse:
        cuda_status(request.name)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        register_cuda()  # raises: the server takes no CUDA shared memory

    async def LogSettings(self, request: pb.LogSettingsRequest, context) -> pb.LogSettingsResponse:
        settings = self.dataplane.log_control.update({key: _choice(v) for key, v in request.settings.items()})
        response = pb.LogSettingsResponse()
        for key, value in settings.as_dict().items():
            setattr(response.settings[key], LOG_SETTING_FIELDS[type(value)], value)
        return response

    async def TraceSetting(self, request: pb.TraceSettingRequest, context) -> pb.TraceSettingResponse:
        # A setting with no value hands it back to the global (or startup) value, as tritonclient sends None.
        changes = {key: list(setting.value) or None for key, setting in request.settings.items()}
        settings = self.dataplane.trace_settings(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # there is never one to unregister


RPCS = (
    ("ServerLive", pb.ServerLiveRequest),
    ("ServerReady", pb.ServerReadyRequest),
    ("ModelReady", pb.ModelReadyRequest),
    ("ServerMetadata", pb.ServerMetadataRequest),
    ("ModelMetadata", pb.ModelMetadataRequest),
    ("ModelConfig", pb.ModelConfigRequest),
    ("ModelInfer", pb.ModelInferRequest),
    ("ModelStatistics", pb.ModelStatisticsRequest),
    ("RepositoryIndex", pb.RepositoryIndexRequest),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest),
    ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest),
    ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest),
    ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest),
    ("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest),
    ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest),
    ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest),
    ("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest),
    ("TraceSetting", pb.TraceSettingRequest),
    ("LogSettings", pb.LogSettingsRequest),
)


class _Translator:
    """Wraps each RPC method: parse the bytes, admit, call, and map a failure to one gRPC status."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.undecodable_log = RateLimitedLog(log)
        self.unexpected_log = RateLimitedLog(log)

    def handler(self, name: str, request_type, method: Callable[..., Awaitable]) -> grpc.RpcMethodHandler:
        admitted_call = name not in ALWAYS_ANSWERED

        async def handle(data: bytes, context: grpc.aio.ServicerContext):
            _, response, code, details = await self._call(name, request_type, method, admitted_call, data, context)
            if code is None:
                return response
            await context.abort(code, details)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=lambda response: response.SerializeToString()
        )

    def stream_handler(self, infer: Callable[..., Awaitable]) -> grpc.RpcMethodHandler:
        """``ModelStreamInfer``: each request runs as ``infer`` (``InferenceService.infer``, as ``ModelInfer``) does;
        answers keep their order, and a traced one's sending is stamped around its write."""

        async def answer(
            data: bytes, context: grpc.aio.ServicerContext
        ) -> tuple[pb.ModelStreamInferResponse, Trace | None]:
            request, result, code, details = await self._call(
                "ModelStreamInfer", pb.ModelInferRequest, infer, True, data, context
            )
            if code is None:
                response, trace = result
                return pb.ModelStreamInferResponse(infer_response=response), trace
            # Triton's failed answer in a stream: the message, and the request's id so the client knows which.
            failed = pb.ModelInferResponse(id=request.id if request is not None else "")
            return pb.ModelStreamInferResponse(error_message=details, infer_response=failed), None

        async def write(
            context: grpc.aio.ServicerContext, response: pb.ModelStreamInferResponse, trace: Trace | None
        ) -> None:
            if trace is None:
                await context.write(response)
                return
            trace.stamp("GRPC_SEND_START", time.monotonic_ns())
            try:
                await context.write(response)
            finally:
                self.dataplane.tracer.finish(trace, "GRPC_SEND_END")

        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            window = asyncio.Semaphore(STREAM_WINDOW)
            owed: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()

            async def write_in_order() -> None:
                while (task := await owed.get()) is not None:
                    await write(context, *await task)
                    window.release()

            writer = asyncio.create_task(write_in_order())
            answers: set[asyncio.Task] = set()
            try:
                async for data in requests:
                    if writer.done():  # writing failed: the stream cannot be answered any more
                        break
                    await window.acquire()
                    task = asyncio.create_task(answer(data, context))
                    answers.add(task)
                    task.add_done_callback(answers.discard)
                    owed.put_nowait(task)
                owed.put_nowait(None)
                await writer
            finally:  # the client went away or the server stops: nothing more is answered
                for task in (writer, *answers):
                    task.cancel()

        return grpc.stream_stream_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=lambda response: response.SerializeToString()
        )

    async def _call(
        self,
        name: str,
        request_type,
        method: Callable[..., Awaitable],
        admitted_call: bool,
        data: bytes,
        context: grpc.aio.ServicerContext,
    ) -> tuple[object | None, object | None, grpc.StatusCode | None, str]:
        """Parses ``data``, admits the call where it counts, and runs ``method``: (request, response, None, "") on
        success, else (the request if it parsed, None, the gRPC code, its details)."""
        try:
            request = request_type.FromString(data)
        except protobuf_message.DecodeError as error:
            self.undecodable_log.warning("%s: a request that is not a valid message was refused: %s", name, error)
            return None, None, grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request_type.__name__}"
        admitted = False
        try:
            if admitted_call:
                self.dataplane.admit()
                admitted = True
            return request, await method(request, context), None, ""
        except ServingError as error:
            return request, None, GRPC_CODES[error.status], error.message
        except Exception as error:  # never let one request take the server down; say what happened
            self.unexpected_log.warning("%s failed: %r", name, error, exc_info=True)
            return request, None, grpc.StatusCode.INTERNAL, f"internal error in {name}: {error!r}"[:500]
        finally:
            if admitted:
                self.dataplane.release()


class GrpcFrontend:
    """One grpc.aio server on the data plane's event loop: the inference service, health and reflection.

    Args:
        credentials: TLS server credentials, or None for plain text.
        token: the bearer token every RPC but health must carry, or None.
        max_calls: RPCs in the server at once, health included, before gRPC answers RESOURCE_EXHAUSTED (None: no
            limit); the data plane's own limit on admitted requests is lower.
    """

    name = "gRPC"

    def __init__(
        self,
        dataplane: DataPlane,
        host: str,
        port: int,
        *,
        credentials: grpc.ServerCredentials | None = None,
        token: BearerToken | None = None,
        max_calls: int | None = None,
    ) -> None:
        self.dataplane = dataplane
        self._max_calls = max_calls
        self.host = host
        self.port = port
        self._credentials = credentials
        self._token = token
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Binds and starts serving; health says SERVING from here on.

        Raises:
            OSError: the address cannot be bound (in use, or not a local address).
        """
        server = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(self._token)] if self._token else None,
            maximum_concurrent_rpcs=self._max_calls,  # beyond it gRPC answers RESOURCE_EXHAUSTED at once
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        service = InferenceService(self.dataplane)
        translator = _Translator(self.dataplane)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        **{name: translator.handler(name, kind, getattr(service, name)) for name, kind in RPCS},
                        "ModelStreamInfer": translator.stream_handler(service.infer),
                    },
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.host}:{self.port}"
        try:
            if self._credentials is not None:
                port = server.add_secure_port(address, self._credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not a local address)")
        self.port = port
        await server.start()
        self._server = server
        for service_name in ("", SERVICE_NAME):
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Health turns NOT_SERVING at once; in-flight requests get up to ``grace_s``, then the server stops."""
        await self._health.enter_graceful_shutdown()
        await self.dataplane.wait_idle(grace_s)
        if self._server is not None:
            await self._server.stop(0)
