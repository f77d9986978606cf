"""One whole round in one process, every member and the aggregator, with the real cryptography:
what the tests and ``benchmarks/secagg_accuracy.py`` run. Not a transport."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from cpu_tracker_daemon.secagg import noise, transport
from cpu_tracker_daemon.secagg.protocol import Member, Roster, Survivors, unmask

VALUE_UNITS = 10_000  # a member's value: 0 to 100 points on the 0.01 grid


@dataclass(frozen=True)
class Outcome:
    total: int  # what the aggregator unmasked
    expected: int  # the present members' values and noise shares, added up
    roster: Roster
    survivors: Survivors
    members_cpu: float  # CPU seconds of all members' rounds together
    aggregator_cpu: float
    bytes_per_member: float  # what a present member writes in a round: keys, shares, masked, reveal


def one_round(n: int, dropped: int, beta: float, scale: float, rng: random.Random) -> Outcome:
    """``n`` members with random values; ``dropped`` of them vanish after sharing."""
    names = [f"m{i:05d}@example.org" for i in range(n)]
    roster = Roster("2026-12-01T12:00:00Z", tuple(names), beta, scale)
    members = {name: Member(name) for name in names}
    keys = {name: m.public() for name, m in members.items()}
    started = time.process_time()
    boxes = {name: m.share(roster, keys) for name, m in members.items()}
    shared = frozenset(names)
    values = {name: rng.randrange(VALUE_UNITS + 1) for name in names}
    shares = {name: noise.share(scale, roster.calibrated, rng) for name in names}
    gone = set(rng.sample(names, dropped))
    masked = {
        name: members[name].masked(roster, keys, shared, values[name], shares[name])
        for name in names
        if name not in gone
    }
    survivors = Survivors(shared, frozenset(masked))
    reveals = {
        name: members[name].reveal(
            roster, keys, survivors, {s: b[name] for s, b in boxes.items() if name in b}
        )
        for name in survivors.present
    }
    members_cpu = time.process_time() - started
    round_id = roster.round_id
    written = [
        transport.message_bytes(round_id, "keys", transport.keys_body(keys[name]))
        + transport.message_bytes(round_id, "shares", transport.shares_body(boxes[name]))
        + transport.message_bytes(round_id, "masked", {"masked": masked[name]})
        + transport.message_bytes(round_id, "reveal", transport.reveal_body(reveals[name]))
        for name in survivors.present
    ]
    started = time.process_time()
    total = unmask(roster, keys, survivors, masked, reveals)
    return Outcome(
        total=total,
        expected=sum(values[name] + shares[name] for name in survivors.present),
        roster=roster,
        survivors=survivors,
        members_cpu=members_cpu,
        aggregator_cpu=time.process_time() - started,
        bytes_per_member=sum(written) / len(written),
    )
