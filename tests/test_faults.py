"""Faults on a real daemon: a full disk, a read-only output folder, and kill -9 rounds.

The disk is a small tmpfs mounted for the test (so it needs root); the outputs live on it,
through the SyftBox layout, while the ledger stays on the normal disk.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.bench import benchmark
from tests.conftest import RunningDaemon, cli_env, daemon_events, start_cli, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def released(event: dict[str, Any]) -> bool:
    return event.get("event") == "cycle.finished" and event.get("outcome") == "released"


def outcome(name: str) -> Any:
    return lambda e: e.get("event") == "cycle.finished" and e.get("outcome") == name


def member_config(tmp_path: Path, syftbox: Path) -> Path:
    return write_config(tmp_path, {"syftbox": {"dir": str(syftbox), "email": "me@example.org"}})


def public_file(syftbox: Path) -> Path:
    return syftbox / "datasites" / "me@example.org" / "app_data" / "cpu_tracker" / "cpu_tracker.json"


def test_disk_full_keeps_the_old_output_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    """With the output disk full a cycle fails cleanly, the last release stays whole, the daemon runs
    on, and once space returns the same noisy value is published (never redrawn)."""
    daemon = RunningDaemon(member_config(tmp_path, small_disk))
    try:
        daemon.wait_for(released)
        before = public_file(small_disk).read_text()
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
        daemon.wait_for(outcome("write_failed"))
        assert "No space left on device" in str(daemon.events)
        assert public_file(small_disk).read_text() == before  # intact, never half-written
        json.loads(before)
        filler.unlink()
        recovered = daemon.wait_for(lambda e: e.get("event") == "release.recovered")["release_id"]
        daemon.wait_for(released)
    finally:
        assert daemon.stop() == 0
    assert not list(small_disk.rglob("*.tmp"))
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as ledger:
        drawn = ledger.execute(
            "SELECT payload FROM outcomes WHERE release_id = ? AND status = 'drawn'", (recovered,)
        ).fetchall()
        statuses = [
            r[0] for r in ledger.execute("SELECT status FROM outcomes WHERE release_id = ?", (recovered,))
        ]
    assert len(drawn) == 1  # the noise was drawn once
    assert statuses[-1] == "published"


def test_read_only_outputs_then_writable_again(tmp_path: Path, small_disk: Path) -> None:
    """A read-only output filesystem is a clear write failure; the daemon resumes when it is writable."""
    daemon = RunningDaemon(member_config(tmp_path, small_disk))
    try:
        daemon.wait_for(released)
        before = public_file(small_disk).read_text()
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        daemon.wait_for(outcome("write_failed"))
        assert "Read-only file system" in str(daemon.events)
        assert public_file(small_disk).read_text() == before
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        daemon.wait_for(released)
    finally:
        assert daemon.stop() == 0


def test_kill_9_rounds(tmp_path: Path) -> None:
    """A few rounds of the kill -9 benchmark: every check in benchmarks/faults.py holds."""
    faults = benchmark("faults")
    result = faults.run(kills=5, seed=3, quiet=True)
    assert result["kills"] == 5
    assert result["spends"] >= result["visible_releases"]


def test_a_cycle_stalled_past_its_next_run_keeps_the_slot(tmp_path: Path) -> None:
    """SIGSTOP for 0.8 s inside a 0.5 s window at a 1 s cadence: the scheduler skips the run the
    stalled cycle overlapped, and the next window still starts as soon as that cycle is done,
    not a whole interval later at the next grid slot."""
    config = write_config(tmp_path, {"sampling": {"samples": 5, "interval_seconds": 0.1}})
    daemon = RunningDaemon(config)
    try:
        daemon.wait_for(released)
        daemon.wait_for(released)  # a window ends about 0.55 s into its second; the next starts at 1
        time.sleep(0.65)
        stopped_at = time.time()
        daemon.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.8)
        daemon.proc.send_signal(signal.SIGCONT)
        for _ in range(3):
            daemon.wait_for(released)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
        assert daemon.stop() == 0
    skips = [e for e in daemon.events if "maximum number of running instances" in str(e.get("event"))]
    assert skips, "the stall did not overlap a planned run"
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as ledger:
        rows = ledger.execute("SELECT window_start, window_end FROM spends ORDER BY reserved_ts").fetchall()
    windows = [
        (datetime.fromisoformat(a).timestamp(), datetime.fromisoformat(b).timestamp()) for a, b in rows
    ]
    stalled = next(i for i, (start, end) in enumerate(windows) if start <= stopped_at <= end)
    assert windows[stalled + 1][0] - windows[stalled][1] < 0.3, windows[stalled : stalled + 2]


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


class FaketimeDaemon:
    """``cpu-tracker run`` under libfaketime: writing ``offset`` ("+5h", "+0") steps its wall clock;
    its monotonic clock stays real. Log events are collected with the (real) time they arrived."""

    def __init__(self, tmp_path: Path, offset: str, overrides: dict[str, dict[str, Any]]) -> None:
        self.offset = tmp_path / "faketime"
        self.offset.write_text(f"{offset}\n")
        env = cli_env(
            LD_PRELOAD=str(FAKETIME),
            FAKETIME_TIMESTAMP_FILE=str(self.offset),
            FAKETIME_NO_CACHE="1",
            DONT_FAKE_MONOTONIC="1",  # the daemon checks the wall clock against the real monotonic one
        )
        self.proc = start_cli("--config", str(write_config(tmp_path, overrides)), "run", env=env)
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for event in daemon_events(self.proc):
            self.arrivals.append((time.monotonic(), event))

    def step(self, offset: str) -> float:
        """Step the wall clock; returns the real (monotonic) time of the step."""
        self.offset.write_text(f"{offset}\n")
        return time.monotonic()

    def wait_for_first_release(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.released() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        return code

    def released(self) -> list[float]:
        return [t for t, e in self.arrivals if e.get("outcome") == "released"]

    def jumps(self) -> list[float]:
        return [e["seconds"] for _, e in self.arrivals if e.get("event") == "clock.jumped"]


@pytest.mark.skipif(not FAKETIME.exists(), reason="Debian's faketime (libfaketime) is not installed")
def test_wall_clock_stepped_hours_forward_and_back(tmp_path: Path) -> None:
    """Under libfaketime the daemon's wall clock jumps 5 h forward, then back. No burst after the jump
    forward, no stall of hours after the jump back: releases stay about every_seconds apart in real time."""
    daemon = FaketimeDaemon(tmp_path, "+0", {"schedule": {"every_seconds": 2}})
    daemon.wait_for_first_release()
    daemon.step("+5h")
    time.sleep(7)
    stepped_back = daemon.step("+0")
    time.sleep(9)
    code = daemon.stop()
    released = daemon.released()
    assert daemon.jumps() == [18000.0, -18000.0]
    # No burst. Gaps are between log lines, so each carries its cycle's write latency (fsyncs on
    # this VM take up to 0.1 s each): a release less than half an interval after another is one.
    assert min(b - a for a, b in itertools.pairwise(released)) > 1.0, released
    assert len([t for t in released if t > stepped_back]) >= 2  # no stall
    assert code == 0


SYSCALLS = "fsync,fdatasync,unlink,unlinkat,rename,renameat,renameat2"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_every_durability_edge_of_a_release_holds(tmp_path: Path) -> None:
    """ALICE-style, from the real syscalls of one `once` (strace -f -y): the commit that makes
    the noisy value durable (the journal unlinked) is followed by an fsync of the ledger's
    directory before any output is renamed into place (synchronous=EXTRA; FULL left the unlink
    to the file system's ordering), each output's rename is followed by an fsync of its
    directory, and both happen before the ledger records the release published."""
    config = write_config(tmp_path, {"schedule": {"every_seconds": 3600}})
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-y", "-o", str(trace), "-e", f"trace={SYSCALLS}",
         sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), "once"],
        check=True, env=cli_env(), capture_output=True, timeout=120,
    )  # fmt: skip
    data = str(tmp_path / "data")
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if " = 0" in line]
    journal_unlinks = [
        i for i, c in enumerate(calls) if c.startswith("unlink") and "ledger.sqlite3-journal" in c
    ]

    def synced(directory: str, after: int, before: int) -> bool:
        return any(
            re.match(rf"f(data)?sync\(\d+<{re.escape(directory)}>\)", c) for c in calls[after + 1 : before]
        )

    for name in ("private", "public"):

        def is_output(call: str, directory: str = f"{data}/{name}") -> bool:  # rename or renameat
            return call.startswith("rename") and (
                f"{directory}/cpu_tracker.json" in call or f'<{directory}>, "cpu_tracker.json"' in call
            )

        renamed = next(i for i, c in enumerate(calls) if is_output(c))
        commit = max(i for i in journal_unlinks if i < renamed)
        assert synced(data, commit, renamed), f"the ledger's commit is not durable before {name} is written"
        next_commit = min(i for i in journal_unlinks if i > renamed)
        assert synced(f"{data}/{name}", renamed, next_commit), (
            f"{name}'s rename is not durable before it is recorded"
        )


def test_a_full_ledger_disk_says_so(small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the ledger's file system full, a release failed with "cannot rollback - no
    transaction is active", which hid the cause. It is refused (exit 8) naming the full disk,
    and the spend that did not fit was not recorded."""
    from cpu_tracker_daemon.cli.main import main

    config = str(write_config(small_disk.parent, {"paths": {"data_dir": str(small_disk / "data")}}))
    assert main(["--config", config, "once"]) == 0
    ballast = small_disk / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb") as fill:
        while True:
            fill.write(b"\0" * 4096)
            fill.flush()
    capsys.readouterr()
    assert main(["--config", config, "once", "--force"]) == 8
    err = capsys.readouterr().err
    assert "full" in err, err
    assert "cannot rollback" not in err
    ballast.unlink()
    with contextlib.closing(sqlite3.connect(small_disk / "data" / "ledger.sqlite3")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM spends").fetchone() == (1,)
