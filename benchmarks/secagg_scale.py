"""One secure round at scale, over files, with the real cryptography: what the aggregator and a
member spend (issue 30).

Every party runs the daemon's own code over a SyftBox tree (``secagg.transport``): each message
is a signed JSON file, read without following links and its signature verified. A fifth of the
members drop after sharing (they never send a masked value). The round runs in virtual time
(steps of 10 s, polls every 0.2 s, the daemon's defaults): each party runs in turn, and waiting
costs only the polls a real party would make.

* The aggregator is ``transport.aggregator_round`` in a process of its own, so its CPU time
  (user + system) and its peak RSS are its own; its clock talks to this process over a pipe.
* ``--sample`` members run ``transport.member_round`` whole, each in a thread whose CPU time is
  measured (``time.thread_time``): they read the roster, the openings and their inbox from
  files, verify their neighbours' key signatures and the endorsements, and write their files.
* The other members (the crowd, not measured) write the same messages with the same code, but
  parse each of the aggregator's shared files once for all of them and do not verify the
  endorsements: one process could not hold 10,000 members' copies of the roster.

Everyone's identity key is pinned before the round (the steady state: a round after the first).
Prints a Markdown table: the aggregator's CPU seconds and peak RSS, the sampled members' CPU
(mean, and the slowest), the bytes a member writes in a round (its seven files, as written,
signatures included), and whether the unmasked sum is exact. ``--profile`` adds a cProfile
summary of the aggregator and of one sampled member (their times then include the profiler's).

    python benchmarks/secagg_scale.py [--members 1000,10000] [--sample 30] [--profile]
    python benchmarks/secagg_scale.py --quick      # 100 members (benchmarks/run_all.py --quick)

Exits 1 if a sum is not exact or a sampled member did not reveal.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import heapq
import io
import itertools
import json
import os
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.secagg import identity, masks, noise, transport
from cpu_tracker_daemon.secagg.protocol import Graph, Member, Opened, Roster, Survivors, graph_of, went_on

ROUND = "29000001"
AGGREGATOR = "aggregator@example.org"
STEP, POLL = 10.0, 0.2  # the daemon's defaults: secure_aggregation.step_seconds, RoundClock.poll
BETA = 0.2  # beta_dropped and beta_colluding, the defaults
SCALE, LOCAL_SCALE = 20_000.0, 2_000.0  # grid units at epsilon 0.5 and local_epsilon 5
VALUE_UNITS = 10_000
MEMBER_FILES = ("keys", "open", "shares", "check", "masked", "endorse", "reveal")
TOP = 15


def name_of(i: int) -> str:
    return f"m{i:05d}@example.org"


# -- virtual time ----------------------------------------------------------------------------------


class Scheduler:
    """Virtual time for parties that each run in a thread of their own: exactly one runs at a
    time, and ``sleep`` hands the turn to whoever wakes first (ties in the order they slept)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()
        self._finished = threading.Event()
        self.errors: list[BaseException] = []

    def spawn(self, party: Callable[[], None]) -> None:
        turn = threading.Event()

        def run() -> None:
            turn.wait()
            try:
                party()
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                self.errors.append(exc)
            finally:
                self._next()

        threading.Thread(target=run, daemon=True).start()
        heapq.heappush(self._queue, (self.now, next(self._order), turn))

    def sleep(self, seconds: float) -> None:
        turn = threading.Event()
        heapq.heappush(self._queue, (self.now + max(seconds, 0.0), next(self._order), turn))
        self._next()
        turn.wait()

    def clock(self) -> transport.RoundClock:
        return transport.RoundClock(now=lambda: self.now, sleep=self.sleep, poll=POLL)

    def run(self) -> None:
        self._next()
        self._finished.wait()
        if self.errors:
            raise self.errors[0]

    def _next(self) -> None:
        if not self._queue:
            self._finished.set()
            return
        at, _, turn = heapq.heappop(self._queue)
        self.now = max(self.now, at)
        turn.set()


# -- the aggregator, in a process of its own -------------------------------------------------------


def aggregator_child(base: Path, profile: bool) -> int:
    """Run the aggregator's round; its clock's sleeps go to the parent on stdout, the parent's
    virtual time comes back on stdin. The last line is its result and its figures."""
    from cpu_tracker_daemon.secagg.transport import Calibration, Keyring, Tree, aggregator_round

    setup = json.loads((base / "setup.json").read_text())
    signer = identity.Identity(Ed25519PrivateKey.from_private_bytes((base / "aggregator.key").read_bytes()))
    keyring = Keyring(Tree(base / "SyftBox"), identity.Pins.load(base / "pins.json"))
    now = float(sys.stdin.readline())

    def sleep(seconds: float) -> None:
        nonlocal now
        print(repr(seconds), flush=True)
        now = float(sys.stdin.readline())

    clock = transport.RoundClock(now=lambda: now, sleep=sleep, poll=POLL)
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU, not the waits
    started = time.process_time()
    with profiler or contextlib.nullcontext():
        result = aggregator_round(
            Tree(base / "SyftBox"),
            signer,
            keyring,
            AGGREGATOR,
            setup["members"],
            ROUND,
            0.0,
            STEP,
            Calibration(BETA, BETA, SCALE, LOCAL_SCALE),
            clock,
        )
    cpu = time.process_time() - started
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = profile_summary(profiler) if profiler is not None else ""
    print("done " + json.dumps({"result": result, "cpu": cpu, "rss_kib": rss_kib, "profile": summary}))
    return 0


def aggregator_party(
    scheduler: Scheduler,
    base: Path,
    profile: bool,
    out: dict[str, Any],
    command: list[str] | None = None,
) -> Callable[[], None]:
    """The aggregator's process as a party: ``command`` (by default this script's
    ``--aggregator-child``) speaks the clock's protocol and ends with a ``done`` line."""
    if command is None:
        command = [
            sys.executable,
            __file__,
            "--aggregator-child",
            str(base),
            *(["--profile"] if profile else []),
        ]

    def party() -> None:
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        with child:
            child.stdin.write(f"{scheduler.now!r}\n")
            child.stdin.flush()
            for line in child.stdout:
                if line.startswith("done "):
                    out.update(json.loads(line[5:]))
                    break
                scheduler.sleep(float(line))
                child.stdin.write(f"{scheduler.now!r}\n")
                child.stdin.flush()
        if child.returncode:
            raise RuntimeError(f"the aggregator's process exited {child.returncode}")

    return party


# -- the members -----------------------------------------------------------------------------------


@dataclass
class Party:
    """One member: its protocol state, its signing key, its value and its noise."""

    name: str
    member: Member
    signer: identity.Identity
    value: int
    drops: bool = False
    noise: int | None = None
    opened: dict[str, Opened] = field(default_factory=dict)
    cpu: float = 0.0
    outcome: str = ""


def noise_of(party: Party, rng: random.Random) -> Callable[[Roster], int]:
    def draw(roster: Roster) -> int:
        party.noise = noise.share(roster.scale, roster.calibrated, rng) + discrete.discrete_laplace(
            Fraction(roster.local_scale), rng
        )
        return party.noise

    return draw


def sampled_party(
    scheduler: Scheduler,
    tree: transport.Tree,
    pins: identity.Pins,
    party: Party,
    rng: random.Random,
    profiler: cProfile.Profile | None,
) -> Callable[[], None]:
    """A member that runs the daemon's own round, its CPU time measured."""

    def run() -> None:
        started = time.thread_time()
        with profiler or contextlib.nullcontext():
            party.outcome = transport.member_round(
                tree,
                party.member,
                party.signer,
                transport.Keyring(tree, pins),
                AGGREGATOR,
                ROUND,
                0.0,
                STEP,
                party.value,
                noise_of(party, rng),
                lambda: None,
                scheduler.clock(),
            )
        party.cpu = time.thread_time() - started

    return run


def crowd_party(
    scheduler: Scheduler,
    tree: transport.Tree,
    pins: identity.Pins,
    crowd: list[Party],
    rng: random.Random,
    round_id: str = ROUND,
) -> Callable[[], None]:
    """The members not measured: the same messages as ``member_round`` writes, with each of the
    aggregator's shared files read once for all of them, in round ``round_id``."""
    keyring = transport.Keyring(tree, pins)
    clock = scheduler.clock()

    def send(party: Party, kind: str, body: dict[str, Any]) -> None:
        folder = transport.member_folder(party.name, AGGREGATOR)
        transport._write(tree, party.signer, party.name, round_id, kind, body, folder)

    def relayed(name: str, kind: str, roster: Roster | None = None) -> Any:
        def attempt() -> Any:
            body = transport._read(tree, keyring, AGGREGATOR, round_id, kind, name)
            return body if roster is None else transport._of_roster(body, roster)

        found = transport._await(clock, transport.MEMBER_WAITS[kind] * STEP, attempt)
        if found is None:
            raise RuntimeError(f"the crowd found no {name} by a member's deadline: the round stopped")
        return found

    def run() -> None:
        for party in crowd:
            send(party, "keys", transport.keys_body(party.member.rekey()))
        roster, _ = transport.parse_roster(round_id, relayed("roster", "roster"))
        digest = roster.digest.hex()
        for party in crowd:
            send(party, "open", {"roster": digest, "r": transport._b64(party.member.accept(roster))})
        raw = relayed("openings", "openings", roster)["openings"]
        graph: Graph = graph_of(roster, {m: transport._unb64(raw[m], 32) for m in roster.members})
        for party in crowd:
            send(party, "shares", transport.shares_body(roster, party.member.share(graph)))
        for party in crowd:
            inbox = relayed(f"inbox-{party.name}", "inbox", roster)
            boxes = {str(s): transport._unb64(b) for s, b in inbox["boxes"].items()}
            party.opened, bad = party.member.check_inbox(graph, boxes)
            send(party, "check", {"roster": digest, "bad": bad})
        shared = transport._names(relayed("proceed", "proceed", roster)["shared"])
        staying = [party for party in crowd if not party.drops]
        for party in staying:
            value = party.member.masked(
                graph, shared, party.value, noise_of(party, rng)(roster), party.opened
            )
            send(
                party, "masked", {"roster": digest, "shared": went_on(roster, shared).hex(), "masked": value}
            )
        doc = relayed("survivors", "survivors", roster)
        survivors = Survivors(transport._names(doc["shared"]), transport._names(doc["present"]))
        for party in staying:
            send(
                party,
                "endorse",
                {"roster": digest, "survivors": party.member.endorse(graph, survivors).hex()},
            )
        endorsers = set(relayed("endorsements", "endorsements", roster)["endorsements"])
        for party in staying:
            revealed = party.member.reveal(graph, survivors, endorsers, party.opened)
            send(party, "reveal", transport.reveal_body(roster, revealed))
            party.outcome = "revealed"

    return run


# -- one round -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    members: int
    neighbours: int
    dropped: int
    exact: bool
    aggregator_cpu: float
    aggregator_rss_mib: float
    member_ms: list[float]
    member_bytes: list[int]
    revealed: int
    wall: float
    profiles: dict[str, str]


def one_round(n: int, sample: int, base: Path, rng: random.Random, profile: bool) -> Figures:
    names = [name_of(i) for i in range(n)]
    signers = {who: identity.Identity.generate() for who in [*names, AGGREGATOR]}
    pins = identity.Pins(base / "pins.json", {})
    pins.check_all({who: s.public for who, s in signers.items()})  # written once: the steady state
    raw = signers[AGGREGATOR].key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (base / "aggregator.key").write_bytes(raw)
    (base / "setup.json").write_text(json.dumps({"members": names}))
    tree = transport.Tree(base / "SyftBox")
    (tree.root / "datasites").mkdir(parents=True)
    gone = set(rng.sample(names, n // 5))
    parties = [
        Party(who, Member(who), signers[who], rng.randrange(VALUE_UNITS + 1), drops=who in gone)
        for who in names
    ]
    staying = [p for p in parties if not p.drops]
    measured = {p.name for p in rng.sample(staying, min(sample, len(staying)))}
    scheduler = Scheduler()
    crowd = [p for p in parties if p.name not in measured]
    scheduler.spawn(crowd_party(scheduler, tree, pins, crowd, rng))
    member_profiler = cProfile.Profile(time.thread_time) if profile else None
    for i, party in enumerate(p for p in parties if p.name in measured):
        scheduler.spawn(sampled_party(scheduler, tree, pins, party, rng, member_profiler if i == 0 else None))
    aggregator: dict[str, Any] = {}
    scheduler.spawn(aggregator_party(scheduler, base, profile, aggregator))
    started = time.monotonic()
    scheduler.run()
    wall = time.monotonic() - started
    result = aggregator["result"]
    expected = masks.signed(sum(p.value + (p.noise or 0) for p in staying))
    sampled = [p for p in parties if p.name in measured]
    profiles = {}
    if profile:
        assert member_profiler is not None
        profiles = {"aggregator": aggregator["profile"], "a sampled member": profile_summary(member_profiler)}
    member_bytes = [
        sum(tree.file(p.name, ROUND, kind).stat().st_size for kind in MEMBER_FILES) for p in sampled
    ]
    neighbours = transport._read(tree, transport.Keyring(tree, pins), sampled[0].name, ROUND, "reveal")
    return Figures(
        members=n,
        neighbours=len(neighbours["reveals"]) if neighbours else 0,
        dropped=len(gone),
        exact=result.get("sum_units") == expected,
        aggregator_cpu=float(aggregator["cpu"]),
        aggregator_rss_mib=int(aggregator["rss_kib"]) / 1024,
        member_ms=[p.cpu * 1e3 for p in sampled],
        member_bytes=member_bytes,
        revealed=sum(p.outcome == "revealed" for p in sampled),
        wall=wall,
        profiles=profiles,
    )


def profile_summary(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(TOP)
    stats.sort_stats("tottime").print_stats(TOP)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


@contextlib.contextmanager
def workspace(where: str | None) -> Iterator[Path]:
    """A directory for the tree: tmpfs when there is one (fsync costs no disk there)."""
    parent = where or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    base = Path(tempfile.mkdtemp(prefix="cpu-tracker-secagg-", dir=parent))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", default="1000,10000", help="comma-separated network sizes")
    parser.add_argument("--sample", type=int, default=30, help="members whose CPU is measured (30)")
    parser.add_argument("--quick", action="store_true", help="100 members, 10 measured")
    parser.add_argument("--profile", action="store_true", help="cProfile summaries (top 15)")
    parser.add_argument("--dir", help="where to build the trees (default: a directory in /dev/shm)")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--aggregator-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.aggregator_child:
        return aggregator_child(Path(args.aggregator_child), args.profile)
    sizes = [100] if args.quick else [int(s) for s in args.members.split(",")]
    sample = 10 if args.quick else args.sample
    rng = random.Random(args.seed)
    print(
        f"one round, a fifth dropped after sharing; steps of {STEP:g} s, polls every {POLL:g} s (virtual)\n"
    )
    print(
        "| members | neighbours | sum exact | aggregator CPU s | aggregator peak RSS MiB "
        "| member CPU ms, mean (max) | bytes a member writes | wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    profiles: list[tuple[int, dict[str, str]]] = []
    for n in sizes:
        with workspace(args.dir) as base:
            got = one_round(n, sample, base, rng, args.profile)
        ms = got.member_ms
        print(
            f"| {n:,} | {got.neighbours} | {'yes' if got.exact else 'NO'} | {got.aggregator_cpu:.2f} "
            f"| {got.aggregator_rss_mib:.1f} | {sum(ms) / len(ms):.1f} ({max(ms):.1f}) "
            f"| {sum(got.member_bytes) / len(got.member_bytes):,.0f} | {got.wall:.0f} |",
            flush=True,
        )
        failed |= not got.exact or got.revealed != len(ms)
        profiles.append((n, got.profiles))
    for n, summary in profiles:
        for who, text in summary.items():
            print(f"\nprofile of {who} at {n:,} members (top {TOP} by cumulative, then by own time):\n")
            print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
