"""The compile action: a spec becomes a Keras 3 functional model with named input and output.

Preprocessing (the input's scale and offset) is a `Rescaling` layer inside the graph, so exported models take
raw pixels and no client re-implements it. The last layer is named after the spec's output (`probabilities`),
which is the name the SavedModel signature and the ONNX graph carry.
"""

from __future__ import annotations

from typing import Any

from buildsys.actions import tensorflow
from buildsys.dsl.hp import resolve
from buildsys.dsl.layers import PREPROCESS_LAYER, WeightRule, graph_layer_names
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError


def _weight_rule(rule: WeightRule) -> Any:
    import keras

    arguments = dict(rule.args)
    if rule.kind == "max_norm":
        return keras.constraints.MaxNorm(max_value=arguments["max_value"], axis=arguments["axis"])
    return keras.regularizers.L1L2(l1=arguments["l1"], l2=arguments["l2"])


def build_model(spec: ModelSpec, hparams: dict[str, Any]) -> Any:
    """The uncompiled Keras model for `spec` with hyperparameters set to `hparams`.

    Raises:
        BuildsysError: for a transfer target, whose base and head `buildsys.actions.transfer` builds.
    """
    if spec.transfer is not None:
        raise BuildsysError(f"{spec.name} is a transfer target (base=...); buildsys.actions.transfer builds it")
    tensorflow()
    import keras

    image = keras.Input(shape=spec.inputs.shape, dtype=spec.inputs.dtype, name=spec.inputs.name)
    tensor = keras.layers.Rescaling(spec.inputs.scale, spec.inputs.offset, name=PREPROCESS_LAYER)(image)
    names = graph_layer_names(spec.layers, spec.output_name)
    for index, layer in enumerate(spec.layers):
        arguments = {name: resolve(value, hparams) for name, value in layer.args}
        arguments["name"] = names[index]
        arguments = {
            name: _weight_rule(value) if isinstance(value, WeightRule) else value for name, value in arguments.items()
        }
        last = index == len(spec.layers) - 1
        if last and keras.mixed_precision.global_policy().compute_dtype != "float32":
            arguments["dtype"] = "float32"  # mixed precision: a stable softmax, float32 outputs
        tensor = getattr(keras.layers, layer.kind)(**arguments)(tensor)
    return keras.Model(inputs=image, outputs=tensor, name=spec.name)


def compile_model(model: Any, spec: ModelSpec, hparams: dict[str, Any]) -> Any:
    """Attaches optimizer, loss and metrics; the learning rate may be a hyperparameter."""
    import keras

    optimizer = keras.optimizers.get(spec.train.optimizer)
    rate = resolve(spec.train.learning_rate, hparams)
    if rate is not None:
        optimizer.learning_rate = rate
    model.compile(optimizer=optimizer, loss=spec.train.loss, metrics=list(spec.train.metrics))
    return model


def parameter_count(model: Any) -> int:
    return int(model.count_params())
