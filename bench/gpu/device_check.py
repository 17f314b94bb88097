"""The GPU bench's checks and measurements, in one process that run_on_device.sh starts on the CUDA machine.

In order, each step recorded (passed, failed with one line, or skipped) and bounded in time, so one failure still
leaves the others' figures:

1. environment: the onnxruntime that is imported (the carried CUDA 13 build), its providers, the GPU.
2. cuda_active: an ONNX Runtime session on each model has CUDAExecutionProvider ACTIVE (``get_providers()``,
   not merely available), and its outputs match the CPU provider's within 1e-4.
2b. cuda_config_options: a copy of the Fashion-MNIST model whose config.pbtxt sets Triton's onnxruntime backend
   CUDA parameters (``cudnn_conv_algo_search``, ``gpu_mem_limit``) loads through the serving repository with
   ``--device cuda``, and its session's CUDA provider options read back as the backend maps them.
3. cuda_hidden_fails_loudly: with CUDA hidden (``CUDA_VISIBLE_DEVICES=""``), ``python -m serving --device cuda``
   refuses (exits non-zero, or serves no model) with an error naming CUDA; it must never serve on the CPU.
4. server: ``python -m serving --device cuda`` reports the CUDA provider for each model; batch-1 latency (p50,
   p99) from one client; 256-image CIFAR requests from 8 clients (images/s), for the issue's goals.
5. inprocess: images/s of in-process ONNX Runtime at batch 1, 32, 64 and 256: plain ``run`` (host arrays in and
   out), IO binding (one device input buffer refilled per call, the output bound to a device buffer and copied
   back), device-resident (no copies: the ceiling), and IO binding with CUDA graphs (parity checked).
6. serve_bench: bench/serve_bench.py's matrix (buildsys gRPC, REST, in-process) on CUDA, its JSON kept.
7. predict: ``python -m buildsys predict`` over a generated image folder, with the provider its session got.

Writes ``gpu-results.json`` and ``gpu-results.txt`` (the goals and the main figures) into ``--out``; exits 1 when
any check failed. ``--cpu-dry-run`` runs the same steps here on the CPU onnxruntime with short timings: the CUDA
assertions are skipped, but the refusal in step 3 is still required.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
import synthetic  # noqa: E402

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
MODELS = {"fashion_mnist_mlp": "fashion", "cifar10_cnn": "cifar"}
BATCHES = (1, 32, 64, 256)
PARITY = 1e-4
# The goals (issue 13), computed from this run's own figures.
GOAL_SERVER_SHARE = 0.5  # 256-image CIFAR requests through the server vs in-process ONNX Runtime at batch 256
GOAL_P50_MS = 1.0  # batch-1 latency through the server
SERVE_BENCH_CELLS = "1x1,1x32,64x4,256x8"
INPROCESS_VARIANTS = ("run", "iobinding", "device_resident", "cuda_graph")


class CheckFailed(Exception):
    """A check's result is wrong; the message is the one line recorded for it."""


class Skipped(Exception):
    """A step that does not apply to this run (for example a CUDA assertion in the CPU dry run)."""


class Run:
    """The results so far, the time left, and how each step is recorded."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.cpu_dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.deadline = time.monotonic() + args.budget_s
        self.results: dict = {"mode": "cpu-dry-run" if self.dry else "cuda", "steps": {}, "goals": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, action: Callable[..., None], *args: object) -> dict:
        """Runs ``action(self, record, *args)`` as the step ``name`` and returns its record; a step that would
        start with under 10 s of the budget left is skipped, so the results are still written."""
        record: dict = {"status": "passed"}
        self.results["steps"][name] = record
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            if self.left() < 10:
                raise Skipped("out of time (--budget-s)")
            action(self, record, *args)
        except Skipped as reason:
            record.update(status="skipped", reason=str(reason))
        except Exception as error:  # one step's failure must not cost the others' figures
            record.update(status="failed", error=f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
        record["seconds"] = round(time.monotonic() - started, 2)
        detail = record.get("error") or record.get("reason")
        print(f"   {record['status']}{': ' + detail if detail else ''} ({record['seconds']} s)", flush=True)
        return record


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Model:
    """A served model's ONNX file and signature, read from its manifest (the output tree's contract)."""

    def __init__(self, repository: Path, name: str) -> None:
        folder = repository / name
        version = max(int(path.name) for path in folder.iterdir() if path.name.isdigit())
        manifest = json.loads((folder / str(version) / "manifest.json").read_text())
        (tensor,) = manifest["inputs"]
        self.name, self.dataset, self.version = name, MODELS[name], version
        self.path = folder / str(version) / manifest["files"]["onnx"]
        self.input_name, self.datatype = tensor["name"], tensor["datatype"]
        self.output_name = manifest["outputs"][0]["name"]
        self.classes = len(manifest["class_names"])

    def images(self, count: int, seed: int = 5) -> np.ndarray:
        return synthetic.images(self.dataset, count, seed)[0]


def session(model: Model, providers: list) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model.path), sess_options=options, providers=providers)


def rate(call, images_per_call: int, seconds: float) -> float:
    """Images per second of ``call`` repeated for ``seconds`` after three warm-up calls."""
    for _ in range(3):
        call()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        calls += 1
    return round(calls * images_per_call / elapsed, 1)


# ---- steps -----------------------------------------------------------------------------------------------------


def environment(run: Run, record: dict) -> None:
    record.update(
        python=platform.python_version(),
        onnxruntime=ort.__version__,
        onnxruntime_file=ort.__file__,
        available_providers=ort.get_available_providers(),
        ld_library_path=os.environ.get("LD_LIBRARY_PATH", ""),
    )
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        record["gpu"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    if run.dry:
        return
    if CUDA not in ort.get_available_providers():
        raise CheckFailed(f"onnxruntime {ort.__version__} at {ort.__file__} offers no CUDA provider")


def cuda_active(run: Run, record: dict, models: list[Model]) -> None:
    if run.dry:
        raise Skipped("--cpu-dry-run: no CUDA here")
    for model in models:
        cuda = session(model, [CUDA, CPU])
        active = cuda.get_providers()
        if active[0] != CUDA:
            raise CheckFailed(f"{model.name}: CUDA requested, active providers are {active}")
        images = model.images(256)
        expected = session(model, [CPU]).run([model.output_name], {model.input_name: images})[0]
        actual = cuda.run([model.output_name], {model.input_name: images})[0]
        difference = float(np.abs(actual - expected).max())
        record[model.name] = {"active_providers": active, "max_abs_difference_vs_cpu": difference}
        if difference > PARITY:
            raise CheckFailed(f"{model.name}: CUDA differs from CPU by {difference:.2e} > {PARITY}")


def cuda_config_options(run: Run, record: dict, repository: Path) -> None:
    from serving.repository import ModelRepository
    from serving.runtime import RuntimeOptions

    wanted = {"cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "2147483648"}
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(repository / "fashion_mnist_mlp", Path(folder) / "fashion_mnist_mlp")
        with (Path(folder) / "fashion_mnist_mlp" / "config.pbtxt").open("a") as config:
            config.write('parameters { key: "cudnn_conv_algo_search" value { string_value: "1" } }\n')
            config.write('parameters { key: "gpu_mem_limit" value { string_value: "2147483648" } }\n')
        served_models = ModelRepository([Path(folder)], RuntimeOptions(device=run.device))
        served_models.load_all()
        try:
            model = served_models.get("fashion_mnist_mlp").model
            options = model.session.get_provider_options().get(CUDA, {})
        finally:
            served_models.take_all()
    record.update(active_providers=model.providers, cuda_options={key: options.get(key) for key in wanted})
    if run.dry:
        raise Skipped("--cpu-dry-run: loaded on the CPU; the CUDA options apply only where CUDA runs")
    if model.providers[0] != CUDA or any(options.get(key) != value for key, value in wanted.items()):
        raise CheckFailed(f"CUDA provider options {record['cuda_options']} (active {model.providers}), wanted {wanted}")


def server_command(repository: Path, device: str, port: int) -> list[str]:
    """``python -m serving`` on loopback, gRPC only, no hot reload: the one place this script spells its flags."""
    return [sys.executable, "-m", "serving", "--repository", str(repository), "--device", device,
            "--grpc-port", str(port), "--no-http", "--poll-interval", "0", "--log-level", "warning"]  # fmt: skip


def cuda_hidden_fails_loudly(run: Run, record: dict, repository: Path) -> None:
    hidden = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    probe = (
        "import onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1], "
        "providers=['CUDAExecutionProvider', 'CPUExecutionProvider']); print(s.get_providers())"
    )
    path = Model(repository, "fashion_mnist_mlp").path
    session_probe = subprocess.run([sys.executable, "-c", probe, str(path)], env=hidden, capture_output=True,
                                   text=True, timeout=60)  # fmt: skip
    record["session_with_cuda_hidden"] = (session_probe.stdout or session_probe.stderr).strip().splitlines()[-1:]
    if CUDA in session_probe.stdout:
        raise CheckFailed(f"CUDA hidden, yet ONNX Runtime reports it active: {session_probe.stdout.strip()}")
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(server_command(repository, "cuda", port), cwd=PROJECT_ROOT, env=hidden,
                                  stdout=log, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        # Either it exits, or it stays up having logged why it serves nothing: wait for one or the other, not
        # a fixed time (device minutes are scarce).
        deadline, code = time.monotonic() + 45, None
        while (code := server.poll()) is None and time.monotonic() < deadline:
            log.seek(0)
            if "cuda" in log.read().lower() and server_live(port):
                break
            time.sleep(0.5)
        ready = None
        if code is None:
            ready = {model: model_ready(port, model) for model in MODELS}
            stop(server)
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    cuda_lines = [line for line in lines if "cuda" in line.lower()]
    record.update(exit_code=code, models_ready=ready, cuda_lines=cuda_lines[:3])
    if code == 0 or (code is None and any(ready.values())):
        raise CheckFailed(f"--device cuda with CUDA hidden was not refused (exit {code}, ready {ready})")
    if not cuda_lines:
        raise CheckFailed(f"--device cuda with CUDA hidden was refused without naming CUDA: {lines[-1:]}")


def grpc_stubs():
    import grpc

    from serving.protocol import grpc_service_pb2 as pb
    from serving.protocol import grpc_service_pb2_grpc as services

    return grpc, pb, services


def server_live(port: int) -> bool:
    grpc, pb, services = grpc_stubs()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return services.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=2).live
        except grpc.RpcError:
            return False


def model_ready(port: int, model: str) -> bool:
    grpc, pb, services = grpc_stubs()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services.GRPCInferenceServiceStub(channel)
        try:
            return stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=5).ready
        except grpc.RpcError:
            return False


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(server: subprocess.Popen, port: int, timeout_s: float = 90) -> float:
    grpc, pb, services = grpc_stubs()
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services.GRPCInferenceServiceStub(channel)
        while time.monotonic() - started < timeout_s:
            if server.poll() is not None:
                raise CheckFailed(f"the server exited with {server.returncode} before it was ready")
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                    return round(time.monotonic() - started, 2)
            except grpc.RpcError:
                time.sleep(0.1)
    raise CheckFailed(f"the server was not ready within {timeout_s:.0f} s")


def infer_request(model: Model, images: np.ndarray):
    _, pb, _ = grpc_stubs()
    request = pb.ModelInferRequest(model_name=model.name)
    request.inputs.add(name=model.input_name, datatype=model.datatype, shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def closed_loop(port: int, request, clients: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (s) of ``clients`` threads sending ``request`` back to back for ``seconds``, one channel each,
    and the wall time from the start to the last answer (longer than ``seconds`` when requests are slow)."""
    grpc, _, services = grpc_stubs()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients)
    opened, finished = [0.0] * clients, [0.0] * clients
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

    def client(index: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            infer = services.GRPCInferenceServiceStub(channel).ModelInfer
            for _ in range(3):  # connect and warm up outside the measurement
                infer(request, timeout=60)
            barrier.wait()
            opened[index] = time.perf_counter()
            end = opened[index] + seconds
            while (now := time.perf_counter()) < end:
                try:
                    infer(request, timeout=30)
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    return
                latencies[index].append(time.perf_counter() - now)
            finished[index] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise CheckFailed(f"ModelInfer failed: {errors[0]}")
    return [value for values in latencies for value in values], max(finished) - min(opened)


def server(run: Run, record: dict, repository: Path, models: list[Model]) -> None:
    grpc, pb, services = grpc_stubs()
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(server_command(repository, run.device, port), cwd=PROJECT_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            record["ready_s"] = wait_ready(process, port)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = services.GRPCInferenceServiceStub(channel)
                for model in models:
                    config = stub.ModelConfig(pb.ModelConfigRequest(name=model.name), timeout=10).config
                    providers = config.parameters["execution_providers"].string_value
                    record[model.name] = {"execution_providers": providers}
                    if not run.dry and CUDA not in providers:
                        raise CheckFailed(f"{model.name}: the server's execution providers are {providers!r}")
            for model in models:
                latencies, _ = closed_loop(port, infer_request(model, model.images(1)), 1, run.args.seconds)
                record[model.name]["batch1_one_client"] = {
                    "requests": len(latencies),
                    "p50_ms": round(statistics.median(latencies) * 1e3, 3),
                    "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
                }
            cifar = next(model for model in models if model.dataset == "cifar")
            latencies, elapsed = closed_loop(port, infer_request(cifar, cifar.images(256)), 8, run.args.seconds)
            record[cifar.name]["batch256_eight_clients"] = {
                "requests": len(latencies),
                "images_per_second": round(len(latencies) * 256 / elapsed, 1),
                "p50_ms": round(statistics.median(latencies) * 1e3, 3),
            }
        finally:
            stop(process)
            log.seek(0)
            record["log_tail"] = log.read().splitlines()[-5:]


def io_bound(model: Model, sess: ort.InferenceSession, images: np.ndarray, device: str, copy: bool):
    """A call running ``sess`` on buffers allocated once on ``device``: with ``copy`` the input is refilled from
    the host and the output read back each call (what a server does per batch), without it nothing moves."""
    batch = images.shape[0]
    source = ort.OrtValue.ortvalue_from_numpy(images, device, 0)
    target = ort.OrtValue.ortvalue_from_shape_and_type([batch, model.classes], np.float32, device, 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(model.input_name, source)
    binding.bind_ortvalue_output(model.output_name, target)

    def call() -> np.ndarray | None:
        if copy:
            source.update_inplace(images)
        sess.run_with_iobinding(binding)
        return target.numpy() if copy else None

    return call


def inprocess(run: Run, record: dict, models: list[Model]) -> None:
    seconds = run.args.seconds / 2
    providers = [CPU] if run.dry else [CUDA, CPU]
    for model in models:
        plain = session(model, providers)
        cpu = session(model, [CPU])
        figures: dict = {}
        for batch in BATCHES:
            images = model.images(batch)
            feeds = {model.input_name: images}
            row = figures[str(batch)] = {}
            row["run"] = rate(lambda s=plain, f=feeds, o=model.output_name: s.run([o], f), batch, seconds)
            row["iobinding"] = rate(io_bound(model, plain, images, run.device, copy=True), batch, seconds)
            if run.dry:
                continue
            row["device_resident"] = rate(io_bound(model, plain, images, run.device, copy=False), batch, seconds)
            graphed = session(model, [(CUDA, {"enable_cuda_graph": "1"}), CPU])
            call = io_bound(model, graphed, images, run.device, copy=True)
            try:
                row["cuda_graph"] = rate(call, batch, seconds)
                expected = cpu.run([model.output_name], feeds)[0]
                row["cuda_graph_max_abs_difference_vs_cpu"] = float(np.abs(call() - expected).max())
            except Exception as error:  # a graph that cannot be captured is a figure we lack, not a failure
                row["cuda_graph"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        record[model.name] = figures
        if run.left() < 120:
            raise CheckFailed(f"stopped after {model.name} to leave time for the other steps")


def serve_bench(run: Run, record: dict, repository: Path, out: Path) -> None:
    script = PROJECT_ROOT / "bench" / "serve_bench.py"
    destination = out / "serve.json"
    command = [sys.executable, str(script), "--servers", "buildsys-grpc,buildsys-rest,inprocess",
               "--cells", SERVE_BENCH_CELLS, "--models", "fashion,cifar", "--model-dir", str(repository),
               "--device", run.device, "--seconds", str(run.args.seconds), "--runs", "1",
               "--json", str(destination)]  # fmt: skip
    record["command"] = " ".join(command[1:])
    timeout = max(30.0, min(360.0, run.left() - 90))
    try:
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        raise CheckFailed(f"serve_bench.py ran past {timeout:.0f} s") from expired
    record["exit_code"] = result.returncode
    record["output_tail"] = (result.stdout + result.stderr).splitlines()[-40:]
    if destination.exists():
        record["json"] = json.loads(destination.read_text())
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CheckFailed(f"serve_bench.py exited with {result.returncode}: {last}")
    # Every server asked for must have run: a skipped one (its client missing, say) is a hole in the figures.
    for kind in ("skipped", "errors"):
        if record.get("json", {}).get(kind):
            server, reason = next(iter(record["json"][kind].items()))
            raise CheckFailed(f"serve_bench.py {kind} {server}: {reason}")


def predict(run: Run, record: dict, workspace: Path, models: list[Model]) -> None:
    from buildsys.batch.predict import Model as PredictModel
    from buildsys.store import OutputTree
    from buildsys.workspace import Workspace

    count = 1024 if run.dry else 8192
    with tempfile.TemporaryDirectory(prefix="gpu-bench-predict-") as folder:
        for model in models:
            images = Path(folder) / model.dataset
            synthetic.write_folder(model.dataset, images, count)
            label = f"//model_defs:{model.name}"
            # The session predict's own Model class makes: which provider did it get?
            (target,) = Workspace(workspace).resolve([label])
            active = PredictModel(OutputTree(workspace / "build-out"), target, None).session.get_providers()
            command = [sys.executable, "-m", "buildsys", "predict", label, "--workspace", str(workspace),
                       "--input", str(images), "--output", str(Path(folder) / f"{model.name}.csv"),
                       "--batch-size", "256", "--json"]  # fmt: skip
            result = subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=240)
            if result.returncode != 0:
                raise CheckFailed(f"predict {model.name} exited {result.returncode}: {result.stderr.strip()[-300:]}")
            record[model.name] = {"active_providers": active, "images": count, **json.loads(result.stdout)}
            if not run.dry and active[0] != CUDA:
                raise CheckFailed(f"predict's session for {model.name} runs on {active}, not CUDA")
    if "tensorflow" in sys.modules:
        raise CheckFailed("importing buildsys.batch.predict imported TensorFlow")


def _number(value: object) -> bool:
    return isinstance(value, int | float)


def goals(run: Run) -> None:
    if run.dry:
        return
    steps, goal = run.results["steps"], run.results["goals"]
    served = steps.get("server", {})
    for name in MODELS:
        p50 = served.get(name, {}).get("batch1_one_client", {}).get("p50_ms")
        if p50 is not None:
            goal[f"{name} batch-1 p50 through the server < {GOAL_P50_MS} ms"] = {
                "value_ms": p50,
                "met": p50 < GOAL_P50_MS,
            }
    for row in steps.get("serve_bench", {}).get("json", {}).get("rows", []):
        if (row.get("model"), row.get("cell")) == ("cifar", "256x8"):
            for server in ("buildsys-grpc", "buildsys-rest"):
                share = row.get(f"{server} / inprocess")
                if share is not None:
                    goal[f"serve_bench CIFAR 256x8 {server} >= {GOAL_SERVER_SHARE:.0%} of in-process batch 256"] = {
                        "server_images_per_second": row[server]["images_per_s"],
                        "inprocess_images_per_second": row["inprocess"]["images_per_s"],
                        "share": round(share, 3), "met": share >= GOAL_SERVER_SHARE,
                    }  # fmt: skip
    through = served.get("cifar10_cnn", {}).get("batch256_eight_clients", {}).get("images_per_second")
    ceiling = steps.get("inprocess", {}).get("cifar10_cnn", {}).get("256", {}).get("run")
    if through and ceiling:
        share = through / ceiling
        goal[f"CIFAR 256x8 through the server >= {GOAL_SERVER_SHARE:.0%} of in-process batch 256"] = {
            "server_images_per_second": through, "inprocess_images_per_second": ceiling,
            "share": round(share, 3), "met": share >= GOAL_SERVER_SHARE,
        }  # fmt: skip


def summary_text(results: dict) -> str:
    lines = [f"GPU bench ({results['mode']}), {results['finished']}; {results.get('machine', '')}".rstrip("; ")]
    for name, record in results["steps"].items():
        detail = record.get("error") or record.get("reason") or ""
        lines.append(f"  {name:<26} {record['status']:<8} {record.get('seconds', 0):>7.1f} s  {detail}".rstrip())
    lines.append("goals (issue 13):")
    for name, value in results["goals"].items():
        lines.append(f"  {'MET' if value['met'] else 'not met':<8} {name}: {json.dumps(value)}")
    if not results["goals"]:
        lines.append(
            "  not evaluated" + (" (CPU dry run: the goals are for CUDA)" if results["mode"] != "cuda" else "")
        )
    for name, figures in results["steps"].get("inprocess", {}).items():
        if not isinstance(figures, dict) or "1" not in figures:
            continue
        rows = []
        for batch, row in figures.items():
            rates = [
                f"{key} {value:,.0f}" for key, value in row.items() if key in INPROCESS_VARIANTS and _number(value)
            ]
            rows.append(f"{batch}: {', '.join(rates)}")
        lines.append(f"in-process {name} images/s by batch: {'; '.join(rows)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="the bundle's workspace (prepare.py)")
    parser.add_argument("--out", type=Path, required=True, help="where the results files go")
    parser.add_argument("--cpu-dry-run", action="store_true", help="CPU onnxruntime, CUDA assertions skipped")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run; later steps are skipped")
    args = parser.parse_args()
    run = Run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    repository = args.workspace / "build-out" / "models"
    models = [Model(repository, name) for name in MODELS]

    run.results["machine"] = run.step("environment", environment).get("gpu", platform.node())
    run.step("cuda_active", cuda_active, models)
    run.step("cuda_config_options", cuda_config_options, repository)
    run.step("cuda_hidden_fails_loudly", cuda_hidden_fails_loudly, repository)
    run.step("server", server, repository, models)
    run.step("inprocess", inprocess, models)
    run.step("serve_bench", serve_bench, repository, args.out)
    run.step("predict", predict, args.workspace, models)

    goals(run)
    run.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (args.out / "gpu-results.json").write_text(json.dumps(run.results, indent=2) + "\n")
    text = summary_text(run.results)
    (args.out / "gpu-results.txt").write_text(text)
    print(text, end="")
    failed = [name for name, record in run.results["steps"].items() if record["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
