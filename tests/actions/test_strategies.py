"""Distribution strategies: MirroredStrategy over 2 logical CPUs, and a 2-process multi-worker build on localhost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from buildsys.actions.distributed import ClusterError, tf_config_from_flags
from tests.conftest import write_definition
from tests.data_helpers import digits, write_folder
from tests.ports import free_port

pytestmark = pytest.mark.slow

SMALL = """
from buildsys.dsl import *

model(
    name="small",
    data=datasets.sklearn_digits(test_fraction=0.2, split_seed=0),
    inputs=image_input("image", shape=(8, 8), dtype="uint8", scale=1 / 255),
    layers=[Flatten(), Dense(32, activation="relu"), Dense(10, activation="softmax")],
    train=train(optimizer="adam", epochs=3, batch_size=32, learning_rate=1e-2),
)
"""
QUIET = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _manifests(root: Path) -> list[dict]:
    folder = root / "build-out" / "models" / "small"
    versions = sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit())
    return [json.loads((folder / str(version) / "manifest.json").read_text()) for version in versions]


def test_mirrored_on_two_logical_cpus_matches_the_default_shape(workspace: Path) -> None:
    write_definition(workspace, "small.py", SMALL)
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from buildsys.cli import main
        for strategy in ("default", "mirrored"):
            assert main(["build", "small", "--strategy", strategy]) == 0
        assert main(["build", "small", "--strategy", "mirrored", "--jit"]) == 1  # XLA needs a single replica
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, env=QUIET, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored (2 CPUs), 2,410 parameters" in result.stdout and "MirroredStrategy" not in result.stdout
    no_gpu = "warning: --strategy mirrored found no GPU on this machine (no CUDA driver or device); it runs on the CPU"
    assert result.stderr.count(no_gpu) == 1  # said once, in our words, however many builds ask
    assert "error: --jit needs a single replica, but --strategy mirrored runs 2" in result.stderr
    default, mirrored = _manifests(workspace)
    assert default["strategy"] == {
        "name": "_DefaultDistributionStrategy",
        "replicas": 1,
        "description": "default (1 CPU)",
    }
    assert mirrored["strategy"] == {"name": "MirroredStrategy", "replicas": 2, "description": "mirrored (2 CPUs)"}
    assert default["content_hash"] != mirrored["content_hash"]  # two replicas double the global batch: keyed
    for key in ("inputs", "outputs", "class_names", "params"):
        assert mirrored[key] == default[key]
    assert {name: len(values) for name, values in mirrored["history"].items()} == {
        name: len(values) for name, values in default["history"].items()
    }
    assert mirrored["metrics"]["test"]["accuracy"] > 0.8


STREAMED = SMALL.replace(
    "datasets.sklearn_digits(test_fraction=0.2, split_seed=0)",
    'datasets.image_folder("digits", image_size=(8, 8), color_mode="grayscale", split=0.2, stream=True)',
)


@pytest.mark.parametrize("data", ["in memory", "streamed"])
def test_two_process_multi_worker_build_publishes_one_version(workspace: Path, data: str) -> None:
    """Every worker reads the same rows and keeps its share of each global batch, from arrays or from a stream."""
    if data == "streamed":
        write_folder(workspace / "digits", *digits())
    write_definition(workspace, "small.py", SMALL if data == "in memory" else STREAMED)
    ports = [free_port(), free_port()]
    cluster = ",".join(f"127.0.0.1:{port}" for port in ports)
    command = [sys.executable, "-m", "buildsys", "build", "small", "--strategy", "multi-worker", "--cluster", cluster]
    processes = [
        subprocess.Popen(
            [*command, "--task", task],
            cwd=workspace,
            env=QUIET,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for task in ("chief:0", "worker:0")
    ]
    (chief_out, chief_err), (worker_out, worker_err) = [process.communicate(timeout=300) for process in processes]
    assert processes[0].returncode == 0, chief_err[-3000:]
    assert processes[1].returncode == 0, worker_err[-3000:]
    assert "published version 1" in chief_out
    assert "trained as a multi-worker task; the chief evaluates and publishes" in worker_out
    assert "published" not in worker_out

    def epochs(output: str) -> list[str]:
        return [line for line in output.splitlines() if line.startswith("  epoch ")]

    # The metrics are all-reduced across the workers, so both report the same numbers for every epoch.
    assert len(epochs(chief_out)) == 3
    assert [line.split("s  ", 1)[1] for line in epochs(chief_out)] == [
        line.split("s  ", 1)[1] for line in epochs(worker_out)
    ]
    (manifest,) = _manifests(workspace)
    assert manifest["strategy"] == {
        "name": "CollectiveAllReduceStrategy",
        "replicas": 2,
        "description": "multi-worker (2 workers)",
    }
    assert set(manifest["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 3 for values in manifest["history"].values())
    assert manifest["parity"]["onnx_max_abs_diff"] <= manifest["parity"]["tolerance"]
    assert not list((workspace / "build-out" / "work" / "small").glob("*/checkpoint"))
    assert ('"stream": true' in json.dumps(manifest["spec"])) == (data == "streamed")


def test_cluster_flags_become_tf_config() -> None:
    config = json.loads(tf_config_from_flags("10.0.0.1:2222,10.0.0.2:2222,10.0.0.3:2222", "worker:1"))
    assert config == {
        "cluster": {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    with pytest.raises(ClusterError, match="worker:N with N < 1"):
        tf_config_from_flags("a:1,b:2", "worker:1")
    with pytest.raises(ClusterError, match="two or more HOST:PORT"):
        tf_config_from_flags("a:1", "chief:0")
