"""``cpu-tracker budget``: the privacy report, the plan, grants, and readers' requests for more."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpu_tracker_daemon.cli import views
from cpu_tracker_daemon.cli.common import (
    Env,
    Subcommands,
    add_command,
    add_json,
    confirm,
    positive_float,
    print_json,
    probability,
    subcommands,
    who,
)
from cpu_tracker_daemon.cli.views import Snapshot, amount, at_most, floor_words, worst_case_view
from cpu_tracker_daemon.config import MAXIMA, Config
from cpu_tracker_daemon.errors import EXIT_OK, UsageError


def add_parser(sub: Subcommands) -> None:
    budget = subcommands(
        add_command(sub, "budget", help="inspect or raise the privacy budget"), dest="budget_command"
    )
    show = add_command(
        budget, "show", help="the privacy report: what is hidden, what is spent, when it pauses"
    )
    add_json(show)
    show.set_defaults(func=show_budget)
    plan = add_command(budget, "plan", help="cost of one release, releases left under each cap, and when")
    add_json(plan)
    plan.set_defaults(func=show_plan)
    requests = add_command(budget, "requests", help="budget requests that readers sent to rpc/budget/")
    add_json(requests)
    requests.set_defaults(func=list_requests, writes_state=True)  # it keeps what it listed, for approve
    approve = add_command(
        budget, "approve", help="grant a pending request; the requester can read the answer"
    )
    _request_id(approve)
    approve.add_argument("--reason", default="", help="a note for the requester")
    approve.set_defaults(func=approve_request, writes_state=True)
    deny = add_command(budget, "deny", help="refuse a pending request; the requester can read the answer")
    _request_id(deny)
    deny.add_argument("--reason", required=True, help="why (sent to the requester)")
    deny.set_defaults(func=deny_request, writes_state=True)
    grant = add_command(budget, "grant", help="raise a cap; recorded in the ledger with the reason")
    grant.add_argument("epsilon", type=positive_float, metavar="EPSILON", help="how much to add to the cap")
    grant.add_argument("--reason", required=True, help="why (kept in the ledger's history)")
    grant.add_argument(
        "--cap",
        choices=("lifetime", "window"),
        default="lifetime",
        help="the cap to raise: all history (default) or the rolling period",
    )
    grant.add_argument("--delta", type=probability, default=0.0, help="also raise the cap's delta by this")
    grant.add_argument(
        "--yes", action="store_true", help="do not ask before a grant that more than doubles the cap"
    )
    grant.set_defaults(func=grant_budget, writes_state=True)


def _request_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="ID", help="the request's id, as 'budget requests' lists it")


def show_budget(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    snap = views.snapshot(config, datetime.now(UTC))
    planned = views.plan(snap)
    if args.json:
        view = views.budget_view(snap)
        view["config"] = str(path) if path else "embedded defaults"
        view["plan"] = planned
        print_json(view)
    else:
        print(privacy_report(snap, planned))
    return EXIT_OK


def show_plan(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    planned = views.plan(views.snapshot(config, datetime.now(UTC)))
    if args.json:
        print_json(planned)
    else:
        print(plan_text(planned))
    return EXIT_OK


def grant_budget(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger

    epsilon, cap, delta, reason = args.epsilon, args.cap, args.delta, args.reason.strip()
    if not reason:
        raise UsageError("--reason must say why the budget is raised; it is kept in the ledger")
    layout = storage.layout_for(config)
    storage.prepare(layout)  # a directory that cannot be written is a config error (3), as elsewhere
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=True)
    assert ledger is not None
    with ledger:
        before = ledger.status(caps_for(config), now)
        limit = (before.lifetime if cap == "lifetime" else before.window).limit
        most = MAXIMA[f"budget.{cap}_epsilon"]  # a cap past it is no cap, and its sums overflow
        if limit + epsilon > most:
            raise UsageError(
                f"that grant would raise the {cap} cap to epsilon {limit + epsilon:g}, past the most a cap "
                f"may be ({most:,}); grant at most {max(most - limit, 0):g}"
            )
        if epsilon > limit and not args.yes:
            confirm(
                f"a grant of epsilon {epsilon:g} more than doubles the {cap} cap "
                f"(epsilon {limit:g} now, {limit + epsilon:g} after)"
            )
        ledger.grant(cap, epsilon, reason, who(), now, delta)
        status = ledger.status(caps_for(config), now)
    chosen = status.lifetime if cap == "lifetime" else status.window
    print(
        f"granted epsilon {epsilon:g}{f' and delta {delta:g}' if delta else ''} to the {cap} cap: "
        f"now epsilon {chosen.limit:g} at delta {chosen.delta:g}, {amount(chosen.remaining)} left"
    )
    return EXIT_OK


def list_requests(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import requests as budget_requests
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import Decision, open_ledger

    layout = storage.layout_for(config)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=False)
    decided: dict[str, Decision] = {}
    if ledger is not None:
        with ledger:
            decided = ledger.decisions()
    found = budget_requests.scan(
        layout.requests_dir, config.syftbox.readers, decided, now, budget_requests.endpoint_url(layout)
    )
    budget_requests.remember_listed(layout, found.pending, now)
    if args.json:
        print_json(
            {
                "directory": str(layout.requests_dir),
                "pending": [r.__dict__ for r in found.pending],
                "already_decided": [r.request_id for r in found.decided],
                "skipped": dict(found.skipped),
                "skipped_from": dict(found.skipped_from),
            }
        )
        return EXIT_OK
    lines = [f"requests in {layout.requests_dir}:"]
    if not found.pending:
        lines.append("  none pending")
    for r in found.pending:
        delta = f" delta {r.delta:g}" if r.delta else ""
        lines.append(
            f"  {r.request_id}  {r.requester} asks epsilon {r.epsilon:g}{delta} for the {r.cap} cap "
            f"(file sha256 {r.digest[:12]})"
        )
        lines.append(f"      {r.created_at}: {r.reason}")
    if found.decided:
        lines.append(f"  already decided (ignored): {len(found.decided)}")
    for why, count in sorted(found.skipped.items()):
        lines.append(f"  skipped, {why}: {count}")
    for sender, count in sorted(found.skipped_from.items()):
        lines.append(f"  skipped from {sender}: {count} files")
    if found.pending:
        lines.append("approve: cpu-tracker budget approve ID; deny: cpu-tracker budget deny ID --reason TEXT")
    print("\n".join(lines))
    return EXIT_OK


def _decide(config: Config, request_id: str, decision: str, note: str) -> int:
    from cpu_tracker_daemon import storage
    from cpu_tracker_daemon.budget import requests as budget_requests
    from cpu_tracker_daemon.budget.caps import caps_for
    from cpu_tracker_daemon.budget.ledger import open_ledger

    layout = storage.layout_for(config)
    storage.prepare(layout)
    now = datetime.now(UTC)
    ledger = open_ledger(layout.ledger, caps_for(config), now, create=True)
    assert ledger is not None
    with ledger:
        final = budget_requests.decide(
            ledger, layout, config.syftbox.readers, request_id, decision, note, who(), now
        )
    path = budget_requests.write_response(layout, final)
    what = (
        f"granted epsilon {final.epsilon:g}"
        + (f" and delta {final.delta:g}" if final.delta else "")
        + f" to the {final.cap} cap"
        if decision == "approved"
        else "denied"
    )
    print(f"request {request_id} from {final.requester}: {what}; answer written to {path}")
    return EXIT_OK


def approve_request(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    return _decide(config, args.request_id, "approved", args.reason)


def deny_request(args: argparse.Namespace, config: Config, path: Path | None, env: Env) -> int:
    return _decide(config, args.request_id, "denied", args.reason)


_MECHANISM_WORDS = {
    "discrete_laplace": "discrete Laplace noise on a 0.01-point grid",
    "discrete_gaussian": "discrete Gaussian noise on a 0.01-point grid",
    "snapping": "Snapping-mechanism noise (Laplace made safe for floating point; clamped, so biased)",
}


def privacy_report(snap: Snapshot, planned: dict[str, Any]) -> str:
    """``budget show`` in plain words and figures."""
    c, config, status = snap.calibration, snap.config, snap.status
    window_s = config.sampling.window_seconds
    if c.unit == "window":
        hides = (
            f"everything this machine did during one {window_s:g} s sampling window: whether it was "
            f"idle or fully busy, the published value changes the odds of telling the two apart by "
            f"a factor of at most e^{c.epsilon:.3g} = {math.exp(min(c.epsilon, 700)):.3g}"
        )
    else:
        hides = (
            f"one {config.sampling.interval_seconds:g} s reading out of {config.sampling.samples}; "
            'it does NOT hide what the machine did over the window (use privacy.unit = "window")'
        )
    delta_words = f", except with probability {c.delta:g}" if c.delta else ""
    lines = [
        "What one published value hides",
        f"  Each value is the mean CPU busy over {window_s:g} s plus {_MECHANISM_WORDS[c.mechanism]} with a "
        f"standard deviation of {c.noise_stddev:.3g} percentage points.",
        f"  It hides {hides}{delta_words} (epsilon {c.epsilon:.3g}, delta {c.delta:g} per release).",
        "",
        "What the releases add up to",
    ]
    for cap, label in (
        (status.window, f"last {config.budget.window_hours:g} h"),
        (status.lifetime, "all history"),
    ):
        count = cap.releases
        spent = "nothing" if count == 0 else f"epsilon {cap.spent:.3g} at delta {cap.delta:g} ({cap.method})"
        lines.append(
            f"  {label}: {count} release{'s' if count != 1 else ''}, {spent}; "
            f"cap epsilon {cap.limit:g}, delta {cap.delta:g}"
        )
    worst = worst_case_view(snap)
    if worst is not None:
        lines += [
            f"  Of these releases, {worst['secure_releases']} went to secure rounds. The figures above are "
            "what an aggregator that follows the protocol learns (with no more colluding members than the "
            "rounds are calibrated for), and they are what the caps enforce.",
            f"  Against a cheating aggregator (any roster, its own accounts included): "
            f"{at_most(status.lifetime.worst_spent, 'epsilon ')} over all history and "
            f"{at_most(status.window.worst_spent)} over the last {config.budget.window_hours:g} h "
            f"({floor_words(status.lifetime.worst_spent, worst['local_epsilon'])}, each window's worst "
            "case summed). This is recorded with each spend; no cap enforces it.",
        ]
    lines += ["", "When releases pause"]
    every = config.schedule.every_seconds
    left = planned["releases_remaining"]
    if left == 0:
        lines.append("  Now: the next release does not fit under a cap.")
    elif planned["at_least"]:
        lines.append(
            f"  At one release every {every:g} s, at least {left} more fit; the plan counts no further."
        )
    else:
        lines.append(
            f"  At one release every {every:g} s, {left} more fit; the first that does not would be due "
            f"{planned['exhausted_at']}."
        )
    window = planned["caps"]["window"]
    if window["releases_remaining"] is None:
        lines.append("  The rolling cap never stops this schedule; the lifetime cap does.")
    lines += [
        "",
        "How to resume",
        "  Only the owner can raise a cap, and each grant is kept in the ledger with who and why:",
        "  cpu-tracker budget grant EPSILON --reason TEXT [--cap lifetime|window] [--delta DELTA]",
    ]
    if snap.grants:
        lines += ["", "Grants"]
        lines += [
            f"  {g.granted_at}  +epsilon {g.epsilon:g}"
            + (f" +delta {g.delta:g}" if g.delta else "")
            + f" to {g.cap}, by {g.granted_by}: {g.reason}"
            for g in snap.grants
        ]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str) -> str:
    if len(line) <= 96 or not line.startswith("  "):
        return line
    import textwrap  # the privacy report's alone: status never wraps a line

    return textwrap.fill(line.strip(), width=96, initial_indent="  ", subsequent_indent="    ")


def plan_text(planned: dict[str, Any]) -> str:
    """``cpu-tracker budget plan`` for a person, from :func:`plan`."""
    p = planned["per_release"]
    lines = [
        f"one release:   {p['mechanism']}, epsilon {p['epsilon']:.4g}, delta {p['delta']:g}, "
        f"noise stddev {p['noise_stddev']:.4g} percentage points ({p['unit']} unit)",
        f"schedule:      every {planned['every_seconds']:g} s from {planned['next_due_at']}",
    ]
    for name, cap in planned["caps"].items():
        left = (
            "no limit at this schedule"
            if cap["releases_remaining"] is None
            else f"at least {cap['releases_remaining']} more; the plan counts no further"
            if cap.get("at_least")
            else f"{cap['releases_remaining']} more, then paused from {cap['exhausted_at']}"
        )
        lines.append(f"{name + ' cap:':<15}{left}")
    left = planned["releases_remaining"]
    if planned["at_least"]:
        lines.append(f"overall:       at least {left} more releases; the plan counts no further")
    else:
        lines.append(f"overall:       {left} more releases, until {planned['exhausted_at']}")
    return "\n".join(lines)
