"""Sensitivity from the privacy unit, the integer grid, and the noise: exact, unbiased, e^epsilon."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.accounting import gaussian_mu
from cpu_tracker_daemon.privacy.mechanisms import (
    PrivacyConfig,
    Statistic,
    add_noise,
    calibrate,
    clamped_mean,
    statistic,
)
from cpu_tracker_daemon.sampling import Reading, Window
from tests.bench import benchmark

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class TestCalibration:
    def test_window_unit_protects_the_whole_window(self) -> None:
        """With the window unit the sensitivity is the full range, whatever the sample count."""
        calibration = calibrate(PrivacyConfig(unit="window", epsilon=0.5), samples=50)
        assert (calibration.sensitivity, calibration.sensitivity_units) == (100.0, 10_000)
        assert calibration.noise_scale == 200.0

    def test_sample_unit_is_the_originals_weak_guarantee(self) -> None:
        """With the sample unit the sensitivity is range/samples, 50 times smaller at 50 samples."""
        calibration = calibrate(PrivacyConfig(unit="sample", epsilon=0.5), samples=50)
        assert calibration.sensitivity == 2.0

    def test_sample_sensitivity_rounds_up_to_the_grid(self) -> None:
        """100 points over 3 samples is 33.33...: the grid sensitivity is the 0.01 above, never below."""
        assert calibrate(PrivacyConfig(unit="sample"), samples=3).sensitivity_units == 3334

    def test_bounds_narrow_the_sensitivity(self) -> None:
        """lower and upper set the range the samples are clamped to, and so the sensitivity."""
        assert calibrate(PrivacyConfig(lower=10, upper=60), samples=5).sensitivity == 50.0

    def test_clamping_bounds_each_sample(self) -> None:
        """Samples outside [lower, upper] are clamped before averaging."""
        assert clamped_mean([0.0, 50.0, 100.0], 10.0, 60.0) == pytest.approx(40.0)

    def test_statistic_follows_the_unit_and_lands_on_the_grid(self) -> None:
        """window: busy over total CPU-seconds, clamped; sample: the equal-weight clamped mean.

        A stalled sampler reads 0.9 s busy of 1 s, then 0 of 0.1 s: the window was 81.8% busy,
        while the two samples (90% and 0%) average 45%. Each is also put on the 0.01 grid.
        """
        window = Window(NOW, NOW, (Reading(0.9, 1.0), Reading(0.0, 0.1)), 0.5)

        def stat(unit: str, lower: float = 0.0, upper: float = 100.0) -> Statistic:
            return statistic(window, calibrate(PrivacyConfig(unit=unit, lower=lower, upper=upper), 2))

        assert stat("window").percent == pytest.approx(0.9 / 1.1 * 100)
        assert stat("window").units == 8182
        assert stat("window", 10.0, 60.0) == Statistic(60.0, 6000)
        assert stat("sample").units == 4500
        assert stat("sample", 10.0, 60.0).units == 3500

    def test_the_pre_noise_value_never_shows_in_a_repr_or_as_json(self) -> None:
        raw = Statistic(37.21, 3721)
        assert "37" not in repr(raw)
        assert "3721" not in str(raw)
        with pytest.raises(TypeError):
            json.dumps(raw)

    def test_sample_mean_moves_by_at_most_its_sensitivity(self) -> None:
        """Changing any one sample moves the grid mean by at most the grid sensitivity."""
        rng = random.Random(4)
        for n in (1, 3, 7, 50):
            c = calibrate(PrivacyConfig(unit="sample"), n)
            for _ in range(300):
                values = [rng.uniform(-5, 105) for _ in range(n)]
                changed = list(values)
                changed[rng.randrange(n)] = rng.choice([0.0, 100.0, rng.uniform(0, 100)])
                a = discrete.quantise_mean(tuple(values), c.lower_units, c.upper_units)
                b = discrete.quantise_mean(tuple(changed), c.lower_units, c.upper_units)
                assert abs(a - b) <= c.sensitivity_units

    def test_gaussian_sigma_is_our_own_and_never_below_the_continuous_one(self) -> None:
        """The discrete Gaussian's sigma meets its delta bound, and is the continuous analytic
        sigma to within 0.05% (the bound's grid margin): not diffprivlib's erf-recomputed one."""
        c = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-6), samples=50)
        continuous = 10_000 / gaussian_mu(1.0, 1e-6)
        assert continuous <= c.noise_param <= continuous * 1.0005
        assert discrete.gaussian_delta_bound(10_000, c.noise_param, 1.0) <= 1e-6
        assert c.noise_stddev == c.noise_param / 100
        assert (c.delta, c.unbiased, c.mechanism) == (1e-6, True, "discrete_gaussian")

    def test_large_epsilon_gaussian_keeps_its_claimed_delta(self) -> None:
        """At (20, 1e-9) diffprivlib's GaussianAnalytic's true delta was 9x the claim; ours holds."""
        c = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=20.0, delta=1e-9), samples=50)
        assert discrete.gaussian_delta_bound(10_000, c.noise_param, 20.0) <= 1e-9

    def test_sigma_sets_the_noise_and_the_epsilon_follows(self) -> None:
        """privacy.sigma is the noise stddev; the epsilon is the one that noise buys."""
        c = calibrate(PrivacyConfig(sigma=282.842712474619), samples=50)
        assert c.epsilon == pytest.approx(0.5, rel=1e-9)
        assert c.noise_stddev == pytest.approx(282.842712474619, rel=1e-12)
        g = calibrate(PrivacyConfig(mechanism="gaussian", sigma=400.0, delta=1e-6), samples=50)
        assert g.noise_stddev == 400.0
        again = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=g.epsilon, delta=1e-6), 50)
        assert again.noise_stddev == pytest.approx(400.0, rel=1e-6)


class TestGrid:
    def test_published_value_is_an_exact_grid_point(self) -> None:
        """Mironov 2012: a float raw + noise leaks the raw value in its low bits. Every value the
        daemon publishes is the integer cpu_units over 100, with at most two decimals."""
        c = calibrate(PrivacyConfig(), samples=50)
        rng = random.Random(8)
        for raw in (Statistic(100.0, 10_000), Statistic(0.0, 0), Statistic(37.21, 3721)):
            for _ in range(500):
                noisy = add_noise(raw, c, rng)
                assert noisy.units is not None
                text = json.dumps(noisy.cpu)
                assert noisy.cpu == noisy.units / 100 == float(text)
                assert len(text.partition(".")[2]) <= 2, text

    def test_to_units_is_exact_at_ties(self) -> None:
        """Putting a value on the grid uses the double's exact value: 0.125 is a tie, 0.135 is not."""
        assert discrete.to_units(0.125) == 12  # exactly 12.5 units: ties to even
        assert discrete.to_units(0.135) == 14  # the double is 0.13500000000000000888...

    @pytest.mark.slow
    @settings(max_examples=2000, deadline=None)
    @given(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
        | st.integers(-(10**6), 10**6).map(lambda n: n / 200),  # the ties, k + 0.5 units
        st.lists(st.integers(-20_000, 20_000), min_size=1, max_size=60),
    )
    def test_the_grid_rounds_as_exact_fractions_do(self, percent: float, units: list[int]) -> None:
        """The grid's integer rounding is exact rational rounding, ties to even: a value and a
        mean give what ``round(Fraction(...))`` gives, ties included, without ``fractions``."""
        from fractions import Fraction

        assert discrete.to_units(percent) == round(Fraction(percent) * 100)
        low, high = min(units), max(units)
        percents = tuple(u / 100 for u in units)
        exact = round(Fraction(sum(discrete.to_units(p) for p in percents), len(percents)))
        assert discrete.quantise_mean(percents, low, high) == exact

    @pytest.mark.slow
    @settings(max_examples=2000, deadline=None)
    @given(st.integers(1, 10**6), st.floats(min_value=1e-6, max_value=1e6))
    def test_the_reported_laplace_scale_is_the_exact_one_rounded_once(
        self, sensitivity: int, epsilon: float
    ) -> None:
        """The calibration reports ``sensitivity / epsilon`` as one float division; that is the
        exact rational scale the sampler uses, rounded once to the nearest double."""
        c = calibrate(PrivacyConfig(unit="window", epsilon=epsilon, mechanism="laplace"), samples=5)
        assert c.noise_param == float(discrete.laplace_scale(c.sensitivity_units, c.epsilon))
        assert sensitivity / epsilon == float(discrete.laplace_scale(sensitivity, epsilon))


class TestSamplers:
    @pytest.mark.slow
    def test_bernoulli_exp_has_probability_exp_minus_gamma(self) -> None:
        """40,000 seeded draws of Bernoulli(exp(-gamma)) at gamma 0.3, 1 and 2.5: within 4 s.e."""
        from fractions import Fraction

        rng = random.Random(2)
        n = 40_000
        for gamma in (Fraction(3, 10), Fraction(1), Fraction(5, 2)):
            p = math.exp(-float(gamma))
            hits = sum(discrete.bernoulli_exp(gamma, rng) for _ in range(n))
            assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)

    def test_default_randomness_is_the_os_csprng(self) -> None:
        """With random_state None, draws come from random.SystemRandom (os.urandom)."""
        assert isinstance(discrete.system_random(), random.SystemRandom)
        c = calibrate(PrivacyConfig(), samples=50)
        unseeded = {add_noise(Statistic(50.0, 5000), c).units for _ in range(20)}
        assert len(unseeded) > 10  # not a fixed seed: 20 draws of stddev 28,284 units rarely collide

    @pytest.mark.slow
    def test_noise_is_unbiased_and_unclamped(self) -> None:
        """The mean of many releases at a 0 value is ~0, and about half are negative."""
        c = calibrate(PrivacyConfig(epsilon=1.0), samples=50)
        rng = random.Random(7)
        draws = [add_noise(Statistic(0.0, 0), c, rng).cpu for _ in range(10_000)]
        assert abs(math.fsum(draws) / len(draws)) < 5 * c.noise_stddev / math.sqrt(len(draws))
        assert sum(d < 0 for d in draws) / len(draws) == pytest.approx(0.5, abs=0.02)

    def test_snapping_stays_within_the_bounds_and_says_it_is_biased(self) -> None:
        """Snapping clamps to [lower, upper], so its record says unbiased: false, and no grid."""
        c = calibrate(PrivacyConfig(mechanism="snapping", epsilon=0.5), samples=50)
        rng = random.Random(3)
        draws = [add_noise(Statistic(50.0, 5000), c, rng) for _ in range(500)]
        assert all(0.0 <= d.cpu <= 100.0 and d.units is None for d in draws)
        assert c.as_record()["unbiased"] is False
        assert "grid" not in c.as_record()


@pytest.fixture(scope="module")
def audit() -> object:
    return benchmark("privacy_audit")


class TestAudit:
    """The fast seeded subset of benchmarks/privacy_audit.py, through the daemon's release path."""

    @pytest.mark.slow
    @pytest.mark.parametrize(("mechanism", "unit"), [("laplace", "window"), ("gaussian", "sample")])
    def test_measured_epsilon_stays_within_the_claim(self, audit: object, mechanism: str, unit: str) -> None:
        """Thresholds, chi-square (with power against a 30% scale error) and the float distinguisher."""
        row = audit.audit(mechanism, unit, n=4000, seed=5)  # type: ignore[attr-defined]
        assert row.off_grid == 0
        assert row.threshold_lower_bound <= row.epsilon, row
        assert row.mironov_lower_bound <= row.epsilon, row
        assert row.chi_square_p > 1e-4, row
        assert row.chi_square_p_scale_off < 1e-6, row

    @pytest.mark.slow
    def test_pure_mechanism_is_not_over_noised(self, audit: object) -> None:
        """The threshold test comes close to the claim for discrete Laplace: the noise is not larger
        than it says, and the test can see epsilon."""
        row = audit.audit("laplace", "sample", n=4000, seed=6)  # type: ignore[attr-defined]
        assert 0.25 <= row.threshold_lower_bound <= row.epsilon, row

    def test_distinguisher_breaks_the_continuous_laplace(self, audit: object) -> None:
        """The same distinguisher proves far more than the claimed 0.5 against the float Laplace
        that schema-1 releases used: it would catch a regression to it."""
        row = audit.continuous_before(n=4000, seed=5)  # type: ignore[attr-defined]
        assert row.off_grid == 8000
        assert row.mironov_lower_bound > 3.0, row
