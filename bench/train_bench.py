"""Training throughput under each distribution strategy this machine has, with and without mixed precision and XLA.

Every configuration trains the same small CNN (32x32x3 uint8 images, synthetic, 10 classes) through the build's
own `train.build_in_scope` and `fit`, so strategy choice, mixed precision and XLA are applied exactly as
`buildsys build --strategy ... --mixed-precision --jit` applies them. Throughput is training images per second
over the timed epochs (one warm-up epoch first, which pays for tracing and XLA compilation), reported as a ratio
against the default strategy in float32 without XLA.

Strategies: `default`, `one-device`, and `mirrored` — over the GPUs when there are two or more, otherwise over
two logical CPU devices (the same 2-replica program, sharing the same cores, so it shows the cost of the
replication machinery rather than a speed-up). `multi-worker` needs several processes and is covered by the tests,
not timed here.

Usage: .venv/bin/python bench/train_bench.py [--images 4096] [--epochs 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_spec(batch_size: int, epochs: int):
    """A CIFAR-shaped CNN written in the definition language (the data source is never loaded)."""
    from buildsys.dsl import Conv2D, Dense, Flatten, MaxPooling2D, datasets, image_input, model, train

    return model(
        name="bench",
        data=datasets.keras("cifar10"),
        inputs=image_input("image", shape=(32, 32, 3), dtype="uint8", scale=1 / 255),
        layers=[
            Conv2D(32, 3, padding="same", activation="relu"),
            MaxPooling2D(2),
            Conv2D(64, 3, padding="same", activation="relu"),
            MaxPooling2D(2),
            Flatten(),
            Dense(128, activation="relu"),
            Dense(10, activation="softmax"),
        ],
        train=train(optimizer="adam", epochs=epochs, batch_size=batch_size, validation_split=0.0),
    )


def measure(spec, splits, strategy: str, mixed_precision: bool, jit: bool, work: Path) -> tuple[float, int]:
    """Trains one configuration; returns (images per second over the timed epochs, replicas)."""
    from buildsys.actions.checkpoints import TrainingCheckpoint
    from buildsys.actions.train import build_in_scope, fit

    model, chosen = build_in_scope(spec, {}, 0, strategy, mixed_precision=mixed_precision, jit=jit)
    ends: list[float] = []

    def say(line: str) -> None:
        if line.startswith("epoch "):
            ends.append(time.perf_counter())

    folder = work / f"{strategy}-{mixed_precision}-{jit}"
    fit(model, chosen, spec, splits, 0, 0, checkpoint=TrainingCheckpoint(folder), say=say)
    elapsed = ends[-1] - ends[0]  # from the end of epoch 1 (the warm-up) to the end of training
    timed_epochs = spec.train.epochs - 1
    return len(splits.x_train) * timed_epochs / elapsed, chosen.num_replicas_in_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs, the first of which is a warm-up")
    parser.add_argument("--batch", type=int, default=64, help="per-replica batch size")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < 2:  # give mirrored two replicas to run: two logical CPUs (set before the runtime starts)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from buildsys.actions.data import Splits

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    empty = images[:0], labels[:0]
    splits = Splits(images, labels, *empty, *empty)
    spec = make_spec(args.batch, args.epochs)

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"GPUs: {len(gpus)}, TensorFlow {tf.__version__}")  # fmt: skip
    print(f"# {args.images} images 32x32x3, per-replica batch {args.batch}, {args.epochs - 1} timed epoch(s)\n")
    print("| strategy | replicas | mixed precision | XLA | images/s | ratio to default |")
    print("| --- | --: | --- | --- | --: | --: |")
    configurations = [("default", False, False), ("default", True, False), ("default", False, True)]
    configurations += [("default", True, True), ("one-device", False, False), ("mirrored", False, False)]
    configurations += [("mirrored", True, False)]
    baseline = None
    with tempfile.TemporaryDirectory() as work:
        for strategy, mixed, jit in configurations:
            throughput, replicas = measure(spec, splits, strategy, mixed, jit, Path(work))
            baseline = baseline or throughput
            policy = ("mixed_float16" if gpus else "mixed_bfloat16") if mixed else "float32"
            print(f"| {strategy} | {replicas} | {policy} | {'on' if jit else 'off'} | {throughput:,.0f} | "
                  f"{throughput / baseline:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
