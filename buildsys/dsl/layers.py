"""The layers a definition may use, their arguments, and shape inference — all without TensorFlow.

Each layer is declared once in `LAYER_TYPES` (arguments with their checks, and how it changes a shape). The
constructors (`Dense(...)`, `Conv2D(...)`) only record a `LayerSpec` with the caller's file and line; checking
happens here, so a wrong argument or a shape that does not fit is reported against the definition's line before
TensorFlow is ever imported. The compiler maps a `LayerSpec` to the Keras layer of the same name, named as
`graph_layer_names` says (so the definition language can refuse two layers of one name before Keras would).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from buildsys.dsl.hp import HyperParameter
from buildsys.errors import DefinitionError, Location, caller_location, describe

Shape = tuple[int, ...]

ACTIVATIONS = (
    "relu", "sigmoid", "softmax", "tanh", "linear", "elu", "selu", "gelu", "swish", "silu", "softplus",
    "leaky_relu", "relu6", "hard_sigmoid", "mish",
)  # fmt: skip


@dataclass(frozen=True)
class WeightRule:
    """A kernel constraint or regularizer, e.g. `max_norm(3)` or `l1_l2(l1=0.01, l2=0.01)`."""

    kind: str  # "max_norm" | "l1" | "l2" | "l1_l2"
    args: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.args)}


def _positive_number(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise DefinitionError(f"{name}(...) expects a positive number. Received: {describe(value)}.", caller_location())
    return float(value)


def max_norm(max_value: float = 2.0, axis: int = 0) -> WeightRule:
    """Keras' MaxNorm kernel constraint, as in the classic CIFAR-10 network."""
    return WeightRule("max_norm", (("max_value", _positive_number("max_norm", max_value)), ("axis", axis)))


def l1_l2(l1: float = 0.0, l2: float = 0.0) -> WeightRule:
    """Elastic-net weight penalty (`l1`, `l2` >= 0)."""
    for value in (l1, l2):
        if not isinstance(value, int | float) or value < 0:
            raise DefinitionError(f"l1_l2(...) expects numbers >= 0. Received: {describe(value)}.", caller_location())
    return WeightRule("l1_l2", (("l1", float(l1)), ("l2", float(l2))))


def _plain(value: Any) -> Any:
    """Layer arguments as plain JSON values (hyperparameters and weight rules by their descriptions)."""
    if isinstance(value, HyperParameter | WeightRule):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class LayerSpec:
    """One layer as written in a definition: its Keras class name and its arguments."""

    kind: str
    args: tuple[tuple[str, Any], ...]
    location: Location | None = field(default=None, compare=False, repr=False)

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.kind, **{name: _plain(value) for name, value in self.args}}

    def __str__(self) -> str:
        shown = ", ".join(f"{name}={value.name if isinstance(value, HyperParameter) else value!r}"
                          for name, value in self.args)  # fmt: skip
        return f"{self.kind}({shown})"


# --- argument checks: each returns None when fine, or what was expected --------------------------------------


def _positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive int"


def _rate(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
    return None if ok else "a number in [0, 1)"


def _positive_float(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive number"


def _activation(value: Any) -> str | None:
    return None if value is None or value in ACTIVATIONS else f"one of {', '.join(ACTIVATIONS)} or None"


def _pair(value: Any) -> str | None:
    if _positive_int(value) is None:
        return None
    ok = isinstance(value, tuple | list) and len(value) == 2 and all(_positive_int(v) is None for v in value)
    return None if ok else "a positive int or a pair of positive ints"


def _optional_pair(value: Any) -> str | None:
    return None if value is None else _pair(value)


def _padding(value: Any) -> str | None:
    return None if value in ("valid", "same") else "'valid' or 'same'"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def _constraint(value: Any) -> str | None:
    ok = value is None or (isinstance(value, WeightRule) and value.kind == "max_norm")
    return None if ok else "max_norm(...) or None"


def _regularizer(value: Any) -> str | None:
    ok = value is None or (isinstance(value, WeightRule) and value.kind == "l1_l2")
    return None if ok else "l1_l2(...) or None"


def _name(value: Any) -> str | None:
    ok = value is None or (isinstance(value, str) and value.isidentifier())
    return None if ok else "an identifier such as 'features'"


def _target_shape(value: Any) -> str | None:
    ok = (
        isinstance(value, tuple | list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1) for v in value)
    )
    ok = ok and list(value).count(-1) <= 1
    return None if ok else "a tuple of positive ints (at most one -1)"


def _non_negative_float(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return None if ok else "a number >= 0"


# --- shape inference: (input shape without batch, arguments) -> output shape, or ValueError --------------------


def _as_pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _spatial(shape: Shape, kind: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(
            f"{kind} expects an input shaped (height, width, channels). Received input shape {shape}. "
            f"Declare the image input with a channel axis, e.g. shape={(*shape, 1)}, or add Reshape first."
        )
    return shape


def _window_output(size: int, window: int, stride: int, padding: str) -> int:
    return math.ceil(size / stride) if padding == "same" else (size - window) // stride + 1


def _conv2d_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    height, width, _ = _spatial(shape, "Conv2D")
    kernel = _as_pair(args["kernel_size"])
    strides = _as_pair(args.get("strides", 1))
    padding = args.get("padding", "valid")
    out = (
        _window_output(height, kernel[0], strides[0], padding),
        _window_output(width, kernel[1], strides[1], padding),
    )
    if min(out) < 1:
        raise ValueError(f"a {kernel} kernel does not fit an input of {height}x{width} with padding='{padding}'")
    return (*out, args["filters"])


def _pool2d_shape(kind: str) -> Callable[[Shape, dict[str, Any]], Shape]:
    def infer(shape: Shape, args: dict[str, Any]) -> Shape:
        height, width, channels = _spatial(shape, kind)
        pool = _as_pair(args.get("pool_size", 2))
        strides = _as_pair(args.get("strides") or pool)
        padding = args.get("padding", "valid")
        out = (
            _window_output(height, pool[0], strides[0], padding),
            _window_output(width, pool[1], strides[1], padding),
        )
        if min(out) < 1:
            raise ValueError(f"a {pool} pool does not fit an input of {height}x{width}")
        return (*out, channels)

    return infer


def _global_pool_shape(kind: str) -> Callable[[Shape, dict[str, Any]], Shape]:
    return lambda shape, args: (_spatial(shape, kind)[2],)


def _reshape_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    target = tuple(args["target_shape"])
    size = math.prod(shape)
    known = math.prod(v for v in target if v != -1)
    if -1 in target:
        if size % known:
            raise ValueError(f"cannot reshape {shape} ({size} values) to {target}")
        return tuple(size // known if v == -1 else v for v in target)
    if known != size:
        raise ValueError(f"cannot reshape {shape} ({size} values) to {target} ({known} values)")
    return target


def _dense_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    return (*shape[:-1], args["units"])


def _same_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    return shape


@dataclass(frozen=True)
class LayerType:
    """What a layer accepts (argument → check, in positional order) and how it transforms shapes."""

    arguments: dict[str, Callable[[Any], str | None]]
    required: tuple[str, ...]
    infer_shape: Callable[[Shape, dict[str, Any]], Shape]


_COMMON = {"name": _name}
_WEIGHTED = {"use_bias": _bool, "kernel_constraint": _constraint, "kernel_regularizer": _regularizer}

LAYER_TYPES: dict[str, LayerType] = {
    "Dense": LayerType(
        {"units": _positive_int, "activation": _activation, **_WEIGHTED, **_COMMON}, ("units",), _dense_shape
    ),
    "Conv2D": LayerType(
        {
            "filters": _positive_int,
            "kernel_size": _pair,
            "strides": _pair,
            "padding": _padding,
            "activation": _activation,
            **_WEIGHTED,
            **_COMMON,
        },
        ("filters", "kernel_size"),
        _conv2d_shape,
    ),  # fmt: skip
    "MaxPooling2D": LayerType(
        {"pool_size": _pair, "strides": _optional_pair, "padding": _padding, **_COMMON},
        (),
        _pool2d_shape("MaxPooling2D"),
    ),
    "AveragePooling2D": LayerType(
        {"pool_size": _pair, "strides": _optional_pair, "padding": _padding, **_COMMON},
        (),
        _pool2d_shape("AveragePooling2D"),
    ),
    "GlobalAveragePooling2D": LayerType(dict(_COMMON), (), _global_pool_shape("GlobalAveragePooling2D")),
    "GlobalMaxPooling2D": LayerType(dict(_COMMON), (), _global_pool_shape("GlobalMaxPooling2D")),
    "Flatten": LayerType(dict(_COMMON), (), lambda shape, args: (math.prod(shape),)),
    "Reshape": LayerType({"target_shape": _target_shape, **_COMMON}, ("target_shape",), _reshape_shape),
    "Dropout": LayerType({"rate": _rate, "seed": _positive_int, **_COMMON}, ("rate",), _same_shape),
    "BatchNormalization": LayerType({"momentum": _rate, "epsilon": _positive_float, **_COMMON}, (), _same_shape),
    "Activation": LayerType({"activation": _activation, **_COMMON}, ("activation",), _same_shape),
    "LeakyReLU": LayerType({"negative_slope": _non_negative_float, **_COMMON}, (), _same_shape),
}


def _check_argument(kind: str, name: str, check: Callable[[Any], str | None], value: Any, location) -> None:
    values = [value]
    if isinstance(value, HyperParameter):
        values = [value.default, *value.values] if value.kind == "choice" else [value.default]
        if value.kind in ("int", "float"):
            values += [value.min_value, value.max_value]
    for candidate in values:
        expected = check(candidate)
        if expected is not None:
            source = f" (from hyperparameter {value.name!r})" if isinstance(value, HyperParameter) else ""
            raise DefinitionError(
                f"{kind}({name}=...) expects {expected}. Received: {describe(candidate)}{source}.", location
            )


def _make_constructor(kind: str, layer_type: LayerType) -> Callable[..., LayerSpec]:
    names = tuple(layer_type.arguments)

    def constructor(*args: Any, **kwargs: Any) -> LayerSpec:
        location = caller_location()
        if len(args) > len(names):
            raise DefinitionError(
                f"{kind}() takes at most {len(names)} positional arguments. Received: {len(args)}.", location
            )
        given = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in layer_type.arguments:
                raise DefinitionError(
                    f"{kind}() got an unexpected argument {name!r}. Expected one of: {', '.join(names)}.",
                    location,
                )
            if name in given:
                raise DefinitionError(f"{kind}() got two values for {name!r}.", location)
            given[name] = value
        missing = [name for name in layer_type.required if name not in given]
        if missing:
            raise DefinitionError(f"{kind}() is missing the argument {missing[0]!r}.", location)
        for name, value in given.items():
            _check_argument(kind, name, layer_type.arguments[name], value, location)
        return LayerSpec(kind, tuple(given.items()), location)

    constructor.__name__ = constructor.__qualname__ = kind
    constructor.__doc__ = f"Keras' `{kind}` layer, checked against its arguments: {', '.join(names)}."
    return constructor


def infer_output_shape(layer: LayerSpec, input_shape: Shape, hparams: dict[str, Any]) -> Shape:
    """The layer's output shape (without the batch axis) for the given hyperparameter values.

    Raises:
        DefinitionError: naming the layer's line when the shape does not fit.
    """
    from buildsys.dsl.hp import resolve

    arguments = {name: resolve(value, hparams) for name, value in layer.args}
    try:
        return tuple(LAYER_TYPES[layer.kind].infer_shape(tuple(input_shape), arguments))
    except ValueError as error:
        text = str(error).rstrip(".")
        if not text.startswith(layer.kind):
            text = f"{layer.kind}: {text}"
        raise DefinitionError(f"{text}.", layer.location) from None


Dense = _make_constructor("Dense", LAYER_TYPES["Dense"])
Conv2D = _make_constructor("Conv2D", LAYER_TYPES["Conv2D"])
MaxPooling2D = _make_constructor("MaxPooling2D", LAYER_TYPES["MaxPooling2D"])
AveragePooling2D = _make_constructor("AveragePooling2D", LAYER_TYPES["AveragePooling2D"])
GlobalAveragePooling2D = _make_constructor("GlobalAveragePooling2D", LAYER_TYPES["GlobalAveragePooling2D"])
GlobalMaxPooling2D = _make_constructor("GlobalMaxPooling2D", LAYER_TYPES["GlobalMaxPooling2D"])
Flatten = _make_constructor("Flatten", LAYER_TYPES["Flatten"])
Reshape = _make_constructor("Reshape", LAYER_TYPES["Reshape"])
Dropout = _make_constructor("Dropout", LAYER_TYPES["Dropout"])
BatchNormalization = _make_constructor("BatchNormalization", LAYER_TYPES["BatchNormalization"])
Activation = _make_constructor("Activation", LAYER_TYPES["Activation"])
LeakyReLU = _make_constructor("LeakyReLU", LAYER_TYPES["LeakyReLU"])


PREPROCESS_LAYER = "preprocess"  # the Rescaling layer that starts every compiled model, after its input


def graph_layer_names(layers: Sequence[LayerSpec], output_name: str) -> list[str]:
    """The name of each layer in the compiled Keras graph: its `name=` when given; else Keras' own default name
    (`conv2d`, `conv2d_1`, `dense`), counted per model instead of per process; the last layer, when not named,
    `output_name`, which the SavedModel signature and the ONNX graph carry.

    Keras numbers auto-named layers across every model a process builds, so the build's second model (the
    inference copy that the report describes) would show `conv2d_2` where `compile` shows `conv2d`. Naming each
    layer from its position in the definition gives every build of a model the same names.
    """
    seen: dict[str, int] = {}
    names = []
    for position, layer in enumerate(layers):
        base = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", layer.kind)).lower()
        default = base if base not in seen else f"{base}_{seen[base]}"
        seen[base] = seen.get(base, 0) + 1
        given = dict(layer.args).get("name")
        names.append(given or (output_name if position == len(layers) - 1 else default))
    return names
