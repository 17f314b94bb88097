"""Apache Spark as an engine for batch inference: an ONNX model over a DataFrame of images with `mapInPandas`.

The model's bytes are broadcast once; each partition iterator opens one ONNX Runtime session and runs it over
every Arrow chunk of its partition, so a model is loaded once per executor task, never per row or per chunk.
Image folders and files (Spark's binaryFile source) and Parquet tables of encoded images are read, decoded and
resized on the executors with the local engine's own decoders, so the driver never reads an image and only the
scored rows (a key and the probabilities) come back; other sources are decoded on the driver and travel as raw
pixels. Results are put back in the local engine's order, so both engines give the same rows in the same order.
Folders and tables may also be at filesystem URLs (`hdfs://`, `s3a://`, `gs://`...) that only Spark reads: a
folder there is listed by Spark and laid out (classes, split, ids) exactly as the local engine lays out a folder
on disk.
`featurize --engine spark` runs a transfer base over an image folder's files with the same machinery
(`OnnxOnSpark.score_files`).
PySpark is an optional extra (`pip install 'buildsys[spark]'`); nothing here imports TensorFlow, and only this
module imports PySpark.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from buildsys.dsl.datasets import image_shape
from buildsys.errors import BuildsysError, DataError, SourceError
from buildsys.sources.image_folder import ListedFolder, folder_layout
from buildsys.sources.images import IMAGE_SUFFIXES, decode_cell, read_image_file
from buildsys.sources.resolve import open_sources
from buildsys.sources.sql import is_database_url, is_filesystem_url

if TYPE_CHECKING:
    from buildsys.batch.scoring import Model, Scored, ScoredBatch
    from buildsys.workspace import Workspace

Decode = Callable[[Any], tuple[Any, np.ndarray]]
Result = TypeVar("Result")

DEFAULT_MASTER = "local[2]"


# The executors score on their CPUs: a Spark cluster's executors are not assumed to have a GPU each.
EXECUTOR_PROVIDERS = ["CPUExecutionProvider"]


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


def _score_chunks(
    model: Any, input_name: str, output_name: str, input_type: str, input_shape: tuple[int, ...], decode: Decode
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The function `mapInPandas` runs on each partition: one ONNX Runtime session for all of its chunks.

    `decode` turns an Arrow chunk into the key columns to send back and the chunk's images, so every kind of
    input (pixels, image files, table cells) is scored by this one loop and the model is opened once per task.
    """

    def run(chunks: Iterator[Any]) -> Iterator[Any]:
        import onnxruntime

        session = onnxruntime.InferenceSession(model.value, providers=EXECUTOR_PROVIDERS)
        for chunk in chunks:
            keys, images = decode(chunk)
            if len(keys) == 0:
                continue
            images = images.reshape(len(images), *input_shape).astype(input_type)
            outputs = session.run([output_name], {input_name: images})[0].astype(np.float32)
            yield keys.assign(output=list(outputs.reshape(len(images), -1)))

    return run


def _decode_pixels(dtype: str, shape: tuple[int, ...], chunk: Any) -> tuple[Any, np.ndarray]:
    """Rows of `(row, pixels)` that the driver already decoded: the raw bytes back into arrays."""
    images = [np.frombuffer(raw, dtype=dtype).reshape(shape) for raw in chunk["pixels"]]
    return chunk[["row"]], np.stack(images) if images else np.zeros((0, *shape), dtype)


def _collect(frame: Any) -> Any:
    """`frame.toPandas()`, with a failure on an executor (an undecodable image) turned into its one-line error."""
    from pyspark.errors import PySparkException

    try:
        with warnings.catch_warnings():  # PySpark repeats the executor's traceback as a warning before raising
            warnings.simplefilter("ignore", UserWarning)
            return frame.toPandas()
    except PySparkException as error:
        text = str(error)
        found = re.search(r"buildsys\.errors\.(?:DataError|BuildsysError): (.+)", text)
        if found:
            raise DataError(found.group(1).strip()) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise BuildsysError(f"the Spark job failed: {lines[-1] if lines else type(error).__name__}") from None


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
    score = _score_chunks(model, input_name, output_name, dtype, shape, partial(_decode_pixels, dtype, shape))
    scored = _collect(frame.mapInPandas(score, schema="row long, output array<float>")).sort_values("row")
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


# The suffixes Spark's binaryFile source is told to read (a glob has no case-insensitive match).
SPARK_IMAGE_SUFFIXES = (*IMAGE_SUFFIXES, *(suffix.upper() for suffix in IMAGE_SUFFIXES))
IMAGE_GLOB = "*.{" + ",".join(suffix[1:] for suffix in SPARK_IMAGE_SUFFIXES) + "}"
PARQUET_COLUMNS = ("image", "label", "id")  # defaults of --image-column, --label-column, --id-column


def local_path(uri: str) -> str:
    """A local file as Spark names it (`file:/abs/path`, Hadoop's unescaped form) as the driver lists it."""
    return uri.removeprefix("file://") if uri.startswith("file:///") else uri.removeprefix("file:")


def _decode_files(rows: Any, size: tuple[int, int], color_mode: str, chunk: Any) -> tuple[Any, np.ndarray]:
    """binaryFile rows `(path, content)` decoded with the local engine's decoder; files the driver did not list
    (another split, a file the local engine would skip) are dropped before decoding."""
    import pandas

    keys, images = [], []
    for uri, content in zip(chunk["path"], chunk["content"], strict=True):
        path = local_path(uri)
        row = rows.value.get(path)
        if row is not None:
            keys.append(row)
            images.append(read_image_file(Path(path), size, color_mode, data=bytes(content)))
    shape = image_shape(size, color_mode)
    return pandas.DataFrame({"row": np.array(keys, np.int64)}), np.stack(images) if images else np.zeros((0, *shape))


def _decode_cells(column: str, shape: tuple[int, ...], chunk: Any) -> tuple[Any, np.ndarray]:
    """Parquet rows with encoded image bytes, decoded by the SQL source's cell decoder (so pickles are refused)."""
    images = []
    for cell, uri, row in zip(chunk[column], chunk["file_path"], chunk["row_index"], strict=True):
        where = f"{local_path(uri)}, row {row}"
        if cell is None:
            raise DataError(f"{where}: the {column} cell is NULL")
        images.append(decode_cell(bytes(cell), shape=shape, where=where))
    return chunk.drop(columns=[column]), np.stack(images) if images else np.zeros((0, *shape), np.uint8)


class OnnxOnSpark:
    """A Spark session with an ONNX model's bytes broadcast once, and the `mapInPandas` jobs that run it.

    Shared by `predict` (a published model's probabilities) and `featurize` (a base's features), so both read
    and decode image files on the executors the same way.
    """

    def __init__(
        self,
        session: Any,
        model: bytes,
        input_name: str,
        output_name: str,
        input_type: str,
        input_shape: tuple[int, ...],
    ) -> None:
        self.session = session
        self.broadcast = session.sparkContext.broadcast(model)
        self.input_name, self.output_name = input_name, output_name
        self.input_type, self.input_shape = np.dtype(input_type).name, tuple(input_shape)

    def score(self, frame: Any, decode: Decode, keys: str) -> Any:
        """The frame's `keys` columns and an `output` column of the model's outputs, collected on the driver."""
        score = _score_chunks(
            self.broadcast, self.input_name, self.output_name, self.input_type, self.input_shape, decode
        )
        return _collect(frame.mapInPandas(score, schema=f"{keys}, output array<float>"))

    def score_files(self, paths: list[str], locations: list[str], size: tuple[int, int], color_mode: str) -> np.ndarray:
        """The outputs for the image files `paths` (absolute, as the driver listed them), one row per path in
        that order, read by the binaryFile source under `locations` and decoded and resized on the executors.

        Raises:
            DataError: when a listed file was not read, or was read twice (overlapping locations).
        """
        rows = self.session.sparkContext.broadcast({path: row for row, path in enumerate(paths)})
        frame = (
            self.session.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", IMAGE_GLOB)
            .load(locations)
            .select("path", "content")
        )
        try:
            scored = self.score(frame, partial(_decode_files, rows, size, color_mode), "row long")
        finally:
            rows.unpersist()
        outputs = _in_order(scored["row"].to_numpy(), scored["output"], len(paths))
        if outputs is None:
            missing = sorted(set(range(len(paths))) - set(scored["row"].tolist()))
            if not missing:
                raise DataError(f"Spark read a file twice from {', '.join(locations)}; inputs must not overlap")
            raise DataError(
                f"{paths[missing[0]]}: Spark did not read this file ({len(missing)} missing; Spark skips names "
                "beginning with _ or . and suffixes in other letter cases)"
            )
        return outputs


class _SparkModel(OnnxOnSpark):
    """A published model's ONNX file on Spark, with the model's description (class names, image format)."""

    def __init__(self, model: Model, master: str | None) -> None:
        super().__init__(
            spark_session(master),
            model.onnx_path.read_bytes(),
            model.input_name,
            model.output_name,
            model.input_type,
            model.input_shape,
        )
        self.model = model


class FilesScored:
    """Image files read by Spark's binaryFile source under `locations` and decoded and scored on the executors.

    The driver lists the file names (never their content): local folders and files with the local engine's own
    reader, a folder at a filesystem URL by laying out Spark's listing the same way (`image_folder.folder_layout`):
    the same class folders, split and order; executors map each file they read back to its row in that listing.
    """

    def __init__(
        self,
        spark: _SparkModel,
        listed: list[tuple[str, str, int | None]],
        labels: np.ndarray | None,
        locations: list[str],
    ) -> None:
        """`listed`: (path as `_decode_files` looks it up, image id, label in the source's classes) per file;
        `labels` maps those labels to the model's classes (None: unlabelled)."""
        self.spark, self.locations = spark, locations
        self.paths = [path for path, _, _ in listed]
        self.ids = [image_id for _, image_id, _ in listed]
        self.truth = None if labels is None else labels[np.array([label for _, _, label in listed], np.int64)]
        self.labelled, self.total = labels is not None, len(listed)
        image_format = spark.model.image_format
        self.size, self.color_mode = image_format.size, image_format.color_mode

    def batches(self, batch_size: int) -> Iterator[ScoredBatch]:
        probabilities = self.spark.score_files(self.paths, self.locations, self.size, self.color_mode)
        for start in range(0, self.total, batch_size):
            end = min(start + batch_size, self.total)
            truth = None if self.truth is None else self.truth[start:end]
            yield self.ids[start:end], probabilities[start:end], truth


def _in_order(rows: np.ndarray, outputs: Any, total: int) -> np.ndarray | None:
    """The outputs placed at their row numbers; None unless every row 0..total-1 came back exactly once."""
    if len(rows) != total or len(np.unique(rows)) != total:
        return None
    ordered = np.empty((total, len(outputs.iloc[0])), np.float32)
    ordered[rows] = np.stack(outputs.to_numpy())
    return ordered


class ParquetScored:
    """A Parquet table of encoded images read by `spark.read.parquet`, decoded and scored on the executors.

    Rows come back in the table's order (file path, then row within the file). Ids are the id column's values,
    else `<file name>#<row>`; labels are class names, or indices of the model's classes when the column holds
    integers.
    """

    def __init__(self, spark: _SparkModel, path: str, columns: tuple[str | None, str | None, str | None]) -> None:
        from pyspark.sql import functions
        from pyspark.sql.types import BinaryType, IntegralType

        self.spark, self.class_names = spark, spark.model.class_names
        location = path if is_database_url(path) else os.path.abspath(path)
        table = _spark_read(path, "a Parquet table", lambda: spark.session.read.parquet(location))
        missing = [name for name in columns if name is not None and name not in table.columns]
        if columns[0] is None and PARQUET_COLUMNS[0] not in table.columns:
            missing.insert(0, PARQUET_COLUMNS[0])
        if missing:
            raise DataError(
                f"{path} has columns {', '.join(table.columns)}; it lacks {', '.join(missing)} "
                "(name them with --image-column, --label-column, --id-column)"
            )
        image, label, image_id = (
            given if given is not None else default if default in table.columns else None
            for given, default in zip(columns, PARQUET_COLUMNS, strict=True)
        )
        if not isinstance(table.schema[image].dataType, BinaryType):
            raise DataError(f"{path}: column {image} must hold encoded image bytes (PNG, JPEG or .npy)")
        self.label_is_index = label is not None and isinstance(table.schema[label].dataType, IntegralType)
        none = functions.lit(None)
        self.frame = table.select(
            functions.col(image).alias("image"),
            functions.col("_metadata.file_path").alias("file_path"),
            functions.col("_metadata.row_index").alias("row_index"),
            (functions.col(image_id) if image_id else none).cast("string").alias("id"),
            (functions.col(label) if label else none).cast("string").alias("label"),
        )
        self.labelled, self.total = label is not None, table.count()

    def batches(self, batch_size: int) -> Iterator[ScoredBatch]:
        image_format = self.spark.model.image_format
        decode = partial(_decode_cells, "image", image_shape(image_format.size, image_format.color_mode))
        scored = self.spark.score(self.frame, decode, "file_path string, row_index long, id string, label string")
        scored = scored.sort_values(["file_path", "row_index"], kind="stable").reset_index(drop=True)
        ids = [
            given if given is not None else f"{Path(local_path(uri)).name}#{row}"
            for given, uri, row in zip(scored["id"], scored["file_path"], scored["row_index"], strict=True)
        ]
        truth = np.array([self._class_index(value) for value in scored["label"]], np.int64) if self.labelled else None
        probabilities = np.stack(scored["output"].to_numpy()) if len(scored) else np.zeros((0, 0), np.float32)
        for start in range(0, len(ids), batch_size):
            end = start + batch_size
            yield ids[start:end], probabilities[start:end], None if truth is None else truth[start:end]

    def _class_index(self, label: str | None) -> int:
        """The model class a label names (an index when the column holds integers); -1 when none or unknown."""
        if label is None:
            return -1
        if self.label_is_index:
            return int(label) if 0 <= int(label) < len(self.class_names) else -1
        return self.class_names.index(label) if label in self.class_names else -1


def spark_input(
    model: Model,
    inputs: list[str],
    workspace: Workspace | None,
    master: str | None,
    columns: tuple[str | None, str | None, str | None] = (None, None, None),
) -> Scored | None:
    """The inputs read, decoded and scored by Spark itself; None for sources Spark cannot read (labels, npz,
    database URLs), which the driver reads and Spark only scores.

    A Parquet file, or a folder of Parquet files, is a table of encoded images (`columns`: the image, label and
    id column names, None for the defaults), as a local path or at a filesystem URL that Spark's Hadoop connectors
    read (`hdfs://`, `s3a://`, `gs://`, `file:///`...; the driver never opens it); image folders, image files and
    glob patterns are local paths, read as binary files.
    """
    if any(is_filesystem_url(text) for text in inputs):
        if len(inputs) > 1:
            raise BuildsysError("a filesystem URL input is one Parquet table or image folder: give it alone")
        return _url_input(_SparkModel(model, master), inputs[0], columns)
    first = Path(inputs[0].partition("#")[0])
    if len(inputs) == 1 and "#" not in inputs[0] and _is_parquet(first):
        return ParquetScored(_SparkModel(model, master), str(first), columns)
    if any(columns):
        raise BuildsysError("--image-column, --label-column and --id-column apply to Parquet inputs only")
    locations = [text.partition("#")[0] for text in inputs]
    if not all(_is_image_location(location) for location in locations):
        return None
    from buildsys.batch.scoring import label_map

    opened = open_sources(inputs, model.image_format, workspace)  # lists the files; decodes none
    reader = opened.reader
    listed = [
        (os.path.abspath(path), reader.image_id(path), label)
        for split in opened.splits
        for path, label in reader.files[split]
    ]
    labels = label_map(reader.class_names, model.class_names)
    return FilesScored(_SparkModel(model, master), listed, labels, [os.path.abspath(text) for text in locations])


def _url_input(spark: _SparkModel, text: str, columns: tuple[str | None, str | None, str | None]) -> Scored:
    """A Parquet table or an image folder at a filesystem URL, told apart as for local paths: a `.parquet` name,
    or a folder holding `*.parquet` files, is a table; any other folder is an image folder."""
    url, _, split = text.partition("#")
    files = (
        None if url.lower().endswith(".parquet") else _spark_read(url, "a folder", lambda: _listing(spark.session, url))
    )
    if files is None or any(len(path.parts) == 1 and path.suffix.lower() == ".parquet" for path in files.values()):
        if split:
            raise BuildsysError(f"{text}: a Parquet table has no #train or #test split")
        return ParquetScored(spark, url, columns)
    if any(columns):
        raise BuildsysError("--image-column, --label-column and --id-column apply to Parquet inputs only")
    images = {relative: uri for uri, relative in files.items() if relative.suffix in SPARK_IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{url} holds no PNG/JPEG/BMP images and no Parquet files (as Spark lists it)")
    class_names, splits = folder_layout(ListedFolder(url, images))
    if split and split not in splits:
        raise SourceError(f"{url} has no {split} split (it has: {', '.join(splits)})")
    listed = [
        (local_path(uri), files[uri].as_posix(), label)
        for name in ((split,) if split else tuple(splits))
        for uri, label in splits[name]
    ]
    from buildsys.batch.scoring import label_map

    labels = label_map(class_names, spark.model.class_names)
    return FilesScored(spark, listed, labels, [url])


def _listing(session: Any, url: str) -> dict[str, PurePosixPath]:
    """Every file Spark lists under `url` (recursively; it skips names beginning with _ or .), by the name its
    binaryFile source gives it, with its path relative to `url`. Selecting only the path reads no file's content."""
    rows = session.read.format("binaryFile").option("recursiveFileLookup", "true").load(url).select("path").collect()
    root = PurePosixPath(urlsplit(url).path)
    files = {}
    for row in rows:
        path = PurePosixPath(urlsplit(row.path).path)
        if path == root:  # the URL names one file: it is a loose image, named by its file name
            files[row.path] = PurePosixPath(path.name)
            continue
        try:
            files[row.path] = path.relative_to(root)
        except ValueError:
            raise DataError(f"{url}: Spark listed {row.path}, which is not under it") from None
    return files


def _spark_read(location: str, what: str, read: Callable[[], Result]) -> Result:
    """`read()`, with what Spark or Hadoop raise when it cannot read `location` (missing, not `what`, a scheme
    without a connector) turned into one line naming it."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        return read()
    except (PySparkException, Py4JJavaError) as error:
        # A Hadoop exception that Spark did not wrap reads best as its Java class and message.
        reason = str(error.java_exception.toString()) if isinstance(error, Py4JJavaError) else str(error)
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        message = f"{location}: Spark cannot read it as {what}: {lines[0] if lines else reason}"
        if re.search(r'No FileSystem for scheme "s3"', message):
            # Stock Hadoop has no s3:// (EMR's EMRFS does); its S3 connector is S3A, and s3fs takes s3a:// too,
            # so one spelling names the folder for the build and for Spark.
            message += f" (Hadoop's S3 connector reads s3a://{location.split('://', 1)[1]}, with hadoop-aws on "
            message += "Spark's classpath; datasets.image_folder takes s3a:// too)"
        elif re.search(r"No FileSystem for scheme|ClassNotFoundException: Class \S+FileSystem", message):
            message += (
                " (put the filesystem's connector on Spark's classpath: spark.jars.packages in spark-defaults.conf)"
            )
        raise DataError(message) from None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")))


def _is_image_location(text: str) -> bool:
    """A folder, an image file or a glob pattern: what Spark's binaryFile source reads."""
    path = Path(text)
    return path.is_dir() or glob.has_magic(text) or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
