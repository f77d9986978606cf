"""When a release may start and when its file is written: pure arithmetic on the clock.

The ledger's cooldown anchor is the start of the last reserved window; the next window may start
``every`` after it. What is published (the window's start, the file's time) is a point of the
schedule, never a reading of how late a cycle ran, so it carries nothing about the load.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from cpu_tracker_daemon.config import Config

PUBLISH_HOLD_SECONDS = 1.0  # the public file is written this long after the planned window's end


def due_at(anchor_ts: float | None, every: timedelta, now: datetime, late: float | None = None) -> datetime:
    """When the next window may start: ``every`` after the anchor, and never before now.

    With ``late`` (a secure-aggregation member: see :func:`grid_late`), the start is also a
    point of the shared grid (:func:`slot_at`): a slot that began at most ``late`` seconds ago
    is still due, a later one waits for the next slot."""
    if late is not None:
        return slot_at(anchor_ts, every, now, late)
    if anchor_ts is None:
        return now
    return max(datetime.fromtimestamp(anchor_ts, UTC) + every, now)


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
    if anchor_ts is None:
        return floored
    return max(datetime.fromtimestamp(anchor_ts, UTC) + every, floored)


def slot_at(anchor_ts: float | None, every: timedelta, now: datetime, late: float) -> datetime:
    """The first slot of the network's grid (multiples of ``every`` since the Unix epoch, so
    every member and the aggregator agree with no message) that the cooldown allows and that
    began no more than ``late`` seconds before ``now``."""
    period = every.total_seconds()
    earliest = now.timestamp() - late
    if anchor_ts is not None:
        earliest = max(earliest, anchor_ts + period)
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
    return slot + timedelta(seconds=config.sampling.window_seconds + publish_hold(config))


def first_round_start(config: Config) -> datetime:
    """Slot 0's round start: the origin of the grid the aggregator's rounds run on."""
    return round_start(datetime.fromtimestamp(0, UTC), config)


def publish_hold(config: Config) -> float:
    """How long after the planned window's end the public file is written: long enough that a
    busy machine's late end and slower writes are done by then (they show otherwise), short
    enough to leave the next window its time. 1 s at the defaults."""
    slack = config.schedule.every_seconds - config.sampling.window_seconds
    return min(PUBLISH_HOLD_SECONDS, max(slack, 0.0) / 2)
