"""What the command modules share: the parser class, a handler's signature, and the small
helpers of an interactive command (asking first, naming who acts, reading a number)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from cpu_tracker_daemon.errors import UsageError

if TYPE_CHECKING:
    from cpu_tracker_daemon.config import Config

Env = Mapping[str, str]
# A command that reads the configuration: (args, config, the file it came from, environment).
Handler = Callable[[argparse.Namespace, "Config", Path | None, Env], int]
# One that runs before any configuration is read (``config init``, ``service``).
BareHandler = Callable[[argparse.Namespace, Env], int]


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes are a :class:`UsageError`: one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


# What ``add_subparsers`` returns: each command module adds its parsers to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str = "ACTION") -> Subcommands:
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar, parser_class=Parser)


def add_command(sub: Subcommands, name: str, help: str, description: str | None = None) -> Parser:
    """A subcommand whose ``--help`` opens with what it does: its line in the parent's list,
    unless it has a longer description of its own."""
    return sub.add_parser(name, help=help, description=description or f"{help[0].upper()}{help[1:]}.")


def add_json(parser: argparse.ArgumentParser, what: str = "machine-readable output") -> None:
    parser.add_argument("--json", action="store_true", help=what)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def confirm(what: str, act: str = "grant it", declined: str = "not granted") -> None:
    """Ask on a terminal; refuse elsewhere (a script says --yes). Declining is a usage error."""
    if not sys.stdin.isatty():
        raise UsageError(f"{what}; pass --yes to confirm it")
    print(f"{what}. Type yes to {act}: ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise UsageError(f"{declined}; nothing was changed")


def who() -> str:
    """Who runs this command, for the ledger's record of a grant or a reset."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value
