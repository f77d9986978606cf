"""Differential privacy: the only module that imports diffprivlib (lazily, inside ``add_noise``).

The privacy unit says what two neighbouring datasets differ in:

* ``window``: the whole sampling window's CPU activity may differ arbitrarily within
  [lower, upper], so the mean's sensitivity is ``upper - lower``.
* ``sample``: one sample differs, so the sensitivity is ``(upper - lower) / samples``. This is what
  the original SyftBox app protected; it hides one short reading, not what the machine did.

The value the noise is added to (:func:`clamped_statistic`) follows the unit: for ``window``, the
window's busy percentage (busy over total CPU-seconds, what /proc/stat says for the window)
clamped to [lower, upper]; for ``sample``, the mean of the clamped samples with equal weights,
which the per-sample sensitivity needs.

Mechanisms (noise added to that value, not through ``diffprivlib.tools.mean``, whose
LaplaceTruncated clamps its output and so biases it):

* ``laplace``: pure epsilon-DP, unbiased, noise scale ``sensitivity / epsilon``.
* ``gaussian``: diffprivlib's analytic Gaussian (Balle & Wang 2018), (epsilon, delta)-DP,
  unbiased; many releases compose far better than Laplace's (see :mod:`accounting`).
* ``snapping``: diffprivlib's Snapping mechanism (Mironov 2012), pure epsilon-DP even against
  an attacker who reads the low-order bits of a floating-point Laplace sample. It rounds to a
  grid and clamps to [lower, upper], so it is biased near the bounds.

Either ``epsilon`` or ``sigma`` (the noise standard deviation in percentage points) is set; the
other follows from the mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpu_tracker_daemon.accounting import GAUSSIAN, SNAPPING, Event, gaussian_epsilon, gaussian_mu
from cpu_tracker_daemon.config import DEFAULT_EPSILON

if TYPE_CHECKING:
    from cpu_tracker_daemon.config import PrivacyConfig
    from cpu_tracker_daemon.sampling import Window

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
    noise_stddev: float
    lower: float
    upper: float

    @property
    def noise_scale(self) -> float:
        """The Laplace scale b (stddev / sqrt 2), or the Gaussian's sigma."""
        return self.noise_stddev if self.mechanism == GAUSSIAN else self.noise_stddev / math.sqrt(2.0)

    @property
    def unbiased(self) -> bool:
        return self.mechanism != SNAPPING

    @property
    def event(self) -> Event:
        """This release as the accountant sees it."""
        if self.mechanism == GAUSSIAN:
            return Event.gaussian(self.sensitivity, self.noise_stddev, self.delta)
        return Event(self.mechanism, self.epsilon, 0.0, self.epsilon * self.epsilon / 2)

    def as_record(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sensitivity": self.sensitivity,
            "noise_scale": self.noise_scale,
            "noise_stddev": self.noise_stddev,
            "unbiased": self.unbiased,
            "lower": self.lower,
            "upper": self.upper,
        }


def calibrate(privacy: PrivacyConfig, samples: int) -> Calibration:
    """The sensitivity, cost and noise of one release under ``privacy`` with ``samples`` readings."""
    width = privacy.upper - privacy.lower
    sensitivity = width if privacy.unit == "window" else width / samples
    delta = privacy.delta if privacy.mechanism == GAUSSIAN else 0.0
    if privacy.mechanism == GAUSSIAN:
        if privacy.sigma is not None:
            stddev = privacy.sigma
            epsilon = gaussian_epsilon(sensitivity / stddev, delta)
        else:
            epsilon = DEFAULT_EPSILON if privacy.epsilon is None else privacy.epsilon
            stddev = sensitivity / gaussian_mu(epsilon, delta)
    elif privacy.sigma is not None:
        stddev = privacy.sigma
        epsilon = sensitivity / (stddev / math.sqrt(2.0))
    else:
        epsilon = DEFAULT_EPSILON if privacy.epsilon is None else privacy.epsilon
        stddev = sensitivity / epsilon * math.sqrt(2.0)
    return Calibration(
        unit=privacy.unit,
        mechanism=privacy.mechanism,
        epsilon=epsilon,
        delta=delta,
        sensitivity=sensitivity,
        noise_stddev=stddev,
        lower=privacy.lower,
        upper=privacy.upper,
    )


def clamped_mean(samples: Sequence[float], lower: float, upper: float) -> float:
    """The mean of the samples after clamping each to [lower, upper], which bounds sensitivity."""
    return math.fsum(min(max(s, lower), upper) for s in samples) / len(samples)


def clamped_statistic(window: Window, unit: str, lower: float, upper: float) -> float:
    """The value noise is added to: one any neighbour under ``unit`` moves by its sensitivity at most.

    ``window``: the window's busy percentage, clamped; any window moves it by ``upper - lower``.
    ``sample``: the equal-weight mean of the clamped samples; one sample moves it by at most
    ``(upper - lower) / samples``. When a stall makes the sub-intervals unequal, equal weights
    drift from the window's percentage, but weighting by length would let one long sub-interval
    move the mean by more than that bound.
    """
    if unit == "window":
        return min(max(window.busy_percent, lower), upper)
    return clamped_mean(window.samples, lower, upper)


def load_mechanisms() -> dict[str, Any]:
    """Import diffprivlib's mechanisms (about 1.5 s the first time).

    Called before any budget is reserved, so a broken scientific stack costs no budget.
    """
    from diffprivlib.mechanisms import GaussianAnalytic, Laplace, Snapping

    return {"laplace": Laplace, "gaussian": GaussianAnalytic, "snapping": Snapping}


def make_mechanism(calibration: Calibration, random_state: RandomLike = None) -> Any:
    """The diffprivlib mechanism for ``calibration``; ``randomise(value)`` draws one release."""
    c = calibration
    kind = load_mechanisms()[c.mechanism]
    if c.mechanism == GAUSSIAN:
        return kind(epsilon=c.epsilon, delta=c.delta, sensitivity=c.sensitivity, random_state=random_state)
    if c.mechanism == SNAPPING:
        return kind(
            epsilon=c.epsilon,
            sensitivity=c.sensitivity,
            lower=c.lower,
            upper=c.upper,
            random_state=random_state,
        )
    return kind(epsilon=c.epsilon, delta=0.0, sensitivity=c.sensitivity, random_state=random_state)


def add_noise(value: float, calibration: Calibration, random_state: RandomLike = None) -> float:
    """``value`` plus the calibrated noise; unbiased and unclamped except for Snapping."""
    return float(make_mechanism(calibration, random_state).randomise(value))
