"""The privacy-budget ledger's queries: opening a ledger file, reserving spends against the caps,
recording what became of each release, grants and decisions, all on the current schema."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cpu_tracker_daemon.budget import schema
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
from cpu_tracker_daemon.storage import state_access_error

LOCK_TIMEOUT_SECONDS = 10.0  # how long an open waits for another process's lock on the ledger
# The most delta a cap may ever have, base and grants together: a chance of 1 in 10,000 that the
# epsilon does not hold is already more than most privacy engineers would sign for.
MAX_TOTAL_DELTA = 1e-4
# Two clocks that run at one rate still disagree by rounding and by small steps (NTP at boot):
# the boot clock's test frees a spend this much sooner than exact; the wall clock's is exact.
BOOT_SLACK_SECONDS = 1.0


class ReleaseStatus(StrEnum):
    """What became of a reserved release, as the ``outcomes`` table records it (the newest of a
    release's outcomes holds). A release with no outcome is reserved only: no noise was drawn."""

    DRAWN = "drawn"  # the noise is drawn and the noisy public record is in the outcome's payload
    PUBLISHED = "published"
    ABANDONED = "abandoned"  # never published; its spend stays counted
    SUPERSEDED = "superseded"  # a later release was published first, so this one never will be


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
    status: ReleaseStatus | None  # None: reserved only; DRAWN: the noisy record is in ``payload``
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
    """A verified connection to the ledger, at the current schema. Use :func:`open_ledger`.

    Every spend is recorded (:meth:`reserve`) in its own committed transaction, with every cap
    checked in it, before noise is drawn; the noisy record is recorded (:meth:`record`) before it
    is written anywhere, so a release interrupted after that is republished, never redrawn. The
    history is append-only, and caps only rise by a grant.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        version: int = schema.SCHEMA_VERSION,
        boot: BootClock = boot_clock,
    ) -> None:
        self.path = path
        self._conn = conn
        self.version = version  # the schema the file is at; the queries always see the current one
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
        with self._guard() as conn, schema.snapshot(conn):
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
        ):
            granted[cap] = [float(epsilon), float(delta)]
        window_hours = self._window_hours(conn, caps)
        window_seconds = window_hours * 3600.0
        if lifetime is None:
            lifetime = self._lifetime_counts(conn)
        if lifetime_worst is None:
            lifetime_worst = self._lifetime_worst(conn)
        # A spend is in the rolling period while the wall clock says so, or, within the boot it
        # was made in, while the time since boot says so: a clock set forward never empties the
        # period faster than real time. Per kind, also the worst cases summed and how many spends
        # recorded one: the window's worst case comes from the same rows as its counts.
        boot_id, boot_now = self._boot()
        end_ts, end_boot = (now_ts, boot_now) if at is None else at
        if end_boot is None:
            end_boot = boot_now + (end_ts - now_ts)
        window = conn.execute(
            "SELECT mechanism, epsilon, delta, COUNT(*), TOTAL(COALESCE(worst_epsilon, epsilon)), "
            "COUNT(worst_epsilon) FROM spends "
            "WHERE planned_ts > ? OR (boot_id = ? AND planned_boot_seconds > ?) "
            "GROUP BY mechanism, epsilon, delta",
            (end_ts - window_seconds, boot_id, end_boot - window_seconds + BOOT_SLACK_SECONDS),
        ).fetchall()
        (last_ts,) = conn.execute("SELECT MAX(reserved_ts) FROM spends").fetchone()  # by its index
        anchor = conn.execute("SELECT anchor_ts FROM cooldown WHERE id = 1").fetchone()

        def cap_status(name: str, epsilon: float, delta: float, rows: list[Any], worst: float) -> CapStatus:
            counts: dict[Event, int] = {}
            for mechanism, eps, spend_delta, n in rows:
                event = event_of(mechanism, eps, spend_delta)
                counts[event] = counts.get(event, 0) + int(n)
            base = min(epsilon, float(meta[f"base_{name}_epsilon"]))
            base_delta = min(delta, float(meta[f"base_{name}_delta"]))
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
        window_worst = schema.worst_sum(window)
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
        them, or, before the first spend that stored them (a migrated ledger), counted over the
        history."""
        row = conn.execute("SELECT counts FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None or row[0] is None:
            return schema.counted_lifetime(conn)
        running = schema.parse_counts(row[0])
        # Spends are append-only, so their largest rowid is how many there are: a cheap check
        # that the running counts cover every spend.
        (spends,) = conn.execute("SELECT MAX(rowid) FROM spends").fetchone()
        if running is None or sum(item[3] for item in running) != spends:
            raise LedgerCorruptError(
                str(self.path), "its running release counts do not cover its spends, so it cannot be trusted"
            )
        return running

    def _lifetime_worst(self, conn: sqlite3.Connection) -> float:
        """The worst cases of every release summed: from the newest guarantee, which carries the
        sum, or, before the first spend that stored it (a migrated ledger), summed over the
        history."""
        row = conn.execute("SELECT lifetime_worst FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None or row[0] is None:
            return schema.counted_worst(conn)
        return float(row[0])

    def _window_hours(self, conn: sqlite3.Connection, caps: Caps) -> float:
        """The rolling period: the configured one, or the longest ever recorded if that is longer.

        Shortening it in the config would free the spends of the part cut off, so it only grows.
        """
        (recorded,) = conn.execute("SELECT MAX(window_hours) FROM periods").fetchone()
        return caps.window_hours if recorded is None else max(caps.window_hours, float(recorded))

    def promise(self) -> Promise | None:
        """The promise the ledger's releases are accounted under (None before the first)."""
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
            if row is None:
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
        """When each window planned after ``after`` (a timestamp) was planned to start, oldest
        first: the times the rolling period counts (a spend migrated from before planned starts
        were recorded counts from when it was reserved)."""
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT planned_ts FROM spends WHERE planned_ts > ? ORDER BY planned_ts", (after,)
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
                        AND o.status = :drawn ORDER BY o.id DESC LIMIT 1) AS payload
                FROM spends s
                WHERE s.rowid > COALESCE((
                    SELECT sp.rowid FROM spends sp WHERE sp.release_id = (
                        SELECT o.release_id FROM outcomes o
                        WHERE o.status IN (:published, :abandoned, :superseded)
                        ORDER BY o.id DESC LIMIT 1)), 0)
                AND NOT EXISTS (
                    SELECT 1 FROM outcomes o WHERE o.release_id = s.release_id
                    AND o.status IN (:published, :abandoned, :superseded))
                ORDER BY s.rowid -- the order reserved; by rowid, so the range above is a search
                """,
                {status.name.lower(): status.value for status in ReleaseStatus},
            ).fetchall()
        result = []
        for release_id, reserved_ts, status, payload in rows:
            if status is None or status == ReleaseStatus.DRAWN:
                result.append(
                    Unfinished(
                        release_id,
                        None if status is None else ReleaseStatus(status),
                        json.loads(payload) if payload else None,
                        reserved_ts,
                    )
                )
        return result

    def published_after(self, reserved_ts: float) -> bool:
        """Whether a release reserved after ``reserved_ts`` has been published."""
        with self._guard() as conn:
            row = conn.execute(
                """SELECT 1 FROM spends s JOIN outcomes o ON o.release_id = s.release_id
                   WHERE s.reserved_ts > ? AND o.status = ? LIMIT 1""",
                (reserved_ts, ReleaseStatus.PUBLISHED.value),
            ).fetchone()
        return row is not None

    def grants(self) -> list[Grant]:
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT cap, epsilon, reason, granted_by, granted_at, delta FROM grants ORDER BY id"
            ).fetchall()
        return [Grant(*row) for row in rows]

    def decisions(self) -> dict[str, Decision]:
        """Every decided budget request, by id."""
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT request_id, requester, cap, epsilon, delta, reason, decision, note, decided_by, "
                "decided_at FROM requests ORDER BY decided_at"
            ).fetchall()
        return {row[0]: Decision(*row) for row in rows}

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
            if promise is not None:
                self._hold_promise(conn, promise, now)
                self._hold_period(conn, caps, now)
            lifetime = self._lifetime_counts(conn)
            lifetime_worst = self._lifetime_worst(conn)
            boot_id, boot_seconds = self._boot()
            planned_boot = boot_seconds if spend.planned_boot_seconds is None else spend.planned_boot_seconds
            before = self._status(conn, caps, now_ts, lifetime, (planned_ts, planned_boot), lifetime_worst)
            event = event_of(spend.mechanism, spend.epsilon, spend.delta)
            # A window that starts after now straddled a clock set back: it anchors at now, not in
            # the future, so the next release waits one interval, not one plus the size of the step.
            anchor_after = min(planned_ts, now_ts) if anchor is None else max(anchor, min(planned_ts, now_ts))
            after = before.plus(event, now_ts, anchor_after, worst)
            for cap, with_this in zip(before.caps, after.caps, strict=True):
                if not with_this.within_limit():
                    raise BudgetExhaustedError(cap.name, cap.spent, cap.limit, spend.epsilon)
            conn.execute(  # the worst case in the same row, so in the same transaction as the spend
                "INSERT INTO spends (release_id, reserved_ts, reserved_at, window_start, window_end, "
                "epsilon, delta, mechanism, unit, sensitivity, boot_id, boot_seconds, planned_ts, "
                "planned_boot_seconds, worst_epsilon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
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
                    boot_id,
                    boot_seconds,
                    planned_ts,
                    planned_boot,
                    spend.worst_epsilon,
                ),
            )
            conn.execute(  # the anchor read above, in this same transaction, moved as after says
                "INSERT INTO cooldown (id, anchor_ts) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET anchor_ts = excluded.anchor_ts",
                (anchor_after,),
            )
            counts = _plus_one(lifetime, (spend.mechanism, spend.epsilon, spend.delta))
            conn.execute(
                "INSERT INTO guarantees (release_id, lifetime_epsilon, lifetime_delta, method, counts, "
                "lifetime_worst) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    spend.release_id,
                    after.lifetime.spent,
                    after.lifetime.delta,
                    after.lifetime.method,
                    json.dumps(counts),
                    after.lifetime.worst_spent,
                ),
            )
            return after

    def _hold_promise(self, conn: sqlite3.Connection, promise: Promise, now: datetime) -> None:
        """Record ``promise`` with the ledger's first release under it; refuse any other."""
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
        self, release_id: str, status: ReleaseStatus, now: datetime, payload: dict[str, Any] | None = None
    ) -> None:
        """Append an outcome: DRAWN (with the noisy public record), PUBLISHED, ..."""
        text = json.dumps(payload, sort_keys=True) if payload is not None else None
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO outcomes (release_id, status, at, payload) VALUES (?, ?, ?, ?)",
                (release_id, ReleaseStatus(status).value, now.isoformat(), text),
            )

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
    migrated in one transaction when opened for writing; opened read-only (``create`` false), the
    file is never written: a copy of it in memory is migrated, and that copy refuses writes.

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
        schema.create(path, caps, now)
    # A crash in the middle of a commit leaves a hot journal, which only a read-write
    # connection may roll back (SQLite's own recovery of the last, uncommitted transaction);
    # a read-only open would fail with "attempt to write a readonly database" until a writer came.
    hot = not create and schema.journal_size(path) > 0 and os.access(path, os.W_OK)
    conn, version = schema.connect_verified(
        path, readonly=not create and not hot, timeout=timeout, full=full, copy_older=not create
    )
    if version < schema.SCHEMA_VERSION:
        schema.migrate(conn, path, now)  # the file, or a read-only open's copy of it in memory
        if create:
            version = schema.SCHEMA_VERSION
        else:  # a write to the copy fails as it would on a file opened read-only
            conn.execute("PRAGMA query_only = ON")
    return Ledger(path, conn, version, boot or boot_clock)
