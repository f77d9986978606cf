"""Accuracy against ground truth: the raw (private) mean beside /proc/stat, under a calibrated load.

For each load (a process keeping 0%, 25%, 50% or 100% of one core busy, by spinning for that
share of every 10 ms), this measures one sampling window three ways over the same machine:

* ground truth: the aggregate ``cpu`` line of /proc/stat read directly at the start and the end
  of the window (busy = total - idle - iowait);
* this daemon's sampling (``PsutilCpuSource`` + ``sample_window``, as a cycle does): the raw mean
  of the samples, which is what the private file holds;
* the original SyftBox member's way, in a fresh process: 50 ``psutil.cpu_percent()`` calls 0.1 s
  apart (the first returns a meaningless 0.0), against /proc/stat read inside that process.

Usage: python benchmarks/accuracy.py [--samples 50] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cpu_tracker_daemon.sampling import PsutilCpuSource, sample_window

LOADS = (0.0, 0.25, 0.5, 1.0)

ORIGINAL = r"""
import json, time, psutil
def stat():
    f = [int(x) for x in open('/proc/stat').readline().split()[1:]]
    total = sum(f[:8])  # guest time is already counted in user and nice
    return total, total - f[3] - f[4]
t0, b0 = stat()
values = []
while len(values) < 50:
    values.append(psutil.cpu_percent())
    time.sleep(0.1)
t1, b1 = stat()
print(json.dumps({"original": sum(values) / len(values), "truth": 100.0 * (b1 - b0) / (t1 - t0)}))
"""


def proc_stat() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    return total, total - fields[3] - fields[4]


def burn(fraction: float, stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    period = 0.01
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < fraction * period:
            pass
        rest = period - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)


def measure(fraction: float, samples: int, interval: float) -> dict[str, float]:
    stop = multiprocessing.Event()
    worker = None
    if fraction > 0:
        worker = multiprocessing.Process(target=burn, args=(fraction, stop), daemon=True)
        worker.start()
        time.sleep(1.0)  # let the load settle
    try:
        cpu = PsutilCpuSource()
        t0, b0 = proc_stat()
        window = sample_window(cpu, samples, interval, threading.Event(), lambda: datetime.now(UTC))
        t1, b1 = proc_stat()
        ours = sum(window.samples) / len(window.samples)  # readings are in percent
        truth = 100.0 * (b1 - b0) / (t1 - t0)
        original = subprocess.run(
            [sys.executable, "-c", ORIGINAL], capture_output=True, text=True, check=True, timeout=60
        )
        orig = json.loads(original.stdout)
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=5)
    return {
        "truth": truth,
        "ours": ours,
        "original": orig["original"],
        "original_truth": orig["truth"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    cores = multiprocessing.cpu_count()
    print(f"{cores} cores; window {args.samples} x {args.interval:g} s; load = share of one core\n")
    print(
        "| load | /proc/stat % | this daemon's raw mean % | error pp "
        "| original way % | its /proc/stat % | error pp |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for fraction in LOADS:
        r = measure(fraction, args.samples, args.interval)
        error = r["ours"] - r["truth"]
        worst = max(worst, abs(error))
        print(
            f"| {fraction:.0%} | {r['truth']:.2f} | {r['ours']:.2f} | {error:+.2f} | "
            f"{r['original']:.2f} | {r['original_truth']:.2f} | {r['original'] - r['original_truth']:+.2f} |"
        )
    print(f"\nworst error of this daemon's raw mean: {worst:.2f} percentage points (target: 0.5)")
    return 0 if worst <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
