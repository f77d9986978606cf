"""The ``cpu-tracker`` parsers, built with argparse: every command, its options and its help.

The parsers are built along the command line's own words only (:func:`command_words`): a
command's parser with its options, its siblings not at all, and a ``--help`` level's children as
names with their help lines. Whatever that parser cannot parse is parsed again by the whole one,
so errors and help read exactly as they would; the test suite holds the two to the same results.
Each leaf parser names its handler in :mod:`commands` (``set_defaults(handler=...)``).

:mod:`cli` comes here for every command line but the plain ones it reads itself
(:data:`cli.PLAIN`), which the test suite holds to this module's results.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.errors import EXIT_CODES, UsageError
from cpu_tracker_daemon.names import LOG_FORMATS, MANAGERS

if TYPE_CHECKING:
    from typing import Any, NoReturn

    Fill = Callable[[argparse.ArgumentParser, "list[str] | None"], None]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


class _Commands:
    """The subcommands of one parser, added only where the command line goes: ``words`` are the
    command's words below this level (None: add and fill every subcommand; empty: list each, by
    name and help line, for this level's ``--help``; else only the first word's, filled)."""

    def __init__(self, parser: argparse.ArgumentParser, words: list[str] | None, dest: str, metavar: str):
        self._sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar, parser_class=_Parser)
        self._words = words
        self._formatter = functools.partial(argparse.HelpFormatter, width=_help_width())

    def add(self, name: str, fill: Fill, **options: Any) -> None:
        words = self._words
        if words and words[0] != name:
            return
        if words == []:  # only listed in this level's --help: never parses, so needs no -h of its own
            options["add_help"] = False
        child = self._sub.add_parser(name, formatter_class=self._formatter, **options)
        if words is None:
            fill(child, None)
        elif words:
            fill(child, words[1:])


def _help_width() -> int:
    """The width argparse would wrap help to, as ``shutil.get_terminal_size`` finds it ($COLUMNS,
    else the terminal, else 80, less 2), without importing shutil (with bz2 and lzma) in every
    command: argparse imports it for the first formatter it makes, which ``add_argument`` makes."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


def command_words(argv: Sequence[str]) -> list[str]:
    """The words of the command line that name its command (``budget grant``): the positional
    words, skipping the global options and the value ``--config`` takes."""
    words: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            words.extend(rest)
        elif arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            words.append(arg)
    return words


def build_parser(words: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (with ``words``, from :func:`command_words`) the part of it that
    command line goes through."""
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
        formatter_class=functools.partial(argparse.RawDescriptionHelpFormatter, width=_help_width()),
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
    sub = _Commands(parser, words, dest="command", metavar="COMMAND")
    sub.add(
        "run",
        _fill_run,
        help="run the daemon in the foreground (for systemd and launchd)",
        description=(
            "Run the daemon in the foreground until SIGTERM or Ctrl-C (exit 0); SIGHUP reloads the "
            "configuration. It samples for the configured window, publishes one noisy mean, and "
            "repeats every schedule.every_seconds while the privacy budget lasts."
        ),
    )
    sub.add("once", _fill_once, help="run one release cycle now")
    sub.add("status", _json_leaf("status"), help="last release, next due time, budget, paths")
    sub.add("budget", _fill_budget, help="inspect or raise the privacy budget")
    sub.add("ledger", _fill_ledger, help="the privacy ledger itself")
    sub.add("config", _fill_config, help="check or show the effective configuration")
    sub.add(
        "aggregate",
        _json_leaf("aggregate", writes_state=True, what="print the aggregate record"),
        help="one aggregation pass over the SyftBox tree's releases",
    )
    sub.add("service", _fill_service, help="print, install or remove the systemd unit or launchd plist")
    sub.add("secagg", _fill_secagg, help="secure aggregation's signing key, and the peers' keys pinned")
    _describe(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line: through the parser built along its words, or, where that cannot
    parse it (a mistake, an unusual spelling), the whole parser, which says what is wrong."""
    given = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(command_words(given)).parse_args(given)
    except UsageError:
        args = None
    if args is None or getattr(args, "handler", None) is None:
        args = build_parser().parse_args(given)
    return args


def _json_leaf(handler: str, writes_state: bool = False, what: str = "machine-readable output") -> Fill:
    def fill(parser: argparse.ArgumentParser, words: list[str] | None) -> None:
        parser.set_defaults(handler=handler, **({"writes_state": True} if writes_state else {}))
        parser.add_argument("--json", action="store_true", help=what)

    return fill


def _fill_run(run: argparse.ArgumentParser, words: list[str] | None) -> None:
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines for people (console) or machines (json); default: the config's "
        "logging.format, auto: console on a terminal, JSON under systemd, launchd and pipes",
    )
    run.set_defaults(handler="run", writes_state=True)


def _fill_once(once: argparse.ArgumentParser, words: list[str] | None) -> None:
    once.set_defaults(handler="once", writes_state=True)
    once.add_argument("--force", action="store_true", help="skip the cooldown (never the budget)")


def _fill_budget(budget: argparse.ArgumentParser, words: list[str] | None) -> None:
    bsub = _Commands(budget, words, dest="budget_command", metavar="ACTION")
    bsub.add(
        "show",
        _json_leaf("budget_show"),
        help="the privacy report: what is hidden, what is spent, when it pauses",
    )
    bsub.add(
        "plan", _json_leaf("budget_plan"), help="cost of one release, releases left under each cap, and when"
    )
    bsub.add(
        "requests",
        _json_leaf("budget_requests", writes_state=True),  # it keeps what it listed, for approve
        help="budget requests that readers sent to rpc/budget/",
    )
    bsub.add(
        "approve",
        _fill_decision("budget_approve", "a note for the requester", required=False),
        help="grant a pending request; the requester can read the answer",
    )
    bsub.add(
        "deny",
        _fill_decision("budget_deny", "why (sent to the requester)", required=True),
        help="refuse a pending request; the requester can read the answer",
    )
    bsub.add("grant", _fill_grant, help="raise a cap; recorded in the ledger with the reason")


def _fill_decision(handler: str, reason: str, required: bool) -> Fill:
    def fill(parser: argparse.ArgumentParser, words: list[str] | None) -> None:
        parser.set_defaults(handler=handler, writes_state=True)
        parser.add_argument(
            "request_id", metavar="ID", help="the request's id, as 'budget requests' lists it"
        )
        if required:
            parser.add_argument("--reason", required=True, help=reason)
        else:
            parser.add_argument("--reason", default="", help=reason)

    return fill


def _fill_grant(grant: argparse.ArgumentParser, words: list[str] | None) -> None:
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


def _fill_ledger(ledger: argparse.ArgumentParser, words: list[str] | None) -> None:
    lsub = _Commands(ledger, words, dest="ledger_command", metavar="ACTION")
    lsub.add(
        "reset",
        _fill_reset,
        help="retire the ledger (kept, renamed) and start a new budget; leaves a trace",
        description=(
            "Start the privacy budget over, deliberately: the old ledger is renamed (never "
            "deleted), the new one records the release already published as acknowledged, and "
            "ledger-resets.jsonl keeps who, when and why. Releases made under the old ledger "
            "still happened: whoever saw them may combine them with the new ones. It asks first on "
            "a terminal; elsewhere pass --yes (without it: exit 2, and nothing is changed)."
        ),
    )
    lsub.add(
        "verify",
        _fill_verify,
        help="check the whole ledger now (every page, schema, triggers, running counts); exit 4 if unsound",
        description=(
            "The full verification the daemon runs when it starts: SQLite's quick_check over every "
            "page, the schema, the append-only triggers, and the running release counts against "
            "the spends. Read-only; it never repairs anything."
        ),
    )


def _fill_reset(reset: argparse.ArgumentParser, words: list[str] | None) -> None:
    reset.add_argument("--reason", required=True, help="why (kept in the new ledger and the trace)")
    reset.add_argument(
        "--yes", action="store_true", help="do not ask first (needed without a terminal: exit 2 without it)"
    )
    reset.set_defaults(handler="ledger_reset", writes_state=True)


def _fill_verify(verify: argparse.ArgumentParser, words: list[str] | None) -> None:
    verify.set_defaults(handler="ledger_verify", writes_state=True)


def _fill_config(config: argparse.ArgumentParser, words: list[str] | None) -> None:
    csub = _Commands(config, words, dest="config_command", metavar="ACTION")
    csub.add("check", _fill_check, help="validate the configuration and the directories it names")
    csub.add(
        "init",
        _fill_init,
        help="write a commented starter config (every key at its default, commented out)",
        description=(
            "Write a starter config.toml where cpu-tracker looks for it (--config PATH, else "
            "$CPU_TRACKER_CONFIG, else ~/.config/cpu-tracker/config.toml, or /etc/cpu-tracker/ with "
            "--system): every key, commented out at its default, with a line on what it does."
        ),
    )
    csub.add(
        "show",
        _json_leaf("config_show", what="JSON instead of TOML"),
        help="the effective configuration, defaults filled in",
    )


def _fill_check(check: argparse.ArgumentParser, words: list[str] | None) -> None:
    check.set_defaults(handler="config_check")


def _fill_init(init: argparse.ArgumentParser, words: list[str] | None) -> None:
    init.set_defaults(handler="config_init", needs_config=False)
    init.add_argument("--force", action="store_true", help="replace a config file that exists")
    init.add_argument("--stdout", action="store_true", help="print it instead of writing a file")


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


def _fill_secagg(secagg: argparse.ArgumentParser, words: list[str] | None) -> None:
    ssub = _Commands(secagg, words, dest="secagg_command", metavar="ACTION")
    ssub.add(
        "identity",
        _json_leaf("secagg_identity", writes_state=True),
        help="this member's signing-key fingerprint (created if missing) and where its did.json is",
    )
    ssub.add(
        "accept-key",
        _fill_accept_key,
        help="pin a peer's new signing key, once its owner has confirmed the fingerprint",
        description=(
            "Read EMAIL's did.json from the SyftBox tree, show the pinned and the new key's "
            "fingerprints, and pin the new one. Without a terminal, --fingerprint must name the new "
            "key, so that nobody accepts a key blind."
        ),
    )


def _fill_accept_key(accept: argparse.ArgumentParser, words: list[str] | None) -> None:
    accept.set_defaults(handler="secagg_accept_key", writes_state=True)
    accept.add_argument("email", metavar="EMAIL", help="the peer whose did.json holds a new key")
    accept.add_argument(
        "--fingerprint",
        metavar="FP",
        help="the new key's fingerprint, as its owner's 'secagg identity' prints it (without a terminal)",
    )


_SERVICE_ACTIONS = {
    "print": "print the unit or plist for this installation",
    "install": "write it where the service manager looks, then print the command that starts it",
    "uninstall": "remove it (state, config and logs stay)",
}


def _fill_service(service: argparse.ArgumentParser, words: list[str] | None) -> None:
    ssub = _Commands(service, words, dest="service_command", metavar="ACTION")
    for name, text in _SERVICE_ACTIONS.items():
        ssub.add(name, functools.partial(_fill_service_action, name=name), help=text)


def _fill_service_action(action: argparse.ArgumentParser, words: list[str] | None, name: str) -> None:
    action.set_defaults(handler="service", needs_config=False)
    action.add_argument(
        "manager",
        nargs="?",
        choices=MANAGERS,
        default="launchd" if sys.platform == "darwin" else "systemd",
        help="default: this platform's",
    )
    scope = action.add_mutually_exclusive_group()
    scope.add_argument("--user", dest="scope", action="store_const", const="user", help="per-user service")
    scope.add_argument(
        "--system", dest="scope", action="store_const", const="system", help="system-wide service"
    )
    action.add_argument(
        "--executable", metavar="PATH", help="the cpu-tracker to run (default: this installation's)"
    )
    if name != "print":
        action.add_argument("--root", metavar="DIR", default="/", help="install into an image rooted at DIR")
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
