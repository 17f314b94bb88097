"""Apache Spark as an engine for batch inference: an ONNX model over a DataFrame of images with `mapInPandas`.

The model's bytes are broadcast once; each partition iterator opens one ONNX Runtime session and runs it over
every Arrow chunk of its partition, so a model is loaded once per executor task, never per row or per chunk.
Images travel as raw bytes with their shape, results come back keyed by a row number and are put back in the
input's order, so the local engine and this one give the same rows in the same order. PySpark is an optional
extra (`pip install 'buildsys[spark]'`); nothing here imports TensorFlow, and only this module imports PySpark.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from buildsys.errors import BuildsysError

DEFAULT_MASTER = "local[2]"


def spark_session(master: str | None = None) -> Any:
    """A SparkSession on `master` (default local[2]) whose Python workers run this interpreter.

    Raises:
        BuildsysError: when PySpark is not installed, saying how to install the extra.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise BuildsysError(
            "--engine spark needs PySpark: pip install 'buildsys[spark]' (pyspark, pyarrow, pandas; Java 17+)"
        ) from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master or DEFAULT_MASTER)
        .appName("buildsys")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )


def _run_onnx(model_bytes: Any, input_name: str, output_name: str, dtype: str, shape: tuple[int, ...]) -> Any:
    """The function `mapInPandas` runs on each partition: one ONNX Runtime session for all of its chunks."""

    def run(chunks: Iterator[Any]) -> Iterator[Any]:
        import onnxruntime
        import pandas

        session = onnxruntime.InferenceSession(model_bytes.value, providers=["CPUExecutionProvider"])
        for chunk in chunks:
            if chunk.empty:
                continue
            images = np.stack([np.frombuffer(raw, dtype=dtype).reshape(shape) for raw in chunk["pixels"]])
            outputs = session.run([output_name], {input_name: images})[0].astype(np.float32)
            yield pandas.DataFrame({"row": chunk["row"].to_numpy(), "output": list(outputs.reshape(len(images), -1))})

    return run


def run_onnx(
    session: Any,
    model: Any,
    input_name: str,
    output_name: str,
    images: np.ndarray,
    partitions: int | None = None,
) -> np.ndarray:
    """Runs an ONNX model over `images` on Spark; returns the outputs in the images' order, one row per image.

    Args:
        session: a SparkSession (`spark_session`).
        model: the serialized ONNX model as a Spark broadcast variable (`session.sparkContext.broadcast(bytes)`).
        input_name, output_name: the graph's input and output tensor names.
        images: a batch shaped as the model's input (without the batch axis per row).
        partitions: how many partitions to spread the rows over (default: Spark's default parallelism).
    """
    import pandas

    if len(images) == 0:
        return np.zeros((0, 0), np.float32)
    shape, dtype = tuple(images.shape[1:]), str(images.dtype)
    rows = pandas.DataFrame({"row": np.arange(len(images), dtype=np.int64), "pixels": [i.tobytes() for i in images]})
    frame = session.createDataFrame(rows, schema="row long, pixels binary")
    frame = frame.repartition(partitions or session.sparkContext.defaultParallelism)
    scored = frame.mapInPandas(
        _run_onnx(model, input_name, output_name, dtype, shape), schema="row long, output array<float>"
    ).toPandas()
    scored = scored.sort_values("row")
    return np.stack(scored["output"].to_numpy()).astype(np.float32)


class SparkScorer:
    """Scores batches of images with a published model's ONNX file on Spark; the predict command's engine seam."""

    def __init__(self, onnx_path: str, input_name: str, output_name: str, master: str | None = None) -> None:
        self.session = spark_session(master)
        with open(onnx_path, "rb") as stream:
            self.model = self.session.sparkContext.broadcast(stream.read())  # shipped to each executor once
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return run_onnx(self.session, self.model, self.input_name, self.output_name, images)
