"""Times as a person reads them: "in 28 min (at 10:36)", "12 min ago". Pure functions.

Machine output (``--json``, the JSON log) keeps ISO 8601 in UTC; these are for the terminal.
"""

from __future__ import annotations

from datetime import datetime


def span(seconds: float) -> str:
    """A duration rounded the way people say it: "50 s", "28 min", "3 h 5 min", "4 days"."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    return f"{round(seconds / 86400)} days"


def relative(when: datetime, now: datetime) -> str:
    """ "in 28 min", "12 min ago" or "now" (within a second)."""
    seconds = (when - now).total_seconds()
    if abs(seconds) < 1:
        return "now"
    return f"in {span(seconds)}" if seconds > 0 else f"{span(seconds)} ago"


def local(when: datetime, now: datetime) -> str:
    """The local wall time: "10:36" today, "Wed 02 Dec 10:36" on another day."""
    here, today = when.astimezone(), now.astimezone()
    return here.strftime("%H:%M" if here.date() == today.date() else "%a %d %b %H:%M")


def moment(when: datetime, now: datetime) -> str:
    """Both, and the UTC time for the record: "in 28 min, at 10:36 local (2026-12-01T10:36:00+00:00)"."""
    return f"{relative(when, now)}, at {local(when, now)} local ({when.isoformat()})"
