"""What the build system costs over hand-written Keras, and how long a no-op build takes.

Trains the shipped `digits` target through `python -m buildsys build --force` and the same network on the same
data (the same uint8 pixels, split and validation carve-out) through a plain hand-written `model.fit`, and prints
the ratio of their training throughput (samples per second in `fit`; target: buildsys within 5 %). Then times
`python -m buildsys build` when the target is up to date (wall time of the whole process).

Usage: .venv/bin/python bench/build_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def buildsys_run(workspace: Path) -> tuple[float, dict]:
    """One forced build in a subprocess; returns (training samples/s, manifest)."""
    result = subprocess.run(
        [sys.executable, "-m", "buildsys", "build", "digits", "--force", "--quiet", "--json"],
        cwd=workspace, capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(result.stdout)["targets"][0]
    manifest_path = workspace / "build-out" / "models" / "digits" / str(summary["version"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    samples = manifest["data_sizes"]["train"] * manifest["spec"]["train"]["epochs"]
    return samples / manifest["timings"]["train"], manifest


def handwritten_run(manifest: dict) -> float:
    """The same network, data and settings as a person would write them with Keras; returns samples/s in fit."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype("uint8")
    x_train, _, y_train, _ = train_test_split(images, digits.target, test_size=0.2, random_state=0,
                                              stratify=digits.target)  # fmt: skip
    seed = manifest["seed"]
    order = np.random.default_rng(seed).permutation(len(x_train))
    held = round(len(x_train) * 0.1)
    validation, fitting = order[:held], order[held:]
    x_val, y_val, x_fit, y_fit = x_train[validation], y_train[validation], x_train[fitting], y_train[fitting]

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8), dtype="uint8")
    hidden = keras.layers.Dense(manifest["hparams"]["units"], activation="relu")(
        keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    )
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(manifest["hparams"]["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    epochs = manifest["spec"]["train"]["epochs"]
    started = time.perf_counter()
    model.fit(x_fit, y_fit, batch_size=32, epochs=epochs, validation_data=(x_val, y_val), verbose=0)
    return len(x_fit) * epochs / (time.perf_counter() - started)


def noop_wall(workspace: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "buildsys", "build", "digits"], cwd=workspace, check=True,
                       capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder)
        (workspace / "model_defs").mkdir()
        shutil.copy(REPO / "model_defs" / "digits.py", workspace / "model_defs")
        through_buildsys, manifest = [], None
        for _ in range(args.repeats):
            rate, manifest = buildsys_run(workspace)
            through_buildsys.append(rate)
        by_hand = [handwritten_run(manifest) for _ in range(args.repeats)]
        noop = noop_wall(workspace, 5)
    built, hand = statistics.median(through_buildsys), statistics.median(by_hand)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"training throughput, buildsys build: {built:,.0f} samples/s (median of {args.repeats})")
    print(f"training throughput, hand-written model.fit: {hand:,.0f} samples/s (median of {args.repeats})")
    print(f"buildsys / hand-written: {built / hand:.3f} (overhead {100 * (1 - built / hand):+.1f} %)")
    print(f"no-op build wall time: median {statistics.median(noop):.3f} s, max {max(noop):.3f} s (5 runs)")


if __name__ == "__main__":
    main()
