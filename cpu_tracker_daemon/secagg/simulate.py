"""One whole round in one process, every member and the aggregator, with the real cryptography:
what the tests and ``benchmarks/secagg_accuracy.py`` run. Not a transport."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from fractions import Fraction

from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.secagg import noise, transport
from cpu_tracker_daemon.secagg.protocol import Graph, Member, Roster, Survivors, graph_of, unmask

VALUE_UNITS = 10_000  # a member's value: 0 to 100 points on the 0.01 grid


@dataclass(frozen=True)
class Outcome:
    total: int  # what the aggregator unmasked
    expected: int  # the present members' values and noise, added up
    graph: Graph
    survivors: Survivors
    members_cpu: float  # CPU seconds of all members' rounds together
    aggregator_cpu: float
    bytes_per_member: float  # what a present member writes in a round: keys, shares, masked, reveal


def one_round(
    n: int,
    dropped: int,
    scale: float,
    rng: random.Random,
    beta_dropped: float = 0.2,
    beta_colluding: float = 0.2,
    local_scale: float | None = None,
) -> Outcome:
    """``n`` members with random values; ``dropped`` of them vanish after sharing. Each adds its
    share of the noise and, with ``local_scale``, discrete Laplace noise of its own."""
    names = [f"m{i:05d}@example.org" for i in range(n)]
    members = {name: Member(name) for name in names}
    keys = {name: m.public() for name, m in members.items()}
    roster = Roster("2026-12-01T12:00:00Z", keys, beta_dropped, beta_colluding, scale, local_scale or 1.0)
    started = time.process_time()
    graph = graph_of(roster, {name: m.accept(roster) for name, m in members.items()})
    boxes = {name: m.share(graph) for name, m in members.items()}
    shared = frozenset(names)
    opened = {
        name: m.open_inbox(graph, {s: b[name] for s, b in boxes.items() if name in b})
        for name, m in members.items()
    }
    values = {name: rng.randrange(VALUE_UNITS + 1) for name in names}
    local = Fraction(local_scale) if local_scale else None
    noises = {
        name: noise.share(scale, roster.calibrated, rng)
        + (discrete.discrete_laplace(local, rng) if local is not None else 0)
        for name in names
    }
    gone = set(rng.sample(names, dropped))
    masked = {
        name: members[name].masked(graph, shared, values[name], noises[name], opened[name])
        for name in names
        if name not in gone
    }
    survivors = Survivors(shared, frozenset(masked))
    for name in survivors.present:
        members[name].endorse(graph, survivors)
    reveals = {
        name: members[name].reveal(graph, survivors, survivors.present, opened[name])
        for name in survivors.present
    }
    members_cpu = time.process_time() - started
    round_id = roster.round_id
    written = [
        transport.message_bytes(round_id, "keys", transport.keys_body(keys[name]))
        + transport.message_bytes(round_id, "shares", transport.shares_body(roster, boxes[name]))
        + transport.message_bytes(round_id, "masked", {"roster": roster.digest.hex(), "masked": masked[name]})
        + transport.message_bytes(round_id, "reveal", transport.reveal_body(roster, reveals[name]))
        for name in survivors.present
    ]
    started = time.process_time()
    total = unmask(graph, survivors, masked, reveals)
    return Outcome(
        total=total,
        expected=sum(values[name] + noises[name] for name in survivors.present),
        graph=graph,
        survivors=survivors,
        members_cpu=members_cpu,
        aggregator_cpu=time.process_time() - started,
        bytes_per_member=sum(written) / len(written),
    )
