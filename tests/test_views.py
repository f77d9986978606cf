"""``budget plan``'s arithmetic: when the rolling cap first pauses the schedule; ``status`` and
``budget show`` with both figures of a secure window."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.budget.caps import CapStatus, caps_for
from cpu_tracker_daemon.budget.ledger import Spend, open_ledger
from cpu_tracker_daemon.cli import views
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.privacy.accounting import DISCRETE_LAPLACE as LOCAL
from cpu_tracker_daemon.privacy.accounting import SECURE_DISCRETE_LAPLACE as SECURE
from cpu_tracker_daemon.privacy.accounting import Event, releases_within
from tests.conftest import run_cli, write_config

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
    assert views._period_pause(cap, event, times, START, every, period) == expected


def test_a_one_second_schedule_is_counted_without_visiting_every_slot() -> None:
    """86,400 slots in the period: the answer is the count's, from the past spends alone."""
    event = Event.laplace(0.5)
    times = [START - 3600.0 * h for h in range(23, -1, -1)]
    cap = CapStatus("window", 12.0, 12.0, 0.0, 12.0, counts=((event, 24),))
    full = CapStatus("window", 15.0, 12.0, 0.0, 15.0, counts=((event, 24),))
    assert views._period_pause(cap, event, times, START, 1.0, 86400.0) == 0
    expected = release_by_release(full, event, times, START, 1.0, 86400.0)
    assert views._period_pause(full, event, times, START, 1.0, 86400.0) == expected == 6


class TestBothFigures:
    """``status`` and ``budget show`` (real processes) give a ledger with secure windows both
    figures in plain words, and a ledger of local releases the text it always had."""

    @staticmethod
    def ledger_with(config: Path, spends: list[tuple[str, float, float | None]]) -> None:
        """The config's ledger holding ``spends`` (mechanism, hours before now, worst case), each
        at epsilon 0.5, on the wall clock alone (no boot id)."""
        cfg = load_config(config)
        caps = caps_for(cfg)
        layout = storage.layout_for(cfg)
        storage.prepare(layout)
        now = datetime.now(UTC)
        ledger = open_ledger(layout.ledger, caps, now, boot=lambda: (None, 0.0))
        assert ledger is not None
        with ledger:
            for n, (mechanism, hours, worst) in enumerate(spends):
                at = now - timedelta(hours=hours)
                spend = Spend(f"r{n}", at, at + timedelta(seconds=1), 0.5, 0.0, mechanism, "window", 100.0)
                ledger.reserve(replace(spend, worst_epsilon=worst), caps, now, None)

    @pytest.mark.slow
    def test_a_ledger_with_secure_windows_says_both(self, tmp_path: Path) -> None:
        """Three windows sent to secure rounds (two of them 30 h ago) and one local release: the
        caps count the protocol's epsilon (2 in all, 1 in the last 24 h), what a protocol-following
        aggregator learns; a cheating one learns at most 15.5 (5.5 in the last 24 h)."""
        (tmp_path / "SyftBox").mkdir()
        config = write_config(
            tmp_path,
            {
                "schedule": {"every_seconds": 3600},
                "syftbox": {"dir": str(tmp_path / "SyftBox"), "email": "me@example.org"},
                "secure_aggregation": {"enabled": True, "aggregator": "agg@example.org"},
            },
        )
        self.ledger_with(
            config, [(SECURE, 30, 5.0), (SECURE, 29, 5.0), (SECURE, 0.5, 5.0), (LOCAL, 0.5, None)]
        )
        status = run_cli("--config", str(config), "status")
        assert status.returncode == 0, status.stderr
        assert (
            "budget:        lifetime 2 of 100 spent, 98 left\n"
            "               last 24 h 1 of 100 spent, 99 left\n"
            "               (what an aggregator that follows the protocol learns; the caps hold these)\n"
            "worst case:    against a cheating aggregator, at most 15.5 lifetime, "
            "at most 5.5 in the last 24 h\n"
            "               (each window's own noise, local_epsilon 5; recorded, not capped)\n"
        ) in status.stdout
        show = run_cli("--config", str(config), "budget", "show")
        assert show.returncode == 0, show.stderr
        words = " ".join(show.stdout.split())
        assert "all history: 4 releases, epsilon 2 at delta 1e-06 (sum); cap epsilon 100" in words
        assert (
            "Of these releases, 3 went to secure rounds. The figures above are what an aggregator that "
            "follows the protocol learns (with no more colluding members than the rounds are calibrated "
            "for), and they are what the caps enforce."
        ) in words
        assert (
            "Against a cheating aggregator (any roster, its own accounts included): at most epsilon 15.5 "
            "over all history and at most 5.5 over the last 24 h (each window's own noise, local_epsilon 5"
        ) in words
        for command in (["status", "--json"], ["budget", "show", "--json"]):
            result = run_cli("--config", str(config), *command)
            assert result.returncode == 0, result.stderr
            budget = json.loads(result.stdout)["budget"]
            worst = budget["worst_case"]
            assert (worst["caps_enforce"], worst["secure_releases"], worst["local_epsilon"]) == (
                "protocol",
                3,
                5.0,
            )
            assert (worst["spent_epsilon"], worst["window_spent_epsilon"]) == (15.5, 5.5)
            assert (budget["spent_epsilon"], budget["caps"]["lifetime"]["worst_spent"]) == (2.0, 15.5)
            assert budget["caps"]["window"]["worst_spent"] == 5.5
            assert "what an aggregator that follows the protocol learns" in worst["protocol"]
            assert "against a cheating aggregator" in worst["cheating_aggregator"]
            assert "at most epsilon 15.5" in worst["cheating_aggregator"]

    @pytest.mark.slow
    def test_a_ledger_of_local_releases_reads_as_it_always_has(self, tmp_path: Path) -> None:
        """Two local releases: one figure, no worst case, in the text and the JSON alike."""
        config = write_config(tmp_path)
        self.ledger_with(config, [(LOCAL, 2, None), (LOCAL, 1, None)])
        status = run_cli("--config", str(config), "status")
        assert status.returncode == 0, status.stderr
        assert (
            "budget:        lifetime 1 of 100 spent, 99 left\n"
            "               last 24 h 1 of 100 spent, 99 left\n"
            "public:"
        ) in status.stdout
        show = run_cli("--config", str(config), "budget", "show")
        assert show.returncode == 0, show.stderr
        assert (
            "  all history: 2 releases, epsilon 1 at delta 1e-06 (sum); cap epsilon 100, delta 1e-06\n"
            "\n"
            "When releases pause\n"
        ) in show.stdout
        for out in (status.stdout, show.stdout):
            assert "worst" not in out
            assert "cheating" not in out
        for command in (["status", "--json"], ["budget", "show", "--json"]):
            result = run_cli("--config", str(config), *command)
            budget = json.loads(result.stdout)["budget"]
            assert set(budget) == {"spent_epsilon", "remaining_epsilon", "caps", "releases_possible_now"}
            assert "worst_spent" not in budget["caps"]["lifetime"]
            assert "worst_spent" not in budget["caps"]["window"]
