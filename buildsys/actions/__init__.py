"""The actions of a build: data, compile, train, evaluate, export, verify.

Each action takes the previous one's outputs and nothing global. TensorFlow is imported here and only here
(through `tensorflow()`), lazily, so that commands which do no build work never pay for it, and so that every
command that does import it — build, tune, compile, featurize, a Keras dataset's download — starts equally quiet.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from types import ModuleType

# What TensorFlow's C++ runtime writes to stderr while it loads on a machine without a GPU. absl prints these before
# its logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them; they look like failures and are not.
_START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "cuda_executor.cc",
    "cuda_dnn.cc",
    "cuda_fft.cc",
    "cuda_blas.cc",
    "computation_placer.cc",
    "Unable to register cu",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)


@contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file while TensorFlow loads, then passes on every line but the noise.

    File-descriptor level because the C++ runtime writes there directly, bypassing `sys.stderr`.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in _START_UP_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def tensorflow() -> ModuleType:
    """Imports TensorFlow and Keras with the C++ runtime's start-up chatter silenced; Python errors still show.

    `TF_CPP_MIN_LOG_LEVEL=3` hides the runtime's later INFO/WARNING/ERROR lines (such as `failed call to cuInit`
    on a machine without a GPU, which buildsys reports itself when a GPU was asked for). A user debugging TensorFlow
    sets TF_CPP_MIN_LOG_LEVEL=0 and sees everything.
    """
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with nullcontext() if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" else _native_stderr_filtered():
        import keras  # noqa: F401 - loaded here, once, so that the backend choice above holds
        import tensorflow as tf
    return tf
