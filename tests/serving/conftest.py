"""Fixtures for the serving tests: a tiny real ONNX classifier published into a temporary output tree, and a
real server subprocess that is forbidden to import TensorFlow, keras or buildsys.

The model is built with the onnx helper API (no TensorFlow): image [batch, 8, 8] uint8 -> Cast -> Reshape ->
MatMul + Add -> Softmax -> probabilities [batch, 10] FP32, with fixed random weights per seed. Versions are
published the way the builder does it: a complete staging folder renamed into place.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from serving.protocol import grpc_service_pb2 as pb
from serving.protocol import grpc_service_pb2_grpc
from tests.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FORBIDDEN_MODULES = ("tensorflow", "keras", "buildsys")

CONFIG_TEMPLATE = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "image"
    data_type: TYPE_UINT8
    dims: [ 8, 8 ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {delay_us}
  default_queue_policy {{
    max_queue_size: {queue_size}
  }}
}}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


# The slow variant: a chain of MatMul + Tanh on 2,048 features that keeps the model busy for the tests' checks
# (0.8 s for HOLDING_BATCH images on a 2-core Xeon; 24 steps, 0.3 s, let a request finish before a test that sent
# others behind it could look), so that tests can hold requests in the queue behind a running execution.
SLOW_STEPS, SLOW_WIDTH = 64, 2048
# A request this large keeps the slow model busy for about a second on an idle 2-core machine (longer when loaded).
HOLDING_BATCH = 512


def classifier_onnx(seed: int, slow: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, size=(64, 10)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(10,)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["image_f", "flat_shape"], ["flat"]),
    ]
    initializers = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "flat_shape")]
    features = "flat"
    if slow:
        wide = rng.normal(0, 0.05, size=(64, SLOW_WIDTH)).astype(np.float32)
        square = rng.normal(0, 1 / np.sqrt(SLOW_WIDTH), size=(SLOW_WIDTH, SLOW_WIDTH)).astype(np.float32)
        weights = rng.normal(0, 0.1, size=(SLOW_WIDTH, 10)).astype(np.float32)
        initializers += [numpy_helper.from_array(wide, "wide"), numpy_helper.from_array(square, "square")]
        nodes.append(helper.make_node("MatMul", ["flat", "wide"], ["hidden_0"]))
        for step in range(SLOW_STEPS):
            nodes.append(helper.make_node("MatMul", [f"hidden_{step}", "square"], [f"mixed_{step}"]))
            nodes.append(helper.make_node("Tanh", [f"mixed_{step}"], [f"hidden_{step + 1}"]))
        features = f"hidden_{SLOW_STEPS}"
    nodes += [
        helper.make_node("MatMul", [features, "weights"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            *initializers,
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def write_config(
    model_dir: Path,
    name: str,
    max_batch_size: int = 1024,
    delay_us: int = 500,
    queue_size: int = 256,
    instances: int | None = None,
):
    """Writes config.pbtxt and labels.txt atomically (temporary file + rename), as the builder does; without
    ``instances`` it names no instance_group, so the server's default applies."""
    config = CONFIG_TEMPLATE.format(name=name, max_batch_size=max_batch_size, delay_us=delay_us, queue_size=queue_size)
    if instances is not None:
        config += f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    model_dir.mkdir(parents=True, exist_ok=True)
    for file_name, text in (("config.pbtxt", config), ("labels.txt", "\n".join(CLASS_NAMES) + "\n")):
        temporary = model_dir / f".{file_name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, model_dir / file_name)


def append_to_config(model_dir: Path, text: str) -> None:
    """Appends ``text`` (fields such as ``model_warmup [...]`` or ``response_cache {...}``) to config.pbtxt."""
    path = model_dir / "config.pbtxt"
    path.write_text(path.read_text() + text)


def replace_dynamic_batching(config_text: str, block: str = "") -> str:
    """A config written by ``write_config`` with its ``dynamic_batching`` block replaced by ``block`` (by default
    removed: a model that Triton's default scheduler runs one request at a time)."""
    start, end = config_text.index("dynamic_batching {"), config_text.index("version_policy")
    return config_text[:start] + block + config_text[end:]


def publish_version(
    repo: Path, name: str, version: int, seed: int, *, broken: bool = False, slow: bool = False, **config
) -> Path:
    """Publishes ``<repo>/<name>/<version>`` by renaming a complete staging folder, as the builder does.

    Returns the version folder. With ``broken=True`` the model file is not ONNX, so the version is refused;
    with ``slow=True`` each model call takes a few hundred milliseconds.
    """
    model_dir = repo / name
    if not (model_dir / "config.pbtxt").exists() or config:
        write_config(model_dir, name, **config)
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    staging.mkdir()
    (staging / "model.savedmodel").mkdir()
    if broken:
        (staging / "model.onnx").write_bytes(b"this is not an onnx file")
    else:
        onnx.save(classifier_onnx(seed, slow=slow), staging / "model.onnx")
    manifest = {
        "format": 1,
        "name": name,
        "label": f"//model_defs:{name}",
        "version": version,
        "content_hash": f"{seed:064x}",
        "created": "2026-11-22T12:34:56Z",
        "platform": "onnxruntime_onnx",
        "files": {"onnx": "model.onnx", "savedmodel": "model.savedmodel"},
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "class_names": CLASS_NAMES,
        "image": {"height": 8, "width": 8, "channels": 1, "color_mode": "grayscale"},
        "seed": seed,
        "a_key_from_the_future": {"readers": "must ignore it"},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    final = model_dir / str(version)
    os.rename(staging, final)
    return final


# A model laid out like the Triton quickstart's densenet_onnx: no batching (max_batch_size 0), and config.pbtxt
# reshapes its input [3, 4, 4] to the ONNX file's [1, 3, 4, 4] and its output [1, 5, 1, 1] to [5].
UNBATCHED_CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ] reshape { shape: [ 1, 3, 4, 4 ] } }
]
output [
  { name: "fc6_1" data_type: TYPE_FP32 dims: [ 5 ] reshape { shape: [ 1, 5, 1, 1 ] } label_filename: "labels.txt" }
]
"""
UNBATCHED_CLASSES = ["tench", "goldfish", "shark", "tiger shark", "hammerhead"]


def publish_unbatched(repo: Path, name: str = "dense_onnx", seed: int = 0) -> Path:
    """Writes a Triton model folder (no manifest.json) whose model does not batch; returns its version folder."""
    weights = np.random.default_rng(seed).normal(0, 0.3, size=(48, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["data_0"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
            helper.make_node("Reshape", ["logits", "out_shape"], ["fc6_1"]),
        ],
        "unbatched",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 5, 1, 1])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([1, 5, 1, 1], dtype=np.int64), "out_shape"),
        ],
    )
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), version_dir / "model.onnx")
    (repo / name / "config.pbtxt").write_text(UNBATCHED_CONFIG.replace("{name}", name))
    (repo / name / "labels.txt").write_text("\n".join(UNBATCHED_CLASSES) + "\n")
    return version_dir


def unbatched_reference(version_dir: Path, sample: np.ndarray) -> np.ndarray:
    """What the server must answer for one [3, 4, 4] sample: the ONNX file run in process, shaped as [5]."""
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["fc6_1"], {"data_0": sample.reshape(1, 3, 4, 4)})[0].reshape(5)


# A model whose second input is optional (Triton's ``optional: true``): an initializer of the graph that a request
# may override, and that it leaves at its default, ones, when it does not send it.
OPTIONAL_CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "bias" data_type: TYPE_FP32 dims: [ 3 ] optional: true }
]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def publish_optional(repo: Path, name: str = "biased") -> Path:
    """Writes a Triton model folder computing ``y = x + bias``, ``bias`` optional (default ones); returns its
    version folder."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "biased",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.ones(3, dtype=np.float32), "bias")],
    )
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), version_dir / "model.onnx")
    (repo / name / "config.pbtxt").write_text(OPTIONAL_CONFIG.replace("{name}", name))
    return version_dir


# A model of strings, as scikit-learn's classifiers with text labels come out of skl2onnx: scores -> ArgMax -> the
# class's name (TYPE_STRING out), and a lookup of words (TYPE_STRING in) -> their ids, -1 for an unknown word.
LABELER_CLASSES = ["cat", "dog", "bird"]
LABELER_WORDS = {"cat": 1, "dog": 2, "naïve": 3}
LABELER_CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "word" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] }
]
output [
  { name: "id" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "label" data_type: TYPE_STRING dims: [ 1 ] }
]
dynamic_batching { }
"""


def publish_labeler(repo: Path, name: str = "labeler", config: bool = True) -> Path:
    """Writes a Triton model folder whose model takes and returns strings; without ``config`` the server completes
    its config from the ONNX file. Returns its version folder."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                ["word"],
                ["id"],
                domain="ai.onnx.ml",
                keys_strings=list(LABELER_WORDS),
                values_int64s=list(LABELER_WORDS.values()),
                default_int64=-1,
            ),
            helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1),
            helper.make_node(
                "LabelEncoder",
                ["best"],
                ["label"],
                domain="ai.onnx.ml",
                keys_int64s=list(range(len(LABELER_CLASSES))),
                values_strings=LABELER_CLASSES,
                default_string="?",
            ),
        ],
        "labeler",
        [
            helper.make_tensor_value_info("word", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("id", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    onnx.checker.check_model(model)
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")
    if config:
        (repo / name / "config.pbtxt").write_text(LABELER_CONFIG.replace("{name}", name))
    return version_dir


ARGMAX_CONFIG = """\
name: "argmax"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "scores" data_type: TYPE_FP32 dims: [ 10 ] } ]
output [ { name: "best" data_type: TYPE_INT64 dims: [ 1 ] } ]
dynamic_batching { }
"""
# Triton's ensemble of the digits classifier and argmax: an image in, its probabilities and its best class out.
ENSEMBLE_CONFIG = """\
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 8, 8 ] } ]
output [
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" },
  { name: "CLASS" data_type: TYPE_INT64 dims: [ 1 ] }
]
ensemble_scheduling { step [
  { model_name: "digits" model_version: -1
    input_map { key: "image" value: "IMAGE" } output_map { key: "probabilities" value: "PROBABILITIES" } },
  { model_name: "argmax" model_version: -1
    input_map { key: "scores" value: "PROBABILITIES" } output_map { key: "best" value: "CLASS" } }
] }
"""


def save_step_model(version_dir: Path, nodes: list, scores: list, datatype: int, best: list) -> None:
    """A step model's ONNX file: ``nodes`` from the FP32 input ``scores`` to the output ``best`` of ``datatype``,
    with those shapes (a name for a variable dimension)."""
    graph = helper.make_graph(
        nodes,
        "step",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, scores)],
        [helper.make_tensor_value_info("best", datatype, best)],
    )
    version_dir.mkdir(exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), version_dir / "model.onnx")


def publish_ensemble(repo: Path, config: str = ENSEMBLE_CONFIG) -> Path:
    """The digits classifier, an argmax model and the ensemble ``pipeline`` of both (its version folder empty, as
    Triton's are); returns the ensemble's version folder."""
    publish_version(repo, "digits", 1, seed=1)
    (repo / "argmax").mkdir(parents=True)
    (repo / "argmax" / "config.pbtxt").write_text(ARGMAX_CONFIG)
    argmax = [helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1)]
    save_step_model(repo / "argmax" / "1", argmax, ["batch", 10], TensorProto.INT64, ["batch", 1])
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(config)
    (repo / "pipeline" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return repo / "pipeline" / "1"


def stream_answers(
    url: str, sends: list[tuple[str, np.ndarray, str]], headers: dict | None = None, **client_options
) -> list[tuple]:
    """Sends (model, images, request id) on one tritonclient ModelStreamInfer stream; returns the (result, error)
    pairs its callback got, in order."""
    answers: list[tuple] = []
    with grpcclient.InferenceServerClient(url, **client_options) as client:
        client.start_stream(callback=lambda result, error: answers.append((result, error)), headers=headers)
        for model, batch, request_id in sends:
            tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            try:
                client.async_stream_infer(model, [tensor], request_id=request_id)
            except InferenceServerException:
                break  # the server ended the stream already (a refused token): the callback has its error
        client.stop_stream()  # closes the requests and waits for every answer
    return answers


@contextlib.contextmanager
def shared_memory_object(byte_size: int) -> Iterator[tuple[str, shm.SharedMemoryRegion]]:
    """A system shared memory object of ``byte_size`` bytes made as clients make them, with tritonclient's helper:
    (its key, its handle); destroyed on exit."""
    key = f"/buildsys-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.lstrip("/"), key, byte_size)
    try:
        yield key, handle
    finally:
        shm.destroy_shared_memory_region(handle)


def reference_probabilities(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """The same model run in-process with ONNX Runtime: what the server must answer."""
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": images})[0]


IMPORT_GUARD = textwrap.dedent(
    """
    import os
    import sys


    class _ForbiddenImports:
        forbidden = set(os.environ["SERVING_IMPORT_GUARD_MODULES"].split(","))

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.forbidden:
                with open(os.environ["SERVING_IMPORT_GUARD_LOG"], "a") as log:
                    log.write(name + "\\n")
                raise ImportError(name + " must never be imported by the serving process")
            return None


    if os.environ.get("SERVING_IMPORT_GUARD_MODULES"):
        sys.meta_path.insert(0, _ForbiddenImports())
    """
)


@pytest.fixture(scope="session")
def import_guard(tmp_path_factory) -> Path:
    """A folder with a sitecustomize.py that records and refuses imports of TensorFlow, keras, buildsys."""
    folder = tmp_path_factory.mktemp("import_guard")
    (folder / "sitecustomize.py").write_text(IMPORT_GUARD)
    return folder


class ServerProcess:
    """``python -m serving`` in a subprocess on free gRPC and HTTP ports, with the import guard; stop() sends
    SIGTERM."""

    def __init__(
        self,
        repo: Path,
        guard: Path,
        log_dir: Path,
        *args: str,
        command: tuple[str, ...] = ("-m", "serving"),
        forbidden: tuple[str, ...] = FORBIDDEN_MODULES,
        ready_in: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.http_port = free_port()
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        self.ready_in = ready_in or self.log_path  # the log the server writes ready in (its --log-file, if given)
        self.forbidden_log = log_dir / f"forbidden-imports-{self.port}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(guard), str(PROJECT_ROOT)])
        env["SERVING_IMPORT_GUARD_LOG"] = str(self.forbidden_log)
        env["SERVING_IMPORT_GUARD_MODULES"] = ",".join(forbidden)
        command = [
            sys.executable,
            *command,
            "--repository",
            str(repo),
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(free_port()),
            *args,
        ]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            written = self.ready_in.read_text() if self.ready_in.exists() else ""
            if "(ready)" in written or "(not ready:" in written:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError(f"server not ready within {timeout_s} s:\n{self.log()}")

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()
        forbidden = self.forbidden_log.read_text() if self.forbidden_log.exists() else ""
        assert not forbidden, f"the server tried to import: {forbidden}"
        return code


@pytest.fixture
def start_server(import_guard, tmp_path):
    """Starts servers for one test and stops them after it, checking the exit code and forbidden imports."""
    servers: list[ServerProcess] = []

    def start(repo: Path, *args: str, **options) -> ServerProcess:
        server = ServerProcess(repo, import_guard, tmp_path, *args, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    publish_version(repo, "digits", 1, seed=1)
    return repo


@pytest.fixture(scope="session")
def shared_server(digits_repo, import_guard, tmp_path_factory):
    """One server for the read-only tests (metadata, inference, errors): started once, stopped at the end."""
    server = ServerProcess(digits_repo, import_guard, tmp_path_factory.mktemp("shared-server"))
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def slow_repo(tmp_path_factory) -> Path:
    """A repository whose model is slow (SLOW_STEPS) and has one execution instance, so that one long call holds
    the requests behind it in the queue."""
    repo = tmp_path_factory.mktemp("slow-repository")
    publish_version(repo, "digits", 1, seed=1, slow=True, instances=1)
    return repo


@pytest.fixture
def client(shared_server):
    with grpcclient.InferenceServerClient(shared_server.url) as triton:
        yield triton


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(count, 8, 8), dtype=np.uint8)


def scrape(port: int) -> str:
    """The server's Prometheus metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def wait_for_metric(port: int, line: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in scrape(port):
        assert time.monotonic() < deadline, f"metric {line!r} not seen within {timeout_s} s"
        time.sleep(0.02)


def infer_request(batch: np.ndarray, model: str = "digits") -> pb.ModelInferRequest:
    """A raw ModelInferRequest for the tiny classifier's ``image`` input."""
    request = pb.ModelInferRequest(model_name=model, id="test")
    request.inputs.add(name="image", datatype="UINT8", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request


def probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    """The ``probabilities`` output of a raw ModelInferResponse."""
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))


def connected_stub(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    """A stub on a channel that is already connected, so that the next call reaches the server at once."""
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    return stub
