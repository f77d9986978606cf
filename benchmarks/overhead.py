"""Overhead side by side, in one run: this daemon, the original's approach, and node_exporter.

For each, at the default schedule (one release or scrape an hour), the CPU seconds per release
and per hour, and the resident memory while it runs:

* this daemon: per-release CPU from cycles of 50 samples, plus the idle cost of the long-running
  process between releases (measured with nothing due); and again with ``privacy.mechanism =
  "snapping"``, whose noise each release draws in a child process that imports diffprivlib
  (the children's CPU counted in the release's);
* the original SyftBox member's approach (``original_member.py``): a fresh Python process per
  release that imports diffprivlib, driven by a shell loop;
* Debian's ``prometheus-node-exporter`` with its default collectors, scraped at the same cadence
  (skipped where it is not installed).

Then what diffprivlib's scientific stack costs in resident memory, import by import (the
commands' wall time is ``ledger_scale.py``'s, at three ledger sizes).

Usage: python benchmarks/overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import wait_for_event, write_config

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "cpu_tracker_daemon"]
HOUR = 3600.0


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in nanoseconds from schedstat (clock ticks are too coarse
    for an idle daemon); threads that already ended are not counted, which only matters for bursts."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_cpu_seconds(pid: int) -> float:
    """CPU time of the process's children that have exited and been waited for (/proc/PID/stat's
    cutime and cstime, in clock ticks): a Snapping daemon's noise children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def daemon_config(root: Path, every: float, samples: int, interval: float, extra: str = "") -> Path:
    return write_config(
        root / "bench.toml", root / "data", samples=samples, interval=interval, every=every, extra=extra
    )


def this_daemon(root: Path, cycles: int, idle_seconds: float, extra: str = "") -> dict[str, float]:
    """Per-release CPU (the daemon's threads and any children it waited for), RSS after the
    releases, and (with ``idle_seconds``) the idle cost between releases."""
    config = daemon_config(root / "busy", every=1.5, samples=50, interval=0.02, extra=extra)
    proc = subprocess.Popen([*CLI, "--config", str(config), "run"], stdout=subprocess.PIPE, text=True)
    wait_for_event(proc, "cycle.finished", 2)
    c0 = cpu_seconds(proc.pid) + children_cpu_seconds(proc.pid)
    wait_for_event(proc, "cycle.finished", cycles)
    per_release = (cpu_seconds(proc.pid) + children_cpu_seconds(proc.pid) - c0) / cycles
    rss = rss_mib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    idle_per_hour = 0.0
    if idle_seconds:
        # Idle: one release at start, then nothing due for a day; measure between.
        config = daemon_config(root / "idle", every=86_400, samples=5, interval=0.02)
        proc = subprocess.Popen([*CLI, "--config", str(config), "run"], stdout=subprocess.PIPE, text=True)
        wait_for_event(proc, "cycle.finished")
        c0 = cpu_seconds(proc.pid)
        time.sleep(idle_seconds)
        idle_per_hour = (cpu_seconds(proc.pid) - c0) / idle_seconds * HOUR
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    return {
        "per_release": per_release,
        "per_hour": per_release + idle_per_hour,
        "rss": rss,
        "idle": idle_per_hour,
    }


def original(root: Path, runs: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    script = f'for i in $(seq {runs}); do "{sys.executable}" "{HERE / "original_member.py"}" "{root}"; done'
    subprocess.run(["bash", "-c", script], check=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_release = cpu / runs
    return {"per_release": per_release, "per_hour": per_release, "rss": after.ru_maxrss / 1024, "idle": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_exporter(scrapes: int, gap: float) -> dict[str, float] | None:
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        return None
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)
        window = scrapes * gap
        c0 = cpu_seconds(proc.pid)
        time.sleep(window)
        idle_per_hour = (cpu_seconds(proc.pid) - c0) / window * HOUR
        c0 = cpu_seconds(proc.pid)
        started = time.monotonic()
        for _ in range(scrapes):
            urllib.request.urlopen(url, timeout=10).read()
            time.sleep(gap)
        busy = cpu_seconds(proc.pid) - c0
        per_scrape = max(busy - idle_per_hour / HOUR * (time.monotonic() - started), 0.0) / scrapes
        return {
            "per_release": per_scrape,
            "per_hour": per_scrape + idle_per_hour,
            "rss": rss_mib(proc.pid),
            "idle": idle_per_hour,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


IMPORT_STEPS = ("numpy", "scipy.stats", "sklearn", "diffprivlib", "cpu_tracker_daemon.daemon.loop")


def import_costs() -> list[tuple[str, float]]:
    code = (
        "import importlib, json, sys\n"
        "def rss():\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0]\n"
        "    return int(line.split()[1]) / 1024\n"
        "out = [('python', rss())]\n"
        f"for name in {list(IMPORT_STEPS)!r}:\n"
        "    importlib.import_module(name); out.append((name, rss()))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [(name, float(value)) for name, value in json.loads(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer cycles and runs (CI)")
    parser.add_argument("--cycles", type=int, help="the daemon's measured releases (default 30, quick 5)")
    args = parser.parse_args(argv)
    cycles, idle, runs, scrapes = (5, 20.0, 2, 3) if args.quick else (30, 120.0, 5, 10)
    cycles = args.cycles or cycles
    root = Path(tempfile.mkdtemp(prefix="cpu-tracker-overhead-"))
    try:
        rows = {
            "cpu-tracker daemon": this_daemon(root, cycles, idle),
            # Snapping draws each release's noise in a child that imports diffprivlib; the daemon
            # idles as the default one does.
            "cpu-tracker daemon, privacy.mechanism = snapping": this_daemon(
                root / "snapping", max(2, cycles // 3), 0.0, '[privacy]\nmechanism = "snapping"\n'
            ),
            "original approach (fresh process per release)": original(root / "original", runs),
        }
        exporter = node_exporter(scrapes, 2.0)
        if exporter is not None:
            rows["prometheus-node-exporter (scraped hourly)"] = exporter
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = rows["cpu-tracker daemon"]
    print("At the default schedule: one release (or scrape) an hour.\n")
    print("| process | CPU s per release | CPU s per hour | of which idle | RSS MiB | CPU per hour vs ours |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['per_release']:.3f} | {r['per_hour']:.3f} | {r['idle']:.3f} | {r['rss']:.1f} | "
            f"{r['per_hour'] / ours['per_hour']:.1f}x |"
        )
    shutil.rmtree(root, ignore_errors=True)
    print("\n| after importing | RSS MiB | added |\n| --- | --- | --- |")
    previous = None
    for name, value in import_costs():
        print(f"| {name} | {value:.1f} | {'' if previous is None else f'{value - previous:+.1f}'} |")
        previous = value
    return 0


if __name__ == "__main__":
    sys.exit(main())
