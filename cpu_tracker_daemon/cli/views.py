"""The budget as ``status``, ``budget show`` and ``budget plan`` see it: one read-only snapshot of
the ledger, and the views (plain data, also their ``--json``) built from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.budget.caps import BudgetStatus, CapStatus, caps_for
from cpu_tracker_daemon.budget.ledger import Grant, open_ledger
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.layout import secagg_dir
from cpu_tracker_daemon.privacy.accounting import Event, releases_within
from cpu_tracker_daemon.privacy.mechanisms import Calibration, calibrate
from cpu_tracker_daemon.schedule import due_at, grid_late, lands_after, next_start

if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the reports need, read once."""

    config: Config
    now: datetime
    calibration: Calibration
    status: BudgetStatus
    grants: list[Grant]
    spend_times: list[float]  # planned starts of the spends in the rolling period, oldest first
    ledger_exists: bool

    @property
    def next_due(self) -> datetime:
        return due_at(self.status.cooldown_anchor_ts, self._every, self.now, grid_late(self.config))

    @property
    def next_release(self) -> datetime:
        """When the next release lands (its window's end and hold after :attr:`next_due`), the
        time ``run`` names too."""
        return self.next_due + timedelta(seconds=lands_after(self.config))

    @property
    def next_start(self) -> datetime:
        """The planned start of the next window: where the rolling period it is checked in ends."""
        return next_start(self.status.cooldown_anchor_ts, self._every, self.now, grid_late(self.config))

    @property
    def _every(self) -> timedelta:
        return timedelta(seconds=self.config.schedule.every_seconds)


def snapshot(config: Config, now: datetime) -> Snapshot:
    """The ledger as the next release will meet it: its rolling period ends at that release's
    planned start, as the daemon's check does, so a report never calls paused what will release."""
    layout = storage.layout_for(config)
    caps = caps_for(config)
    ledger = open_ledger(layout.ledger, caps, now, create=False, full=False)  # a read: the cheap checks
    if ledger is None:
        status, grants, times = BudgetStatus.fresh(caps), [], []
    else:
        every = timedelta(seconds=config.schedule.every_seconds)
        with ledger:
            start = next_start(ledger.anchor_ts(), every, now, grid_late(config))
            status = ledger.status(caps, now, at=start)
            grants = ledger.grants()
            times = ledger.spend_times(start.timestamp() - status.window_hours * 3600.0)
    return Snapshot(
        config=config,
        now=now,
        calibration=calibrate(config.privacy, config.sampling.samples),
        status=status,
        grants=grants,
        spend_times=times,
        ledger_exists=ledger is not None,
    )


def finite(value: float) -> float | None:
    """JSON has no infinity: an unprovable epsilon is reported as null."""
    return value if math.isfinite(value) else None


def per_release(c: Calibration) -> dict[str, Any]:
    return {
        "mechanism": c.mechanism,
        "unit": c.unit,
        "epsilon": c.epsilon,
        "delta": c.delta,
        "sensitivity": c.sensitivity,
        "noise_stddev": c.noise_stddev,
        "unbiased": c.unbiased,
    }


def _cap_view(cap: CapStatus) -> dict[str, Any]:
    return {
        "limit": cap.limit,
        "delta": cap.delta,
        "spent": finite(cap.spent),
        "remaining": cap.remaining,
        "granted": cap.granted,
        "granted_delta": cap.granted_delta,
        "method": cap.method,
    }


def mode_view(config: Config, layout: storage.Layout) -> dict[str, Any]:
    """How this member's windows are released: on their own (local DP, each with its noise) or
    in the secure rounds of an aggregator (the noise added once, in shares, to the network's sum)."""
    sa = config.secure_aggregation
    if not sa.enabled:
        return {"name": "local"}
    rounds = secagg_dir(layout.public_dir)
    return {
        "name": "secure_aggregation",
        "aggregator": sa.aggregator,
        "beta_dropped": sa.beta_dropped,
        "beta_colluding": sa.beta_colluding,
        "local_epsilon": sa.local_epsilon,
        "rounds": str(rounds),
    }


def worst_case_view(snap: Snapshot) -> dict[str, Any] | None:
    """Both figures of a ledger that holds windows sent to secure rounds, in numbers and in plain
    words: what an aggregator that follows the protocol learns (the spent epsilons, which the caps
    enforce) and what a cheating one can learn at most (the worst cases, recorded beside them).
    None when every release was local: its epsilon is all anyone learns."""
    status, config = snap.status, snap.config
    if not status.secure_releases:
        return None
    life, win = status.lifetime, status.window
    hours = config.budget.window_hours
    sa = config.secure_aggregation
    local = sa.local_epsilon if sa.enabled else None
    return {
        "caps_enforce": "protocol",
        "secure_releases": status.secure_releases,
        "local_epsilon": local,
        "spent_epsilon": finite(life.worst_spent),
        "window_spent_epsilon": finite(win.worst_spent),
        "protocol": (
            f"epsilon spent {number(finite(life.spent))} of {life.limit:g} (last {hours:g} h: "
            f"{number(finite(win.spent))} of {win.limit:g}): what an aggregator that follows the protocol "
            "learns; the caps enforce these"
        ),
        "cheating_aggregator": (
            f"against a cheating aggregator (any roster, its own accounts included), "
            f"{at_most(life.worst_spent, 'epsilon ')} (last {hours:g} h: {at_most(win.worst_spent)}): "
            f"{floor_words(life.worst_spent, local)}; recorded, not capped"
        ),
    }


def at_most(worst: float, what: str = "") -> str:
    return f"at most {what}{worst:.3g}" if math.isfinite(worst) else "no bound"


def floor_words(worst: float, local: float | None) -> str:
    """Where the worst case comes from, in a few words."""
    own = "each window's own noise" + ("" if local is None else f", local_epsilon {local:g}")
    if math.isfinite(worst):
        return own
    return f"windows sent before members added noise of their own have none; later ones, {own}"


def budget_view(snap: Snapshot) -> dict[str, Any]:
    """The figures ``status --json`` and ``budget show --json`` print."""
    layout = storage.layout_for(snap.config)
    status = snap.status
    caps = {cap.name: _cap_view(cap) for cap in status.caps}
    caps["window"]["hours"] = snap.config.budget.window_hours
    budget = {
        "spent_epsilon": finite(status.lifetime.spent),
        "remaining_epsilon": status.remaining,
        "caps": caps,
        "releases_possible_now": status.first_blocking(snap.calibration.event) is None,
    }
    worst = worst_case_view(snap)
    if worst is not None:  # a ledger of local releases alone reads as it always has
        for cap in status.caps:
            caps[cap.name]["worst_spent"] = finite(cap.worst_spent)
        budget["worst_case"] = worst
    return {
        "paths": {
            "state": str(layout.data_dir),
            "public": str(layout.public_file),
            "private": str(layout.private_file),
            "ledger": str(layout.ledger),
        },
        "ledger_exists": snap.ledger_exists,
        "mode": mode_view(snap.config, layout),
        "per_release": per_release(snap.calibration),
        "per_release_epsilon": snap.calibration.epsilon,
        "privacy_unit": snap.calibration.unit,
        "last_release_at": status.last_release_at,
        "next_due_at": snap.next_due.isoformat(),
        "releases": status.releases,
        "budget": budget,
        "grants": [asdict(g) for g in snap.grants],
    }


def plan(snap: Snapshot) -> dict[str, Any]:
    """The cost of one release, how many more fit under each cap, and when each cap runs out.

    Simulates the schedule (one release every ``schedule.every_seconds`` from the next due time)
    against the ledger's real history, with the same accountant the daemon uses.
    """
    event = snap.calibration.event
    every = snap.config.schedule.every_seconds
    period_seconds = snap.status.window_hours * 3600.0
    status = snap.status
    start = snap.next_start.timestamp()
    lifetime_left = _lifetime_left(status.lifetime, event)
    beyond = lifetime_left >= PLAN_HORIZON  # at least this many: the count looks no further
    period_pause = _period_pause(status.window, event, snap.spend_times, start, every, period_seconds)
    caps: dict[str, Any] = {
        "lifetime": {
            "releases_remaining": lifetime_left,
            "at_least": beyond,
            "exhausted_at": None if beyond else _at(start, every, lifetime_left),
        },
        "window": {
            "releases_remaining": period_pause,
            "exhausted_at": _at(start, every, period_pause) if period_pause is not None else None,
            "hours": snap.config.budget.window_hours,
        },
    }
    binding = lifetime_left if period_pause is None else min(lifetime_left, period_pause)
    unbounded = beyond and binding == lifetime_left
    return {
        "per_release": per_release(snap.calibration),
        "every_seconds": every,
        "next_due_at": snap.next_start.isoformat(),
        "releases_remaining": binding,
        "at_least": unbounded,
        "exhausted_at": None if unbounded else _at(start, every, binding),
        "caps": caps,
    }


PLAN_HORIZON = 100_000  # releases the plan counts ahead; a cap with room for more is "at least" this


def _at(start: float, every: float, releases: int) -> str:
    """When the first release that does not fit would be due (releases 0..n-1 fit)."""
    return datetime.fromtimestamp(start + releases * every, UTC).isoformat()


def _lifetime_left(cap: CapStatus, event: Event) -> int:
    return releases_within(
        event, cap.limit, cap.delta, prior=dict(cap.counts), limit=PLAN_HORIZON, tolerance=_tolerance(cap)
    )


def _tolerance(cap: CapStatus) -> float:
    return 1e-9 * max(1.0, cap.limit)


def _period_pause(
    cap: CapStatus, event: Event, times: list[float], start: float, every: float, period_seconds: float
) -> int | None:
    """How many scheduled releases happen before the rolling period first refuses one; None: never.

    The next release is checked against the real spends in the period. Later ones count
    releases: past ones in the period are taken to cost what the next one costs, which is exact
    unless the privacy settings changed within the period.

    The k-th later release (at ``start + k * every``) meets R(k) past spends still in its period
    and S(k) = min(k, P) scheduled ones before it. R only falls, at the k where a past spend
    leaves; between two such k it is constant and S only grows, so the first refusal in each
    stretch is found in one step: the cost is in the past spends, not the slots in the period
    (86,400 of them at a 1 s schedule).
    """
    if not cap.fits(event):
        return 0
    fit = releases_within(event, cap.limit, cap.delta, tolerance=_tolerance(cap))
    last = len(times) + math.ceil(period_seconds / every) + 1  # the last release examined
    plateau = _scheduled_before(last, every, period_seconds)
    leaves = [_leaves_at(t, start, every, period_seconds) for t in times]  # oldest first: sorted
    gone = 0
    k = 1
    while k <= last:
        while gone < len(leaves) and leaves[gone] <= k:
            gone += 1
        still = len(times) - gone
        until = leaves[gone] if gone < len(leaves) else last + 1  # ``still`` holds for k < until
        need = fit - still  # refused once the scheduled ones before it reach this many
        if need <= plateau and max(k, need) < min(until, last + 1):
            return max(k, need)
        k = until
    return None


def _scheduled_before(k: int, every: float, period_seconds: float) -> int:
    """How many of the scheduled releases 0..k-1 are in the period of the k-th: min(k, P)."""
    return k - max(0, math.floor(k - period_seconds / every) + 1)


def _leaves_at(t: float, start: float, every: float, period_seconds: float) -> int:
    """The first k >= 1 whose period (ending at ``start + k * every``) no longer holds a spend
    planned at ``t``: the same float comparison as counting the period release by release."""
    k = max(1, math.ceil((t + period_seconds - start) / every))
    while k > 1 and t <= start + (k - 1) * every - period_seconds:
        k -= 1
    while not t <= start + k * every - period_seconds:
        k += 1
    return k


def amount(value: float) -> str:
    """An epsilon as a person reads it: to the thousandth ("104.5", "0.125", "100"; three
    significant figures made 104.5 "104"), and in two significant figures below that, so a
    little left is not shown as none."""
    if value != 0 and abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def number(value: float | None) -> str:
    return "unprovable" if value is None else f"{value:.3g}"
