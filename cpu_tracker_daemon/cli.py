"""The ``cpu-tracker`` command line: the parsers, and the one place errors are printed and turned
into exit codes (the table is :mod:`exit_codes`'). Each leaf parser names its handler in
:mod:`commands` (``set_defaults(handler=...)``), which is imported only once the arguments are
parsed: ``--help`` and a bad argument load argparse and little else.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.errors import CpuTrackerError, UsageError, one_line
from cpu_tracker_daemon.exit_codes import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, exit_code_for
from cpu_tracker_daemon.names import LOG_FORMATS, MANAGERS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = _Parser(
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
    parser.set_defaults(needs_config=True, writes_state=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground (for systemd and launchd)",
        description=(
            "Run the daemon in the foreground until SIGTERM or Ctrl-C (exit 0); SIGHUP reloads the "
            "configuration. It samples for the configured window, publishes one noisy mean, and "
            "repeats every schedule.every_seconds while the privacy budget lasts."
        ),
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines for people (console) or machines (json); default: the config's "
        "logging.format, auto: console on a terminal, JSON under systemd, launchd and pipes",
    )
    run.set_defaults(handler="run", writes_state=True)
    once = sub.add_parser("once", help="run one release cycle now")
    once.set_defaults(handler="once", writes_state=True)
    once.add_argument("--force", action="store_true", help="skip the cooldown (never the budget)")
    status = sub.add_parser("status", help="last release, next due time, budget, paths")
    status.set_defaults(handler="status")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    _add_budget_parser(sub)
    _add_ledger_parser(sub)
    _add_config_parser(sub)
    aggregate = sub.add_parser("aggregate", help="one aggregation pass over the SyftBox tree's releases")
    aggregate.set_defaults(handler="aggregate", writes_state=True)
    aggregate.add_argument("--json", action="store_true", help="print the aggregate record")
    _add_service_parser(sub)
    _describe(parser)
    return parser


def _add_budget_parser(sub: Any) -> None:
    budget = sub.add_parser("budget", help="inspect or raise the privacy budget")
    bsub = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION", parser_class=_Parser)
    show = bsub.add_parser("show", help="the privacy report: what is hidden, what is spent, when it pauses")
    show.set_defaults(handler="budget_show")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    plan = bsub.add_parser("plan", help="cost of one release, releases left under each cap, and when")
    plan.set_defaults(handler="budget_plan")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    pending = bsub.add_parser("requests", help="budget requests that readers sent to rpc/budget/")
    pending.set_defaults(handler="budget_requests")
    pending.add_argument("--json", action="store_true", help="machine-readable output")
    approve = bsub.add_parser("approve", help="grant a pending request; the requester can read the answer")
    approve.set_defaults(handler="budget_approve", writes_state=True)
    approve.add_argument("request_id", metavar="ID", help="the request's id, as 'budget requests' lists it")
    approve.add_argument("--reason", default="", help="a note for the requester")
    deny = bsub.add_parser("deny", help="refuse a pending request; the requester can read the answer")
    deny.set_defaults(handler="budget_deny", writes_state=True)
    deny.add_argument("request_id", metavar="ID", help="the request's id, as 'budget requests' lists it")
    deny.add_argument("--reason", required=True, help="why (sent to the requester)")
    grant = bsub.add_parser("grant", help="raise a cap; recorded in the ledger with the reason")
    grant.set_defaults(handler="budget_grant", writes_state=True)
    grant.add_argument("epsilon", type=_positive_float, metavar="EPSILON", help="how much to add to the cap")
    grant.add_argument("--reason", required=True, help="why (kept in the ledger's history)")
    grant.add_argument(
        "--cap",
        choices=("lifetime", "window"),
        default="lifetime",
        help="the cap to raise: all history (default) or the rolling period",
    )
    grant.add_argument("--delta", type=_probability, default=0.0, help="also raise the cap's delta by this")
    grant.add_argument(
        "--yes", action="store_true", help="do not ask before a grant that more than doubles the cap"
    )


def _add_ledger_parser(sub: Any) -> None:
    ledger = sub.add_parser("ledger", help="the privacy ledger itself")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION", parser_class=_Parser)
    reset = lsub.add_parser(
        "reset",
        help="retire the ledger (kept, renamed) and start a new budget; leaves a trace",
        description=(
            "Start the privacy budget over, deliberately: the old ledger is renamed (never "
            "deleted), the new one records the release already published as acknowledged, and "
            "ledger-resets.jsonl keeps who, when and why. Releases made under the old ledger "
            "still happened: whoever saw them may combine them with the new ones."
        ),
    )
    reset.add_argument("--reason", required=True, help="why (kept in the new ledger and the trace)")
    reset.set_defaults(handler="ledger_reset", writes_state=True)
    verify = lsub.add_parser(
        "verify",
        help="check the whole ledger now (every page, schema, triggers, running counts); exit 4 if unsound",
        description=(
            "The full verification the daemon runs when it starts: SQLite's quick_check over every "
            "page, the schema, the append-only triggers, and the running release counts against "
            "the spends. Read-only; it never repairs anything."
        ),
    )

    verify.set_defaults(handler="ledger_verify", writes_state=True)


def _add_config_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="check or show the effective configuration")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION", parser_class=_Parser)
    check = csub.add_parser("check", help="validate the configuration and the directories it names")
    check.set_defaults(handler="config_check")
    init = csub.add_parser(
        "init",
        help="write a commented starter config (every key at its default, commented out)",
        description=(
            "Write a starter config.toml where cpu-tracker looks for it (--config PATH, else "
            "$CPU_TRACKER_CONFIG, else ~/.config/cpu-tracker/config.toml, or /etc/cpu-tracker/ with "
            "--system): every key, commented out at its default, with a line on what it does."
        ),
    )
    init.set_defaults(handler="config_init", needs_config=False)
    init.add_argument("--force", action="store_true", help="replace a config file that exists")
    init.add_argument("--stdout", action="store_true", help="print it instead of writing a file")
    cshow = csub.add_parser("show", help="the effective configuration, defaults filled in")
    cshow.set_defaults(handler="config_show")
    cshow.add_argument("--json", action="store_true", help="JSON instead of TOML")


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's --help opens with what it does: its line in the parent's list, unless it
    has a longer description of its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and lines.get(name):
                    text = str(lines[name])
                    child.description = text[0].upper() + text[1:] + "."
                _describe(child)


def _add_service_parser(sub: Any) -> None:
    service = sub.add_parser("service", help="print, install or remove the systemd unit or launchd plist")
    ssub = service.add_subparsers(
        dest="service_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    actions = {
        "print": "print the unit or plist for this installation",
        "install": "write it where the service manager looks, then print the command that starts it",
        "uninstall": "remove it (state, config and logs stay)",
    }
    for name, text in actions.items():
        action = ssub.add_parser(name, help=text)
        action.set_defaults(handler="service", needs_config=False)
        action.add_argument(
            "manager",
            nargs="?",
            choices=MANAGERS,
            default="launchd" if sys.platform == "darwin" else "systemd",
            help="default: this platform's",
        )
        scope = action.add_mutually_exclusive_group()
        scope.add_argument(
            "--user", dest="scope", action="store_const", const="user", help="per-user service"
        )
        scope.add_argument(
            "--system", dest="scope", action="store_const", const="system", help="system-wide service"
        )
        action.add_argument(
            "--executable", metavar="PATH", help="the cpu-tracker to run (default: this installation's)"
        )
        if name != "print":
            action.add_argument(
                "--root", metavar="DIR", default="/", help="install into an image rooted at DIR"
            )
            action.add_argument("--force", action="store_true", help="replace or remove a file that differs")
        if name == "install":
            action.add_argument(
                "--dry-run", action="store_true", help="show what would be written, write nothing"
            )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        if args.system_service:
            from cpu_tracker_daemon.service import system_dirs

            env = {**env, **{name: str(path) for name, path in system_dirs().items()}}
        from cpu_tracker_daemon import commands

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
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): a quiet success, as for any filter
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not fail
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, never a traceback with data
        print(
            f"cpu-tracker: internal error ({type(exc).__name__}: {one_line(str(exc))}); please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
