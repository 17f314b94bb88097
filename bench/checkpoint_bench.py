"""What the per-epoch training checkpoint costs a fine-tuning epoch: one `TrainingCheckpoint.save` (what
`EpochCheckpoint` writes after every epoch of a pattern build's training and, since the fine-tuning resume, of a
transfer target's fine-tuning) against one training epoch of the same Keras application on a batch of images.

Keras applications are built with `weights=None` (no download; the save writes the same number of bytes either
way). Usage: .venv/bin/python bench/checkpoint_bench.py [--images 32] [--saves 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

APPLICATIONS = {"MobileNetV2": (96, 96, 3), "InceptionV3": (299, 299, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the timed training epoch")
    parser.add_argument("--saves", type=int, default=3, help="checkpoint saves timed (the median is printed)")
    args = parser.parse_args()

    import keras
    import numpy as np

    from buildsys.actions.checkpoints import TrainingCheckpoint

    print(
        "| base | parameters | one checkpoint save, s | one training epoch of",
        args.images,
        "images, s | save ÷ epoch |",
    )
    print("| --- | --: | --: | --: | --: |")
    for name, shape in APPLICATIONS.items():
        model = getattr(keras.applications, name)(weights=None, input_shape=shape, classes=10)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        images = np.random.default_rng(0).random((args.images, *shape), dtype=np.float32)
        labels = np.random.default_rng(1).integers(0, 10, args.images)
        model.fit(images, labels, epochs=1, verbose=0)  # tracing, not timed
        started = time.perf_counter()
        model.fit(images, labels, epochs=1, verbose=0)
        epoch = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = TrainingCheckpoint(Path(folder) / "checkpoint")
            saves = []
            for number in range(1, args.saves + 1):
                started = time.perf_counter()
                checkpoint.save(model, number, {"loss": [1.0] * number})
                saves.append(time.perf_counter() - started)
        save = float(np.median(saves))
        print(f"| {name} | {model.count_params():,} | {save:.2f} | {epoch:.2f} | {save / epoch:.2f} |")


if __name__ == "__main__":
    main()
