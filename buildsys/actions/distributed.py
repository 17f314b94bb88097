"""Multi-worker training: the cluster description (TF_CONFIG) and the training loop that runs across workers.

`model.fit` under `MultiWorkerMirroredStrategy` fails with TensorFlow 2.21 + Keras 3.15 (`ValueError: Attempt to
convert a value (PerReplica...)` from the trainer's symbolic build and then its metrics reduction;
keras-team/keras#20585, tensorflow/tensorflow#72388). So multi-worker builds train with a custom loop that uses only
public `tf.distribute` API: the same Keras model and optimizer built in `strategy.scope()`, the dataset distributed
with `experimental_distribute_dataset`, and a `tf.function` step calling `strategy.run` on a replica step
(GradientTape, per-example loss averaged over the global batch with `tf.nn.compute_average_loss`). The loop calls
the same Keras callbacks as `fit` (epoch progress, per-epoch checkpoints), and its history has fit's keys (`loss`,
metrics, `val_loss`, `val_*`).

The TF_CONFIG helpers at the top import no TensorFlow: planning a build needs the worker count for the cache key.
"""

from __future__ import annotations

import json
import os
from typing import Any

from buildsys.actions import data as data_action
from buildsys.actions import tensorflow
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError

METRIC_FUNCTIONS = {
    "accuracy": "sparse_categorical_accuracy",
    "sparse_categorical_accuracy": "sparse_categorical_accuracy",
    "sparse_top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy",
}


class ClusterError(BuildsysError):
    """TF_CONFIG or the --cluster/--task flags do not describe a usable cluster."""

    exit_code = 2


def tf_config_from_flags(cluster: str, task: str) -> str:
    """`--cluster HOST:PORT,HOST:PORT --task chief:0` (or `worker:N`) as the standard TF_CONFIG JSON.

    The first address is the chief, the rest are workers 0, 1, ... — the layout TensorFlow's documentation uses.
    """
    addresses = [address.strip() for address in cluster.split(",") if address.strip()]
    if len(addresses) < 2 or any(":" not in address for address in addresses):
        raise ClusterError(
            f"--cluster expects two or more HOST:PORT addresses separated by commas; received {cluster!r}"
        )
    kind, _, index = task.partition(":")
    workers = len(addresses) - 1
    if kind not in ("chief", "worker") or not index.isdigit() or int(index) >= (1 if kind == "chief" else workers):
        raise ClusterError(f"--task expects chief:0 or worker:N with N < {workers}; received {task!r}")
    config = {
        "cluster": {"chief": addresses[:1], "worker": addresses[1:]},
        "task": {"type": kind, "index": int(index)},
    }
    return json.dumps(config)


def cluster_spec() -> dict[str, Any]:
    """The parsed TF_CONFIG; raises ClusterError when it is missing or malformed."""
    text = os.environ.get("TF_CONFIG", "")
    try:
        config = json.loads(text) if text else None
        task_type, index = config["task"]["type"], int(config["task"]["index"])
        members = config["cluster"][task_type]
        if not 0 <= index < len(members):
            raise ValueError(f"task index {index} outside {task_type} list")
    except (TypeError, KeyError, ValueError) as error:
        raise ClusterError(
            "--strategy multi-worker needs TF_CONFIG (or --cluster and --task) naming the cluster and this task; "
            f"received TF_CONFIG={text!r} ({error})"
        ) from None
    return config


def worker_count() -> int:
    """How many processes train together (the chief included)."""
    return sum(len(members) for kind, members in cluster_spec()["cluster"].items() if kind in ("chief", "worker"))


def is_chief() -> bool:
    """The chief is the task of type `chief`, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
    config = cluster_spec()
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def describe_strategy(strategy: Any) -> str:
    """The strategy as a user names it, with what it runs on: `default (1 CPU)`, `mirrored (2 GPUs)`,
    `multi-worker (2 workers)` — not the private class name `_DefaultDistributionStrategy`."""
    tf = tensorflow()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = worker_count()
        return f"multi-worker ({workers} worker{'s' if workers != 1 else ''})"
    kind = {"MirroredStrategy": "mirrored", "OneDeviceStrategy": "one-device"}.get(type(strategy).__name__, "default")
    if kind == "default":
        devices = [device.name for device in tf.config.list_logical_devices("GPU")[:1]] or ["CPU"]
    else:
        devices = list(strategy.extended.worker_devices)
    gpus = sum("GPU" in device.upper() for device in devices)
    if gpus:
        return f"{kind} ({gpus} GPU{'s' if gpus != 1 else ''})"
    return f"{kind} ({len(devices)} CPU{'s' if len(devices) != 1 else ''})"


def is_multi_worker(strategy: Any) -> bool:
    tf = tensorflow()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _check_same_epoch(strategy: Any, initial_epoch: int) -> None:
    """Raises ClusterError unless every worker resumes at the same epoch (else their steps would never meet).

    Collectives reduce by sum, so the check compares the sum of squares with the square of the sum: n·Σe² = (Σe)²
    holds exactly when all n values are equal.
    """
    tf = tensorflow()

    @tf.function
    def totals() -> tuple[Any, Any, Any]:
        def replica() -> tuple[Any, Any, Any]:
            epoch = tf.constant(float(initial_epoch))
            return epoch, epoch * epoch, tf.constant(1.0)

        values = strategy.run(replica)
        return tuple(strategy.reduce("SUM", value, axis=None) for value in values)

    total, squares, count = (float(value) for value in totals())
    if abs(count * squares - total * total) > 0.5:
        raise ClusterError(
            f"this worker resumes after epoch {initial_epoch} but the others do not (mean {total / count:g}); the "
            "work folder must be on storage all workers share — remove it on every worker to start over"
        )


def _distributed(strategy: Any, dataset: Any) -> Any:
    tf = tensorflow()
    options = tf.data.Options()
    # Every worker reads the same rows, so shard by element (AUTO would look for files first, and warn).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def fit_multi_worker(
    model: Any,
    strategy: Any,
    spec: ModelSpec,
    splits: data_action.Splits | data_action.StreamSplits,
    seed: int,
    *,
    initial_epoch: int,
    callbacks: list[Any],
) -> None:
    """Trains `model` (built and compiled in `strategy.scope()`) for the remaining epochs on every worker.

    Every worker must call this with the same arguments; the steps synchronise through all-reduce. `callbacks`
    get `on_epoch_begin`/`on_epoch_end` with fit's log keys, so progress lines and checkpoints behave as with fit.
    """
    tf = tensorflow()
    import keras

    global_batch = spec.train.batch_size * strategy.num_replicas_in_sync
    # A resumed run shuffles with another seed: the finished epochs' orders are not replayed.
    train_data, validation = data_action.training_data(
        splits, global_batch, spec.train.shuffle_buffer, seed + initial_epoch
    )
    train_data = _distributed(strategy, train_data)
    validation = _distributed(strategy, validation) if validation is not None else None
    loss_function = keras.losses.get({"class_name": spec.train.loss, "config": {"reduction": None}})
    metric_functions = {name: getattr(keras.metrics, METRIC_FUNCTIONS[name]) for name in spec.train.metrics}
    _check_same_epoch(strategy, initial_epoch)
    optimizer = model.optimizer
    with strategy.scope():
        if not optimizer.built:
            optimizer.build(model.trainable_variables)

    def sums(labels: Any, probabilities: Any, per_example_loss: Any) -> dict[str, Any]:
        found = {"loss": tf.reduce_sum(per_example_loss), "count": tf.cast(tf.size(labels), tf.float32)}
        for name, function in metric_functions.items():
            found[name] = tf.reduce_sum(tf.cast(function(labels, probabilities), tf.float32))
        return found

    def train_replica(images: Any, labels: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = tf.cast(loss_function(labels, probabilities), tf.float32)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return sums(labels, probabilities, per_example)

    def validate_replica(images: Any, labels: Any) -> dict[str, Any]:
        probabilities = model(images, training=False)
        return sums(labels, probabilities, tf.cast(loss_function(labels, probabilities), tf.float32))

    @tf.function
    def train_step(batch: Any) -> dict[str, Any]:
        totals = strategy.run(train_replica, args=batch)
        return {key: strategy.reduce("SUM", value, axis=None) for key, value in totals.items()}

    @tf.function
    def validation_step(batch: Any) -> dict[str, Any]:
        totals = strategy.run(validate_replica, args=batch)
        return {key: strategy.reduce("SUM", value, axis=None) for key, value in totals.items()}

    def run_epoch(step: Any, data: Any) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in data:
            for key, value in step(batch).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        count = max(totals.pop("count", 0.0), 1.0)
        return {key: value / count for key, value in totals.items()}

    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    for epoch in range(initial_epoch, spec.train.epochs):
        callback_list.on_epoch_begin(epoch)
        logs = run_epoch(train_step, train_data)
        if validation is not None:
            logs.update({f"val_{key}": value for key, value in run_epoch(validation_step, validation).items()})
        callback_list.on_epoch_end(epoch, logs)
