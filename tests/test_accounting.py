"""The accountant: checked against the exact Gaussian closed form, diffprivlib, and summation."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.privacy.accounting import (
    Event,
    compose,
    gaussian_delta,
    gaussian_epsilon,
    releases_within,
    zcdp_epsilon,
)

DELTA = 1e-6


class TestGaussianClosedForm:
    @pytest.mark.slow
    @pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 2.0, 5.0])
    def test_inverse_of_diffprivlib_analytic_gaussian(self, epsilon: float) -> None:
        """Our exact epsilon for diffprivlib's analytic-Gaussian sigma is the epsilon it was built for."""
        from diffprivlib.mechanisms import GaussianAnalytic

        sigma = GaussianAnalytic(epsilon=epsilon, delta=DELTA, sensitivity=1.0)._scale
        assert gaussian_epsilon(1 / sigma, DELTA) == pytest.approx(epsilon, rel=1e-6)

    def test_delta_at_the_epsilon_found_is_the_delta_asked(self) -> None:
        """gaussian_epsilon inverts gaussian_delta."""
        for mu in (0.05, 0.3, 1.0, 3.0):
            eps = gaussian_epsilon(mu, DELTA)
            assert gaussian_delta(mu, eps) == pytest.approx(DELTA, rel=1e-6)

    @pytest.mark.parametrize("k", [1, 2, 10, 70, 400])
    def test_k_gaussian_releases_compose_to_one_gaussian(self, k: int) -> None:
        """k releases at noise multiplier s are exactly one Gaussian at s/sqrt(k); the accountant says so."""
        s = 5.0
        composed = compose([Event.gaussian(1.0, s, DELTA)] * k, DELTA)
        assert composed.epsilon == pytest.approx(gaussian_epsilon(math.sqrt(k) / s, DELTA), rel=1e-12)
        assert composed.delta == DELTA

    @pytest.mark.parametrize("mu", [0.02, 0.1, 0.5, 1.0, 2.0, 5.0])
    def test_zcdp_bound_is_valid_and_close_for_a_gaussian(self, mu: float) -> None:
        """The zCDP conversion never claims less than the exact epsilon, and is within 25% of it."""
        exact = gaussian_epsilon(mu, DELTA)
        bound = zcdp_epsilon(mu * mu / 2, DELTA)
        assert exact <= bound <= 1.25 * exact + 1e-9


class TestCaps:
    def test_noise_multiplier_5_under_epsilon_10_delta_1e6(self) -> None:
        """The issue's example: summation allows about 10, this accountant 70-85 and more."""
        event = Event.gaussian(1.0, 5.0, DELTA)
        by_sum = math.floor(10 / event.epsilon)
        allowed = releases_within(event, 10.0, DELTA)
        rho_only = max(k for k in range(1, 200) if zcdp_epsilon(k * event.rho, DELTA) <= 10)
        assert by_sum <= 12
        assert 70 <= rho_only <= allowed
        assert (
            compose([event] * allowed, DELTA).epsilon <= 10 < compose([event] * (allowed + 1), DELTA).epsilon
        )

    def test_laplace_with_zero_delta_is_pure_summation(self) -> None:
        """With a delta cap of 0 only summation can prove anything: Laplace stays pure epsilon-DP."""
        composed = compose([Event.laplace(0.5)] * 30, 0.0)
        assert (composed.epsilon, composed.delta, composed.method) == (15.0, 0.0, "sum")
        assert releases_within(Event.laplace(0.5), 100.0, 0.0) == 200

    def test_gaussian_without_delta_budget_proves_nothing(self) -> None:
        """A Gaussian release cannot fit under a delta cap of 0."""
        assert compose([Event.gaussian(1.0, 5.0, DELTA)], 0.0).epsilon == math.inf
        assert releases_within(Event.gaussian(1.0, 5.0, DELTA), 100.0, 0.0) == 0


events = st.one_of(
    st.builds(Event.laplace, st.floats(0.01, 5)),
    st.builds(Event.gaussian, st.just(1.0), st.floats(0.2, 50), st.sampled_from([1e-9, 1e-7, 1e-6])),
)


class TestProperties:
    @pytest.mark.slow
    @settings(max_examples=200, deadline=None)
    @given(st.lists(events, min_size=1, max_size=60), st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]))
    def test_never_looser_than_summation(self, mix: list[Event], delta: float) -> None:
        """For any mix of events, the accountant's epsilon is at most the summed epsilon that fits."""
        composed = compose(mix, delta)
        summed_delta = math.fsum(e.delta for e in mix)
        assert composed.delta <= max(delta, summed_delta) * (1 + 1e-12)
        if summed_delta <= delta * (1 - 1e-12):
            assert composed.epsilon <= math.fsum(e.epsilon for e in mix) + 1e-9
        assert composed.epsilon >= 0

    @pytest.mark.parametrize("delta", [1e-10, 1e-6, 1e-2])
    @pytest.mark.parametrize("rho", [1e-6, 1e-3, 0.1, 1.0, 30.0, 1e4])
    def test_zcdp_epsilon_is_never_looser_than_a_dense_search(self, rho: float, delta: float) -> None:
        """The golden-section search finds the minimum over alpha that 7,000 log-spaced alphas
        (alpha - 1 from 1e-6 to 1e8) find, or a lower one: it is only ever tighter."""
        log_inv_delta = -math.log(delta)

        def at(alpha: float) -> float:
            return alpha * rho + (log_inv_delta + alpha * math.log1p(-1 / alpha) - math.log(alpha - 1)) / (
                alpha - 1
            )

        dense = min(at(1 + 10 ** (k / 500)) for k in range(-3000, 4000))
        dense = max(0.0, min(dense, rho + 2 * math.sqrt(rho * log_inv_delta)))
        assert zcdp_epsilon(rho, delta) <= dense * (1 + 1e-12)

    @settings(max_examples=100, deadline=None)
    @given(st.floats(1e-4, 50), st.floats(1e-4, 50))
    def test_zcdp_epsilon_grows_with_rho(self, a: float, b: float) -> None:
        """More rho never gives a smaller epsilon."""
        lo, hi = sorted((a, b))
        assert zcdp_epsilon(lo, DELTA) <= zcdp_epsilon(hi, DELTA) + 1e-9


def _releases_by_search_from_one(
    event: Event, epsilon_cap: float, delta_cap: float, prior: list[Event], limit: int, tolerance: float
) -> int:
    """The count as a plain search finds it: doubling from one, then bisecting, over compose."""

    history = Counter(prior)

    def fits(k: int) -> bool:
        return compose({**history, event: history[event] + k}, delta_cap).epsilon <= epsilon_cap + tolerance

    if not fits(0) or not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class TestReleasesWithin:
    @pytest.mark.slow
    @settings(max_examples=300, deadline=None)
    @given(
        events,
        st.lists(events, max_size=6),
        st.floats(0.01, 1e4),
        st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 0.1]),
        st.sampled_from([1, 7, 1000, 100_000]),
        st.sampled_from([0.0, 1e-9]),
        st.integers(-5, 200_000),
    )
    def test_the_count_is_the_one_a_search_from_one_finds(
        self,
        event: Event,
        prior: list[Event],
        cap: float,
        delta: float,
        limit: int,
        tolerance: float,
        start: int,
    ) -> None:
        """Where the search starts never changes the count, whether the bounds guess it or the
        caller gives any start: it is the one a search from one release finds, with any history,
        cap, delta and limit."""
        expected = _releases_by_search_from_one(event, cap, delta, prior, limit, tolerance)
        assert releases_within(event, cap, delta, prior, limit, tolerance) == expected
        assert releases_within(event, cap, delta, prior, limit, tolerance, start=start) == expected

    @pytest.mark.parametrize("epsilon", [0.01, 0.5, 1.0, 50.0])
    @pytest.mark.parametrize("delta", [1e-9, 1e-6, 0.1])
    def test_rho_within_is_what_zcdp_epsilon_allows(self, epsilon: float, delta: float) -> None:
        """The rho the guess uses converts to at most epsilon, and 1% more converts to more."""
        from cpu_tracker_daemon.privacy.accounting import _rho_within

        rho = _rho_within(epsilon, delta)
        assert zcdp_epsilon(rho, delta) <= epsilon * (1 + 1e-9)
        assert zcdp_epsilon(rho * 1.01, delta) > epsilon
