"""Time one aggregation pass over synthetic SyftBox trees of growing size (up to 100,000 peers).

Each peer gets a valid member release (the member's own record format, ``records.public_record``,
schema 2 with discrete Laplace noise at the defaults) and one peer in a thousand a hostile file;
every file was last written ten minutes ago, as a tree between two rounds of releases is. For
each size the script prints the wall time of one full pass (read, validate, estimate, write
aggregate, history, dashboard), the time per peer, and the same for a minimal loop that only
opens and reads every release (``cat``-like), each in a fresh interpreter: its CPU time
(user + system) and the ratio of the pass's CPU to the loop's, so what the pass adds to reading
the files shows. Each is run three times, alternately, and the run with the least CPU is shown.
The pass's interpreter also reports its peak resident memory (VmHWM) beside that of one pass
over an empty tree: the difference, per peer, is what the pass keeps a peer.

Usage: python benchmarks/aggregate_scale.py [--sizes 1000,10000,100000] [--dir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cpu_tracker_daemon.config import SamplingConfig
from cpu_tracker_daemon.network.peers import release_path
from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.mechanisms import Noisy, PrivacyConfig, calibrate
from cpu_tracker_daemon.records import public_record

WRITTEN_AGO = 600.0  # seconds since every file was last written
REPEATS = 3  # runs of the pass and of the loop, each in a fresh interpreter: the least CPU of each


def build_tree(root: Path, peers: int, rng: random.Random) -> Path:
    datasites = root / "SyftBox" / "datasites"
    now = datetime.now(UTC)
    sampling = SamplingConfig()
    calibration = calibrate(PrivacyConfig(epsilon=0.5), sampling.samples)
    q = math.exp(-1 / calibration.noise_param)  # discrete Laplace: the difference of two geometrics
    written = time.time() - WRITTEN_AGO
    for n in range(peers):
        peer = f"peer{n:06d}@example.org"
        path = release_path(datasites, peer)
        path.parent.mkdir(parents=True)
        if n % 1000 == 999:
            path.write_bytes(b'{"cpu": NaN, "schema": "cpu-tracker/release"}')
        else:
            true = round(min(max(rng.gauss(40, 20), 0), 100) * discrete.UNITS_PER_POINT)
            noise = int(math.log(1 - rng.random()) / math.log(q)) - int(
                math.log(1 - rng.random()) / math.log(q)
            )
            units = true + noise
            start = now - timedelta(minutes=rng.randint(1, 50))
            end = start + timedelta(seconds=sampling.window_seconds)
            noisy = Noisy(cpu=discrete.to_percent(units), units=units)
            record = public_record(f"{n:032x}", noisy, start, end, sampling, calibration)
            path.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.utime(path, (written, written))
    return root / "SyftBox"


_READ_ONLY = """
import json, os, sys, time
from pathlib import Path
from cpu_tracker_daemon.network.peers import release_path
datasites = Path(sys.argv[1])
cpu, wall = time.process_time(), time.perf_counter()
for entry in os.scandir(datasites):
    try:
        with open(release_path(datasites, entry.name), "rb") as handle:
            handle.read()
    except OSError:
        pass
print(json.dumps({"cpu": time.process_time() - cpu, "seconds": time.perf_counter() - wall}))
"""


def read_only_in_child(datasites: Path) -> dict[str, float]:
    """The floor, in a fresh interpreter: open and read every release file, nothing else."""
    out = subprocess.run(
        [sys.executable, "-c", _READ_ONLY, str(datasites)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


_CHILD = """
import json, sys, time
from pathlib import Path
from cpu_tracker_daemon.network.aggregate import Aggregator
from cpu_tracker_daemon.config import parse_config
class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None
sb, state, profile = sys.argv[1], sys.argv[2], sys.argv[3] == "profile"
syftbox = {"dir": sb, "email": "aggregator@openmined.org"}
config = parse_config({"paths": {"data_dir": state}, "syftbox": syftbox, "aggregator": {"enabled": True}})
aggregator = Aggregator(config, Quiet())
if profile:
    import cProfile, pstats
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(aggregator.run_pass)
    pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(15)
    sys.exit(0)
cpu, started = time.process_time(), time.perf_counter()
result = aggregator.run_pass()
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
est = result.estimate
print(json.dumps({"seconds": elapsed, "cpu": cpu, "hwm_kib": hwm, "skipped": dict(result.skipped),
                  "estimate": None if est is None else [est.mean, est.ci_low, est.ci_high]}))
"""


def pass_in_child(sb: Path, state: Path, profile: bool = False) -> dict[str, object]:
    """One pass in a fresh interpreter: its time, its CPU time and its peak resident memory
    (with ``profile``, its cProfile table by own CPU time instead, as ``profile``)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(sb), str(state), "profile" if profile else "-"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return {"profile": out.stdout} if profile else dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dir", help="where to build the trees (default: a temporary directory)")
    parser.add_argument("--profile", action="store_true", help="a cProfile table of each pass (by own time)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cpu-tracker-scale-"))
    rng = random.Random(1)
    empty = base / "empty"
    (empty / "SyftBox" / "datasites").mkdir(parents=True)
    floor = pass_in_child(empty / "SyftBox", empty / "state")
    print(f"one pass over an empty tree: peak RSS {int(floor['hwm_kib']) / 1024:.1f} MiB")
    print()
    print(
        "| peers | build s | read-only s (CPU) | pass s (CPU) | pass CPU / read-only CPU | pass us/peer "
        "| peak RSS MiB | KiB/peer | estimate (95% CI) | skipped |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for size in sizes:
            root = base / str(size)
            started = time.perf_counter()
            sb = build_tree(root, size, rng)
            built = time.perf_counter() - started
            os.sync()
            pass_in_child(sb, root / "warm")  # the files in the page cache, and Python's .pyc
            readings, passes = [], []
            for n in range(REPEATS):  # alternately, so that other load weighs on both alike
                readings.append(read_only_in_child(sb / "datasites"))
                passes.append(pass_in_child(sb, root / f"state{n}"))
            reading = min(readings, key=lambda r: r["cpu"])
            got = min(passes, key=lambda r: float(r["cpu"]))  # type: ignore[arg-type]
            profiled = pass_in_child(sb, root / "profiled", profile=True) if args.profile else {}
            elapsed, cpu = float(got["seconds"]), float(got["cpu"])  # type: ignore[arg-type]
            hwm = int(got["hwm_kib"])  # type: ignore[call-overload]
            mean, low, high = got["estimate"]  # type: ignore[misc]
            per_peer = (hwm - int(floor["hwm_kib"])) / size  # type: ignore[call-overload]
            print(
                f"| {size} | {built:.1f} | {reading['seconds']:.2f} ({reading['cpu']:.2f}) "
                f"| {elapsed:.2f} ({cpu:.2f}) | {cpu / reading['cpu']:.2f} | {elapsed / size * 1e6:.0f} "
                f"| {hwm / 1024:.1f} | {per_peer:.3f} | {mean:.2f} ({low:.2f} to {high:.2f}) "
                f"| {got['skipped']} |",
                flush=True,
            )
            if profiled:
                print(f"\nprofile of the pass at {size} peers:\n{profiled['profile']}")
            shutil.rmtree(root)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
