"""Times for the terminal: spans, relative times and the local wall time, with its day when it
is not today. The local zone is pinned with ``TZ`` so the day boundary is where the test says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cpu_tracker_daemon import timewords


@pytest.fixture
def in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+9, with no daylight saving."""
    monkeypatch.setenv("TZ", "<+09>-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0 s"), (89, "89 s"), (90, "2 min"), (3599, "60 min"), (5400, "1 h 30 min"), (7200, "2 h"),
     (47 * 3600, "47 h"), (48 * 3600, "2 days"), (-600, "10 min")],
)  # fmt: skip
def test_a_span_is_rounded_the_way_people_say_it(seconds: float, said: str) -> None:
    assert timewords.span(seconds) == said


def test_relative_says_in_ago_or_now() -> None:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert timewords.relative(now + timedelta(minutes=28), now) == "in 28 min"
    assert timewords.relative(now - timedelta(minutes=12), now) == "12 min ago"
    assert timewords.relative(now + timedelta(seconds=0.5), now) == "now"


def test_a_time_today_is_the_clock_alone(in_tokyo: None) -> None:
    now = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo
    assert timewords.local(now + timedelta(minutes=36), now) == "10:36"


def test_a_time_past_local_midnight_names_its_day(in_tokyo: None) -> None:
    """CI once ran at 23:04: "in 60 min (at Wed 02 Dec 00:04)" is right, and only a day named
    tells the reader that 00:04 is tomorrow's."""
    now = datetime(2026, 12, 1, 14, 4, tzinfo=UTC)  # 23:04 on Tuesday in Tokyo
    assert timewords.local(now + timedelta(hours=1), now) == "Wed 02 Dec 00:04"
    assert timewords.local(now - timedelta(hours=1), now) == "22:04"


def test_the_day_is_the_local_one_not_utcs(in_tokyo: None) -> None:
    """At 20:00 UTC it is already 05:00 tomorrow in Tokyo: a time an hour on is the same local day."""
    now = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    assert timewords.local(now + timedelta(hours=1), now) == "06:00"
    assert timewords.moment(now + timedelta(hours=1), now) == (
        "in 60 min, at 06:00 local (2026-12-01T21:00:00+00:00)"
    )
