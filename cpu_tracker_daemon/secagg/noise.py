"""Noise that splits exactly: each member's share of one discrete Laplace draw, a difference of
negative binomials drawn from the OS CSPRNG."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol


class Uniform01(Protocol):
    def random(self) -> float:
        """A uniform float in [0, 1)."""
        ...


_SYSTEM = random.SystemRandom()


def calibrated_members(members: int, dropped: int, colluding: int) -> int:
    """How many members' shares must add up to the whole noise when up to ``dropped`` of the
    ``members`` may be declared absent and, apart from them, up to ``colluding`` may collude:
    the rest, at least 1."""
    if not (dropped >= 0 and colluding >= 0 and dropped + colluding < members):
        raise ValueError("the absent and the colluding must leave at least one member")
    return members - dropped - colluding


def share(scale: float, members: int, rng: Uniform01 = _SYSTEM) -> int:
    """One member's share of discrete Laplace noise of ``scale`` split ``members`` ways."""
    q = math.exp(-1.0 / scale)
    r = 1.0 / members
    return negative_binomial(r, q, rng) - negative_binomial(r, q, rng)


def negative_binomial(r: float, q: float, rng: Uniform01 = _SYSTEM) -> int:
    """NB(r, q): P(k) = Gamma(k + r) / (k! Gamma(r)) (1 - q)^r q^k, as a Poisson(-r ln(1-q))
    number of logarithmic(q) variables."""
    total = 0
    for _ in range(poisson(-r * math.log1p(-q), rng)):
        total += logarithmic(q, rng)
    return total


def poisson(rate: float, rng: Uniform01 = _SYSTEM) -> int:
    """Poisson(rate) by inversion (the rates here are small: about 0.01 per share)."""
    u = rng.random()
    k, p = 0, math.exp(-rate)
    cumulative = p
    limit = rate + 40 * math.sqrt(rate) + 40  # past this the remaining mass is below 1e-17
    while u >= cumulative and k < limit:
        k += 1
        p *= rate / k
        cumulative += p
    return k


def logarithmic(q: float, rng: Uniform01 = _SYSTEM) -> int:
    """The logarithmic distribution, P(k) = -q^k / (k ln(1 - q)), by Kemp's algorithm LK
    (Devroye 1986, X.5)."""
    v = 1.0 - rng.random()  # in (0, 1]
    if v >= q:
        return 1
    w = -math.expm1(rng.random() * math.log1p(-q))  # 1 - (1 - q)^U
    if v <= w * w:
        return int(1 + math.log(v) / math.log(w))
    return 2 if v <= w else 1


def interval(
    scale: float, calibrated: int, present: int, local_scale: float | None, level: float = 0.95
) -> tuple[int, bool]:
    """The half width of the noise's ``level`` interval in a round's sum, and whether it is
    exact: :func:`half_width` for the shares alone; with each present member's own discrete
    Laplace noise of ``local_scale`` too, by inverting the noise's characteristic function on a
    lattice wide enough that the aliased mass is below 1e-12 (by a Chernoff bound on the tails),
    or, for a sum too wide for that lattice, the Chernoff bound itself: an interval that holds
    the noise with probability at least ``level``, a little wider than the exact one (not
    exact: said so)."""
    import numpy as np

    if local_scale is None:
        return half_width(scale, calibrated, present, level), True
    if not 0 < level < 1 or present < calibrated or calibrated < 1:
        raise ValueError("need 0 < level < 1 and present >= calibrated >= 1")
    r = present / calibrated
    a, al = 1.0 / scale, 1.0 / local_scale

    def tail(x: int) -> float:  # at least P(noise >= x), the noise being symmetric
        return _chernoff(x, ((r, a), (present, al)))

    alias = _smallest(lambda x: 2 * tail(x) <= ALIASED)
    size = 1 << max(10, math.ceil(math.log2(2 * alias + 64)))
    if size > MAX_LATTICE:
        return _smallest(lambda x: 2 * tail(x + 1) <= 1 - level), False
    q, ql = math.exp(-a), math.exp(-al)
    theta = 2 * math.pi * np.arange(size // 2 + 1) / size
    # 1 - 2q cos(t) + q^2 as (1 - q)^2 + 4q sin^2(t / 2): no cancellation near t = 0
    half_sine = np.sin(theta / 2) ** 2
    log_phi = r * (2 * math.log1p(-q) - np.log((1 - q) ** 2 + 4 * q * half_sine))
    log_phi += present * (2 * math.log1p(-ql) - np.log((1 - ql) ** 2 + 4 * ql * half_sine))
    pmf = np.fft.irfft(np.exp(log_phi), n=size)
    inside = pmf[0] + 2 * np.cumsum(pmf[1 : size // 2])  # inside[x - 1] = P(|noise| <= x)
    reach = int(np.searchsorted(inside, level))
    return (0 if pmf[0] >= level else reach + 1), True


MAX_LATTICE = 1 << 21  # 16 MiB a float array: the aggregator's memory, not the interval, sets it
ALIASED = 1e-12  # the mass beyond the lattice's half, which folds back onto it


def _chernoff(x: int, parts: tuple[tuple[float, float], ...]) -> float:
    """An upper bound on P(D >= x) for D the sum, over ``parts`` of (weight, a), of ``weight``
    times (G1 - G2), G geometric with q = exp(-a): the least, over 0 < l < min a, of
    E[exp(l D)] exp(-l x), the moment generating function in closed form, found by
    golden-section search (the exponent is convex in l)."""
    top = min(a for _, a in parts)

    def exponent(lam: float) -> float:
        total = -lam * x
        for weight, a in parts:
            total += weight * (
                2 * math.log(-math.expm1(-a))
                - math.log(-math.expm1(lam - a))
                - math.log(-math.expm1(-lam - a))
            )
        return total

    low, high = 0.0, top * (1 - 1e-9)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if exponent(left) <= exponent(right):
            high = right
        else:
            low = left
    return min(1.0, math.exp(min(exponent((low + high) / 2), 0.0)))


def _smallest(holds: Callable[[int], bool]) -> int:
    """The least integer x >= 0 for which ``holds`` (false, then true, as x grows) is true."""
    high = 1
    while not holds(high):
        high *= 2
    low = 0
    while low < high:
        mid = (low + high) // 2
        if holds(mid):
            high = mid
        else:
            low = mid + 1
    return low


def half_width(scale: float, calibrated: int, present: int, level: float = 0.95) -> int:
    """The smallest ``x`` with P(|noise| <= x) >= ``level`` for the noise in a round's sum:
    ``present`` shares calibrated for ``calibrated``, NB(r, q) - NB(r, q) with r = present /
    calibrated. Exact up to the doubles' rounding and a tail below 1e-12 left out (which only
    widens the interval). It needs numpy, which the aggregator imports for this alone."""
    import numpy as np

    if not 0 < level < 1 or present < calibrated or calibrated < 1:
        raise ValueError("need 0 < level < 1 and present >= calibrated >= 1")
    q = math.exp(-1.0 / scale)
    r = present / calibrated
    sd = math.sqrt(r * q) / (1 - q)
    size = int(r * q / (1 - q) + 40 * sd) + 16  # NB(r, q) beyond this has mass below 1e-12
    k = np.arange(1, size, dtype=np.float64)
    log_pmf = np.empty(size)
    log_pmf[0] = r * math.log1p(-q)
    log_pmf[1:] = log_pmf[0] + np.cumsum(np.log(q * (k + r - 1) / k))
    pmf = np.exp(log_pmf)
    at_least = np.cumsum(pmf[::-1])[::-1]  # at_least[j] = P(A >= j)

    def above(x: int) -> float:  # P(A - B > x) = sum_b P(B = b) P(A >= x + b + 1)
        if x + 1 >= size:
            return 0.0
        return float(np.dot(pmf[: size - x - 1], at_least[x + 1 :]))

    tail = (1 - level) / 2  # the noise is symmetric
    low, high = 0, size
    while low < high:
        mid = (low + high) // 2
        if above(mid) <= tail:
            high = mid
        else:
            low = mid + 1
    return low
