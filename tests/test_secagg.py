"""Secure aggregation's core: exact noise shares, masks that cancel, shares that rebuild, and
the rounds end to end with dropouts, with the real cryptography (docs/secure-aggregation.md)."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import permissions
from cpu_tracker_daemon.discrete import laplace_pmf, laplace_variance
from cpu_tracker_daemon.secagg import masks, noise, shares, transport
from cpu_tracker_daemon.secagg.protocol import Member, ProtocolError, Roster, Survivors, unmask
from cpu_tracker_daemon.secagg.simulate import one_round


def chi_square_p(observed: Counter[int], pmf: dict[int, float], draws: int) -> float:
    """The p-value of a chi-square goodness-of-fit test, bins below 5 expected merged into the tails."""
    from scipy.stats import chi2

    keys = sorted(pmf)
    bins: list[tuple[float, int]] = []
    expected = count = 0.0
    for k in keys:
        expected += pmf[k] * draws
        count += observed.get(k, 0)
        if expected >= 5:
            bins.append((expected, int(count)))
            expected = count = 0.0
    rest = draws - sum(c for _, c in bins)
    tail = draws * (1 - sum(pmf.values())) + expected
    if tail > 0:
        bins.append((tail, rest))
    stat = sum((c - e) ** 2 / e for e, c in bins)
    return float(chi2.sf(stat, len(bins) - 1))


class TestNoise:
    def test_negative_binomial_has_its_exact_distribution(self) -> None:
        """NB(0.3, 0.6) drawn as a Poisson number of logarithmic variables matches the exact
        pmf Gamma(k + r) / (k! Gamma(r)) (1 - q)^r q^k (seeded; chi-square p > 0.001)."""
        r, q, draws = 0.3, 0.6, 40_000
        rng = random.Random(7)
        seen = Counter(noise.negative_binomial(r, q, rng) for _ in range(draws))
        pmf = {
            k: math.exp(math.lgamma(k + r) - math.lgamma(k + 1) - math.lgamma(r)) * (1 - q) ** r * q**k
            for k in range(60)
        }
        assert chi_square_p(seen, pmf, draws) > 0.001

    @pytest.mark.parametrize(("scale", "members"), [(3.0, 5), pytest.param(8.0, 40, marks=pytest.mark.slow)])
    def test_shares_of_the_members_add_up_to_discrete_laplace(self, scale: float, members: int) -> None:
        """The sum of ``members`` shares is discrete Laplace of ``scale``: its pmf (chi-square)
        and its variance 2a/(1-a)^2."""
        rng = random.Random(11)
        draws = 20_000
        sums = [sum(noise.share(scale, members, rng) for _ in range(members)) for _ in range(draws)]
        pmf = {k: laplace_pmf(k, scale) for k in range(-200, 201)}
        assert chi_square_p(Counter(sums), pmf, draws) > 0.001
        variance = sum(x * x for x in sums) / draws
        assert variance == pytest.approx(laplace_variance(scale), rel=0.06)

    def test_calibration_leaves_enough_noise_with_beta_dropped(self) -> None:
        """Calibrated for beta = 0.2 among 100, any 80 members' shares carry the whole noise."""
        assert noise.calibrated_members(100, 0.2) == 80
        assert noise.calibrated_members(101, 0.2) == 81
        assert noise.calibrated_members(3, 0.0) == 3
        with pytest.raises(ValueError, match="beta"):
            noise.calibrated_members(10, 1.0)


class TestMasks:
    def test_pairwise_masks_cancel_and_self_masks_do_not(self) -> None:
        keys = {name: masks.new_key() for name in ("a", "b", "c", "d")}
        total = 0
        for me, key in keys.items():
            for peer, other in keys.items():
                if peer != me:
                    seed = masks.agreed(key, masks.public_bytes(other), "r1", "mask")
                    assert seed == masks.agreed(other, masks.public_bytes(key), "r1", "mask")
                    total += masks.pairwise(me, peer, seed)
        assert total % masks.MODULUS == 0
        assert masks.agreed(keys["a"], masks.public_bytes(keys["b"]), "r2", "mask") != masks.agreed(
            keys["a"], masks.public_bytes(keys["b"]), "r1", "mask"
        )
        assert masks.signed(masks.MODULUS - 5) == -5
        assert masks.signed(7) == 7


class TestShares:
    def test_any_threshold_rebuilds_fewer_do_not(self) -> None:
        secret = bytes(range(32))
        parts = shares.split(secret, 3, 5)
        assert shares.combine(parts[:3]) == shares.combine(parts[2:]) == secret
        assert shares.combine(parts[:2]) != secret

    def test_a_sealed_share_opens_only_for_its_round_sender_and_recipient(self) -> None:
        alice, bob = masks.new_key(), masks.new_key()
        box = shares.seal(alice, masks.public_bytes(bob), "r1", "alice", "bob", b"share")
        assert shares.unseal(bob, masks.public_bytes(alice), "r1", "alice", "bob", box) == b"share"
        for round_id, sender in (("r2", "alice"), ("r1", "mallory")):
            with pytest.raises(shares.ShareError):
                shares.unseal(bob, masks.public_bytes(alice), round_id, sender, "bob", box)


class TestRounds:
    @pytest.mark.parametrize(
        ("n", "dropped"),
        [
            (5, 0),
            (12, 2),
            pytest.param(60, 0, marks=pytest.mark.slow),
            pytest.param(60, 12, marks=pytest.mark.slow),
        ],
    )
    def test_the_aggregator_gets_exactly_the_noisy_sum(self, n: int, dropped: int) -> None:
        """All present, or members dropping after they shared (up to beta): the masks cancel or
        are removed, and the sum is exactly the present members' values plus their noise."""
        done = one_round(n, dropped, 0.2, 20_000.0, random.Random(3))
        assert done.total == done.expected
        assert len(done.survivors.present) == n - dropped
        if n > 16:
            assert len(done.roster.neighbours(done.roster.members[0])) < n - 1  # the sparse graph

    def test_a_masked_value_alone_says_nothing_of_the_value(self) -> None:
        """Two members with the same value and noise send unrelated masked values."""
        a, b = Member("a@example.org"), Member("b@example.org")
        roster = Roster("r", ("a@example.org", "b@example.org"), 0.0, 20_000.0)
        keys = {"a@example.org": a.public(), "b@example.org": b.public()}
        a.share(roster, keys)
        b.share(roster, keys)
        shared = frozenset(keys)
        assert a.masked(roster, keys, shared, 5000, 0) != b.masked(roster, keys, shared, 5000, 0)

    def test_too_few_survivors_reveal_nothing(self) -> None:
        """Below the calibration the noise would be too little: a member refuses to reveal."""
        members = {f"m{i}@example.org": Member(f"m{i}@example.org") for i in range(10)}
        roster = Roster("r", tuple(sorted(members)), 0.2, 20_000.0)
        keys = {name: m.public() for name, m in members.items()}
        boxes = {name: m.share(roster, keys) for name, m in members.items()}
        me = roster.members[0]
        inbox = {sender: box[me] for sender, box in boxes.items() if me in box}
        few = Survivors(frozenset(members), frozenset(roster.members[:7]))
        with pytest.raises(ProtocolError, match="fewer than the 8"):
            members[me].reveal(roster, keys, few, inbox)
        outside = Survivors(frozenset(members) | {"x@example.org"}, frozenset(roster.members))
        with pytest.raises(ProtocolError, match="outside the round"):
            members[me].reveal(roster, keys, outside, inbox)

    def test_a_garbage_share_is_caught_not_believed(self) -> None:
        """One neighbour reveals a wrong share: the aggregator's two subsets disagree, and it
        aborts rather than publish a wrong sum."""
        members = {f"m{i}@example.org": Member(f"m{i}@example.org") for i in range(6)}
        roster = Roster("r", tuple(sorted(members)), 0.0, 20_000.0)
        keys = {name: m.public() for name, m in members.items()}
        boxes = {name: m.share(roster, keys) for name, m in members.items()}
        shared = frozenset(members)
        masked = {name: m.masked(roster, keys, shared, 100, 0) for name, m in members.items()}
        survivors = Survivors(shared, frozenset(members))
        reveals = {
            name: members[name].reveal(
                roster, keys, survivors, {s: b[name] for s, b in boxes.items() if name in b}
            )
            for name in members
        }
        liar, victim = roster.members[0], roster.members[1]
        kind, (index, _) = reveals[liar][victim]
        reveals[liar] = {**reveals[liar], victim: (kind, (index, bytes(32)))}
        with pytest.raises(ProtocolError, match="disagree"):
            unmask(roster, keys, survivors, masked, reveals)


AGGREGATOR = "aggregator@example.org"


def round_over_files(
    tmp_path: Path, n: int, drop: int, at: str = "masked", round_id: str = "r1"
) -> tuple[dict[str, Any], int, dict[str, str], Path]:
    """Members and the aggregator, each in its own thread, exchanging only files in one tree laid
    out as SyftBox lays it out; ``drop`` members stop ``at`` a phase: before they share
    (``shares``), after sharing, before their masked value (``masked``), or after it, before
    they reveal (``reveal``). Returns the aggregator's result, what the members whose masked
    values were sent put in, each member's outcome and the tree's datasites/."""
    tree = transport.Tree(tmp_path / "SyftBox")
    names = [f"m{i}@example.org" for i in range(n)]
    members = {name: Member(name) for name in names}
    for name in members:
        app = tree.root / "datasites" / name / "app_data" / "cpu_tracker"
        app.mkdir(parents=True, exist_ok=True)
        permissions.ensure(app, permissions.release_folder(name, [AGGREGATOR]), tree.root)
    rng = random.Random(5)
    values = {name: rng.randrange(10_001) for name in names}
    noises: dict[str, int] = {}
    sent: list[str] = []
    dropping = set(names[:drop])
    outcomes: dict[str, str] = {}
    step = max(0.5, 0.06 * n)  # every member's crypto runs in this one process, under one GIL
    start = time.monotonic()

    def noise_for(name: str) -> Callable[[Roster], int]:
        def draw(roster: Roster) -> int:
            noises[name] = noise.share(roster.scale, roster.calibrated)
            return noises[name]

        return draw

    def before(name: str) -> Callable[[], None]:
        def spend() -> None:  # the ledger's place: the spend, before the masked value is written
            if name in dropping and at == "masked":
                raise _Dropped
            sent.append(name)

        return spend

    def clock_for(name: str) -> transport.Clock:
        def sleep(seconds: float) -> None:
            if name in dropping and at == "reveal" and name in sent:
                raise _Dropped  # gone while waiting for the survivor list
            time.sleep(seconds)

        return transport.Clock(sleep=sleep, poll=0.02)

    def member(name: str) -> None:
        try:
            outcomes[name] = transport.member_round(
                tree, members[name], AGGREGATOR, round_id, start, step, values[name], noise_for(name),
                before(name), clock_for(name),
            )  # fmt: skip
        except _Dropped:
            outcomes[name] = "dropped"

    taking_part = [name for name in names if not (name in dropping and at == "shares")]
    outcomes.update(dict.fromkeys(set(names) - set(taking_part), "dropped"))
    threads = [threading.Thread(target=member, args=(name,)) for name in taking_part]
    for thread in threads:
        thread.start()
    clock = transport.Clock(poll=0.02)
    result = transport.aggregator_round(tree, AGGREGATOR, names, round_id, start, step, 0.2, 20_000.0, clock)
    for thread in threads:
        thread.join(timeout=30)
    expected = sum(values[m] + noises[m] for m in sent)
    return result, expected, outcomes, tree.root / "datasites"


class _Dropped(Exception):
    pass


class TestOverFiles:
    @pytest.mark.parametrize(
        "at",
        [
            "shares",
            pytest.param("masked", marks=pytest.mark.slow),
            pytest.param("reveal", marks=pytest.mark.slow),
        ],
    )
    def test_a_round_over_the_tree_gives_the_exact_noisy_sum(self, tmp_path: Path, at: str) -> None:
        """Six members and the aggregator exchange only files; one member vanishes at each
        phase in turn: before sharing (it is left out), after sharing (its masks are removed),
        after its masked value (its self mask is rebuilt from its neighbours). The result is
        exactly the values and noise of the members whose masked values came in."""
        result, expected, outcomes, _ = round_over_files(tmp_path, 6, 1, at)
        assert result["aborted"] is None
        assert (result["sum_units"], result["members"]) == (expected, 6 if at == "reveal" else 5)
        assert sorted(outcomes.values()) == ["dropped"] + ["revealed"] * 5

    @pytest.mark.parametrize(
        "n", [3, pytest.param(20, marks=pytest.mark.slow), pytest.param(50, marks=pytest.mark.slow)]
    )
    def test_sums_are_exact_from_3_to_50_members_with_a_fifth_dropped(self, tmp_path: Path, n: int) -> None:
        result, expected, _, _ = round_over_files(tmp_path, n, n // 5)
        assert (result["aborted"], result["sum_units"]) == (None, expected)

    def test_a_replayed_file_from_another_round_is_refused(self, tmp_path: Path) -> None:
        """Round r1's files (keys, shares, masked values) copied into round r2's folders count
        for nothing: each file names its round (and each share's seal binds it to its round)."""
        round_over_files(tmp_path, 3, 0, round_id="r1")
        datasites = tmp_path / "SyftBox" / "datasites"
        for old in datasites.glob("m*/app_data/cpu_tracker/secagg/r1/*.json"):
            new = old.parent.parent / "r2" / old.name
            new.parent.mkdir(exist_ok=True)
            new.write_bytes(old.read_bytes())
        tree = transport.Tree(tmp_path / "SyftBox")
        names = sorted(p.name for p in datasites.iterdir() if p.name.startswith("m"))
        result = transport.aggregator_round(
            tree,
            AGGREGATOR,
            names,
            "r2",
            time.monotonic() - 10,
            0.5,
            0.2,
            20_000.0,
            transport.Clock(poll=0.02),
        )
        assert (result["sum_units"], result["aborted"]) == (None, "no member published keys")

    @pytest.mark.slow
    def test_too_many_dropped_aborts_and_nothing_is_revealed(self, tmp_path: Path) -> None:
        """Three of six gone (beta is 0.2): the aggregator aborts, no member reveals a share."""
        result, _, outcomes, datasites = round_over_files(tmp_path, 6, 3)
        assert result["sum_units"] is None
        assert "fewer than the 5" in result["aborted"]
        assert not list(datasites.glob("*/app_data/cpu_tracker/secagg/r1/reveal.json"))
        assert "revealed" not in outcomes.values()

    def test_each_file_is_readable_by_exactly_whom_it_is_for(self, tmp_path: Path) -> None:
        """The permission files, through the Go client's ACL engine (syft-permissions): sealed
        shares for the neighbours and the aggregator (not an outsider), masked values and
        reveals for the aggregator only, the roster for the members, the result and the keys
        for everyone."""
        from syft_permissions import AccessLevel, ACLRequest, ACLService, User

        _, _, _, datasites = round_over_files(tmp_path, 3, 0)
        m0, m1 = "m0@example.org", "m1@example.org"
        outsider = "someone@example.org"
        rnd = "app_data/cpu_tracker/secagg/r1"
        probes = [
            (m1, m0, f"{rnd}/shares.json", "read", True),
            (AGGREGATOR, m0, f"{rnd}/shares.json", "read", True),  # sealed: it sees who shared
            (outsider, m0, f"{rnd}/shares.json", "read", False),
            (AGGREGATOR, m0, f"{rnd}/masked.json", "read", True),
            (m1, m0, f"{rnd}/masked.json", "read", False),
            (AGGREGATOR, m0, f"{rnd}/reveal.json", "read", True),
            (m1, m0, f"{rnd}/reveal.json", "read", False),
            (outsider, m0, f"{rnd}/keys.json", "read", True),
            (m1, m0, f"{rnd}/masked.json", "write", False),
            (m0, AGGREGATOR, f"{rnd}/roster.json", "read", True),
            (outsider, AGGREGATOR, f"{rnd}/roster.json", "read", False),
            (outsider, AGGREGATOR, f"{rnd}/result.json", "read", True),
        ]
        got = []
        for user, owner, path, access, _ in probes:
            service = ACLService(owner=owner)
            service.load_permissions_from_filesystem(datasites / owner)
            level = AccessLevel.READ if access == "read" else AccessLevel.WRITE
            got.append(service.can_access(ACLRequest(path=path, level=level, user=User(id=user))))
        assert got == [p[4] for p in probes]


class TestWhatIsSeen:
    @pytest.mark.slow
    def test_one_members_masked_value_is_uniform(self) -> None:
        """The same member, the same value and noise, 4,000 rounds: the masked value's top and
        bottom 4 bits are uniform (chi-square p > 0.001), so a single file says nothing."""
        from scipy.stats import chisquare

        a, b = Member("a@example.org"), Member("b@example.org")
        keys = {"a@example.org": a.public(), "b@example.org": b.public()}
        seen = []
        for r in range(4000):
            roster = Roster(f"r{r}", tuple(keys), 0.0, 20_000.0)
            a.share(roster, keys)
            b.share(roster, keys)
            seen.append(a.masked(roster, keys, frozenset(keys), 5000, 0))
        for bins in ([x >> 28 for x in seen], [x & 15 for x in seen]):
            assert chisquare([bins.count(k) for k in range(16)]).pvalue > 0.001

    @pytest.mark.slow
    def test_neighbouring_networks_differ_by_at_most_the_claimed_epsilon(self) -> None:
        """The end-to-end privacy claim, measured: four members' noisy sums with one member's
        value at the bottom or the top of its range (sensitivity 10 units here, epsilon 0.5,
        so a scale of 20), 200,000 draws each. Wherever both histograms have 2,000 draws,
        their log ratio stays within 0.5 up to sampling error, and comes near it: the bound
        is met, not merely respected."""
        rng = random.Random(17)
        draws, scale, members = 200_000, 20.0, 4

        def sums(first: int) -> Counter[int]:
            return Counter(
                first + sum(noise.share(scale, members, rng) for _ in range(members)) for _ in range(draws)
            )

        low, high = sums(0), sums(10)
        ratios = [math.log(low[k] / high[k]) for k in low if low[k] >= 2000 and high.get(k, 0) >= 2000]
        assert len(ratios) > 10
        assert max(abs(r) for r in ratios) <= 0.5 + 0.12
        assert max(abs(r) for r in ratios) >= 0.5 - 0.12  # the bound is met, not just respected


def test_every_round_has_fresh_keys(tmp_path: Path) -> None:
    """A dropped member's mask key is rebuilt by the aggregator: with it and a later round's
    self-mask seed it could unmask that member, were the key used again. Keys are per round."""
    tree = transport.Tree(tmp_path / "SyftBox")
    tree.root.mkdir()
    me = Member("m0@example.org")
    transport.publish_keys(tree, me, "r1", AGGREGATOR)
    transport.publish_keys(tree, me, "r2", AGGREGATOR)
    first, second = (transport.read_keys(tree, me.name, r) for r in ("r1", "r2"))
    assert first is not None
    assert second == me.public()
    assert (first.c, first.s) != (second.c, second.s)
    assert transport.read_keys(tree, me.name, "r3") is None


@pytest.mark.parametrize(
    "roster",
    [{"members": [{"a": 1}], "beta": 0.2, "scale": 20_000.0}, {"members": "m0", "beta": "x", "scale": 1},
     {"members": ["m0@example.org"], "beta": 2.0, "scale": 20_000.0}, {}],
)  # fmt: skip
def test_a_hostile_roster_ends_the_round_for_the_member_with_a_reason(
    tmp_path: Path, roster: dict[str, Any]
) -> None:
    """Files another machine wrote are checked: a roster of the wrong shape is one outcome
    ("bad roster"), never an exception out of the member's round."""
    tree = transport.Tree(tmp_path / "SyftBox")
    tree.root.mkdir()
    path = tree.file(AGGREGATOR, "r1", "roster")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": transport.SCHEMA, "kind": "roster", "round": "r1", **roster}))
    clock = transport.Clock(poll=0.01)
    outcome = transport.member_round(
        tree,
        Member("m0@example.org"),
        AGGREGATOR,
        "r1",
        clock.now(),
        0.1,
        5000,
        lambda r: 0,
        lambda: None,
        clock,
    )
    assert outcome in ("bad roster", "no roster")
