"""The train action: pick a `tf.distribute` strategy, build and compile the model in its scope, and fit.

`auto` picks MirroredStrategy with more than one GPU, OneDeviceStrategy with one, and the default strategy on
CPU. The definition's batch size is per replica; the global batch is per-replica × replicas. `multi-worker` trains
with MultiWorkerMirroredStrategy through `distributed.fit_multi_worker` (Keras' fit fails under it, see there).
Every strategy checkpoints each finished epoch (`checkpoints`) and resumes from the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildsys.actions import tensorflow
from buildsys.actions.checkpoints import (
    BuildInterrupted,
    EpochCheckpoint,
    EpochProgress,
    TrainingCheckpoint,
    interrupted_message,
)
from buildsys.actions.compile import build_model, compile_model
from buildsys.actions.data import Splits, StreamSplits, training_data
from buildsys.actions.distributed import fit_multi_worker, is_multi_worker
from buildsys.actions.numerics import configure
from buildsys.console import warn_once
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError

STRATEGIES = ("auto", "default", "one-device", "mirrored", "multi-worker")
TENSORBOARD_DIR = "tensorboard"  # `build --tensorboard`: in the build's work folder, beside its checkpoint


def choose_strategy(name: str) -> Any:
    """The strategy for `name`; raises BuildsysError when the machine cannot run it."""
    tf = tensorflow()
    if name == "multi-worker":  # before listing devices, which starts the runtime its collectives must configure
        from buildsys.actions.distributed import cluster_spec

        cluster_spec()  # a missing or malformed TF_CONFIG is a one-line error, not a TensorFlow traceback
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name in ("one-device", "mirrored") and not gpus:
        warn_once(f"--strategy {name} found no GPU on this machine (no CUDA driver or device); it runs on the CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one-device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise BuildsysError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def build_in_scope(
    spec: ModelSpec,
    hparams: dict[str, Any],
    seed: int,
    strategy_name: str,
    *,
    mixed_precision: bool = False,
    jit: bool = False,
    deterministic: bool = False,
) -> tuple[Any, Any]:
    """Chooses the strategy, seeds every generator, sets the numerics options, then builds and compiles the model
    inside the strategy's scope.

    The strategy comes first because MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs.
    `jit` forces XLA for the train step (without it Keras decides: XLA on a single GPU, not on CPU).

    Raises:
        BuildsysError: for `jit` with more than one replica, which XLA cannot compile here.
    """
    import keras

    strategy = choose_strategy(strategy_name)
    if jit and (strategy.num_replicas_in_sync > 1 or is_multi_worker(strategy)):
        raise BuildsysError(
            f"--jit needs a single replica, but --strategy {strategy_name} runs {strategy.num_replicas_in_sync}: "
            "XLA cannot compile tf.distribute's per-replica variables and collectives (on CPU not at all); "
            "drop --jit or use --strategy one-device"
        )
    keras.utils.set_random_seed(seed)
    configure(mixed_precision=mixed_precision, deterministic=deterministic)
    with strategy.scope():
        model = compile_model(build_model(spec, hparams), spec, hparams)
        if jit:
            model.jit_compile = True
    return model, strategy


def fit(
    model: Any,
    strategy: Any,
    spec: ModelSpec,
    splits: Splits | StreamSplits,
    seed: int,
    verbose: int,
    *,
    checkpoint: TrainingCheckpoint,
    say: Callable[[str], None],
    tensorboard: Path | None = None,
) -> dict[str, list[float]]:
    """Fits on the training split, validating on the carved-out validation split; returns the per-epoch history.

    Training starts after the last epoch saved in `checkpoint` (its history included) and saves a checkpoint at
    the end of every epoch; `say` gets one line when each epoch ends. Keras' progress bar shows the epoch in
    progress while `verbose` is 1 (a terminal). With `tensorboard`, Keras' TensorBoard callback writes the loss and
    metrics of every epoch there (`train/` and `validation/` event files; fit only, not the multi-worker loop).

    Raises:
        BuildInterrupted: on Ctrl-C, saying which epochs are kept and how to resume.
    """
    epochs = spec.train.epochs
    with strategy.scope():
        initial_epoch, history = checkpoint.restore(model)
    if initial_epoch:
        say(f"resuming after epoch {initial_epoch}/{epochs} from {checkpoint.folder}")
    callbacks = [EpochCheckpoint(checkpoint, history), EpochProgress(say, epochs, bar=verbose == 1)]
    try:
        if is_multi_worker(strategy):
            fit_multi_worker(
                model,
                strategy,
                spec,
                splits,
                seed,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
            )
        elif initial_epoch < epochs:
            if tensorboard is not None:
                import keras

                board = keras.callbacks.TensorBoard(str(tensorboard), write_graph=False, profile_batch=0)
                callbacks.append(board)  # update_freq="epoch": one scalar per epoch
            global_batch = spec.train.batch_size * strategy.num_replicas_in_sync
            train_data, validation = training_data(splits, global_batch, spec.train.shuffle_buffer, seed)
            model.fit(
                train_data,
                validation_data=validation,
                epochs=epochs,
                initial_epoch=initial_epoch,
                verbose=0,  # EpochProgress draws Keras' bar itself, so that a finished epoch leaves one line
                shuffle=False,
                callbacks=callbacks,
            )
    except KeyboardInterrupt:
        raise BuildInterrupted(interrupted_message(checkpoint, epochs)) from None
    return callbacks[0].history


def inference_copy(model: Any, spec: ModelSpec, hparams: dict[str, Any]) -> Any:
    """The trained weights in a float32 model built under the default strategy, compiled for `evaluate`.

    Evaluation, export and the parity check run on this copy: its graph has no mixed-precision casts, no XLA,
    and no distributed variables (a multi-worker model would start collectives that only the chief joins).
    """
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = compile_model(build_model(spec, hparams), spec, hparams)
    copy.set_weights(model.get_weights())
    return copy
