"""What one release costs in ledger work, and what the commands cost, as the history grows.

    python benchmarks/ledger_scale.py [--sizes 1000,10000,100000] [--cycles 20] [--instructions]
                                      [--daemon-seconds 60]

For each size, a ledger with that many published releases an hour apart (the default
schedule, so 24 lie in the rolling period) is built through the project's own
API (``open_ledger``, ``reserve``, ``record``; the build alone runs with ``synchronous = OFF``
so it takes seconds, not hours). Then, with the file as the daemon finds it, ``--cycles`` times
the ledger work of one cycle, in this process and timed in CPU seconds: open and verify, the
output check (``knows``), settling unfinished releases, the cooldown, ``reserve``, and the two
outcomes. Each step is timed on its own too. Last, the wall time of ``cpu-tracker status``,
``status --json``, ``budget show``, ``budget plan`` and ``--help``, run as a user runs them (the
installed ``cpu-tracker`` script beside this interpreter; ``python -m cpu_tracker_daemon``
without one), each just after ``python -c pass`` fifteen times (the median time, and the median
of the fifteen ratios), beside the floor (python importing the standard library modules status
reads with: re, sqlite3, json, pathlib, datetime). ``status`` is timed once more with its config
file not yet parsed (no parsecache entry). Then the real daemon runs on the ledger at one release
a second for ``--daemon-seconds``, and its windows' start times in the ledger say how far apart
they began and how many slots it missed.
``--instructions`` also counts each command's instructions under valgrind, which unlike time do
not drift. Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_config  # noqa: E402
from soak import schedule_faults, window_starts  # noqa: E402

from cpu_tracker_daemon.budget.caps import caps_for, promise_for  # noqa: E402
from cpu_tracker_daemon.budget.ledger import Ledger, Spend, open_ledger  # noqa: E402
from cpu_tracker_daemon.config import load_config  # noqa: E402
from cpu_tracker_daemon.privacy.mechanisms import calibrate  # noqa: E402

# Seconds between the built releases: the default hourly schedule, so the rolling 24 h period
# holds 24 of them, as the window cap allows at the defaults (12 epsilon at 0.5 each). The
# window's share of the work grows with the releases inside it, which its cap bounds; the
# lifetime's does not grow at all.
EVERY = 3600.0


def no_boot() -> tuple[str | None, float]:
    """The built history is dated in the past, so it cannot have happened in this boot: without
    this, every built spend would look recent on the time-since-boot clock and count in the
    rolling period."""
    return None, 0.0


def spend(at: datetime, epsilon: float, mechanism: str, sensitivity: float) -> Spend:
    return Spend(
        release_id=uuid.uuid4().hex,
        window_start=at,
        window_end=at + timedelta(seconds=0.5),
        epsilon=epsilon,
        delta=0.0,
        mechanism=mechanism,
        unit="window",
        sensitivity=sensitivity,
        planned_start=at,
    )


def build(data: Path, size: int) -> tuple[Path, datetime]:
    """A ledger of ``size`` published releases, ``EVERY`` apart, ending now."""
    config_path = data / "bench.toml"
    write_config(config_path, data, samples=5, interval=0.02, every=1)
    config = load_config(config_path, {"HOME": str(data)})
    cal = calibrate(config.privacy, config.sampling.samples)
    caps, promise = caps_for(config), promise_for(config)
    start = datetime.now(UTC) - timedelta(seconds=size * EVERY + 10)
    ledger = open_ledger(data / "ledger.sqlite3", caps, start, boot=no_boot)
    assert ledger is not None
    with ledger:
        ledger._conn.execute("PRAGMA synchronous = OFF")  # the build only: the timed work is not
        for i in range(size):
            at = start + timedelta(seconds=i * EVERY)
            s = spend(at, cal.epsilon, cal.mechanism, cal.sensitivity)
            ledger.reserve(s, caps, at, EVERY, promise)
            ledger.record(s.release_id, "drawn", at, {"release_id": s.release_id})
            ledger.record(s.release_id, "published", at)
    return config_path, start + timedelta(seconds=size * EVERY)


def cycle_steps(config_path: Path) -> dict[str, Callable[[], object]]:
    """The ledger work of one cycle, step by step, as the tracker does it."""
    config = load_config(config_path, {"HOME": str(config_path.parent)})
    cal = calibrate(config.privacy, config.sampling.samples)
    caps, promise = caps_for(config), promise_for(config)
    path = config.paths.data_dir / "ledger.sqlite3"
    state: dict[str, object] = {}

    def opened() -> Ledger:
        ledger = state["ledger"]
        assert isinstance(ledger, Ledger)
        return ledger

    def open_() -> None:
        ledger = open_ledger(path, caps, datetime.now(UTC), full=False, boot=no_boot)
        assert ledger is not None
        ledger.check_promise(promise)
        state["ledger"] = ledger

    def reserve() -> None:
        now = datetime.now(UTC)
        s = spend(now, cal.epsilon, cal.mechanism, cal.sensitivity)
        state["spend"] = s
        opened().reserve(s, caps, now, None, promise)

    def outcomes() -> None:
        release_id = state["spend"].release_id  # type: ignore[attr-defined]
        opened().record(release_id, "drawn", datetime.now(UTC), {"release_id": release_id})
        opened().record(release_id, "published", datetime.now(UTC))

    return {
        "open (the checks of every open)": open_,
        "output check (knows)": lambda: opened().knows("0" * 32),
        "settle unfinished": lambda: opened().unfinished(),
        "cooldown": lambda: opened().cooldown_anchor(datetime.now(UTC)),
        "reserve": reserve,
        "record drawn + published": outcomes,
        "close": lambda: opened().close(),
    }


def time_cycles(config_path: Path, cycles: int) -> dict[str, float]:
    """Median CPU milliseconds of each step, and of the whole cycle, over ``cycles`` cycles."""
    per_step: dict[str, list[float]] = {}
    totals: list[float] = []
    for _ in range(cycles):
        steps = cycle_steps(config_path)
        total = 0.0
        for name, step in steps.items():
            before = time.process_time()
            step()
            spent = (time.process_time() - before) * 1000
            per_step.setdefault(name, []).append(spent)
            total += spent
        totals.append(total)
    result = {name: statistics.median(values) for name, values in per_step.items()}
    result["one cycle's ledger work"] = statistics.median(totals)
    config = load_config(config_path, {"HOME": str(config_path.parent)})
    full: list[float] = []
    for _ in range(3):
        before = time.process_time()
        ledger = open_ledger(config.paths.data_dir / "ledger.sqlite3", caps_for(config), datetime.now(UTC))
        assert ledger is not None
        ledger.close()
        full.append((time.process_time() - before) * 1000)
    result["full verification (daemon start, `ledger verify`; not per cycle)"] = statistics.median(full)
    return result


# As an installed package runs: with its bytecode cached (pip writes it at install; an editable
# checkout under PYTHONDONTWRITEBYTECODE would compile every module on every start instead).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


PASS = [sys.executable, "-c", "pass"]


def _timed(command: list[str], env: dict[str, str] | None = None) -> float:
    before = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False, env=env or _ENV)
    return time.perf_counter() - before


RUNS = 15


def wall(command: list[str], runs: int = RUNS, env: dict[str, str] | None = None) -> tuple[float, float]:
    """The median wall time of ``command``, and the median of its ratio to ``python -c pass``
    run just before it each time: this VM's speed drifts, and a pair shares the drift."""
    # Writes the bytecode, and keeps the parsed config file (parsecache) as any command does.
    subprocess.run(command, capture_output=True, check=False, env=env or _ENV)
    times, ratios = [], []
    for _ in range(runs):
        baseline = _timed(PASS)
        times.append(_timed(command, env))
        ratios.append(times[-1] / baseline)
    return statistics.median(times), statistics.median(ratios)


def instructions(command: list[str], env: dict[str, str] | None = None) -> int | None:
    """The instructions ``command`` executes (valgrind's callgrind; None without valgrind): unlike
    time on a shared VM, the same from run to run. The hash seed is fixed: a random one moves a
    command's count by a few million from one run to the next."""
    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        check=False,
        env={**(env or _ENV), "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    return int(found.group(1)) if found else None


def cpu_tracker() -> list[str]:
    """The command as a user runs it: the installed script, or ``python -m`` where there is none."""
    script = Path(sys.executable).with_name("cpu-tracker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cpu_tracker_daemon"]


COMMANDS = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "budget show": ["budget", "show"],
    "budget plan": ["budget", "plan"],
    "--help": ["--help"],
}


def real_daemon(config_path: Path, seconds: float) -> dict[str, float]:
    """The real daemon (``cpu-tracker run``) on the built ledger for ``seconds``, at the built
    config's one release a second: how far apart its windows started, and the slots it missed
    (a gap with room for another whole window), counted from the ledger as the soak counts them."""
    began = time.time()
    daemon = subprocess.Popen(
        [*cpu_tracker(), "--config", str(config_path), "run", "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )
    try:
        time.sleep(seconds)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    starts = [s for s in window_starts(config_path.parent / "ledger.sqlite3") if s >= began]
    if len(starts) < 2:
        return {"releases": len(starts), "mean": float("nan"), "max": float("nan"), "missed": float("nan")}
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    _, missed = schedule_faults(starts, 1.0, [])
    return {
        "releases": len(starts),
        "mean": (starts[-1] - starts[0]) / (len(starts) - 1),
        "max": max(gaps),
        "missed": sum(k for _, k in missed),
    }


# A command whose config file it has not read before parses it with tomllib (parsecache): timed
# here with a cache directory that cannot be made, so every run is the first.
FIRST_READ = "status, the config not yet parsed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument(
        "--instructions", action="store_true", help="also count each command's instructions (valgrind)"
    )
    parser.add_argument(
        "--daemon-seconds",
        type=float,
        default=60.0,
        help="run the real daemon at one release a second on each ledger this long (0: not at all)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    cycle_rows: dict[int, dict[str, float]] = {}
    command_rows: dict[int, dict[str, tuple[float, float]]] = {}
    counted: dict[int, dict[str, int | None]] = {}
    build_seconds: dict[int, float] = {}
    daemon_rows: dict[int, dict[str, float]] = {}
    baseline, _ = wall(PASS)
    # What status cannot do without: the standard library modules it reads with (re, which the
    # console script imports; SQLite; JSON, the ledger's running counts; pathlib and datetime),
    # and nothing of this project.
    floor_argv = [sys.executable, "-c", "import re, sqlite3, json, pathlib, datetime"]
    floor, floor_ratio = wall(floor_argv)
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            _ENV["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # the commands' own, not the user's
            never = {**_ENV, "XDG_CACHE_HOME": str(Path(tmp) / "bench.toml" / "cache")}  # a file's child
            before = time.monotonic()
            config_path, _ = build(Path(tmp), size)
            build_seconds[size] = time.monotonic() - before
            cycle_rows[size] = time_cycles(config_path, args.cycles)
            cli = [*cpu_tracker(), "--config", str(config_path)]
            command_rows[size] = {name: wall(cli + extra) for name, extra in COMMANDS.items()}
            command_rows[size][FIRST_READ] = wall([*cli, "status"], env=never)
            if args.instructions:
                counted[size] = {name: instructions(cli + extra) for name, extra in COMMANDS.items()}
                counted[size][FIRST_READ] = instructions([*cli, "status"], env=never)
            if args.daemon_seconds > 0:
                daemon_rows[size] = real_daemon(config_path, args.daemon_seconds)
    head = _head(sizes)
    print(f"ledger work of one cycle, CPU ms (median of {args.cycles} cycles):\n")
    print(f"| step | {head} |")
    print("| --- |" + " --- |" * len(sizes))
    for name in cycle_rows[sizes[0]]:
        print(f"| {name} | " + " | ".join(f"{cycle_rows[s][name]:.2f}" for s in sizes) + " |")
    print(
        f"\ncommand wall time, s (median of {RUNS}), as `{' '.join(Path(a).name for a in cpu_tracker())}`, "
        "and its multiple of `python -c pass` run just before it each time "
        f"(median of the {RUNS} ratios; `python -c pass` took {baseline:.3f} s):\n"
    )
    floor_command = "`python -c 'import re, sqlite3, json, pathlib, datetime'`"
    print(f"(the floor, {floor_command}: {floor:.3f} s, {floor_ratio:.1f}x)\n")
    print(f"| command | {head} |")
    print("| --- |" + " --- |" * len(sizes))
    for name in [*COMMANDS, FIRST_READ]:
        cells = [f"{command_rows[s][name][0]:.3f} ({command_rows[s][name][1]:.1f}x)" for s in sizes]
        print(f"| {_named(name)} | " + " | ".join(cells) + " |")
    if args.instructions:
        print_instructions(counted, floor_argv)
    if daemon_rows:
        print_daemon(daemon_rows, args.daemon_seconds)
    print("\n(building the ledgers: " + ", ".join(f"{s:,} in {build_seconds[s]:.0f} s" for s in sizes) + ")")
    return 0


def print_instructions(counted: dict[int, dict[str, int | None]], floor_argv: list[str]) -> None:
    sizes = list(counted)
    base, low = instructions(PASS), instructions(floor_argv)
    print(f"\ninstructions, millions (valgrind): `python -c pass` {_m(base)}, the floor {_m(low)}\n")
    print(f"| command | {_head(sizes)} |")
    print("| --- |" + " --- |" * len(sizes))
    for name in [*COMMANDS, FIRST_READ]:
        print(f"| {_named(name)} | " + " | ".join(_m(counted[s][name]) for s in sizes) + " |")


DAEMON_ROWS = {
    "releases": ("releases", "{:.0f}"),
    "window starts apart, mean s": ("mean", "{:.4f}"),
    "the longest gap, s": ("max", "{:.3f}"),
    "slots missed": ("missed", "{:.0f}"),
}


def print_daemon(rows: dict[int, dict[str, float]], seconds: float) -> None:
    sizes = list(rows)
    print(f"\nthe real daemon at one release a second on each ledger, {seconds:.0f} s, 5 samples a window:\n")
    print(f"| figure | {_head(sizes)} |")
    print("| --- |" + " --- |" * len(sizes))
    for name, (key, form) in DAEMON_ROWS.items():
        print(f"| {name} | " + " | ".join(form.format(rows[s][key]) for s in sizes) + " |")


def _head(sizes: list[int]) -> str:
    return " | ".join(f"{s:,} releases" for s in sizes)


def _named(name: str) -> str:
    return name if name == FIRST_READ else f"`{name}`"


def _m(count: int | None) -> str:
    return "n/a" if count is None else f"{count / 1e6:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
