"""The timing side channel: can an observer tell an idle window from a loaded one without the value?

    python benchmarks/side_channel.py                 # 60 releases idle, 60 with both cores loaded
    python benchmarks/side_channel.py --releases 20

Runs the daemon's own cycle (real psutil, real clock, real files; 10 readings of 0.05 s a window,
one release a second on the schedule), in blocks of five releases on an idle machine and five
with a busy process on every core, alternating, and measures for each public field how well it
separates the two: the AUC (0.5: no better than a coin; 1: always). The noisy value itself may
reach what epsilon allows: e^eps / (1 + e^eps) = 0.62 at epsilon 0.5. Every other public field
should stay near 0.5. ``--no-hold`` writes the public file as soon as it is ready, as before.

The last row is not in the record: when the public file appears (its mtime, less the published
window end), which a sync service that watches the file sees.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_config

from cpu_tracker_daemon import logs
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.errors import Outcome
from cpu_tracker_daemon.sampling import PsutilCpuSource
from cpu_tracker_daemon.storage import layout_for, prepare
from cpu_tracker_daemon.tracker import Tracker

EPSILON = 0.5


def burn(stop: Any) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


FEATURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "cpu (the noisy value)": lambda r: r["cpu"],
    "timestamp, fraction of a second": lambda r: ts(r["timestamp"]) % 1.0,
    "window.start, fraction of a second": lambda r: ts(r["window"]["start"]) % 1.0,
    "window.end - window.start": lambda r: ts(r["window"]["end"]) - ts(r["window"]["start"]),
    "timestamp - window.end": lambda r: ts(r["timestamp"]) - ts(r["window"]["end"]),
    "file written, after window.end (not in the record)": lambda r: r["_mtime"] - ts(r["window"]["end"]),
}


def releases(
    data: Path, n: int, hold: float | None = None, block: int = 5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` releases idle and ``n`` loaded, in alternating blocks of ``block``: slow drifts (of
    the clock's tick phase, the page cache, the ledger's size) fall on both alike."""
    config_file = data / "config.toml"
    write_config(
        config_file,
        data,
        samples=10,
        interval=0.05,
        every=1,
        budget=100000,
        extra=f"[privacy]\nepsilon = {EPSILON}\n",
    )
    config = load_config(config_file)
    layout = layout_for(config)
    prepare(layout)
    logs.configure("json", "error")
    tracker = Tracker(
        config, layout, PsutilCpuSource(), logs.get_logger("bench"), stop=threading.Event(), hold_seconds=hold
    )
    out: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    loaded = False
    while len(out[True]) < n:
        stop = multiprocessing.Event()
        workers = [multiprocessing.Process(target=burn, args=(stop,)) for _ in range(os.cpu_count() or 1)]
        if loaded:
            for w in workers:
                w.start()
        try:
            done = 0
            while done < block:
                if tracker.cycle(max_wait=2.0).outcome != Outcome.RELEASED:
                    continue
                record = json.loads(layout.public_file.read_text())
                record["_mtime"] = layout.public_file.stat().st_mtime
                out[loaded].append(record)
                done += 1
        finally:
            stop.set()
            for w in workers:
                if w.is_alive():
                    w.join(timeout=5)
        loaded = not loaded
    return out[False], out[True]


def auc(a: Sequence[float], b: Sequence[float]) -> float:
    """P(X_b > X_a) + P(tie)/2, folded so that 0.5 is no signal and 1 a perfect split."""
    wins = sum((y > x) + 0.5 * (y == x) for x in a for y in b)
    value = wins / (len(a) * len(b))
    return max(value, 1 - value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--releases", type=int, default=60, help="releases per condition")
    parser.add_argument("--no-hold", action="store_true", help="write the public file at once (as before)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        idle, busy = releases(Path(tmp), args.releases, 0.0 if args.no_hold else None)
    allowed = math.exp(EPSILON) / (1 + math.exp(EPSILON))
    print(
        f"{args.releases} releases idle, {args.releases} with {os.cpu_count()} cores busy; "
        f"epsilon {EPSILON} allows AUC {allowed:.2f}\n"
    )
    print("| public field | AUC idle vs loaded |")
    print("| --- | --- |")
    worst = 0.0
    for name, feature in FEATURES.items():
        value = auc([feature(r) for r in idle], [feature(r) for r in busy])
        print(f"| {name} | {value:.2f} |")
        if name.startswith(("timestamp", "window")):
            worst = max(worst, value)
    # A field the record fixes before sampling is equal in every release: AUC exactly 0.5.
    return 0 if worst <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
