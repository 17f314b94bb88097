"""Transport-free errors of the serving data plane.

The data plane, repository, batcher, runtime and tensor codec raise ``ServingError`` carrying a ``Status``;
each front end (gRPC, HTTP) maps a status to its protocol's code in one table. Keeping the status next to the
message means every failure path ends as one clear line for the caller, never a stack trace.
"""

import enum
import logging
import time


class Status(enum.Enum):
    """What kind of failure happened, named after the gRPC codes they become."""

    INVALID_ARGUMENT = "invalid argument"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline exceeded"
    FAILED_PRECONDITION = "failed precondition"
    ALREADY_EXISTS = "already exists"
    UNIMPLEMENTED = "unimplemented"
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


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters: the first line of its message, or its type's name
    when the message is empty (ONNX Runtime and NumPy raise some with none), for log lines and answers."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class RateLimitFilter(logging.Filter):
    """Lets through one record per ``interval_s`` of the loggers it is added to, and counts the others in the next
    one: for libraries' lines that clients or a peer that is down can trigger at every request or retry (uvicorn's
    "Invalid HTTP request received.", OpenTelemetry's exporter's retries)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None while the interval since the last admitted line runs; else how many were held back meanwhile."""
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return None
        suppressed, self._suppressed = self._suppressed, 0
        self._next_at = now + self.interval_s
        return suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        suppressed = self.admit()
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more in the last {self.interval_s:.0f} s not logged)"
        return suppressed is not None


class RateLimitedLog:
    """Logs a message that a client can trigger on every request at most once per ``interval_s``.

    A flood of malformed requests must not become a flood of log lines (or fill the disk): the first one is
    logged, later ones within the interval are counted and the count is reported with the next line.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._gate = RateLimitFilter(interval_s)

    def warning(self, message: str, *args: object, exc_info: bool = False) -> None:
        suppressed = self._gate.admit()
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} more like it in the last {self._gate.interval_s:.0f} s not logged)"
        self._logger.warning(message, *args, exc_info=exc_info)
