"""Logging, and the only ``structlog.configure``: lines for a person on a terminal, otherwise one
JSON object a line.

Tracebacks are rendered without local variables, so a pre-noise value never reaches a log
through one."""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import sys
from datetime import datetime
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


def _for_people(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal: the local time of day, and an event with a ``summary`` as that sentence
    (its fields stay in the JSON)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        event["timestamp"] = datetime.fromisoformat(event["timestamp"]).astimezone().strftime("%H:%M:%S")
    summary = event.get("summary")
    if summary is None:
        return event
    return {key: event[key] for key in ("timestamp", "level", "logger") if key in event} | {"event": summary}


def _formatter(fmt: str, colors: bool = False) -> logging.Formatter:
    if fmt == "console":
        renderer: Any = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Any] = [_for_people, renderer]
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
    the file, if there is one, instead of printing a logging traceback on every line; when it
    cannot be written (``> /dev/full``), say so once in one line on stderr, and drop it too."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        unwritable = isinstance(error, OSError) or type(error).__name__ == "StdoutError"
        if not unwritable:
            super().handleError(record)
            return
        logging.getLogger().removeHandler(self)
        if not (isinstance(error, OSError) and error.errno == errno.EPIPE):
            _say_once(self, f"the log on standard output cannot be written ({_why(error)}); it stops there")
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())  # nothing left to flush where it cannot go
            os.close(devnull)


class _FileHandler(logging.handlers.WatchedFileHandler):
    """``logging.file``: a line that cannot be written (a full disk) is said once, in one line on
    stderr, not as a logging traceback on every line; the file is tried again for the next."""

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)
        if not self._failed:
            vars(self).pop("_said", None)  # written again: a later failure is said again

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True
        error = sys.exc_info()[1]
        _say_once(self, f"logging.file {self.baseFilename} cannot be written ({_why(error)}); lines are lost")


def _why(error: BaseException | None) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return getattr(error, "reason", None) or type(error).__name__


def _say_once(handler: logging.Handler, text: str) -> None:
    if getattr(handler, "_said", False):
        return
    handler._said = True  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):  # stderr too may be gone; nothing else is left to tell
        print(f"cpu-tracker: {text}", file=sys.stderr, flush=True)


def configure(
    fmt: str = "json", level: str = "info", file: Path | None = None, stream: TextIO | None = None
) -> None:
    """(Re)configure logging; safe to call again on SIGHUP. ``fmt`` is json, console or auto
    (console when ``stream``, stdout by default, is a terminal). A log file that cannot be opened
    raises ConfigError, and the logging stays as it was."""
    handlers: list[logging.Handler] = []
    if file is not None:
        to_file = _open_log_file(file)
        to_file.setFormatter(_formatter("console" if fmt == "console" else "json"))
        handlers.append(to_file)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    out = stream or sys.stdout
    terminal = _is_terminal(out)
    console = _StdoutHandler(out)
    console.setFormatter(_formatter(resolve(fmt, out), colors=terminal and "NO_COLOR" not in os.environ))
    handlers.insert(0, console)
    for handler in handlers:
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


def _open_log_file(file: Path) -> logging.Handler:
    """A handler appending to ``file`` (its directory made), or ConfigError naming logging.file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Non-blocking first: a FIFO nobody reads fails at once (ENXIO) instead of waiting.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        os.close(os.open(file, flags, 0o666))
        return _FileHandler(file, encoding="utf-8")
    except OSError as exc:
        from cpu_tracker_daemon.errors import ConfigError

        why = "a FIFO nobody reads" if exc.errno == errno.ENXIO else exc.strerror or str(exc)
        raise ConfigError(
            [f"logging.file {file} cannot be opened ({why}); name a file this user can write, or unset it"]
        ) from None


def resolve(fmt: str, stream: TextIO) -> str:
    """The format ``auto`` stands for on ``stream``: console on a terminal, JSON elsewhere."""
    if fmt != "auto":
        return fmt
    return "console" if _is_terminal(stream) else "json"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def get_logger(name: str = "cpu_tracker") -> Any:
    return structlog.stdlib.get_logger(name)
