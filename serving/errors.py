"""Transport-free errors of the serving data plane.

The repository, batcher, runtime and tensor codec raise ``ServingError`` carrying a ``Status``; only
``serving/servicer.py`` knows gRPC, and maps each status to a gRPC code in one place. Keeping the status next
to the message means every failure path ends as one clear line for the caller, never a stack trace.
"""

import enum


class Status(enum.Enum):
    """What kind of failure happened, named after the gRPC codes they become."""

    INVALID_ARGUMENT = "invalid argument"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline exceeded"
    FAILED_PRECONDITION = "failed precondition"
    INTERNAL = "internal"


class ServingError(Exception):
    """A failure to report to the caller as ``status`` with a one-line ``message``.

    Example:
        raise ServingError(Status.NOT_FOUND, "unknown model 'digitz'; loaded models: digits")
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelLoadError(Exception):
    """A model version on disk cannot be served; the message says which file is wrong and why."""
