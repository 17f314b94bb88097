"""Transfer learning in the definition language: bases, heads and fine-tuning.

A transfer target is `model(..., base=..., head=..., fine_tune=...)` in place of `layers=`. The base turns raw
pixels into a feature vector — a `keras.applications` network without its top (`pretrained(...)`), or another
target's trained model cut at a named layer (`target(...)`); the head turns features into class probabilities.
Only declarations live here, hashed into the cache key. Whether a `target(...)` label and layer exist is checked
by `buildsys.graph` once every definition is loaded; the TensorFlow side is `buildsys.actions.transfer`. Nothing
here imports TensorFlow or reads a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import DefinitionError, Location, caller_location, describe

POOLINGS = ("avg", "max")
# The names the compiler gives the layers of a transfer target's graph around the user's input: the base, cut into
# a nested model, and the pretrained base's own preprocessing inside it; then the base's output, where a dependent
# may cut it, and the head's standardisation (its hidden layers and dropouts: `HeadSpec.layer_names`).
BASE_MODEL, FEATURES_LAYER, STANDARDIZE_LAYER = "base", "features", "standardize"
PRETRAINED_PREPROCESSING = {"scale": "pixels", "channels": "channel_axis", "rgb": "grey_to_rgb", "resize": "resize"}
HEAD_ACTIVATIONS = ("relu", "gelu", "tanh", "elu", "selu", "swish")


@dataclass(frozen=True)
class Application:
    """What buildsys needs to know about one `keras.applications` network without importing Keras."""

    module: str  # the keras.applications submodule holding preprocess_input
    features: int  # channels of the last convolutional block: the pooled feature vector's length
    min_size: int  # the smallest height/width the network accepts without its top
    weights_file: str  # the notop ImageNet weights file Keras caches under $KERAS_HOME/models/

    @property
    def layer_names(self) -> tuple[str, str]:
        """What the network adds to the base's graph beside PRETRAINED_PREPROCESSING: the layer running its
        preprocess_input, and the network itself, which Keras names after its module for all of these."""
        return f"{self.module}_preprocess_input", self.module


APPLICATIONS: dict[str, Application] = {
    "InceptionV3": Application("inception_v3", 2048, 75, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "Xception": Application("xception", 2048, 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "ResNet50": Application("resnet50", 2048, 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "VGG16": Application("vgg16", 512, 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "VGG19": Application("vgg19", 512, 32, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


@dataclass(frozen=True)
class PretrainedBase:
    """A `keras.applications` network, top removed, globally pooled, with its own `preprocess_input` in the graph.

    `weights` is "imagenet" (Keras' cache, downloaded on first use) or a weights file; a relative path is taken
    from the definition file's folder and kept here as written, so the key does not depend on where the
    workspace lives (the file's content is keyed separately).
    """

    application: str
    weights: str
    input_size: tuple[int, int] | None
    pooling: str
    location: Location | None = field(default=None, compare=False, repr=False)

    @property
    def info(self) -> Application:
        return APPLICATIONS[self.application]

    def weights_path(self) -> Path | None:
        """The local weights file, resolved against the definition's folder; None for "imagenet"."""
        if self.weights == "imagenet":
            return None
        path = Path(self.weights).expanduser()
        if not path.is_absolute() and self.location is not None:
            path = Path(self.location.path).parent / path
        return path

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "pretrained",
            "application": self.application,
            "weights": self.weights,
            "input_size": list(self.input_size) if self.input_size else None,
            "pooling": self.pooling,
        }


@dataclass(frozen=True)
class TargetBase:
    """Another target's trained model, cut at the output of its layer named `layer` (flattened if not a vector)."""

    label: str
    layer: str
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "target", "label": self.label, "layer": self.layer}


@dataclass(frozen=True)
class HeadSpec:
    """The classifier on top of the features: a regularised softmax layer, optionally after hidden layers.

    Features are standardised first (mean 0, variance 1 over the training features, as Spark's
    LogisticRegression does by default), so the penalty weighs every feature alike. The elastic-net settings map
    onto Keras' weight penalties as `l1 = reg_param * elastic_net_param` and
    `l2 = reg_param * (1 - elastic_net_param) / 2`, which is Spark's objective
    `reg * (alpha * |w|_1 + (1 - alpha) / 2 * |w|_2^2)` added to the mean cross-entropy.
    """

    kind: str  # "logistic_regression" | "mlp"
    units: tuple[int, ...]
    dropout: float
    activation: str
    reg_param: float
    elastic_net_param: float
    location: Location | None = field(default=None, compare=False, repr=False)

    @property
    def l1(self) -> float:
        return self.reg_param * self.elastic_net_param

    @property
    def l2(self) -> float:
        return self.reg_param * (1.0 - self.elastic_net_param) / 2.0

    def hidden_layer_names(self) -> tuple[str, ...]:
        return tuple(f"hidden_{index}" for index in range(1, len(self.units) + 1))

    def dropout_layer_name(self, index: int) -> str:
        return f"dropout_{index}"

    def layer_names(self, output_name: str) -> tuple[str, ...]:
        """Every layer of the head in the compiled graph: standardisation, each hidden layer (and its dropout),
        and the softmax named `output_name`."""
        names = [STANDARDIZE_LAYER]
        for index, hidden in enumerate(self.hidden_layer_names(), start=1):
            names += [hidden, self.dropout_layer_name(index)] if self.dropout else [hidden]
        return (*names, output_name)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "units": list(self.units),
            "dropout": self.dropout,
            "activation": self.activation,
            "reg_param": self.reg_param,
            "elastic_net_param": self.elastic_net_param,
        }


@dataclass(frozen=True)
class FineTuneSpec:
    """After the head converges on frozen features, unfreeze the base's top `layers` weighted layers and train the
    whole graph end to end for `epochs` at `learning_rate` (lower than the head's, so the base is only nudged)."""

    layers: int
    learning_rate: float
    epochs: int
    location: Location | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "learning_rate": self.learning_rate, "epochs": self.epochs}


Base = PretrainedBase | TargetBase


@dataclass(frozen=True)
class TransferSpec:
    """A transfer target's base, head and optional fine-tuning (None: the base stays frozen)."""

    base: Base
    head: HeadSpec
    fine_tune: FineTuneSpec | None

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base.to_json(),
            "head": self.head.to_json(),
            "fine_tune": self.fine_tune.to_json() if self.fine_tune else None,
        }


def _require(condition: bool, message: str, location: Location | None) -> None:
    if not condition:
        raise DefinitionError(message, location)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pretrained(
    application: str, weights: str = "imagenet", input_size: tuple[int, int] | None = None, pooling: str = "avg"
) -> PretrainedBase:
    """A `keras.applications` base: "InceptionV3", "Xception", "ResNet50", "VGG16" or "VGG19".

    Args:
        application: the network's name in `keras.applications`.
        weights: "imagenet" (downloaded into Keras' cache on first use) or the path of a weights file for the
            network without its top (relative paths start at the definition's folder).
        input_size: (height, width) the network runs at; images of another size are resized inside the graph.
            None runs it at the image input's size.
        pooling: "avg" or "max" global pooling over the last convolutional block.

    Example:
        `base=pretrained("InceptionV3", weights="imagenet", input_size=(299, 299))`
    """
    location = caller_location()
    _require(
        application in APPLICATIONS,
        f"pretrained(application=...) expects one of {', '.join(APPLICATIONS)}. Received: {describe(application)}.",
        location,
    )
    _require(
        isinstance(weights, str) and bool(weights),
        f'pretrained(weights=...) expects "imagenet" or the path of a weights file. Received: {describe(weights)}.',
        location,
    )
    if input_size is not None:
        minimum = APPLICATIONS[application].min_size
        _require(
            isinstance(input_size, tuple | list)
            and len(input_size) == 2
            and all(_is_int(side) and side >= minimum for side in input_size),
            f"pretrained({application!r}, input_size=...) expects (height, width), each >= {minimum}. "
            f"Received: {describe(input_size)}.",
            location,
        )
        input_size = (int(input_size[0]), int(input_size[1]))
    _require(
        pooling in POOLINGS,
        f"pretrained(pooling=...) expects one of {', '.join(POOLINGS)}. Received: {describe(pooling)}.",
        location,
    )
    return PretrainedBase(application, weights, input_size, pooling, location)


def target(label: str, layer: str) -> TargetBase:
    """Another target of this workspace, trained and published, cut at the output of its layer named `layer`.

    The dependency is built first when it is missing or stale, and its content hash is part of this target's
    cache key. In a layer-defined target, name the layer where it is declared (`Dense(64, name="features")`); in
    a transfer target, "features" is its base's output and "hidden_1", "hidden_2", ... its head's hidden layers.

    Example:
        `base=target("//model_defs:digits_cnn", layer="features")`
    """
    location = caller_location()
    _require(
        isinstance(label, str) and bool(label.strip()),
        f'target(label=...) expects a label such as "//model_defs:digits_cnn". Received: {describe(label)}.',
        location,
    )
    _require(
        isinstance(layer, str) and layer.isidentifier(),
        f"target(layer=...) expects the name of one of the target's layers. Received: {describe(layer)}.",
        location,
    )
    return TargetBase(label, layer, location)


def _elastic_net(kind: str, reg_param: Any, elastic_net_param: Any, location: Location | None) -> None:
    _require(
        _is_number(reg_param) and reg_param >= 0,
        f"{kind}(reg_param=...) expects a number >= 0. Received: {describe(reg_param)}.",
        location,
    )
    _require(
        _is_number(elastic_net_param) and 0 <= elastic_net_param <= 1,
        f"{kind}(elastic_net_param=...) expects a number in [0, 1] (0: L2 only, 1: L1 only). "
        f"Received: {describe(elastic_net_param)}.",
        location,
    )


def logistic_regression(reg_param: float = 0.0, elastic_net_param: float = 0.0) -> HeadSpec:
    """Multinomial logistic regression on standardised features, elastic-net regularised as in Spark ML.

    Example:
        `head=logistic_regression(reg_param=0.03, elastic_net_param=0.5)`
    """
    location = caller_location()
    _elastic_net("logistic_regression", reg_param, elastic_net_param, location)
    return HeadSpec("logistic_regression", (), 0.0, "relu", float(reg_param), float(elastic_net_param), location)


def mlp(
    units: int | tuple[int, ...] | list[int] = 128,
    dropout: float = 0.0,
    activation: str = "relu",
    reg_param: float = 0.0,
    elastic_net_param: float = 0.0,
) -> HeadSpec:
    """A small multilayer perceptron head: hidden Dense layers (`units`, one int per layer), then the softmax.

    Example:
        `head=mlp(units=128, dropout=0.2)`
    """
    location = caller_location()
    sizes = (units,) if _is_int(units) else units
    _require(
        isinstance(sizes, tuple | list) and len(sizes) > 0 and all(_is_int(size) and size > 0 for size in sizes),
        f"mlp(units=...) expects a positive int or a list of them. Received: {describe(units)}.",
        location,
    )
    _require(
        _is_number(dropout) and 0 <= dropout < 1,
        f"mlp(dropout=...) expects a number in [0, 1). Received: {describe(dropout)}.",
        location,
    )
    _require(
        activation in HEAD_ACTIVATIONS,
        f"mlp(activation=...) expects one of {', '.join(HEAD_ACTIVATIONS)}. Received: {describe(activation)}.",
        location,
    )
    _elastic_net("mlp", reg_param, elastic_net_param, location)
    return HeadSpec(
        "mlp", tuple(sizes), float(dropout), activation, float(reg_param), float(elastic_net_param), location
    )


def fine_tune(layers: int = 2, learning_rate: float = 1e-5, epochs: int = 5) -> FineTuneSpec:
    """Unfreeze the base's top `layers` weighted layers once the head has converged, and train end to end.

    Example:
        `fine_tune=fine_tune(layers=20, learning_rate=1e-5, epochs=3)`
    """
    location = caller_location()
    for name, value in (("layers", layers), ("epochs", epochs)):
        _require(
            _is_int(value) and value > 0,
            f"fine_tune({name}=...) expects a positive int. Received: {describe(value)}.",
            location,
        )
    _require(
        _is_number(learning_rate) and 0 < learning_rate < 1,
        f"fine_tune(learning_rate=...) expects a number in (0, 1). Received: {describe(learning_rate)}.",
        location,
    )
    return FineTuneSpec(layers, float(learning_rate), epochs, location)


def check_transfer(
    base: Any,
    head: Any,
    fine_tune_spec: Any,
    input_shape: tuple[int, ...],
    input_dtype: str,
    scale: float,
    offset: float,
    location: Location | None,
) -> TransferSpec:
    """Checks the arguments `model(...)` received for a transfer target and returns its TransferSpec.

    Raises:
        DefinitionError: for a base, head or fine-tuning setting that is not one, or an image input a
            pretrained network cannot take.
    """
    _require(
        isinstance(base, PretrainedBase | TargetBase),
        f"model(base=...) expects pretrained(...) or target(...). Received: {describe(base)}.",
        location,
    )
    _require(
        isinstance(head, HeadSpec),
        f"model(head=...) expects logistic_regression(...) or mlp(...). Received: {describe(head)}.",
        location,
    )
    _require(
        fine_tune_spec is None or isinstance(fine_tune_spec, FineTuneSpec),
        f"model(fine_tune=...) expects fine_tune(...) or None. Received: {describe(fine_tune_spec)}.",
        location,
    )
    if isinstance(base, PretrainedBase):
        size = base.input_size or tuple(input_shape[:2])
        _require(
            min(size) >= base.info.min_size,
            f"{base.application} needs images of at least {base.info.min_size}x{base.info.min_size}; the image "
            f"input is {input_shape[0]}x{input_shape[1]}. Give pretrained(..., input_size=(H, W)) to resize inside "
            "the graph.",
            base.location,
        )
        _require(
            input_dtype != "uint8" or (scale == 1.0 and offset == 0.0),
            f"pretrained({base.application!r}) takes pixels in 0-255 and applies its own preprocess_input; declare "
            f"image_input(..., scale=1, offset=0). Received: scale={scale:g}, offset={offset:g}.",
            location,
        )
    return TransferSpec(base, head, fine_tune_spec)
