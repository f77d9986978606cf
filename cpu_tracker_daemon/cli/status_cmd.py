"""``cpu-tracker status``: the last release, the next one, the budget and where things are."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpu_tracker_daemon import __version__
from cpu_tracker_daemon.cli import views
from cpu_tracker_daemon.cli.common import Env, Subcommands, add_command, add_json, print_json
from cpu_tracker_daemon.cli.views import Snapshot, amount, at_most, floor_words, number
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import EXIT_OK


def add_parser(sub: Subcommands) -> None:
    status = add_command(sub, "status", help="last release, next due time, budget, paths")
    add_json(status)
    status.set_defaults(func=show_status)


def show_status(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.daemon.instance import holder

    now = datetime.now(UTC)
    snap = views.snapshot(config, now)
    view = views.budget_view(snap)
    view["config"] = str(path) if path else "embedded defaults"
    try:
        pid = holder(storage.layout_for(config).lock)
        running: bool | None = pid is not None
    except PermissionError:  # another user's state (the system service's, without sudo)
        pid, running = None, None
    view["daemon"] = {"running": running, "pid": pid}
    if args.json:
        print_json(view)
    else:
        print(status_text(view, snap, now, __version__, args.system_service))
    return EXIT_OK


def status_text(
    view: dict[str, Any], snap: Snapshot, now: datetime, version: str, system: bool = False
) -> str:
    """``cpu-tracker status`` for a person, from :func:`budget_view` with the daemon's state;
    ``system``: the system service's (``--system``), which its service manager starts."""
    from cpu_tracker_daemon import timewords

    pid, running = view["daemon"]["pid"], view["daemon"]["running"]
    b = view["budget"]
    life, win = b["caps"]["lifetime"], b["caps"]["window"]
    c = snap.calibration
    last = view["last_release_at"]
    lines = [
        f"cpu-tracker {version} (config: {view['config']})",
        "daemon:        "
        + (
            f"running (pid {pid})"
            if running
            else "unknown (its lock file is another user's; use sudo)"
            if running is None
            else start_hint(system)
        ),
        f"last release:  {timewords.moment(datetime.fromisoformat(last), now) if last else 'never'}",
        f"next due:      {timewords.moment(snap.next_release, now)}",
        f"releases:      {view['releases']}, each {c.mechanism} epsilon {c.epsilon:.3g}"
        + (f" delta {c.delta:g}" if c.delta else "")
        + f" (privacy unit: {c.unit})",
        f"budget:        lifetime {number(life['spent'])} of {life['limit']:g} spent, "
        f"{amount(life['remaining'])} left",
        f"               last {win['hours']:g} h {number(win['spent'])} of {win['limit']:g} spent, "
        f"{amount(win['remaining'])} left",
    ]
    worst = b.get("worst_case")
    if worst is not None:
        lines.append(
            "               (what an aggregator that follows the protocol learns; the caps hold these)"
        )
    if not b["releases_possible_now"] and view["ledger_exists"]:
        lines.append(
            "               PAUSED: the next release does not fit; "
            "'cpu-tracker budget grant EPSILON --reason TEXT' resumes releases"
        )
    if worst is not None:
        life_w, win_w = (math.inf if w is None else w for w in (life["worst_spent"], win["worst_spent"]))
        lines += [
            f"worst case:    against a cheating aggregator, {at_most(life_w)} lifetime, "
            f"{at_most(win_w)} in the last {win['hours']:g} h",
            f"               ({floor_words(life_w, worst['local_epsilon'])}; recorded, not capped)",
        ]
    mode = view["mode"]
    secure = mode["name"] == "secure_aggregation"
    if secure:
        lines.append(
            f"mode:          secure aggregation: each window goes, masked, to {mode['aggregator']}'s round "
            f"(up to {mode['beta_dropped']:g} absent and {mode['beta_colluding']:g} colluding); "
            "no release of its own"
        )
    lines += [
        f"public:        {mode['rounds'] if secure else view['paths']['public']}",
        f"private:       {view['paths']['private']}",
        f"ledger:        {view['paths']['ledger']}"
        + ("" if view["ledger_exists"] else " (not created yet: the first cycle creates it)"),
    ]
    return "\n".join(lines)


def start_hint(system: bool) -> str:
    """How to start the daemon whose status is shown: the caller's own, or the system service."""
    if not system:
        return "not running (start it: 'cpu-tracker run', or as a service: 'cpu-tracker service install')"
    import sys

    if sys.platform == "darwin":
        from cpu_tracker_daemon.daemon.service import LABEL

        start = f"sudo launchctl kickstart system/{LABEL}.daemon"
    else:
        start = "sudo systemctl start cpu-tracker"
    install = "sudo cpu-tracker service install --system"
    return f"not running (start it: '{start}'; not installed yet: '{install}')"
