"""Fault injection: kill -9 the real daemon at random moments, many times; nothing is lost.

Each round starts ``cpu-tracker run`` on the same state directory (a release every 0.3 s), lets
it run for a random time, and kills it with SIGKILL: during start-up, sampling, reserving,
drawing, writing or renaming. After every kill and at the end it checks that

* the public and private files, when present, parse as complete JSON records;
* no temp file is ever an output name, and a restart removes the ones a kill left;
* every release that became visible (logged as released, or found in the public file) has its
  spend in the ledger, so the ledger never under-counts;
* the ledger still opens and passes its integrity check.

Usage: python benchmarks/faults.py [--kills 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import log_events, write_config

from cpu_tracker_daemon.budget.caps import Caps
from cpu_tracker_daemon.budget.ledger import open_ledger
from cpu_tracker_daemon.errors import Outcome


def faults_config(path: Path, data: Path) -> Path:
    return write_config(path, data, samples=5, interval=0.02, every=0.3)


def released_ids(text: str) -> set[str]:
    return {
        event["release_id"]
        for event in log_events(text.splitlines())  # the last line may be cut by the kill
        if event.get("event") == "cycle.finished" and event.get("outcome") == Outcome.RELEASED
    }


def check_outputs(data: Path) -> str | None:
    """The id in the public file, after checking both outputs are whole records."""
    public, private = data / "public" / "cpu_tracker.json", data / "private" / "cpu_tracker.json"
    public_id = None
    for path in (public, private):
        if path.exists():
            record = json.loads(path.read_text())  # raises on a half-written file
            assert record["release_id"], path
            if path == public:
                public_id = record["release_id"]
    return public_id


def run(kills: int, seed: int, quiet: bool = False) -> dict[str, int]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="cpu-tracker-faults-"))
    data = work / "data"
    config = work / "faults.toml"
    faults_config(config, data)
    visible: set[str] = set()
    temps_left = 0
    for round_ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(rng.uniform(0.5, 4.5))  # start-up takes about 1.5 s: some kills land in it
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        visible |= released_ids(out)
        public_id = check_outputs(data)
        if public_id:
            visible.add(public_id)
        temps = [p for d in ("public", "private") for p in (data / d).glob("*") if p.name.endswith(".tmp")]
        assert all(p.name.startswith(".") for p in temps), temps
        temps_left += len(temps)
        if not quiet and (round_ + 1) % 20 == 0:
            print(f"  {round_ + 1} kills, {len(visible)} releases seen", flush=True)
    # A last clean start must clear leftover temp files and settle what the kills left.
    final = subprocess.run(
        [sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), "once", "--force"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    visible |= released_ids(final.stdout)
    leftovers = [p for d in ("public", "private") for p in (data / d).glob("*.tmp")]
    assert not leftovers, leftovers
    with contextlib.closing(sqlite3.connect(data / "ledger.sqlite3")) as conn:
        spends = {row[0] for row in conn.execute("SELECT release_id FROM spends")}
    missing = visible - spends
    assert not missing, f"visible releases without a spend: {sorted(missing)}"
    ledger = open_ledger(data / "ledger.sqlite3", Caps(1e9, 1e9, 24.0), datetime.now(UTC), create=False)
    assert ledger is not None
    with ledger:
        unfinished = len(ledger.unfinished())
    return {
        "kills": kills,
        "visible_releases": len(visible),
        "spends": len(spends),
        "spends_without_visible_release": len(spends - visible),
        "temp_files_left_by_kills": temps_left,
        "unfinished_after_final_start": unfinished,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args.kills, args.seed)
    print("| figure | value |\n| --- | --- |")
    for key, value in result.items():
        print(f"| {key.replace('_', ' ')} | {value} |")
    print(f"\n{time.monotonic() - started:.0f} s; every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
