"""The ledger file: its schema and append-only triggers, the migrations from older schemas, the
checks that a file is a sound ledger before anything in it is believed, and its creation."""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from cpu_tracker_daemon.budget.caps import Caps, worst_epsilon
from cpu_tracker_daemon.errors import LedgerCorruptError, LedgerUnavailableError
from cpu_tracker_daemon.storage import fsync_dir, make_dirs_durably, state_access_error

SCHEMA_VERSION = 6
READABLE_VERSIONS = ("1", "2", "3", "4", "5", "6")
APPLICATION_ID = 0x43505554  # "CPUT"
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

_APPEND_ONLY_BY_VERSION = {
    "1": ("spends", "outcomes", "grants", "meta"),
    "2": ("spends", "outcomes", "grants", "meta", "guarantees", "requests"),
    "3": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "4": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "5": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
    "6": ("spends", "outcomes", "grants", "meta", "guarantees", "requests", *sorted(_TABLES_3)),
}


def statements(script: str) -> list[str]:
    """Split a script of CREATE/ALTER statements (triggers included) into single statements."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.endswith("END;")):
            out.append(text)
            current = []
    return [statement for statement in out if statement.strip(";").strip()]


def counted_lifetime(conn: sqlite3.Connection) -> list[Any]:
    """Releases of each kind, counted over the whole history (the full recomputation)."""
    rows = conn.execute(
        "SELECT mechanism, epsilon, delta, COUNT(*) FROM spends GROUP BY mechanism, epsilon, delta "
        "ORDER BY mechanism, epsilon, delta"
    ).fetchall()
    return [tuple(row) for row in rows]


def counted_worst(conn: sqlite3.Connection) -> float:
    """The worst cases of every release summed over the whole history (the full recomputation)."""
    rows = conn.execute(
        "SELECT mechanism, NULL, NULL, COUNT(*), TOTAL(COALESCE(worst_epsilon, epsilon)), "
        "COUNT(worst_epsilon) FROM spends GROUP BY mechanism"
    ).fetchall()
    return worst_sum(rows)


def worst_sum(rows: list[Any]) -> float:
    """The worst cases summed, from rows of (mechanism, epsilon, delta, count, the worst cases
    recorded summed with the others' epsilons, how many recorded one): a secure window that
    recorded none has no bound (:func:`budget.worst_epsilon`)."""
    total = 0.0
    for mechanism, _, _, n, summed, recorded in rows:
        total += float(summed)  # a missing one counted at its epsilon,
        if int(recorded) < int(n):  # which is all a local release gives away; a secure one, none
            total += worst_epsilon(mechanism, 0.0, None)
    return total


def parse_counts(text: str) -> list[Any] | None:
    """The running counts as stored (a JSON list of [mechanism, epsilon, delta, count]), or None."""
    try:
        rows = [tuple(item) for item in json.loads(text)]
    except (ValueError, TypeError):
        return None
    ok = all(len(r) == 4 and isinstance(r[0], str) and isinstance(r[3], int) and r[3] > 0 for r in rows)
    return rows if ok else None


def check_file(path: Path) -> None:
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


def connect_verified(
    path: Path, *, readonly: bool, timeout: float, full: bool, copy_older: bool = False
) -> tuple[sqlite3.Connection, int]:
    """A connection to the ledger at ``path`` once the file and its content are verified, and the
    schema version it was found at. With ``copy_older``, a ledger at an older schema is copied
    into memory from the very snapshot that was verified, and the copy is returned instead: a
    read-only open migrates that copy (:func:`migrate`), never the file."""
    check_file(path)
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
    except sqlite3.Error as exc:
        raise LedgerUnavailableError(str(path), str(exc)) from None
    try:
        with snapshot(conn):  # one snapshot, while another process may be committing
            version = verify(conn, path, full)
            copy = _in_memory(conn) if copy_older and version < SCHEMA_VERSION else None
        if copy is not None:
            conn.close()
            conn = copy
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


def _in_memory(conn: sqlite3.Connection) -> sqlite3.Connection:
    """A copy of the database on ``conn`` in memory, page for page."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.backup(copy)
    except BaseException:
        copy.close()
        raise
    return copy


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every statement inside sees the same committed state."""
    conn.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")  # nothing was written: this only ends the snapshot


def verify(conn: sqlite3.Connection, path: Path, full: bool = True) -> int:
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
    if parse_counts(row[0]) != counted_lifetime(conn):
        raise LedgerCorruptError(
            str(path), "its running release counts disagree with its spends, so it cannot be trusted"
        )


def _check_worst(conn: sqlite3.Connection, path: Path) -> None:
    """The newest guarantee's running worst case must be what the spends' worst cases add up to."""
    row = conn.execute("SELECT lifetime_worst FROM guarantees ORDER BY rowid DESC LIMIT 1").fetchone()
    if row is None or row[0] is None:
        return  # no spend since the migration: there is nothing running to check
    if not math.isclose(float(row[0]), counted_worst(conn), rel_tol=1e-9, abs_tol=1e-9):
        raise LedgerCorruptError(
            str(path), "its running worst-case epsilon disagrees with its spends, so it cannot be trusted"
        )


@functools.cache
def _expected_triggers(version: str) -> dict[str, str]:
    """This version's append-only triggers, by name, whitespace normalised (worked out once)."""
    return {
        statement.split()[2]: " ".join(statement.rstrip(";").split())
        for statement in statements(_append_only(_APPEND_ONLY_BY_VERSION[version]))
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


def create(path: Path, caps: Caps, now: datetime) -> None:
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


def journal_size(path: Path) -> int:
    """The size of the ledger's rollback journal; 0 when there is none, including one that a
    committing writer deletes while this looks."""
    try:
        return path.with_name(path.name + "-journal").stat().st_size
    except FileNotFoundError:
        return 0


def migrate(conn: sqlite3.Connection, path: Path, now: datetime) -> None:
    """Schema 1, 2, 3, 4 or 5 to 6 in one transaction; a failure leaves the file as it was. A
    read-only open runs it on a copy in memory (:func:`connect_verified`), never on the file.

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
                for statement in statements(script):
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
