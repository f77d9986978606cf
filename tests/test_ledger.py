"""The SQLite ledger: reservation before release, caps, grants, append-only, fail-closed."""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import math
import multiprocessing
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.budget import schema as module
from cpu_tracker_daemon.budget.caps import Caps, Promise
from cpu_tracker_daemon.budget.ledger import BootClock, Ledger, ReleaseStatus, Spend, open_ledger
from cpu_tracker_daemon.errors import (
    BudgetExhaustedError,
    CooldownError,
    LedgerCorruptError,
    LedgerUnavailableError,
    PromiseChangedError,
)
from cpu_tracker_daemon.privacy.accounting import SECURE_DISCRETE_LAPLACE as SECURE
from cpu_tracker_daemon.privacy.accounting import Event, releases_within
from tests.conftest import run_cli, write_config

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CAPS = Caps(lifetime_epsilon=3.0, window_epsilon=2.0, window_hours=24.0)


def spend(n: int, at: datetime = T0, epsilon: float = 1.0) -> Spend:
    return Spend(f"r{n}", at, at + timedelta(seconds=50), epsilon, 0.0, "laplace", "window", 100.0)


def no_boot() -> tuple[str | None, float]:
    """A boot clock that knows no boot: the wall clock alone measures the rolling period, so a
    test that moves it by hours stands for hours that really passed."""
    return None, 0.0


def fresh(tmp_path: Path, caps: Caps = CAPS, boot: BootClock = no_boot) -> Ledger:
    ledger = open_ledger(tmp_path / "ledger.sqlite3", caps, T0, boot=boot)
    assert ledger is not None
    return ledger


PROMISE = Promise("window", 50, 1.0, 0.0, 100.0)


class TestEscapes:
    """Caps the audit escaped: each of these let releases out beyond a cap."""

    def test_wall_clock_set_forward_does_not_empty_the_rolling_period(self, tmp_path: Path) -> None:
        """Moving the wall clock 25 h on within one boot freed the window cap; the time since boot
        says one minute passed, so the two spends still count. In a new boot, the wall clock rules."""
        booted = {"id": "boot-a", "seconds": 1000.0}
        with fresh(tmp_path, boot=lambda: (booted["id"], booted["seconds"])) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
            ledger.reserve(spend(2), CAPS, T0, None)
            jumped = T0 + timedelta(hours=25)
            booted["seconds"] += 60
            assert ledger.status(CAPS, jumped).window.spent == 2.0
            with pytest.raises(BudgetExhaustedError):
                ledger.reserve(spend(3, jumped), CAPS, jumped, None)
            booted.update(id="boot-b", seconds=30.0)  # a reboot: only the wall clock can tell
            assert ledger.status(CAPS, jumped).window.spent == 0.0

    def test_shrinking_the_rolling_period_does_not_free_it(self, tmp_path: Path) -> None:
        """window_hours 24 then 1 (a config edit, or SIGHUP): the recorded 24 h still applies."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None, PROMISE)
            ledger.reserve(spend(2), CAPS, T0, None, PROMISE)
            short = Caps(3.0, 2.0, 1.0)
            later = T0 + timedelta(hours=2)
            status = ledger.status(short, later)
            assert (status.window.spent, status.window_hours) == (2.0, 24.0)
            with pytest.raises(BudgetExhaustedError):
                ledger.reserve(spend(3, later), short, later, None, PROMISE)
            longer = Caps(3.0, 2.0, 48.0)  # a longer period is taken at once, and kept
            ledger.reserve(
                spend(4, T0 + timedelta(hours=50)), longer, T0 + timedelta(hours=50), None, PROMISE
            )
            assert ledger.status(CAPS, T0 + timedelta(hours=40)).window_hours == 48.0

    def test_changing_the_privacy_unit_is_refused(self, tmp_path: Path) -> None:
        """window then sample releases were summed as if alike (1.5 where 50.5 was true): a release
        under another unit, sample count or bounds than the ledger's first is refused, and nothing
        is recorded."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None, PROMISE)
            for other in (
                Promise("sample", 50, 1.0, 0.0, 100.0),
                Promise("window", 10, 1.0, 0.0, 100.0),
                Promise("window", 50, 1.0, 10.0, 60.0),
            ):
                with pytest.raises(PromiseChangedError) as info:
                    ledger.reserve(spend(2), CAPS, T0, None, other)
                assert "ledger reset" in str(info.value)
                with pytest.raises(PromiseChangedError):
                    ledger.check_promise(other)
            assert ledger.status(CAPS, T0).releases == 1
            ledger.check_promise(PROMISE)


class TestReserve:
    def test_spend_is_durable_before_release(self, tmp_path: Path) -> None:
        """A reservation is committed: another connection sees it with no outcome recorded."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as other:
            assert other.execute("SELECT release_id, epsilon FROM spends").fetchall() == [("r1", 1.0)]
            assert other.execute("SELECT COUNT(*) FROM outcomes").fetchone() == (0,)

    def test_window_cap_refuses_and_records_nothing(self, tmp_path: Path) -> None:
        """The rolling-window cap refuses a spend that would exceed it, and leaves no trace."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
            ledger.reserve(spend(2, T0 + timedelta(hours=1)), CAPS, T0 + timedelta(hours=1), None)
            with pytest.raises(BudgetExhaustedError) as info:
                ledger.reserve(spend(3, T0 + timedelta(hours=2)), CAPS, T0 + timedelta(hours=2), None)
            assert info.value.cap == "window"
            assert ledger.status(CAPS, T0 + timedelta(hours=2)).releases == 2

    def test_window_cap_rolls(self, tmp_path: Path) -> None:
        """Spends older than window_hours stop counting against the window cap."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
            ledger.reserve(spend(2, T0 + timedelta(hours=1)), CAPS, T0 + timedelta(hours=1), None)
            later = T0 + timedelta(hours=24, minutes=1)
            ledger.reserve(spend(3, later), CAPS, later, None)
            assert ledger.status(CAPS, later).window.spent == 2.0

    def test_lifetime_cap_never_resets(self, tmp_path: Path) -> None:
        """The lifetime cap counts every spend ever, however old."""
        with fresh(tmp_path) as ledger:
            for n in range(3):
                at = T0 + timedelta(days=2 * n)
                ledger.reserve(spend(n, at), CAPS, at, None)
            at = T0 + timedelta(days=30)
            with pytest.raises(BudgetExhaustedError) as info:
                ledger.reserve(spend(9, at), CAPS, at, None)
            assert info.value.cap == "lifetime"

    def test_grant_raises_the_cap_with_history(self, tmp_path: Path) -> None:
        """Only a grant raises a cap, and the grant is kept with its reason and author."""
        with fresh(tmp_path) as ledger:
            for n in range(3):
                at = T0 + timedelta(days=2 * n)
                ledger.reserve(spend(n, at), CAPS, at, None)
            ledger.grant("lifetime", 1.0, "quarterly review", "owner", T0)
            at = T0 + timedelta(days=30)
            ledger.reserve(spend(9, at), CAPS, at, None)
            assert [(g.cap, g.epsilon, g.reason, g.granted_by) for g in ledger.grants()] == [
                ("lifetime", 1.0, "quarterly review", "owner")
            ]

    def test_config_cannot_raise_a_cap_above_the_ledgers(self, tmp_path: Path) -> None:
        """A config cap above the one recorded at creation is not honoured; a lower one is."""
        with fresh(tmp_path) as ledger:
            generous = Caps(lifetime_epsilon=1000.0, window_epsilon=1000.0, window_hours=24.0)
            assert ledger.status(generous, T0).lifetime.limit == 3.0
            strict = Caps(lifetime_epsilon=1.0, window_epsilon=1.0, window_hours=24.0)
            assert ledger.status(strict, T0).lifetime.limit == 1.0

    def test_cooldown_is_checked_in_the_same_transaction(self, tmp_path: Path) -> None:
        """A window starting less than every_seconds after the last one is refused."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, 3600)
            with pytest.raises(CooldownError):
                ledger.reserve(spend(2, T0 + timedelta(seconds=3599)), CAPS, T0, 3600)
            ledger.reserve(spend(3, T0 + timedelta(seconds=3600)), CAPS, T0, 3600)

    def test_future_anchor_is_moved_to_now(self, tmp_path: Path) -> None:
        """After the clock jumps back, the anchor becomes now, durably: one interval's delay at most."""
        with fresh(tmp_path) as ledger:
            later = T0 + timedelta(hours=5)
            ledger.reserve(spend(1, later), CAPS, later + timedelta(seconds=50), None)
            anchor, skewed = ledger.cooldown_anchor(T0)
            assert (anchor, skewed) == (T0.timestamp(), True)
            assert ledger.cooldown_anchor(T0 + timedelta(seconds=1)) == (T0.timestamp(), False)

    def test_window_straddling_a_clock_set_back_anchors_at_now(self, tmp_path: Path) -> None:
        """A window that began 5 h after the time of its reservation (the clock was set back during
        it) anchors the cooldown at that time, so the next release waits one interval, not 5 h."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1, T0 + timedelta(hours=5)), CAPS, T0, 3600)
            assert ledger.cooldown_anchor(T0) == (T0.timestamp(), False)
            early, due = T0 + timedelta(seconds=3599), T0 + timedelta(seconds=3600)
            with pytest.raises(CooldownError):
                ledger.reserve(spend(2, early), CAPS, early, 3600)
            ledger.reserve(spend(3, due), CAPS, due, 3600)


class TestAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE spends SET epsilon = 0.0001",
            "UPDATE spends SET worst_epsilon = 0.0001",
            "DELETE FROM spends",
            "DELETE FROM grants",
            "UPDATE meta SET value = '1000' WHERE key = 'base_lifetime_epsilon'",
        ],
    )
    def test_history_cannot_be_rewritten(self, tmp_path: Path, statement: str) -> None:
        """Triggers refuse UPDATE and DELETE on the ledger's history tables."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
            ledger.grant("window", 1.0, "x", "y", T0)
        with (
            closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn,
            pytest.raises(sqlite3.IntegrityError, match="append-only"),
        ):
            conn.execute(statement)


class TestFailClosed:
    def test_missing_ledger_is_created_complete(self, tmp_path: Path) -> None:
        """A missing ledger is created, with no temp file left behind."""
        with fresh(tmp_path) as ledger:
            assert ledger.status(CAPS, T0).releases == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite3"]

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"", "empty"),
            (b"this is not sqlite at all" * 100, "not a database"),
            (b"SQLite format 3\x00" + b"\x00" * 200, "unusable"),
        ],
    )
    def test_garbage_is_refused_and_untouched(self, tmp_path: Path, content: bytes, reason: str) -> None:
        """A file that is not a ledger raises LedgerCorruptError and is left byte-for-byte as it was."""
        path = tmp_path / "ledger.sqlite3"
        path.write_bytes(content)
        with pytest.raises(LedgerCorruptError, match=reason):
            open_ledger(path, CAPS, T0)
        assert path.read_bytes() == content

    def test_foreign_sqlite_database_is_refused(self, tmp_path: Path) -> None:
        """Another application's SQLite file is not mistaken for a ledger."""
        path = tmp_path / "ledger.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        with pytest.raises(LedgerCorruptError, match="foreign application id"):
            open_ledger(path, CAPS, T0)

    def test_truncated_ledger_is_refused(self, tmp_path: Path) -> None:
        """A ledger cut short (as by a bad copy) is refused, never reset."""
        with fresh(tmp_path) as ledger:
            for n in range(2):
                ledger.reserve(spend(n, T0 + timedelta(hours=n)), CAPS, T0, None)
        path = tmp_path / "ledger.sqlite3"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

        def open_and_read() -> None:
            ledger = open_ledger(path, CAPS, T0)
            assert ledger is not None
            ledger.status(CAPS, T0)

        with pytest.raises(LedgerCorruptError):
            open_and_read()

    def test_dropped_table_is_refused(self, tmp_path: Path) -> None:
        """A ledger missing one of its tables is refused."""
        fresh(tmp_path).close()
        conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
        conn.execute("DROP TABLE grants")
        conn.commit()
        conn.close()
        with pytest.raises(LedgerCorruptError, match="missing tables"):
            open_ledger(tmp_path / "ledger.sqlite3", CAPS, T0)

    def test_read_only_open_does_not_create(self, tmp_path: Path) -> None:
        """status-style opens never create a ledger."""
        assert open_ledger(tmp_path / "ledger.sqlite3", CAPS, T0, create=False) is None
        assert not (tmp_path / "ledger.sqlite3").exists()


def _reserve_many(path: str, worker: int, count: int) -> int:
    ledger = open_ledger(Path(path), Caps(10.0, 10.0, 24.0), T0)
    assert ledger is not None
    ok = 0
    with ledger:
        for n in range(count):
            for _ in range(5):  # a lock held past the timeout is a refusal the next cycle retries
                try:
                    ledger.reserve(spend(worker * 1000 + n, epsilon=0.5), Caps(10.0, 10.0, 24.0), T0, None)
                    ok += 1
                except BudgetExhaustedError:
                    pass
                except LedgerUnavailableError:
                    continue
                break
    return ok


class TestTampering:
    """A ledger someone else could change is refused before anything in it is believed."""

    def test_dropped_triggers_and_deleted_spends_are_refused(self, tmp_path: Path) -> None:
        """The security test: another user dropped the append-only triggers and deleted every
        spend, and the next start accepted the empty history. The triggers are checked now."""
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
        path = tmp_path / "ledger.sqlite3"
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("DROP TRIGGER spends_no_delete")
            conn.execute("DELETE FROM spends")
        with pytest.raises(LedgerCorruptError, match="append-only triggers were changed"):
            open_ledger(path, CAPS, T0)

    def test_an_added_trigger_is_refused(self, tmp_path: Path) -> None:
        """A trigger that quietly deletes what is inserted is as bad as a dropped one."""
        fresh(tmp_path).close()
        path = tmp_path / "ledger.sqlite3"
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("CREATE TRIGGER sneaky AFTER INSERT ON periods BEGIN SELECT 1; END")
        with pytest.raises(LedgerCorruptError, match="sneaky"):
            open_ledger(path, CAPS, T0, create=False)

    @pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
    def test_group_or_other_writable_ledger_is_refused(self, tmp_path: Path, mode: int) -> None:
        """A ledger others may write is not trusted, read-only or not."""
        fresh(tmp_path).close()
        path = tmp_path / "ledger.sqlite3"
        path.chmod(mode)
        for create in (True, False):
            with pytest.raises(LedgerCorruptError, match="writable by group or others"):
                open_ledger(path, CAPS, T0, create=create)

    def test_symlinked_ledger_is_refused(self, tmp_path: Path) -> None:
        """A ledger that is a link to a file elsewhere is never opened through the link."""
        (tmp_path / "real").mkdir()
        fresh(tmp_path / "real").close()
        (tmp_path / "ledger.sqlite3").symlink_to(tmp_path / "real" / "ledger.sqlite3")
        with pytest.raises(LedgerCorruptError, match="a symlink"):
            open_ledger(tmp_path / "ledger.sqlite3", CAPS, T0)

    def test_ledger_in_a_world_writable_directory_is_refused(self, tmp_path: Path) -> None:
        """Anyone could swap the file in a directory everyone may write (without the sticky bit)."""
        fresh(tmp_path).close()
        tmp_path.chmod(0o777)
        try:
            with pytest.raises(LedgerCorruptError, match="writable by everyone"):
                open_ledger(tmp_path / "ledger.sqlite3", CAPS, T0)
        finally:
            tmp_path.chmod(0o700)


class TestConcurrency:
    @pytest.mark.slow
    def test_processes_racing_never_overshoot_a_cap(self, tmp_path: Path) -> None:
        """Four processes reserving at once fill the cap exactly, never beyond it."""
        path = tmp_path / "ledger.sqlite3"
        fresh(tmp_path, Caps(10.0, 10.0, 24.0)).close()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            results = pool.starmap(_reserve_many, [(str(path), w, 15) for w in range(4)])
        assert sum(results) == 20
        with open_ledger(path, CAPS, T0) as ledger:  # type: ignore[union-attr]
            assert ledger.status(Caps(10.0, 10.0, 24.0), T0).lifetime.spent == pytest.approx(10.0)

    @pytest.mark.slow
    def test_a_reader_never_sees_a_writer_half_way(self, tmp_path: Path) -> None:
        """``status`` and every open read several tables; while another process commits spends,
        each must read one snapshot, or the running counts and the spends disagree and a sound
        ledger reads as corrupt (found by the racing test above, once in a few runs)."""
        path = tmp_path / "ledger.sqlite3"
        roomy = Caps(1e9, 1e9, 24.0)
        fresh(tmp_path, roomy).close()
        ctx = multiprocessing.get_context("spawn")
        writer = ctx.Process(target=_reserve_quickly, args=(str(path), 400))
        writer.start()
        reads = 0
        try:
            while writer.is_alive() or reads == 0:
                with contextlib.suppress(LedgerUnavailableError):  # the writer's lock: a retry
                    ledger = open_ledger(path, roomy, T0, create=False, boot=no_boot, timeout=5)
                    assert ledger is not None
                    with ledger:
                        ledger.status(roomy, T0)
                    reads += 1
        finally:
            writer.join(60)
        assert writer.exitcode == 0
        assert reads > 10


def _reserve_quickly(path: str, count: int) -> None:
    roomy = Caps(1e9, 1e9, 24.0)
    ledger = open_ledger(Path(path), roomy, T0, boot=no_boot)
    assert ledger is not None
    with ledger:
        for n in range(count):
            ledger._conn.execute("PRAGMA synchronous = OFF")  # many commits, quickly
            ledger.reserve(spend(n, epsilon=0.001), roomy, T0, None)


class TestProperties:
    @pytest.mark.slow
    @settings(max_examples=60, deadline=None)
    @given(
        steps=st.lists(
            st.tuples(
                st.floats(0.01, 3.0),  # epsilon
                st.floats(0, 48),  # hours since start
                st.one_of(st.none(), st.floats(0.01, 2.0)),  # a grant to the window cap
            ),
            max_size=25,
        )
    )
    def test_reservations_never_exceed_a_cap(
        self, tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[float, float, float | None]]
    ) -> None:
        """Any sequence of reservations and grants keeps every cap's spend within its limit."""
        caps = Caps(lifetime_epsilon=6.0, window_epsilon=4.0, window_hours=24.0)
        ledger = open_ledger(tmp_path_factory.mktemp("l") / "ledger.sqlite3", caps, T0)
        assert ledger is not None
        with ledger:
            for n, (epsilon, hours, grant) in enumerate(sorted(steps, key=lambda s: s[1])):
                at = T0 + timedelta(hours=hours)
                if grant is not None:
                    ledger.grant("window", grant, "test", "t", at)
                with contextlib.suppress(BudgetExhaustedError):
                    ledger.reserve(spend(n, at, epsilon), caps, at, None)
                status = ledger.status(caps, at)
                for cap in status.caps:
                    assert cap.spent <= cap.limit + 1e-9

    @settings(max_examples=40, deadline=None)
    @given(
        steps=st.lists(
            st.tuples(
                st.sampled_from(["discrete_laplace", "gaussian", SECURE]),
                st.sampled_from([0.25, 0.5, 1.0]),  # epsilon
                st.floats(-2, 30),  # hours since start: the clock may go back
                st.floats(0, 2),  # seconds the window was planned before now
            ),
            max_size=12,
        )
    )
    @pytest.mark.slow
    def test_what_reserve_returns_is_what_a_fresh_read_finds(
        self, tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, float, float, float]]
    ) -> None:
        """``reserve`` counts the new spend into the status it already read instead of reading it
        all again: for any history, its answer equals the ledger's own status read afterwards."""
        caps = GAUSS_CAPS
        ledger = open_ledger(tmp_path_factory.mktemp("l") / "ledger.sqlite3", caps, T0, boot=no_boot)
        assert ledger is not None
        with ledger:
            for n, (mechanism, epsilon, hours, early) in enumerate(steps):
                now = T0 + timedelta(hours=hours)
                planned = now - timedelta(seconds=early)
                delta = 1e-8 if mechanism == "gaussian" else 0.0
                worst = 5.0 if mechanism == SECURE else None
                s = Spend(
                    f"s{n}",
                    planned,
                    now,
                    epsilon,
                    delta,
                    mechanism,
                    "window",
                    1.0,
                    planned_start=planned,
                    worst_epsilon=worst,
                )
                try:
                    after = ledger.reserve(s, caps, now, None)
                except BudgetExhaustedError:
                    continue
                read = ledger.status(caps, now, at=planned)
                assert after.releases == read.releases
                assert after.last_release_at == read.last_release_at
                assert after.cooldown_anchor_ts == read.cooldown_anchor_ts
                for mine, theirs in zip(after.caps, read.caps, strict=True):
                    assert dict(mine.counts) == dict(theirs.counts)
                    assert (mine.spent, mine.method, mine.limit) == (
                        theirs.spent,
                        theirs.method,
                        theirs.limit,
                    )
                    assert mine.worst_spent == pytest.approx(theirs.worst_spent, rel=1e-12)


GAUSS_CAPS = Caps(
    lifetime_epsilon=10.0, window_epsilon=10.0, window_hours=24.0, lifetime_delta=1e-6, window_delta=1e-6
)


def gaussian_spend(n: int, at: datetime) -> Spend:
    event = Event.gaussian(1.0, 5.0, 1e-6)  # noise multiplier 5
    return Spend(f"g{n}", at, at + timedelta(seconds=50), event.epsilon, 1e-6, "gaussian", "window", 1.0)


class TestAccounting:
    @pytest.mark.slow
    def test_gaussian_releases_compose_tightly_under_an_epsilon_delta_cap(self, tmp_path: Path) -> None:
        """At noise multiplier 5 under (10, 1e-6) the ledger admits what the accountant allows, then stops."""
        allowed = releases_within(Event.gaussian(1.0, 5.0, 1e-6), 10.0, 1e-6)
        with fresh(tmp_path, GAUSS_CAPS) as ledger:
            for n in range(allowed):
                ledger.reserve(
                    gaussian_spend(n, T0 + timedelta(days=n)), GAUSS_CAPS, T0 + timedelta(days=n), None
                )
            later = T0 + timedelta(days=allowed)
            with pytest.raises(BudgetExhaustedError) as info:
                ledger.reserve(gaussian_spend(allowed, later), GAUSS_CAPS, later, None)
            status = ledger.status(GAUSS_CAPS, later)
        assert (info.value.cap, allowed >= 70) == ("lifetime", True)
        assert status.lifetime.method == "gaussian-exact"
        assert status.lifetime.spent <= 10.0

    def test_each_spend_records_the_cumulative_guarantee(self, tmp_path: Path) -> None:
        """Beside every spend the ledger keeps the lifetime (epsilon, delta) it added up to."""
        with fresh(tmp_path, GAUSS_CAPS) as ledger:
            for n in range(3):
                ledger.reserve(
                    spend(n, T0 + timedelta(hours=n), epsilon=1.0), GAUSS_CAPS, T0 + timedelta(hours=n), None
                )
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
            rows = conn.execute(
                "SELECT lifetime_epsilon, lifetime_delta, method FROM guarantees ORDER BY lifetime_epsilon"
            ).fetchall()
        assert [(round(e, 9), d, m) for e, d, m in rows] == [
            (1.0, 1e-6, "sum"),
            (2.0, 1e-6, "sum"),
            (3.0, 1e-6, "sum"),
        ]

    def test_delta_grant_lets_a_pure_ledger_take_gaussian_releases(self, tmp_path: Path) -> None:
        """A ledger with delta caps of 0 refuses a Gaussian release until the owner grants delta."""
        pure = Caps(lifetime_epsilon=10.0, window_epsilon=10.0, window_hours=24.0)
        with fresh(tmp_path, pure) as ledger:
            with pytest.raises(BudgetExhaustedError):
                ledger.reserve(gaussian_spend(1, T0), GAUSS_CAPS, T0, None)
            ledger.grant("lifetime", 1.0, "enable gaussian", "owner", T0, delta=1e-6)
            ledger.grant("window", 1.0, "enable gaussian", "owner", T0, delta=1e-6)
            ledger.reserve(gaussian_spend(1, T0), GAUSS_CAPS, T0, None)
            assert ledger.grants()[0].delta == 1e-6


def make_schema_1_ledger(path: Path) -> None:
    """A ledger exactly as cpu-tracker 0.1 (schema 1) wrote it, with one spend and one grant."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "BEGIN;" + module._SCHEMA + module._append_only(("spends", "outcomes", "grants", "meta")) + "COMMIT;"
    )
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema_version", "1"), ("created_at", T0.isoformat()), ("base_lifetime_epsilon", "3.0"),
         ("base_window_epsilon", "2.0")],
    )  # fmt: skip
    conn.execute(
        "INSERT INTO spends VALUES ('old', ?, ?, ?, ?, 1.0, 0.0, 'laplace', 'window', 100.0)",
        (T0.timestamp(), T0.isoformat(), T0.isoformat(), T0.isoformat()),
    )
    conn.execute(
        "INSERT INTO grants (cap, epsilon, reason, granted_by, granted_at) "
        "VALUES ('lifetime', 1.0, 'r', 'o', 't')"
    )
    conn.close()


class TestMigration:
    def test_schema_1_is_read_as_it_is(self, tmp_path: Path) -> None:
        """A read-only open of a schema-1 ledger reports it without changing a byte."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_1_ledger(path)
        before = path.read_bytes()
        ledger = open_ledger(path, CAPS, T0, create=False)
        assert ledger is not None
        with ledger:
            status = ledger.status(CAPS, T0)
        assert (status.releases, status.lifetime.spent, status.lifetime.limit, status.lifetime.delta) == (
            1,
            1.0,
            4.0,
            0.0,
        )
        assert path.read_bytes() == before

    def test_schema_1_is_migrated_once_keeping_history_and_pure_caps(self, tmp_path: Path) -> None:
        """Opening it for writing migrates to the current schema: history kept, delta caps 0, meta
        still append-only."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_1_ledger(path)
        caps = Caps(3.0, 2.0, 24.0, lifetime_delta=1e-6, window_delta=1e-6)
        ledger = open_ledger(path, caps, T0 + timedelta(days=1))
        assert ledger is not None
        with ledger:
            status = ledger.status(caps, T0 + timedelta(days=1))
            assert ledger.version == module.SCHEMA_VERSION
        assert (status.releases, status.lifetime.limit, status.lifetime.delta) == (1, 4.0, 0.0)
        conn = sqlite3.connect(path)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert (meta["schema_version"], meta["base_lifetime_delta"]) == (str(module.SCHEMA_VERSION), "0.0")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        again = open_ledger(path, caps, T0 + timedelta(days=2))  # a second open changes nothing
        assert again is not None
        again.close()
        conn.close()

    def test_schema_4_spends_count_from_when_they_were_reserved(self, tmp_path: Path) -> None:
        """Schema 5 counts the rolling period by each window's planned start. A schema-4 spend
        knew only when it was reserved (later than its plan): migrated, it counts from then, so it
        stays in the period no shorter than before; the file verifies and spends stay append-only."""
        path = tmp_path / "ledger.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        script = (
            module._SCHEMA + module._SCHEMA_2 + module._SCHEMA_3 + module._SCHEMA_4
            + module._append_only(module._APPEND_ONLY_BY_VERSION["4"])
        )  # fmt: skip
        conn.executescript(f"BEGIN;{script}COMMIT;")
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", "4"), ("created_at", T0.isoformat()), ("base_lifetime_epsilon", "3.0"),
             ("base_window_epsilon", "2.0"), ("base_lifetime_delta", "1e-06"),
             ("base_window_delta", "1e-06")],
        )  # fmt: skip
        reserved = T0 + timedelta(seconds=50)
        conn.execute(
            "INSERT INTO spends VALUES "
            "('old', ?, ?, ?, ?, 1.0, 0.0, 'discrete_laplace', 'window', 100.0, 'b', 7.0)",
            (reserved.timestamp(), reserved.isoformat(), T0.isoformat(), T0.isoformat()),
        )
        conn.close()
        with open_ledger(path, CAPS, T0, boot=no_boot) as ledger:  # type: ignore[union-attr]
            assert ledger.version == module.SCHEMA_VERSION
        with closing(sqlite3.connect(path)) as check:
            row = check.execute("SELECT planned_ts, planned_boot_seconds FROM spends").fetchone()
            assert row == (reserved.timestamp(), 7.0)
            with pytest.raises(sqlite3.IntegrityError):
                check.execute("UPDATE spends SET planned_ts = 0")
        day = CAPS.window_hours * 3600
        with open_ledger(path, CAPS, T0, boot=no_boot, create=False) as ledger:  # type: ignore[union-attr]
            assert ledger.status(CAPS, T0, at=T0 + timedelta(seconds=day + 49)).window.releases == 1
            assert ledger.status(CAPS, T0, at=T0 + timedelta(seconds=day + 50)).window.releases == 0

    def test_schema_2_from_the_last_release_is_migrated_in_one_transaction(self, tmp_path: Path) -> None:
        """A ledger as the previous version wrote it (schema 2) gains the period, promise,
        acknowledged and boot columns in one transaction; its spends and grants are kept, and the
        new tables are append-only too."""
        path = tmp_path / "ledger.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        tables = ("spends", "outcomes", "grants", "meta", "guarantees", "requests")
        script = module._SCHEMA + module._SCHEMA_2 + module._append_only(tables)
        conn.executescript(f"BEGIN;{script}COMMIT;")
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", "2"), ("created_at", T0.isoformat()), ("base_lifetime_epsilon", "3.0"),
             ("base_window_epsilon", "2.0"), ("base_lifetime_delta", "1e-06"),
             ("base_window_delta", "1e-06")],
        )  # fmt: skip
        conn.execute(
            "INSERT INTO spends VALUES ('old', ?, ?, ?, ?, 1.0, 0.0, 'laplace', 'window', 100.0)",
            (T0.timestamp(), T0.isoformat(), T0.isoformat(), T0.isoformat()),
        )
        conn.close()
        with open_ledger(path, CAPS, T0, boot=no_boot) as ledger:  # type: ignore[union-attr]
            assert ledger.version == module.SCHEMA_VERSION
            assert ledger.knows("old")
            ledger.reserve(spend(1), CAPS, T0, None, PROMISE)
            assert ledger.status(CAPS, T0).releases == 2
            assert ledger.promise() == PROMISE
        with closing(sqlite3.connect(path)) as check:
            assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
                str(module.SCHEMA_VERSION),
            )
            with pytest.raises(sqlite3.IntegrityError):
                check.execute("DELETE FROM promises")


BIG = Caps(
    lifetime_epsilon=1e6, window_epsilon=1e6, window_hours=24.0, lifetime_delta=1e-5, window_delta=1e-5
)
KINDS = (
    ("discrete_laplace", 0.5, 0.0),
    ("discrete_laplace", 1.0, 0.0),
    ("discrete_gaussian", 1.0, 1e-7),
    (SECURE, 0.5, 0.0),
)


def kind_spend(n: int, kind: tuple[str, float, float], at: datetime) -> Spend:
    mechanism, epsilon, delta = kind
    worst = 5.0 if mechanism == SECURE else None
    return Spend(
        f"k{n}",
        at,
        at + timedelta(seconds=1),
        epsilon,
        delta,
        mechanism,
        "window",
        100.0,
        worst_epsilon=worst,
    )


def sneak_spend(conn: sqlite3.Connection, release_id: str) -> None:
    """A spend written straight into the file, not through reserve (INSERT is what append-only allows)."""
    columns = "release_id, reserved_ts, reserved_at, window_start, window_end, epsilon, delta, mechanism"
    conn.execute(
        f"INSERT INTO spends ({columns}, unit, sensitivity) "
        "VALUES (?, 0, '', '', '', 1.0, 0.0, 'discrete_laplace', 'window', 100.0)",
        (release_id,),
    )


class TestConstantCost:
    """The lifetime cap is read from running counts on the newest guarantee, not summed over the
    history; settling unfinished releases looks only past the newest settled one."""

    @pytest.mark.slow
    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.sampled_from(KINDS), min_size=1, max_size=30))
    def test_running_counts_are_a_full_recount(self, kinds: list[tuple[str, float, float]]) -> None:
        """After any sequence of spends of mixed kinds, the running counts equal a recount over
        the spends, and the budget they give is the one a full recount gives."""
        import tempfile

        with tempfile.TemporaryDirectory() as directory, fresh(Path(directory), BIG) as ledger:
            for n, kind in enumerate(kinds):
                at = T0 + timedelta(minutes=n)
                ledger.reserve(kind_spend(n, kind, at), BIG, at, None, PROMISE)
            conn = ledger._conn
            assert module.counted_lifetime(conn) == ledger._lifetime_counts(conn)
            assert ledger._lifetime_worst(conn) == pytest.approx(module.counted_worst(conn), rel=1e-12)
            now = T0 + timedelta(minutes=len(kinds))
            running = ledger._status(conn, BIG, now.timestamp())
            recounted = ledger._status(conn, BIG, now.timestamp(), module.counted_lifetime(conn))
            assert recounted == running

    def test_a_migrated_ledger_counts_its_history_once(self, tmp_path: Path) -> None:
        """A schema-3 ledger's spends have no running counts: the first spend after migration
        counts them, and every spend after that carries them on."""
        with fresh(tmp_path, BIG) as ledger:
            for n in range(3):
                ledger.reserve(kind_spend(n, KINDS[0], T0), BIG, T0, None, PROMISE)
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
            nulls = conn.execute("SELECT COUNT(*) FROM guarantees WHERE counts IS NULL").fetchone()
        assert nulls == (0,)
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)) as conn:
            # As schema 3 left it: guarantees without counts (an INSERT, which append-only allows).
            sneak_spend(conn, "old")
            conn.execute("INSERT INTO guarantees VALUES ('old', 4.0, 0.0, 'sum', NULL, NULL)")
        with fresh(tmp_path, BIG) as ledger:
            assert ledger.status(BIG, T0).releases == 4  # counted over the history
            ledger.reserve(kind_spend(9, KINDS[1], T0), BIG, T0, None, PROMISE)
            assert ledger._lifetime_counts(ledger._conn) == module.counted_lifetime(ledger._conn)
            assert ledger.status(BIG, T0).releases == 5

    def test_counts_that_do_not_cover_the_spends_fail_closed(self, tmp_path: Path) -> None:
        """A spend written beside the running counts (not through reserve) is noticed by the next
        read, cheap as it is: the ledger is refused, not trusted."""
        with fresh(tmp_path, BIG) as ledger:
            ledger.reserve(kind_spend(1, KINDS[0], T0), BIG, T0, None, PROMISE)
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)) as conn:
            sneak_spend(conn, "sneaked")
        cheap = open_ledger(tmp_path / "ledger.sqlite3", BIG, T0, boot=no_boot, full=False)
        assert cheap is not None
        with cheap, pytest.raises(LedgerCorruptError, match="do not cover its spends"):
            cheap.status(BIG, T0)

    def test_forged_counts_pass_the_cheap_open_and_fail_the_full_one(self, tmp_path: Path) -> None:
        """Counts forged to the right total but the wrong kinds (one cheap 0.5 for a costly 1.0):
        the per-cycle open cannot tell, the full verification (the daemon's start, ``ledger
        verify``) refuses the ledger."""
        path = tmp_path / "ledger.sqlite3"
        with fresh(tmp_path, BIG) as ledger:
            ledger.reserve(kind_spend(1, KINDS[1], T0), BIG, T0, None, PROMISE)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            sneak_spend(conn, "forged")
            forged = '[["discrete_laplace", 0.5, 0.0, 2]]'
            conn.execute("INSERT INTO guarantees VALUES ('forged', 0.5, 0.0, 'sum', ?, NULL)", (forged,))
        cheap = open_ledger(path, BIG, T0, boot=no_boot, full=False)
        assert cheap is not None
        cheap.close()
        with pytest.raises(LedgerCorruptError, match="running release counts disagree"):
            open_ledger(path, BIG, T0, boot=no_boot)

    @pytest.mark.slow
    def test_an_unfinished_release_after_a_long_history_is_found(self, tmp_path: Path) -> None:
        """500 settled releases, then one reserved and drawn but never published (a crash): it is
        the one unfinished release found, with its payload."""
        with fresh(tmp_path, BIG) as ledger:
            for n in range(500):
                at = T0 + timedelta(seconds=n)
                ledger.reserve(kind_spend(n, KINDS[0], at), BIG, at, None, PROMISE)
                ledger.record(f"k{n}", "drawn", at, {"n": n})
                ledger.record(f"k{n}", "published" if n % 7 else "abandoned", at)
            late = T0 + timedelta(hours=1)
            ledger.reserve(kind_spend(999, KINDS[0], late), BIG, late, None, PROMISE)
            ledger.record("k999", "drawn", late, {"n": 999})
            found = ledger.unfinished()
        assert [(u.release_id, u.status, u.payload) for u in found] == [("k999", "drawn", {"n": 999})]


def make_schema_5_ledger(path: Path, mechanisms: tuple[str, ...] = ("discrete_laplace", SECURE)) -> None:
    """A ledger exactly as the previous version (schema 5) wrote it: one spend of each of
    ``mechanisms`` at epsilon 0.5 (a secure one sent before members added noise of their own),
    each with its guarantee and running counts."""
    conn = sqlite3.connect(path, isolation_level=None)
    script = (
        module._SCHEMA + module._SCHEMA_2 + module._SCHEMA_3 + module._SCHEMA_4 + module._SCHEMA_5
        + module._append_only(module._APPEND_ONLY_BY_VERSION["5"])
    )  # fmt: skip
    conn.executescript(f"BEGIN;{script}COMMIT;")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema_version", "5"), ("created_at", T0.isoformat()), ("base_lifetime_epsilon", "3.0"),
         ("base_window_epsilon", "2.0"), ("base_lifetime_delta", "1e-06"),
         ("base_window_delta", "1e-06")],
    )  # fmt: skip
    counts: dict[tuple[str, float, float], int] = {}
    for n, mechanism in enumerate(mechanisms):
        at = T0 + timedelta(minutes=n)
        conn.execute(
            "INSERT INTO spends VALUES (?, ?, ?, ?, ?, 0.5, 0.0, ?, 'window', 100.0, NULL, NULL, ?, NULL)",
            (
                f"old{n}",
                at.timestamp(),
                at.isoformat(),
                at.isoformat(),
                at.isoformat(),
                mechanism,
                at.timestamp(),
            ),
        )
        counts[(mechanism, 0.5, 0.0)] = counts.get((mechanism, 0.5, 0.0), 0) + 1
        running = json.dumps([[*kind, k] for kind, k in sorted(counts.items())])
        conn.execute(
            "INSERT INTO guarantees VALUES (?, ?, 0.0, 'sum', ?)", (f"old{n}", 0.5 * (n + 1), running)
        )
    conn.close()


def secure_spend(n: int, at: datetime, worst: float | None = 5.0) -> Spend:
    """A window sent to a secure round: epsilon 0.5 under the protocol, ``worst`` against a cheat."""
    return Spend(
        f"s{n}", at, at + timedelta(seconds=50), 0.5, 0.0, SECURE, "window", 100.0, worst_epsilon=worst
    )


class TestWorstCaseMigration:
    """Schema 6 adds each spend's worst case; a schema-5 ledger is read as it is and migrated in
    one transaction, every row kept, the new columns empty."""

    def test_schema_5_is_read_as_it_is(self, tmp_path: Path) -> None:
        """A read-only open of a schema-5 ledger reports both figures without changing a byte: the
        local release's worst case is its epsilon, the secure window sent before members added
        noise of their own has no bound."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_5_ledger(path)
        before = path.read_bytes()
        with open_ledger(path, CAPS, T0, create=False, boot=no_boot) as ledger:  # type: ignore[union-attr]
            assert ledger.version == 5
            status = ledger.status(CAPS, T0)
        assert (2, 1, 1.0, math.inf) == (
            status.releases,
            status.secure_releases,
            status.lifetime.spent,
            status.lifetime.worst_spent,
        )
        assert path.read_bytes() == before
        local = tmp_path / "local.sqlite3"
        make_schema_5_ledger(local, ("discrete_laplace", "discrete_laplace"))
        with open_ledger(local, CAPS, T0, create=False, boot=no_boot) as ledger:  # type: ignore[union-attr]
            status = ledger.status(CAPS, T0)
        assert (
            status.secure_releases,
            status.lifetime.worst_spent,
            status.window.worst_spent,
        ) == (0, 1.0, 1.0)

    def test_schema_5_is_migrated_keeping_every_row_and_adding_nulls(self, tmp_path: Path) -> None:
        """Opened for writing, a schema-5 ledger becomes schema 6: every spend and guarantee is
        kept as it was, with NULL in the new columns; the file passes the full verification; a
        new secure spend records its worst case, and the spends stay append-only."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_5_ledger(path)
        with closing(sqlite3.connect(path)) as conn:
            spends = conn.execute("SELECT * FROM spends ORDER BY rowid").fetchall()
            guarantees = conn.execute("SELECT * FROM guarantees ORDER BY rowid").fetchall()
        with open_ledger(path, CAPS, T0, boot=no_boot) as ledger:  # type: ignore[union-attr]
            assert module.SCHEMA_VERSION == ledger.version == 6
        with closing(sqlite3.connect(path)) as conn:
            assert [(*row, None) for row in spends] == conn.execute(
                "SELECT * FROM spends ORDER BY rowid"
            ).fetchall()
            assert [(*row, None) for row in guarantees] == conn.execute(
                "SELECT * FROM guarantees ORDER BY rowid"
            ).fetchall()
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            assert meta["schema_version"] == "6"
            assert "migrated_to_6_at" in meta
        later = T0 + timedelta(hours=1)
        with open_ledger(path, CAPS, later, boot=no_boot) as ledger:  # type: ignore[union-attr]
            after = ledger.reserve(secure_spend(1, later), CAPS, later, None)
        assert (math.inf, math.inf) == (after.lifetime.worst_spent, after.window.worst_spent)  # old0 has none
        with open_ledger(path, CAPS, later, boot=no_boot) as ledger:  # type: ignore[union-attr]
            status = ledger.status(CAPS, later)
        assert (3, math.inf, 2) == (status.releases, status.lifetime.worst_spent, status.secure_releases)
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT release_id, worst_epsilon FROM spends ORDER BY rowid").fetchall() == [
                ("old0", None),
                ("old1", None),
                ("s1", 5.0),
            ]
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("UPDATE spends SET worst_epsilon = 5.0 WHERE release_id = 'old1'")

    def test_a_failed_migration_leaves_schema_5_as_it_was(self, tmp_path: Path) -> None:
        """The migration is one transaction: if any statement fails, the file is left exactly as
        schema 5 (a foreign column named like the new one stops it half-way)."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_5_ledger(path)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(
                "ALTER TABLE guarantees ADD COLUMN lifetime_worst REAL"
            )  # the second statement fails
        before = path.read_bytes()
        with pytest.raises(LedgerUnavailableError, match="cannot migrate to schema 6"):
            open_ledger(path, CAPS, T0, boot=no_boot)
        assert path.read_bytes() == before

    @pytest.mark.slow
    def test_status_reads_a_schema_5_ledger_without_migrating_it(self, tmp_path: Path) -> None:
        """``cpu-tracker status`` (a real process) reads a schema-5 ledger as it is: the window
        sent before members added noise of their own has no bound against a cheating aggregator,
        and the file is not changed."""
        config = write_config(tmp_path)
        (tmp_path / "data").mkdir(mode=0o700)
        path = tmp_path / "data" / "ledger.sqlite3"
        make_schema_5_ledger(path)
        before = path.read_bytes()
        result = run_cli("--config", str(config), "status")
        assert result.returncode == 0, result.stderr
        assert "worst case:    against a cheating aggregator, no bound lifetime" in result.stdout
        assert "windows sent before members added noise of their own have none" in result.stdout
        assert path.read_bytes() == before


class TestWorstCase:
    """Each secure spend's worst case is stored with it, in the same row and transaction, summed
    beside each cap, and covered by the full verification."""

    def test_a_secure_spends_worst_case_survives_a_reopen(self, tmp_path: Path) -> None:
        """Two secure windows (worst case 5 each) and a local release (its epsilon, 0.5): reopened
        read-only a day later, the lifetime sums 10.5 and the rolling period holds the newest
        window's 5; the caps count the protocol's epsilons (0.5 each)."""
        path = tmp_path / "ledger.sqlite3"
        later = T0 + timedelta(hours=25)
        with fresh(tmp_path, BIG) as ledger:
            ledger.reserve(secure_spend(0, T0), BIG, T0, None)
            ledger.reserve(kind_spend(1, KINDS[0], T0), BIG, T0, None)
            after = ledger.reserve(secure_spend(2, later), BIG, later, None)
        assert (after.lifetime.worst_spent, after.window.worst_spent) == (10.5, 5.0)
        with open_ledger(path, BIG, later, create=False, boot=no_boot) as ledger:  # type: ignore[union-attr]
            status = ledger.status(BIG, later)
        assert (status.releases, status.secure_releases, status.lifetime.spent) == (3, 2, 1.5)
        assert (
            status.lifetime.worst_spent,
            status.window.worst_spent,
            status.window.spent,
        ) == (10.5, 5.0, 0.5)
        with closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT release_id, worst_epsilon FROM spends ORDER BY rowid").fetchall()
            running = conn.execute("SELECT lifetime_worst FROM guarantees ORDER BY rowid").fetchall()
        assert rows == [("s0", 5.0), ("k1", None), ("s2", 5.0)]
        assert running == [(5.0,), (5.5,), (10.5,)]

    def test_a_local_releases_worst_case_is_its_epsilon(self, tmp_path: Path) -> None:
        """A ledger of local releases records no worst case: it is their epsilon, summed."""
        with fresh(tmp_path, BIG) as ledger:
            ledger.reserve(kind_spend(0, KINDS[0], T0), BIG, T0, None)
            status = ledger.reserve(kind_spend(1, KINDS[1], T0), BIG, T0, None)
        assert (
            status.secure_releases,
            status.lifetime.worst_spent,
            status.window.worst_spent,
        ) == (0, 1.5, 1.5)

    def test_a_secure_window_recorded_without_a_worst_case_has_no_bound(self, tmp_path: Path) -> None:
        """A secure spend with no worst case (sent without noise of its own) is never counted as
        bounded: against a cheating aggregator it has none."""
        with fresh(tmp_path, BIG) as ledger:
            status = ledger.reserve(secure_spend(0, T0, worst=None), BIG, T0, None)
            assert (math.inf, math.inf) == (status.lifetime.worst_spent, status.window.worst_spent)
            assert status == ledger.status(BIG, T0, at=T0)
        open_ledger(tmp_path / "ledger.sqlite3", BIG, T0, boot=no_boot).close()  # type: ignore[union-attr]

    @pytest.mark.parametrize("worst", [0.0, -1.0, math.inf, math.nan])
    def test_a_worst_case_that_is_not_a_positive_number_is_refused(
        self, tmp_path: Path, worst: float
    ) -> None:
        """Nothing is recorded for a spend whose worst case is not a positive finite epsilon."""
        with fresh(tmp_path, BIG) as ledger:
            with pytest.raises(ValueError, match="worst-case epsilon"):
                ledger.reserve(secure_spend(0, T0, worst), BIG, T0, None)
            assert ledger.status(BIG, T0).releases == 0

    def test_a_rewritten_worst_case_is_refused_by_the_full_verification(self, tmp_path: Path) -> None:
        """Someone who may drop the triggers lowered the recorded worst cases and put the trigger
        back exactly as it was: the cheap per-cycle open cannot tell, the full verification
        (the daemon's start, ``ledger verify``) recomputes the sum and refuses the ledger."""
        with fresh(tmp_path, BIG) as ledger:
            ledger.reserve(secure_spend(0, T0), BIG, T0, None)
            ledger.reserve(secure_spend(1, T0), BIG, T0, None)
        path = tmp_path / "ledger.sqlite3"
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("DROP TRIGGER spends_no_update")
            conn.execute("UPDATE spends SET worst_epsilon = 0.5")
            conn.execute(module._SPENDS_NO_UPDATE)
        open_ledger(path, BIG, T0, boot=no_boot, full=False).close()  # type: ignore[union-attr]
        with pytest.raises(LedgerCorruptError, match="running worst-case epsilon disagrees"):
            open_ledger(path, BIG, T0, boot=no_boot)

    @pytest.mark.slow
    def test_ledger_verify_refuses_a_rewritten_worst_case(self, tmp_path: Path) -> None:
        """The same through ``cpu-tracker ledger verify`` (a real process): sound before, exit 4
        with one line after the worst cases were rewritten."""
        config = str(write_config(tmp_path))
        (tmp_path / "data").mkdir(mode=0o700)
        with fresh(tmp_path / "data", BIG) as ledger:
            ledger.reserve(secure_spend(0, T0), BIG, T0, None)
        sound = run_cli("--config", config, "ledger", "verify")
        assert "is sound: schema 6, 1 release" in sound.stdout, sound.stderr
        with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3", isolation_level=None)) as conn:
            conn.execute("DROP TRIGGER spends_no_update")
            conn.execute("UPDATE spends SET worst_epsilon = 0.5")
            conn.execute(module._SPENDS_NO_UPDATE)
        refused = run_cli("--config", config, "ledger", "verify")
        assert (refused.returncode, refused.stderr.count("\n")) == (4, 1)
        assert "running worst-case epsilon disagrees" in refused.stderr

    @pytest.mark.slow
    def test_worst_cases_survive_kill_9_while_reserving(self, tmp_path: Path) -> None:
        """A process reserving secure windows is killed with SIGKILL at an arbitrary point: every
        spend the file holds has its worst case, the running sum equals the recount, and the
        full verification passes (a spend and its worst case are one row, one transaction)."""
        path = tmp_path / "ledger.sqlite3"
        code = (
            "import sys\n"
            "from datetime import timedelta\n"
            "from pathlib import Path\n"
            "from tests.test_ledger import BIG, T0, no_boot, secure_spend\n"
            "from cpu_tracker_daemon.budget.ledger import open_ledger\n"
            f"ledger = open_ledger(Path({str(path)!r}), BIG, T0, boot=no_boot)\n"
            "for n in range(100_000):\n"
            "    at = T0 + timedelta(seconds=n)\n"
            "    ledger.reserve(secure_spend(n, at), BIG, at, None)\n"
            "    print(n, flush=True)\n"
        )
        root = Path(__file__).resolve().parent.parent
        child = subprocess.Popen(
            [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        for _ in range(20):  # some spends committed, and the next under way
            assert child.stdout.readline(), child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with open_ledger(path, BIG, T0, boot=no_boot) as ledger:  # type: ignore[union-attr]
            status = ledger.status(BIG, T0)
            assert status.releases >= 20
            assert 5.0 * status.releases == status.lifetime.worst_spent
            assert ledger._lifetime_worst(ledger._conn) == module.counted_worst(ledger._conn)
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT DISTINCT worst_epsilon FROM spends").fetchall() == [(5.0,)]


def make_schema_3_ledger(path: Path) -> None:
    """A ledger exactly as schema 3 wrote it: two spends with their boot, a grant of delta, a
    decided request, the promise and rolling period recorded, an acknowledged release, and
    outcomes (the newer spend drawn, not yet published)."""
    conn = sqlite3.connect(path, isolation_level=None)
    script = (
        module._SCHEMA + module._SCHEMA_2 + module._SCHEMA_3
        + module._append_only(module._APPEND_ONLY_BY_VERSION["3"])
    )  # fmt: skip
    conn.executescript(f"BEGIN;{script}COMMIT;")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema_version", "3"), ("created_at", T0.isoformat()), ("base_lifetime_epsilon", "3.0"),
         ("base_window_epsilon", "2.0"), ("base_lifetime_delta", "1e-06"),
         ("base_window_delta", "1e-06")],
    )  # fmt: skip
    for n, minutes in enumerate((0, 30)):
        at = T0 + timedelta(minutes=minutes)
        conn.execute(
            "INSERT INTO spends VALUES "
            "(?, ?, ?, ?, ?, 0.5, 0.0, 'discrete_laplace', 'window', 100.0, 'b', ?)",
            (f"old{n}", at.timestamp(), at.isoformat(), at.isoformat(), at.isoformat(), 60.0 * minutes),
        )
        conn.execute("INSERT INTO guarantees VALUES (?, ?, 0.0, 'sum')", (f"old{n}", 0.5 * (n + 1)))
    conn.execute(
        "INSERT INTO outcomes (release_id, status, at, payload) VALUES ('old0', 'drawn', 't', '{}'), "
        "('old0', 'published', 't', NULL), ('old1', 'drawn', 't', '{\"cpu\": 1}')"
    )
    conn.execute(
        "INSERT INTO grants (cap, epsilon, reason, granted_by, granted_at, delta) "
        "VALUES ('window', 1.0, 'request q1 from a: more', 'owner', 't', 1e-7)"
    )
    conn.execute(
        "INSERT INTO requests VALUES "
        "('q1', 'a', 'window', 1.0, 1e-7, 'more', 'approved', '', 'owner', 't', 1)"
    )
    conn.execute(
        "INSERT INTO promises (unit, samples, interval_seconds, lower, upper, at) "
        "VALUES ('window', 50, 1.0, 0.0, 100.0, 't')"
    )
    conn.execute("INSERT INTO periods (window_hours, at) VALUES (48.0, 't')")
    conn.execute("INSERT INTO acknowledged VALUES ('before-reset', 'reset', 't')")
    conn.execute("INSERT INTO cooldown VALUES (1, ?)", (T0.timestamp() + 1800,))
    conn.close()


def answers(ledger: Ledger, now: datetime) -> dict[str, object]:
    """What every read query of ``ledger`` says at ``now``."""
    return {
        "status": ledger.status(CAPS, now),
        "status at": ledger.status(CAPS, now, at=now + timedelta(hours=47, minutes=45)),
        "promise": ledger.promise(),
        "knows": [ledger.knows(r) for r in ("old0", "old1", "before-reset", "never")],
        "spend times": ledger.spend_times(0.0),
        "unfinished": ledger.unfinished(),
        "published after": [ledger.published_after(ts) for ts in (0.0, T0.timestamp())],
        "grants": ledger.grants(),
        "decisions": ledger.decisions(),
        "anchor": ledger.anchor_ts(),
    }


OLD_SCHEMAS = {1: make_schema_1_ledger, 3: make_schema_3_ledger, 5: make_schema_5_ledger}


def in_boot_b() -> tuple[str | None, float]:
    """An hour into boot ``b``, the boot the schema-3 ledger's spends were made in."""
    return "b", 3600.0


class TestOneSchema:
    """The queries run on the current schema only. A read-only open of an older file (``status``,
    ``budget show``) reads a copy migrated in memory and never writes the file; a read-write open
    migrates the file itself."""

    @pytest.mark.parametrize("version", sorted(OLD_SCHEMAS))
    def test_a_read_only_open_of_an_older_schema_answers_as_its_migration_does(
        self, tmp_path: Path, version: int
    ) -> None:
        """Every read query of a read-only open of a schema-1, 3 or 5 file answers what the same
        file migrated in place answers, and the file is left byte for byte as it was."""
        path, migrated = tmp_path / "ledger.sqlite3", tmp_path / "migrated.sqlite3"
        OLD_SCHEMAS[version](path)
        shutil.copy2(path, migrated)
        before = path.read_bytes()
        now = T0 + timedelta(hours=1)
        with open_ledger(path, CAPS, now, create=False, boot=in_boot_b) as ledger:  # type: ignore[union-attr]
            assert version == ledger.version
            read = answers(ledger, now)
        assert before == path.read_bytes()
        assert not path.with_name(path.name + "-journal").exists()
        with open_ledger(migrated, CAPS, now, boot=in_boot_b) as ledger:  # type: ignore[union-attr]
            assert ledger.version == module.SCHEMA_VERSION
            assert answers(ledger, now) == read

    def test_a_read_only_schema_3_ledger_reads_what_it_recorded(self, tmp_path: Path) -> None:
        """The figures themselves, from the copy: both spends, the recorded 48 h period, the
        promise, the acknowledged release, the grant and decision, and the drawn release that
        the next cycle republishes."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_3_ledger(path)
        now = T0 + timedelta(hours=1)
        with open_ledger(path, CAPS, now, create=False, boot=no_boot) as ledger:  # type: ignore[union-attr]
            status = ledger.status(CAPS, now)
            assert (
                status.releases,
                status.lifetime.spent,
                status.window_hours,
                status.window.limit,
            ) == (2, 1.0, 48.0, 3.0)
            assert ledger.promise() == PROMISE
            assert [ledger.knows(r) for r in ("old0", "old1", "before-reset", "never")] == [
                True,
                True,
                True,
                False,
            ]
            (unfinished,) = ledger.unfinished()
            assert (
                unfinished.release_id,
                unfinished.status,
                unfinished.payload,
            ) == ("old1", ReleaseStatus.DRAWN, {"cpu": 1})
            assert list(ledger.decisions()) == ["q1"]
            assert [grant.delta for grant in ledger.grants()] == [1e-7]

    @pytest.mark.parametrize("version", [3, module.SCHEMA_VERSION])
    def test_a_read_only_open_refuses_every_write(self, tmp_path: Path, version: int) -> None:
        """Opened read-only, an older file's copy refuses writes as a current file does: nothing is
        recorded anywhere, and the file is unchanged."""
        path = tmp_path / "ledger.sqlite3"
        if version == module.SCHEMA_VERSION:
            with fresh(tmp_path) as ledger:
                ledger.reserve(spend(1), CAPS, T0, None)
        else:
            make_schema_3_ledger(path)
        before = path.read_bytes()
        writes = [
            lambda ledger: ledger.reserve(spend(9, T0 + timedelta(days=9)), CAPS, T0, None),
            lambda ledger: ledger.record("old1", ReleaseStatus.PUBLISHED, T0),
            lambda ledger: ledger.grant("window", 1.0, "more", "owner", T0),
            lambda ledger: ledger.acknowledge(["x"], "reset", T0),
            lambda ledger: ledger.cooldown_anchor(T0 - timedelta(hours=1)),  # moves a future anchor
        ]
        with open_ledger(path, CAPS, T0, create=False, boot=no_boot) as ledger:  # type: ignore[union-attr]
            releases = ledger.status(CAPS, T0).releases
            for write in writes:
                with pytest.raises(LedgerUnavailableError, match="readonly"):
                    write(ledger)
            assert releases == ledger.status(CAPS, T0).releases
        assert before == path.read_bytes()

    def test_a_tampered_older_file_is_refused_read_only_too(self, tmp_path: Path) -> None:
        """The copy is taken only after the file passed verification: a schema-3 file whose
        triggers were dropped is refused, not copied and migrated into a sound-looking ledger."""
        path = tmp_path / "ledger.sqlite3"
        make_schema_3_ledger(path)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("DROP TRIGGER spends_no_delete")
        with pytest.raises(LedgerCorruptError, match="append-only triggers were changed"):
            open_ledger(path, CAPS, T0, create=False)

    def test_the_queries_never_read_the_schema_version(self) -> None:
        """No method of Ledger reads ``self.version``: the version only says what the file was
        found at (``ledger verify`` reports it); every query runs on the current schema."""
        tree = ast.parse(inspect.getsource(Ledger))
        reads = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "version" and isinstance(node.ctx, ast.Load)
        ]
        assert reads == []

    def test_release_statuses_are_the_ones_the_schema_allows(self, tmp_path: Path) -> None:
        """ReleaseStatus names exactly the statuses the outcomes table accepts, and each records."""
        (allowed,) = re.findall(r"status\s+TEXT NOT NULL CHECK \(status IN \(([^)]*)\)\)", module._SCHEMA)
        assert {value.strip().strip("'") for value in allowed.split(",")} == set(ReleaseStatus)
        with fresh(tmp_path) as ledger:
            ledger.reserve(spend(1), CAPS, T0, None)
            for status in ReleaseStatus:
                ledger.record("r1", status, T0)
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
            recorded = [status for (status,) in conn.execute("SELECT status FROM outcomes ORDER BY id")]
        assert [status.value for status in ReleaseStatus] == recorded
