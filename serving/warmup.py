"""Triton's model warmup (config.pbtxt's ``model_warmup``): samples that every execution instance runs before a
version serves, so that its first requests do not pay for ONNX Runtime's first calls at their sizes (memory arenas
grown, kernels chosen, caches filled; on a GPU, CUDA's lazy start).

A sample is Triton's: ``batch_size`` requests of one row each, merged into one call (a model that does not batch
runs them one by one), each input given ``dims`` (the shape clients send, without the batch) and its data as
``zero_data``, ``random_data`` (random bytes; strings empty, as in Triton) or ``input_data_file`` (raw row-major
bytes, the first that the shape needs, or strings in the protocol's 4-byte-length form, from a file in the
model's ``warmup`` folder); it runs ``count`` times (at least once) on every instance and on the wide session.
A sample with ``batch_size`` 0 is skipped, as in Triton. One that cannot be built or does not run refuses the
version in one line naming config.pbtxt and the sample; the versions that serve go on serving.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving import codec
from serving.errors import ModelLoadError, ServingError, first_line
from serving.model_files import file_name as checked_file_name
from serving.protocol import model_config_pb2
from serving.signature import BYTES, DATATYPES, ModelSignature, TensorSpec, format_shape

WARMUP_FOLDER = "warmup"
# The most bytes one input of a sample may take: a config must not make the server allocate without bound.
MAX_WARMUP_BYTES = 64 * 1024 * 1024

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class WarmupSample:
    """A sample ready to run: its inputs as the batcher hands them to a runner, and how many calls to make."""

    name: str
    inputs: dict[str, np.ndarray]
    calls: int


def warmup_samples(
    config: model_config_pb2.ModelConfig, signature: ModelSignature, model_dir: Path
) -> list[WarmupSample]:
    """The samples of config.pbtxt's ``model_warmup``, built and checked against the version's signature.

    Raises:
        ModelLoadError: a sample names an unknown input, leaves out one the model needs, gives another datatype or
            shape, a batch size the model cannot take, or data that cannot be read.
    """
    samples = []
    for index, warmup in enumerate(config.model_warmup):
        where = f"{model_dir / 'config.pbtxt'}: model_warmup {codec.shown(warmup.name) if warmup.name else index}"
        if warmup.batch_size == 0:
            continue
        batched = signature.batched
        if batched and warmup.batch_size > config.max_batch_size:
            raise ModelLoadError(
                f"{where}: batch_size {warmup.batch_size} exceeds the model's max_batch_size {config.max_batch_size}"
            )
        specs = {spec.name: spec for spec in signature.inputs}
        inputs = {}
        for name, given in warmup.inputs.items():
            spec = specs.get(name)
            if spec is None:
                raise ModelLoadError(
                    f"{where}: unknown input {codec.shown(name)}; the model's inputs are: {', '.join(specs)}"
                )
            one = _one_request(f"{where}: input '{name}'", spec, given, model_dir, batched)
            if batched and one.nbytes * warmup.batch_size > MAX_WARMUP_BYTES:
                raise ModelLoadError(
                    f"{where}: input '{name}' at batch_size {warmup.batch_size} takes over {MAX_WARMUP_BYTES} bytes"
                )
            rows = np.concatenate([one] * warmup.batch_size) if batched else one
            try:
                inputs[name] = spec.rows_for_model(rows, batched)
            except ServingError as error:  # strings that are not UTF-8
                raise ModelLoadError(f"{where}: {error.message}") from None
        missing = next((spec for spec in signature.inputs if spec.name not in inputs and not spec.optional), None)
        if missing is not None:
            raise ModelLoadError(f"{where}: gives no data for input '{missing.name}', which the model needs")
        calls = max(warmup.count, 1) * (1 if batched else warmup.batch_size)
        samples.append(WarmupSample(warmup.name or str(index), inputs, calls))
    return samples


def warm_up(runners: list[Runner], samples: list[WarmupSample], config_path: Path) -> None:
    """Runs every sample its number of calls on each runner (the instances' sessions and the wide one).

    Raises:
        ModelLoadError: a call failed; the version must not serve.
    """
    for sample in samples:
        for runner in runners:
            for _ in range(sample.calls):
                try:
                    runner(sample.inputs)
                except Exception as error:  # any runtime failure means the version must not serve
                    raise ModelLoadError(
                        f"{config_path}: model_warmup {codec.shown(sample.name)} failed to run: {first_line(error)}"
                    ) from error


def _one_request(
    where: str, spec: TensorSpec, given: model_config_pb2.ModelWarmup.Input, model_dir: Path, batched: bool
) -> np.ndarray:
    """One request's tensor for an input of a sample, in the shape a client would send it (a row of one in a model
    that batches)."""
    known = given.data_type in model_config_pb2.DataType.values()
    datatype = model_config_pb2.DataType.Name(given.data_type).removeprefix("TYPE_") if known else ""
    datatype = BYTES if datatype == "STRING" else datatype
    if datatype not in DATATYPES or datatype != spec.datatype:
        raise ModelLoadError(
            f"{where}: data_type {datatype or given.data_type} does not match the model's {spec.datatype}"
        )
    dims = tuple(given.dims)
    shape = (1, *dims) if batched else dims
    try:
        spec.check_request(datatype, shape, max_batch_size=1 if batched else 0)
    except ServingError as error:
        raise ModelLoadError(f"{where}: {error.message.split(': ', 1)[-1]}") from None
    elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if elements * max(spec.dtype.itemsize, 4) > MAX_WARMUP_BYTES:
        raise ModelLoadError(f"{where}: dims {format_shape(dims)} take more than {MAX_WARMUP_BYTES} bytes")
    kind = given.WhichOneof("input_data_type")
    if kind == "zero_data" or (kind == "random_data" and datatype == BYTES):
        data = np.full(shape, b"", dtype=object) if datatype == BYTES else np.zeros(shape, dtype=spec.dtype)
    elif kind == "random_data":
        rng = np.random.default_rng()
        if datatype == "BOOL":
            data = rng.integers(0, 2, size=shape).astype(bool)
        else:
            data = np.frombuffer(rng.bytes(elements * spec.dtype.itemsize), dtype=spec.dtype).reshape(shape)
    elif kind == "input_data_file":
        data = _from_file(where, spec, given.input_data_file, model_dir, shape, elements)
    else:
        raise ModelLoadError(f"{where}: sets none of zero_data, random_data or input_data_file")
    return data


def _from_file(
    where: str, spec: TensorSpec, file_name: str, model_dir: Path, shape: tuple[int, ...], elements: int
) -> np.ndarray:
    folder = model_dir / WARMUP_FOLDER
    path = folder / checked_file_name(file_name, where, "input_data_file", str(folder))
    try:
        if path.stat().st_size > MAX_WARMUP_BYTES:
            raise ModelLoadError(f"{where}: {path} is larger than {MAX_WARMUP_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"{where}: cannot read {path}: {error.strerror}") from None
    if spec.datatype != BYTES:
        needed = elements * spec.dtype.itemsize
        if len(raw) < needed:
            raise ModelLoadError(f"{where}: {path} has {len(raw)} bytes; the shape needs {needed}")
        raw = raw[:needed]
    try:
        return codec.array_from_raw(spec.name, spec.datatype, shape, raw)
    except ServingError as error:
        raise ModelLoadError(f"{where}: {path}: {error.message}") from None
