"""Batch prediction with a published model: ONNX Runtime over a source, rows into a destination.

Runs `model.onnx` from the output tree (never TensorFlow: this module and everything it imports must stay
importable without it, which a test checks) over any command-line source (`sources.resolve`), batch by batch,
and hands each batch's rows to a destination (`prediction_output`). True labels are matched to the model's
classes by name, so a folder whose sub-folders are class names reports accuracy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from buildsys.batch.prediction_output import Sink, open_sink, probability_columns
from buildsys.batch.progress import Progress
from buildsys.batch.scoring import Model, Scored, ScoredBatch, label_map
from buildsys.errors import BuildsysError, DataError
from buildsys.sources.resolve import Opened, open_sources
from buildsys.store import OutputTree
from buildsys.workspace import Workspace


@dataclass
class Summary:
    """What a prediction run did."""

    model: str
    version: int
    destination: str
    providers: tuple[str, ...] = ()  # ONNX Runtime's active providers, best first
    rows: int = 0
    batches: int = 0
    labelled: int = 0
    correct: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "destination": self.destination,
            "providers": list(self.providers),
            "rows": self.rows,
            "batches": self.batches,
            "accuracy": self.accuracy,
            "labelled": self.labelled,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.rows / self.seconds, 1) if self.seconds else None,
        }

    def line(self) -> str:
        rate = f"{self.rows / self.seconds:,.0f} images/s" if self.seconds else "-"
        text = f"wrote {self.rows:,} rows to {self.destination} with {self.model} version {self.version} ({rate}"
        text += f" on {self.providers[0].removesuffix('ExecutionProvider')})" if self.providers else ")"
        if self.accuracy is not None:
            text += f"; accuracy {self.accuracy:.4f} on {self.labelled:,} labelled images"
        return text


def _rows(model: Model, ids: list[str], probabilities: np.ndarray, truth: np.ndarray | None) -> list[dict[str, Any]]:
    columns = probability_columns(model.class_names)
    predicted = probabilities.argmax(axis=1)
    rows = []
    for i, image_id in enumerate(ids):
        true_index = int(truth[i]) if truth is not None and truth[i] >= 0 else None
        row = {
            "image_id": image_id,
            "model_name": model.name,
            "model_version": model.version,
            **{column: float(p) for column, p in zip(columns, probabilities[i], strict=True)},
            "predicted_index": int(predicted[i]),
            "predicted_class": model.class_names[int(predicted[i])],
            "probability": float(probabilities[i, predicted[i]]),
            "true_index": true_index,
            "true_class": model.class_names[true_index] if true_index is not None else None,
        }
        rows.append(row)
    return rows


class ReaderScored:
    """A source read in this process batch by batch, each batch scored by the model (or its engine's scorer)."""

    def __init__(self, model: Model, opened: Opened) -> None:
        self.model, self.opened = model, opened
        self.labels = label_map(opened.reader.class_names, model.class_names)
        self.labelled = self.labels is not None
        self.total = sum(opened.reader.count(split) for split in opened.splits)

    def batches(self, batch_size: int) -> Iterator[ScoredBatch]:
        for split in self.opened.splits:
            for batch in self.opened.reader.batches(split, batch_size):
                truth = self.labels[batch.labels] if self.labels is not None and batch.labels is not None else None
                yield batch.ids, self.model.probabilities(batch.images), truth


def predict(
    workspace: Workspace,
    tree: OutputTree,
    label: str,
    inputs: list[str],
    destination: str,
    version: int | None = None,
    batch_size: int = 256,
    engine: str = "local",
    master: str | None = None,
    parquet_columns: tuple[str | None, str | None, str | None] = (None, None, None),
    device: str = "auto",
) -> Summary:
    """Predicts every image of `inputs` with the target's published model and writes the rows to `destination`.

    `engine="spark"` runs on Apache Spark at `master` (`buildsys.engines.spark`): image folders, image files and
    Parquet tables are read, decoded and scored on the executors and only the scored rows come back; other
    sources are read here and each batch is scored on Spark. Writing the rows stays here, so both engines write
    the same rows. `parquet_columns` name a Parquet input's image, label and id columns (None: the defaults).
    `device` is the local engine's (`scoring.Model`); Spark's executors score on their CPUs.

    Raises:
        DataError: for unreadable inputs or a failed write, saying how many whole batches were written.
    """
    if batch_size <= 0:
        raise BuildsysError(f"--batch-size must be positive; received {batch_size}")
    (target,) = workspace.resolve([label])
    model = Model(tree, target, version, device)
    source: Scored | None = None
    if engine != "spark" and any(parquet_columns):
        raise BuildsysError("--image-column, --label-column and --id-column apply to Parquet inputs of --engine spark")
    if engine == "spark":
        from buildsys.engines.spark import SparkScorer, spark_input

        source = spark_input(model, inputs, workspace, master, parquet_columns)
        if source is None:  # a source Spark cannot read itself: read here, score each batch on Spark
            model.scorer = SparkScorer(str(model.onnx_path), model.input_name, model.output_name, master)
    if source is None:
        source = ReaderScored(model, open_sources(inputs, model.image_format, workspace))
    columns = ["image_id", "model_name", "model_version", *probability_columns(model.class_names),
               "predicted_index", "predicted_class", "probability", "true_index", "true_class"]  # fmt: skip
    sink = open_sink(destination, columns, probability_columns(model.class_names), source.labelled)
    providers = tuple(model.providers)
    if engine == "spark":
        from buildsys.engines.spark import EXECUTOR_PROVIDERS

        providers = tuple(EXECUTOR_PROVIDERS)
    summary = Summary(model.name, model.version, sink.description, providers)
    progress = Progress(f"predict {model.name}", source.total)
    started = time.perf_counter()
    try:
        for ids, probabilities, truth in source.batches(batch_size):
            _write_batch(model, ids, probabilities, truth, sink, summary)
            progress.advance(len(ids))
    except DataError as error:
        batches = f"{summary.batches} whole batch{'' if summary.batches == 1 else 'es'}"
        written = f"{batches} ({summary.rows:,} rows)"
        raise DataError(f"{error}; {written} were written to {sink.description}; running again upserts") from None
    finally:
        progress.close()
        sink.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _write_batch(
    model: Model, ids: list[str], probabilities: np.ndarray, truth: np.ndarray | None, sink: Sink, summary: Summary
) -> None:
    sink.write(_rows(model, ids, probabilities, truth))
    summary.rows += len(ids)
    summary.batches += 1
    if truth is not None:
        known = truth >= 0
        summary.labelled += int(known.sum())
        summary.correct += int((probabilities.argmax(axis=1)[known] == truth[known]).sum())


def summary_stream(destination: str) -> Any:
    """The summary goes to stderr when the predictions themselves go to stdout."""
    return sys.stderr if destination == "-" else sys.stdout
