"""The spec objects a definition is made of, and the checks that run when a target is declared.

`model(...)` is the root: it checks the whole tree (arguments, shapes through every layer, class names against
the output units, hyperparameter declarations) and registers the target with the workspace that is loading the
file. Specs are frozen dataclasses so that a target's canonical JSON — and so its cache key — is a pure function of
what the definition says. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextvars
import keyword
import math
import re
from dataclasses import dataclass, field
from typing import Any

from buildsys.dsl.bases import (
    BASE_MODEL,
    FEATURES_LAYER,
    PRETRAINED_PREPROCESSING,
    Base,
    FineTuneSpec,
    HeadSpec,
    PretrainedBase,
    TransferSpec,
    check_transfer,
)
from buildsys.dsl.datasets import DataSource, check_seed
from buildsys.dsl.hp import HyperParameter
from buildsys.dsl.layers import PREPROCESS_LAYER, LayerSpec, graph_layer_names, infer_output_shape
from buildsys.errors import DefinitionError, Location, caller_location, describe

TARGET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")
LOSSES = ("sparse_categorical_crossentropy",)
METRICS = ("accuracy", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy")
INPUT_DTYPES = ("uint8", "float32")


@dataclass(frozen=True)
class ImageInput:
    """The model's input: raw pixels as clients send them; `scale`/`offset` are applied inside the graph."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    offset: float
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "offset": self.offset,
        }


@dataclass(frozen=True)
class TrainSpec:
    """How to fit: optimizer, loss, metrics, epochs, per-replica batch size, validation carve-out, seed."""

    optimizer: str
    learning_rate: float | HyperParameter | None
    loss: str
    metrics: tuple[str, ...]
    epochs: int
    batch_size: int
    validation_split: float
    seed: int
    shuffle_buffer: int
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        rate = self.learning_rate
        return {
            "optimizer": self.optimizer,
            "learning_rate": rate.to_json() if isinstance(rate, HyperParameter) else rate,
            "loss": self.loss,
            "metrics": list(self.metrics),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "validation_split": self.validation_split,
            "shuffle_buffer": self.shuffle_buffer,
        }


@dataclass(frozen=True)
class ExportSpec:
    """Export and verification settings; `max_batch_size` goes into the served model's config."""

    opset: int
    max_batch_size: int
    parity_tolerance: float
    parity_samples: int
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "opset": self.opset,
            "max_batch_size": self.max_batch_size,
            "parity_tolerance": self.parity_tolerance,
            "parity_samples": self.parity_samples,
        }


@dataclass(frozen=True)
class EvaluateSpec:
    """The quality gate: thresholds a candidate's test accuracy must meet before it is published.

    `min_accuracy` is absolute; `max_regression` is how far below the currently published version (measured on
    the same test data) the candidate may fall. None leaves that check out.
    """

    min_accuracy: float | None
    max_regression: float | None
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"min_accuracy": self.min_accuracy, "max_regression": self.max_regression}


@dataclass(frozen=True)
class ModelSpec:
    """A target: everything needed to build, evaluate, export and publish one image classifier."""

    name: str
    data: DataSource
    inputs: ImageInput
    layers: tuple[LayerSpec, ...]
    train: TrainSpec
    export: ExportSpec
    description: str = ""
    output_name: str = "probabilities"
    evaluate: EvaluateSpec | None = None
    location: Location | None = field(default=None, compare=False, repr=False)
    transfer: TransferSpec | None = None  # a base and a head in place of `layers` (buildsys.dsl.bases)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.class_names

    def hyperparameters(self) -> dict[str, HyperParameter]:
        """Every hyperparameter declared in the target, by name (each name declared once)."""
        found: dict[str, HyperParameter] = {}
        values = [value for layer in self.layers for _, value in layer.args]
        values.append(self.train.learning_rate)
        for value in values:
            if not isinstance(value, HyperParameter):
                continue
            previous = found.setdefault(value.name, value)
            if previous != value:
                raise DefinitionError(
                    f"hyperparameter {value.name!r} is declared twice with different settings"
                    f" (first at {previous.location}).",
                    value.location,
                )
        return found

    def default_hparams(self) -> dict[str, Any]:
        return {name: parameter.default for name, parameter in sorted(self.hyperparameters().items())}

    def to_json(self) -> dict[str, Any]:
        """The canonical content of the target; its digest is part of the cache key.

        A quality gate appears only when one is declared, so that targets without one keep the keys (and the
        published versions) they had before gates existed.
        """
        gate = {"evaluate": self.evaluate.to_json()} if self.evaluate is not None else {}
        transfer = {"transfer": self.transfer.to_json()} if self.transfer is not None else {}
        return {
            **gate,
            **transfer,
            "name": self.name,
            "description": self.description,
            "data": self.data.to_json(),
            "inputs": self.inputs.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "train": self.train.to_json(),
            "export": self.export.to_json(),
            "output_name": self.output_name,
        }


def _require(condition: bool, message: str, location: Location | None) -> None:
    if not condition:
        raise DefinitionError(message, location)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_input(
    name: str = "image",
    shape: tuple[int, ...] = (28, 28),
    dtype: str = "uint8",
    scale: float = 1 / 255,
    offset: float = 0.0,
) -> ImageInput:
    """Declares the image input: `(height, width)` for grayscale or `(height, width, channels)`."""
    location = caller_location()
    _require(
        isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name),
        f"image_input(name=...) expects an identifier that is not a Python keyword (it names the serving "
        f"signature's argument). Received: {describe(name)}.",
        location,
    )
    _require(
        isinstance(shape, tuple | list) and len(shape) in (2, 3) and all(_is_int(v) and v > 0 for v in shape),
        f"image_input(shape=...) expects (height, width) or (height, width, channels). Received: {describe(shape)}.",
        location,
    )
    _require(
        len(shape) == 2 or shape[2] in (1, 3),
        f"image_input(shape=...) expects 1 or 3 channels. Received: {shape[-1]}.",
        location,
    )
    _require(
        dtype in INPUT_DTYPES,
        f"image_input(dtype=...) expects one of {INPUT_DTYPES}. Received: {describe(dtype)}.",
        location,
    )
    for label, value in (("scale", scale), ("offset", offset)):
        _require(
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
            f"image_input({label}=...) expects a number. Received: {describe(value)}.",
            location,
        )
    return ImageInput(name, tuple(shape), dtype, float(scale), float(offset), location)


def train(
    optimizer: str = "adam",
    loss: str = "sparse_categorical_crossentropy",
    metrics: tuple[str, ...] | list[str] = ("accuracy",),
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float | HyperParameter | None = None,
    validation_split: float = 0.1,
    seed: int = 1337,
    shuffle_buffer: int = 10_000,
) -> TrainSpec:
    """Training settings. `batch_size` is per replica; `learning_rate=None` keeps the optimizer's default."""
    location = caller_location()
    _require(
        optimizer in OPTIMIZERS,
        f"train(optimizer=...) expects one of {', '.join(OPTIMIZERS)}. Received: {describe(optimizer)}.",
        location,
    )
    _require(
        loss in LOSSES,
        f"train(loss=...) expects one of {', '.join(LOSSES)} (labels are class indices). Received: {describe(loss)}.",
        location,
    )
    _require(
        isinstance(metrics, list | tuple) and all(m in METRICS for m in metrics),
        f"train(metrics=...) expects a list drawn from {', '.join(METRICS)}. Received: {describe(metrics)}.",
        location,
    )
    for label, value in (("epochs", epochs), ("batch_size", batch_size), ("shuffle_buffer", shuffle_buffer)):
        _require(
            _is_int(value) and value > 0,
            f"train({label}=...) expects a positive int. Received: {describe(value)}.",
            location,
        )
    check_seed(seed, "train(seed=...)", location)
    _require(
        isinstance(validation_split, float | int) and 0 <= validation_split < 1,
        f"train(validation_split=...) expects a number in [0, 1). Received: {describe(validation_split)}.",
        location,
    )
    if learning_rate is not None and not isinstance(learning_rate, HyperParameter):
        _require(
            isinstance(learning_rate, float | int) and not isinstance(learning_rate, bool) and learning_rate > 0,
            f"train(learning_rate=...) expects a positive number. Received: {describe(learning_rate)}.",
            location,
        )
    return TrainSpec(
        optimizer,
        learning_rate,
        loss,
        tuple(metrics),
        epochs,
        batch_size,
        float(validation_split),
        seed,
        shuffle_buffer,
        location,
    )


# The ONNX opsets an export may ask for: 17 and up (Keras' own default, 15, lacks what the graphs need), and no
# higher than tf2onnx converts to (1.17: 18; it refuses 19 at export time, after training). A test holds MAX_OPSET
# to the installed tf2onnx's highest, so that an upgrade widens it here.
MIN_OPSET, MAX_OPSET = 17, 18


def export(
    opset: int = MIN_OPSET, max_batch_size: int = 1024, parity_tolerance: float = 1e-4, parity_samples: int = 256
) -> ExportSpec:
    """Export settings. The ONNX opset is set explicitly (>= 17); the parity check compares >= 256 inputs."""
    location = caller_location()
    _require(
        _is_int(opset) and MIN_OPSET <= opset <= MAX_OPSET,
        f"export(opset=...) expects an int in {MIN_OPSET}..{MAX_OPSET}. Received: {describe(opset)}.",
        location,
    )
    _require(
        _is_int(max_batch_size) and max_batch_size > 0,
        f"export(max_batch_size=...) expects a positive int. Received: {describe(max_batch_size)}.",
        location,
    )
    _require(
        isinstance(parity_tolerance, float) and 0 < parity_tolerance <= 1e-2,
        f"export(parity_tolerance=...) expects a float in (0, 0.01]. Received: {describe(parity_tolerance)}.",
        location,
    )
    _require(
        _is_int(parity_samples) and parity_samples >= 256,
        f"export(parity_samples=...) expects an int >= 256. Received: {describe(parity_samples)}.",
        location,
    )
    return ExportSpec(opset, max_batch_size, parity_tolerance, parity_samples, location)


def evaluate(min_accuracy: float | None = None, max_regression: float | None = None) -> EvaluateSpec:
    """The quality gate: a candidate below `min_accuracy`, or worse than the published version by more than
    `max_regression` (on the same test data), is kept under `build-out/rejected/` and not published.

    Example:
        `evaluate(min_accuracy=0.85, max_regression=0.01)`
    """
    location = caller_location()
    for label, value in (("min_accuracy", min_accuracy), ("max_regression", max_regression)):
        _require(
            value is None or (isinstance(value, float | int) and not isinstance(value, bool) and 0 <= value <= 1),
            f"evaluate({label}=...) expects a number in [0, 1] (a fraction, not a percentage). "
            f"Received: {describe(value)}.",
            location,
        )
    return EvaluateSpec(
        None if min_accuracy is None else float(min_accuracy),
        None if max_regression is None else float(max_regression),
        location,
    )


_registered: contextvars.ContextVar[list[ModelSpec] | None] = contextvars.ContextVar("buildsys_targets", default=None)


def collect_targets() -> tuple[list[ModelSpec], contextvars.Token]:
    """Starts collecting the targets that `model(...)` calls declare; used by the workspace loader."""
    targets: list[ModelSpec] = []
    return targets, _registered.set(targets)


def stop_collecting(token: contextvars.Token) -> None:
    _registered.reset(token)


def model(
    name: str,
    data: DataSource,
    inputs: ImageInput,
    layers: list[LayerSpec] | tuple[LayerSpec, ...] = (),
    train: TrainSpec | None = None,
    export: ExportSpec | None = None,
    description: str = "",
    evaluate: EvaluateSpec | None = None,
    base: Base | None = None,
    head: HeadSpec | None = None,
    fine_tune: FineTuneSpec | None = None,
) -> ModelSpec:
    """Declares a target. Checks it completely, so that a bad definition fails before any work.

    A transfer target gives `base=` and `head=` (and optionally `fine_tune=`) instead of `layers=`; see
    `buildsys.dsl.bases`.

    Raises:
        DefinitionError: with the file and line of the offending value.
    """
    location = caller_location()
    _require(
        isinstance(name, str) and TARGET_NAME.match(name) is not None,
        f"model(name=...) expects lowercase letters, digits and '_' starting with a letter. "
        f"Received: {describe(name)}.",
        location,
    )
    _require(
        isinstance(data, DataSource),
        f"model(data=...) expects a datasets.*() source. Received: {describe(data)}.",
        location,
    )
    _require(
        isinstance(inputs, ImageInput),
        f"model(inputs=...) expects image_input(...). Received: {describe(inputs)}.",
        location,
    )
    _require(
        isinstance(train, TrainSpec),
        f"model(train=...) expects train(...). Received: {describe(train)}.",
        location,
    )
    transfer = None
    if base is None:
        _require(
            isinstance(layers, list | tuple) and layers and all(isinstance(layer, LayerSpec) for layer in layers),
            "model(layers=...) expects a non-empty list of layers such as Dense(10, activation='softmax').",
            location,
        )
        _require(
            head is None and fine_tune is None,
            "model(head=..., fine_tune=...) need a base: add base=pretrained(...) or base=target(...).",
            location,
        )
    else:
        _require(
            not layers,
            "a transfer target takes head=logistic_regression(...) or head=mlp(...) instead of layers=[...].",
            location,
        )
        transfer = check_transfer(
            base, head, fine_tune, inputs.shape, inputs.dtype, inputs.scale, inputs.offset, location
        )
    _require(
        evaluate is None or isinstance(evaluate, EvaluateSpec),
        f"model(evaluate=...) expects evaluate(min_accuracy=..., max_regression=...). Received: {describe(evaluate)}.",
        location,
    )
    spec = ModelSpec(
        name,
        data,
        inputs,
        tuple(layers),
        train,
        export or ExportSpec(MIN_OPSET, 1024, 1e-4, 256, location),
        description,
        evaluate=evaluate,
        location=location,
        transfer=transfer,
    )
    validate(spec)
    collected = _registered.get()
    if collected is not None:
        collected.append(spec)
    return spec


def _check_layer_names(spec: ModelSpec) -> None:
    """Every layer of the compiled graph has its own name (Keras refuses a model that repeats one): the input,
    its preprocessing layer, and each layer as `graph_layer_names` names it.

    Raises:
        DefinitionError: at the line of the layer whose name is taken, saying by what.
    """
    taken = {PREPROCESS_LAYER: "the input's preprocessing layer"}
    _require(
        spec.inputs.name not in taken,
        f"image_input(name={spec.inputs.name!r}) is the name of the input's preprocessing layer; choose another.",
        spec.inputs.location,
    )
    taken[spec.inputs.name] = "the input"
    names = graph_layer_names(spec.layers, spec.output_name)
    for position, (layer, name) in enumerate(zip(spec.layers, names, strict=True), start=1):
        _require(
            name not in taken,
            f"layer {position} ({layer.kind}) would be named {name!r}, which {taken.get(name)} already is; names in "
            "a model must be unique (give one of them another name=...).",
            layer.location,
        )
        taken[name] = f"layer {position} ({layer.kind})"


def validate(spec: ModelSpec, hparams: dict[str, Any] | None = None) -> tuple[int, ...]:
    """Checks shapes through every layer and the output against the class names; returns the output shape.

    Raises:
        DefinitionError: naming the line of the first layer that does not fit.
    """
    values = {**spec.default_hparams(), **(hparams or {})}
    data_shape, input_shape = tuple(spec.data.image_shape), tuple(spec.inputs.shape)
    _require(
        input_shape in (data_shape, (*data_shape, 1)),
        f"image_input(shape={input_shape}) does not fit the data, whose images are shaped {data_shape}.",
        spec.inputs.location,
    )
    if spec.transfer is not None:  # the head is built to output one probability per class
        taken = (BASE_MODEL, FEATURES_LAYER, *spec.transfer.head.layer_names(spec.output_name))
        if isinstance(spec.transfer.base, PretrainedBase):
            taken += (*PRETRAINED_PREPROCESSING.values(), *spec.transfer.base.info.layer_names)
        _require(
            spec.inputs.name not in taken,
            f"image_input(name={spec.inputs.name!r}) is the name of a layer of the transfer target's graph "
            f"({', '.join(taken)}); choose another.",
            spec.inputs.location,
        )
        return (len(spec.class_names),)
    _check_layer_names(spec)
    shape = input_shape
    for layer in spec.layers:
        shape = infer_output_shape(layer, shape, values)
    last = spec.layers[-1]
    classes = len(spec.class_names)
    _require(
        shape == (classes,),
        f"the last layer outputs shape {shape} but the data has {classes} class names; the output must be "
        f"({classes},), e.g. Dense({classes}, activation='softmax').",
        last.location,
    )
    _require(
        last.arguments.get("activation") == "softmax",
        f"the last layer must output class probabilities (activation='softmax'). Received: {last}.",
        last.location,
    )
    return shape
