"""``budget plan``'s arithmetic: when the rolling cap first pauses the schedule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon import report
from cpu_tracker_daemon.accounting import Event, releases_within
from cpu_tracker_daemon.budget import CapStatus

START = 1_790_000_000.0


def release_by_release(
    cap: CapStatus, event: Event, times: list[float], start: float, every: float, period: float
) -> int | None:
    """The plain count, one scheduled release at a time (what ``_period_pause`` was before it
    skipped from one past spend's leaving to the next)."""
    if not cap.fits(event):
        return 0
    fit = releases_within(event, cap.limit, cap.delta, tolerance=1e-9 * max(1.0, cap.limit))
    slots = math.ceil(period / every) + 1
    oldest = 0
    for k in range(1, len(times) + slots + 1):
        t = start + k * every
        while oldest < len(times) and times[oldest] <= t - period:
            oldest += 1
        scheduled = k - max(0, math.floor(k - period / every) + 1)
        if (len(times) - oldest) + scheduled + 1 > fit:
            return k
    return None


@settings(max_examples=300, deadline=None)
@given(
    every=st.sampled_from([1.0, 7.5, 60.0, 3600.0, 5000.0]),
    hours=st.sampled_from([1.0, 2.5, 24.0]),
    epsilon=st.sampled_from([0.1, 0.5, 1.0]),
    limit=st.floats(0.5, 40.0),
    offsets=st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=40),
)
@pytest.mark.slow
def test_the_pause_is_what_counting_release_by_release_finds(
    every: float, hours: float, epsilon: float, limit: float, offsets: list[float]
) -> None:
    period = hours * 3600.0
    event = Event.laplace(epsilon)
    times = sorted(START - period * f for f in offsets)  # planned starts within the period
    counts = ((event, len(times)),) if times else ()
    spent = epsilon * len(times)
    cap = CapStatus("window", limit, spent, 0.0, limit, counts=counts)
    expected = release_by_release(cap, event, times, START, every, period)
    assert report._period_pause(cap, event, times, START, every, period) == expected


def test_a_one_second_schedule_is_counted_without_visiting_every_slot() -> None:
    """86,400 slots in the period: the answer is the count's, from the past spends alone."""
    event = Event.laplace(0.5)
    times = [START - 3600.0 * h for h in range(23, -1, -1)]
    cap = CapStatus("window", 12.0, 12.0, 0.0, 12.0, counts=((event, 24),))
    full = CapStatus("window", 15.0, 12.0, 0.0, 15.0, counts=((event, 24),))
    assert report._period_pause(cap, event, times, START, 1.0, 86400.0) == 0
    expected = release_by_release(full, event, times, START, 1.0, 86400.0)
    assert report._period_pause(full, event, times, START, 1.0, 86400.0) == expected == 6
