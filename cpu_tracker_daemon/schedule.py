"""When a release may start and when its file is written: pure arithmetic on the clock.

The ledger's cooldown anchor is the start of the last reserved window; the next window may start
``every`` after it. What is published (the window's start, the file's time) is a point of the
schedule, never a reading of how late a cycle ran, so it carries nothing about the load.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cpu_tracker_daemon.config import Config

PUBLISH_HOLD_SECONDS = 1.0  # the public file is written this long after the planned window's end


def due_at(anchor_ts: float | None, every: timedelta, now: datetime) -> datetime:
    """When the next window may start: ``every`` after the anchor, and never before now."""
    if anchor_ts is None:
        return now
    return max(datetime.fromtimestamp(anchor_ts, UTC) + every, now)


def nominal_start(anchor_ts: float | None, every: timedelta, now: datetime) -> datetime:
    """The published start of a window beginning now: a point of the schedule, never a reading
    of how late this cycle ran. ``every`` after the anchor when the cycle keeps up; otherwise now
    floored to the second. Never before the cooldown allows, never after now."""
    floored = now.replace(microsecond=0)
    if anchor_ts is None:
        return floored
    return max(datetime.fromtimestamp(anchor_ts, UTC) + every, floored)


def publish_hold(config: Config) -> float:
    """How long after the planned window's end the public file is written: long enough that a
    busy machine's late end and slower writes are done by then (they show otherwise), short
    enough to leave the next window its time. 1 s at the defaults."""
    slack = config.schedule.every_seconds - config.sampling.window_seconds
    return min(PUBLISH_HOLD_SECONDS, max(slack, 0.0) / 2)
