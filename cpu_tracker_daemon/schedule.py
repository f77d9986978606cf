"""The schedule rule, in one place: when a release may start, when its file is written, and when
the daemon runs its next cycle; pure arithmetic on the clocks the caller passes in.

What is published is a point of the schedule, never a reading of how late a cycle ran, so it
carries nothing about the load."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: the ledger's atomic cooldown check needs no config
    from cpu_tracker_daemon.config import Config

PUBLISH_HOLD_SECONDS = 1.0  # the public file is written this long after the planned window's end
WAIT_GRACE_SECONDS = 1.0  # real time a cooldown wait may run over, for a wall clock being slewed
CLOCK_JUMP_SECONDS = 5.0  # a wall-clock step larger than this, against the monotonic clock, re-plans
ALIGN_TOLERANCE = timedelta(milliseconds=1)  # a planned run this close to its target stays
MAX_WAIT_SECONDS = 60.0  # the longest a daemon's cycle waits for its cooldown

Clock = Callable[[], datetime]  # returns an aware UTC datetime


def utc_now() -> datetime:
    """The wall clock, in UTC: every :data:`Clock`'s production default."""
    return datetime.now(UTC)


def earliest_start(anchor_ts: float | None, every_seconds: float) -> float | None:
    """The cooldown's end: the earliest a window may start after the window anchored at
    ``anchor_ts`` (None: no window yet, so any time)."""
    return None if anchor_ts is None else anchor_ts + every_seconds


def due_at(anchor_ts: float | None, every: timedelta, now: datetime, late: float | None = None) -> datetime:
    """When the next window may start: ``every`` after the anchor, and never before now.

    With ``late`` (a secure-aggregation member: see :func:`grid_late`), the start is also a
    point of the shared grid (:func:`slot_at`): a slot that began at most ``late`` seconds ago
    is still due, a later one waits for the next slot."""
    if late is not None:
        return slot_at(anchor_ts, every, now, late)
    earliest = earliest_start(anchor_ts, every.total_seconds())
    if earliest is None:
        return now
    return max(datetime.fromtimestamp(earliest, UTC), now)


def nominal_start(
    anchor_ts: float | None, every: timedelta, now: datetime, late: float | None = None
) -> datetime:
    """The published start of a window beginning now: a point of the schedule, never a reading
    of how late this cycle ran. ``every`` after the anchor when the cycle keeps up; otherwise now
    floored to the second. Never before the cooldown allows, never after now. With ``late``,
    the slot of the shared grid the window belongs to."""
    if late is not None:
        return slot_at(anchor_ts, every, now, late)
    floored = now.replace(microsecond=0)
    earliest = earliest_start(anchor_ts, every.total_seconds())
    if earliest is None:
        return floored
    return max(datetime.fromtimestamp(earliest, UTC), floored)


def next_start(
    anchor_ts: float | None, every: timedelta, now: datetime, late: float | None = None
) -> datetime:
    """The planned start of the next window, from ``now``: where the rolling period it is checked
    in ends (the reports' view of the release the daemon will run next)."""
    return nominal_start(anchor_ts, every, due_at(anchor_ts, every, now, late), late)


def planned_start(
    anchor_ts: float | None, every: timedelta, now: datetime, late: float | None, force: bool
) -> datetime:
    """The planned start of a window beginning now: :func:`nominal_start`, or for a forced release
    (which skips the cooldown, never the budget) now floored to the second."""
    return now.replace(microsecond=0) if force else nominal_start(anchor_ts, every, now, late)


def planned_boot(boot_now: float, now: datetime, planned: datetime) -> float:
    """The boot clock at the planned start: the plan is at most a second before now (a step of the
    wall clock cannot stretch that, so cannot shorten the rolling period on the boot clock)."""
    return boot_now - min(max((now - planned).total_seconds(), 0.0), 1.0)


def slot_at(anchor_ts: float | None, every: timedelta, now: datetime, late: float) -> datetime:
    """The first slot of the network's grid (multiples of ``every`` since the Unix epoch, so
    every member and the aggregator agree with no message) that the cooldown allows and that
    began no more than ``late`` seconds before ``now``."""
    period = every.total_seconds()
    earliest = now.timestamp() - late
    cooldown_end = earliest_start(anchor_ts, period)
    if cooldown_end is not None:
        earliest = max(earliest, cooldown_end)
    return datetime.fromtimestamp(math.ceil(earliest / period - 1e-9) * period, UTC)


def grid_late(config: Config) -> float | None:
    """How late a window may start and still be in its slot's secure round: half a step, for a
    member of secure aggregation; None (no grid) for a member that releases on its own."""
    sa = config.secure_aggregation
    return sa.step_seconds / 2 if sa.enabled else None


def round_id(slot: datetime, every: timedelta) -> str:
    """The secure round of a slot: its number on the grid, the same on every machine."""
    return str(round(slot.timestamp() / every.total_seconds()))


def round_start(slot: datetime, config: Config) -> datetime:
    """When a slot's secure round begins: as its window's file would be written."""
    return publish_time(slot, config)


def planned_end(planned: datetime, config: Config) -> datetime:
    """The published end of the window planned to start at ``planned``."""
    return planned + timedelta(seconds=config.sampling.window_seconds)


def publish_time(planned: datetime, config: Config, hold: float | None = None) -> datetime:
    """When the public file of the window planned at ``planned`` is written: a fixed ``hold``
    (by default :func:`publish_hold`) after its planned end, whenever the window really ended."""
    return planned_end(planned, config) + timedelta(seconds=publish_hold(config) if hold is None else hold)


def first_round_start(config: Config) -> datetime:
    """Slot 0's round start: the origin of the grid the aggregator's rounds run on."""
    return round_start(datetime.fromtimestamp(0, UTC), config)


def publish_hold(config: Config) -> float:
    """How long after the planned window's end the public file is written: long enough that a
    busy machine's late end and slower writes are done by then (they show otherwise), short
    enough to leave the next window its time. 1 s at the defaults."""
    slack = config.schedule.every_seconds - config.sampling.window_seconds
    return min(PUBLISH_HOLD_SECONDS, max(slack, 0.0) / 2)


def lands_after(config: Config) -> float:
    """Seconds from a window's start to its public file."""
    return config.sampling.window_seconds + publish_hold(config)


class Spacing:
    """Within one process, releases are also spaced on the monotonic clock.

    The ledger's cooldown is on the wall clock, which survives restarts; this one survives the
    wall clock being stepped: after a jump forward, a window that began before the jump and one
    that begins after it are hours apart on the wall clock and milliseconds apart in fact.
    """

    __slots__ = ("last_window_start",)

    def __init__(self, last_window_start: float | None = None) -> None:
        self.last_window_start = last_window_start  # on the monotonic clock

    def seconds_left(self, every: float, now: float) -> float:
        return 0.0 if self.last_window_start is None else max(self.last_window_start + every - now, 0.0)


def max_wait(config: Config) -> float:
    """How long a daemon's cycle may wait for its cooldown: the grid and the cooldown can disagree
    by scheduling latency; a cycle waits that out, and the schedule is moved when it is more."""
    return min(config.schedule.every_seconds / 10, MAX_WAIT_SECONDS)


def once_wait(config: Config) -> float:
    """How long ``cpu-tracker once`` may wait: not at all for its cooldown (it says when instead),
    but a member of secure aggregation waits for the first slot its cooldown allows, and its
    round. The cooldown ends at most one interval from now and that slot at most one more (the
    last window may have been off the grid, under an earlier schedule of its own); a second
    more covers the start-up."""
    return 2 * config.schedule.every_seconds + 1 if config.secure_aggregation.enabled else 0.0


def clock_jumped(seconds: float) -> bool:
    """Whether the wall clock moved this far against the monotonic clock: a step, not a slew,
    after which the daemon re-plans from the ledger."""
    return abs(seconds) > CLOCK_JUMP_SECONDS


def plan_next_run(
    due: datetime, now: datetime, next_run: datetime, config: Config, may_advance: bool
) -> datetime | None:
    """When the daemon's next cycle should run, given the ``due`` time its last cycle reported and
    the run the scheduler has planned (``next_run``); None leaves the plan as it is.

    The run starts half the cycle's allowed wait early, so opening and checking the ledger
    are done by ``due`` and the cycle waits for ``due`` itself: windows start one interval
    apart, not one interval plus the cycle's start-up, which would drift.
    The run is moved earlier only after a release or a cooldown refusal (``may_advance``), which
    is how a slot is kept when a stalled cycle overran the grid and the scheduler skipped that run.
    A budget refusal's ``due`` is the cooldown's; running again at once would only refuse again.
    A ``due`` more than one interval ahead was reckoned on a clock that has since been set
    back (the cycle straddled the step); the clock-jump re-plan, from the ledger, stands.
    """
    wait = max_wait(config)
    if due - now > timedelta(seconds=config.schedule.every_seconds + wait):
        return None
    target = max(due - timedelta(seconds=wait / 2), now)
    if next_run < target or (may_advance and next_run > target + ALIGN_TOLERANCE):
        return target
    return None
