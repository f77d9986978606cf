"""The integer grid and exact discrete noise (Canonne, Kamath & Steinke 2020): the one place
where published numbers are made.

A published value is an integer number of grid units plus integer noise, so its bits carry
nothing else (no floating-point attack, Mironov 2012)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where a draw needs it (with decimal, 9 M instructions): the commands that only
    # read the budget never draw, and the grid below is exact in integers.
    from fractions import Fraction
    from typing import Protocol

UNITS_PER_POINT = 100  # grid units per percentage point
GRID = 1 / UNITS_PER_POINT  # 0.01 percentage points


if TYPE_CHECKING:  # a protocol for the type checker only: nothing checks it at run time

    class Uniform(Protocol):
        def randrange(self, stop: int, /) -> int:
            """A uniform integer in [0, stop)."""
            ...


def system_random() -> Uniform:
    """The OS CSPRNG (os.urandom), the default source of every draw."""
    import random  # when drawing: the commands that only read the budget never need it

    return random.SystemRandom()


# -- the grid ---------------------------------------------------------------------------------


def _round_ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator (denominator > 0) rounded to the nearest integer, ties to even,
    exactly: what ``round(Fraction(numerator, denominator))`` gives."""
    floor, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    return floor + (twice > denominator or (twice == denominator and floor % 2 == 1))


def to_units(percent: float) -> int:
    """The grid point nearest ``percent`` (ties to even), computed exactly from the double."""
    numerator, denominator = percent.as_integer_ratio()  # exact; inf and nan raise
    return _round_ratio(numerator * UNITS_PER_POINT, denominator)


def on_grid(percent: float) -> bool:
    """Whether ``percent`` is (the double nearest to) a grid point."""
    return math.isfinite(percent) and to_units(percent) / UNITS_PER_POINT == percent


def to_percent(units: int) -> float:
    """``units`` in percentage points: the double nearest units/100, whose shortest decimal form
    has at most two decimals. A function of the integer alone."""
    return units / UNITS_PER_POINT


def clamp(units: int, low: int, high: int) -> int:
    return min(max(units, low), high)


def quantise_share(percent: float, low: int, high: int) -> int:
    """One value in percent put on the grid and clamped to [low, high] (grid units)."""
    return clamp(to_units(percent), low, high)


def quantise_mean(percents: tuple[float, ...], low: int, high: int) -> int:
    """The equal-weight mean of the values, each put on the grid and clamped first.

    The sum is an exact integer and the mean is rounded (ties to even) in exact rational
    arithmetic, so one value moving by at most ``high - low`` moves the result by at most
    ``ceil((high - low) / n)``: :func:`mean_sensitivity`.
    """
    total = sum(quantise_share(p, low, high) for p in percents)
    return _round_ratio(total, len(percents))


def mean_sensitivity(low: int, high: int, n: int) -> int:
    """How far one of ``n`` values in [low, high] can move :func:`quantise_mean` (grid units)."""
    return -((low - high) // n)  # ceil((high - low) / n)


# -- exact samplers (CKS 2020) ------------------------------------------------------------------


def bernoulli(p: Fraction, rng: Uniform) -> bool:
    """True with probability ``p`` in [0, 1], exactly."""
    return rng.randrange(p.denominator) < p.numerator


def bernoulli_exp(gamma: Fraction, rng: Uniform) -> bool:
    """True with probability exp(-gamma) for rational gamma >= 0, exactly (CKS Algorithm 1)."""
    from fractions import Fraction

    while gamma > 1:
        if not bernoulli_exp(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def discrete_laplace(scale: Fraction, rng: Uniform) -> int:
    """An integer with probability proportional to exp(-|y| / scale) (CKS Algorithm 2)."""
    from fractions import Fraction

    if scale <= 0:
        raise ValueError("the discrete Laplace scale must be positive")
    t, s = scale.numerator, scale.denominator  # scale = t / s
    while True:
        u = rng.randrange(t)
        if not bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        negative = bernoulli(Fraction(1, 2), rng)
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_gaussian(sigma: Fraction, rng: Uniform) -> int:
    """An integer with probability proportional to exp(-y^2 / (2 sigma^2)) (CKS Algorithm 3)."""
    from fractions import Fraction

    if sigma <= 0:
        raise ValueError("the discrete Gaussian sigma must be positive")
    sigma2 = sigma * sigma
    t = math.floor(sigma) + 1
    while True:
        y = discrete_laplace(Fraction(t), rng)
        excess = abs(y) - sigma2 / t
        if bernoulli_exp(excess * excess / (2 * sigma2), rng):
            return y


# -- what the noise is ------------------------------------------------------------------------


def laplace_scale(sensitivity: int, epsilon: float) -> Fraction:
    """The scale at which discrete Laplace noise makes a ``sensitivity``-bounded integer
    exactly epsilon-DP: P(y+1)/P(y) >= exp(-epsilon/sensitivity)."""
    from fractions import Fraction

    return Fraction(sensitivity) / Fraction(epsilon)


def laplace_variance(scale: float) -> float:
    """The variance of discrete Laplace noise of ``scale``: 2a/(1-a)^2 with a = exp(-1/scale)."""
    a = math.exp(-1.0 / scale)
    return 2.0 * a / math.expm1(-1.0 / scale) ** 2


def laplace_pmf(y: int, scale: float) -> float:
    """P(Y = y) for discrete Laplace noise of ``scale``."""
    a = math.exp(-1.0 / scale)
    return (1.0 - a) / (1.0 + a) * a ** abs(y)


def gaussian_pmf(y: int, sigma: float) -> float:
    """P(Y = y) for discrete Gaussian noise of ``sigma`` >= 1 (the normaliser by Poisson
    summation is sigma sqrt(2 pi) to within exp(-2 pi^2 sigma^2))."""
    return math.exp(-(y * y) / (2.0 * sigma * sigma)) / (sigma * math.sqrt(2.0 * math.pi))


def _upper_tail(k: float, sigma: float) -> float:
    """P(N(0, sigma^2) >= k)."""
    return 0.5 * math.erfc(k / (sigma * math.sqrt(2.0)))


def gaussian_delta_bound(sensitivity: int, sigma: float, epsilon: float) -> float:
    """An upper bound on the delta at which discrete Gaussian noise of ``sigma`` makes a
    ``sensitivity``-bounded integer (epsilon, delta)-DP.

    CKS 2020, Theorem 7, gives the exact delta: P[Y > a] - e^eps P[Y > a + sensitivity] with
    a = eps sigma^2 / sensitivity - sensitivity / 2 and Y the discrete Gaussian. Its tails are
    bounded by the continuous ones, because the density is decreasing on [0, inf): the first
    from above (sum over y >= m <= integral from m - 1), the second from below (integral from
    m), with the normaliser between sigma sqrt(2 pi) and that times (1 + 3 exp(-2 pi^2 sigma^2))
    by Poisson summation. The bound is within one grid unit of the continuous Gaussian's delta.
    """
    a = epsilon * sigma * sigma / sensitivity - sensitivity / 2
    m = math.floor(a) + 1
    first = 1.0 if m < 1 else _upper_tail(m - 1, sigma)
    m2 = math.floor(a + sensitivity) + 1
    eta = 3.0 * math.exp(-2.0 * math.pi**2 * sigma * sigma)
    second_tail = _upper_tail(max(m2, 0), sigma) / (1.0 + eta)
    second = math.exp(epsilon + math.log(second_tail)) if second_tail > 0 else 0.0
    return min(1.0, max(0.0, first - second))


def _smallest_fitting(fits: Callable[[float], bool], lo: float, hi: float, rel: float) -> float:
    """Bisect [lo, hi], where ``hi`` fits, down to the smallest value that fits (to ``rel``); the
    value returned always fits, whether or not ``fits`` is monotone."""
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def gaussian_sigma(sensitivity: int, epsilon: float, delta: float, start: float) -> float:
    """The smallest sigma (to 1e-9 relative) whose :func:`gaussian_delta_bound` is <= delta.

    ``start`` is the continuous analytic Gaussian's sigma, which the discrete one never beats.
    """

    def fits(sigma: float) -> bool:
        return gaussian_delta_bound(sensitivity, sigma, epsilon) <= delta

    lo, hi = start, start
    while not fits(hi):
        lo, hi = hi, hi * 1.001 + 1.0
    return _smallest_fitting(fits, lo, hi, 1e-9)


def gaussian_epsilon(sensitivity: int, sigma: float, delta: float) -> float:
    """The smallest epsilon (to 1e-12 relative) whose :func:`gaussian_delta_bound` is <= delta."""

    def fits(epsilon: float) -> bool:
        return gaussian_delta_bound(sensitivity, sigma, epsilon) <= delta

    lo, hi = 0.0, 1.0
    while not fits(hi):
        lo, hi = hi, hi * 2
    return _smallest_fitting(fits, lo, hi, 1e-12)
