"""Differential privacy: what one release costs, and the noisy value it publishes, for a
``window`` or ``sample`` privacy unit and the ``laplace``, ``gaussian`` or ``snapping``
mechanism (docs/privacy.md)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.accounting import (
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    SNAPPING,
    Event,
    event_of,
    gaussian_mu,
)

if TYPE_CHECKING:
    from typing import Any

    from cpu_tracker_daemon.sampling import Window

    # None means the OS CSPRNG; a seeded random.Random in tests only.
    RandomLike = discrete.Uniform | None

UNITS = ("window", "sample")
MECHANISMS = ("laplace", "gaussian", "snapping")
DEFAULT_EPSILON = 0.5
MIN_EPSILON, MAX_EPSILON = 1e-6, 1000.0  # beyond these the noise is meaningless or no noise at all
MIN_SIGMA, MAX_SIGMA = 0.01, 1e9  # percentage points: below one step of the grid it is no noise


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """Exactly one of ``epsilon`` and ``sigma`` is set once loaded (epsilon 0.5 if neither is)."""

    unit: str = "window"
    mechanism: str = "laplace"
    epsilon: float | None = None
    sigma: float | None = None
    delta: float = 1e-6  # per release, Gaussian only
    lower: float = 0.0
    upper: float = 100.0


# The configured name of each mechanism, and the one releases and the ledger record.
MECHANISM_NAMES = {"laplace": DISCRETE_LAPLACE, "gaussian": DISCRETE_GAUSSIAN, "snapping": SNAPPING}


@dataclass(frozen=True, slots=True)
class Calibration:
    """What one release costs and how much noise it carries.

    ``sensitivity_units``, ``lower_units`` and ``upper_units`` are on the integer grid;
    ``noise_param`` is the discrete Laplace scale or the discrete Gaussian sigma, in grid units,
    exactly as the sampler uses it.
    """

    unit: str
    mechanism: str  # as recorded: discrete_laplace, discrete_gaussian or snapping
    epsilon: float
    delta: float
    sensitivity_units: int
    noise_param: float
    noise_stddev: float  # percentage points
    lower_units: int
    upper_units: int

    @property
    def sensitivity(self) -> float:
        return discrete.to_percent(self.sensitivity_units)

    @property
    def lower(self) -> float:
        return discrete.to_percent(self.lower_units)

    @property
    def upper(self) -> float:
        return discrete.to_percent(self.upper_units)

    @property
    def noise_scale(self) -> float:
        """The Laplace scale b, or the Gaussian's sigma, in percentage points."""
        return self.noise_param / discrete.UNITS_PER_POINT

    @property
    def unbiased(self) -> bool:
        return self.mechanism != SNAPPING

    @property
    def on_grid(self) -> bool:
        return self.mechanism != SNAPPING

    @property
    def event(self) -> Event:
        """This release as the accountant sees it (the same event the ledger's spend gives)."""
        return event_of(self.mechanism, self.epsilon, self.delta)

    def as_record(self) -> dict[str, Any]:
        record = {
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
        if self.on_grid:
            record["grid"] = discrete.GRID
            record["sensitivity_units"] = self.sensitivity_units
        return record


def check_privacy(p: PrivacyConfig) -> list[str]:
    """The privacy section's own checks; each problem names the key and the fix."""
    problems: list[str] = []

    def positive(name: str, value: float) -> None:
        if value <= 0:  # the same words as the other sections' (config._positive)
            problems.append(f"{name} must be greater than 0 (got {value:g}); set a positive value")

    if p.unit not in UNITS:
        problems.append(f"privacy.unit must be one of {', '.join(UNITS)} (got {p.unit!r})")
    if p.mechanism not in MECHANISMS:
        problems.append(f"privacy.mechanism must be one of {', '.join(MECHANISMS)} (got {p.mechanism!r})")
    if p.epsilon is not None:
        positive("privacy.epsilon", p.epsilon)
        if math.isfinite(p.epsilon) and p.epsilon > 0 and not MIN_EPSILON <= p.epsilon <= MAX_EPSILON:
            problems.append(
                f"privacy.epsilon must be between {MIN_EPSILON:g} and {MAX_EPSILON:g} (got {p.epsilon:g}); "
                "0.1 to 2 is the usual range"
            )
    if p.sigma is not None:
        positive("privacy.sigma", p.sigma)
        if math.isfinite(p.sigma) and p.sigma > MAX_SIGMA:
            problems.append(f"privacy.sigma must be at most {MAX_SIGMA:g} (got {p.sigma:g}); lower it")
        if 0 < p.sigma < MIN_SIGMA:
            problems.append(
                f"privacy.sigma must be at least {MIN_SIGMA:g} percentage points, one step of the grid "
                f"(got {p.sigma:g}); raise it"
            )
    if p.mechanism == "gaussian" and not 0 < p.delta < 1:
        problems.append(f"privacy.delta must be in (0, 1) for the Gaussian (got {p.delta:g}); use e.g. 1e-6")
    if not 0 <= p.lower <= 100 or not 0 <= p.upper <= 100:
        problems.append(
            f"privacy.lower and privacy.upper must lie in [0, 100] (got {p.lower:g}, {p.upper:g}); "
            "CPU busy is a percentage"
        )
    for name, bound in (("privacy.lower", p.lower), ("privacy.upper", p.upper)):
        if 0 <= bound <= 100 and round(bound * 100) / 100 != bound:  # beyond, bound * 100 may overflow
            problems.append(
                f"{name} must be a multiple of 0.01, the grid releases are published on (got {bound!r}); "
                f"round it to two decimals"
            )
    if p.upper <= p.lower:
        problems.append(
            f"privacy.upper ({p.upper:g}) must be greater than privacy.lower ({p.lower:g}); "
            "swap or widen them"
        )
    return problems


@functools.lru_cache(maxsize=64)
def calibrate(privacy: PrivacyConfig, samples: int) -> Calibration:
    """The sensitivity, cost and noise of one release under ``privacy`` with ``samples`` readings."""
    low, high = discrete.to_units(privacy.lower), discrete.to_units(privacy.upper)
    sensitivity = high - low if privacy.unit == "window" else discrete.mean_sensitivity(low, high, samples)
    mechanism = MECHANISM_NAMES[privacy.mechanism]
    delta = privacy.delta if mechanism == DISCRETE_GAUSSIAN else 0.0
    sigma_units = None if privacy.sigma is None else privacy.sigma * discrete.UNITS_PER_POINT
    if mechanism == DISCRETE_GAUSSIAN:
        if sigma_units is not None:
            param = sigma_units
            epsilon = discrete.gaussian_epsilon(sensitivity, param, delta)
        else:
            epsilon = DEFAULT_EPSILON if privacy.epsilon is None else privacy.epsilon
            start = sensitivity / gaussian_mu(epsilon, delta)
            param = discrete.gaussian_sigma(sensitivity, epsilon, delta, start)
        stddev_units = param
    else:
        if sigma_units is not None:
            epsilon = sensitivity / _laplace_scale_for_stddev(sigma_units)
        else:
            epsilon = DEFAULT_EPSILON if privacy.epsilon is None else privacy.epsilon
        param = sensitivity / epsilon  # one correctly rounded division: float(laplace_scale(...))
        stddev_units = math.sqrt(discrete.laplace_variance(param))
    return Calibration(
        unit=privacy.unit,
        mechanism=mechanism,
        epsilon=epsilon,
        delta=delta,
        sensitivity_units=sensitivity,
        noise_param=param,
        noise_stddev=stddev_units / discrete.UNITS_PER_POINT,
        lower_units=low,
        upper_units=high,
    )


def _laplace_scale_for_stddev(stddev: float) -> float:
    """The discrete Laplace scale whose standard deviation is ``stddev`` (grid units)."""
    c = stddev * stddev / 2  # a / (1 - a)^2 = c, solved for a = exp(-1 / scale)
    # The root ((2c + 1) - sqrt(4c + 1)) / 2c, rationalised: the difference of two nearly equal
    # numbers cancels to 0 for a tiny stddev, and log(0) has no value.
    a = 2 * c / ((2 * c + 1) + math.sqrt(4 * c + 1))
    if a <= 0.0:
        return 0.0  # no noise to speak of: the epsilon is infinite, which the config check refuses
    return -1.0 / math.log(a)


class Statistic:
    """The value noise is added to: in percent (kept private) and on the grid.

    Not a tuple, and its repr withholds the value: a pre-noise value cannot reach a log line, a
    JSON document or a traceback's locals by way of this record."""

    __slots__ = ("percent", "units")

    def __init__(self, percent: float, units: int) -> None:
        self.percent = percent
        self.units = units

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Statistic):
            return NotImplemented
        return (self.percent, self.units) == (other.percent, other.units)

    __hash__ = None  # type: ignore[assignment]  # mutable-free but private: never a dict key

    def __repr__(self) -> str:
        return "Statistic(<the pre-noise value, withheld>)"


@dataclass(frozen=True, slots=True)
class Noisy:
    """A released value: ``units`` on the grid (None for Snapping) and ``cpu`` in percent."""

    cpu: float
    units: int | None


def clamped_mean(samples: Sequence[float], lower: float, upper: float) -> float:
    """The mean of the samples after clamping each to [lower, upper], which bounds sensitivity."""
    return math.fsum(min(max(s, lower), upper) for s in samples) / len(samples)


def statistic(window: Window, calibration: Calibration) -> Statistic:
    """The value noise is added to: one any neighbour under the unit moves by its sensitivity at most.

    ``window``: the window's busy percentage, clamped; any window moves it by ``upper - lower``.
    ``sample``: the equal-weight mean of the clamped samples, in exact grid arithmetic; one
    sample moves it by at most ``ceil((upper - lower) / samples)`` grid units. When a stall makes
    the sub-intervals unequal, equal weights drift from the window's percentage, but weighting by
    length would let one long sub-interval move the mean by more than that bound.
    """
    c = calibration
    if c.unit == "window":
        percent = min(max(window.busy_percent, c.lower), c.upper)
        return Statistic(percent, discrete.quantise_share(percent, c.lower_units, c.upper_units))
    percents = window.percents
    return Statistic(
        clamped_mean(percents, c.lower, c.upper),
        discrete.quantise_mean(percents, c.lower_units, c.upper_units),
    )


def load_snapping() -> Any:
    """diffprivlib's Snapping class, imported (numpy, scipy, scikit-learn with it)."""
    from diffprivlib.mechanisms import Snapping

    return Snapping


def snapping_seed(random_state: RandomLike) -> int | None:
    """The seed Snapping's draw is given: None (the OS's entropy) unless a test seeds the draw,
    wherever it runs (here, or in :mod:`drawing`'s child)."""
    return None if random_state is None else random_state.randrange(2**32)


def snap(percent: float, calibration: Calibration, seed: int | None) -> float:
    """Snapping's noisy ``percent`` (diffprivlib, heavy to import: the daemon calls this in a
    child process, :mod:`drawing`)."""
    c = calibration
    mechanism = load_snapping()(
        epsilon=c.epsilon, sensitivity=c.sensitivity, lower=c.lower, upper=c.upper, random_state=seed
    )
    return float(mechanism.randomise(percent))


def add_noise(value: Statistic, calibration: Calibration, random_state: RandomLike = None) -> Noisy:
    """``value`` plus the calibrated noise: integer grid noise, or Snapping's clamped float."""
    c = calibration
    if c.mechanism == SNAPPING:
        return Noisy(snap(value.percent, c, snapping_seed(random_state)), None)
    rng = discrete.system_random() if random_state is None else random_state
    if c.mechanism == DISCRETE_GAUSSIAN:
        from fractions import Fraction

        noise = discrete.discrete_gaussian(Fraction(c.noise_param), rng)
    else:
        noise = discrete.discrete_laplace(discrete.laplace_scale(c.sensitivity_units, c.epsilon), rng)
    units = value.units + noise
    return Noisy(discrete.to_percent(units), units)
