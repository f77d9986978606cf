"""The ``cpu-tracker`` command line: the parser, built from the command modules, and the one
place an error becomes one line on stderr and its exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.cli import (
    aggregate_cmd,
    budget_cmd,
    config_cmd,
    ledger_cmd,
    once_cmd,
    run_cmd,
    secagg_cmd,
    service_cmd,
    status_cmd,
)
from cpu_tracker_daemon.cli.common import Parser, subcommands
from cpu_tracker_daemon.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CpuTrackerError,
    StdoutError,
    one_line,
)

# In the order ``--help`` lists them.
COMMANDS = (
    run_cmd,
    once_cmd,
    status_cmd,
    budget_cmd,
    ledger_cmd,
    config_cmd,
    aggregate_cmd,
    service_cmd,
    secagg_cmd,
)


def build_parser() -> Parser:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = Parser(
        prog="cpu-tracker",
        description="Measure this machine's CPU use and publish only a differentially private mean.",
        epilog=(
            "config: --config PATH, else $CPU_TRACKER_CONFIG, else config.toml in\n"
            "$CONFIGURATION_DIRECTORY (set by systemd) or ~/.config/cpu-tracker/, else embedded\n"
            "defaults. --system reads the system service's config and state instead.\n\n"
            f"exit codes:\n{codes}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpu-tracker {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument(
        "--system",
        dest="system_service",
        action="store_true",
        help="use the system service's configuration and state (as root: acts as the service's user)",
    )
    # A leaf sets func (its handler); needs_config=False runs it before any config is read, and
    # writes_state=True makes root act as the state directory's owner first (cli.owner).
    parser.set_defaults(needs_config=True, writes_state=False)
    sub = subcommands(parser, dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def entry() -> NoReturn:
    """The console script and ``python -m cpu_tracker_daemon``."""
    code: int | str | None
    try:
        code = main()
    except SystemExit as done:  # argparse's own exit, for --help and --version
        code = done.code
    raise SystemExit(_flush_stdout(code))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    stdout = sys.stdout
    if stdout is not None:  # None: started with stdout closed, where print() writes nothing
        sys.stdout = _Stdout(stdout)  # a TextIO in all but its type
    try:
        return _main(argv, os.environ if environ is None else environ)
    finally:
        sys.stdout = stdout


def _main(argv: Sequence[str] | None, env: Mapping[str, str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.system_service:
            from cpu_tracker_daemon.daemon.service import system_dirs

            env = {**env, **{name: str(path) for name, path in system_dirs().items()}}
        if not args.needs_config:  # service, config init: before a config exists, or not theirs
            return int(args.func(args, env))
        from cpu_tracker_daemon.config import config_origin, config_path_from, load_config

        path = config_path_from(args.config, env)
        config = load_config(path, env, config_origin(args.config, env))
        if args.writes_state:
            from cpu_tracker_daemon.cli.owner import become_state_owner

            become_state_owner(config.paths.data_dir)
        return int(args.func(args, config, path, env))
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
            raise StdoutError(exc.strerror or str(exc)) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc.strerror or str(exc)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


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
        error = StdoutError(exc.strerror or str(exc))
        print(f"cpu-tracker: {error}", file=sys.stderr)
        return error.exit_code if code in (EXIT_OK, None) else code
    return code


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
