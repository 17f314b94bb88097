"""Triton's ensemble models (``platform: "ensemble"``): a pipeline of the repository's other models, whose steps
config.pbtxt's ``ensemble_scheduling`` wires together by tensor name (each step's ``input_map`` from its model's
input to an ensemble tensor, ``output_map`` from its model's output to one).

An ensemble has no file of its own (its version folders are empty, as in Triton). Its steps are checked when it
loads: each names another model and a version (-1: the newest), every tensor is produced once, every tensor a step
takes is an input of the ensemble or another step's output, every output of the ensemble is produced, every input
is used, and the steps form no cycle. A request runs each step as a request to its model as soon as the tensors
it takes are there, so independent steps run at once and every step's model batches it with its other requests;
the answer is the ensemble's outputs. This module knows the wiring and the order; the data plane runs the steps.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelrepo import MODEL_NAME
from serving.codec import shown
from serving.errors import ModelLoadError
from serving.protocol import model_config_pb2

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True)
class Step:
    """One step: the model it runs (``version`` "" for the newest), and its model's tensors by ensemble tensor."""

    model: str
    version: str
    inputs: dict[str, str]  # the model's input -> the ensemble tensor it takes
    outputs: dict[str, str]  # the model's output -> the ensemble tensor it makes


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
    try:
        while waiting or running:
            for step in [s for s in waiting if all(t in tensors for t in s.inputs.values())]:
                waiting.remove(step)
                given = {model_input: tensors[tensor] for model_input, tensor in step.inputs.items()}
                running[asyncio.ensure_future(run(step, given))] = step
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                outputs = task.result()
                for model_output, tensor in step.outputs.items():
                    tensors[tensor] = outputs[model_output]
    finally:
        for task in running:
            task.cancel()
    return tensors
