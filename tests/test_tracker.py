"""One cycle end to end against a real SQLite ledger and real files, with a fake clock and CPU."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import random
import sqlite3
import stat
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from cpu_tracker_daemon import logs
from cpu_tracker_daemon.budget import schema as ledger_schema
from cpu_tracker_daemon.config import Config, load_config
from cpu_tracker_daemon.sampling import PsutilCpuSource, Reading
from cpu_tracker_daemon.schedule import WAIT_GRACE_SECONDS, Spacing, publish_hold
from cpu_tracker_daemon.storage import layout_for, prepare
from cpu_tracker_daemon.tracker import CycleLog, Tracker
from tests.conftest import FakeClock, FakeCpu, log_events, write_config


def make_tracker(
    tmp_path: Path, clock: FakeClock, cpu: Any = None, overrides: dict[str, dict[str, Any]] | None = None
) -> tuple[Tracker, io.StringIO]:
    config: Config = load_config(write_config(tmp_path, overrides))
    layout = layout_for(config)
    prepare(layout)
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    tracker = Tracker(
        config=config,
        layout=layout,
        cpu=cpu or FakeCpu(),
        log=logs.get_logger("test"),
        clock=clock,
        random_state=random.Random(5),
        hold_seconds=0.0,  # the fake clock stands still: a hold would wait out its real-time bound
    )
    return tracker, stream


class AdvancingStop(threading.Event):
    """A stop event whose waits move the fake clock on instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.advance(timeout or 0.0)
        return self.is_set()


def outcomes_at(tracker: Tracker) -> dict[str, datetime]:
    with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
        rows = conn.execute("SELECT status, at FROM outcomes ORDER BY id").fetchall()
    return {status: datetime.fromisoformat(at) for status, at in rows}


def outcomes(tracker: Tracker) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
        return conn.execute("SELECT release_id, status FROM outcomes ORDER BY id").fetchall()


class TestRelease:
    def test_release_writes_both_files_and_the_ledger(self, tmp_path: Path, clock: FakeClock) -> None:
        """A cycle spends epsilon, writes the private raw mean (0600) and the public noisy mean (0644)."""
        tracker, _ = make_tracker(tmp_path, clock, FakeCpu(0.25))
        result = tracker.cycle()
        assert result.outcome == "released"
        public = json.loads(tracker.layout.public_file.read_text())
        private = json.loads(tracker.layout.private_file.read_text())
        assert private["cpu_raw_mean"] == 25.0
        assert public["cpu"] != 25.0
        assert public["release_id"] == private["release_id"] == result.release_id
        assert public["privacy"] == {
            "unit": "window",
            "mechanism": "discrete_laplace",
            "epsilon": 0.5,
            "delta": 0.0,
            "sensitivity": 100.0,
            "sensitivity_units": 10_000,
            "grid": 0.01,
            "noise_scale": 200.0,
            "noise_stddev": pytest.approx(282.8427, rel=1e-6),
            "unbiased": True,
            "lower": 0.0,
            "upper": 100.0,
        }
        assert public["cpu"] == public["cpu_units"] / 100
        assert private["cpu_raw_units"] == 2500
        assert public["timestamp"].endswith("+00:00")
        assert public["window"]["samples"] == 5
        assert 0.0 <= public["cpu_clamped"] <= 100.0
        assert stat.S_IMODE(tracker.layout.public_file.stat().st_mode) == 0o644
        assert stat.S_IMODE(tracker.layout.private_file.stat().st_mode) == 0o600
        assert outcomes(tracker) == [(result.release_id, "drawn"), (result.release_id, "published")]

    def test_real_psutil_cycle(self, tmp_path: Path, clock: FakeClock) -> None:
        """With the real psutil source the raw mean is a percentage and the release is made."""
        tracker, _ = make_tracker(tmp_path, clock, PsutilCpuSource())
        assert tracker.cycle().outcome == "released"
        private = json.loads(tracker.layout.private_file.read_text())
        assert 0.0 <= private["cpu_raw_mean"] <= 100.0

    @pytest.mark.parametrize(("unit", "expected"), [("window", 100 * 2.0 / 2.4), ("sample", 50.0)])
    def test_private_value_is_the_statistic_the_unit_protects(
        self, tmp_path: Path, clock: FakeClock, unit: str, expected: float
    ) -> None:
        """Unequal readings (a stall): the window unit keeps busy over total CPU-seconds, the sample
        unit the equal-weight mean its per-sample sensitivity is computed for."""

        class Alternating:
            def __init__(self) -> None:
                self.calls = 0

            def read(self) -> Reading:
                self.calls += 1
                return Reading(busy=0.0, total=0.2) if self.calls % 2 else Reading(busy=1.0, total=1.0)

        fast = {"sampling": {"samples": 4, "interval_seconds": 0.01}, "privacy": {"unit": unit}}
        tracker, _ = make_tracker(tmp_path, clock, Alternating(), fast)
        assert tracker.cycle().outcome == "released"
        private = json.loads(tracker.layout.private_file.read_text())
        assert expected == pytest.approx(private["cpu_raw_mean"])

    def test_cooldown_blocks_a_second_release(self, tmp_path: Path, clock: FakeClock) -> None:
        """A cycle before every_seconds has passed releases nothing and spends nothing."""
        tracker, _ = make_tracker(tmp_path, clock)
        tracker.cycle()
        clock.advance(0.5)
        result = tracker.cycle()
        assert result.outcome == "cooldown"
        assert len(outcomes(tracker)) == 2
        clock.advance(0.6)
        assert tracker.cycle().outcome == "released"

    def test_a_cooldown_from_the_monotonic_spacing_is_due_when_the_spacing_says(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """CI, 2026-12-01: the ledger's cooldown counts from the planned start (floored to the
        second), the process's spacing from the real one. When the real start was late by more
        than the allowed wait, the spacing refused while the ledger said "due now", and the
        daemon, told the next run was due now, cycled every 2 ms until the gap closed. The
        refusal's due time is now the later of the two."""
        tracker, _ = make_tracker(tmp_path, clock)
        spacing = Spacing(last_window_start=100.0)
        tracker = dataclasses.replace(tracker, spacing=spacing, monotonic=lambda: 100.5)
        result = tracker.cycle(max_wait=0.1)
        assert result.outcome == "cooldown"
        assert result.next_due_at is not None
        assert result.next_due_at >= clock() + timedelta(seconds=0.5)

    def test_force_skips_cooldown_not_budget(self, tmp_path: Path, clock: FakeClock) -> None:
        """--force releases inside the cooldown but still stops at the budget cap."""
        tracker, _ = make_tracker(tmp_path, clock, overrides={"budget": {"window_epsilon": 1.0}})
        assert tracker.cycle(force=True).outcome == "released"
        assert tracker.cycle(force=True).outcome == "released"
        result = tracker.cycle(force=True)
        assert result.outcome == "budget_exhausted"
        assert "budget grant" in str(result.error)

    def test_clock_jumping_back_delays_at_most_one_interval(self, tmp_path: Path, clock: FakeClock) -> None:
        """After a backwards jump of hours, the next release comes one interval later, not hours later."""
        tracker, stream = make_tracker(tmp_path, clock)
        tracker.cycle()
        clock.advance(-3 * 3600)
        assert tracker.cycle().outcome == "cooldown"
        assert any(e["event"] == "clock.skew" for e in log_events(stream.getvalue()))
        clock.advance(1.0)
        assert tracker.cycle().outcome == "released"


class TestClockJumps:
    def test_forward_jump_or_resume_from_suspend_gives_one_release_not_a_burst(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Hours skipped (a suspend, or a clock set forward) are not made up: one release, then cooldown."""
        tracker, _ = make_tracker(tmp_path, clock)
        assert tracker.cycle().outcome == "released"
        clock.advance(5 * 3600)
        results = [tracker.cycle().outcome for _ in range(4)]
        assert results == ["released", "cooldown", "cooldown", "cooldown"]

    @pytest.mark.slow
    def test_clock_set_back_during_the_cooldown_wait_refuses_instead_of_waiting_hours(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """A cycle waiting out the last 0.3 s of its cooldown sees the clock set back 5 h. It gives up
        after that wait plus the grace in real time, as a cooldown refusal, rather than waiting 5 h."""
        tracker, _ = make_tracker(tmp_path, clock, overrides={"schedule": {"every_seconds": 10}})
        assert tracker.cycle().outcome == "released"
        clock.advance(10 - 0.3)
        outcome: list[str] = []
        waiting = threading.Thread(target=lambda: outcome.append(tracker.cycle(max_wait=1.0).outcome))
        started = time.monotonic()
        waiting.start()
        time.sleep(0.1)
        clock.advance(-5 * 3600)
        waiting.join(timeout=10)
        stuck = waiting.is_alive()
        tracker.stop.set()  # lets a stuck cycle go, so a failure does not hang the suite
        waiting.join()
        assert not stuck, "the cycle was still waiting on the wall clock"
        assert outcome == ["cooldown"]
        assert time.monotonic() - started < 0.3 + WAIT_GRACE_SECONDS + 2
        assert [status for _, status in outcomes(tracker)].count("published") == 1

    @pytest.mark.slow
    def test_random_walk_of_the_clock_never_beats_the_cooldown(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Seeded: 60 moves, mostly small steps forward, some jumps of hours either way. Every release
        after the first comes after at least every_seconds of forward movement since the one before;
        a backward jump never buys an early release."""
        rng = np.random.default_rng(11)
        tracker, _ = make_tracker(tmp_path, clock, overrides={"schedule": {"every_seconds": 600}})
        assert tracker.cycle().outcome == "released"
        since_last = 0.0
        releases = 1
        for _ in range(60):
            jump = rng.random() < 0.3
            move = (
                float(rng.choice([-1, 1]) * rng.uniform(0, 3 * 3600)) if jump else float(rng.uniform(0, 400))
            )
            clock.advance(move)
            since_last += max(move, 0.0)
            if tracker.cycle(max_wait=0).outcome == "released":
                assert since_last >= 600
                since_last = 0.0
                releases += 1
        assert releases > 3  # the walk does reach releases, so the check above ran


@dataclass
class LaggingCpu:
    """A busy machine whose sampler runs late: every reading moves the clock on by ``lag``."""

    clock: FakeClock
    fraction: float
    lag: float

    def read(self) -> Reading:
        self.clock.advance(self.lag)
        return Reading(busy=self.fraction, total=1.0)


class TestLedgerHeldElsewhere:
    @pytest.mark.slow
    def test_a_ledger_locked_by_another_process_refuses_the_cycle_and_the_next_one_releases(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """A backup tool or an sqlite3 shell held the ledger for 15 s and the daemon exited 8. A
        real second process holds an exclusive lock now: the cycle is refused, nothing is spent,
        and once the lock is gone the next cycle releases."""
        import subprocess
        import sys

        tracker, _ = make_tracker(tmp_path, clock)
        tracker = dataclasses.replace(tracker, lock_timeout=0.3)
        assert tracker.cycle(force=True).outcome == "released"
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); sys.stdin.read()",
             str(tracker.layout.ledger)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            result = tracker.cycle(force=True)
            assert result.outcome == "ledger_unavailable"
            assert "locked" in str(result.error)
        finally:
            holder.communicate("", timeout=10)
        assert tracker.cycle(force=True).outcome == "released"
        assert [status for _, status in outcomes(tracker)].count("published") == 2


class TestPublishedTimes:
    def test_busy_and_idle_windows_publish_the_same_times(self, tmp_path: Path) -> None:
        """The timing side channel: a busy machine ends its window and writes later than an idle
        one. The public record and the Prometheus file carry the planned window instead, so both
        publish the same start, end and timestamp, to the microsecond."""
        published = []
        for name, fraction, lag in (("idle", 0.0, 0.0), ("busy", 1.0, 0.37)):
            clock = FakeClock(datetime(2026, 1, 1, 12, 0, 0, 421_337, tzinfo=UTC))
            (tmp_path / name).mkdir()
            prom = tmp_path / name / "prom"
            overrides = {"prometheus": {"textfile_dir": str(prom)}}
            tracker, _ = make_tracker(tmp_path / name, clock, LaggingCpu(clock, fraction, lag), overrides)
            assert tracker.cycle().outcome == "released"
            public = json.loads(tracker.layout.public_file.read_text())
            prom_time = next(
                line for line in (prom / "cpu_tracker.prom").read_text().splitlines()
                if line.startswith("cpu_tracker_last_release_timestamp_seconds ")
            )  # fmt: skip
            published.append((public["timestamp"], public["window"], prom_time))
            private = json.loads(tracker.layout.private_file.read_text())
            assert private["window"]["end"] != public["window"]["end"] or lag == 0.0
        assert published[0] == published[1]
        timestamp, window, _ = published[0]
        start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
        assert start == datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)  # now, floored to the second
        assert end - start == timedelta(seconds=5 * 0.02)
        assert timestamp == window["end"]

    def test_public_file_appears_a_fixed_time_after_the_planned_end(self, tmp_path: Path) -> None:
        """When the file appears is seen by whoever syncs it (measured: AUC 0.83 idle against
        loaded). The public file is now written, and its publication recorded, at the planned
        end plus the hold, whether the window ran late or not."""
        written = []
        for name, lag in (("idle", 0.0), ("busy", 0.03)):
            (tmp_path / name).mkdir()
            clock = FakeClock(datetime(2026, 1, 1, 12, 0, 0, 421_337, tzinfo=UTC))
            cpu = LaggingCpu(clock, 1.0 if lag else 0.0, lag)
            tracker, _ = make_tracker(tmp_path / name, clock, cpu, {"schedule": {"every_seconds": 10}})
            tracker = dataclasses.replace(tracker, hold_seconds=None, stop=AdvancingStop(clock))
            assert publish_hold(tracker.config) == 1.0
            assert tracker.cycle().outcome == "released"
            written.append(outcomes_at(tracker)["published"])
        planned_end = datetime(2026, 1, 1, 12, 0, 0, 100_000, tzinfo=UTC)
        assert written == [planned_end + timedelta(seconds=1.0)] * 2

    def test_next_window_starts_on_the_schedule_not_when_the_last_one_ended(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """However late a cycle ran, the next published start is the last one plus every_seconds."""
        tracker, _ = make_tracker(tmp_path, clock, LaggingCpu(clock, 1.0, 0.05))
        assert tracker.cycle().outcome == "released"
        first = json.loads(tracker.layout.public_file.read_text())["window"]["start"]
        clock.advance(1.0)
        assert tracker.cycle().outcome == "released"
        second = json.loads(tracker.layout.public_file.read_text())["window"]["start"]
        assert datetime.fromisoformat(second) - datetime.fromisoformat(first) == timedelta(seconds=1)


class TestRecovery:
    def test_drawn_release_is_republished_with_the_same_noise(self, tmp_path: Path, clock: FakeClock) -> None:
        """A release whose public write failed is republished later with its recorded value, not redrawn."""
        tracker, _ = make_tracker(tmp_path, clock)
        tracker.layout.public_file.mkdir()  # the write fails: a directory stands in the way
        (tracker.layout.public_file / "x").write_text("")
        failed = tracker.cycle()
        assert failed.outcome == "write_failed"
        conn = sqlite3.connect(tracker.layout.ledger)
        (payload,) = conn.execute("SELECT payload FROM outcomes WHERE status = 'drawn'").fetchone()
        (tracker.layout.public_file / "x").unlink()
        tracker.layout.public_file.rmdir()
        clock.advance(0.1)  # inside the cooldown: only the recovery happens
        result = tracker.cycle()
        assert (result.outcome, result.recovered) == ("cooldown", 1)
        assert json.loads(tracker.layout.public_file.read_text()) == json.loads(payload)
        assert outcomes(tracker)[-1] == (failed_id(conn), "published")
        conn.close()

    def test_reserved_only_release_is_abandoned_and_still_counted(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """A reservation interrupted before noise was recorded stays spent and is never released."""
        tracker, stream = make_tracker(tmp_path, clock)
        tracker.cycle()
        conn = sqlite3.connect(tracker.layout.ledger)
        conn.execute("DROP TRIGGER outcomes_no_delete")  # simulate: the crash came before 'drawn'
        conn.execute("DELETE FROM outcomes")
        restore = ledger_schema.statements(ledger_schema._append_only(("outcomes",)))
        conn.execute(next(statement for statement in restore if "outcomes_no_delete" in statement))
        conn.commit()
        clock.advance(2)
        tracker.cycle()
        statuses = [s for _, s in outcomes(tracker)]
        assert statuses[0] == "abandoned"
        assert any(e["event"] == "release.abandoned" for e in log_events(stream.getvalue()))
        assert conn.execute("SELECT COUNT(*) FROM spends").fetchone() == (2,)
        conn.close()


def failed_id(conn: sqlite3.Connection) -> str:
    (release_id,) = conn.execute("SELECT release_id FROM outcomes WHERE status = 'drawn'").fetchone()
    return str(release_id)


class TestCycleLog:
    def test_budget_exhausted_is_logged_once(self, tmp_path: Path, clock: FakeClock) -> None:
        """Repeated exhausted cycles log budget.exhausted once, but a canonical line each time."""
        tracker, stream = make_tracker(tmp_path, clock, overrides={"budget": {"window_epsilon": 0.5}})
        cycle_log = CycleLog(logs.get_logger("test"))
        for _ in range(3):
            cycle_log(tracker.cycle(force=True))
        events = [e["event"] for e in log_events(stream.getvalue())]
        assert events.count("budget.exhausted") == 1
        assert events.count("cycle.finished") == 3

    def test_canonical_line_has_the_figures(self, tmp_path: Path, clock: FakeClock) -> None:
        """The cycle line carries outcome, epsilon spent and remaining, and duration."""
        tracker, stream = make_tracker(tmp_path, clock)
        CycleLog(logs.get_logger("test"))(tracker.cycle())
        (line,) = [e for e in log_events(stream.getvalue()) if e["event"] == "cycle.finished"]
        assert line["outcome"] == "released"
        assert line["epsilon_spent"] == 0.5
        assert line["epsilon_remaining"] == 99.5
        assert line["duration_seconds"] >= 0


@dataclass
class JitteryCpu:
    """A machine whose readings each take a random few milliseconds more than planned."""

    clock: FakeClock
    rng: random.Random

    def read(self) -> Reading:
        self.clock.advance(self.rng.uniform(0.0, 0.01))
        return Reading(busy=0.25, total=1.0)


class TestRollingCapAtTheSchedule:
    """The defaults spend 0.5 an hour under a cap of 12 per rolling 24 h: 24 releases fill it
    exactly. Here scaled to 10 s and a 240 s period (the same 24 slots per period)."""

    SCALED: ClassVar[dict[str, dict[str, Any]]] = {
        "schedule": {"every_seconds": 10},
        "budget": {"window_epsilon": 12, "window_hours": 240 / 3600},
    }

    def scaled_tracker(self, tmp_path: Path, clock: FakeClock) -> Tracker:
        tracker, _ = make_tracker(tmp_path, clock, overrides=self.SCALED)
        booted = clock.now
        return dataclasses.replace(
            tracker,
            cpu=JitteryCpu(clock, random.Random(3)),
            stop=AdvancingStop(clock),
            boot=lambda: ("boot-a", 5000.0 + (clock.now - booted).total_seconds()),
        )

    @pytest.mark.slow
    def test_a_schedule_that_exactly_fills_the_rolling_cap_never_loses_a_release(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """The 25th cycle met a cap that had not yet freed the first spend (stamped when it was
        reserved, after its window, and checked before the next window began): budget.exhausted,
        and one slot lost every period. The rolling cap now counts releases by their planned
        window starts, which the schedule spaces exactly, so every slot releases."""
        tracker = self.scaled_tracker(tmp_path, clock)
        results = [tracker.cycle(max_wait=11) for _ in range(60)]
        assert [r.outcome for r in results] == ["released"] * 60
        starts = [datetime.fromisoformat(json.loads(p)["window"]["start"]) for p in self.payloads(tracker)]
        assert {(b - a).total_seconds() for a, b in itertools.pairwise(starts)} == {10.0}

    def test_one_more_than_the_cap_holds_is_still_refused(self, tmp_path: Path, clock: FakeClock) -> None:
        """The cap is not loosened: a release forced in beside the schedule makes 25 in a period,
        and the scheduled one after it is refused."""
        tracker = self.scaled_tracker(tmp_path, clock)
        assert [tracker.cycle(max_wait=11).outcome for _ in range(3)] == ["released"] * 3
        assert tracker.cycle(force=True).outcome == "released"
        outcomes_seen = [tracker.cycle(max_wait=11).outcome for _ in range(30)]
        assert "budget_exhausted" in outcomes_seen

    @pytest.mark.slow
    def test_budget_plan_agrees_with_the_daemon_fresh_and_mid_run(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """'budget plan' said "no limit at this schedule" on a fresh state and "5 more, then
        paused" mid-run, while the daemon lost a slot a day. Fresh and mid-run it now says what
        the daemon does: the rolling cap never stops this schedule."""
        from cpu_tracker_daemon.cli import views

        tracker = self.scaled_tracker(tmp_path, clock)

        def window_pause() -> int | None:
            planned = views.plan(views.snapshot(tracker.config, clock.now))
            return planned["caps"]["window"]["releases_remaining"]  # type: ignore[no-any-return]

        assert window_pause() is None
        for _ in range(30):
            assert tracker.cycle(max_wait=11).outcome == "released"
            assert window_pause() is None

    @staticmethod
    def payloads(tracker: Tracker) -> list[str]:
        with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
            rows = conn.execute("SELECT payload FROM outcomes WHERE status = 'drawn' ORDER BY id").fetchall()
        return [payload for (payload,) in rows]
