"""The actions of a build: data, compile, train, evaluate, export, verify.

Each action takes the previous one's outputs and nothing global. TensorFlow is imported here and only here
(through `tensorflow()`), lazily, so that commands which do no build work never pay for it.
"""

from __future__ import annotations

import os
from types import ModuleType


def tensorflow() -> ModuleType:
    """Imports TensorFlow with its C++ start-up chatter silenced (errors still show)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    return tf
