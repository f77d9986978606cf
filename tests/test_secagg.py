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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import permissions
from cpu_tracker_daemon.privacy.discrete import laplace_pmf, laplace_variance
from cpu_tracker_daemon.secagg import identity, masks, noise, shares, transport
from cpu_tracker_daemon.secagg.protocol import (
    Graph,
    Member,
    ProtocolError,
    PublicKeys,
    Roster,
    Survivors,
    graph_of,
    unmask,
)
from cpu_tracker_daemon.secagg.simulate import one_round

SCALE = 20_000.0  # epsilon 0.5 on the 0.01 grid: 10,000 / 0.5
LOCAL_SCALE = 2_000.0  # local_epsilon 5


def start_round(
    names: list[str], beta_dropped: float = 0.2, beta_colluding: float = 0.2, round_id: str = "r"
) -> tuple[dict[str, Member], Graph]:
    """Members with fresh keys, their roster and its graph (every member's randomness opened)."""
    members = {name: Member(name) for name in names}
    keys = {name: m.public() for name, m in members.items()}
    roster = Roster(round_id, keys, beta_dropped, beta_colluding, SCALE, LOCAL_SCALE)
    return members, graph_of(roster, {name: m.accept(roster) for name, m in members.items()})


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
        """Calibrated for a fifth dropped among 100, any 80 members' shares carry the whole
        noise; with a fifth colluding as well (counted apart), any 60."""
        assert noise.calibrated_members(100, 20, 0) == 80
        assert noise.calibrated_members(100, 20, 20) == 60
        assert noise.calibrated_members(3, 0, 0) == 3
        with pytest.raises(ValueError, match="at least one member"):
            noise.calibrated_members(10, 5, 5)

    def test_a_roster_counts_its_absent_and_colluding_down(self) -> None:
        """beta 0.2 of 101 members is 20 of each (rounded down, so the calibration never
        rounds the noise away): 101 - 20 = 81 calibrated for dropouts alone, 61 with colluders."""
        keys = {f"m{i:03d}@example.org": Member(f"m{i:03d}@example.org").public() for i in range(101)}
        alone = Roster("r", keys, 0.2, 0.0, SCALE, LOCAL_SCALE)
        both = Roster("r", keys, 0.2, 0.2, SCALE, LOCAL_SCALE)
        assert (alone.max_dropped, alone.max_colluding, alone.calibrated) == (20, 0, 81)
        assert (both.max_dropped, both.max_colluding, both.calibrated) == (20, 20, 61)
        with pytest.raises(ProtocolError, match="betas"):
            Roster("r", keys, 0.5, 0.5, SCALE, LOCAL_SCALE)


class TestInterval:
    @staticmethod
    def exact_half_width(scale: float, calibrated: int, present: int, local: float) -> int:
        """The 95% half width by direct convolution of the exact pmfs (small scales only)."""
        import numpy as np

        def nb_diff(r: float, q: float, size: int) -> np.ndarray:
            k = np.arange(size, dtype=np.float64)
            log_pmf = np.empty(size)
            log_pmf[0] = r * math.log1p(-q)
            log_pmf[1:] = log_pmf[0] + np.cumsum(np.log(q * (k[1:] + r - 1) / k[1:]))
            pmf = np.exp(log_pmf)
            return np.convolve(pmf, pmf[::-1])  # A - B, centred at size - 1

        size = 4000
        d = np.convolve(
            nb_diff(present / calibrated, math.exp(-1 / scale), size),
            nb_diff(present, math.exp(-1 / local), size),
        )
        centre = len(d) // 2
        inside = d[centre] + 2 * np.cumsum(d[centre + 1 :])
        return int(np.searchsorted(inside, 0.95)) + 1

    @pytest.mark.parametrize(
        ("scale", "calibrated", "present", "local"), [(40.0, 3, 5, 6.0), (25.0, 6, 10, 3.0)]
    )
    def test_the_lattice_interval_is_the_exact_one(
        self, scale: float, calibrated: int, present: int, local: float
    ) -> None:
        """With each member's own noise in the sum, the characteristic-function lattice gives
        the half width a direct convolution of the exact pmfs gives."""
        got, exact = noise.interval(scale, calibrated, present, local)
        assert exact
        assert self.exact_half_width(scale, calibrated, present, local) == got

    def test_a_sum_too_wide_for_the_lattice_gets_a_wider_interval_said_not_exact(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the lattice, the Chernoff interval holds at least 95% (it is wider than the
        exact one, never narrower) and says it is not exact."""
        exact, _ = noise.interval(20_000.0, 60, 100, 2_000.0)
        monkeypatch.setattr(noise, "MAX_LATTICE", 1 << 12)
        bound, is_exact = noise.interval(20_000.0, 60, 100, 2_000.0)
        assert not is_exact
        assert exact <= bound < 1.7 * exact


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
        done = one_round(n, dropped, SCALE, random.Random(3))
        assert done.total == done.expected
        assert len(done.survivors.present) == n - dropped
        if n > 16:
            assert len(done.graph.neighbours(done.graph.roster.members[0])) < n - 1  # the sparse graph

    def test_each_members_own_noise_is_in_the_sum_too(self) -> None:
        """With a local scale, each present member adds discrete Laplace noise of its own beside
        its share: the sum is still exactly the values and all of that noise."""
        done = one_round(12, 2, SCALE, random.Random(4), local_scale=LOCAL_SCALE)
        assert done.total == done.expected

    def test_a_masked_value_alone_says_nothing_of_the_value(self) -> None:
        """Two members with the same value and noise send unrelated masked values."""
        members, graph = start_round(["a@example.org", "b@example.org"], 0.0, 0.0)
        a, b = members.values()
        to_a, to_b = b.share(graph)[a.name], a.share(graph)[b.name]
        shared = frozenset(graph.roster.members)
        masked_a = a.masked(graph, shared, 5000, 0, a.open_inbox(graph, {b.name: to_a}))
        assert masked_a != b.masked(graph, shared, 5000, 0, b.open_inbox(graph, {a.name: to_b}))

    def test_too_few_survivors_reveal_nothing(self) -> None:
        """Below the calibration the noise would be too little: a member refuses to endorse the
        survivor set, and so to reveal; nor does it reveal for an endorsed set short of a quorum
        of endorsements."""
        members, graph = start_round([f"m{i}@example.org" for i in range(10)])
        roster = graph.roster
        boxes = {name: m.share(graph) for name, m in members.items()}
        me = roster.members[0]
        opened = members[me].open_inbox(graph, {s: box[me] for s, box in boxes.items() if me in box})
        members[me].masked(graph, frozenset(members), 5000, 0, opened)
        few = Survivors(frozenset(members), frozenset(roster.members[:7]))
        with pytest.raises(ProtocolError, match="fewer than the 8"):
            members[me].endorse(graph, few)
        outside = Survivors(frozenset(members) | {"x@example.org"}, frozenset(roster.members))
        with pytest.raises(ProtocolError, match="outside the round"):
            members[me].endorse(graph, outside)
        with pytest.raises(ProtocolError, match="did not endorse"):
            members[me].reveal(graph, few, set(roster.members), opened)
        enough = Survivors(frozenset(members), frozenset(roster.members[:8]))
        members[me].endorse(graph, enough)
        assert roster.quorum == 7
        with pytest.raises(ProtocolError, match="only 6 members endorsed"):
            members[me].reveal(graph, enough, set(roster.members[:6]), opened)

    def test_a_garbage_share_is_caught_not_believed(self) -> None:
        """One neighbour reveals a wrong share: among five (two more than the threshold) the
        windows of shares that agree leave it out and the sum is exact; with a second liar no
        two subsets agree, and the aggregator aborts rather than publish a wrong sum."""
        members, graph = start_round([f"m{i}@example.org" for i in range(6)], 0.0, 0.0)
        roster = graph.roster
        boxes = {name: m.share(graph) for name, m in members.items()}
        opened = {
            name: m.open_inbox(graph, {s: b[name] for s, b in boxes.items() if name in b})
            for name, m in members.items()
        }
        shared = frozenset(members)
        masked = {name: m.masked(graph, shared, 100, 0, opened[name]) for name, m in members.items()}
        survivors = Survivors(shared, frozenset(members))
        for m in members.values():
            m.endorse(graph, survivors)
        reveals = {
            name: members[name].reveal(graph, survivors, survivors.present, opened[name]) for name in members
        }
        victim = roster.members[0]
        for liar in roster.members[1:3]:
            kind, (index, _) = reveals[liar][victim]
            reveals[liar] = {**reveals[liar], victim: (kind, (index, bytes(32)))}
            if liar == roster.members[1]:
                assert unmask(graph, survivors, masked, reveals) == 6 * 100
        with pytest.raises(ProtocolError, match="disagree"):
            unmask(graph, survivors, masked, reveals)


AGGREGATOR = "aggregator@example.org"


@dataclass(frozen=True, slots=True)
class Datasite:
    """One machine's identity, pins and the refusals its keyring logged."""

    signer: identity.Identity
    keyring: transport.Keyring
    refused: list[dict[str, Any]]


def datasite(tree: transport.Tree, state: Path, email: str) -> Datasite:
    """``email``'s identity, created under ``state`` with its did.json published in the tree,
    and its keyring (pins in ``state``), as rounds.keyring_of makes them."""
    signer = identity.Identity.load_or_create(state / email / identity.IDENTITY_NAME)
    identity.publish(tree.root, email, signer)
    refused: list[dict[str, Any]] = []

    def log(event: str, **fields: Any) -> None:
        refused.append({"event": event, **fields})

    pins = identity.Pins.load(state / email / identity.PINS_NAME)
    return Datasite(signer, transport.Keyring(tree, pins, log), refused)


def aggregator_round(
    tree: transport.Tree, site: Datasite, names: list[str], round_id: str, start: float, step: float
) -> dict[str, Any]:
    return transport.aggregator_round(
        tree, site.signer, site.keyring, AGGREGATOR, names, round_id, start, step,
        transport.Calibration(0.2, 0.2, SCALE, LOCAL_SCALE), transport.RoundClock(poll=0.02),
    )  # fmt: skip


def round_over_files(
    tmp_path: Path, n: int, drop: int, at: str = "masked", round_id: str = "r1"
) -> tuple[dict[str, Any], int, dict[str, str], Path]:
    """Members and the aggregator, each in its own thread, exchanging only signed files in one
    tree laid out as SyftBox lays it out; ``drop`` members stop ``at`` a phase: before they
    publish keys (``shares``), after sharing, before their masked value (``masked``), or after
    it, before they endorse and reveal (``reveal``). Returns the aggregator's result, what the
    members whose masked values were sent put in, each member's outcome and the tree's
    datasites/. No honest machine's keyring refuses a message."""
    tree = transport.Tree(tmp_path / "SyftBox")
    names = [f"m{i}@example.org" for i in range(n)]
    members = {name: Member(name) for name in names}
    sites = {name: datasite(tree, tmp_path / "state", name) for name in [*names, AGGREGATOR]}
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

    def clock_for(name: str) -> transport.RoundClock:
        def sleep(seconds: float) -> None:
            if name in dropping and at == "reveal" and name in sent:
                raise _Dropped  # gone while waiting for the survivor list
            time.sleep(seconds)

        return transport.RoundClock(sleep=sleep, poll=0.02)

    def member(name: str) -> None:
        site = sites[name]
        try:
            outcomes[name] = transport.member_round(
                tree, members[name], site.signer, site.keyring, AGGREGATOR, round_id, start, step,
                values[name], noise_for(name), before(name), clock_for(name),
            )  # fmt: skip
        except _Dropped:
            outcomes[name] = "dropped"

    taking_part = [name for name in names if not (name in dropping and at == "shares")]
    outcomes.update(dict.fromkeys(set(names) - set(taking_part), "dropped"))
    threads = [threading.Thread(target=member, args=(name,)) for name in taking_part]
    for thread in threads:
        thread.start()
    result = aggregator_round(tree, sites[AGGREGATOR], names, round_id, start, step)
    for thread in threads:
        thread.join(timeout=30)
    assert [r for site in sites.values() for r in site.refused] == []
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
        phase in turn: before its keys (it is left out), after sharing (its masks are removed),
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
        """Round r1's files (keys, openings, shares, masked values...) copied into round r2's
        folders count for nothing: each file names its round, and its signature covers the
        round, so naming r2 instead breaks the signature (and each box is bound to its roster)."""
        round_over_files(tmp_path, 3, 0, round_id="r1")
        datasites = tmp_path / "SyftBox" / "datasites"
        for old in datasites.glob("m*/app_data/cpu_tracker/secagg/r1/*.json"):
            for round_id, renamed in (("r2", False), ("r3", True)):
                new = old.parent.parent / round_id / old.name
                new.parent.mkdir(exist_ok=True)
                doc = json.loads(old.read_text())
                new.write_text(json.dumps({**doc, "round": round_id} if renamed else doc))
        tree = transport.Tree(tmp_path / "SyftBox")
        names = sorted(p.name for p in datasites.iterdir() if p.name.startswith("m"))
        site = datasite(tree, tmp_path / "state", AGGREGATOR)
        for round_id in ("r2", "r3"):
            result = aggregator_round(tree, site, names, round_id, time.monotonic() - 10, 0.5)
            assert (result["sum_units"], result["aborted"]) == (None, "no member published keys")
        assert {(r["sender"], r["round"], r["kind"]) for r in site.refused} == {
            (name, "r3", "keys") for name in names
        }
        assert {r["reason"] for r in site.refused} == {
            "the signature does not verify (forged, altered or replayed)"
        }

    @pytest.mark.slow
    def test_too_many_dropped_aborts_and_nothing_is_revealed(self, tmp_path: Path) -> None:
        """Three of six gone (beta_dropped is 0.2): the aggregator aborts, no member reveals a share."""
        result, _, outcomes, datasites = round_over_files(tmp_path, 6, 3)
        assert result["sum_units"] is None
        assert "fewer than the 5" in result["aborted"]
        assert not list(datasites.glob("*/app_data/cpu_tracker/secagg/r1/reveal.json"))
        assert "revealed" not in outcomes.values()

    def test_each_file_is_readable_by_exactly_whom_it_is_for(self, tmp_path: Path) -> None:
        """The permission files, through the Go client's ACL engine (syft-permissions): every
        file a member writes (keys, openings, sealed shares, its inbox check, masked values,
        endorsements, reveals) for the aggregator only, who relays what others need; the roster,
        openings, the word to proceed, survivors and endorsements for the roster's members, each
        inbox for its member alone, the result for everyone; nobody writes into another's round."""
        from syft_permissions import AccessLevel, ACLRequest, ACLService, User

        _, _, _, datasites = round_over_files(tmp_path, 3, 0)
        m0, m1 = "m0@example.org", "m1@example.org"
        outsider = "someone@example.org"
        rnd = "app_data/cpu_tracker/secagg/r1"
        probes = [
            (m1, m0, f"{rnd}/shares.json", "read", False),  # relayed: m1 reads its inbox
            (AGGREGATOR, m0, f"{rnd}/shares.json", "read", True),  # sealed: it sees who shared
            (outsider, m0, f"{rnd}/shares.json", "read", False),
            (AGGREGATOR, m0, f"{rnd}/masked.json", "read", True),
            (m1, m0, f"{rnd}/masked.json", "read", False),
            (AGGREGATOR, m0, f"{rnd}/reveal.json", "read", True),
            (m1, m0, f"{rnd}/reveal.json", "read", False),
            (AGGREGATOR, m0, f"{rnd}/keys.json", "read", True),
            (m1, m0, f"{rnd}/keys.json", "read", False),  # the roster carries them, signed
            (outsider, m0, f"{rnd}/keys.json", "read", False),
            (m1, m0, f"{rnd}/check.json", "read", False),
            (m1, m0, f"{rnd}/endorse.json", "read", False),
            (m1, m0, f"{rnd}/masked.json", "write", False),
            (AGGREGATOR, m0, f"{rnd}/masked.json", "write", False),
            (m0, AGGREGATOR, f"{rnd}/roster.json", "read", True),
            (m1, AGGREGATOR, f"{rnd}/openings.json", "read", True),
            (m1, AGGREGATOR, f"{rnd}/proceed.json", "read", True),
            (m1, AGGREGATOR, f"{rnd}/survivors.json", "read", True),
            (m1, AGGREGATOR, f"{rnd}/endorsements.json", "read", True),
            (outsider, AGGREGATOR, f"{rnd}/roster.json", "read", False),
            (outsider, AGGREGATOR, f"{rnd}/survivors.json", "read", False),
            (m0, AGGREGATOR, f"{rnd}/inbox-{m0}.json", "read", True),
            (m1, AGGREGATOR, f"{rnd}/inbox-{m0}.json", "read", False),
            (outsider, AGGREGATOR, f"{rnd}/inbox-{m0}.json", "read", False),
            (m0, AGGREGATOR, f"{rnd}/roster.json", "write", False),
            (outsider, AGGREGATOR, f"{rnd}/result.json", "read", True),
        ]
        got = []
        for user, owner, path, access, _ in probes:
            service = ACLService(owner=owner)
            service.load_permissions_from_filesystem(datasites / owner)
            level = AccessLevel.READ if access == "read" else AccessLevel.WRITE
            got.append(service.can_access(ACLRequest(path=path, level=level, user=User(id=user))))
        assert [p[4] for p in probes] == got


class TestWhatIsSeen:
    @pytest.mark.slow
    def test_one_members_masked_value_is_uniform(self) -> None:
        """The same member, the same value and noise, 4,000 rounds: the masked value's top and
        bottom 4 bits are uniform (chi-square p > 0.001), so a single file says nothing."""
        from scipy.stats import chisquare

        a, b = Member("a@example.org"), Member("b@example.org")
        seen = []
        for r in range(4000):
            keys = {a.name: a.rekey(), b.name: b.rekey()}  # as member_round does at each start
            roster = Roster(f"r{r}", keys, 0.0, 0.0, SCALE, LOCAL_SCALE)
            graph = graph_of(roster, {a.name: a.accept(roster), b.name: b.accept(roster)})
            to_a = b.share(graph)[a.name]
            a.share(graph)
            seen.append(a.masked(graph, frozenset(keys), 5000, 0, a.open_inbox(graph, {b.name: to_a})))
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


class StepClock:
    """A round's clock that never really waits: each sleep moves it on."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.01)

    def clock(self) -> transport.RoundClock:
        return transport.RoundClock(now=self.now, sleep=self.sleep, poll=0.5)


def lone_member_round(tmp_path: Path, tree: transport.Tree, me: Member, round_id: str) -> str:
    """``me`` alone in ``round_id``, on a clock that never waits: it publishes its keys and,
    with no aggregator, gives up at the roster's deadline."""
    site = datasite(tree, tmp_path / "state", me.name)
    clock = StepClock()
    return transport.member_round(
        tree, me, site.signer, site.keyring, AGGREGATOR, round_id, clock.now(), 1.0, 5000,
        lambda r: 0, lambda: None, clock.clock(),
    )  # fmt: skip


def test_every_round_has_fresh_keys(tmp_path: Path) -> None:
    """A dropped member's mask key is rebuilt by the aggregator: with it and a later round's
    self-mask seed it could unmask that member, were the key used again. Keys (and the graph
    randomness committed to) are per round."""
    tree = transport.Tree(tmp_path / "SyftBox")
    tree.root.mkdir()
    me = Member("m0@example.org")
    assert lone_member_round(tmp_path, tree, me, "r1") == "no roster"
    assert lone_member_round(tmp_path, tree, me, "r2") == "no roster"
    reader = datasite(tree, tmp_path / "state", AGGREGATOR)

    def keys_of(round_id: str) -> PublicKeys | None:
        path = tree.file(me.name, round_id, "keys")
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        body = {k: v for k, v in doc.items() if k not in ("schema", "kind", "round", "from", "sig")}
        assert reader.keyring.verify(me.name, round_id, "keys", body, doc["sig"])
        return transport.parse_keys(body)

    first, second = keys_of("r1"), keys_of("r2")
    assert first is not None
    assert second == me.public()
    assert first.c != second.c
    assert first.s != second.s
    assert first.commit != second.commit
    assert keys_of("r3") is None


_CALIBRATION = {"beta_dropped": 0.2, "beta_colluding": 0.2, "scale": SCALE, "local_scale": LOCAL_SCALE}


@pytest.mark.parametrize(
    "roster",
    [
        {"keys": [{"a": 1}], **_CALIBRATION},
        {"keys": "m0", **_CALIBRATION, "beta_dropped": "x", "scale": 1},
        {"keys": {"m0@example.org": {"c": 1, "s": [], "commit": None}}, **_CALIBRATION},
        {"keys": {"m0@example.org": ["c", "s"]}, **_CALIBRATION},
        {"keys": {"m0@example.org": "self"}, **_CALIBRATION, "beta_dropped": 2.0},
        {"keys": {"m0@example.org": "self"}, **_CALIBRATION, "beta_colluding": True},
        {"keys": {"m0@example.org": "self"}, **_CALIBRATION, "scale": 10**400},
        {"keys": {"m0@example.org": "self"}, **_CALIBRATION, "beta_dropped": 0.5, "beta_colluding": 0.5},
        {"keys": {"m1@example.org": "self"}, **_CALIBRATION},
        {"keys": {}, **_CALIBRATION},
        {},
    ],
)
def test_a_hostile_roster_ends_the_round_for_the_member_with_a_reason(
    tmp_path: Path, roster: dict[str, Any]
) -> None:
    """Files another machine wrote are checked: a roster of the wrong shape, signed by the
    aggregator (an unsigned one is not read at all), is one outcome ("bad roster"), never an
    exception out of the member's round."""
    tree = transport.Tree(tmp_path / "SyftBox")
    tree.root.mkdir()
    me = Member("m0@example.org")
    aggregator = datasite(tree, tmp_path / "state", AGGREGATOR)
    site = datasite(tree, tmp_path / "state", me.name)
    clock = StepClock()
    roster_file = tree.file(AGGREGATOR, "r1", "roster")

    def sleep(seconds: float) -> None:
        """Once the member's keys are out, the aggregator's signed roster; "self" in it stands
        for the member's keys as published (its signature included)."""
        keys = tree.file(me.name, "r1", "keys")
        if keys.exists() and not roster_file.exists():
            body = roster
            if isinstance(roster.get("keys"), dict):
                mine = {**transport.keys_body(me.public()), "sig": json.loads(keys.read_text())["sig"]}
                body = {**roster, "keys": {m: mine if e == "self" else e for m, e in roster["keys"].items()}}
            sig = identity.sign_message(aggregator.signer, "r1", "roster", body, sender=AGGREGATOR)
            doc = {"schema": transport.SCHEMA, "kind": "roster", "round": "r1", "from": AGGREGATOR}
            roster_file.parent.mkdir(parents=True, exist_ok=True)
            roster_file.write_text(json.dumps({**doc, **body, "sig": sig}))
        clock.sleep(seconds)

    outcome = transport.member_round(
        tree, me, site.signer, site.keyring, AGGREGATOR, "r1", clock.now(), 1.0, 5000,
        lambda r: 0, lambda: None, transport.RoundClock(now=clock.now, sleep=sleep, poll=0.5),
    )  # fmt: skip
    assert outcome.startswith("bad roster"), outcome
    assert site.refused == []  # read and checked: the roster's shape, not its signature, is bad
