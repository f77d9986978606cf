"""Soak: the real daemon at a 1-second cadence for a long run; memory, fds and threads stay flat.

Starts ``cpu-tracker run`` (5 samples 0.1 s apart, a release every second, a budget that does not
run out), reads its JSON log, and every 10 s records resident memory, open file descriptors and
threads from /proc. At the end it prints the least-squares slope of each (per hour) and checks
the schedule: a release closer than half an interval to the previous one is "doubled", a gap
longer than two intervals is "missed".

Usage: python benchmarks/soak.py [--minutes 30] [--every 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path


def proc_figures(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_mib = int(fields["VmRSS"].split()[0]) / 1024
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_mib, fds, threads


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600 if var else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--series", action="store_true", help="also print every sample")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cpu-tracker-soak-"))
    config = work / "soak.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{work / "data"}"\n'
        "[sampling]\nsamples = 5\ninterval_seconds = 0.1\n"
        f"[schedule]\nevery_seconds = {args.every}\n"
        "[budget]\nlifetime_epsilon = 1e9\nwindow_epsilon = 1e9\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    outcomes: dict[str, int] = {}
    released_at: list[float] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("event") == "cycle.finished":
                outcomes[event["outcome"]] = outcomes.get(event["outcome"], 0) + 1
                if event["outcome"] == "released":
                    released_at.append(
                        datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                    )

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    samples: list[tuple[float, float, int, int]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    while not released_at and proc.poll() is None:  # past start-up: imports and the first release
        time.sleep(0.2)
    time.sleep(5)
    while time.monotonic() < end and proc.poll() is None:
        rss, fds, threads = proc_figures(proc.pid)
        samples.append((time.monotonic() - started, rss, fds, threads))
        time.sleep(10)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    thread.join(timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(released_at)]
    doubled = sum(1 for g in gaps if g < args.every / 2)
    missed = sum(1 for g in gaps if g > 2 * args.every)
    first, last = samples[0], samples[-1]
    print(f"soak: {args.minutes:g} min at one release every {args.every:g} s; exit code {code}")
    print("| figure | first | last | slope per hour |")
    print("| --- | --- | --- | --- |")
    for index, name in ((1, "RSS MiB"), (2, "open fds"), (3, "threads")):
        slope = slope_per_hour([(s[0], float(s[index])) for s in samples])
        print(f"| {name} | {first[index]:.1f} | {last[index]:.1f} | {slope:+.3f} |")
    if args.series:
        print("\nseconds  RSS MiB  fds  threads")
        for t, rss, fds, threads in samples:
            print(f"{t:7.0f}  {rss:7.1f}  {fds:3d}  {threads:3d}")
    print(f"\ncycles by outcome: {outcomes}")
    print(
        f"releases: {len(released_at)}, gaps min/max {min(gaps):.2f}/{max(gaps):.2f} s; "
        f"doubled {doubled}, missed {missed}"
    )
    return 0 if code == 0 and doubled == 0 and missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
