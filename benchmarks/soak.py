"""Soak: the real daemon at a 1-second cadence for a long run; memory, fds and threads stay flat.

Starts ``cpu-tracker run`` (5 samples 0.1 s apart, a release every second, a budget that does not
run out), reads its JSON log, and every 10 s records resident memory, open file descriptors and
threads from /proc, and the machine's steal and iowait shares from /proc/stat. At the end it
prints the least-squares slope of each (per hour) and checks the schedule from the windows'
start times in the ledger: a window that starts less than half an interval after the previous
one is "doubled"; a gap of about k intervals (k >= 2, rounded, less any time --stall held the
daemon stopped) means k - 1 "missed" slots. Each missed slot is listed with what might explain
it: a cycle that ran longer than an interval (the scheduler skips a run while one is going), a
cycle refused for cooldown, or the machine's steal and iowait around it.

Usage: python benchmarks/soak.py [--minutes 30] [--every 1] [--stall] [--series]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from common import log_events, write_config

from cpu_tracker_daemon.errors import Outcome


def proc_figures(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_mib = int(fields["VmRSS"].split()[0]) / 1024
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_mib, fds, threads


def cpu_shares() -> tuple[float, float, float]:
    """Cumulative total, steal and iowait ticks of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return float(sum(fields[:8])), float(fields[7]), float(fields[4])


def window_starts(ledger: Path) -> list[float]:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT window_start FROM spends ORDER BY reserved_ts").fetchall()
    finally:
        conn.close()
    return [datetime.fromisoformat(r[0]).timestamp() for r in rows]


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600 if var else 0.0


@dataclass
class Log:
    """What the daemon's JSON log said (copied to daemon.log): each cycle's end, outcome and
    duration, and the scheduler's skips."""

    cycles: list[tuple[float, str, float]] = field(default_factory=list)
    scheduler_skips: list[float] = field(default_factory=list)

    def read(self, stream: IO[str], copy: Path) -> None:
        with copy.open("w") as out:
            for line in stream:
                out.write(line)
                self.take(line)

    def take(self, line: str) -> None:
        for event in log_events([line]):
            self.take_event(event)

    def take_event(self, event: dict[str, Any]) -> None:
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        name = str(event.get("event"))
        if name == "cycle.finished":
            self.cycles.append((at, event["outcome"], event["duration_seconds"]))
        elif "skipped" in name or "missed by" in name:  # APScheduler's own warnings
            self.scheduler_skips.append(at)

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, outcome, _ in self.cycles:
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts


def start_daemon(work: Path, every: float) -> subprocess.Popen[str]:
    config = work / "soak.toml"
    write_config(config, work / "data", samples=5, interval=0.1, every=every)
    with (work / "stderr.log").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def explain(
    late: list[tuple[float, float]], log: Log, machine: list[tuple[float, float, float]], every: float
) -> None:
    """One line per late window: the cycles that ended around it, scheduler skips, steal, iowait."""
    for start, delay in late[:40]:
        span = (start, start + every + delay + 1)
        cycles = [(o, round(d, 3)) for at, o, d in log.cycles if span[0] < at <= span[1]]
        skips = sum(1 for at in log.scheduler_skips if span[0] < at <= span[1])
        around = [m for m in machine if start - 10 <= m[0] <= start + 20]
        print(
            f"  {delay:.3f} s late after the window at {datetime.fromtimestamp(start, UTC):%H:%M:%S.%f}: "
            f"cycles {cycles}, scheduler skips {skips}, "
            f"steal {max((m[1] for m in around), default=0):.1%}, "
            f"iowait {max((m[2] for m in around), default=0):.1%}"
        )


def stall(pid: int, stop: threading.Event, stopped: list[tuple[float, float]]) -> None:
    """Stop the daemon now and then, as a paused VM or a starved CPU would; note when."""
    rng = random.Random(11)
    while not stop.wait(rng.uniform(5.0, 15.0)):
        began = time.time()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(rng.uniform(0.2, 0.6))
        os.kill(pid, signal.SIGCONT)
        stopped.append((began, time.time()))


def schedule_faults(
    starts: list[float], every: float, stopped: list[tuple[float, float]]
) -> tuple[list[tuple[float, float]], list[tuple[float, int]]]:
    """Windows that started late, and slots missed, each keyed by the window before them.

    Late: more than a tenth of an interval after the cooldown allowed (the previous start plus
    an interval). Missed: the gap had room for another whole window. Time the soak itself held
    the daemon stopped is taken off first: a stall delays a window, and that is not the daemon's.
    """
    late, missed = [], []
    for a, b in itertools.pairwise(starts):
        held = sum(max(0.0, min(b, e) - max(a, s)) for s, e in stopped)
        delay = b - (a + every) - held
        if delay > every / 10:
            late.append((a, delay))
        k = int((b - a - held) / every) - 1
        if k > 0:
            missed.append((a, k))
    return late, missed


def print_figures(samples: list[tuple[float, float, int, int]], series: bool) -> None:
    first, last = samples[0], samples[-1]
    print("| figure | first | last | slope per hour |")
    print("| --- | --- | --- | --- |")
    for index, name in ((1, "RSS MiB"), (2, "open fds"), (3, "threads")):
        slope = slope_per_hour([(s[0], float(s[index])) for s in samples])
        print(f"| {name} | {first[index]:.1f} | {last[index]:.1f} | {slope:+.3f} |")
    if series:
        print("\nseconds  RSS MiB  fds  threads")
        for t, rss, fds, threads in samples:
            print(f"{t:7.0f}  {rss:7.1f}  {fds:3d}  {threads:3d}")


def print_schedule(
    starts: list[float],
    log: Log,
    machine: list[tuple[float, float, float]],
    stopped: list[tuple[float, float]],
    every: float,
) -> tuple[int, int]:
    """Print the schedule's figures and each missed slot; return (doubled, missed)."""
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    doubled = sum(1 for g in gaps if g < every / 2)
    late, missed_at = schedule_faults(starts, every, stopped)
    missed = sum(k for _, k in missed_at)
    durations = sorted(d for _, outcome, d in log.cycles if outcome == Outcome.RELEASED)
    steal = sorted(m[1] for m in machine)
    print(f"\ncycles by outcome: {log.outcomes()}; scheduler skips: {len(log.scheduler_skips)}")
    print(
        f"releases: {len(starts)}, window-start gaps {min(gaps):.3f}-{max(gaps):.3f} s; cycle duration "
        f"median {durations[len(durations) // 2]:.3f} s, max {durations[-1]:.3f} s; "
        f"machine steal median {steal[len(steal) // 2]:.1%}, max {steal[-1]:.1%}"
    )
    if stopped:
        print(f"held stopped {len(stopped)} times, {sum(e - s for s, e in stopped):.1f} s in all")
    print(
        f"doubled {doubled}, missed {missed}, late {len(late)} "
        f"(mean gap {(starts[-1] - starts[0]) / (len(starts) - 1):.4f} s)"
    )
    explain(late, log, machine, every)
    return doubled, missed + len(late)


@dataclass
class Soak:
    """What one soak saw: the daemon's exit code, its /proc figures, the windows' starts in the
    ledger, its log, the machine's steal and iowait, and when --stall held it stopped."""

    every: float
    code: int
    samples: list[tuple[float, float, int, int]]
    starts: list[float]
    log: Log
    machine: list[tuple[float, float, float]]
    stopped: list[tuple[float, float]]

    def doubled(self) -> int:
        """Windows that started less than half an interval after the one before: the cooldown
        forbids it, however loaded the machine (the suite checks this)."""
        return sum(1 for a, b in itertools.pairwise(self.starts) if b - a < self.every / 2)


def soak(minutes: float, every: float = 1.0, stall_now_and_then: bool = False) -> Soak:
    """Run the daemon for ``minutes`` at one release every ``every`` seconds, then stop it."""
    work = Path(tempfile.mkdtemp(prefix="cpu-tracker-soak-"))
    proc = start_daemon(work, every)
    log = Log()
    assert proc.stdout is not None
    thread = threading.Thread(target=log.read, args=(proc.stdout, work / "daemon.log"), daemon=True)
    thread.start()
    samples: list[tuple[float, float, int, int]] = []
    machine: list[tuple[float, float, float]] = []  # wall time, steal share, iowait share
    started = time.monotonic()
    end = started + minutes * 60
    while not log.cycles and proc.poll() is None:  # past start-up: imports and the first release
        time.sleep(0.2)
    time.sleep(5)
    stalls, stopped = threading.Event(), []
    if stall_now_and_then:
        threading.Thread(target=stall, args=(proc.pid, stalls, stopped), daemon=True).start()
    before = cpu_shares()
    while time.monotonic() < end and proc.poll() is None:
        rss, fds, threads = proc_figures(proc.pid)
        samples.append((time.monotonic() - started, rss, fds, threads))
        time.sleep(10)
        after = cpu_shares()
        ticks = max(after[0] - before[0], 1.0)
        machine.append((time.time(), (after[1] - before[1]) / ticks, (after[2] - before[2]) / ticks))
        before = after
    stalls.set()
    time.sleep(1)  # past a stall in progress
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    thread.join(timeout=5)
    proc.stdout.close()  # the reader has seen the end of the log
    starts = window_starts(work / "data" / "ledger.sqlite3")
    return Soak(every, code, samples, starts, log, machine, stopped)


def main(argv: list[str] | None = None) -> int:
    """Run a soak and judge it: a clean exit, no window doubled, and (the timing part, which a
    loaded machine can spoil and so only a benchmark judges) none late and no slot missed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--series", action="store_true", help="also print every sample")
    parser.add_argument("--stall", action="store_true", help="SIGSTOP the daemon for 0.2-0.6 s every 5-15 s")
    args = parser.parse_args(argv)
    seen = soak(args.minutes, args.every, args.stall)
    print(f"soak: {args.minutes:g} min at one release every {args.every:g} s; exit code {seen.code}")
    print_figures(seen.samples, args.series)
    doubled, missed = print_schedule(seen.starts, seen.log, seen.machine, seen.stopped, args.every)
    return 0 if seen.code == 0 and doubled == 0 and missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
