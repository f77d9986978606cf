"""Measure the daemon: CPU seconds and peak RSS over many cycles, stop latency, CLI start-up.

    python benchmarks/daemon_overhead.py [--cycles 60] [--every 1.5] [--samples 50] [--interval 0.02]

Runs the real ``cpu-tracker run`` in a temporary directory with a fast schedule, counts the
cycles it logs, and reads its CPU time and peak resident memory (VmHWM) from /proc before
stopping it. Prints a table; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import wait_for_event, write_config

CLI = [sys.executable, "-m", "cpu_tracker_daemon"]


def bench_config(root: Path, every: float, samples: int, interval: float) -> Path:
    return write_config(root / "bench.toml", root / "data", samples=samples, interval=interval, every=every)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cycles_run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    config = bench_config(root, args.every, args.samples, args.interval)
    proc = subprocess.Popen([*CLI, "--config", str(config), "run"], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    wait_for_event(proc, "daemon.started")
    startup = ps.cpu_times()
    startup_cpu = startup.user + startup.system
    started = time.monotonic()
    wait_for_event(proc, "cycle.finished", args.cycles)
    elapsed = time.monotonic() - started
    end = ps.cpu_times()
    total_cpu = end.user + end.system
    rss_now = ps.memory_info().rss / 2**20
    peak = peak_rss_mib(proc.pid)
    threads = ps.num_threads()
    fds = ps.num_fds()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    per_cycle = (total_cpu - startup_cpu) / args.cycles
    return {
        "cycles": args.cycles,
        "wall_seconds": elapsed,
        "startup_cpu_s": startup_cpu,
        "cpu_s_per_cycle": per_cycle,
        "rss_mib": rss_now,
        "peak_rss_mib": peak,
        "threads": threads,
        "open_fds": fds,
        "exit_code": proc.returncode,
    }


def stop_latency(root: Path, trials: int = 3) -> list[float]:
    """SIGTERM in the middle of a 50 s sampling window: seconds until the process exits."""
    config = bench_config(root / "stop", 60, 50, 1.0)
    latencies = []
    for _ in range(trials):
        proc = subprocess.Popen([*CLI, "--config", str(config), "run"], stdout=subprocess.PIPE, text=True)
        wait_for_event(proc, "daemon.started")
        time.sleep(3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        latencies.append(time.monotonic() - sent)
    return latencies


def wall(cmd: list[str], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(cmd, capture_output=True, check=False)
        best = min(best, time.monotonic() - t)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--every", type=float, default=1.5)
    parser.add_argument("--samples", type=int, default=50, help="the default config's sample count")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--quick", action="store_true", help="few cycles, one stop trial (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.cycles = 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "stop").mkdir()
        run = cycles_run(args, root)
        latencies = stop_latency(root, 1 if args.quick else 3)
        config = bench_config(root, 3600, 50, 1.0)
        timings = {
            "python -c pass": wall([sys.executable, "-c", "pass"]),
            "cpu-tracker --help": wall([*CLI, "--help"]),
            "cpu-tracker status": wall([*CLI, "--config", str(config), "status"]),
        }
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(
        f"daemon run: {run['cycles']} cycles of {args.samples} samples x {args.interval}s, "
        f"every {args.every}s"
    )
    rows = [
        ("CPU seconds at start-up (imports, ledger check)", f"{run['startup_cpu_s']:.2f}"),
        (
            f"CPU seconds per cycle ({args.samples} samples, ledger, noise, 2 files)",
            f"{run['cpu_s_per_cycle']:.4f}",
        ),
        ("resident memory after the run (MiB)", f"{run['rss_mib']:.1f}"),
        ("peak resident memory, VmHWM (MiB)", f"{run['peak_rss_mib']:.1f}"),
        ("threads / open fds after the run", f"{run['threads']} / {run['open_fds']}"),
        ("exit code after SIGTERM", str(run["exit_code"])),
        ("SIGTERM mid-window to exit (s)", ", ".join(f"{x:.2f}" for x in latencies)),
    ]
    rows += [(f"wall time: {k} (best of 5, s)", f"{v:.3f}") for k, v in timings.items()]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
