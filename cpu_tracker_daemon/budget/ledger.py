"""The durable privacy-budget ledger: one SQLite file, append-only, fail-closed.

* Every spend is recorded (``reserve``) in its own committed transaction *before* noise is drawn.
  The noisy value is then recorded (``record_drawn``) before it is written anywhere, so a release
  interrupted after that point is republished with the same noise, never redrawn.
* Caps are checked inside the same ``BEGIN IMMEDIATE`` transaction that records the spend, so
  reservations from several processes never overshoot a cap.
* Spends, outcomes and grants are append-only; triggers refuse UPDATE and DELETE.
* A missing ledger is created atomically (built aside, then renamed). An existing file that is
  not exactly a cpu-tracker ledger raises :class:`LedgerCorruptError` and is never touched.
* Caps only rise by a grant: a config cap above the one recorded at creation is not honoured.
* Caps are (epsilon, delta) pairs. What the spends add up to is computed from the spends
  themselves by :func:`accounting.compose` (pure math, no heavy imports), and the lifetime
  figure after each spend is also recorded beside it (``guarantees``), for the audit trail.
* A schema-1 ledger (pure epsilon caps) is read as it is, and migrated to schema 2 in one
  transaction the first time it is opened for writing; its delta caps start at 0 (it was created
  under pure epsilon-DP), so only the owner's grant can allow delta.
* A window sent to a secure round has two figures: its epsilon, what an aggregator that follows
  the protocol learns, which the caps hold; and its worst case (schema 6), what a cheating
  aggregator with any roster learns at most, recorded with the spend and summed beside each cap.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cpu_tracker_daemon.budget.caps import CAPS, BudgetStatus, Caps, CapStatus, Promise, iso, worst_epsilon
from cpu_tracker_daemon.errors import (
    BudgetExhaustedError,
    CooldownError,
    DeltaCapError,
    LedgerCorruptError,
    LedgerUnavailableError,
    PromiseChangedError,
)
from cpu_tracker_daemon.privacy.accounting import Event, compose, event_of
from cpu_tracker_daemon.schedule import earliest_start
from cpu_tracker_daemon.storage import fsync_dir, make_dirs_durably, state_access_error

if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 6
READABLE_VERSIONS = ("1", "2", "3", "4", "5", "6")
APPLICATION_ID = 0x43505554  # "CPUT"
LOCK_TIMEOUT_SECONDS = 10.0  # how long an open waits for another process's lock on the ledger
# The most delta a cap may ever have, base and grants together: a chance of 1 in 10,000 that the
# epsilon does not hold is already more than most privacy engineers would sign for.
MAX_TOTAL_DELTA = 1e-4
_TABLES = {"meta", "spends", "outcomes", "grants", "cooldown"}

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE spends (
    release_id   TEXT PRIMARY KEY,
    reserved_ts  REAL NOT NULL,
    reserved_at  TEXT NOT NULL,
    window_start TEXT NOT NULL,
    window_end   TEXT NOT NULL,
    epsilon      REAL NOT NULL CHECK (epsilon > 0),
    delta        REAL NOT NULL CHECK (delta >= 0),
    mechanism    TEXT NOT NULL,
    unit         TEXT NOT NULL,
    sensitivity  REAL NOT NULL
);
CREATE TABLE outcomes (
    id         INTEGER PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES spends (release_id),
    status     TEXT NOT NULL CHECK (status IN ('drawn', 'published', 'abandoned', 'superseded')),
    at         TEXT NOT NULL,
    payload    TEXT
);
CREATE TABLE grants (
    id         INTEGER PRIMARY KEY,
    cap        TEXT NOT NULL CHECK (cap IN ('lifetime', 'window')),
    epsilon    REAL NOT NULL CHECK (epsilon > 0),
    reason     TEXT NOT NULL CHECK (length(reason) > 0),
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL
);
CREATE TABLE cooldown (id INTEGER PRIMARY KEY CHECK (id = 1), anchor_ts REAL NOT NULL);
"""
# Schema 2 = schema 1 plus these, so creating and migrating share one definition.
_SCHEMA_2 = """
ALTER TABLE grants ADD COLUMN delta REAL NOT NULL DEFAULT 0 CHECK (delta >= 0);
CREATE TABLE guarantees (
    release_id       TEXT PRIMARY KEY REFERENCES spends (release_id),
    lifetime_epsilon REAL NOT NULL,
    lifetime_delta   REAL NOT NULL,
    method           TEXT NOT NULL
);
CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY,
    requester   TEXT NOT NULL,
    cap         TEXT NOT NULL CHECK (cap IN ('lifetime', 'window')),
    epsilon     REAL NOT NULL,
    delta       REAL NOT NULL,
    reason      TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approved', 'denied')),
    note        TEXT NOT NULL,
    decided_by  TEXT NOT NULL,
    decided_at  TEXT NOT NULL,
    grant_id    INTEGER REFERENCES grants (id)
);
CREATE INDEX outcomes_by_release ON outcomes (release_id, id);
CREATE INDEX spends_by_time ON spends (reserved_ts);
"""


# Schema 3 = schema 2 plus these: the rolling period as recorded (it only grows), the privacy
# promise the releases are accounted under (never changed), releases from before a deliberate
# reset, and each spend's boot and time since boot (the rolling period never passes faster than
# real time within a boot).
_SCHEMA_3 = """
ALTER TABLE spends ADD COLUMN boot_id TEXT;
ALTER TABLE spends ADD COLUMN boot_seconds REAL;
CREATE TABLE periods (
    id           INTEGER PRIMARY KEY,
    window_hours REAL NOT NULL CHECK (window_hours > 0),
    at           TEXT NOT NULL
);
CREATE TABLE promises (
    id               INTEGER PRIMARY KEY,
    unit             TEXT NOT NULL,
    samples          INTEGER NOT NULL,
    interval_seconds REAL NOT NULL,
    lower            REAL NOT NULL,
    upper            REAL NOT NULL,
    at               TEXT NOT NULL
);
CREATE TABLE acknowledged (
    release_id TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX spends_by_boot ON spends (boot_id, boot_seconds);
"""
_TABLES_3 = {"periods", "promises", "acknowledged"}

# Schema 4 = schema 3 plus the lifetime counts by kind of release after each spend, kept on its
# guarantee row: the lifetime cap is then read from the newest row, not summed over the history,
# so a release costs the same at 100,000 releases as at 100. A full verification recomputes them.
_SCHEMA_4 = """
ALTER TABLE guarantees ADD COLUMN counts TEXT;
"""

# Schema 5 = schema 4 plus each spend's planned window start, on the wall clock and on the boot
# clock: the rolling period counts a release by when its window was planned to start, a point of
# the schedule, so a schedule that exactly fills the window cap keeps every slot (stamped when
# reserved, after the window, the oldest spend had not yet left when the next window began).
_SCHEMA_5 = """
ALTER TABLE spends ADD COLUMN planned_ts REAL;
ALTER TABLE spends ADD COLUMN planned_boot_seconds REAL;
CREATE INDEX spends_by_plan ON spends (planned_ts);
CREATE INDEX spends_by_boot_plan ON spends (boot_id, planned_boot_seconds);
"""
# Schema 6 = schema 5 plus each spend's worst case: for a window sent to a secure round, the
# epsilon its own noise keeps against a cheating aggregator with any roster (NULL for a local
# release, whose worst case is its epsilon); and, on each guarantee, the lifetime sum of the
# worst cases after that spend, so the lifetime worst case is read from the newest row too.
_SCHEMA_6 = """
ALTER TABLE spends ADD COLUMN worst_epsilon REAL CHECK (worst_epsilon > 0);
ALTER TABLE guarantees ADD COLUMN lifetime_worst REAL;
"""
# The spends from before schema 5 count from when they were reserved, which is later than their
# plan: they stay in the rolling period a window longer, never shorter.
_PLANNED_FROM_RESERVED = "UPDATE spends SET planned_ts = reserved_ts, planned_boot_seconds = boot_seconds"
# Two clocks that run at one rate still disagree by rounding and by small steps (NTP at boot):
# the boot clock's test frees a spend this much sooner than exact; the wall clock's is exact.
BOOT_SLACK_SECONDS = 1.0


def _append_only(tables: tuple[str, ...]) -> str:
    return "".join(
        f"""
CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table}
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;"""
        for table in tables
        for op in ("update", "delete")
    )


_APPEND_ONLY = _append_only(
    ("spends", "outcomes", "grants", "meta", "guarantees", "requests", "periods", "promises", "acknowledged")
)
_META_NO_UPDATE = _append_only(("meta",)).split("CREATE TRIGGER meta_no_delete")[0].strip()
_SPENDS_NO_UPDATE = _append_only(("spends",)).split("CREATE TRIGGER spends_no_delete")[0].strip()


# Which boot this is and how long since it began (suspend included, where the OS can say):
# within one boot, the rolling period is measured on this clock too, so a wall clock set
# forward cannot empty it.
BootClock = Callable[[], tuple[str | None, float]]
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_clock() -> tuple[str | None, float]:
    try:
        boot_id: str | None = _BOOT_ID.read_text().strip() or None
    except OSError:
        boot_id = None
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return boot_id, time.clock_gettime(clock)


@dataclass(frozen=True, slots=True)
class Spend:
    """What one release will cost; recorded before any noise is drawn."""

    release_id: str
    window_start: datetime  # the window as it ran (the ledger is private)
    window_end: datetime
    epsilon: float
    delta: float
    mechanism: str
    unit: str
    sensitivity: float
    planned_start: datetime | None = None  # the published start; the cooldown counts from it
    planned_boot_seconds: float | None = None  # the boot clock at the planned start (None: at reserve)
    # A secure window's worst case: what a cheating aggregator with any roster learns at most
    # (its own noise's epsilon). None for a local release: its worst case is its epsilon.
    worst_epsilon: float | None = None


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A reserved release that was never confirmed published."""

    release_id: str
    status: str | None  # None: reserved only; "drawn": the noisy record is in ``payload``
    payload: dict[str, Any] | None
    reserved_ts: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The owner's answer to a budget request, as the ledger keeps it."""

    request_id: str
    requester: str
    cap: str
    epsilon: float
    delta: float
    reason: str
    decision: str  # "approved" or "denied"
    note: str
    decided_by: str
    decided_at: str


@dataclass(frozen=True, slots=True)
class Grant:
    cap: str
    epsilon: float
    reason: str
    granted_by: str
    granted_at: str
    delta: float = 0.0


class Ledger:
    """A verified connection to the ledger file. Use :func:`open_ledger` to get one."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        version: int = SCHEMA_VERSION,
        boot: BootClock = boot_clock,
    ) -> None:
        self.path = path
        self._conn = conn
        self.version = version
        self._boot = boot

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """Translate SQLite failures: damage is corruption, the rest is temporary."""
        try:
            yield self._conn
        except sqlite3.IntegrityError as exc:
            raise LedgerCorruptError(str(self.path), f"integrity violation: {exc}") from None
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailableError(str(self.path), str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise LedgerCorruptError(str(self.path), str(exc)) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._guard() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                # SQLite rolls back by itself after some errors (a full disk): a second ROLLBACK
                # would fail and hide the error that matters.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """Several reads as one snapshot: the connection is in autocommit mode, where each
        statement would see the file as it is then, and a spend committed between two of them
        would make a sound ledger's running counts disagree with its spends."""
        with self._guard() as conn, _snapshot(conn):
            yield conn

    # -- reading ---------------------------------------------------------------------------

    def anchor_ts(self) -> float | None:
        """The recorded cooldown anchor, as it stands (read-only: :meth:`cooldown_anchor` is the
        writer's, which also moves an anchor in the future to now)."""
        with self._guard() as conn:
            row = conn.execute("SELECT anchor_ts FROM cooldown WHERE id = 1").fetchone()
        return None if row is None else float(row[0])

    def status(self, caps: Caps, now: datetime, at: datetime | None = None) -> BudgetStatus:
        """The budget now, with the rolling period ending ``at`` (a window's planned start) if given."""
        with self._reading() as conn:
            end = None if at is None else (at.timestamp(), None)
            return self._status(conn, caps, now.timestamp(), at=end)

    def _status(
        self,
        conn: sqlite3.Connection,
        caps: Caps,
        now_ts: float,
        lifetime: list[Any] | None = None,
        at: tuple[float, float | None] | None = None,
        lifetime_worst: float | None = None,
    ) -> BudgetStatus:
        """The budget now; ``lifetime`` (rows of mechanism, epsilon, delta, count) and
        ``lifetime_worst`` when the caller already has the lifetime counts and worst case (a spend
        being reserved is not on a guarantee yet).

        The rolling period ends now, or ``at``: the planned start of the window being checked, on
        the wall clock and on the boot clock (None: as far from the boot clock's now as from the
        wall clock's). It holds each release that was planned to start within it."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        granted = {cap: [0.0, 0.0] for cap in CAPS}
        for cap, epsilon, delta in conn.execute(
            "SELECT cap, TOTAL(epsilon), TOTAL(delta) FROM grants GROUP BY cap"
            if self.version >= 2
            else "SELECT cap, TOTAL(epsilon), 0.0 FROM grants GROUP BY cap"
        ):
            granted[cap] = [float(epsilon), float(delta)]
        window_hours = self._window_hours(conn, caps)
        window_seconds = window_hours * 3600.0
        if lifetime is None:
            lifetime = self._lifetime_counts(conn)
        if lifetime_worst is None:
            lifetime_worst = self._lifetime_worst(conn)
        # Per kind, also the worst cases summed and how many spends recorded one (before schema
        # 6 none did): the window's worst case comes from the same rows as its counts.
        worst_sql = f"TOTAL(COALESCE({self._worst_column}, epsilon)), COUNT({self._worst_column})"
        if self.version >= 5:
            # A spend is in the rolling period while the wall clock says so, or, within the boot
            # it was made in, while the time since boot says so: a clock set forward never
            # empties the period faster than real time.
            boot_id, boot_now = self._boot()
            end_ts, end_boot = (now_ts, boot_now) if at is None else at
            if end_boot is None:
                end_boot = boot_now + (end_ts - now_ts)
            window = conn.execute(
                f"SELECT mechanism, epsilon, delta, COUNT(*), {worst_sql} FROM spends "  # noqa: S608 - ours
                "WHERE planned_ts > ? OR (boot_id = ? AND planned_boot_seconds > ?) "
                "GROUP BY mechanism, epsilon, delta",
                (end_ts - window_seconds, boot_id, end_boot - window_seconds + BOOT_SLACK_SECONDS),
            ).fetchall()
        elif self.version >= 3:
            boot_id, boot_now = self._boot()
            window = conn.execute(
                f"SELECT mechanism, epsilon, delta, COUNT(*), {worst_sql} FROM spends "  # noqa: S608 - ours
                "WHERE reserved_ts > ? OR (boot_id = ? AND boot_seconds > ?) "
                "GROUP BY mechanism, epsilon, delta",
                (now_ts - window_seconds, boot_id, boot_now - window_seconds),
            ).fetchall()
        else:
            window = conn.execute(
                f"SELECT mechanism, epsilon, delta, COUNT(*), {worst_sql} FROM spends "  # noqa: S608 - ours
                "WHERE reserved_ts > ? GROUP BY mechanism, epsilon, delta",
                (now_ts - window_seconds,),
            ).fetchall()
        (last_ts,) = conn.execute("SELECT MAX(reserved_ts) FROM spends").fetchone()  # by its index
        anchor = conn.execute("SELECT anchor_ts FROM cooldown WHERE id = 1").fetchone()

        def cap_status(name: str, epsilon: float, delta: float, rows: list[Any], worst: float) -> CapStatus:
            counts: dict[Event, int] = {}
            for mechanism, eps, spend_delta, n in rows:
                event = event_of(mechanism, eps, spend_delta)
                counts[event] = counts.get(event, 0) + int(n)
            base = min(epsilon, float(meta[f"base_{name}_epsilon"]))
            base_delta = min(delta, float(meta.get(f"base_{name}_delta", 0.0)))
            limit_delta = base_delta + granted[name][1]
            composed = compose(counts, limit_delta)
            return CapStatus(
                name,
                base + granted[name][0],
                composed.epsilon,
                granted[name][0],
                base,
                limit_delta,
                granted[name][1],
                composed.method,
                tuple(counts.items()),
                worst,
            )

        life = cap_status("lifetime", caps.lifetime_epsilon, caps.lifetime_delta, lifetime, lifetime_worst)
        window_worst = _worst_sum(window)
        window_counts = [row[:4] for row in window]
        return BudgetStatus(
            lifetime=life,
            window=cap_status("window", caps.window_epsilon, caps.window_delta, window_counts, window_worst),
            releases=life.releases,
            last_release_at=iso(last_ts) if last_ts is not None else None,
            cooldown_anchor_ts=float(anchor[0]) if anchor else None,
            window_hours=window_hours,
        )

    def _lifetime_counts(self, conn: sqlite3.Connection) -> list[Any]:
        """How many releases of each kind were ever made: from the newest guarantee, which carries
        them (schema 4), or, before the first spend that stored them, counted over the history."""
        if self.version >= 4:
            row = conn.execute("SELECT counts FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
            if row is not None and row[0] is not None:
                running = _parse_counts(row[0])
                # Spends are append-only, so their largest rowid is how many there are: a cheap
                # check that the running counts cover every spend.
                (spends,) = conn.execute("SELECT MAX(rowid) FROM spends").fetchone()
                if running is None or sum(item[3] for item in running) != spends:
                    raise LedgerCorruptError(
                        str(self.path),
                        "its running release counts do not cover its spends, so it cannot be trusted",
                    )
                return running
        return _counted_lifetime(conn)

    @property
    def _worst_column(self) -> str:
        """The spends' worst-case column, or NULL in a ledger from before it (read as it is)."""
        return "worst_epsilon" if self.version >= 6 else "NULL"

    def _lifetime_worst(self, conn: sqlite3.Connection) -> float:
        """The worst cases of every release summed: from the newest guarantee, which carries the
        sum (schema 6), or, before the first spend that stored it, summed over the history."""
        if self.version >= 6:
            row = conn.execute("SELECT lifetime_worst FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
            if row is not None and row[0] is not None:
                return float(row[0])
        return _counted_worst(conn, self._worst_column)

    def _window_hours(self, conn: sqlite3.Connection, caps: Caps) -> float:
        """The rolling period: the configured one, or the longest ever recorded if that is longer.

        Shortening it in the config would free the spends of the part cut off, so it only grows.
        """
        if self.version < 3:
            return caps.window_hours
        (recorded,) = conn.execute("SELECT MAX(window_hours) FROM periods").fetchone()
        return caps.window_hours if recorded is None else max(caps.window_hours, float(recorded))

    def promise(self) -> Promise | None:
        """The promise the ledger's releases are accounted under (None before the first)."""
        if self.version < 3:
            return None
        with self._guard() as conn:
            return _recorded_promise(conn)

    def check_promise(self, promise: Promise) -> None:
        """Raise PromiseChangedError if ``promise`` is not the one the ledger has recorded."""
        self._refuse_other(self.promise(), promise)

    def _refuse_other(self, recorded: Promise | None, promise: Promise) -> None:
        if recorded is not None and recorded != promise:
            raise PromiseChangedError(str(self.path), recorded.describe(), promise.describe())

    def knows(self, release_id: str) -> bool:
        """Whether this ledger accounted ``release_id``, or acknowledged it at a deliberate reset."""
        with self._reading() as conn:
            row = conn.execute("SELECT 1 FROM spends WHERE release_id = ?", (release_id,)).fetchone()
            if row is None and self.version >= 3:
                row = conn.execute(
                    "SELECT 1 FROM acknowledged WHERE release_id = ?", (release_id,)
                ).fetchone()
        return row is not None

    def acknowledge(self, release_ids: list[str], reason: str, now: datetime) -> None:
        """Record releases published before a deliberate reset, so their files do not stop this one."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO acknowledged VALUES (?, ?, ?)",
                [(release_id, reason, now.isoformat()) for release_id in release_ids],
            )

    def spend_times(self, after: float) -> list[float]:
        """When each window planned after ``after`` (a timestamp) was planned to start (before
        schema 5: reserved), oldest first: the times the rolling period counts."""
        column = "planned_ts" if self.version >= 5 else "reserved_ts"
        with self._guard() as conn:
            rows = conn.execute(
                f"SELECT {column} FROM spends WHERE {column} > ? ORDER BY {column}",  # noqa: S608 - a column name of ours
                (after,),
            )
            return [float(ts) for (ts,) in rows]

    def unfinished(self) -> list[Unfinished]:
        """Reserved releases with no terminal outcome, oldest first.

        Only spends after the newest settled one are looked at, found through the outcomes' and
        spends' indexes, so the cost does not grow with the history. That is exact because a
        cycle settles every unfinished release before it reserves a new one (the instance lock
        keeps a second writer out): an unfinished release is always newer than the newest
        settled one.
        """
        with self._guard() as conn:
            rows = conn.execute(
                """
                SELECT s.release_id, s.reserved_ts,
                       (SELECT status FROM outcomes o WHERE o.release_id = s.release_id
                        ORDER BY o.id DESC LIMIT 1) AS status,
                       (SELECT payload FROM outcomes o WHERE o.release_id = s.release_id
                        AND o.status = 'drawn' ORDER BY o.id DESC LIMIT 1) AS payload
                FROM spends s
                WHERE s.rowid > COALESCE((
                    SELECT sp.rowid FROM spends sp WHERE sp.release_id = (
                        SELECT o.release_id FROM outcomes o
                        WHERE o.status IN ('published', 'abandoned', 'superseded')
                        ORDER BY o.id DESC LIMIT 1)), 0)
                AND NOT EXISTS (
                    SELECT 1 FROM outcomes o WHERE o.release_id = s.release_id
                    AND o.status IN ('published', 'abandoned', 'superseded'))
                ORDER BY s.rowid -- the order reserved; by rowid, so the range above is a search
                """
            ).fetchall()
        result = []
        for release_id, reserved_ts, status, payload in rows:
            if status in (None, "drawn"):
                result.append(
                    Unfinished(release_id, status, json.loads(payload) if payload else None, reserved_ts)
                )
        return result

    def published_after(self, reserved_ts: float) -> bool:
        """Whether a release reserved after ``reserved_ts`` has been published."""
        with self._guard() as conn:
            row = conn.execute(
                """SELECT 1 FROM spends s JOIN outcomes o ON o.release_id = s.release_id
                   WHERE s.reserved_ts > ? AND o.status = 'published' LIMIT 1""",
                (reserved_ts,),
            ).fetchone()
        return row is not None

    def grants(self) -> list[Grant]:
        with self._guard() as conn:
            columns = "cap, epsilon, reason, granted_by, granted_at"
            rows = conn.execute(
                f"SELECT {columns}, delta FROM grants ORDER BY id"  # noqa: S608 - constant text
                if self.version >= 2
                else f"SELECT {columns}, 0.0 FROM grants ORDER BY id"  # noqa: S608 - constant text
            ).fetchall()
        return [Grant(*row) for row in rows]

    # -- writing ---------------------------------------------------------------------------

    def cooldown_anchor(self, now: datetime) -> tuple[float | None, bool]:
        """The start of the last reserved window; one in the future is moved to now, durably.

        Returns ``(anchor_ts, skewed)``. Moving a future anchor to now means a clock that jumped
        backwards delays the next release by at most one interval.
        """
        now_ts = now.timestamp()
        with self._transaction() as conn:
            row = conn.execute("SELECT anchor_ts FROM cooldown WHERE id = 1").fetchone()
            if row is None:
                return None, False
            if row[0] > now_ts:
                conn.execute("UPDATE cooldown SET anchor_ts = ? WHERE id = 1", (now_ts,))
                return now_ts, True
            return float(row[0]), False

    def reserve(
        self,
        spend: Spend,
        caps: Caps,
        now: datetime,
        every_seconds: float | None,
        promise: Promise | None = None,
    ) -> BudgetStatus:
        """Check every cap (and the cooldown, unless ``every_seconds`` is None); record the spend.

        Raises CooldownError or BudgetExhaustedError and records nothing when it does not fit.
        Returns the budget as it stands after the spend.
        """
        if spend.worst_epsilon is not None and not (
            math.isfinite(spend.worst_epsilon) and spend.worst_epsilon > 0
        ):
            raise ValueError(f"a worst-case epsilon must be positive and finite, not {spend.worst_epsilon!r}")
        now_ts = now.timestamp()
        start_ts = spend.window_start.timestamp()
        planned_ts = start_ts if spend.planned_start is None else spend.planned_start.timestamp()
        worst = worst_epsilon(spend.mechanism, spend.epsilon, spend.worst_epsilon)
        with self._transaction() as conn:
            anchor_row = conn.execute("SELECT anchor_ts FROM cooldown WHERE id = 1").fetchone()
            anchor = float(anchor_row[0]) if anchor_row else None
            earliest = None if every_seconds is None else earliest_start(anchor, every_seconds)
            if earliest is not None and start_ts < earliest:
                raise CooldownError(iso(earliest))
            if promise is not None and self.version >= 3:
                self._hold_promise(conn, promise, now)
                self._hold_period(conn, caps, now)
            lifetime = self._lifetime_counts(conn)
            lifetime_worst = self._lifetime_worst(conn)
            boot = self._boot()
            planned_boot = boot[1] if spend.planned_boot_seconds is None else spend.planned_boot_seconds
            before = self._status(conn, caps, now_ts, lifetime, (planned_ts, planned_boot), lifetime_worst)
            event = event_of(spend.mechanism, spend.epsilon, spend.delta)
            # A window that starts after now straddled a clock set back: it anchors at now, not in
            # the future, so the next release waits one interval, not one plus the size of the step.
            anchor_after = min(planned_ts, now_ts) if anchor is None else max(anchor, min(planned_ts, now_ts))
            after = before.plus(event, now_ts, anchor_after, worst)
            for cap, with_this in zip(before.caps, after.caps, strict=True):
                if not with_this.within_limit():
                    raise BudgetExhaustedError(cap.name, cap.spent, cap.limit, spend.epsilon)
            values = [
                spend.release_id,
                now_ts,
                iso(now_ts),
                spend.window_start.isoformat(),
                spend.window_end.isoformat(),
                spend.epsilon,
                spend.delta,
                spend.mechanism,
                spend.unit,
                spend.sensitivity,
            ]
            if self.version >= 3:
                values += list(boot)
            if self.version >= 5:
                values += [planned_ts, planned_boot]
            if self.version >= 6:  # in the same row, so in the same transaction as the spend
                values.append(spend.worst_epsilon)
            marks = ", ".join("?" * len(values))
            conn.execute(f"INSERT INTO spends VALUES ({marks})", values)  # noqa: S608 - placeholders only
            conn.execute(  # the anchor read above, in this same transaction, moved as after says
                "INSERT INTO cooldown (id, anchor_ts) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET anchor_ts = excluded.anchor_ts",
                (anchor_after,),
            )
            counts = _plus_one(lifetime, (spend.mechanism, spend.epsilon, spend.delta))
            row = (spend.release_id, after.lifetime.spent, after.lifetime.delta, after.lifetime.method)
            if self.version >= 6:
                conn.execute(
                    "INSERT INTO guarantees VALUES (?, ?, ?, ?, ?, ?)",
                    (*row, json.dumps(counts), after.lifetime.worst_spent),
                )
            elif self.version >= 4:
                conn.execute("INSERT INTO guarantees VALUES (?, ?, ?, ?, ?)", (*row, json.dumps(counts)))
            else:
                conn.execute("INSERT INTO guarantees VALUES (?, ?, ?, ?)", row)
            return after

    def _hold_promise(self, conn: sqlite3.Connection, promise: Promise, now: datetime) -> None:
        """Record ``promise`` with the ledger's first release under schema 3; refuse any other."""
        recorded = _recorded_promise(conn)
        if recorded is None:
            conn.execute(
                "INSERT INTO promises (unit, samples, interval_seconds, lower, upper, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    promise.unit,
                    promise.samples,
                    promise.interval_seconds,
                    promise.lower,
                    promise.upper,
                    now.isoformat(),
                ),
            )
        else:
            self._refuse_other(recorded, promise)

    def _hold_period(self, conn: sqlite3.Connection, caps: Caps, now: datetime) -> None:
        (recorded,) = conn.execute("SELECT MAX(window_hours) FROM periods").fetchone()
        if recorded is None or caps.window_hours > float(recorded):
            conn.execute(
                "INSERT INTO periods (window_hours, at) VALUES (?, ?)", (caps.window_hours, now.isoformat())
            )

    def record(
        self, release_id: str, status: str, now: datetime, payload: dict[str, Any] | None = None
    ) -> None:
        """Append an outcome: ``drawn`` (with the noisy public record), ``published``, ..."""
        text = json.dumps(payload, sort_keys=True) if payload is not None else None
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO outcomes (release_id, status, at, payload) VALUES (?, ?, ?, ?)",
                (release_id, status, now.isoformat(), text),
            )

    def decisions(self) -> dict[str, Decision]:
        """Every decided budget request, by id (none before schema 2)."""
        if self.version < 2:
            return {}
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT request_id, requester, cap, epsilon, delta, reason, decision, note, decided_by, "
                "decided_at FROM requests ORDER BY decided_at"
            ).fetchall()
        return {row[0]: Decision(*row) for row in rows}

    def decide(self, decision: Decision) -> None:
        """Record the answer to a request; an approval adds its grant in the same transaction.

        A request already decided raises ValueError: a replayed request is never granted twice.
        """
        if decision.decision not in ("approved", "denied"):
            raise ValueError(f"unknown decision {decision.decision!r}")
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (decision.request_id,)).fetchone():
                raise ValueError(f"request {decision.request_id} was already decided")
            grant_id = None
            if decision.decision == "approved":
                self._check_delta(conn, decision.cap, decision.delta)
                cursor = conn.execute(
                    "INSERT INTO grants (cap, epsilon, reason, granted_by, granted_at, delta) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        decision.cap,
                        decision.epsilon,
                        f"request {decision.request_id} from {decision.requester}: {decision.reason}",
                        decision.decided_by,
                        decision.decided_at,
                        decision.delta,
                    ),
                )
                grant_id = cursor.lastrowid
            conn.execute(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.request_id,
                    decision.requester,
                    decision.cap,
                    decision.epsilon,
                    decision.delta,
                    decision.reason,
                    decision.decision,
                    decision.note,
                    decision.decided_by,
                    decision.decided_at,
                    grant_id,
                ),
            )

    def grant(
        self, cap: str, epsilon: float, reason: str, granted_by: str, now: datetime, delta: float = 0.0
    ) -> None:
        if cap not in CAPS:
            raise ValueError(f"unknown cap {cap!r}")
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError("a grant must be a positive finite epsilon")
        if not 0 <= delta < 1:
            raise ValueError("a grant's delta must be in [0, 1)")
        with self._transaction() as conn:
            self._check_delta(conn, cap, delta)
            conn.execute(
                "INSERT INTO grants (cap, epsilon, reason, granted_by, granted_at, delta) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (cap, epsilon, reason, granted_by, now.isoformat(), delta),
            )

    def _check_delta(self, conn: sqlite3.Connection, cap: str, delta: float) -> None:
        """Refuse a grant that takes the cap's delta (base plus grants) past MAX_TOTAL_DELTA."""
        if delta == 0:
            return
        (base,) = conn.execute("SELECT value FROM meta WHERE key = ?", (f"base_{cap}_delta",)).fetchone()
        (granted,) = conn.execute("SELECT TOTAL(delta) FROM grants WHERE cap = ?", (cap,)).fetchone()
        total = float(base) + float(granted) + delta
        if total > MAX_TOTAL_DELTA:
            raise DeltaCapError(cap, total, MAX_TOTAL_DELTA)


def _counted_lifetime(conn: sqlite3.Connection) -> list[Any]:
    """Releases of each kind, counted over the whole history (the full recomputation)."""
    rows = conn.execute(
        "SELECT mechanism, epsilon, delta, COUNT(*) FROM spends GROUP BY mechanism, epsilon, delta "
        "ORDER BY mechanism, epsilon, delta"
    ).fetchall()
    return [tuple(row) for row in rows]


def _counted_worst(conn: sqlite3.Connection, column: str = "worst_epsilon") -> float:
    """The worst cases of every release summed over the whole history (the full recomputation)."""
    rows = conn.execute(
        f"SELECT mechanism, NULL, NULL, COUNT(*), TOTAL(COALESCE({column}, epsilon)), COUNT({column}) "  # noqa: S608 - ours
        "FROM spends GROUP BY mechanism"
    ).fetchall()
    return _worst_sum(rows)


def _worst_sum(rows: list[Any]) -> float:
    """The worst cases summed, from rows of (mechanism, epsilon, delta, count, the worst cases
    recorded summed with the others' epsilons, how many recorded one): a secure window that
    recorded none has no bound (:func:`budget.worst_epsilon`)."""
    total = 0.0
    for mechanism, _, _, n, summed, recorded in rows:
        total += float(summed)  # a missing one counted at its epsilon,
        if int(recorded) < int(n):  # which is all a local release gives away; a secure one, none
            total += worst_epsilon(mechanism, 0.0, None)
    return total


def _parse_counts(text: str) -> list[Any] | None:
    """The running counts as stored (a JSON list of [mechanism, epsilon, delta, count]), or None."""
    try:
        rows = [tuple(item) for item in json.loads(text)]
    except (ValueError, TypeError):
        return None
    ok = all(len(r) == 4 and isinstance(r[0], str) and isinstance(r[3], int) and r[3] > 0 for r in rows)
    return rows if ok else None


def _plus_one(rows: list[Any], kind: tuple[str, float, float]) -> list[Any]:
    """``rows`` (mechanism, epsilon, delta, count) with one more release of ``kind``, sorted."""
    counts = {tuple(row[:3]): int(row[3]) for row in rows}
    counts[kind] = counts.get(kind, 0) + 1
    return [(*k, n) for k, n in sorted(counts.items())]


def _recorded_promise(conn: sqlite3.Connection) -> Promise | None:
    row = conn.execute(
        "SELECT unit, samples, interval_seconds, lower, upper FROM promises ORDER BY id LIMIT 1"
    ).fetchone()
    return None if row is None else Promise(*row)


def open_ledger(
    path: Path,
    caps: Caps,
    now: datetime,
    *,
    create: bool = True,
    boot: BootClock | None = None,
    timeout: float = LOCK_TIMEOUT_SECONDS,
    full: bool = True,
) -> Ledger | None:
    """Open and verify the ledger at ``path``; create it when missing and ``create`` is set.

    Returns None when it is missing and ``create`` is false. Never modifies an existing file
    that fails verification: it raises :class:`LedgerCorruptError` instead. An older schema is
    migrated in one transaction when opened for writing, and read as it is otherwise.

    Every open checks the file (owner, mode, links), its application id, tables, schema version,
    base caps and append-only triggers, at a cost that does not grow with the history. ``full``
    also runs SQLite's ``quick_check`` over every page and recomputes the lifetime counts from
    the spends: the daemon does that when it starts (and ``ledger verify`` on demand), not in
    each cycle, where it would cost more the longer the history.
    """
    try:
        exists = path.exists()
    except PermissionError:  # another user's private state directory
        raise state_access_error(path) from None
    if not exists:
        if not create:
            return None
        _create(path, caps, now)
    # A crash in the middle of a commit leaves a hot journal, which only a read-write
    # connection may roll back (SQLite's own recovery of the last, uncommitted transaction);
    # a read-only open would fail with "attempt to write a readonly database" until a writer came.
    hot = not create and _journal_size(path) > 0 and os.access(path, os.W_OK)
    conn, version = _connect_verified(path, readonly=not create and not hot, timeout=timeout, full=full)
    if version < SCHEMA_VERSION and create:
        _migrate(conn, path, now)
        version = SCHEMA_VERSION
    return Ledger(path, conn, version, boot or boot_clock)


def _journal_size(path: Path) -> int:
    """The size of the ledger's rollback journal; 0 when there is none, including one that a
    committing writer deletes while this looks."""
    try:
        return path.with_name(path.name + "-journal").stat().st_size
    except FileNotFoundError:
        return 0


def _migrate(conn: sqlite3.Connection, path: Path, now: datetime) -> None:
    """Schema 1, 2, 3, 4 or 5 to 6 in one transaction; a failure leaves the file as it was.

    1 to 2: delta grants, the guarantees and requests tables, delta caps of 0 (a schema-1
    ledger was created under pure epsilon-DP). 2 to 3: the recorded rolling period, the privacy
    promise, acknowledged releases and each spend's boot (empty for the spends before it). 3 to
    4: the running counts on each guarantee (empty before it: the first spend after the
    migration counts the history once). 4 to 5: each spend's planned start, taken to be when it
    was reserved for the spends before it (later than planned: they count longer, not shorter).
    5 to 6: each spend's worst case, NULL for the spends before it (a local release's is its
    epsilon; a secure window sent without noise of its own has none), and the lifetime sum on
    each guarantee (empty before it: the first spend after the migration sums the history once).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            # Another process may have migrated it while this one waited for the lock.
            # One statement at a time: executescript() would commit half-way.
            script, rows = "", [(f"migrated_to_{SCHEMA_VERSION}_at", now.isoformat())]
            if version == "1":
                script += _SCHEMA_2 + _append_only(("guarantees", "requests"))
                rows += [("base_lifetime_delta", "0.0"), ("base_window_delta", "0.0")]
            if version in ("1", "2"):
                script += _SCHEMA_3 + _append_only(tuple(sorted(_TABLES_3)))
            if version in ("1", "2", "3"):
                script += _SCHEMA_4
            if version in ("1", "2", "3", "4"):
                script += _SCHEMA_5
            if version in ("1", "2", "3", "4", "5"):
                script += _SCHEMA_6
                for statement in _statements(script):
                    conn.execute(statement)
                if version != "5":
                    # The one deliberate change to spends: the new columns, from what each recorded.
                    conn.execute("DROP TRIGGER spends_no_update")
                    conn.execute(_PLANNED_FROM_RESERVED)
                    conn.execute(_SPENDS_NO_UPDATE)
                conn.execute("DROP TRIGGER meta_no_update")  # the one deliberate change to meta
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                conn.execute(_META_NO_UPDATE)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        conn.close()
        raise LedgerUnavailableError(str(path), f"cannot migrate to schema {SCHEMA_VERSION}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerCorruptError(str(path), f"cannot migrate to schema {SCHEMA_VERSION}: {exc}") from None


def _statements(script: str) -> list[str]:
    """Split a script of CREATE/ALTER statements (triggers included) into single statements."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.endswith("END;")):
            out.append(text)
            current = []
    return [statement for statement in out if statement.strip(";").strip()]


def _check_file(path: Path) -> None:
    """Refuse a ledger that someone else could have changed: a symlink, a file group- or
    other-writable or owned by another user, or one in a directory anyone may write to."""
    try:
        info = os.lstat(path)
        parent = path.parent.stat()
    except PermissionError:
        raise state_access_error(path) from None
    except OSError as exc:
        raise LedgerUnavailableError(str(path), exc.strerror or str(exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise LedgerCorruptError(str(path), "a symlink; the ledger is never read through one")
    if not stat.S_ISREG(info.st_mode):
        raise LedgerCorruptError(str(path), "not a regular file")
    if info.st_mode & 0o022:
        raise LedgerCorruptError(
            str(path),
            f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}), so anyone could have "
            "rewritten it; check it, then chmod 600 it",
        )
    euid = os.geteuid()
    if euid not in (0, info.st_uid):
        if parent.st_uid == info.st_uid:  # another user's state, as it should be: theirs to use
            raise state_access_error(path)
        raise LedgerCorruptError(str(path), f"owned by uid {info.st_uid}, not by this user (uid {euid})")
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise LedgerCorruptError(str(path), "its directory is writable by everyone, who could replace it")
    journal = path.with_name(path.name + "-journal")
    if journal.is_symlink():
        raise LedgerCorruptError(str(journal), "a symlink; the ledger's journal is never used through one")
    if info.st_size == 0:
        raise LedgerCorruptError(str(path), "the file is empty")


def _connect_verified(
    path: Path, readonly: bool, timeout: float = LOCK_TIMEOUT_SECONDS, full: bool = True
) -> tuple[sqlite3.Connection, int]:
    _check_file(path)
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
    except sqlite3.Error as exc:
        raise LedgerUnavailableError(str(path), str(exc)) from None
    try:
        with _snapshot(conn):  # one snapshot, while another process may be committing
            version = _verify(conn, path, full)
        # EXTRA: in DELETE mode the journal's directory is also synced after the journal is
        # unlinked, so a commit is durable before anything that depends on it is written, on
        # any POSIX file system (FULL leaves the unlink to the file system's ordering).
        conn.execute("PRAGMA synchronous = EXTRA")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.OperationalError as exc:
        conn.close()
        raise LedgerUnavailableError(str(path), str(exc)) from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerCorruptError(str(path), str(exc)) from None
    except LedgerCorruptError:
        conn.close()
        raise
    return conn, version


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every statement inside sees the same committed state."""
    conn.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")  # nothing was written: this only ends the snapshot


def _verify(conn: sqlite3.Connection, path: Path, full: bool = True) -> int:
    """Check that this is a sound cpu-tracker ledger; return its schema version."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id != APPLICATION_ID:
        raise LedgerCorruptError(str(path), "not a cpu-tracker ledger (foreign application id)")
    if full:
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise LedgerCorruptError(str(path), f"integrity check failed: {check}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= _TABLES:
        raise LedgerCorruptError(str(path), f"missing tables {sorted(_TABLES - tables)}")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version = meta.get("schema_version")
    if version in READABLE_VERSIONS:
        _check_triggers(conn, path, version)
    if version not in READABLE_VERSIONS:
        raise LedgerCorruptError(
            str(path), f"schema version {version!r}, this cpu-tracker reads {', '.join(READABLE_VERSIONS)}"
        )
    expected = (set() if version == "1" else {"guarantees", "requests"}) | (
        _TABLES_3 if version in ("3", "4", "5", "6") else set()
    )
    if not tables >= expected:
        raise LedgerCorruptError(str(path), f"missing tables {sorted(expected - tables)}")
    for key in ("base_lifetime_epsilon", "base_window_epsilon"):
        try:
            value = float(meta[key])
        except (KeyError, ValueError):
            raise LedgerCorruptError(str(path), f"meta.{key} is missing or not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise LedgerCorruptError(str(path), f"meta.{key} is not a positive number")
    if version != "1":
        for key in ("base_lifetime_delta", "base_window_delta"):
            try:
                value = float(meta[key])
            except (KeyError, ValueError):
                raise LedgerCorruptError(str(path), f"meta.{key} is missing or not a number") from None
            if not 0 <= value < 1:
                raise LedgerCorruptError(str(path), f"meta.{key} is not in [0, 1)")
    if full and version in ("4", "5", "6"):
        _check_counts(conn, path)
    if full and version == "6":
        _check_worst(conn, path)
    return int(version)


def _check_counts(conn: sqlite3.Connection, path: Path) -> None:
    """The newest guarantee's running counts must be what the spends add up to."""
    row = conn.execute("SELECT counts FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
    if row is None or row[0] is None:
        return  # no spend since the migration: there is nothing running to check
    if _parse_counts(row[0]) != _counted_lifetime(conn):
        raise LedgerCorruptError(
            str(path), "its running release counts disagree with its spends, so it cannot be trusted"
        )


def _check_worst(conn: sqlite3.Connection, path: Path) -> None:
    """The newest guarantee's running worst case must be what the spends' worst cases add up to."""
    row = conn.execute("SELECT lifetime_worst FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
    if row is None or row[0] is None:
        return  # no spend since the migration: there is nothing running to check
    if not math.isclose(float(row[0]), _counted_worst(conn), rel_tol=1e-9, abs_tol=1e-9):
        raise LedgerCorruptError(
            str(path), "its running worst-case epsilon disagrees with its spends, so it cannot be trusted"
        )


_APPEND_ONLY_BY_VERSION = {
    "1": ("spends", "outcomes", "grants", "meta"),
    "2": ("spends", "outcomes", "grants", "meta", "guarantees", "requests"),
    "3": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "4": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "5": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "6": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
}


@functools.cache
def _expected_triggers(version: str) -> dict[str, str]:
    """This version's append-only triggers, by name, whitespace normalised (worked out once)."""
    return {
        statement.split()[2]: " ".join(statement.rstrip(";").split())
        for statement in _statements(_append_only(_APPEND_ONLY_BY_VERSION[version]))
    }


def _check_triggers(conn: sqlite3.Connection, path: Path, version: str) -> None:
    """The append-only triggers must be exactly this version's, and nothing else may run."""
    expected = _expected_triggers(version)
    found = {
        name: " ".join((sql or "").split())
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('trigger', 'view')")
    }
    if found != expected:
        changed = sorted(set(found) ^ set(expected) | {n for n in found if found[n] != expected.get(n)})
        raise LedgerCorruptError(
            str(path), f"its append-only triggers were changed ({', '.join(changed)}); it cannot be trusted"
        )


def _create(path: Path, caps: Caps, now: datetime) -> None:
    """Build a fresh ledger beside ``path`` and rename it into place: never half-created."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        make_dirs_durably(path.parent, 0o700)
        with suppress(FileNotFoundError):
            tmp.unlink()
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            schema = _SCHEMA + _SCHEMA_2 + _SCHEMA_3 + _SCHEMA_4 + _SCHEMA_5 + _SCHEMA_6 + _APPEND_ONLY
            conn.executescript("BEGIN;" + schema + "COMMIT;")
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created_at", now.isoformat()),
                    ("base_lifetime_epsilon", repr(caps.lifetime_epsilon)),
                    ("base_window_epsilon", repr(caps.window_epsilon)),
                    ("base_lifetime_delta", repr(caps.lifetime_delta)),
                    ("base_window_delta", repr(caps.window_delta)),
                ],
            )
        finally:
            conn.close()
        tmp.chmod(0o600)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.exists():  # another process created it meanwhile: theirs stands
            return
        try:
            os.link(tmp, path)  # fails rather than replaces if one appeared since
        except FileExistsError:
            return
        except OSError:  # a filesystem without hard links
            if path.exists():
                return
            tmp.replace(path)
        fsync_dir(path.parent)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerUnavailableError(str(path), str(exc)) from None
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()
