"""Resident memory of the daemons (issue 30): a member in local mode, a member in secure mode and
the aggregator, between rounds (steady) and at their peak, from /proc/<pid>/status (VmRSS and
VmHWM).

* local: a real ``cpu-tracker run`` in local mode; its VmRSS a second after ``--cycles`` cycles
  finished, and its VmHWM.
* secure: three real ``cpu-tracker run`` members in secure mode and a real aggregator daemon
  (its aggregation pass enabled) running their rounds on the wall clock, a round every 10 s in
  steps of 0.6 s: each one's VmRSS after ``--rounds`` rounds and its VmHWM. The aggregator's
  children (its rounds run in them) are polled every 50 ms for their own VmHWM.
* --members N,...: the aggregator's round at N members, ``secagg.rounds.run_round`` (what the
  round's child runs) in a process of its own whose clock is virtual, the members simulated as
  benchmarks/secagg_scale.py's crowd does (a fifth drop after sharing): its VmRSS before the
  round, its VmHWM, and its VmRSS after the round and a ``gc.collect()``. ``--as child`` imports
  what the round's child imports; ``--as daemon`` the daemon's modules too, as a daemon that ran
  the round in its own process would (its VmRSS after the round is then that daemon's steady).
  Then the aggregation pass the daemon runs after a round, in its own process, over the same N
  datasites, in a process holding the daemon's modules.
* --imports: what each import of a secure member's round adds to a process holding the
  daemon's modules.

The daemons' imports read bytecode compiled once into a temporary PYTHONPYCACHEPREFIX, as an
installed package would (this environment sets PYTHONDONTWRITEBYTECODE, and compiling a module
at each start adds to the peak); ``--no-bytecode-cache`` measures them as the environment is.
Children started with ``python -I`` ignore PYTHON* variables and read the tree's __pycache__.
``--without-rich`` hides rich from the daemons: structlog imports it when it is installed (the
test extra brings it, through syft), and an install of the package's own dependencies has none.

    python benchmarks/daemon_memory.py [--cycles 5] [--rounds 3] [--members 1000,10000] [--as child]
    python benchmarks/daemon_memory.py --members '' [--without-rich] [--imports]   # about a minute
    python benchmarks/daemon_memory.py --quick           # 3 cycles, 2 rounds, 100 members

Prints Markdown tables (MiB = 2^20 bytes); nothing is asserted. Exits 1 if a daemon did not
finish its cycles or rounds, or a round at N members did not end with every staying member.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from common import log_events, write_config

CLI = [sys.executable, "-m", "cpu_tracker_daemon"]
# structlog imports rich when it is installed (here the test extra brings it, through syft), not
# otherwise: --without-rich starts the daemons as an install of the package's own dependencies.
WITHOUT_RICH = [
    sys.executable,
    "-c",
    "import sys; sys.modules['rich'] = None; from cpu_tracker_daemon.cli.main import entry; entry()",
]
AGGREGATOR = "aggregator@example.org"  # benchmarks/secagg_scale.py's crowd writes to this one
MEMBERS = [f"m{i}@example.org" for i in range(3)]
STEP, EVERY = 0.6, 10.0  # tests/test_secure_rounds.py's fast rounds: 14 steps and a window in 10 s
SAMPLES, INTERVAL = 2, 0.05
BIG_STEP, BIG_EVERY = 10.0, 3600.0  # the defaults, for the round at N members (virtual time)
SLOT_NUMBER = 29_000_001  # the round at N members: its slot on the hourly grid
POLL = 0.05
MIB = 1 << 20


# -- reading a process ----------------------------------------------------------------------------


def status_kib(pid: int, *names: str) -> dict[str, int]:
    """Fields of /proc/<pid>/status in KiB; missing ones (a process gone) are left out."""
    got: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in names:
                got[key] = int(value.split()[0])
    return got


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


@dataclass
class Daemon:
    """A running ``cpu-tracker run``: its events as they arrive, and its children's peak."""

    name: str
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    child_pids: set[int] = field(default_factory=set)
    child_hwm_kib: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start_threads(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._watch_children, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for event in log_events(self.proc.stdout):
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _watch_children(self) -> None:
        try:
            me = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in me.children(recursive=True):
                    hwm = status_kib(child.pid, "VmHWM").get("VmHWM", 0)
                    self.child_pids.add(child.pid)
                    self.child_hwm_kib = max(self.child_hwm_kib, hwm)
            time.sleep(POLL)

    def count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events)

    def wait_for(self, event: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count(event) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def memory(self) -> dict[str, int]:
        return status_kib(self.proc.pid, "VmRSS", "VmHWM")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def daemons(command: list[str]) -> Iterator[Callable[[str, Path], Daemon]]:
    """Start daemons with ``command`` (``start(name, config)``), each stopped with SIGTERM on the
    way out."""
    started: list[Daemon] = []

    def start(name: str, config: Path) -> Daemon:
        proc = subprocess.Popen(
            [*command, "--config", str(config), "run", "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        daemon = Daemon(name, proc)
        daemon.start_threads()
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()


def bytecode_cache(where: Path) -> None:
    """Compile every module the daemons import once, into ``where``, and have every process this
    one starts read it."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(where)
    modules = (
        "cpu_tracker_daemon.cli.main",
        "cpu_tracker_daemon.cli.run_cmd",
        "cpu_tracker_daemon.daemon.loop",
        "cpu_tracker_daemon.tracker",
        "cpu_tracker_daemon.network.aggregate",
        "cpu_tracker_daemon.secagg.rounds",
        "apscheduler.schedulers.background",
        "apscheduler.triggers.interval",
        "apscheduler.executors.pool",
        "psutil",
    )
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], check=True)


# -- the real daemons -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    process: str
    steady_kib: int | None
    peak_kib: int | None
    note: str = ""


def local_member(root: Path, cycles: int, command: list[str]) -> list[Row]:
    config = write_config(root / "local.toml", root / "local", samples=5, interval=0.02, every=2.0)
    with daemons(command) as start:
        member = start("local", config)
        done = member.wait_for("cycle.finished", cycles, timeout=30 + 3 * cycles)
        time.sleep(1.0)
        got = member.memory()
    note = f"after {member.count('cycle.finished')} cycles" + ("" if done else " (FEWER THAN ASKED)")
    return [Row("member, local mode", got.get("VmRSS"), got.get("VmHWM"), note)]


def secure_tables(box: Path, email: str, members: list[str] | None) -> str:
    syftbox = f'[syftbox]\ndir = {json.dumps(str(box))}\nemail = "{email}"\n'
    if members is None:  # a member of the aggregator's rounds
        return (
            syftbox
            + f'readers = ["{AGGREGATOR}"]\n[secure_aggregation]\nenabled = true\n'
            + f'aggregator = "{AGGREGATOR}"\nstep_seconds = {STEP!r}\n'
        )
    return (
        syftbox
        + f"[secure_aggregation]\nmembers = {json.dumps(members)}\nstep_seconds = {STEP!r}\n"
        + "[aggregator]\nenabled = true\nevery_seconds = 3600.0\n"
    )


def secure_network(root: Path, rounds: int, command: list[str]) -> tuple[list[Row], bool]:
    box = root / "SyftBox"
    with daemons(command) as start:
        members = [
            start(
                email,
                write_config(
                    root / email / "c.toml",
                    root / email / "data",
                    samples=SAMPLES,
                    interval=INTERVAL,
                    every=EVERY,
                    extra=secure_tables(box, email, None),
                ),
            )
            for email in MEMBERS
        ]
        aggregator = start(
            AGGREGATOR,
            write_config(
                root / "agg" / "c.toml",
                root / "agg" / "data",
                samples=SAMPLES,
                interval=INTERVAL,
                every=EVERY,
                extra=secure_tables(box, AGGREGATOR, MEMBERS),
            ),
        )
        timeout = EVERY * (rounds + 3)
        done = aggregator.wait_for("secure_round.finished", rounds, timeout)
        done &= all(m.wait_for("cycle.finished", rounds, timeout) for m in members)
        time.sleep(1.5)  # between rounds: the pass after the round is done, the next is 7 s away
        memory = {d.name: d.memory() for d in [*members, aggregator]}
        revealed = [
            sum(e.get("event") == "cycle.finished" and e.get("secure_round") == "revealed" for e in m.events)
            for m in members
        ]
        finished = [e for e in aggregator.events if e.get("event") == "secure_round.finished"]
    rows = [
        Row(
            f"member, secure mode ({m.name})",
            memory[m.name].get("VmRSS"),
            memory[m.name].get("VmHWM"),
            f"{n} rounds revealed",
        )
        for m, n in zip(members, revealed, strict=True)
    ]
    rows.append(
        Row(
            "aggregator daemon, 3 members",
            memory[AGGREGATOR].get("VmRSS"),
            memory[AGGREGATOR].get("VmHWM"),
            f"after {len(finished)} rounds, members {[e.get('members') for e in finished]}",
        )
    )
    if aggregator.child_pids:
        rows.append(
            Row(
                "its children, the largest",
                None,
                aggregator.child_hwm_kib,
                f"{len(aggregator.child_pids)} children seen (rounds, and Snapping's check if any)",
            )
        )
    return rows, done and all(n >= rounds for n in revealed)


# -- the aggregator's round at N members, in virtual time -----------------------------------------


def round_at(n: int, base: Path, rng: random.Random, flavour: str) -> tuple[list[Row], bool]:
    """One round of ``n`` members with ``rounds.run_round`` in a process of its own, then the
    aggregation pass the daemon runs after a round, over the same tree, in another (with the
    daemon's modules: the daemon runs it in its own process)."""
    import secagg_scale as scale

    from cpu_tracker_daemon import schedule
    from cpu_tracker_daemon.config import load_config
    from cpu_tracker_daemon.secagg import identity, transport
    from cpu_tracker_daemon.secagg.protocol import Member

    names = [scale.name_of(i) for i in range(n)]
    box = base / "SyftBox"
    (box / "datasites").mkdir(parents=True)
    extra = (
        f'[syftbox]\ndir = {json.dumps(str(box))}\nemail = "{AGGREGATOR}"\n'
        f"[secure_aggregation]\nmembers = {json.dumps(names)}\nstep_seconds = {BIG_STEP!r}\n"
    )
    path = write_config(
        base / "agg.toml", base / "agg", samples=50, interval=1.0, every=BIG_EVERY, extra=extra
    )
    config = load_config(path)
    me = identity.Identity.load_or_create(identity.identity_path(config))
    signers = {who: identity.Identity.generate() for who in names}
    keys = {who: signer.public for who, signer in signers.items()}
    identity.Pins(identity.pins_path(config), {}).check_all(keys)  # pinned: a round after the first
    pins = identity.Pins(base / "pins.json", {})
    pins.check_all({**keys, AGGREGATOR: me.public})
    slot = datetime.fromtimestamp(SLOT_NUMBER * BIG_EVERY, UTC)
    round_id = schedule.round_id(slot, timedelta(seconds=BIG_EVERY))
    start = schedule.round_start(slot, config).timestamp()
    gone = set(rng.sample(names, n // 5))
    crowd = [
        scale.Party(who, Member(who), signers[who], rng.randrange(scale.VALUE_UNITS + 1), drops=who in gone)
        for who in names
    ]
    del signers, keys
    scheduler = scale.Scheduler()
    scheduler.spawn(scale.crowd_party(scheduler, transport.Tree(box), pins, crowd, rng, round_id))
    out: dict[str, Any] = {}
    command = [
        sys.executable,
        __file__,
        "--round-process",
        str(path),
        "--as",
        flavour,
        "--slot",
        slot.isoformat(),
        "--offset",
        repr(start),
    ]
    scheduler.spawn(scale.aggregator_party(scheduler, base, False, out, command))
    scheduler.run()
    record = out["record"]
    ok = record["aborted"] is None and record["members"] == n - len(gone)
    row = Row(
        f"aggregator's round, {n:,} members, a fifth dropped (--as {flavour})",
        out["after_kib"],
        out["hwm_kib"],
        f"before the round {mib(out['before_kib'])}; round CPU {out['cpu']:.1f} s; "
        f"members {record['members']}, aborted {record['aborted']}",
    )
    done = subprocess.run(
        [sys.executable, __file__, "--pass-process", str(path)], capture_output=True, text=True, check=True
    )
    passed = json.loads(done.stdout.rsplit("done ", 1)[1])
    after = Row(
        f"aggregator daemon's pass after it, {n:,} datasites (in the daemon)",
        passed["after_kib"],
        passed["hwm_kib"],
        f"before the pass {mib(passed['before_kib'])}; secure members {passed['secure_members']}",
    )
    return [row, after], ok and passed["secure_members"] == record["members"]


def round_process(config_path: Path, flavour: str, slot: str, offset: float) -> int:
    """The aggregator's side of ``round_at``: the clock's sleeps go to the parent on stdout, the
    parent's virtual time comes back on stdin (benchmarks/secagg_scale.py's protocol)."""
    if flavour == "daemon":  # what an aggregator daemon holds before its first round
        import apscheduler.executors.pool
        import apscheduler.schedulers.background
        import apscheduler.triggers.interval  # noqa: F401

        import cpu_tracker_daemon.daemon.loop
        import cpu_tracker_daemon.network.aggregate
    import cpu_tracker_daemon.secagg.round_child  # noqa: F401 - the child's own module
    from cpu_tracker_daemon.config import load_config
    from cpu_tracker_daemon.secagg import rounds, transport

    config = load_config(config_path)
    gc.collect()
    before = status_kib(os.getpid(), "VmRSS")["VmRSS"]
    now = float(sys.stdin.readline())

    def sleep(seconds: float) -> None:
        nonlocal now
        print(repr(seconds), flush=True)
        now = float(sys.stdin.readline())

    clock = transport.RoundClock(now=lambda: offset + now, sleep=sleep, poll=0.2)
    started = time.process_time()
    outcome = rounds.run_round(config, datetime.fromisoformat(slot), clock, lambda: datetime.now(UTC))
    cpu = time.process_time() - started
    record = outcome.record
    del outcome
    gc.collect()
    got = status_kib(os.getpid(), "VmRSS", "VmHWM")
    done = {
        "record": record,
        "cpu": cpu,
        "before_kib": before,
        "after_kib": got["VmRSS"],
        "hwm_kib": got["VmHWM"],
    }
    print("done " + json.dumps(done), flush=True)
    return 0


def pass_process(config_path: Path) -> int:
    """The daemon's aggregation pass after a round, in a process holding the daemon's modules."""
    import apscheduler.executors.pool
    import apscheduler.schedulers.background
    import apscheduler.triggers.interval  # noqa: F401

    from cpu_tracker_daemon import logs
    from cpu_tracker_daemon.config import load_config
    from cpu_tracker_daemon.network.aggregate import AGGREGATE_NAME, Aggregator
    from cpu_tracker_daemon.storage import network_dir

    logs.configure("json", "warning", stream=open(os.devnull, "w"))  # noqa: SIM115 - for the process
    config = load_config(config_path)
    gc.collect()
    before = status_kib(os.getpid(), "VmRSS")["VmRSS"]
    Aggregator(config, logs.get_logger("bench")).run_pass()
    gc.collect()
    got = status_kib(os.getpid(), "VmRSS", "VmHWM")
    written = json.loads((network_dir(config) / AGGREGATE_NAME).read_text())
    done: dict[str, Any] = {"before_kib": before, "after_kib": got["VmRSS"], "hwm_kib": got["VmHWM"]}
    done["secure_members"] = (written.get("secure") or {}).get("members")
    print("done " + json.dumps(done), flush=True)
    return 0


# -- what a member's imports add --------------------------------------------------------------------

# In the order a secure member's first round loads them, after what every daemon holds.
DAEMON_MODULES = (
    "cpu_tracker_daemon.daemon.loop",
    "cpu_tracker_daemon.tracker",
    "psutil",
    "apscheduler.schedulers.background",
    "apscheduler.triggers.interval",
    "apscheduler.executors.pool",
)
MEMBER_MODULES = (
    "cryptography.hazmat.bindings._rust",
    "cryptography.hazmat.bindings.openssl.binding",  # initialises OpenSSL
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.hkdf",
    "cryptography.hazmat.primitives.ciphers",
    "cpu_tracker_daemon.secagg.shares",
    "cpu_tracker_daemon.secagg.protocol",
    "cpu_tracker_daemon.secagg.identity",
    "cpu_tracker_daemon.secagg.transport",
    "cpu_tracker_daemon.secagg.rounds",
)
_STEPS = """
import gc, importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
rows = [("python", rss())]
for group in sys.argv[1:]:
    for name in group.split(","):
        importlib.import_module(name)
    gc.collect()
    rows.append((group, rss()))
print(json.dumps(rows))
"""


def imports_table() -> str:
    """VmRSS after each import, in a fresh process: the daemon's modules, then a member's."""
    groups = [",".join(DAEMON_MODULES), *MEMBER_MODULES]
    done = subprocess.run([sys.executable, "-c", _STEPS, *groups], capture_output=True, text=True, check=True)
    lines = ["| import | VmRSS MiB | added MiB |", "| --- | --- | --- |"]
    before = None
    for name, kib in json.loads(done.stdout):
        shown = "the daemon's modules (loop, tracker, psutil, APScheduler)" if "," in name else name
        added = "" if before is None else f"{(kib - before) / 1024:+.1f}"
        lines.append(f"| {shown} | {kib / 1024:.1f} | {added} |")
        before = kib
    return "\n".join(lines) + "\n"


# -- the report -----------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| process | steady MiB (VmRSS) | peak MiB (VmHWM) | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.process} | {mib(r.steady_kib)} | {mib(r.peak_kib)} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=5, help="the local member's cycles (5)")
    parser.add_argument("--rounds", type=int, default=3, help="the secure network's rounds (3)")
    parser.add_argument("--members", default="1000,10000", help="sizes of the round in virtual time")
    parser.add_argument("--as", dest="flavour", choices=("daemon", "child"), default="child")
    parser.add_argument("--no-daemons", action="store_true", help="only the rounds at --members")
    parser.add_argument("--no-bytecode-cache", action="store_true")
    parser.add_argument("--without-rich", action="store_true", help="hide rich from the daemons")
    parser.add_argument("--imports", action="store_true", help="what a secure member's imports add")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="3 cycles, 2 rounds, 100 members")
    parser.add_argument("--round-process", help=argparse.SUPPRESS)
    parser.add_argument("--pass-process", help=argparse.SUPPRESS)
    parser.add_argument("--slot", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.round_process:
        return round_process(Path(args.round_process), args.flavour, args.slot, args.offset)
    if args.pass_process:
        return pass_process(Path(args.pass_process))
    if args.quick:
        args.cycles, args.rounds, args.members = 3, 2, "100"
    sizes = [int(s) for s in args.members.split(",") if s]
    failed = False
    with tempfile.TemporaryDirectory(prefix="cpu-tracker-memory-") as tmp:
        root = Path(tmp)
        if not args.no_bytecode_cache:
            bytecode_cache(root / "pyc")
        print(
            f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; bytecode "
            f"{'as the environment has it' if args.no_bytecode_cache else 'compiled once, then read'}; "
            f"rich {'hidden from' if args.without_rich else 'importable by'} the daemons\n"
        )
        if args.imports:
            print(imports_table(), flush=True)
        if not args.no_daemons:
            command = WITHOUT_RICH if args.without_rich else CLI
            rows = local_member(root / "local", args.cycles, command)
            secure, ok = secure_network(root / "secure", args.rounds, command)
            failed |= not ok or "FEWER" in rows[0].note
            print(table(rows + secure), flush=True)
        rng = random.Random(args.seed)
        rows = []
        for n in sizes:
            parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
            with tempfile.TemporaryDirectory(prefix="cpu-tracker-round-", dir=parent) as base:
                got, ok = round_at(n, Path(base), rng, args.flavour)
            failed |= not ok
            rows += got
            print(f"\n{table(got)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
