"""Hyperparameters declared inline in a definition (`hp.Int`, `hp.Float`, `hp.Choice`, `hp.Boolean`).

A hyperparameter stands where a value would: `Dense(hp.Int("units", 32, 512, default=128))`. The build compiles
it to a value (its default, or one chosen by tuning); the tuner turns the same declarations into a KerasTuner
search space, so the model is written once. Values are resolved with `resolve`, which the compiler and the
cache key share.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from buildsys.errors import DefinitionError, Location, caller_location, describe

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class HyperParameter:
    """One named, tunable value with the default a plain build uses."""

    name: str
    kind: str  # "int" | "float" | "choice" | "boolean"
    default: Any
    min_value: float | None = None
    max_value: float | None = None
    step: float | None = None
    sampling: str = "linear"
    values: tuple[Any, ...] = ()
    location: Location | None = field(default=None, compare=False, repr=False)

    def check(self, value: Any) -> None:
        """Raises DefinitionError unless `value` lies in this hyperparameter's space."""
        where = f"hyperparameter {self.name!r}"
        if self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and self.min_value <= value <= self.max_value
            ok = ok and (self.step is None or (value - self.min_value) % self.step == 0)
        elif self.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and self.min_value <= value <= self.max_value
        elif self.kind == "boolean":
            ok = isinstance(value, bool)
        else:
            ok = value in self.values
        if not ok:
            raise DefinitionError(
                f"{where} does not allow the value {describe(value)}; it allows {self.allowed()}.", self.location
            )

    def allowed(self) -> str:
        """The space in words (`integers from 16 to 256 in steps of 16`), so that a refused value says what fits."""
        if self.kind == "int":
            steps = f" in steps of {self.step:g}" if self.step not in (None, 1) else ""
            return f"integers from {self.min_value:g} to {self.max_value:g}{steps}"
        if self.kind == "float":
            return f"numbers from {self.min_value:g} to {self.max_value:g}"
        if self.kind == "boolean":
            return "true or false"
        return "one of " + ", ".join(json.dumps(value) for value in self.values)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "default": self.default}
        if self.kind in ("int", "float"):
            data.update(min_value=self.min_value, max_value=self.max_value, step=self.step, sampling=self.sampling)
        if self.kind == "choice":
            data["values"] = list(self.values)
        return data


def _check_name(name: object, location: Location | None) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"a hyperparameter name must be an identifier such as 'units'. Received: {describe(name)}.",
            location,
        )


def _check_range(kind: str, name: str, min_value, max_value, step, sampling, location) -> None:
    number = int if kind == "int" else (int, float)
    for label, value in (("min_value", min_value), ("max_value", max_value)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise DefinitionError(
                f"hp.{kind.capitalize()}({name!r}) expects {label} to be {'an int' if kind == 'int' else 'a number'}."
                f" Received: {describe(value)}.",
                location,
            )
    if min_value >= max_value:
        raise DefinitionError(
            f"hp.{kind.capitalize()}({name!r}) expects min_value < max_value. Received: {min_value}, {max_value}.",
            location,
        )
    if sampling not in ("linear", "log", "reverse_log"):
        raise DefinitionError(
            f"hp.{kind.capitalize()}({name!r}) expects sampling 'linear', 'log' or 'reverse_log'."
            f" Received: {describe(sampling)}.",
            location,
        )
    if sampling != "linear" and min_value <= 0:
        raise DefinitionError(f"hp.{kind.capitalize()}({name!r}) with log sampling needs min_value > 0.", location)
    if step is not None and (not isinstance(step, number) or step <= 0 or not math.isfinite(step)):
        raise DefinitionError(
            f"hp.{kind.capitalize()}({name!r}) expects a positive step. Received: {describe(step)}.", location
        )


def _numeric(kind: str, name: str, min_value, max_value, default, step, sampling) -> HyperParameter:
    location = caller_location()
    _check_name(name, location)
    _check_range(kind, name, min_value, max_value, step, sampling, location)
    parameter = HyperParameter(name, kind, default, min_value, max_value, step, sampling, location=location)
    parameter.check(default)
    return parameter


def Int(  # noqa: N802 - named like KerasTuner's hp.Int, which users know
    name: str, min_value: int, max_value: int, *, default: int, step: int | None = None, sampling: str = "linear"
) -> HyperParameter:
    """An integer in [min_value, max_value] (on `step` when given); `default` is what an untuned build uses."""
    return _numeric("int", name, min_value, max_value, default, step, sampling)


def Float(  # noqa: N802
    name: str,
    min_value: float,
    max_value: float,
    *,
    default: float,
    step: float | None = None,
    sampling: str = "linear",
) -> HyperParameter:
    """A float in [min_value, max_value]; use `sampling="log"` for learning rates."""
    return _numeric("float", name, min_value, max_value, default, step, sampling)


def Choice(name: str, values: list | tuple, *, default: Any) -> HyperParameter:  # noqa: N802
    """One of a fixed list of ints, floats, strings or booleans."""
    location = caller_location()
    _check_name(name, location)
    if not isinstance(values, list | tuple) or not values:
        raise DefinitionError(f"hp.Choice({name!r}) expects a non-empty list of values.", location)
    parameter = HyperParameter(name, "choice", default, values=tuple(values), location=location)
    parameter.check(default)
    return parameter


def Boolean(name: str, *, default: bool) -> HyperParameter:  # noqa: N802
    """True or False, e.g. whether to use a layer."""
    location = caller_location()
    _check_name(name, location)
    parameter = HyperParameter(name, "boolean", default, location=location)
    parameter.check(default)
    return parameter


def resolve(value: Any, values: dict[str, Any]) -> Any:
    """Replaces hyperparameters (also inside lists and tuples) by their values; others pass through."""
    if isinstance(value, HyperParameter):
        return values.get(value.name, value.default)
    if isinstance(value, list | tuple):
        return type(value)(resolve(item, values) for item in value)
    return value
