"""Speed and numerics options of training: mixed precision, XLA, and deterministic ops.

Mixed precision is Keras' global dtype policy: `mixed_float16` on a GPU (tensor cores; the optimizer is wrapped in
a loss-scale optimizer by `compile`), `mixed_bfloat16` on CPU (bf16 has float32's range, so no loss scaling). The
variables stay float32 either way, and the last layer computes in float32 (see `compile.build_model`). Training
is the only place these apply: evaluation, export and the parity check use a float32 copy of the trained model
(`train.inference_copy`), so the published artifacts are ordinary float32 graphs.
"""

from __future__ import annotations

from buildsys.actions import tensorflow


def mixed_policy_name() -> str:
    """`mixed_float16` when a GPU is visible, else `mixed_bfloat16`."""
    tf = tensorflow()
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def configure(*, mixed_precision: bool, deterministic: bool) -> str:
    """Sets the dtype policy for the models built next, and op determinism; returns the policy name.

    Op determinism (`tf.config.experimental.enable_op_determinism`) makes every op pick a deterministic kernel,
    so that with a fixed seed two runs on the same machine produce identical weights; some ops get slower, and
    ops without a deterministic kernel raise instead of running.
    """
    tf = tensorflow()
    import keras

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = mixed_policy_name() if mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
