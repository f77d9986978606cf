"""``cpu-tracker ledger``: verify the privacy ledger, or retire it and start the budget over."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, confirm, subcommands, who
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import EXIT_OK, UsageError


def add_parser(sub: Subcommands) -> None:
    ledger = subcommands(add_command(sub, "ledger", help="the privacy ledger itself"), dest="ledger_command")
    reset = add_command(
        ledger,
        "reset",
        help="retire the ledger (kept, renamed) and start a new budget; leaves a trace",
        description=(
            "Start the privacy budget over, deliberately: the old ledger is renamed (never "
            "deleted), the new one records the release already published as acknowledged, and "
            "ledger-resets.jsonl keeps who, when and why. Releases made under the old ledger "
            "still happened: whoever saw them may combine them with the new ones. It asks first on "
            "a terminal; elsewhere pass --yes (without it: exit 2, and nothing is changed)."
        ),
    )
    reset.add_argument("--reason", required=True, help="why (kept in the new ledger and the trace)")
    reset.add_argument(
        "--yes", action="store_true", help="do not ask first (needed without a terminal: exit 2 without it)"
    )
    reset.set_defaults(func=reset_ledger, writes_state=True)
    verify = add_command(
        ledger,
        "verify",
        help="check the whole ledger now (every page, schema, triggers, running counts); exit 4 if unsound",
        description=(
            "The full verification the daemon runs when it starts: SQLite's quick_check over every "
            "page, the schema, the append-only triggers, and the running release counts against "
            "the spends. Read-only; it never repairs anything."
        ),
    )
    verify.set_defaults(func=verify_ledger, writes_state=True)


def verify_ledger(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False, full=True)
    if ledger is None:
        print(f"no ledger at {layout.ledger} yet; the first release creates it")
        return EXIT_OK
    with ledger:
        releases = ledger.status(caps_for(config), now).releases
        print(
            f"ledger {layout.ledger} is sound: schema {ledger.version}, "
            f"{releases} release{'' if releases == 1 else 's'}"
        )
    return EXIT_OK


def reset_ledger(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import reset
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.daemon.instance import claim_state

    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason must say why the budget starts over; it is kept with the new ledger")
    layout = storage.layout_for(config)
    if not args.yes:
        confirm(
            f"this retires the privacy ledger {layout.ledger} (kept, renamed) and starts the budget over",
            act="start over",
            declined="not reset",
        )
    with claim_state(layout):
        done = reset.reset_ledger(layout, caps_for(config), reason, who(), datetime.now(UTC))
    retired = f"the old ledger is kept as {done.retired}" if done.retired else "there was no ledger"
    acknowledged = (
        f"; release {', '.join(done.acknowledged)} in the public output is acknowledged"
        if done.acknowledged
        else ""
    )
    print(f"a new privacy ledger starts at {layout.ledger}; {retired}{acknowledged}; trace: {done.trace}")
    return EXIT_OK
