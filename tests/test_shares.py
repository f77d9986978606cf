"""Shamir sharing held byte for byte to PyCryptodome's ``Crypto.Protocol.SecretSharing.Shamir``:
our shares combine with its combine, its shares with ours, and on the same shares (garbage too)
both rebuild the same bytes; the batched Combiner gives what combine gives."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from Crypto.Protocol import SecretSharing
from Crypto.Protocol.SecretSharing import Shamir, _Element
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.secagg import shares
from cpu_tracker_daemon.secagg.shares import Combiner, Share, ShareError

SECRETS = st.binary(min_size=32, max_size=32)
ELEMENTS = st.integers(min_value=0, max_value=2**128 - 1)


def pycryptodome_split(secret: bytes, threshold: int, count: int) -> list[Share]:
    """The reference: PyCryptodome's split of each 16-byte half, joined at each index."""
    low = Shamir.split(threshold, count, secret[:16])
    high = Shamir.split(threshold, count, secret[16:])
    return [(i, a + b) for (i, a), (_, b) in zip(low, high, strict=True)]


def pycryptodome_combine(parts: list[Share]) -> bytes:
    """The reference: PyCryptodome's combine of each half."""
    return Shamir.combine([(i, v[:16]) for i, v in parts]) + Shamir.combine([(i, v[16:]) for i, v in parts])


def feeder(data: bytes) -> Callable[[int], bytes]:
    """A stand-in for a random source that hands out ``data`` in order, and fails when it runs out."""
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        assert at + n <= len(data), "asked for more randomness than the reference drew"
        at += n
        return data[at - n : at]

    return take


class TestField:
    @settings(max_examples=200, deadline=None)
    @given(ELEMENTS, ELEMENTS)
    def test_multiply_matches_pycryptodome(self, a: int, b: int) -> None:
        """The spread carry-less product, reduced, is PyCryptodome's GF(2^128) product."""
        ours = shares._unspread(shares._multiply(shares._spread(a), shares._spread(b)))
        assert int(_Element(a) * _Element(b)) == ours

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=1, max_value=2**128 - 1))
    def test_inverse_matches_pycryptodome(self, a: int) -> None:
        """The extended Euclidean inverse is PyCryptodome's, and a times it is 1."""
        inverse = shares._inverse(a)
        assert int(_Element(a).inverse()) == inverse
        assert shares._spread(1) == shares._multiply(shares._spread(a), shares._spread(inverse))


class TestSplit:
    @pytest.mark.parametrize(("threshold", "count"), [(1, 1), (1, 4), (2, 2), (3, 5), (6, 10), (9, 300)])
    def test_same_randomness_gives_pycryptodome_shares(
        self, threshold: int, count: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Fed the same random coefficients, split's shares are PyCryptodome's byte for byte: its
        coefficients come from os.urandom, 32 bytes per degree, the first 16 for the first half."""
        rng = random.Random(threshold * 1000 + count)
        secret = rng.randbytes(32)
        drawn = rng.randbytes(32 * (threshold - 1))
        halves = b"".join(drawn[at : at + 16] for at in range(0, len(drawn), 32))
        halves += b"".join(drawn[at + 16 : at + 32] for at in range(0, len(drawn), 32))
        monkeypatch.setattr(SecretSharing, "rng", feeder(halves))
        expected = pycryptodome_split(secret, threshold, count)
        monkeypatch.setattr(os, "urandom", feeder(drawn))
        assert expected == shares.split(secret, threshold, count)

    @settings(max_examples=40, deadline=None)
    @given(SECRETS, st.integers(1, 6), st.integers(0, 6), st.data())
    def test_any_threshold_of_them_rebuild_the_secret_with_pycryptodome(
        self, secret: bytes, threshold: int, extra: int, data: st.DataObject
    ) -> None:
        """Any ``threshold`` of our shares, in any order, combine to the secret with PyCryptodome."""
        parts = shares.split(secret, threshold, threshold + extra)
        chosen = data.draw(st.permutations(parts))[:threshold]
        assert secret == pycryptodome_combine(chosen)

    @settings(max_examples=60, deadline=None)
    @given(SECRETS, st.integers(1, 60), st.integers(0, 40), st.data())
    def test_any_threshold_or_more_rebuild_the_secret(
        self, secret: bytes, threshold: int, extra: int, data: st.DataObject
    ) -> None:
        """Thresholds up to 60: any ``threshold`` or more of the shares combine to the secret."""
        parts = shares.split(secret, threshold, threshold + extra)
        assert [i for i, _ in parts] == list(range(1, threshold + extra + 1))
        assert all(len(value) == 32 for _, value in parts)
        taken = data.draw(st.integers(threshold, threshold + extra))
        assert secret == shares.combine(data.draw(st.permutations(parts))[:taken])

    def test_fresh_coefficients_every_time(self) -> None:
        """Two splits of one secret share nothing beyond it (threshold 1 is the secret itself)."""
        secret = os.urandom(32)
        first, second = shares.split(secret, 2, 3), shares.split(secret, 2, 3)
        assert all(a != b for (_, a), (_, b) in zip(first, second, strict=True))
        assert [(1, secret), (2, secret)] == shares.split(secret, 1, 2)

    @pytest.mark.parametrize(
        ("size", "threshold", "count"), [(31, 2, 3), (33, 2, 3), (32, 0, 3), (32, 4, 3), (32, -1, 0)]
    )
    def test_refuses_what_the_caller_got_wrong(self, size: int, threshold: int, count: int) -> None:
        """A secret not 32 bytes, or a threshold outside 1..count, is the caller's error (a
        ValueError), not a sender's (ShareError)."""
        with pytest.raises(ValueError, match=r"32 bytes|threshold") as caught:
            shares.split(bytes(size), threshold, count)
        assert caught.type is ValueError


class TestCombine:
    @settings(max_examples=40, deadline=None)
    @given(SECRETS, st.integers(1, 6), st.integers(0, 6), st.data())
    def test_rebuilds_pycryptodome_shares(
        self, secret: bytes, threshold: int, extra: int, data: st.DataObject
    ) -> None:
        """Any ``threshold`` or more of PyCryptodome's shares combine to the secret with ours."""
        parts = pycryptodome_split(secret, threshold, threshold + extra)
        taken = data.draw(st.integers(threshold, threshold + extra))
        assert secret == shares.combine(data.draw(st.permutations(parts))[:taken])

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(1, 2**128 - 1), min_size=1, max_size=6, unique=True),
        st.randoms(use_true_random=False),
    )
    def test_same_bytes_as_pycryptodome_on_any_shares(self, indices: list[int], rng: random.Random) -> None:
        """On garbage (any distinct indices in the field, any values) both give the same wrong answer."""
        parts = [(i, rng.randbytes(32)) for i in indices]
        assert pycryptodome_combine(parts) == shares.combine(parts)

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.integers(1, 300), min_size=1, max_size=12, unique=True), st.randoms(use_true_random=False)
    )
    def test_same_bytes_as_pycryptodome_on_small_indices(
        self, indices: list[int], rng: random.Random
    ) -> None:
        """Indices as a split makes them, values garbage: both give the same bytes."""
        parts = [(i, rng.randbytes(32)) for i in indices]
        assert pycryptodome_combine(parts) == shares.combine(parts)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(1, 2**20), min_size=1, max_size=40, unique=True),
        st.integers(1, 4),
        st.randoms(use_true_random=False),
    )
    def test_combiner_gives_what_combine_gives(
        self, indices: list[int], secrets: int, rng: random.Random
    ) -> None:
        """One Combiner reused over several secrets at the same indices gives combine's bytes for each."""
        combiner = Combiner(indices)
        for _ in range(secrets):
            values = [rng.randbytes(32) for _ in indices]
            assert shares.combine(list(zip(indices, values, strict=True))) == combiner.combine(values)
        assert tuple(indices) == combiner.indices

    def test_combiner_matches_pycryptodome(self) -> None:
        """The batched path against the reference itself, at protocol-like indices."""
        rng = random.Random(3)
        indices = sorted(rng.sample(range(1, 41), 9))
        combiner = Combiner(indices)
        for _ in range(3):
            values = [rng.randbytes(32) for _ in indices]
            assert pycryptodome_combine(list(zip(indices, values, strict=True))) == combiner.combine(values)

    def test_a_duplicated_index_is_the_senders_fault(self) -> None:
        """Two shares at one index: PyCryptodome raises ValueError("Duplicate share"); ours is a
        ShareError (a ValueError), from combine and from Combiner."""
        parts = [(1, bytes(32)), (2, bytes(32)), (1, bytes(range(32)))]
        with pytest.raises(ValueError, match="Duplicate share"):
            pycryptodome_combine(parts)
        with pytest.raises(ShareError, match="index 1"):
            shares.combine(parts)
        with pytest.raises(ShareError, match="index 1"):
            Combiner([1, 2, 1])

    @pytest.mark.parametrize(
        "parts",
        [
            pytest.param([], id="no shares"),
            pytest.param([(0, bytes(32))], id="index 0"),
            pytest.param([(1, bytes(32)), (0, bytes(32))], id="index 0 among others"),
            pytest.param([(2**128, bytes(32))], id="index 2^128"),
            pytest.param([(-1, bytes(32))], id="negative index"),
            pytest.param([("1", bytes(32))], id="index not an int"),
            pytest.param([(1.0, bytes(32))], id="index a float"),
            pytest.param([(1, bytes(16))], id="16 bytes"),
            pytest.param([(1, bytes(31)), (2, bytes(32))], id="31 bytes"),
            pytest.param([(1, bytes(32)), (2, bytes(33))], id="33 bytes"),
            pytest.param([(1, b"")], id="empty value"),
            pytest.param([(1, "x" * 32)], id="value not bytes"),
        ],
    )
    def test_refuses_shares_that_cannot_be_combined(self, parts: list[Share]) -> None:
        """No shares, an index outside 1..2^128 - 1 or not an int, or a value not 32 bytes: a
        ShareError. (PyCryptodome raises ValueError for the lengths; it rebuilds index 0's value,
        which no split makes and which would let one forged share decide the secret; it loops
        forever on a negative index.)"""
        with pytest.raises(ShareError):
            shares.combine(parts)

    def test_wrong_lengths_are_refused_by_pycryptodome_too(self) -> None:
        """The reference refuses a value that is not 16 + 16 bytes as well."""
        for value in (bytes(16), bytes(31), bytes(33)):
            with pytest.raises(ValueError, match="16 byte"):
                pycryptodome_combine([(1, bytes(32)), (2, value)])

    def test_combiner_refuses_a_value_count_other_than_its_indices(self) -> None:
        """Values not one per index are the caller's error."""
        with pytest.raises(ValueError, match="2 values for 3 indices"):
            Combiner([1, 2, 3]).combine([bytes(32), bytes(32)])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.one_of(st.integers(), st.integers(1, 70), st.text(max_size=2), st.none()),
                st.one_of(st.binary(min_size=30, max_size=34), st.text(max_size=2)),
            ),
            max_size=6,
        )
    )
    def test_hostile_shares_give_a_secret_or_share_error(self, parts: list[tuple[object, object]]) -> None:
        """Whatever a sender puts in a reveal, combine returns 32 bytes or raises ShareError."""
        try:
            secret = shares.combine(parts)  # type: ignore[arg-type]
        except ShareError:
            return
        assert len(secret) == 32


@pytest.mark.slow
class TestFuzz:
    def test_seeded_fuzz_against_pycryptodome(self) -> None:
        """Seeded: thresholds 1..60 (the protocol's 21 and 31 among them), counts up to 40 more,
        random index subsets. Our split combines with PyCryptodome's combine, its split with
        ours, garbage gives both the same bytes, and the Combiner gives combine's."""
        rng = random.Random(20_240_530)
        thresholds = [1, 2, 3, 21, 31, 60, *rng.sample(range(4, 60), 6)]
        for threshold in thresholds:
            count = threshold + rng.randrange(0, 41)
            secret = rng.randbytes(32)
            ours = shares.split(secret, threshold, count)
            assert secret == pycryptodome_combine(rng.sample(ours, threshold))
            theirs = pycryptodome_split(secret, threshold, count)
            chosen = rng.sample(theirs, rng.randint(threshold, count))
            assert secret == shares.combine(chosen)
            garbage = [(i, rng.randbytes(32)) for i in rng.sample(range(1, count + 1), threshold)]
            expected = pycryptodome_combine(garbage)
            assert expected == shares.combine(garbage)
            indices = [i for i, _ in garbage]
            assert expected == Combiner(indices).combine([v for _, v in garbage])
