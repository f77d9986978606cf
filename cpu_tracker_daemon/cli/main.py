"""The ``cpu-tracker`` command line: reading the arguments, and the one place errors are printed
and turned into exit codes (the table is :mod:`exit_codes`'). The handlers, in :mod:`commands`,
are imported only once the arguments are read.

The plain command lines people and scripts type most (``status``, ``budget show --json``; see
:data:`PLAIN`) are read here, without argparse, which with its message catalogues costs a
command more than it takes to read them; the test suite holds every one of them, with each
spelling of the global options, to what argparse makes of it. Anything else (``--help``, an
abbreviation, a mistake, any command with a value to parse) goes to :mod:`parsers`, so help and
errors read exactly as before.

A command is a short-lived process, so the cyclic garbage collector is paused while it runs
(reference counting still frees its memory) and skipped at exit, where its last pass would walk
every object of every imported module only to free memory the OS reclaims anyway: together a
tenth of ``status``'s instructions and about a sixth of its wall time. The daemon and the
commands that loop (:data:`COLLECTING`) keep the collector.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

from cpu_tracker_daemon.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, CpuTrackerError, one_line

if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Any, NoReturn, TextIO

# The plain command lines: a command's words, what its parser sets, and the flags it takes (each
# a store_true option of that name), as :mod:`parsers` defines them.
PLAIN: dict[tuple[str, ...], tuple[dict[str, object], tuple[str, ...]]] = {
    ("status",): ({"command": "status", "handler": "status"}, ("json",)),
    ("budget", "show"): (
        {"command": "budget", "budget_command": "show", "handler": "budget_show"},
        ("json",),
    ),
    ("budget", "plan"): (
        {"command": "budget", "budget_command": "plan", "handler": "budget_plan"},
        ("json",),
    ),
    ("budget", "requests"): (
        {
            "command": "budget",
            "budget_command": "requests",
            "handler": "budget_requests",
            "writes_state": True,
        },
        ("json",),
    ),
    ("config", "check"): ({"command": "config", "config_command": "check", "handler": "config_check"}, ()),
    ("config", "show"): (
        {"command": "config", "config_command": "show", "handler": "config_show"},
        ("json",),
    ),
    ("ledger", "verify"): (
        {"command": "ledger", "ledger_command": "verify", "handler": "ledger_verify", "writes_state": True},
        (),
    ),
    ("once",): ({"command": "once", "handler": "once", "writes_state": True}, ("force",)),
    ("aggregate",): ({"command": "aggregate", "handler": "aggregate", "writes_state": True}, ("json",)),
}


def plain_args(argv: Sequence[str]) -> Namespace | None:
    """``argv`` read as argparse would read it, where it is a plain command line: the global
    options (``--config PATH``, ``--config=PATH``, ``--system``), the words of a command in
    :data:`PLAIN`, then that command's flags, each spelled in full. None for anything else."""
    values: dict[str, object] = {"config": None, "system_service": False, "needs_config": True}
    given = list(argv)
    at = 0
    while at < len(given) and given[at].startswith("-"):
        arg = given[at]
        if arg == "--system":
            values["system_service"] = True
        elif arg == "--config" and at + 1 < len(given) and given[at + 1][:1] not in ("", "-"):
            values["config"] = given[at + 1]
            at += 1
        elif arg.startswith("--config=") and len(arg) > len("--config="):
            values["config"] = arg[len("--config=") :]
        else:
            return None
        at += 1
    words = []
    while at < len(given) and not given[at].startswith("-"):
        words.append(given[at])
        at += 1
    known = PLAIN.get(tuple(words))
    if known is None:
        return None
    sets, flags = known
    values["writes_state"] = False
    values.update(sets)
    values.update(dict.fromkeys(flags, False))
    for arg in given[at:]:
        flag = arg[2:]
        if not arg.startswith("--") or flag not in flags:
            return None
        values[flag] = True
    return SimpleNamespace(**values)  # type: ignore[return-value]  # read as a Namespace is: by attribute


def parse_args(argv: Sequence[str] | None = None) -> Namespace:
    """The parsed command line: read here where it is plain, else by :mod:`parsers`."""
    given = sys.argv[1:] if argv is None else list(argv)
    plain = plain_args(given)
    if plain is not None:
        return plain
    from cpu_tracker_daemon.cli import parsers

    return parsers.parse_args(given)


# The handlers that run long or loop over many files: the daemon, one cycle (which may wait two
# intervals for a secure round) and the aggregator. They keep the cyclic garbage collector.
COLLECTING = frozenset({"run", "once", "aggregate"})


def entry() -> NoReturn:
    """The console script and ``python -m cpu_tracker_daemon``: :func:`main`, then exit without
    the interpreter's last collection (everything is closed by then; atexit handlers still run)."""
    code: int | str | None
    try:
        code = main()
    except SystemExit as done:  # argparse's own exit, for --help and a usage error
        code = done.code
    finally:
        gc.freeze()
    raise SystemExit(_flush_stdout(code))


def _flush_stdout(code: int | str | None) -> int | str | None:
    """Flush what a command printed while its errors can still be one line: a buffer the
    interpreter flushed at exit into a full disk would be its traceback and exit 120."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
    except OSError as exc:
        _stdout_to_devnull()
        error = _stdout_error(exc)
        print(f"cpu-tracker: {error}", file=sys.stderr)
        return error.exit_code if code in (EXIT_OK, None) else code
    return code


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    import contextlib

    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    collecting = gc.isenabled()
    gc.disable()
    stdout = sys.stdout
    if stdout is not None:  # None: started with stdout closed, where print() writes nothing
        sys.stdout = _Stdout(stdout)  # a TextIO in all but its type
    try:
        return _main(argv, environ, collecting)
    finally:
        sys.stdout = stdout
        if collecting:
            gc.enable()


class _Stdout:
    """``sys.stdout`` while a command runs: a write that fails for want of room or rights
    (``> /dev/full``) is a :class:`StdoutError`, exit 8 in one line; a reader gone (``| head``)
    is still a BrokenPipeError, a quiet success."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _stdout_error(exc: OSError) -> CpuTrackerError:
    from cpu_tracker_daemon.errors import StdoutError

    return StdoutError(exc.strerror or str(exc))


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None, collecting: bool) -> int:
    env = os.environ if environ is None else environ
    try:
        args = parse_args(argv)
        if collecting and args.handler in COLLECTING:
            gc.enable()
        if args.system_service:
            from cpu_tracker_daemon.daemon.service import system_dirs

            env = {**env, **{name: str(path) for name, path in system_dirs().items()}}
        from cpu_tracker_daemon.cli import commands

        handler = getattr(commands, args.handler)
        if not args.needs_config:  # service, config init: before a config exists, or not theirs
            return int(handler(args, env))
        from cpu_tracker_daemon.config import config_origin, config_path_from, load_config

        path = config_path_from(args.config, env)
        config = load_config(path, env, config_origin(args.config, env))
        if args.writes_state:
            commands.become_state_owner(config.paths.data_dir)
        return int(handler(args, config, path, env))
    except CpuTrackerError as exc:
        first, *rest = (one_line(line) for line in exc.lines())
        print("\n".join([f"cpu-tracker: {first}", *rest]), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): a quiet success, as for any filter
        _stdout_to_devnull()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, never a traceback with data
        print(
            f"cpu-tracker: internal error ({type(exc).__name__}: {one_line(str(exc))}); please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
