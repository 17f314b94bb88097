"""Triton's logging extension: the server's log settings, read and changed while it runs (``GET/POST /v2/logging``,
gRPC ``LogSettings``, tritonclient's ``get_log_settings``/``update_log_settings``), so that an operator can turn
on verbose logging of a live server, or quiet it, without a restart.

The settings are Triton's and map onto Python's logging: ``log_info``, ``log_warning`` and ``log_error`` let
records of that level through or not, ``log_verbose_level`` > 0 turns on the server's own DEBUG lines (one per
request and one per model call; the libraries' stay off: grpc's alone writes a line per call), and ``log_format``
``ISO8601`` stamps lines with ISO 8601 times (``default`` as ``--log-level`` started them). ``log_file`` is reported
and never changed over the network, as in Triton: a client must not choose where the server writes. A change is
checked whole before any of it applies, so a request with one bad setting changes nothing.
"""

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from serving.errors import ServingError, Status

FORMATS = ("default", "ISO8601")
ISO8601_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
# The levels that --log-level names, as Triton's switches: (log_info, log_warning, log_error, log_verbose_level).
LEVEL_SWITCHES = {
    "debug": (True, True, True, 1),
    "info": (True, True, True, 0),
    "warning": (False, True, True, 0),
    "error": (False, False, True, 0),
}


def _bad(message: str) -> ServingError:
    return ServingError(Status.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class LogSettings:
    """The protocol's log settings, named as Triton names them."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LogControl(logging.Filter):
    """Holds the settings and applies them to the handlers of the root logger that it is installed on.

    Args:
        level: the ``--log-level`` the server started with, the settings' starting point.
        verbose_logger: the logger whose records ``log_verbose_level`` > 0 lets through at DEBUG (the server's).
        log_file: the file the log goes to (``--log-file``), "" for standard error; reported, never changed.
    """

    def __init__(self, level: str = "info", verbose_logger: str = "serving", log_file: str = "") -> None:
        super().__init__()
        info, warning, error, verbose = LEVEL_SWITCHES[level]
        self.settings = LogSettings(
            log_file=log_file, log_info=info, log_warning=warning, log_error=error, log_verbose_level=verbose
        )
        self._logger: logging.Logger | None = None
        self._verbose_logger = logging.getLogger(verbose_logger)
        self._handlers: list[logging.Handler] = []
        self._date_formats: list[str | None] = []

    def install(self, logger: logging.Logger) -> None:
        """Filters and formats every handler of ``logger`` (the root logger, once logging is configured)."""
        self._handlers = list(logger.handlers)
        self._date_formats = [handler.formatter.datefmt if handler.formatter else None for handler in self._handlers]
        for handler in self._handlers:
            handler.addFilter(self)
        self._logger = logger
        self._apply()

    def filter(self, record: logging.LogRecord) -> bool:
        settings = self.settings
        if record.levelno >= logging.ERROR:
            return settings.log_error
        if record.levelno >= logging.WARNING:
            return settings.log_warning
        if record.levelno >= logging.INFO:
            return settings.log_info
        return settings.log_verbose_level > 0

    def update(self, changes: Mapping[str, object]) -> LogSettings:
        """Applies ``changes`` (setting name -> value; None leaves a setting as it is) and returns the settings.

        Raises:
            ServingError: INVALID_ARGUMENT for an unknown setting or a value of the wrong type, UNIMPLEMENTED for a
                new ``log_file``; nothing is changed then.
        """
        updated = self.settings
        for name, value in changes.items():
            if value is None:
                continue
            if name == "log_file":
                raise ServingError(Status.UNIMPLEMENTED, "the log file cannot be changed over the network")
            if name in ("log_info", "log_warning", "log_error"):
                if not isinstance(value, bool):
                    raise _bad(f"{name} must be true or false, got {value!r:.40}")
            elif name == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                    raise _bad(f"log_verbose_level must be an integer >= 0, got {value!r:.40}")
            elif name == "log_format":
                if value not in FORMATS:
                    raise _bad(f"log_format must be one of {', '.join(FORMATS)}, got {value!r:.40}")
            else:
                known = ", ".join(field for field in LogSettings.__dataclass_fields__ if field != "log_file")
                raise _bad(f"unknown log setting {str(name)[:40]!r}; the settings are: {known}")
            updated = replace(updated, **{name: value})
        self.settings = updated
        self._apply()
        return updated

    def _apply(self) -> None:
        if self._logger is None:
            return
        self._logger.setLevel(logging.INFO)
        self._verbose_logger.setLevel(logging.DEBUG if self.settings.log_verbose_level > 0 else logging.NOTSET)
        iso = self.settings.log_format == "ISO8601"
        for handler, date_format in zip(self._handlers, self._date_formats, strict=True):
            if handler.formatter is not None:
                handler.formatter.datefmt = ISO8601_DATE_FORMAT if iso else date_format
