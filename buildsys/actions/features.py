"""The featurize action: a transfer target's base features over its data, computed ahead of the build.

`featurize LABEL` writes exactly what the build's featurise step would read: the `.npz` cache with the local
engine, or a Parquet folder of the same name with `--engine spark`, where the base runs as an ONNX model in
ONNX Runtime on the executors — the large-image-set case. The build then fits the head without running the base.
The Parquet rows are (split, index, label, features); the build reads them back in index order per split.
With Spark, an `image_folder` target's files are read and decoded on the executors (the driver only lists their
names and assigns each its split and index); other sources are loaded on the driver and shipped as pixels.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys import sources
from buildsys.actions.data import Splits, carve_validation, check_and_split
from buildsys.actions.transfer import SPLITS, build_base, featurise
from buildsys.build import BuildOptions, plan
from buildsys.cache import DIGESTS_DIR
from buildsys.errors import BuildsysError, DataError
from buildsys.sources.image_folder import is_url
from buildsys.store import OutputTree
from buildsys.workspace import Target, Workspace

if TYPE_CHECKING:
    from buildsys.engines.spark import OnnxOnSpark
    from buildsys.sources.image_folder import FolderReader

FolderSplits = dict[str, list[tuple[Path, int]]]


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


def write_parquet_spark(onnx: OnnxOnSpark, splits: Splits, folder: Path) -> int:
    """Runs the base on Spark over images the driver loaded (shipped as pixels) and writes its features."""
    import pandas

    from buildsys.engines.spark import run_onnx

    frames = []
    for split, images, labels in zip(
        SPLITS,
        (splits.x_train, splits.x_val, splits.x_test),
        (splits.y_train, splits.y_val, splits.y_test),
        strict=True,
    ):
        outputs = run_onnx(onnx.session, onnx.broadcast, onnx.input_name, onnx.output_name, images)
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
    return _write_parquet(onnx.session, pandas.concat(frames, ignore_index=True), folder)


def folder_splits(reader: FolderReader, fraction: float, seed: int) -> FolderSplits:
    """An image folder's (file, label) pairs per split, in the order `check_and_split` gives their images (the
    validation files carved from training by the same seeded permutation), from the listing alone: no file is
    opened, so the executors are the only readers of image bytes.

    Raises:
        DataError: for an empty train or test split, as loading the images would.
    """
    for split in ("train", "test"):
        if not reader.files[split]:
            raise DataError(f"{split} split is empty")
    train = reader.files["train"]
    fit, held = carve_validation(len(train), fraction, seed)
    return {"train": [train[i] for i in fit], "validation": [train[i] for i in held], "test": reader.files["test"]}


def write_parquet_files(onnx: OnnxOnSpark, reader: FolderReader, files: FolderSplits, folder: Path) -> int:
    """Runs the base over an image folder's files, read by Spark's binaryFile source and decoded and resized on
    the executors with the source's own decoder, and writes its features."""
    import pandas

    listed = [(split, index, path, label) for split in SPLITS for index, (path, label) in enumerate(files[split])]
    outputs = onnx.score_files(
        [os.path.abspath(path) for _, _, path, _ in listed],
        [os.path.abspath(reader.root)],
        reader.size,
        reader.color_mode,
    )
    table = pandas.DataFrame(
        {
            "split": [split for split, _, _, _ in listed],
            "index": np.array([index for _, index, _, _ in listed], np.int64),
            "label": np.array([label for _, _, _, label in listed], np.int64),
            "features": list(outputs),
        }
    )
    return _write_parquet(onnx.session, table, folder)


def _write_parquet(session: Any, table: Any, folder: Path) -> int:
    """Writes the feature rows as Parquet next to the `.npz` cache: to a temporary folder, then renamed."""
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
    # A folder in object storage is read here through fsspec and shipped as pixels: the executors would read it
    # through Hadoop's connectors, under other URL schemes (s3a:// for s3://).
    on_executors = engine == "spark" and spec.data.kind == "image_folder" and not is_url(dict(spec.data.params)["path"])
    if on_executors:
        reader = sources.reader(spec.data, options.data_dir)
        files = folder_splits(reader, spec.train.validation_split, current.seed)
    else:
        splits = check_and_split(sources.load(spec.data, options.data_dir), spec, current.seed)
        if not isinstance(splits, Splits):
            raise DataError(f"{target.label}: transfer targets featurise in-memory data; this source streams")
    if current.key is None:  # the data was fetched just now
        current = current.keyed(sources.fingerprint(spec.data, options.data_dir, tree.root / DIGESTS_DIR), tree)
    path = current.paths.features
    base = build_base(target, dependencies, tree)
    if engine == "local":
        featurise(base, splits, path, say)
        return path
    from buildsys.engines.spark import OnnxOnSpark, spark_session

    folder = path.with_suffix(".parquet")
    folder.parent.mkdir(parents=True, exist_ok=True)
    model = base_onnx(base, spec, spec.export.opset)
    onnx = OnnxOnSpark(spark_session(master), model, spec.inputs.name, "features", spec.inputs.dtype, spec.inputs.shape)
    try:
        if on_executors:
            rows = write_parquet_files(onnx, reader, files, folder)
        else:
            rows = write_parquet_spark(onnx, splits, folder)
    finally:
        onnx.broadcast.unpersist()
    say(f"{rows:,} feature rows written to {folder}")
    return folder
