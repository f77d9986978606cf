"""The rounds of one secure aggregation, as pure functions over the messages they exchange.

A member shares its secrets with its neighbours (round 2), sends its masked value (3), and,
once the aggregator names who arrived (4), reveals for each neighbour one share: of the self
mask seed of one who arrived, or of the mask key of one who shared and then dropped (5). The
aggregator removes the masks and reads the noisy sum (6). Transport, files and deadlines are
the caller's; see docs/secure-aggregation.md.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cpu_tracker_daemon.secagg import masks, noise, shares

MAX_MEMBERS = 100_000  # 10^4 grid units each: the sum and its noise stay within 2^31
COMPLETE_UP_TO = 16  # rounds this small use every pair; larger ones a sparse graph (SecAgg+)


class ProtocolError(ValueError):
    """A message that breaks the protocol: the round aborts for whoever meets it."""


@dataclass(frozen=True)
class PublicKeys:
    """What a member publishes once per key epoch (``keys.json``)."""

    c: bytes  # X25519: shares are sealed under agreement with it
    s: bytes  # X25519: pairwise mask seeds are agreed with it


@dataclass(frozen=True)
class Roster:
    """Round 1: who is in the round, the calibration, and the noise (``roster.json``)."""

    round_id: str
    members: tuple[str, ...]
    beta: float  # the fraction that may drop out or collude
    scale: float  # the discrete Laplace scale of the noise on the sum, in grid units

    def __post_init__(self) -> None:
        if len(set(self.members)) != len(self.members) or not 1 <= len(self.members) <= MAX_MEMBERS:
            raise ProtocolError(f"a roster names 1 to {MAX_MEMBERS} distinct members")
        if not 0 <= self.beta < 1 or not (math.isfinite(self.scale) and self.scale > 0):
            raise ProtocolError("a roster's beta is in [0, 1) and its noise scale positive")

    @property
    def calibrated(self) -> int:
        """How many members' noise shares make the whole noise; fewer arriving aborts."""
        return noise.calibrated_members(len(self.members), self.beta)

    def neighbours(self, member: str) -> tuple[str, ...]:
        """The members ``member`` masks with and shares with: all others in a small round; in a
        large one its k nearest on a ring ordered by a hash of the round (k = 6 ceil(log2 n):
        42 at 100 members, 60 at 1,000), the same graph for everyone. With a fifth of them
        dropped at random, fewer than a majority of a member's neighbours survive with odds of
        1.4e-5 at 100 members and 2e-7 at 1,000 (binomial)."""
        n = len(self.members)
        if n <= COMPLETE_UP_TO:
            return tuple(m for m in self.members if m != member)
        order = sorted(self.members, key=lambda m: hashlib.sha256(f"{self.round_id}|{m}".encode()).digest())
        at = order.index(member)
        half = min((n - 1) // 2, 3 * math.ceil(math.log2(n)))
        return tuple(order[(at + d) % n] for d in range(-half, half + 1) if d != 0)

    def threshold(self, member: str) -> int:
        """Shares of ``member``'s secrets needed to rebuild them: a majority of its neighbours."""
        return len(self.neighbours(member)) // 2 + 1


@dataclass(frozen=True)
class Survivors:
    """Round 4: who shared (U2) and whose masked value arrived (U3 = ``present``)."""

    shared: frozenset[str]
    present: frozenset[str]

    @property
    def dropped(self) -> frozenset[str]:
        return self.shared - self.present


Reveal = tuple[str, shares.Share]  # ("b", share of the self-mask seed) or ("s", share of the mask key)


@dataclass
class Member:
    """One member's side of the rounds. Its keys are for one round only (:meth:`rekey` before
    each): the aggregator rebuilds the mask key of a member that drops, and with it and the
    self-mask seed of a later round could unmask that member, were the key used again."""

    name: str
    c_key: X25519PrivateKey = field(default_factory=masks.new_key)
    s_key: X25519PrivateKey = field(default_factory=masks.new_key)
    _seed: bytes | None = field(default=None, repr=False)  # b: this round's self-mask seed

    def public(self) -> PublicKeys:
        return PublicKeys(masks.public_bytes(self.c_key), masks.public_bytes(self.s_key))

    def rekey(self) -> PublicKeys:
        """Fresh key pairs for a new round; the old ones are forgotten."""
        self.c_key, self.s_key, self._seed = masks.new_key(), masks.new_key(), None
        return self.public()

    def share(self, roster: Roster, keys: Mapping[str, PublicKeys]) -> dict[str, bytes]:
        """Round 2: a fresh self-mask seed; shares of it and of the mask key, one sealed box
        per neighbour."""
        if self.name not in roster.members:
            raise ProtocolError(f"{self.name} is not in the roster of round {roster.round_id}")
        self._seed = os.urandom(32)
        peers = roster.neighbours(self.name)
        t = roster.threshold(self.name)
        seed_shares = shares.split(self._seed, t, len(peers))
        key_shares = shares.split(masks.private_bytes(self.s_key), t, len(peers))
        out = {}
        for peer, (index, b), (_, s) in zip(peers, seed_shares, key_shares, strict=True):
            payload = index.to_bytes(4, "big") + b + s
            out[peer] = shares.seal(self.c_key, keys[peer].c, roster.round_id, self.name, peer, payload)
        return out

    def masked(
        self, roster: Roster, keys: Mapping[str, PublicKeys], shared: Set[str], value: int, noise_share: int
    ) -> int:
        """Round 3: value + noise share + self mask + a pairwise mask with each neighbour that
        shared (the aggregator's U2), mod 2^32. The caller records the spend before sending it."""
        if self._seed is None:
            raise ProtocolError("masked() before share(): the self-mask seed is not drawn")
        total = value + noise_share + masks.self_mask(self._seed, roster.round_id)
        for peer in roster.neighbours(self.name):
            if peer in shared:
                seed = masks.agreed(self.s_key, keys[peer].s, roster.round_id, "mask")
                total += masks.pairwise(self.name, peer, seed)
        return total % masks.MODULUS

    def reveal(
        self, roster: Roster, keys: Mapping[str, PublicKeys], survivors: Survivors, inbox: Mapping[str, bytes]
    ) -> dict[str, Reveal]:
        """Round 5: for each neighbour, the one share the survivor list allows. A list that is
        not the roster's, names a member both ways, or leaves fewer than the calibration is
        refused: revealing then could expose a value or leave too little noise."""
        members = set(roster.members)
        if not survivors.present <= survivors.shared <= members:
            raise ProtocolError("the survivor list names members outside the round")
        if len(survivors.present) < roster.calibrated:
            raise ProtocolError(
                f"only {len(survivors.present)} of {len(members)} members arrived, fewer than the "
                f"{roster.calibrated} whose noise the round was calibrated for: nothing is revealed"
            )
        if self.name not in survivors.present:
            raise ProtocolError(f"{self.name} is not among the survivors it is asked to unmask")
        out: dict[str, Reveal] = {}
        for peer in roster.neighbours(self.name):
            if peer not in survivors.shared or peer not in inbox:
                continue
            payload = shares.unseal(self.c_key, keys[peer].c, roster.round_id, peer, self.name, inbox[peer])
            index, b, s = int.from_bytes(payload[:4], "big"), payload[4:36], payload[36:68]
            out[peer] = ("b", (index, b)) if peer in survivors.present else ("s", (index, s))
        return out


def unmask(
    roster: Roster,
    keys: Mapping[str, PublicKeys],
    survivors: Survivors,
    masked: Mapping[str, int],
    reveals: Mapping[str, Mapping[str, Reveal]],
) -> int:
    """Round 6, the aggregator: the signed sum of the present members' values and noise
    shares. Raises ProtocolError when a secret cannot be rebuilt from agreeing shares."""
    total = sum(masked[m] for m in survivors.present)
    for member in sorted(survivors.present):
        seed = _rebuild(roster, member, "b", reveals)
        total -= masks.self_mask(seed, roster.round_id)
    for gone in sorted(survivors.dropped):
        key = masks.key_from(_rebuild(roster, gone, "s", reveals))
        for peer in roster.neighbours(gone):
            if peer in survivors.present:  # it added its mask for the pair (peer, gone)
                seed = masks.agreed(key, keys[peer].s, roster.round_id, "mask")
                total -= masks.pairwise(peer, gone, seed)
    return masks.signed(total)


def _rebuild(roster: Roster, member: str, kind: str, reveals: Mapping[str, Mapping[str, Reveal]]) -> bytes:
    """``member``'s secret from its neighbours' shares; with more than needed, two different
    subsets must agree (a garbage share from one neighbour is caught, not believed)."""
    found: set[shares.Share] = set()
    for revealed in reveals.values():
        what, share = revealed.get(member, ("", (0, b"")))
        if what == kind:
            found.add(share)
    t = roster.threshold(member)
    if len(found) < t:
        raise ProtocolError(f"only {len(found)} shares of {member}'s {kind}, {t} needed: the round aborts")
    ordered = sorted(found)
    secret = shares.combine(ordered[:t])
    if len(ordered) > t and shares.combine(ordered[-t:]) != secret:
        raise ProtocolError(f"the shares of {member}'s {kind} disagree: a neighbour sent garbage")
    return secret
