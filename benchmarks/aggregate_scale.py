"""Time one aggregation pass over synthetic SyftBox trees of growing size (up to 100,000 peers).

Each peer gets a valid member release (the member's own record format, with Laplace noise) and
one peer in a thousand a hostile file. For each size the script prints the wall time of one full
pass (read, validate, estimate, write aggregate, history, dashboard), the time per peer, and the
time just to read the files (``cat``-like), so linear growth bounded by file reading shows up.
Each pass runs in a fresh interpreter, which reports its peak resident memory (VmHWM) beside
that of one pass over an empty tree: the difference, per peer, is what the pass keeps a peer.

Usage: python benchmarks/aggregate_scale.py [--sizes 1000,10000,100000] [--dir DIR]
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

from cpu_tracker_daemon.peers import release_path


def build_tree(root: Path, peers: int, rng: random.Random) -> Path:
    datasites = root / "SyftBox" / "datasites"
    now = datetime.now(UTC)
    for n in range(peers):
        peer = f"peer{n:06d}@example.org"
        path = release_path(datasites, peer)
        path.parent.mkdir(parents=True)
        if n % 1000 == 999:
            path.write_bytes(b'{"cpu": NaN, "schema": "cpu-tracker/release"}')
            continue
        true = min(max(rng.gauss(40, 20), 0), 100)
        b = 200.0
        noise = -b * math.copysign(1, rng.random() - 0.5) * math.log(1 - 2 * abs(rng.random() - 0.5))
        record = {
            "schema": "cpu-tracker/release",
            "schema_version": 1,
            "release_id": f"{n:032x}",
            "cpu": true + noise,
            "cpu_clamped": min(max(true + noise, 0), 100),
            "timestamp": (now - timedelta(minutes=rng.randint(0, 50))).isoformat(),
            "window": {
                "start": now.isoformat(),
                "end": now.isoformat(),
                "samples": 50,
                "interval_seconds": 1.0,
            },
            "privacy": {
                "unit": "window",
                "mechanism": "laplace",
                "epsilon": 0.5,
                "delta": 0.0,
                "sensitivity": 100.0,
                "noise_scale": b,
                "noise_stddev": b * math.sqrt(2),
                "unbiased": True,
                "lower": 0.0,
                "upper": 100.0,
            },
            "generator": "benchmark",
        }
        path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return root / "SyftBox"


def read_only_seconds(datasites: Path) -> float:
    """The floor: open and read every release file, nothing else."""
    started = time.perf_counter()
    for entry in os.scandir(datasites):
        try:
            with open(release_path(datasites, entry.name), "rb") as handle:
                handle.read()
        except OSError:
            pass
    return time.perf_counter() - started


_CHILD = """
import json, sys, time
from pathlib import Path
from cpu_tracker_daemon.aggregate import Aggregator
from cpu_tracker_daemon.config import parse_config
class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None
sb, state = sys.argv[1], sys.argv[2]
syftbox = {"dir": sb, "email": "aggregator@openmined.org"}
config = parse_config({"paths": {"data_dir": state}, "syftbox": syftbox, "aggregator": {"enabled": True}})
started = time.perf_counter()
result = Aggregator(config, Quiet()).run_pass()
elapsed = time.perf_counter() - started
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
est = result.estimate
print(json.dumps({"seconds": elapsed, "hwm_kib": hwm, "skipped": dict(result.skipped),
                  "estimate": None if est is None else [est.mean, est.ci_low, est.ci_high]}))
"""


def pass_in_child(sb: Path, state: Path) -> dict[str, object]:
    """One pass in a fresh interpreter: its time and its peak resident memory."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(sb), str(state)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dir", help="where to build the trees (default: a temporary directory)")
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
        "| peers | build s | read-only s | pass s | pass us/peer | peak RSS MiB | KiB/peer "
        "| estimate (95% CI) | skipped |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for size in sizes:
            root = base / str(size)
            started = time.perf_counter()
            sb = build_tree(root, size, rng)
            built = time.perf_counter() - started
            os.sync()
            reading = read_only_seconds(sb / "datasites")
            got = pass_in_child(sb, root / "state")
            elapsed = float(got["seconds"])  # type: ignore[arg-type]
            hwm = int(got["hwm_kib"])  # type: ignore[call-overload]
            mean, low, high = got["estimate"]  # type: ignore[misc]
            per_peer = (hwm - int(floor["hwm_kib"])) / size  # type: ignore[call-overload]
            print(
                f"| {size} | {built:.1f} | {reading:.2f} | {elapsed:.2f} | {elapsed / size * 1e6:.0f} | "
                f"{hwm / 1024:.1f} | {per_peer:.3f} | {mean:.2f} ({low:.2f} to {high:.2f}) "
                f"| {got['skipped']} |"
            )
            shutil.rmtree(root)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
