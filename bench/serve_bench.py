"""Serving side by side: `buildsys serve` (gRPC and REST) against Seldon MLServer and KServe on the same ONNX files.

One closed-loop matrix — batch × clients cells (1×1, 1×32, 64×4 by default; 256×8 on request) on the Fashion-MNIST
MLP and the CIFAR-10 CNN (raw uint8 images) — against every server asked for, in one run, interleaved: each of
`--runs` rounds starts a fresh server of each kind (the order rotates between rounds), times how long it takes until
both models are ready, drives every cell for `--seconds`, and stops it; the table shows the median of the rounds.
In-process ONNX Runtime on the same file and batch is the ceiling (for a 1-image cell from C clients, batch C: what
a perfect dynamic batcher could merge).

Servers (`--servers`, comma-separated):
  buildsys-grpc, buildsys-rest  `python -m serving` from this checkout, over gRPC and over REST with binary tensors
  buildsys-grpc-shm, buildsys-rest-shm  the same with `--allow-client-shm`, each client's images and answer in a
                                system shared memory region of its own (Triton's extension; the client copies its
                                images into the region before every request); not in the default list
  mlserver                      MLServer 1.7.1, onnxruntime MLModel, adaptive batching on, parallel_workers 0 (gRPC)
  kserve-grpc, kserve-rest      KServe 0.21's ModelServer with an onnxruntime kserve.Model (gRPC, FastAPI REST)
  floor-grpc, floor-rest        the same transport stacks answering a fixed answer, no decoding, no model
                                (bench/peers/floor_server.py): the front end's floor, not a peer
  floor-grpc-sync, floor-grpclib  the same fixed answer on the other Python gRPC stacks: grpcio's synchronous
                                server, and grpclib (pure-Python HTTP/2 on asyncio; bench/.venvs/grpclib); not in
                                the default list, they answer whether another stack would lower the gRPC floor
  inprocess                     ONNX Runtime in this process: the ceiling (for 1x1 also with 0.5 ms between calls;
                                on a CPU also two one-thread sessions from two threads, as `buildsys serve` runs)
The peers run from their own virtual environments (`bash bench/peers/setup.sh` creates bench/.venvs/); a server
that is not installed, or whose client library is missing here, is skipped with a note.

Every gRPC cell uses the same client: tritonclient's generated stubs on grpc.aio, one channel per client, the
images in `raw_input_contents`. Every REST cell uses the same HTTP client: aiohttp with a request body encoded once
by tritonclient.http (JSON header + binary tensor, Triton's binary data extension). The first answer of each cell
is checked against in-process ONNX Runtime. Server CPU per request comes from /proc (the server's process tree,
user + system time, over the measured window). Each cell is bounded by `--seconds` and `--max-requests`, each
request by a 30 s timeout; servers listen on 127.0.0.1 only and are killed at the end, whatever happens.

Examples:
    .venv/bin/python bench/serve_bench.py --seconds 10 --runs 3
    python bench/serve_bench.py --servers buildsys-grpc,buildsys-rest,mlserver,kserve-grpc,kserve-rest,inprocess \\
        --cells 1x1,1x32,64x4,256x8 --models fashion,cifar --model-dir DIR --device cuda --seconds 10 --runs 3 \\
        --json results.json
Without `--model-dir` the two models are built first (bench/prepare_models.py, needs the build extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = PROJECT_ROOT / "bench" / "peers"
VENVS = PROJECT_ROOT / "bench" / ".venvs"
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench")]

from prepare_models import MODELS  # noqa: E402 - the short model names and the targets they stand for

from modelrepo import MANIFEST_FILE, ONNX_FILE, FormatError, list_versions, read_manifest  # noqa: E402

DEFAULT_SERVERS = ("buildsys-grpc", "buildsys-rest", "mlserver", "kserve-grpc", "kserve-rest", "floor-grpc",
                   "floor-rest", "inprocess")  # fmt: skip
SERVERS = (*DEFAULT_SERVERS, "floor-grpc-sync", "floor-grpclib", "buildsys-grpc-shm", "buildsys-rest-shm")
PEERS = ("mlserver", "kserve-grpc", "kserve-rest")
FLOORS = ("floor-grpc", "floor-rest", "floor-grpc-sync", "floor-grpclib")
TRANSPORT = {"buildsys-grpc": "grpc", "buildsys-rest": "http", "mlserver": "grpc", "kserve-grpc": "grpc",
             "kserve-rest": "http", "floor-grpc": "grpc", "floor-rest": "http", "floor-grpc-sync": "grpc",
             "floor-grpclib": "grpc", "buildsys-grpc-shm": "grpc", "buildsys-rest-shm": "http"}  # fmt: skip
# The gRPC stack of each gRPC floor (floor_server.py --grpc-stack).
FLOOR_GRPC_STACKS = {"floor-grpc": "aio", "floor-grpc-sync": "sync", "floor-grpclib": "grpclib"}
# The in-process ceiling is also taken with this pause between calls, as a server's calls come (caches and idle
# ONNX Runtime threads cool down between requests; back to back they stay warm).
PACED_PAUSE_S = 0.0005
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
ORT_TYPES = {"tensor(uint8)": (np.uint8, "UINT8"), "tensor(float)": (np.float32, "FP32")}
NUMPY_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}
REQUEST_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# MLServer's adaptive batching: up to this many requests merged, waiting at most as long as buildsys' default delay.
MLSERVER_MAX_BATCH_REQUESTS = 32
MLSERVER_MAX_BATCH_TIME_S = 0.0005


@dataclass(frozen=True)
class Model:
    """One ONNX file of the repository, with the signature the requests are made from."""

    short: str
    name: str
    path: Path
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    input_dtype: type
    input_datatype: str
    output_name: str

    def images(self, batch: int) -> np.ndarray:
        return np.random.default_rng(batch).integers(0, 256, size=(batch, *self.input_shape)).astype(self.input_dtype)


@dataclass(frozen=True)
class Cell:
    batch: int
    clients: int

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.clients}"

    @property
    def ceiling_batch(self) -> int:
        """The in-process batch this cell is compared with: what dynamic batching could at best merge."""
        return self.batch if self.batch > 1 else self.clients


@dataclass
class Measurement:
    """One cell on one server in one round."""

    images_per_s: float
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float | None


@dataclass
class Results:
    cells: dict[tuple[str, str, str], list[Measurement]] = field(default_factory=dict)
    ceilings: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    paced_ceilings: dict[str, list[float]] = field(default_factory=dict)  # batch 1, PACED_PAUSE_S between calls
    # (model, batch): two one-thread sessions called from two threads (buildsys' default instances on a CPU).
    two_instance_ceilings: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    ready_s: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)


def parse_cells(text: str) -> list[Cell]:
    cells = []
    for item in text.split(","):
        try:
            batch, clients = (int(part) for part in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a cell is BATCHxCLIENTS such as 64x4, got {item!r}") from None
        if batch < 1 or clients < 1:
            raise argparse.ArgumentTypeError(f"a cell needs a batch and clients >= 1, got {item!r}")
        cells.append(Cell(batch, clients))
    return cells


def parse_choices(allowed: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
        return chosen

    return parse


def load_model(model_dir: Path, short: str) -> Model:
    """The latest version of MODELS[short] in `model_dir`, read the way a server reads it (manifest's ONNX file)."""
    name = MODELS[short]
    versions = list_versions(model_dir / name)
    if not versions:
        raise SystemExit(f"serve_bench: {model_dir / name} has no version folder (run bench/prepare_models.py)")
    version_dir = model_dir / name / str(versions[-1])
    try:
        onnx_file = read_manifest(version_dir).onnx_file if (version_dir / MANIFEST_FILE).exists() else ONNX_FILE
    except FormatError as error:
        raise SystemExit(f"serve_bench: {error}") from None
    session = ort.InferenceSession(str(version_dir / onnx_file), providers=["CPUExecutionProvider"])
    (model_input,), outputs = session.get_inputs(), session.get_outputs()
    if model_input.type not in ORT_TYPES:
        raise SystemExit(f"serve_bench: {version_dir / onnx_file}: input type {model_input.type} is not supported")
    dtype, datatype = ORT_TYPES[model_input.type]
    shape = tuple(int(dim) for dim in model_input.shape[1:])
    return Model(short, name, version_dir / onnx_file, model_input.name, shape, dtype, datatype, outputs[0].name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (all their threads), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(times.get(member, 0.0) for member in tree)


def serving_flags() -> str:
    """`python -m serving --help` of this checkout: which ports the server of the day takes."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "serving", "--help"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    ).stdout


class Server:
    """A server process of one kind on free loopback ports, in its own process group so that stop() ends all of it."""

    def __init__(self, kind: str, models: list[Model], model_dir: Path, device: str, work: Path, help_text: str):
        self.kind = kind
        self.device = device
        self.transport = TRANSPORT[kind]
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = work / f"{kind}-{self.grpc_port}.log"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if kind.startswith("buildsys"):
            command = [sys.executable, "-m", "serving", "--repository", str(model_dir), "--device", device,
                       "--poll-interval", "0", "--log-level", "warning"]  # fmt: skip
            command += ["--grpc-port" if "--grpc-port" in help_text else "--port", str(self.grpc_port)]
            if "--http-port" in help_text:
                command += ["--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port)]
            if kind.endswith("-shm"):
                command.append("--allow-client-shm")
            env["PYTHONPATH"] = str(PROJECT_ROOT)
        elif kind in FLOORS:
            python = VENVS / "grpclib" / "bin" / "python" if kind == "floor-grpclib" else Path(sys.executable)
            command = [str(python), str(PEERS_DIR / "floor_server.py")]
            if self.transport == "grpc":
                command += ["--grpc-port", str(self.grpc_port), "--grpc-stack", FLOOR_GRPC_STACKS[kind]]
            else:
                command += ["--http-port", str(self.http_port)]
        elif kind == "mlserver":
            command = [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(self._mlserver_config(models, work))]
            env["PYTHONPATH"] = str(PEERS_DIR)
        else:
            command = [str(VENVS / "kserve" / "bin" / "python"), str(PEERS_DIR / "kserve_onnx.py"), "--device", device]
            command += ["--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port)]
            for model in models:
                command += ["--onnx", f"{model.name}={model.path}"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open for the process's lifetime, closed in stop()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=work,
                                        start_new_session=True)  # fmt: skip

    def _mlserver_config(self, models: list[Model], work: Path) -> Path:
        folder = work / f"mlserver-{self.grpc_port}"
        settings = {"debug": False, "host": "127.0.0.1", "http_port": self.http_port, "grpc_port": self.grpc_port,
                    "metrics_port": self.metrics_port, "parallel_workers": 0}  # fmt: skip
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps(settings))
        for model in models:
            (folder / model.name).mkdir()
            model_settings = {
                "name": model.name,
                "implementation": "mlserver_onnx.OnnxModel",
                "max_batch_size": MLSERVER_MAX_BATCH_REQUESTS,
                "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
                "parameters": {"uri": str(model.path), "extra": {"device": self.device}},
            }
            (folder / model.name / "model-settings.json").write_text(json.dumps(model_settings))
        return folder

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def wait_ready(self, models: list[Model]) -> float:
        """Seconds from the start of the process until every model answers ready over the cell's transport."""
        deadline = self.started + READY_TIMEOUT_S
        pending = [model.name for model in models]
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.kind}: not ready within {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            if self._model_ready(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.01)
        return time.perf_counter() - self.started

    def _model_ready(self, name: str) -> bool:
        if self.transport == "http":
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/ready", timeout=1) as answer:
                    return answer.status == 200
            except (urllib.error.URLError, OSError):
                return False
        import grpc

        pb, stubs = grpc_modules()
        with grpc.insecure_channel(self.grpc_url) as channel:
            try:
                ready = stubs.GRPCInferenceServiceStub(channel).ModelReady(pb.ModelReadyRequest(name=name), timeout=1)
                return ready.ready
            except grpc.RpcError:
                return False

    def cpu_s(self) -> float:
        return process_tree_cpu_s(self.process.pid)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()


def grpc_modules():
    """The Open Inference Protocol messages and stubs: tritonclient's, else this checkout's identical ones (a CUDA
    machine may have the serving code but not tritonclient)."""
    try:
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        from serving.protocol import grpc_service_pb2 as service_pb2
        from serving.protocol import grpc_service_pb2_grpc as service_pb2_grpc
    return service_pb2, service_pb2_grpc


def unavailable(kind: str, help_text: str) -> str | None:
    """Why a server kind cannot run here, or None."""
    if kind == "mlserver" and not (VENVS / "mlserver" / "bin" / "mlserver").exists():
        return "bench/.venvs/mlserver is missing (bash bench/peers/setup.sh)"
    if kind.startswith("kserve") and not (VENVS / "kserve" / "bin" / "python").exists():
        return "bench/.venvs/kserve is missing (bash bench/peers/setup.sh)"
    if kind == "floor-grpclib" and not (VENVS / "grpclib" / "bin" / "python").exists():
        return "bench/.venvs/grpclib is missing (bash bench/peers/setup.sh)"
    if kind.startswith("buildsys") and not help_text:
        return "`python -m serving --help` failed in this environment"
    if kind.startswith("buildsys-rest") and "--http-port" not in help_text:
        return "this checkout's server has no REST front end (no --http-port flag)"
    if kind.endswith("-shm") and "--allow-client-shm" not in help_text:
        return "this checkout's server takes no shared memory (no --allow-client-shm flag)"
    if kind.endswith("-shm"):
        try:
            import tritonclient.utils.shared_memory  # noqa: F401
        except ImportError as error:
            return f"the shared memory client needs tritonclient here ({error})"
    if TRANSPORT.get(kind) == "http":
        try:
            import aiohttp  # noqa: F401
            import tritonclient.http  # noqa: F401
        except ImportError as error:
            return f"the REST client needs aiohttp and tritonclient[http] here ({error})"
    if TRANSPORT.get(kind) == "grpc":
        try:
            import grpc  # noqa: F401
        except ImportError:
            return "the gRPC client needs grpcio here"
    return None


async def closed_loop(send: Callable[[int], Awaitable[None]], clients: int, seconds: float, max_requests: int):
    """`clients` coroutines send back to back until `seconds` pass or `max_requests` were sent.

    Returns (latencies in s, failures, wall seconds from the start until the last answer)."""
    latencies: list[float] = []
    failures = 0
    budget = max_requests
    started = time.perf_counter()
    deadline = started + seconds

    async def client(index: int) -> None:
        nonlocal failures, budget
        while budget > 0 and (sent := time.perf_counter()) < deadline:
            budget -= 1
            try:
                await send(index)
                latencies.append(time.perf_counter() - sent)
            except Exception:  # any failed request counts as one failure; the loop goes on
                failures += 1

    await asyncio.gather(*(client(index) for index in range(clients)))
    return latencies, failures, time.perf_counter() - started


class SharedMemoryRegions:
    """One system shared memory object per client, made with tritonclient's helper: the client's images at its
    start and the answer after them, registered as a region named after the client."""

    def __init__(self, clients: int, images: np.ndarray, answer: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm = shm
        self.images, self.answer = images, answer
        prefix = f"serve-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.names = [f"{prefix}-{index}" for index in range(clients)]
        self.handles = [shm.create_shared_memory_region(name, "/" + name, self.byte_size) for name in self.names]

    @property
    def byte_size(self) -> int:
        return self.images.nbytes + self.answer.nbytes

    def input_parameters(self, index: int) -> dict[str, object]:
        return {"shared_memory_region": self.names[index], "shared_memory_byte_size": self.images.nbytes}

    def output_parameters(self, index: int) -> dict[str, object]:
        return {
            "shared_memory_region": self.names[index],
            "shared_memory_byte_size": self.answer.nbytes,
            "shared_memory_offset": self.images.nbytes,
        }

    def write_images(self, index: int) -> None:
        """What a client does before each request: its images into its region."""
        self.shm.set_shared_memory_region(self.handles[index], [self.images])

    def read_answer(self, index: int) -> np.ndarray:
        return self.shm.get_contents_as_numpy(
            self.handles[index], self.answer.dtype, self.answer.shape, offset=self.images.nbytes
        ).copy()

    def destroy(self) -> None:
        for handle in self.handles:
            self.shm.destroy_shared_memory_region(handle)


def _grpc_parameters(pb, values: dict[str, object]) -> dict:
    return {
        key: pb.InferParameter(string_param=value) if isinstance(value, str) else pb.InferParameter(int64_param=value)
        for key, value in values.items()
    }


class GrpcClients:
    """One grpc.aio channel per client (separate connections), tritonclient's stubs, the images as raw contents, or
    with ``shared_memory`` in a system shared memory region of each client's own."""

    def __init__(self, url: str, clients: int, shared_memory: bool = False) -> None:
        import grpc

        self.pb, stubs = grpc_modules()
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.channels = [grpc.aio.insecure_channel(url, options=options) for _ in range(clients)]
        self.stubs = [stubs.GRPCInferenceServiceStub(channel) for channel in self.channels]
        self.infer = [stub.ModelInfer for stub in self.stubs]
        self.shared_memory = shared_memory
        self.regions: SharedMemoryRegions | None = None

    async def sender(
        self, model: Model, images: np.ndarray, answer: np.ndarray
    ) -> tuple[Callable[[int], Awaitable[None]], Callable]:
        pb = self.pb
        if not self.shared_memory:
            request = pb.ModelInferRequest(model_name=model.name)
            request.inputs.add(name=model.input_name, datatype=model.input_datatype, shape=images.shape)
            request.raw_input_contents.append(images.tobytes())
            requests = [request] * len(self.channels)
        else:
            self.regions = regions = SharedMemoryRegions(len(self.channels), images, answer)
            requests = []
            for index, name in enumerate(regions.names):
                register = pb.SystemSharedMemoryRegisterRequest(name=name, key="/" + name, byte_size=regions.byte_size)
                await self.stubs[index].SystemSharedMemoryRegister(register, timeout=REQUEST_TIMEOUT_S)
                request = pb.ModelInferRequest(model_name=model.name)
                tensor = request.inputs.add(name=model.input_name, datatype=model.input_datatype, shape=images.shape)
                for key, value in _grpc_parameters(pb, regions.input_parameters(index)).items():
                    tensor.parameters[key].CopyFrom(value)
                output = request.outputs.add(name=model.output_name)
                for key, value in _grpc_parameters(pb, regions.output_parameters(index)).items():
                    output.parameters[key].CopyFrom(value)
                requests.append(request)

        async def send(index: int) -> None:
            if self.regions is not None:
                self.regions.write_images(index)
            await self.infer[index](requests[index], timeout=REQUEST_TIMEOUT_S)

        async def first_answer() -> np.ndarray:
            if self.regions is not None:
                await send(0)
                return self.regions.read_answer(0)
            response = await self.infer[0](requests[0], timeout=REQUEST_TIMEOUT_S)
            position = [output.name for output in response.outputs].index(model.output_name)
            output = response.outputs[position]
            if response.raw_output_contents:
                data = np.frombuffer(response.raw_output_contents[position], dtype=NUMPY_TYPES[output.datatype])
            else:
                data = np.asarray(output.contents.fp32_contents, dtype=np.float32)
            return data.reshape(tuple(output.shape))

        return send, first_answer

    async def close(self) -> None:
        if self.regions is not None:
            await self.stubs[0].SystemSharedMemoryUnregister(self.pb.SystemSharedMemoryUnregisterRequest())
            self.regions.destroy()
        for channel in self.channels:
            await channel.close()


class HttpClients:
    """One aiohttp session (a kept-alive connection per client); the body is encoded once by tritonclient.http (with
    ``shared_memory``, once per client: its tensors are in a system shared memory region of its own)."""

    def __init__(self, url: str, clients: int, shared_memory: bool = False) -> None:
        import aiohttp

        self.url = url
        self.clients = clients
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        self.shared_memory = shared_memory
        self.regions: SharedMemoryRegions | None = None

    async def sender(
        self, model: Model, images: np.ndarray, answer: np.ndarray
    ) -> tuple[Callable[[int], Awaitable[None]], Callable]:
        import tritonclient.http as httpclient

        def encoded(index: int | None) -> tuple[bytes, dict[str, str]]:
            tensor = httpclient.InferInput(model.input_name, list(images.shape), model.input_datatype)
            wanted = httpclient.InferRequestedOutput(model.output_name, binary_data=index is None)
            if index is None:
                tensor.set_data_from_numpy(images, binary_data=True)
            else:
                tensor.set_shared_memory(self.regions.names[index], images.nbytes)
                wanted.set_shared_memory(self.regions.names[index], answer.nbytes, offset=images.nbytes)
            body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=[wanted])
            headers = {"Content-Type": "application/octet-stream"}
            if json_size is not None:
                headers["Inference-Header-Content-Length"] = str(json_size)
            return body, headers

        if self.shared_memory:
            self.regions = SharedMemoryRegions(self.clients, images, answer)
            for name in self.regions.names:
                register = json.dumps({"key": "/" + name, "offset": 0, "byte_size": self.regions.byte_size})
                async with self.session.post(
                    f"{self.url}/v2/systemsharedmemory/region/{name}/register", data=register
                ) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            bodies = [encoded(index) for index in range(self.clients)]
        else:
            bodies = [encoded(None)] * self.clients
        url = f"{self.url}/v2/models/{model.name}/infer"

        async def post(index: int) -> tuple[bytes, str | None]:
            if self.regions is not None:
                self.regions.write_images(index)
            body, headers = bodies[index]
            async with self.session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
                return payload, response.headers.get("Inference-Header-Content-Length")

        async def send(index: int) -> None:
            await post(index)

        async def first_answer() -> np.ndarray:
            payload, header_length = await post(0)
            if self.regions is not None:
                return self.regions.read_answer(0)
            result = httpclient.InferenceServerClient.parse_response_body(
                payload, header_length=int(header_length) if header_length else None
            )
            return result.as_numpy(model.output_name)

        return send, first_answer

    async def close(self) -> None:
        if self.regions is not None:
            async with self.session.post(f"{self.url}/v2/systemsharedmemory/unregister"):
                pass
            self.regions.destroy()
        await self.session.close()


async def measure_cells(server: Server, models: list[Model], cells: list[Cell], args, references) -> dict:
    """Every (model, cell) on one running server: a checked first answer, a warm-up, then the measured loop."""
    measured = {}
    for model in models:
        for cell in cells:
            clients_type = GrpcClients if server.transport == "grpc" else HttpClients
            url = server.grpc_url if server.transport == "grpc" else server.http_url
            clients = clients_type(url, cell.clients, shared_memory=server.kind.endswith("-shm"))
            try:
                images = model.images(cell.batch)
                expected = references[(model.short, cell.batch)]
                send, first_answer = await clients.sender(model, images, expected)
                answer = await first_answer()
                wrong = answer.shape != expected.shape or not np.allclose(answer, expected, atol=1e-4)
                if wrong and server.kind not in FLOORS:  # a floor answers ten zeros to everything, by design
                    raise RuntimeError(f"{model.short} {cell.label}: the answer differs from in-process ONNX Runtime")
                await closed_loop(send, cell.clients, args.warmup, args.max_requests)
                cpu_before = server.cpu_s()
                latencies, failures, wall = await closed_loop(send, cell.clients, args.seconds, args.max_requests)
                cpu_used = server.cpu_s() - cpu_before
            finally:
                await clients.close()
            p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if latencies else (float("nan"),) * 2
            measured[(model.short, cell.label)] = Measurement(
                images_per_s=len(latencies) * cell.batch / wall,
                requests=len(latencies),
                failures=failures,
                p50_ms=p50,
                p99_ms=p99,
                server_cpu_ms_per_request=1000 * cpu_used / len(latencies) if latencies else None,
            )
    return measured


def in_process_two_instances_images_per_s(model: Model, batch: int, seconds: float, max_runs: int) -> float:
    """Two one-thread sessions, each called back to back from its own thread: the ceiling for `buildsys serve`'s
    default of two execution instances on a CPU, which can pass the one-session figure on two cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(model.path), options, providers=PROVIDERS["cpu"]) for _ in range(2)]
    feeds = {model.input_name: model.images(batch)}
    for session in sessions:
        session.run(None, feeds)
    runs = [0, 0]
    started = time.perf_counter()

    def call(index: int) -> None:
        while runs[index] < max_runs // 2 and time.perf_counter() - started < seconds:
            sessions[index].run(None, feeds)  # ONNX Runtime releases the GIL while it runs
            runs[index] += 1

    threads = [threading.Thread(target=call, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(runs) * batch / (time.perf_counter() - started)


def in_process_images_per_s(
    model: Model, batch: int, seconds: float, max_runs: int, device: str, pause_s: float = 0.0
) -> float:
    """ONNX Runtime in this process on a fresh session, one thread calling run() back to back: the ceiling.

    With ``pause_s`` the thread sleeps that long between calls and only the calls are timed: what one call costs
    when calls come as a server's do, not back to back."""
    session = ort.InferenceSession(str(model.path), providers=PROVIDERS[device])
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise SystemExit(f"serve_bench: CUDA was asked for, ONNX Runtime runs on {session.get_providers()}")
    feeds = {model.input_name: model.images(batch)}
    session.run(None, feeds)
    runs, in_calls, started = 0, 0.0, time.perf_counter()
    while runs < max_runs and time.perf_counter() - started < seconds:
        if pause_s:
            time.sleep(pause_s)
        call_started = time.perf_counter()
        session.run(None, feeds)
        in_calls += time.perf_counter() - call_started
        runs += 1
    return runs * batch / (in_calls if pause_s else time.perf_counter() - started)


def median(values: list[float]) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def summarise(results: Results, servers: list[str], models: list[Model], cells: list[Cell]) -> list[dict]:
    """One row per (model, cell): the median images/s of each server, the ceiling and the ratios."""
    rows = []
    for model in models:
        for cell in cells:
            row: dict = {"model": model.short, "cell": cell.label, "batch": cell.batch, "clients": cell.clients}
            for kind in servers:
                if kind == "inprocess":
                    continue
                runs = results.cells.get((kind, model.short, cell.label), [])
                row[kind] = {
                    "images_per_s": median([run.images_per_s for run in runs]),
                    "p50_ms": median([run.p50_ms for run in runs]),
                    "p99_ms": median([run.p99_ms for run in runs]),
                    "server_cpu_ms_per_request": median([run.server_cpu_ms_per_request for run in runs]),
                    "failures": sum(run.failures for run in runs),
                    "runs": [run.__dict__ for run in runs],
                }
            ceiling = median(results.ceilings.get((model.short, cell.ceiling_batch), []))
            row["inprocess"] = {"batch": cell.ceiling_batch, "images_per_s": ceiling}
            two = median(results.two_instance_ceilings.get((model.short, cell.ceiling_batch), []))
            row["inprocess two instances"] = {"batch": cell.ceiling_batch, "images_per_s": two}
            peers = [row[kind]["images_per_s"] for kind in PEERS if kind in row and row[kind]["images_per_s"]]
            best_peer = max(peers) if peers else None
            for kind in ("buildsys-grpc", "buildsys-rest"):
                value = row.get(kind, {}).get("images_per_s")
                row[f"{kind} / best peer"] = value / best_peer if value and best_peer else None
                row[f"{kind} / inprocess"] = value / ceiling if value and ceiling else None
            rest, kserve_rest = (row.get(kind, {}).get("images_per_s") for kind in ("buildsys-rest", "kserve-rest"))
            row["buildsys-rest / kserve-rest"] = rest / kserve_rest if rest and kserve_rest else None
            rows.append(row)
    return rows


def number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def print_tables(rows: list[dict], results: Results, servers: list[str], runs: int) -> None:
    network = [kind for kind in servers if kind != "inprocess"]
    print(f"\nimages/s, median of {runs} run(s); ratios of buildsys to the best peer and to in-process ONNX Runtime")
    header = ["model", "batch×clients", *network, "in-process (batch)"]
    header += [f"{kind} ÷ best peer" for kind in ("buildsys-grpc", "buildsys-rest") if kind in network]
    header += [f"{kind} % of in-process" for kind in ("buildsys-grpc", "buildsys-rest") if kind in network]
    rest_pair = "buildsys-rest" in network and "kserve-rest" in network
    header += ["buildsys-rest ÷ kserve-rest"] if rest_pair else []
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---", "---"] + ["--:"] * (len(header) - 2)) + "|")
    for row in rows:
        cells = [row["model"], row["cell"].replace("x", " × ")]
        cells += [number(row[kind]["images_per_s"]) for kind in network]
        cells.append(f"{number(row['inprocess']['images_per_s'])} ({row['inprocess']['batch']})")
        for kind in ("buildsys-grpc", "buildsys-rest"):
            if kind in network:
                ratio = row[f"{kind} / best peer"]
                cells.append("—" if ratio is None else f"{ratio:.2f}×")
        for kind in ("buildsys-grpc", "buildsys-rest"):
            if kind in network:
                share = row[f"{kind} / inprocess"]
                cells.append("—" if share is None else f"{100 * share:.0f} %")
        if rest_pair:
            ratio = row["buildsys-rest / kserve-rest"]
            cells.append("—" if ratio is None else f"{ratio:.2f}×")
        print("| " + " | ".join(cells) + " |")
    if network:
        print("\nserver CPU ms per request / client-side p50 latency ms (failed requests in brackets when any)")
        print("| model | batch×clients | " + " | ".join(network) + " |")
        print("|---|---|" + "--:|" * len(network))
        for row in rows:
            cells = [row["model"], row["cell"].replace("x", " × ")]
            for kind in network:
                entry = row[kind]
                text = f"{number(entry['server_cpu_ms_per_request'], 2)} / {number(entry['p50_ms'], 2)}"
                cells.append(text + (f" [{entry['failures']}]" if entry["failures"] else ""))
            print("| " + " | ".join(cells) + " |")
        print("\ntime to ready with both models, s (median): " + ", ".join(
            f"{kind} {number(median(results.ready_s.get(kind, [])), 2)}" for kind in network if kind not in FLOORS
        ))  # fmt: skip
    if results.paced_ceilings:
        paced = ", ".join(f"{short} {number(median(values))}" for short, values in results.paced_ceilings.items())
        print(f"\nin-process batch 1, {1000 * PACED_PAUSE_S:g} ms between calls (calls alone timed), images/s: {paced}")
    if results.two_instance_ceilings:
        two = ", ".join(
            f"{short} batch {batch} {number(median(values))}"
            for (short, batch), values in sorted(results.two_instance_ceilings.items())
        )
        print(f"\nin-process, two one-thread sessions called from two threads, images/s: {two}")
    for kind, errors in results.errors.items():
        for error in errors:
            print(f"error: {kind}: {error}")


def run_matrix(args, models: list[Model], servers: list[str], help_text: str) -> Results:
    results = Results()
    references = {}
    for model in models:
        session = ort.InferenceSession(str(model.path), providers=PROVIDERS[args.device])
        for cell in args.cells:
            images = model.images(cell.batch)
            references[(model.short, cell.batch)] = session.run([model.output_name], {model.input_name: images})[0]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as folder:
        for round_index in range(args.runs):
            shift = round_index % len(servers)
            for kind in servers[shift:] + servers[:shift]:
                print(f"run {round_index + 1}/{args.runs}: {kind}", file=sys.stderr, flush=True)
                if kind == "inprocess":
                    for model in models:
                        for batch in sorted({cell.ceiling_batch for cell in args.cells}):
                            value = in_process_images_per_s(model, batch, args.seconds, args.max_requests, args.device)
                            results.ceilings.setdefault((model.short, batch), []).append(value)
                            if args.device == "cpu" and batch > 1:
                                two = in_process_two_instances_images_per_s(
                                    model, batch, args.seconds, args.max_requests
                                )
                                results.two_instance_ceilings.setdefault((model.short, batch), []).append(two)
                        if any(cell.batch == 1 and cell.clients == 1 for cell in args.cells):
                            paced = in_process_images_per_s(
                                model, 1, args.seconds, args.max_requests, args.device, PACED_PAUSE_S
                            )
                            results.paced_ceilings.setdefault(model.short, []).append(paced)
                    continue
                server = Server(kind, models, args.model_dir, args.device, Path(folder), help_text)
                try:
                    results.ready_s.setdefault(kind, []).append(server.wait_ready(models))
                    measured = asyncio.run(measure_cells(server, models, args.cells, args, references))
                    for (short, label), measurement in measured.items():
                        results.cells.setdefault((kind, short, label), []).append(measurement)
                except RuntimeError as error:
                    results.errors.setdefault(kind, []).append(str(error))
                    print(f"serve_bench: {kind}: {error}", file=sys.stderr)
                finally:
                    server.stop()
    return results


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--servers", type=parse_choices(SERVERS), default=list(DEFAULT_SERVERS))
    parser.add_argument("--cells", type=parse_cells, default=parse_cells("1x1,1x32,64x4"), help="BATCHxCLIENTS,...")
    parser.add_argument("--models", type=parse_choices(list(MODELS)), default=list(MODELS))
    parser.add_argument("--model-dir", type=Path, help="a repository from bench/prepare_models.py (default: build)")
    parser.add_argument("--device", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell before it")
    parser.add_argument("--runs", type=int, default=3, help="rounds, each with a fresh server of each kind")
    parser.add_argument("--max-requests", type=int, default=500_000, help="bound on the requests of one cell")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    built = None
    if args.model_dir is None:
        from prepare_models import prepare

        built = tempfile.TemporaryDirectory(prefix="serve-bench-models-")
        args.model_dir = Path(built.name) / "models"
        print("serve_bench: building the two models (bench/prepare_models.py) ...", file=sys.stderr, flush=True)
        prepare(args.model_dir)
    try:
        models = [load_model(args.model_dir, short) for short in args.models]
        help_text = serving_flags() if any(kind.startswith("buildsys") for kind in args.servers) else ""
        skipped = {kind: reason for kind in args.servers if (reason := unavailable(kind, help_text))}
        for kind, reason in skipped.items():
            print(f"serve_bench: skipping {kind}: {reason}", file=sys.stderr)
        servers = [kind for kind in args.servers if kind not in skipped]
        print(
            f"serve_bench: {', '.join(servers)} on {', '.join(model.name for model in models)}; cells "
            f"{', '.join(cell.label for cell in args.cells)}; {args.seconds:g} s per cell, {args.runs} run(s); "
            f"device {args.device}; {os.cpu_count()} CPUs; ONNX Runtime {ort.__version__}",
            flush=True,
        )
        results = run_matrix(args, models, servers, help_text)
        rows = summarise(results, servers, models, args.cells)
        print_tables(rows, results, servers, args.runs)
        if args.json:
            report = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "python": platform.python_version(),
                    "onnxruntime": ort.__version__,
                },
                "settings": {
                    **{key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
                    "cells": [cell.label for cell in args.cells],
                },
                "skipped": skipped,
                "errors": results.errors,
                "ready_s": results.ready_s,
                "rows": rows,
            }
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if built is not None:
            built.cleanup()
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
