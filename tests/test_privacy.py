"""Sensitivity from the privacy unit, and the noise: unbiased, correctly scaled, e^epsilon ratio."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from cpu_tracker_daemon.config import PrivacyConfig
from cpu_tracker_daemon.privacy import add_noise, calibrate, clamped_mean, clamped_statistic
from cpu_tracker_daemon.sampling import Reading, Window


class TestCalibration:
    def test_window_unit_protects_the_whole_window(self) -> None:
        """With the window unit the mean's sensitivity is the full range, whatever the sample count."""
        calibration = calibrate(PrivacyConfig(unit="window", epsilon=0.5), samples=50)
        assert calibration.sensitivity == 100.0
        assert calibration.noise_scale == 200.0

    def test_sample_unit_is_the_originals_weak_guarantee(self) -> None:
        """With the sample unit the sensitivity is range/samples, 50 times smaller at 50 samples."""
        calibration = calibrate(PrivacyConfig(unit="sample", epsilon=0.5), samples=50)
        assert calibration.sensitivity == 2.0

    def test_bounds_narrow_the_sensitivity(self) -> None:
        """lower and upper set the range the samples are clamped to, and so the sensitivity."""
        assert calibrate(PrivacyConfig(lower=10, upper=60), samples=5).sensitivity == 50.0

    def test_clamping_bounds_each_sample(self) -> None:
        """Samples outside [lower, upper] are clamped before averaging."""
        assert clamped_mean([0.0, 50.0, 100.0], 10.0, 60.0) == pytest.approx(40.0)

    def test_statistic_follows_the_unit(self) -> None:
        """window: busy over total CPU-seconds, clamped; sample: the equal-weight clamped mean.

        A stalled sampler reads 0.9 s busy of 1 s, then 0 of 0.1 s: the window was 81.8% busy,
        while the two samples (90% and 0%) average 45%.
        """
        now = datetime.now(UTC)
        window = Window(now, now, (Reading(0.9, 1.0), Reading(0.0, 0.1)), 0.5)
        assert pytest.approx(clamped_statistic(window, "window", 0.0, 100.0)) == 0.9 / 1.1 * 100
        assert clamped_statistic(window, "window", 10.0, 60.0) == 60.0
        assert pytest.approx(clamped_statistic(window, "sample", 0.0, 100.0)) == 45.0
        assert pytest.approx(clamped_statistic(window, "sample", 10.0, 60.0)) == 35.0


class TestNoise:
    def test_noise_is_unbiased_and_unclamped(self) -> None:
        """Plain Laplace: the mean of many releases at a 0 value is ~0, and some are negative.

        LaplaceTruncated (diffprivlib.tools.mean) would clamp them to [0, 100] and bias the mean up.
        """
        calibration = calibrate(PrivacyConfig(epsilon=1.0), samples=50)
        rng = np.random.RandomState(7)
        draws = np.array([add_noise(0.0, calibration, rng) for _ in range(20_000)])
        stderr = calibration.noise_stddev / math.sqrt(len(draws))
        assert abs(draws.mean()) < 5 * stderr
        assert (draws < 0).mean() == pytest.approx(0.5, abs=0.02)

    def test_noise_has_the_declared_scale(self) -> None:
        """The mean absolute noise equals the declared Laplace scale b."""
        calibration = calibrate(PrivacyConfig(epsilon=0.5), samples=50)
        rng = np.random.RandomState(11)
        draws = np.array([add_noise(30.0, calibration, rng) - 30.0 for _ in range(20_000)])
        assert np.abs(draws).mean() == pytest.approx(calibration.noise_scale, rel=0.03)

    def test_likelihood_ratio_is_bounded_by_e_to_the_epsilon(self) -> None:
        """For neighbouring means (differing by the sensitivity) bin frequencies differ by <= e^eps.

        The test allows sampling error: 200k draws each, bins with at least 2000 hits in both.
        """
        epsilon = 1.0
        calibration = calibrate(PrivacyConfig(epsilon=epsilon), samples=50)
        rng = np.random.RandomState(3)
        a = np.array([add_noise(0.0, calibration, rng) for _ in range(200_000)])
        b = np.array([add_noise(100.0, calibration, rng) for _ in range(200_000)])
        bins = np.linspace(-300, 400, 36)
        ha, _ = np.histogram(a, bins)
        hb, _ = np.histogram(b, bins)
        mask = (ha > 2000) & (hb > 2000)
        assert mask.sum() > 10
        ratios = np.maximum(ha[mask] / hb[mask], hb[mask] / ha[mask])
        assert ratios.max() <= math.exp(epsilon) * 1.15
        # and the bound is nearly reached (the mechanism is not over-noised)
        assert ratios.max() >= math.exp(epsilon) * 0.8

    def test_default_randomness_is_the_os_csprng(self) -> None:
        """With random_state None, diffprivlib draws from secrets.SystemRandom."""
        import secrets

        from diffprivlib.mechanisms import Laplace

        mech = Laplace(epsilon=1.0, sensitivity=1.0, random_state=None)
        assert isinstance(mech._rng, secrets.SystemRandom)


class TestMechanisms:
    def test_gaussian_sigma_is_diffprivlibs_analytic_sigma(self) -> None:
        """Calibrating the Gaussian by epsilon gives the sigma diffprivlib's GaussianAnalytic uses."""
        from diffprivlib.mechanisms import GaussianAnalytic

        c = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-6), samples=50)
        reference = GaussianAnalytic(epsilon=1.0, delta=1e-6, sensitivity=100.0)._scale
        assert c.noise_stddev == pytest.approx(reference, rel=1e-6)
        assert (c.delta, c.unbiased) == (1e-6, True)

    def test_sigma_sets_the_noise_and_the_epsilon_follows(self) -> None:
        """privacy.sigma is the noise stddev; Laplace's epsilon is sensitivity / (sigma / sqrt 2)."""
        c = calibrate(PrivacyConfig(sigma=282.842712474619), samples=50)
        assert c.epsilon == pytest.approx(0.5, rel=1e-12)
        g = calibrate(PrivacyConfig(mechanism="gaussian", sigma=400.0, delta=1e-6), samples=50)
        assert g.noise_stddev == 400.0
        assert calibrate(
            PrivacyConfig(mechanism="gaussian", epsilon=g.epsilon, delta=1e-6), 50
        ).noise_stddev == (pytest.approx(400.0, rel=1e-6))

    def test_gaussian_noise_is_unbiased_with_the_declared_stddev(self) -> None:
        """10,000 seeded Gaussian releases of 0: mean within 4 standard errors of 0, stddev within 3%."""
        c = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-6), samples=50)
        rng = np.random.RandomState(7)
        draws = np.array([add_noise(0.0, c, rng) for _ in range(10_000)])
        assert abs(draws.mean()) < 4 * c.noise_stddev / 100
        assert draws.std() == pytest.approx(c.noise_stddev, rel=0.03)

    def test_snapping_stays_within_the_bounds_and_says_it_is_biased(self) -> None:
        """Snapping clamps to [lower, upper], so its record says unbiased: false."""
        c = calibrate(PrivacyConfig(mechanism="snapping", epsilon=0.5), samples=50)
        rng = np.random.RandomState(3)
        draws = [add_noise(50.0, c, rng) for _ in range(2_000)]
        assert all(0.0 <= d <= 100.0 for d in draws)
        assert c.as_record()["unbiased"] is False
