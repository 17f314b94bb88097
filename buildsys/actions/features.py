"""The featurize action: a transfer target's base features over its data, computed ahead of the build.

`featurize LABEL` writes exactly what the build's featurise step would read: the `.npz` cache with the local
engine, or a Parquet folder of the same name with `--engine spark`, where the base runs as an ONNX model in
ONNX Runtime on the executors — the large-image-set case. The build then fits the head without running the base.
The Parquet rows are (split, index, label, features); the build reads them back in index order per split.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from buildsys import sources
from buildsys.actions.data import Splits, check_and_split
from buildsys.actions.transfer import SPLITS, build_base, featurise
from buildsys.build import BuildOptions, plan
from buildsys.errors import BuildsysError, DataError
from buildsys.store import OutputTree
from buildsys.transfer import base_digest, features_path, split_digest
from buildsys.workspace import Target, Workspace


def base_onnx(base: Any, spec: Any, opset: int) -> bytes:
    """The base (image → features) converted by tf2onnx, for engines that run ONNX."""
    import tf2onnx

    from buildsys.actions import tensorflow

    tf = tensorflow()
    signature = [tf.TensorSpec([None, *spec.inputs.shape], spec.inputs.dtype, name=spec.inputs.name)]

    @tf.function(input_signature=signature)
    def features(image: Any) -> dict[str, Any]:
        return {"features": base(image, training=False)}

    model_proto, _ = tf2onnx.convert.from_function(features, input_signature=signature, opset=opset)
    return model_proto.SerializeToString()


def write_parquet_spark(session: Any, model: bytes, spec: Any, splits: Splits, folder: Path) -> int:
    """Runs the base on Spark and writes its features as Parquet next to the `.npz` cache, atomically."""
    import pandas

    from buildsys.engines.spark import run_onnx

    broadcast = session.sparkContext.broadcast(model)
    frames = []
    try:
        for split, images, labels in zip(
            SPLITS,
            (splits.x_train, splits.x_val, splits.x_test),
            (splits.y_train, splits.y_val, splits.y_test),
            strict=True,
        ):
            outputs = run_onnx(session, broadcast, spec.inputs.name, "features", images)
            frames.append(
                pandas.DataFrame(
                    {
                        "split": split,
                        "index": np.arange(len(images), dtype=np.int64),
                        "label": labels.astype(np.int64),
                        "features": list(outputs),
                    }
                )
            )
    finally:
        broadcast.unpersist()
    table = pandas.concat(frames, ignore_index=True)
    frame = session.createDataFrame(table, schema="split string, index long, label long, features array<float>")
    temporary = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    frame.write.mode("overwrite").parquet(str(temporary))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)
    return len(table)


def featurize(
    workspace: Workspace,
    tree: OutputTree,
    target: Target,
    options: BuildOptions,
    engine: str,
    master: str | None,
    say: Callable[[str], None],
) -> Path:
    """Computes `target`'s base features with `engine` ("local" or "spark"); returns the file or folder written.

    Raises:
        BuildsysError: for a target without a base, or a missing dependency that fails to build.
    """
    from buildsys.schedule import build_dependencies

    spec = target.spec
    if spec.transfer is None:
        raise BuildsysError(f"{target.label} has no base to featurize; featurize takes a target with base=...")
    dependencies = build_dependencies(workspace, tree, target, options)
    current = plan(target, tree, options, dependencies)
    dataset = sources.load(spec.data, options.data_dir)
    splits = check_and_split(dataset, spec, current.seed)
    if not isinstance(splits, Splits):
        raise DataError(f"{target.label}: transfer targets featurise in-memory data; this source streams")
    fingerprint = current.key.data_fingerprint if current.key else sources.fingerprint(spec.data, options.data_dir)
    path = features_path(
        tree.root,
        base_digest(target, dependencies),
        split_digest(fingerprint, current.seed, spec.train.validation_split),
    )
    base = build_base(target, dependencies, tree)
    if engine == "local":
        featurise(base, splits, path, say)
        return path
    from buildsys.engines.spark import spark_session

    folder = path.with_suffix(".parquet")
    folder.parent.mkdir(parents=True, exist_ok=True)
    rows = write_parquet_spark(spark_session(master), base_onnx(base, spec, spec.export.opset), spec, splits, folder)
    say(f"{rows:,} feature rows written to {folder}")
    return folder
