"""The errors a user can fix, and where in a definition they point.

Every such error is printed by the command line as one line (no traceback); problems with a definition start
with `file:line:` so that editors and terminals can jump to it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

_DSL_PACKAGE_DIR = Path(__file__).resolve().parent / "dsl"


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, cut at ``limit`` characters (the type's name when it has none): what
    a library's exception contributes to a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def describe_failure(error: BaseException) -> str:
    """A storage library's exception as one line: an OSError's reason, else the type's name and first line (they
    do not all raise OSError: s3fs lets botocore's EndpointConnectionError through when the endpoint is down)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    kind, reason = type(error).__name__, one_line(error)[:300]
    return kind if reason == kind else f"{kind}: {reason}"


@dataclass(frozen=True)
class Location:
    """A place in a definition file, shown relative to the current directory when possible; line 0 is the file as
    a whole (one that cannot be read, say)."""

    path: str
    line: int

    def __str__(self) -> str:
        try:
            shown = os.path.relpath(self.path)
        except ValueError:  # a path on another drive
            shown = self.path
        if shown.startswith(".."):
            shown = self.path
        return f"{shown}:{self.line}" if self.line else shown


def caller_location() -> Location | None:
    """Returns the first stack frame outside the definition language: the line of the user's definition.

    Spec constructors call this so that a later validation error can name the line that wrote the bad value,
    even though validation runs long after the constructor returned.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = Path(frame.f_code.co_filename).resolve()
        if _DSL_PACKAGE_DIR not in filename.parents:
            return Location(str(filename), frame.f_lineno)
        frame = frame.f_back
    return None


class BuildsysError(Exception):
    """An error the user can fix; the command line prints it as one line and exits non-zero.

    Attributes:
        exit_code: 2 for bad definitions, labels and arguments (nothing was done), 1 for failures while
            building.
    """

    exit_code = 1


class DefinitionError(BuildsysError):
    """A model definition is invalid. Raised before any data is loaded or any model is trained.

    Example:
        `model_defs/cifar10.py:14: Dense(units=...) expects a positive int. Received: "128" (str).`
    """

    exit_code = 2

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.location = location
        self.message = message
        super().__init__(f"{location}: {message}" if location else message)


class DataError(BuildsysError):
    """A dataset is missing, unreadable, or does not fit its definition (shapes, NaNs, labels out of range)."""


class LabelError(BuildsysError):
    """A label on the command line names no target."""

    exit_code = 2


class UsageError(BuildsysError):
    """A command-line argument is wrong (a malformed value, a missing folder, flags that need each other).

    Nothing was done, so the exit code is 2, as for argparse's own errors.
    """

    exit_code = 2


class SourceError(DataError):
    """A SOURCE named on the command line (`data inspect`, `predict --input`) matches nothing readable: bad input."""

    exit_code = 2


class DependencyCycleError(DefinitionError):
    """Targets depend on each other in a circle (through `target(...)` bases); nothing can be built first.

    Example:
        `model_defs/a.py:9: dependency cycle: //model_defs:a -> //model_defs:b -> //model_defs:a`
    """


class WeightsUnavailableError(BuildsysError):
    """A pretrained base's weights file is neither on this machine nor downloadable.

    Example:
        `InceptionV3 ImageNet weights are not on this machine and could not be downloaded (...); put
        inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 into /root/.keras/models`
    """


def describe(value: object) -> str:
    """Shows a received value the way error messages quote it: `"128" (str)`."""
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"{shown} ({type(value).__name__})"
