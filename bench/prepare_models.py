"""Builds the two model repositories bench/serve_bench.py serves: the Fashion-MNIST MLP and the CIFAR-10 CNN.

The networks are the shipped definitions' (model_defs/fashion_mnist_mlp.py, model_defs/cifar10_cnn.py), copied
into a temporary workspace with their data source swapped for a small generated `.npz` file and one epoch of
training, then built by `python -m buildsys build` like any target: real training, real ONNX export, real
publishing. Serving speed does not depend on what the weights learnt, so this stays offline and takes a minute or
two on 2 cores. The output folder is an ordinary model repository (`OUT/fashion_mnist_mlp/1/model.onnx`, ...)
holding only what a server reads (about 9 MB), which `serve_bench.py --model-dir OUT` and any other machine can use
without TensorFlow.

Usage: .venv/bin/python bench/prepare_models.py --out DIR [--train-images 512]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Short name on serve_bench's command line -> shipped target (and model name in the repository).
MODELS = {"fashion": "fashion_mnist_mlp", "cifar": "cifar10_cnn"}
DATA_SOURCE = re.compile(r'datasets\.keras\("[a-z0-9_]+"\)')
EPOCHS = re.compile(r"epochs=\d+")


def generated_data(path: Path, image_shape: tuple[int, ...], train_images: int, seed: int) -> None:
    """Random uint8 images with random labels, in the npz source's layout (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    test_images = max(train_images // 4, 10)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(train_images, *image_shape), dtype=np.uint8),
        y_train=rng.integers(0, 10, size=train_images, dtype=np.int64),
        x_test=rng.integers(0, 256, size=(test_images, *image_shape), dtype=np.uint8),
        y_test=rng.integers(0, 10, size=test_images, dtype=np.int64),
    )


def benchmark_definition(target: str, data_file: str) -> str:
    """The shipped definition's text with its Keras dataset replaced by `data_file` and training cut to one epoch."""
    text = (PROJECT_ROOT / "model_defs" / f"{target}.py").read_text()
    text, sources = DATA_SOURCE.subn(f'datasets.npz("{data_file}")', text)
    text, epochs = EPOCHS.subn("epochs=1", text)
    if sources != 1 or epochs != 1:
        raise SystemExit(f"prepare_models: model_defs/{target}.py no longer has one datasets.keras(...) and epochs=")
    return text


def _build_side_files(folder: str, names: list[str]) -> list[str]:
    """What a server never reads (SavedModel, Keras weights, report): left out so the repository stays small to
    carry to another machine. A version folder keeps its manifest.json and the ONNX file it names."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.exists():
        return []
    kept = {"manifest.json", json.loads(manifest.read_text())["files"]["onnx"]}
    return [name for name in names if name not in kept]


def prepare(out: Path, train_images: int = 512) -> dict[str, Path]:
    """Builds both models into `out` (replacing what is there); returns {short name: model folder}."""
    shapes = {"fashion_mnist_mlp": (28, 28), "cifar10_cnn": (32, 32, 3)}
    with tempfile.TemporaryDirectory(prefix="serve-bench-models-") as folder:
        workspace = Path(folder)
        (workspace / "model_defs").mkdir()
        (workspace / "data").mkdir()
        for seed, target in enumerate(MODELS.values()):
            generated_data(workspace / "data" / f"{target}.npz", shapes[target], train_images, seed)
            definition = benchmark_definition(target, f"data/{target}.npz")
            (workspace / "model_defs" / f"{target}.py").write_text(definition)
        env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run(
            [sys.executable, "-m", "buildsys", "build", *MODELS.values(), "--quiet"],
            cwd=workspace, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"prepare_models: the build failed ({result.returncode}):\n{result.stderr[-4000:]}")
        # Publish the whole repository at once: build next to `out`, then swap it in.
        staging = out.with_name(f".{out.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for target in MODELS.values():
            shutil.copytree(workspace / "build-out" / "models" / target, staging / target, ignore=_build_side_files)
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    return {short: out / target for short, target in MODELS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the model repository to write")
    parser.add_argument("--train-images", type=int, default=512, help="generated training images per model")
    args = parser.parse_args()
    for short, folder in prepare(args.out, args.train_images).items():
        print(f"{short}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
