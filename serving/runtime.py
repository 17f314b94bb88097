"""ONNX Runtime sessions for model versions: provider choice, session options, and an honest device report.

``--device auto`` asks for CUDA when this ONNX Runtime build offers the CUDA execution provider; ``cuda``
requires it; ``cpu`` never uses it. After a session is created its active providers are read back: CUDA that
was asked for but is not active is logged loudly and kept in ``OnnxModel.device_warning`` (which the server
reports in ServerMetadata, ModelMetadata and ModelConfig), or, with ``--device cuda``, refuses the model.
There is no silent fallback.
"""

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.errors import ModelLoadError, first_line
from serving.signature import ONNX_DATATYPES, ModelSignature, format_shape

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class SessionSettings:
    """A model's own session settings (its config.pbtxt, read by ``serving.backend_config``), beyond threads and
    graph optimizations. None leaves a setting as serving sets it; ``cuda_options`` apply where CUDA runs the
    model; ``not_applied`` names the accelerators the config asks for that serving does not run, for the log."""

    parallel_execution: bool = False
    inter_op_threads: int | None = None
    cpu_mem_arena: bool | None = None
    mem_pattern: bool | None = None
    session_config: tuple[tuple[str, str], ...] = ()
    run_config: tuple[tuple[str, str], ...] = ()
    cuda_options: tuple[tuple[str, str], ...] = ()
    not_applied: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created. ``intra_op_threads`` 0 lets ONNX Runtime use one thread per core (the repository
    shares the cores among a version's instances first), and None leaves it to each model's config.pbtxt
    (``intra_op_thread_count``, else 0); ``graph_optimization_level`` None leaves it to each model's config.pbtxt
    too (``optimization { graph { level } }``, else "all"); ``intra_op_spinning`` lets its idle threads spin for
    work instead of sleeping; ``session`` holds a model's own settings."""

    device: str = "auto"
    intra_op_threads: int | None = None
    graph_optimization_level: str | None = None
    intra_op_spinning: bool = False
    session: SessionSettings = SessionSettings()


def check_device_available(device: str) -> None:
    """Fails early when ``--device cuda`` cannot work with the installed ONNX Runtime build.

    Raises:
        ValueError: naming the providers this build offers and how to get CUDA.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda" and CUDA not in ort.get_available_providers():
        raise ValueError(
            "--device cuda, but this ONNX Runtime build offers only "
            f"{', '.join(ort.get_available_providers())}; "
            "install onnxruntime-gpu on a machine with CUDA, or use --device cpu"
        )


def shared_threads(instances: int) -> int:
    """Intra-op threads for each of ``instances`` sessions that share this process's cores (at least one each):
    "one per core" for every instance would put several threads on each core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // instances)


def requests_cuda(device: str) -> bool:
    """Whether sessions for ``--device device`` ask ONNX Runtime for CUDA (whether it then activates is read back
    from each session)."""
    return CUDA in _requested_providers(device)


def _requested_providers(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device == "cuda" or CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def _providers(options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
    """The providers a session asks for, CUDA with the model's options when it has any."""
    cuda_options = dict(options.session.cuda_options)
    return [
        (name, cuda_options) if name == CUDA and cuda_options else name for name in _requested_providers(options.device)
    ]


def _session_options(options: RuntimeOptions, intra_op_threads: int) -> ort.SessionOptions:
    """ONNX Runtime's options for one session of a model: serving's defaults, then the model's own settings."""
    settings = options.session
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = intra_op_threads
    # One inter-op thread unless the model runs its branches in parallel: concurrency comes from the instances.
    session_options.inter_op_num_threads = 1 if settings.inter_op_threads is None else settings.inter_op_threads
    if settings.parallel_execution:
        session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if settings.cpu_mem_arena is not None:
        session_options.enable_cpu_mem_arena = settings.cpu_mem_arena
    if settings.mem_pattern is not None:
        session_options.enable_mem_pattern = settings.mem_pattern
    session_options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization_level or "all"]
    session_options.log_severity_level = 3
    # Spinning intra-op threads burn CPU between calls that the event loop needs for the network; without it the
    # server used 0.1-0.2 ms less CPU per batch-1 request in 7 of 8 paired runs on the 2-core machine.
    session_options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if options.intra_op_spinning else "0"
    )
    for key, value in settings.session_config:
        session_options.add_session_config_entry(key, value)
    return session_options


class OnnxModel:
    """A model version's ONNX Runtime sessions, one per execution instance, checked against the version's
    signature before they may serve."""

    def __init__(
        self,
        path: Path,
        signature: ModelSignature,
        options: RuntimeOptions,
        instances: int = 1,
        wide_threads: int = 0,
        declared_in: str = "the signature",
    ) -> None:
        """Creates the sessions and validates them.

        Args:
            declared_in: where the signature comes from (manifest.json, config.pbtxt), for the messages.
            instances: sessions to create, each with ``options.intra_op_threads`` threads; the batcher runs one
                call at a time on each.
            wide_threads: when above 0, one more session with this many threads (``wide_runner``), for the long
                calls of requests that find every instance idle.

        Raises:
            ModelLoadError: the file does not load, its tensors differ from the signature, or CUDA is required
                and inactive.
        """
        requested = _requested_providers(options.device)
        providers = _providers(options)
        instance_options = _session_options(options, options.intra_op_threads or 0)
        try:
            self.sessions = tuple(
                ort.InferenceSession(str(path), sess_options=instance_options, providers=providers)
                for _ in range(instances)
            )
            self.wide_session = None
            if wide_threads > 0:
                wide_options = _session_options(options, wide_threads)
                self.wide_session = ort.InferenceSession(str(path), sess_options=wide_options, providers=providers)
        except Exception as error:  # ONNX Runtime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {first_line(error)}") from error
        self.session = self.sessions[0]
        self.intra_op_threads = options.intra_op_threads or 0
        self.graph_optimization_level = options.graph_optimization_level or "all"
        self.wide_threads = wide_threads if self.wide_session is not None else 0
        self.providers: list[str] = self.session.get_providers()
        self.device_warning: str | None = None
        if CUDA in requested and CUDA not in self.providers:
            message = (
                f"{path}: CUDA was requested (--device {options.device}) but ONNX Runtime activated only "
                f"{', '.join(self.providers)}; check the CUDA/cuDNN libraries that onnxruntime-gpu needs"
            )
            if options.device == "cuda":
                raise ModelLoadError(message)
            log.warning("!!! %s; this model runs on the CPU", message)
            self.device_warning = message + "; running on CPU"
        self.declared_in = declared_in
        signature = self._check_signature(path, signature)
        self.signature = signature
        names = signature.output_names()
        run_options = None
        if options.session.run_config:
            run_options = ort.RunOptions()
            for key, value in options.session.run_config:
                run_options.add_run_config_entry(key, value)

        def runner(session: ort.InferenceSession) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
            # What the batcher calls: the session's run with the outputs named, nothing more. A model that does
            # not batch is queued as a single row, which its tensors do not have.
            if signature.batched:
                return lambda inputs: dict(zip(names, session.run(names, inputs, run_options), strict=True))
            return lambda inputs: {
                name: output[np.newaxis]
                for name, output in zip(
                    names, session.run(names, {key: rows[0] for key, rows in inputs.items()}, run_options), strict=True
                )
            }

        self.runners = tuple(runner(session) for session in self.sessions)
        self.wide_runner = None if self.wide_session is None else runner(self.wide_session)

    def _check_signature(self, path: Path, signature: ModelSignature) -> ModelSignature:
        """Checks the file's tensors against the signature and returns the signature the version serves.

        A request may send an initializer that the graph lets it override (ONNX Runtime lists those apart from the
        inputs), and may leave it out when the config marks it optional. An input the config marks optional but
        the file has no default for must still be sent, as it must for Triton's backend to run: that config loads,
        with a warning, and a request without the input gets "missing input" instead of a failed run.
        """
        required = self.session.get_inputs()
        overridable = self.session.get_overridable_initializers()
        for kind, needed, allowed, specs in (
            ("input", required, [*required, *overridable], signature.inputs),
            ("output", self.session.get_outputs(), self.session.get_outputs(), signature.outputs),
        ):
            declared = [s.name for s in specs]
            by_name = {a.name: a for a in allowed}
            if not {a.name for a in needed} <= set(declared) <= by_name.keys():
                extra = f" (and initializers a request may override: {[a.name for a in overridable]})"
                raise ModelLoadError(
                    f"{path}: ONNX {kind}s {[a.name for a in needed]}{extra if kind == 'input' and overridable else ''}"
                    f" differ from {self.declared_in}'s {declared}"
                )
            batched = signature.batched
            for spec in specs:
                node = by_name[spec.name]
                datatype = ONNX_DATATYPES.get(node.type, node.type)
                # ONNX writes a symbolic or unknown dimension as a string or None; serving as -1.
                dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
                expected = spec.onnx_shape
                fixed_batch = batched and bool(dims) and dims[0] != -1
                if datatype != spec.datatype or len(dims) != len(expected) or fixed_batch:
                    raise ModelLoadError(
                        f"{path}: ONNX {kind} '{spec.name}' is {datatype} {format_shape(dims)} but "
                        f"{self.declared_in} says {spec.datatype} {format_shape(expected)}"
                        + (" (the batch dimension must be dynamic)" if fixed_batch else "")
                    )
                # As in Triton, the config may fix a dimension the file leaves variable, not free one it fixes
                # (a request of another size would then fail inside ONNX Runtime).
                if any(got != -1 and want != got for want, got in zip(expected[batched:], dims[batched:], strict=True)):
                    raise ModelLoadError(
                        f"{path}: ONNX {kind} '{spec.name}' has shape {format_shape(dims)} but "
                        f"{self.declared_in} says {format_shape(expected)}"
                    )
        without_default = {a.name for a in required}
        unsendable = [spec.name for spec in signature.inputs if spec.optional and spec.name in without_default]
        if not unsendable:
            return signature
        log.warning(
            "%s: %s marks input(s) %s optional, but the file has no default for them; requests must send them",
            path,
            self.declared_in,
            ", ".join(unsendable),
        )
        inputs = tuple(
            dataclasses.replace(spec, optional=False) if spec.name in unsendable else spec for spec in signature.inputs
        )
        return dataclasses.replace(signature, inputs=inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one (merged) batch of rows on the first instance and returns every output's rows by name."""
        return self.runners[0](inputs)

    def smoke_test(self) -> None:
        """Runs one sample of zeros, as a request's would run, so a model that loads but cannot execute, or whose
        outputs do not fit the signature, never serves.

        Raises:
            ModelLoadError: the run fails or an output's shape differs from the signature.
        """
        batched = self.signature.batched
        try:
            sample = {}
            for spec in self.signature.inputs:
                if spec.optional:
                    continue  # the default, as most requests will leave it
                shape = [d if d > 0 else 1 for d in spec.shape]  # one sample; a variable dimension of one
                sample[spec.name] = spec.rows_for_model(np.zeros(shape, dtype=spec.dtype), batched)
            outputs = self.run(sample)
            if self.wide_runner is not None:
                self.wide_runner(sample)  # the same file and options: it runs as the instances do, or not at all
            shapes = {
                spec.name: spec.rows_for_client(outputs[spec.name], batched).shape for spec in self.signature.outputs
            }
        except Exception as error:  # any runtime failure means the version must not serve
            raise ModelLoadError(f"a test run on zeros failed: {first_line(error)}") from error
        for spec in self.signature.outputs:
            got = shapes[spec.name]
            if (
                len(got) != len(spec.shape)
                or (batched and got[0] != 1)
                or any(want not in (-1, g) for want, g in zip(spec.shape[batched:], got[batched:], strict=True))
            ):
                raise ModelLoadError(
                    f"output '{spec.name}' of a one-sample test run has shape {format_shape(got)} but "
                    f"{self.declared_in} says {format_shape(spec.shape)}"
                )
