"""Triton's ensemble models (``platform: "ensemble"``): a pipeline of the repository's other models, whose steps
config.pbtxt's ``ensemble_scheduling`` wires together by tensor name (each step's ``input_map`` from its model's
input to an ensemble tensor, ``output_map`` from its model's output to one).

An ensemble has no file of its own (its version folders are empty, as in Triton). Its steps are checked when it
loads: each names another model and a version (-1: the newest), every tensor is produced once, every tensor a step
takes is an input of the ensemble or another step's output, every output of the ensemble is produced, every input
is used, and the steps form no cycle. Then, as in Triton, against the models the steps run, which must be loaded:
each step gives its model every input it needs and takes only outputs it has, a tensor keeps one datatype and a
compatible shape wherever it goes, and no step runs the ensemble again through other ensembles. A request runs
each step as a request to its model as soon as the tensors it takes are there, so independent steps run at once
and every step's model batches it with its other requests; the answer is the ensemble's outputs. This module
knows the wiring, the order and the dependencies between models; the repository loads and the data plane runs.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelrepo import MODEL_NAME
from serving.codec import shown
from serving.errors import ModelLoadError
from serving.protocol import model_config_pb2
from serving.signature import ModelSignature, TensorSpec, format_shape

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True)
class Step:
    """One step: the model it runs (``version`` "" for the newest), and its model's tensors by ensemble tensor."""

    model: str
    version: str
    inputs: dict[str, str]  # the model's input -> the ensemble tensor it takes
    outputs: dict[str, str]  # the model's output -> the ensemble tensor it makes


class Loaded(Protocol):
    """What the checks need of a loaded version (the repository's ServedVersion): its tensors, and its steps when
    it is an ensemble."""

    @property
    def signature(self) -> ModelSignature: ...

    steps: tuple[Step, ...]


def step_models(config: model_config_pb2.ModelConfig) -> frozenset[str]:
    """The models an ensemble's steps run (none for any other model): those it depends on."""
    if config.platform != ENSEMBLE_PLATFORM:
        return frozenset()
    return frozenset(step.model_name for step in config.ensemble_scheduling.step)


def dependency_order(names: Iterable[str], runs: Callable[[str], frozenset[str]]) -> list[str]:
    """``names`` sorted so that each comes after the models it ``runs`` (ensembles after their steps' models, a
    nested ensemble after the ensembles it runs); models in a cycle keep their name order among themselves."""
    ordered: list[str] = []
    placed: set[str] = set()

    def place(name: str, path: frozenset[str]) -> None:
        if name in placed or name in path:
            return
        for model in sorted(runs(name)):
            if model in wanted:
                place(model, path | {name})
        placed.add(name)
        ordered.append(name)

    wanted = set(names)
    for name in sorted(wanted):
        place(name, frozenset())
    return ordered


def read_steps(config: model_config_pb2.ModelConfig, name: str, path: object) -> tuple[Step, ...]:
    """The ensemble's steps in an order that runs each after the steps it takes tensors from.

    Raises:
        ModelLoadError: one line naming ``path`` and what in ``ensemble_scheduling`` is wrong.
    """
    where = f"{path}: ensemble_scheduling"
    declared = config.ensemble_scheduling.step
    if not declared:
        raise ModelLoadError(f"{where} has no step; an ensemble runs at least one model")
    steps = []
    producers: dict[str, int] = {}
    inputs = {tensor.name for tensor in config.input}
    for index, step in enumerate(declared):
        at = f"{where} step {index} (model {shown(step.model_name)})"
        if not MODEL_NAME.match(step.model_name) or step.model_name == name:
            raise ModelLoadError(f"{at}: model_name must name another model of the repository")
        if step.model_version < -1 or step.model_version == 0:
            raise ModelLoadError(
                f"{at}: model_version must be -1 (the newest) or a version number, got {step.model_version}"
            )
        if not step.input_map or not step.output_map:
            raise ModelLoadError(f"{at}: needs an input_map and an output_map")
        for tensor in step.output_map.values():
            if tensor in inputs or tensor in producers:
                raise ModelLoadError(f"{at}: tensor {shown(tensor)} is produced twice (or is an input of the ensemble)")
            producers[tensor] = index
        version = "" if step.model_version == -1 else str(step.model_version)
        steps.append(Step(step.model_name, version, dict(step.input_map), dict(step.output_map)))
    for index, step in enumerate(steps):
        for tensor in step.inputs.values():
            if tensor not in inputs and tensor not in producers:
                raise ModelLoadError(
                    f"{where} step {index} (model '{step.model}'): tensor {shown(tensor)} is neither an input of the "
                    "ensemble nor another step's output"
                )
    for tensor in config.output:
        if tensor.name not in producers:
            raise ModelLoadError(f"{path}: output '{tensor.name}' of the ensemble is produced by no step")
    ordered = _ordered(steps, producers, where)
    used = {tensor for step in steps for tensor in step.inputs.values()}
    for tensor in config.input:
        if tensor.name not in used:
            raise ModelLoadError(f"{path}: input '{tensor.name}' of the ensemble is taken by no step")
    return ordered


def _ordered(steps: list[Step], producers: dict[str, int], where: str) -> tuple[Step, ...]:
    """The steps in an order where each comes after those it takes tensors from (Kahn's algorithm)."""
    needs = [{producers[t] for t in step.inputs.values() if t in producers} for step in steps]
    order: list[int] = []
    ready = [index for index, needed in enumerate(needs) if not needed]
    while ready:
        index = ready.pop(0)
        order.append(index)
        for other, needed in enumerate(needs):
            if index in needed:
                needed.discard(index)
                if not needed:
                    ready.append(other)
    if len(order) < len(steps):
        stuck = next(index for index in range(len(steps)) if index not in order)
        raise ModelLoadError(f"{where}: the steps form a cycle (step {stuck}, model '{steps[stuck].model}', is in it)")
    return tuple(steps[index] for index in order)


def check_steps(
    name: str,
    signature: ModelSignature,
    steps: tuple[Step, ...],
    models: Mapping[str, Mapping[int, Loaded]],
    config_path: Path,
) -> None:
    """An ensemble's steps against the loaded ``models`` they run, as Triton checks them before it loads one.

    Raises:
        ModelLoadError: naming the step, the model and what does not fit: a model or version that is not loaded, an
            input given nothing, a tensor the model does not have, a tensor whose datatype or shape differs
            between the places it goes, or a step that runs this ensemble again.
    """
    tensors = {spec.name: _Made(spec, signature.batched, "an input of the ensemble") for spec in signature.inputs}
    for index, step in enumerate(steps):
        at = f"{config_path}: ensemble_scheduling step {index} (model '{step.model}')"
        versions = models.get(step.model) or {}
        if not versions:
            raise ModelLoadError(f"{at}: ensemble '{name}' depends on '{step.model}', which has no loaded version")
        served = versions.get(int(step.version)) if step.version else versions[max(versions)]
        if served is None:
            raise ModelLoadError(
                f"{at}: ensemble '{name}' depends on version {step.version} of '{step.model}', which is not loaded "
                f"(loaded: {sorted(versions)})"
            )
        chain = _runs(step.model, name, models)
        if chain:
            raise ModelLoadError(f"{at}: the ensemble would run itself: {' -> '.join((name, *chain))}")
        model = served.signature
        model_inputs = {spec.name: spec for spec in model.inputs}
        model_outputs = {spec.name: spec for spec in model.outputs}
        for model_input, tensor in step.inputs.items():
            spec = model_inputs.get(model_input)
            if spec is None:
                raise ModelLoadError(f"{at}: input_map names {shown(model_input)}, which is not an input of the model")
            made = tensors.get(tensor)
            if made is not None and not made.fits(spec, model.batched):
                raise ModelLoadError(
                    f"{at}: input '{model_input}' is {spec.datatype} {format_shape(spec.shape)}, but tensor "
                    f"'{tensor}' is {made}"
                )
        needed = next((s.name for s in model.inputs if not s.optional and s.name not in step.inputs), None)
        if needed is not None:
            raise ModelLoadError(f"{at}: input_map gives nothing to the model's input '{needed}'")
        for model_output, tensor in step.outputs.items():
            spec = model_outputs.get(model_output)
            if spec is None:
                raise ModelLoadError(
                    f"{at}: output_map names {shown(model_output)}, which is not an output of the model"
                )
            tensors[tensor] = _Made(spec, model.batched, f"output '{model_output}' of model '{step.model}'")
    for spec in signature.outputs:
        made = tensors.get(spec.name)
        if made is not None and not made.fits(spec, signature.batched):
            raise ModelLoadError(
                f"{config_path}: output '{spec.name}' of the ensemble is {spec.datatype} {format_shape(spec.shape)}, "
                f"but it is {made}"
            )


@dataclass(frozen=True)
class _Made:
    """A tensor of an ensemble as the first place it comes from declares it."""

    spec: TensorSpec
    batched: bool
    source: str

    def fits(self, other: TensorSpec, other_batched: bool) -> bool:
        """Triton's rule: the same datatype, and shapes alike where -1 takes any size, compared without the batch
        dimension or, failing that, with it (a model that does not batch may take [-1, ...] from one that does)."""
        if self.spec.datatype != other.datatype:
            return False
        return _alike(self.spec.shape[self.batched :], other.shape[other_batched:]) or _alike(
            _full(self.spec.shape, self.batched), _full(other.shape, other_batched)
        )

    def __str__(self) -> str:
        return f"{self.spec.datatype} {format_shape(self.spec.shape)} ({self.source})"


def _full(shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    return (-1, *shape[1:]) if batched else shape


def _alike(one: tuple[int, ...], other: tuple[int, ...]) -> bool:
    return len(one) == len(other) and all(a == b or -1 in (a, b) for a, b in zip(one, other, strict=True))


def _runs(start: str, target: str, models: Mapping[str, Mapping[int, Loaded]]) -> tuple[str, ...]:
    """The models by which loaded versions of ``start`` run ``target``, from ``start`` to ``target`` (empty when
    none do); each model is looked into once, however many ensembles run it."""
    came_from: dict[str, str | None] = {start: None}
    pending = [start]
    while pending:
        model = pending.pop()
        if model == target:
            chain: list[str] = []
            while model is not None:
                chain.append(model)
                model = came_from[model]
            return tuple(reversed(chain))
        for served in (models.get(model) or {}).values():
            for step in served.steps:
                if step.model not in came_from:
                    came_from[step.model] = model
                    pending.append(step.model)
    return ()


async def run_steps(
    steps: tuple[Step, ...],
    tensors: dict[str, object],
    run: Callable[[Step, dict[str, object]], Awaitable[dict[str, object]]],
) -> dict[str, object]:
    """Runs every step once its tensors are there, independent ones at once, and returns every tensor.

    Args:
        tensors: the ensemble's inputs by name (any values: this module does not look into them).
        run: runs one step on its model's inputs (by the model's input names) and returns its model's outputs (by
            the model's output names); its failure fails the ensemble, and the steps still running are cancelled.
    """
    tensors = dict(tensors)
    waiting = list(steps)
    running: dict[asyncio.Task, Step] = {}

    def take(step: Step, outputs: dict[str, object]) -> None:
        for model_output, tensor in step.outputs.items():
            tensors[tensor] = outputs[model_output]

    try:
        while waiting or running:
            ready = [s for s in waiting if all(t in tensors for t in s.inputs.values())]
            for step in ready:
                waiting.remove(step)
            if len(ready) == 1 and not running:  # a chain's next step: the request's own task runs it, no hand-off
                [step] = ready
                take(step, await run(step, {model_input: tensors[t] for model_input, t in step.inputs.items()}))
                continue
            for step in ready:
                given = {model_input: tensors[tensor] for model_input, tensor in step.inputs.items()}
                running[asyncio.ensure_future(run(step, given))] = step
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                take(step, task.result())
    finally:
        for task in running:
            task.cancel()
    return tensors
