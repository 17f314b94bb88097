"""The train action: pick a `tf.distribute` strategy, build and compile the model in its scope, and fit.

`auto` picks MirroredStrategy with more than one GPU, OneDeviceStrategy with one, and the default strategy on
CPU. The definition's batch size is per replica; the global batch is per-replica × replicas.
"""

from __future__ import annotations

from typing import Any

from buildsys.actions import tensorflow
from buildsys.actions.compile import build_model, compile_model
from buildsys.actions.data import Splits, make_dataset
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError

STRATEGIES = ("auto", "default", "one-device", "mirrored")


def choose_strategy(name: str) -> Any:
    """The strategy for `name`; raises BuildsysError when the machine cannot run it."""
    tf = tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one-device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise BuildsysError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def build_in_scope(spec: ModelSpec, hparams: dict[str, Any], seed: int, strategy_name: str) -> tuple[Any, Any]:
    """Seeds every generator, then builds and compiles the model inside the strategy's scope."""
    import keras

    keras.utils.set_random_seed(seed)
    strategy = choose_strategy(strategy_name)
    with strategy.scope():
        model = compile_model(build_model(spec, hparams), spec, hparams)
    return model, strategy


def fit(model: Any, strategy: Any, spec: ModelSpec, splits: Splits, seed: int, verbose: int) -> dict[str, list[float]]:
    """Fits on the training split, validating on the carved-out validation split; returns the per-epoch history.

    Keras' progress bar shows while `verbose` is 1 (one line per epoch with 2).
    """
    global_batch = spec.train.batch_size * strategy.num_replicas_in_sync
    train_data = make_dataset(
        splits.x_train, splits.y_train, global_batch, shuffle_buffer=spec.train.shuffle_buffer, seed=seed
    )
    validation = make_dataset(splits.x_val, splits.y_val, global_batch) if len(splits.x_val) else None
    history = model.fit(
        train_data, validation_data=validation, epochs=spec.train.epochs, verbose=verbose, shuffle=False
    )
    return {key: [float(value) for value in values] for key, values in history.history.items()}
