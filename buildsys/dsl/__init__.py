"""The definition language: everything a `model_defs/*.py` file may use, and nothing else.

Definitions start with `from buildsys.dsl import *`. The names below are the whole public surface; the rest of
`buildsys` is internal. Importing this package never imports TensorFlow.
"""

from buildsys.dsl import datasets, hp
from buildsys.dsl.bases import fine_tune, logistic_regression, mlp, pretrained, target
from buildsys.dsl.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    MaxPooling2D,
    Reshape,
    l1_l2,
    max_norm,
)
from buildsys.dsl.specs import evaluate, export, image_input, model, train

__all__ = [
    "Activation",
    "AveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "LeakyReLU",
    "MaxPooling2D",
    "Reshape",
    "datasets",
    "evaluate",
    "export",
    "fine_tune",
    "hp",
    "image_input",
    "l1_l2",
    "logistic_regression",
    "max_norm",
    "mlp",
    "model",
    "pretrained",
    "target",
    "train",
]
