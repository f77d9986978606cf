"""The network estimate: plain mean for equal noise, capped weights, and honest 95% intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpu_tracker_daemon.network.estimate import estimate, reading


class TestEstimate:
    def test_equal_noise_gives_the_plain_mean(self) -> None:
        """With equal declared noise every peer weighs the same: the estimate is the plain mean."""
        values = [10.0, 50.0, 90.0, -20.0]
        est = estimate(values, [100.0] * 4)
        assert est.mean == pytest.approx(sum(values) / 4)
        assert est.peers == 4
        assert est.max_weight_share == pytest.approx(0.25)

    def test_one_peer_has_its_own_noise_as_error(self) -> None:
        """A single release: the mean is its value and the standard error its declared noise."""
        est = estimate([42.0], [283.0])
        assert (est.mean, est.standard_error) == (42.0, 283.0)
        assert est.ci_low == pytest.approx(42.0 - 1.96 * 283.0, rel=1e-3)

    def test_no_single_low_noise_peer_dominates(self) -> None:
        """A peer with 100x less noise than 99 others weighs at most max_weight_ratio times the median."""
        values = [40.0] * 99 + [95.0]
        stddevs = [283.0] * 99 + [2.83]
        est = estimate(values, stddevs, max_weight_ratio=10.0)
        assert est.max_weight_share == pytest.approx(10 / (99 + 10), rel=1e-6)
        assert est.mean < 46.0  # uncapped inverse-variance weights would put it near 95

    def test_one_lying_peer_moves_the_mean_by_less_than_an_honest_standard_error(self) -> None:
        """The audit: one peer declaring large noise moved the estimate +4,000 points at N=10.
        Seeded, 300 networks of 10 at the default noise: whatever epsilon the liar declares (its
        noise recomputed from it) and whatever value the reader accepts, the mean shift stays
        below one honest standard error, and below the bound the estimate reports."""
        from cpu_tracker_daemon.network.peers import MAX_SIGMAS
        from cpu_tracker_daemon.privacy.mechanisms import PrivacyConfig, calibrate

        honest = calibrate(PrivacyConfig(), 50).noise_stddev
        rng = np.random.default_rng(5)
        networks = [
            np.clip(rng.normal(40, 20, 10), 0, 100) + rng.laplace(0, honest / math.sqrt(2), 10)
            for _ in range(300)
        ]
        se = estimate(networks[0].tolist(), [honest] * 10).standard_error
        for epsilon in (1e-6, 0.05, 0.5, 1000.0):
            sigma = calibrate(PrivacyConfig(epsilon=epsilon), 50).noise_stddev
            shifts, bounds = [], []
            for noisy in networks:
                base = estimate(noisy.tolist(), [honest] * 10)
                lying = estimate([100 + MAX_SIGMAS * sigma, *noisy[1:].tolist()], [sigma] + [honest] * 9)
                shifts.append(lying.mean - base.mean)
                bounds.append(lying.max_influence)
            assert abs(np.mean(shifts)) < se, (epsilon, np.mean(shifts), se)
            assert max(abs(x) for x in shifts) <= max(bounds) + 1e-9

    def test_inputs_must_match(self) -> None:
        """Mismatched or empty inputs are a programming error, not a silent zero."""
        with pytest.raises(ValueError, match="at least one"):
            estimate([], [])
        with pytest.raises(ValueError, match="one standard deviation per value"):
            estimate([1.0, 2.0], [1.0])


class TestCoverage:
    @pytest.mark.slow
    @pytest.mark.parametrize("noise", ["laplace", "gaussian"])
    def test_95_percent_interval_covers_about_95_percent(self, noise: str) -> None:
        """Seeded: 1,000 networks of 300 peers with spread-out true loads and mixed noise levels.

        The network's true mean falls inside the 95% interval in 92-98% of them.
        """
        rng = np.random.default_rng(20261122 if noise == "laplace" else 7)
        # The target: the mean of the population the peers' true loads are drawn from.
        target = float(np.clip(rng.normal(40.0, 20.0, 2_000_000), 0.0, 100.0).mean())
        covered = 0
        trials = 1_000
        for _ in range(trials):
            n = 300
            true = np.clip(rng.normal(40.0, 20.0, n), 0.0, 100.0)
            stddev = rng.choice([28.3, 141.0, 283.0], size=n)
            if noise == "laplace":
                noisy = true + rng.laplace(0.0, stddev / math.sqrt(2.0))
            else:
                noisy = true + rng.normal(0.0, stddev)
            est = estimate(noisy.tolist(), stddev.tolist())
            covered += est.ci_low <= target <= est.ci_high
        assert 0.92 <= covered / trials <= 0.98, covered / trials


class TestReading:
    """What a person may read from an estimate: within 0-100%, and whether it says anything."""

    def test_twenty_members_at_the_defaults_are_too_uncertain_and_say_what_would_do(self) -> None:
        """The dashboard headlined "155.8%" (95% interval 30.8 to 280.8) for 20 members at the
        defaults. The reading clips to the range, says so, calls it uninformative, and names the
        number of members that gives +-5 points."""
        est = estimate([155.8] * 20, [282.84] * 20)
        seen = reading(est)
        assert (seen.mean, seen.ci_high, seen.clipped, seen.informative) == (100.0, 100.0, True, False)
        assert seen.ci_low == pytest.approx(est.ci_low)
        # the standard error falls as 1 / sqrt(N): N (half width / 5)^2 members give +-5
        assert seen.members_for_target == math.ceil(20 * (seen.half_width / 5.0) ** 2)
        assert 12_000 < seen.members_for_target < 13_000

    def test_a_thousand_members_are_read_as_they_are(self) -> None:
        """At 1,000 members the interval is +-17.5 points: informative, nothing clipped."""
        est = estimate([40.0] * 1000, [282.84] * 1000)
        seen = reading(est)
        assert (seen.mean, seen.clipped, seen.informative) == (pytest.approx(40.0), False, True)
        assert seen.half_width == pytest.approx(1.96 * 282.84 / math.sqrt(1000), rel=1e-3)

    @pytest.mark.parametrize("mean", [-30.0, 130.0])
    def test_an_estimate_outside_the_range_is_clipped_even_when_narrow(self, mean: float) -> None:
        """Noise can push a narrow estimate past 0 or 100 too: shown at the bound, marked clipped."""
        seen = reading(estimate([mean] * 1000, [10.0] * 1000))
        assert seen.mean in (0.0, 100.0)
        assert (seen.clipped, seen.informative) == (True, True)
        assert 0.0 <= seen.ci_low <= seen.ci_high <= 100.0
