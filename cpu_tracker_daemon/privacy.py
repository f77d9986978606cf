"""Differential privacy: the only module that imports diffprivlib (lazily, inside ``add_noise``).

The privacy unit says what two neighbouring datasets differ in:

* ``window``: the whole sampling window's CPU activity may differ arbitrarily within
  [lower, upper], so the mean's sensitivity is ``upper - lower``.
* ``sample``: one sample differs, so the sensitivity is ``(upper - lower) / samples``. This is what
  the original SyftBox app protected; it hides one short reading, not what the machine did.

The released value is the clamped-sample mean plus plain Laplace noise (unbiased), not
``diffprivlib.tools.mean``, whose LaplaceTruncated clamps its output and so biases it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cpu_tracker_daemon.config import PrivacyConfig

# None means the OS CSPRNG (diffprivlib uses secrets.SystemRandom); an int seeds tests only.
RandomLike = Any


@dataclass(frozen=True)
class Calibration:
    """What one release costs and how much noise it carries."""

    unit: str
    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float

    @property
    def noise_scale(self) -> float:
        """The Laplace scale b; the noise's standard deviation is b * sqrt(2)."""
        return self.sensitivity / self.epsilon

    @property
    def noise_stddev(self) -> float:
        return self.noise_scale * math.sqrt(2.0)

    def as_record(self, privacy: PrivacyConfig) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sensitivity": self.sensitivity,
            "noise_scale": self.noise_scale,
            "noise_stddev": self.noise_stddev,
            "lower": privacy.lower,
            "upper": privacy.upper,
        }


def calibrate(privacy: PrivacyConfig, samples: int) -> Calibration:
    """The sensitivity and cost of one release under ``privacy`` with ``samples`` readings."""
    width = privacy.upper - privacy.lower
    sensitivity = width if privacy.unit == "window" else width / samples
    return Calibration(
        unit=privacy.unit,
        mechanism=privacy.mechanism,
        epsilon=privacy.epsilon,
        delta=0.0,
        sensitivity=sensitivity,
    )


def clamped_mean(samples: Sequence[float], lower: float, upper: float) -> float:
    """The mean of the samples after clamping each to [lower, upper], which bounds sensitivity."""
    return math.fsum(min(max(s, lower), upper) for s in samples) / len(samples)


def load_mechanisms() -> Any:
    """Import diffprivlib's Laplace (about 1.5 s the first time).

    Called before any budget is reserved, so a broken scientific stack costs no budget.
    """
    from diffprivlib.mechanisms import Laplace

    return Laplace


def add_noise(value: float, calibration: Calibration, random_state: RandomLike = None) -> float:
    """``value`` plus Laplace noise of scale sensitivity/epsilon: unbiased, not clamped."""
    mechanism = load_mechanisms()(
        epsilon=calibration.epsilon,
        delta=calibration.delta,
        sensitivity=calibration.sensitivity,
        random_state=random_state,
    )
    return float(mechanism.randomise(value))
