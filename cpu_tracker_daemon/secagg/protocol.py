"""The rounds of one secure aggregation as pure functions over the messages they exchange;
transport, signatures, files and deadlines are the caller's."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cpu_tracker_daemon.secagg import masks, noise, shares

MAX_MEMBERS = 100_000  # 10^4 grid units each: the sum and its noise stay within 2^31
COMPLETE_UP_TO = 16  # rounds this small use every pair; larger ones a sparse graph (SecAgg+)
_COMMIT = b"cpu-tracker secagg v2 graph commitment\n"
_SEED = b"cpu-tracker secagg v2 graph seed\n"
_ROSTER = b"cpu-tracker secagg v2 roster\n"
_SURVIVORS = b"cpu-tracker secagg v2 survivors\n"
_WENT_ON = b"cpu-tracker secagg v2 went on\n"


class ProtocolError(ValueError):
    """A message that breaks the protocol: the round aborts for whoever meets it."""


def commitment(randomness: bytes) -> bytes:
    """What a member publishes of its graph randomness before the roster is fixed."""
    return hashlib.sha256(_COMMIT + randomness).digest()


@dataclass(frozen=True)
class PublicKeys:
    """What a member publishes at a round's start (``keys.json``), signed by its identity."""

    c: bytes  # X25519: shares are sealed under agreement with it
    s: bytes  # X25519: pairwise mask seeds are agreed with it
    commit: bytes  # SHA-256 of this round's graph randomness, opened once the roster is fixed


@dataclass(frozen=True, eq=False)
class Roster:
    """Round 1: who is in the round with which keys, and the calibration (``roster.json``).

    ``beta_dropped`` members may be declared absent and ``beta_colluding`` may collude, counted
    apart: the noise is calibrated so that the members who are neither still add all of it."""

    round_id: str
    keys: Mapping[str, PublicKeys]
    beta_dropped: float
    beta_colluding: float
    scale: float  # the discrete Laplace scale of the noise on the sum, in grid units
    local_scale: float  # the discrete Laplace scale of each member's own noise, in grid units
    members: tuple[str, ...] = field(init=False)
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        members = tuple(sorted(self.keys))
        if not 1 <= len(members) <= MAX_MEMBERS:
            raise ProtocolError(f"a roster names 1 to {MAX_MEMBERS} distinct members")
        betas = (self.beta_dropped, self.beta_colluding)
        if not (all(0 <= b < 1 for b in betas) and sum(betas) < 1):
            raise ProtocolError("a roster's betas are in [0, 1) and add up to less than 1")
        if not all(math.isfinite(x) and x > 0 for x in (self.scale, self.local_scale)):
            raise ProtocolError("a roster's noise scales are positive")
        if any(len(k.c) != 32 or len(k.s) != 32 or len(k.commit) != 32 for k in self.keys.values()):
            raise ProtocolError("a roster's keys and commitments are 32 bytes each")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "digest", hashlib.sha256(_ROSTER + self.canonical()).digest())

    @property
    def context(self) -> str:
        """What every box of this round is bound to: the round and this exact roster, so a box
        sealed under one roster opens under no other (an aggregator that shows two rosters
        cannot carry shares from one to the other)."""
        return f"{self.round_id}|{self.digest.hex()}"

    def canonical(self) -> bytes:
        """The bytes the roster's digest covers: everything a member acts on."""
        body = {
            "round": self.round_id,
            "beta_dropped": self.beta_dropped,
            "beta_colluding": self.beta_colluding,
            "scale": self.scale,
            "local_scale": self.local_scale,
            "keys": [
                [m, self.keys[m].c.hex(), self.keys[m].s.hex(), self.keys[m].commit.hex()]
                for m in self.members
            ],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @property
    def max_dropped(self) -> int:
        return math.floor(self.beta_dropped * len(self.members) + 1e-9)

    @property
    def max_colluding(self) -> int:
        return math.floor(self.beta_colluding * len(self.members) + 1e-9)

    @property
    def calibrated(self) -> int:
        """How many members' noise shares make the whole noise: those neither declared absent
        nor colluding, at the worst."""
        return noise.calibrated_members(len(self.members), self.max_dropped, self.max_colluding)

    @property
    def quorum(self) -> int:
        """Endorsements of one survivor set a member needs before it reveals: more than half of
        the roster plus its colluders, so no two sets can both reach it."""
        return (len(self.members) + self.max_colluding) // 2 + 1

    @property
    def must_arrive(self) -> int:
        """Masked values the round needs: all but the absent it is calibrated for, and a quorum."""
        return max(len(self.members) - self.max_dropped, self.quorum)


@dataclass(frozen=True, eq=False)
class Graph:
    """Who masks and shares with whom: fixed by randomness every member committed to before the
    roster was, so neither the aggregator nor a member can choose its place in it."""

    roster: Roster
    seed: bytes
    _at: dict[str, int] = field(init=False, repr=False)
    _order: tuple[str, ...] = field(init=False, repr=False)
    _ring: tuple[str, ...] = field(init=False, repr=False)  # the order with half of it wrapped on each side

    def __post_init__(self) -> None:
        order = tuple(
            sorted(self.roster.members, key=lambda m: hashlib.sha256(self.seed + m.encode()).digest())
        )
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_at", {m: i for i, m in enumerate(order)})
        half = self.half
        object.__setattr__(self, "_ring", order[len(order) - half :] + order + order[:half])

    @property
    def half(self) -> int:
        n = len(self._order)
        return (n - 1) // 2 if n <= COMPLETE_UP_TO else min((n - 1) // 2, 3 * math.ceil(math.log2(n)))

    def neighbours(self, member: str) -> tuple[str, ...]:
        """All others in a small round; in a large one the k nearest on the ring (k = 6
        ceil(log2 n): 42 at 100 members, 60 at 1,000)."""
        n = len(self._order)
        if n <= COMPLETE_UP_TO:
            return tuple(m for m in self.roster.members if m != member)
        at, half = self._at[member], self.half  # ring[at + half] is the member itself
        return self._ring[at : at + half] + self._ring[at + half + 1 : at + 2 * half + 1]

    def degree(self) -> int:
        """How many neighbours each member has: the same for all."""
        n = len(self._order)
        return n - 1 if n <= COMPLETE_UP_TO else 2 * self.half

    def threshold(self, member: str) -> int:
        """Shares of ``member``'s secrets needed to rebuild them: a majority of its neighbours."""
        return self.degree() // 2 + 1

    def index(self, owner: str, holder: str) -> int:
        """The index of the share of ``owner``'s secrets that ``holder`` holds: its place among
        ``owner``'s neighbours, from 1 (0 for one who holds none)."""
        n = len(self._order)
        if n <= COMPLETE_UP_TO:
            peers = self.neighbours(owner)
            return peers.index(holder) + 1 if holder in peers else 0
        at, other = self._at.get(owner), self._at.get(holder)
        if at is None or other is None:
            return 0
        half, step = self.half, (other - at) % n  # holder is ``step`` places after owner on the ring
        if 0 < step <= half:  # after it: indices half + 1 .. 2 half
            return half + step
        if n - half <= step:  # before it: indices 1 .. half
            return step - (n - half) + 1
        return 0


def graph_of(roster: Roster, openings: Mapping[str, bytes]) -> Graph:
    """The round's graph from every roster member's opened randomness; one that does not open
    its commitment is a protocol error naming the member (the round ends before any share)."""
    parts = []
    for member in roster.members:
        r = openings.get(member)
        if r is None or len(r) != 32 or commitment(r) != roster.keys[member].commit:
            raise ProtocolError(f"{member}'s graph randomness does not open its commitment")
        parts.append(r)
    return Graph(roster, hashlib.sha256(_SEED + roster.digest + b"".join(parts)).digest())


@dataclass(frozen=True)
class Survivors:
    """Round 4: who shared (U2) and whose masked value arrived (U3 = ``present``)."""

    shared: frozenset[str]
    present: frozenset[str]

    @property
    def dropped(self) -> frozenset[str]:
        return self.shared - self.present

    def digest(self, roster: Roster) -> bytes:
        """What a member endorses: this set, in this roster (content-addressed)."""
        body = json.dumps([sorted(self.shared), sorted(self.present)], separators=(",", ":")).encode()
        return hashlib.sha256(_SURVIVORS + roster.digest + body).digest()


def went_on(roster: Roster, shared: Set[str]) -> bytes:
    """The digest of a list of who went on (U2) in a roster: what a member's signed masked value
    names, so that it proves an arrival only in a survivor set with that same U2 (an aggregator
    that showed one member another U2 cannot list it as arrived in the set the others endorse)."""
    body = json.dumps(sorted(shared), separators=(",", ":")).encode()
    return hashlib.sha256(_WENT_ON + roster.digest + body).digest()


Opened = tuple[int, bytes, bytes]  # a neighbour's share index, its share of b, its share of s
Reveal = tuple[str, shares.Share]  # ("b", share of the self-mask seed) or ("s", share of the mask key)


@dataclass
class Member:
    """One member's side of one round. Its keys and randomness are for this round only
    (:meth:`rekey` before each): the aggregator rebuilds the mask key of a member that drops,
    and with it and a later round's self-mask seed could unmask that member, were it reused."""

    name: str
    c_key: X25519PrivateKey = field(default_factory=masks.new_key)
    s_key: X25519PrivateKey = field(default_factory=masks.new_key)
    _randomness: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    _seed: bytes | None = field(default=None, repr=False)  # b: this round's self-mask seed
    _accepted: bytes | None = field(default=None, repr=False)  # the one roster it acts on
    _shared: frozenset[str] | None = field(default=None, repr=False)  # the U2 it masked with
    _endorsed: bytes | None = field(default=None, repr=False)  # the one survivor set it answers

    def public(self) -> PublicKeys:
        return PublicKeys(
            masks.public_bytes(self.c_key), masks.public_bytes(self.s_key), commitment(self._randomness)
        )

    def rekey(self) -> PublicKeys:
        """Fresh key pairs and randomness for a new round; the old ones are forgotten."""
        self.c_key, self.s_key, self._randomness = masks.new_key(), masks.new_key(), os.urandom(32)
        self._seed = self._accepted = self._endorsed = None
        self._shared = None
        return self.public()

    def accept(self, roster: Roster) -> bytes:
        """Round 1: check this member is in ``roster`` with its own keys; its randomness, to open.
        It acts on one roster a round: a second, different one is refused."""
        if roster.keys.get(self.name) != self.public():
            raise ProtocolError(f"{self.name} is not in the roster of round {roster.round_id} with its keys")
        if self._accepted is not None and self._accepted != roster.digest:
            raise ProtocolError("a second, different roster in one round: the aggregator equivocates")
        self._accepted = roster.digest
        return self._randomness

    def share(self, graph: Graph) -> dict[str, bytes]:
        """Round 2: a fresh self-mask seed; shares of it and of the mask key, one sealed box
        per neighbour."""
        roster = graph.roster
        self.accept(roster)
        self._seed = os.urandom(32)
        peers = graph.neighbours(self.name)
        t = graph.threshold(self.name)
        seed_shares = shares.split(self._seed, t, len(peers))
        key_shares = shares.split(masks.private_bytes(self.s_key), t, len(peers))
        out = {}
        for peer, (index, b), (_, s) in zip(peers, seed_shares, key_shares, strict=True):
            payload = index.to_bytes(4, "big") + b + s
            out[peer] = shares.seal(self.c_key, roster.keys[peer].c, roster.context, self.name, peer, payload)
        return out

    def open_inbox(self, graph: Graph, boxes: Mapping[str, bytes]) -> dict[str, Opened]:
        """:meth:`check_inbox`, raising for the first box that does not open."""
        opened, bad = self.check_inbox(graph, boxes)
        if bad:
            raise ProtocolError(f"the box from {bad[0]} does not open")
        return opened

    def check_inbox(self, graph: Graph, boxes: Mapping[str, bytes]) -> tuple[dict[str, Opened], list[str]]:
        """Round 2, received: open every box from a neighbour now, before anything is spent;
        return what opened and who sent a box that did not (garbage, a replay, a share with no
        index, or a box from someone who is not a neighbour): the aggregator drops both ends of
        such a pair before anyone spends."""
        roster = graph.roster
        self.accept(roster)
        opened: dict[str, Opened] = {}
        bad: list[str] = []
        neighbours = set(graph.neighbours(self.name))
        for sender, box in sorted(boxes.items()):
            if sender not in neighbours:
                bad.append(sender)
                continue
            try:
                payload = shares.unseal(
                    self.c_key, roster.keys[sender].c, roster.context, sender, self.name, box
                )
            except ValueError:  # ShareError, and a box too short for its nonce and tag
                bad.append(sender)
                continue
            index = int.from_bytes(payload[:4], "big")
            if len(payload) != 68 or index != graph.index(sender, self.name):
                bad.append(sender)
                continue
            opened[sender] = (index, payload[4:36], payload[36:68])
        return opened, bad

    def masked(
        self, graph: Graph, shared: Set[str], value: int, noise_share: int, opened: Mapping[str, Opened]
    ) -> int:
        """Round 3: value + noise + self mask + a pairwise mask with each neighbour in ``shared``
        (U2, as the aggregator says who goes on), mod 2^32. Refused before anything is spent
        unless this member is in U2, U2 is as large as the round needs, at least a threshold of
        its neighbours are in it, and it opened the box of every neighbour in it: a member
        masking with fewer would leave its value under its own self mask alone, which its
        neighbours reveal. The caller records the spend before sending it."""
        if self._seed is None:
            raise ProtocolError("masked() before share(): the self-mask seed is not drawn")
        roster = graph.roster
        shared = frozenset(shared)
        if self.name not in shared or not shared <= set(roster.members):
            raise ProtocolError("the list of who goes on leaves this member out or names outsiders")
        if len(shared) < roster.must_arrive:
            raise ProtocolError(
                f"only {len(shared)} members go on, fewer than the {roster.must_arrive} the round needs"
            )
        peers = [p for p in graph.neighbours(self.name) if p in shared]
        if len(peers) < graph.threshold(self.name):
            raise ProtocolError(
                f"only {len(peers)} of this member's neighbours go on, "
                f"fewer than {graph.threshold(self.name)}"
            )
        missing = [p for p in peers if p not in opened]
        if missing:
            raise ProtocolError(f"no box that opens from {', '.join(missing[:3])}, who goes on")
        self._shared = shared
        total = value + noise_share + masks.self_mask(self._seed, roster.round_id)
        for peer in peers:
            seed = masks.agreed(self.s_key, roster.keys[peer].s, roster.round_id, "mask")
            total += masks.pairwise(self.name, peer, seed)
        return total % masks.MODULUS

    def endorse(self, graph: Graph, survivors: Survivors) -> bytes:
        """Round 4: the digest this member signs for the survivor set it was shown. It answers
        one set a round: a second, different one is refused (an aggregator that shows two is
        equivocating)."""
        roster = graph.roster
        if not survivors.present <= survivors.shared <= set(roster.members):
            raise ProtocolError("the survivor list names members outside the round")
        if survivors.shared != self._shared:
            raise ProtocolError("the survivor list's U2 is not the one this member masked with")
        if len(survivors.present) < roster.must_arrive:
            raise ProtocolError(
                f"only {len(survivors.present)} of {len(roster.members)} members arrived, fewer than the "
                f"{roster.must_arrive} the round needs: nothing is revealed"
            )
        if self.name not in survivors.present:
            raise ProtocolError(f"{self.name} is not among the survivors it is asked to unmask")
        near = graph.neighbours(self.name)
        if len(survivors.present.intersection(near)) < graph.threshold(self.name):
            raise ProtocolError(
                f"fewer than {graph.threshold(self.name)} of {self.name}'s {len(near)} neighbours arrived: "
                "a set that isolates members is not answered"
            )
        digest = survivors.digest(roster)
        if self._endorsed is not None and self._endorsed != digest:
            raise ProtocolError("a second, different survivor set in one round: the aggregator equivocates")
        self._endorsed = digest
        return digest

    def reveal(
        self, graph: Graph, survivors: Survivors, endorsers: Set[str], opened: Mapping[str, Opened]
    ) -> dict[str, Reveal]:
        """Round 5: for each neighbour, the one share the endorsed survivor set allows, once
        ``endorsers`` (roster members whose signatures over the same set the caller checked)
        reach the quorum."""
        roster = graph.roster
        if self._endorsed is None or self._endorsed != survivors.digest(roster):
            raise ProtocolError("asked to reveal for a survivor set this member did not endorse")
        valid = set(endorsers) & set(roster.members)
        if len(valid) < roster.quorum:
            raise ProtocolError(
                f"only {len(valid)} members endorsed the survivor set, {roster.quorum} needed: "
                "nothing is revealed"
            )
        out: dict[str, Reveal] = {}
        for peer in graph.neighbours(self.name):
            if peer not in survivors.shared or peer not in opened:
                continue
            index, b, s = opened[peer]
            out[peer] = ("b", (index, b)) if peer in survivors.present else ("s", (index, s))
        return out


def unmask(
    graph: Graph,
    survivors: Survivors,
    masked: Mapping[str, int],
    reveals: Mapping[str, Mapping[str, Reveal]],
) -> int:
    """Round 6, the aggregator: the signed sum of the present members' values and noise.
    ``reveals`` maps each revealer to what it revealed about each neighbour; a share at another
    index than the revealer holds is its sender's fault and left out. Raises ProtocolError when
    a secret cannot be rebuilt from agreeing shares."""
    roster = graph.roster
    found: dict[tuple[str, str], dict[int, bytes]] = defaultdict(dict)
    for revealer, revealed in reveals.items():
        for about, (kind, (index, share)) in revealed.items():
            if about in roster.keys and index == graph.index(about, revealer) and index > 0:
                found[about, kind][index] = share
    total = sum(masked[m] for m in survivors.present)
    for member in sorted(survivors.present):
        seed = _rebuild(graph, member, "b", found)
        total -= masks.self_mask(seed, roster.round_id)
    for gone in sorted(survivors.dropped):
        opens = functools.partial(_opens, roster.keys[gone].s)
        key = masks.key_from(_rebuild(graph, gone, "s", found, opens))
        for peer in graph.neighbours(gone):
            if peer in survivors.present:  # it added its mask for the pair (peer, gone)
                seed = masks.agreed(key, roster.keys[peer].s, roster.round_id, "mask")
                total -= masks.pairwise(peer, gone, seed)
    return masks.signed(total)


def _opens(public: bytes, raw: bytes) -> bool:
    """Whether ``raw`` is the private half of the X25519 key ``public`` (as the roster has it)."""
    return masks.public_bytes(masks.key_from(raw)) == public


def _rebuild(
    graph: Graph,
    member: str,
    kind: str,
    found: Mapping[tuple[str, str], dict[int, bytes]],
    check: Callable[[bytes], bool] | None = None,
) -> bytes:
    """``member``'s secret from its neighbours' shares. A secret ``check`` can test (a mask key
    against its public half in the roster) is taken from the first window of ``t`` shares it
    passes, so one garbage share among ``t + 1`` or more is left out and none is ever believed.
    Without ``check``: with ``t`` shares the secret is believed; with more, two subsets of ``t``
    that overlap in all but one share must agree, and windows are tried in turn, so one garbage
    share among ``t + 2`` or more is left out, not believed. Each window's Lagrange coefficients
    come from ``shares.combine``'s cache of Combiners: members whose revealers sit at the same
    indices (all of them when nobody dropped) share them."""
    by_index = found.get((member, kind), {})
    t = graph.threshold(member)
    if len(by_index) < t:
        raise ProtocolError(f"only {len(by_index)} shares of {member}'s {kind}, {t} needed: the round aborts")
    ordered = sorted(by_index.items())
    if check is not None:
        for start in range(len(ordered) if len(ordered) > t else 1):
            window = ordered[start:] + ordered[:start]
            secret = shares.combine(window[:t])
            if check(secret):
                return secret
    elif len(ordered) == t:
        return shares.combine(ordered)
    else:
        for start in range(len(ordered)):
            window = ordered[start:] + ordered[:start]
            secret = shares.combine(window[:t])
            if shares.combine(window[1 : t + 1]) == secret:
                return secret
    raise ProtocolError(f"the shares of {member}'s {kind} disagree: neighbours sent garbage")
