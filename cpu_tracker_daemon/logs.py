"""Logging: the only ``structlog.configure``.

One JSON object a line on stdout (and, if configured, a file that survives logrotate: a
``WatchedFileHandler`` reopens it when it is moved). Tracebacks are rendered without local
variables, so a pre-noise value can never reach a log through one. The standard library's
loggers, APScheduler's among them, go through the same formatter at WARNING.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_HANDLER_MARK = "_cpu_tracker_handler"

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Any] = [renderer]
    else:
        tail = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout: when its reader has gone (``run | head -n1``), drop it quietly and keep logging to
    the file, if there is one, instead of printing a logging traceback on every line."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno == errno.EPIPE:
            logging.getLogger().removeHandler(self)
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())  # nothing left to flush into a closed pipe
                os.close(devnull)
            return
        super().handleError(record)


def configure(
    fmt: str = "json", level: str = "info", file: Path | None = None, stream: TextIO | None = None
) -> None:
    """(Re)configure logging; safe to call again on SIGHUP."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = _formatter(fmt)
    handlers: list[logging.Handler] = [_StdoutHandler(stream or sys.stdout)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, _LEVELS[level]))
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "cpu_tracker") -> Any:
    return structlog.stdlib.get_logger(name)
