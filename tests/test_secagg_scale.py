"""The secure round's fast paths (issue 30) give what the slow ones gave: the graph's indices in
constant time, Combiners reused across secrets, a mask key checked against its public half, the
quorum checked on a sample whose size bounds the odds, and a round over files at a size where
the sample is used, still unmasking the exact sum."""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import permissions
from cpu_tracker_daemon.secagg import identity, masks, shares, transport
from cpu_tracker_daemon.secagg.protocol import (
    Graph,
    ProtocolError,
    PublicKeys,
    Roster,
    _opens,
    _rebuild,
)
from cpu_tracker_daemon.secagg.simulate import one_round
from tests.bench import benchmark

ROUND = "29000001"


def roster_of(n: int) -> Roster:
    keys = {
        f"m{i:05d}@example.org": PublicKeys(os.urandom(32), os.urandom(32), os.urandom(32)) for i in range(n)
    }
    return Roster(ROUND, keys, 0.2, 0.2, 20_000.0, 2_000.0)


class TestGraph:
    @pytest.mark.parametrize("n", [3, 16, 17, 40, 257])
    def test_index_is_the_place_among_the_owners_neighbours(self, n: int) -> None:
        """Graph.index, computed from the ring's positions, is the holder's place among the
        owner's neighbours from 1, and 0 for a member who is not one, for every pair."""
        graph = Graph(roster_of(n), os.urandom(32))
        members = graph.roster.members
        for owner in members:
            peers = graph.neighbours(owner)
            assert len(peers) // 2 + 1 == graph.threshold(owner)
            for holder in members:
                expected = peers.index(holder) + 1 if holder in peers else 0
                assert expected == graph.index(owner, holder)
        assert graph.index(members[0], "stranger@example.org") == 0


def split_found(
    secret: bytes, t: int, count: int, kind: str, member: str
) -> dict[tuple[str, str], dict[int, bytes]]:
    return {(member, kind): dict(shares.split(secret, t, count))}


class TestRebuild:
    def test_a_reused_combiner_gives_the_same_secrets_as_fresh_combines(self) -> None:
        """One Combiner for an index set rebuilds every secret shared there, byte for byte as a
        fresh combine of each does."""
        rng = random.Random(30)
        indices = sorted(rng.sample(range(1, 61), 31))
        combiner = shares.Combiner(indices)
        for _ in range(20):
            secret = os.urandom(32)
            by_index = dict(shares.split(secret, 31, 60))
            values = [by_index[i] for i in indices]
            fresh = shares.Combiner(list(indices)).combine(values)
            assert secret == fresh == combiner.combine(values)
            garbage = [os.urandom(32) for _ in indices]  # the same wrong secret either way
            assert shares.Combiner(list(indices)).combine(garbage) == combiner.combine(garbage)

    def test_a_mask_key_comes_from_the_first_window_its_public_half_matches(self) -> None:
        """One garbage share among t + 1 shares of a mask key: the window without it is found by
        the key's public half, where two agreeing windows could not be told apart."""
        graph = Graph(roster_of(40), os.urandom(32))
        member = graph.roster.members[0]
        t = graph.threshold(member)
        key = masks.new_key()
        found = split_found(masks.private_bytes(key), t, graph.degree(), "s", member)
        kept = dict(sorted(found[member, "s"].items())[: t + 1])
        first = min(kept)
        kept[first] = bytes(32)
        public = masks.public_bytes(key)
        rebuilt = _rebuild(graph, member, "s", {(member, "s"): kept}, lambda raw: _opens(public, raw))
        assert public == masks.public_bytes(masks.key_from(rebuilt))

    def test_a_garbage_share_among_exactly_t_is_never_believed(self) -> None:
        """With exactly t shares of a mask key, one of them garbage, the round aborts: the key
        the shares give does not match the roster's public half."""
        graph = Graph(roster_of(40), os.urandom(32))
        member = graph.roster.members[0]
        t = graph.threshold(member)
        key = masks.new_key()
        found = split_found(masks.private_bytes(key), t, graph.degree(), "s", member)
        kept = dict(sorted(found[member, "s"].items())[:t])
        kept[min(kept)] = bytes(32)
        public = masks.public_bytes(key)
        with pytest.raises(ProtocolError, match="disagree"):
            _rebuild(graph, member, "s", {(member, "s"): kept}, lambda raw: _opens(public, raw))

    @pytest.mark.slow
    @pytest.mark.parametrize("dropped", [0, 40])
    def test_a_round_at_200_members_unmasks_the_exact_sum(self, dropped: int) -> None:
        """200 members (a sparse graph; with nobody dropped every member's revealers sit at the
        same indices and share Combiners), a fifth dropped or none: the exact sum."""
        done = one_round(200, dropped, 20_000.0, random.Random(dropped), local_scale=2_000.0)
        assert done.expected == done.total


class TestSampleSize:
    @pytest.mark.parametrize("n", [100, 1_000, 10_000, 100_000])
    def test_the_least_sample_that_bounds_the_odds(self, n: int) -> None:
        """For every number of claimed endorsements from the quorum to the roster, the sample is
        the least s with ((quorum - 1) / claimed)^s <= 2^-40, or all of them."""
        colluding = n // 5
        quorum = (n + colluding) // 2 + 1
        for claimed in sorted({quorum, quorum + 1, quorum + n // 20, (4 * n) // 5, n}):
            s = transport.sample_size(claimed, quorum)
            if s < claimed:
                assert s * math.log((quorum - 1) / claimed) <= -40 * math.log(2)
                assert (s - 1) * math.log((quorum - 1) / claimed) > -40 * math.log(2)
            else:
                assert claimed == s

    def test_too_few_claimed_are_all_checked(self) -> None:
        """Fewer claimed than the quorum, or a quorum of one: every signature is checked."""
        assert transport.sample_size(5, 6) == 5
        assert transport.sample_size(3, 1) == 3


class CountingKeyring(transport.Keyring):
    """A keyring that counts the signatures it checks."""

    checked: int = 0

    def verify(self, who: str, round_id: str, kind: str, body: Mapping[str, Any], signature: Any) -> bool:
        self.checked += 1
        return super().verify(who, round_id, kind, body, signature)


@pytest.fixture(scope="module")
def signers() -> dict[str, identity.Identity]:
    return {m: identity.Identity.generate() for m in roster_of(1_000).members}


Certificate = tuple[CountingKeyring, Roster, bytes, dict[str, str]]


def certificate(
    tmp_path: Path, signers: dict[str, identity.Identity], genuine: int, forged: int
) -> Certificate:
    """A roster of 1,000 (quorum 601), everyone's key pinned, and endorsements of one survivor
    set: ``genuine`` signed by their members, then ``forged`` signed by another key."""
    roster = roster_of(1_000)
    names = list(roster.members)
    pins = identity.Pins(tmp_path / "pins.json", {})
    pins.check_all({m: s.public for m, s in signers.items()})
    digest = os.urandom(32)
    body = {"roster": roster.digest.hex(), "survivors": digest.hex()}
    liar = identity.Identity.generate()
    sigs = {
        m: identity.sign_message(signers[m] if i < genuine else liar, ROUND, "endorse", body, sender=m)
        for i, m in enumerate(names[: genuine + forged])
    }
    return CountingKeyring(transport.Tree(tmp_path), pins), roster, digest, sigs


class TestEndorsers:
    def test_a_genuine_quorum_is_accepted_on_a_sample(
        self, tmp_path: Path, signers: dict[str, identity.Identity]
    ) -> None:
        """800 genuine endorsements of a roster of 1,000 (quorum 601): 97 are checked, not 601,
        and all 800 count."""
        keyring, roster, digest, sigs = certificate(tmp_path, signers, 800, 0)
        found = transport._endorsers(keyring, ROUND, roster, digest, sigs, random.Random(1))
        assert set(sigs) == found
        assert transport.sample_size(800, roster.quorum) == keyring.checked < roster.quorum

    def test_one_short_of_the_quorum_is_never_accepted(
        self, tmp_path: Path, signers: dict[str, identity.Identity]
    ) -> None:
        """600 genuine and 200 forged (one short of the quorum of 601): whatever the sample, the
        forged ones are met and every signature checked; fewer than the quorum come back."""
        keyring, roster, digest, sigs = certificate(tmp_path, signers, 600, 200)
        for seed in range(3):
            found = transport._endorsers(keyring, ROUND, roster, digest, sigs, random.Random(seed))
            assert 600 == len(found) < roster.quorum

    def test_a_quorum_with_some_forged_still_counts(
        self, tmp_path: Path, signers: dict[str, identity.Identity]
    ) -> None:
        """700 genuine and 100 forged: a sample that meets a forged one falls back to checking
        every signature, which still finds the quorum."""
        keyring, roster, digest, sigs = certificate(tmp_path, signers, 700, 100)
        found = transport._endorsers(keyring, ROUND, roster, digest, sigs, random.Random(2))
        assert len(found) >= roster.quorum


@pytest.mark.slow
def test_a_round_over_files_at_200_members(tmp_path: Path) -> None:
    """benchmarks/secagg_scale.py's round at 200 members (a fifth dropped, each member's quorum
    checked on a sample): every measured member reveals, the sum is exact, and the aggregator's
    round folder has the permission files of its folder, written once."""
    scale = benchmark("secagg_scale")
    done = scale.one_round(200, 5, tmp_path, random.Random(3), profile=False)
    assert done.exact
    assert done.revealed == 5
    folder = transport.Tree(tmp_path / "SyftBox").folder(scale.AGGREGATOR, scale.ROUND)
    expected = permissions.render(
        transport.aggregator_folder(scale.AGGREGATOR, [scale.name_of(i) for i in range(200)])
    )
    for name, text in expected.items():
        assert text == (folder / name).read_text()


class TestWait:
    def test_the_aggregators_polls_drift_apart_and_the_deadline_is_looked_at(self) -> None:
        """Over a 90 s wait with polls every 0.2 s, the aggregator's patience makes some 50
        looks instead of 450, each at least an eighth of the time waited after the one before,
        and the last at the deadline itself."""
        now = [0.0]
        looks: list[float] = []

        def sleep(seconds: float) -> None:
            now[0] += seconds

        def ready() -> bool:
            looks.append(now[0])
            return False

        clock = transport.RoundClock(now=lambda: now[0], sleep=sleep, poll=0.2)
        assert not transport._wait(clock, 90.0, ready, transport.PATIENCE)
        assert looks[-1] == 90.0
        assert 30 < len(looks) < 70
        between = list(itertools.pairwise(looks[:-1]))  # the last look is cut short by the deadline
        assert all(b - a >= max(0.2, a / 8) - 1e-9 for a, b in between)
        looks.clear()
        now[0] = 0.0
        assert not transport._wait(clock, 90.0, ready)  # a member's wait: every poll
        assert len(looks) == 451
