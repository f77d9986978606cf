"""Privacy accounting: the (epsilon, delta) guarantee a sequence of releases adds up to, the
least that summation, zero-concentrated DP or Gaussian DP proves. Pure ``math``: no numpy."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

LAPLACE = "laplace"  # continuous, as recorded by earlier versions
GAUSSIAN = "gaussian"  # continuous, as recorded by earlier versions: the only mu-GDP events
SNAPPING = "snapping"
DISCRETE_LAPLACE = "discrete_laplace"
SECURE_DISCRETE_LAPLACE = "secagg_discrete_laplace"  # a share of discrete Laplace, in a secure round
DISCRETE_GAUSSIAN = "discrete_gaussian"
PURE = (LAPLACE, SNAPPING, DISCRETE_LAPLACE, SECURE_DISCRETE_LAPLACE)  # pure epsilon-DP mechanisms


@dataclass(frozen=True, slots=True)
class Event:
    """One release's privacy cost: its own (epsilon, delta) and its zCDP rho.

    ``mu`` is the Gaussian's sensitivity/sigma (0 for other mechanisms).
    """

    mechanism: str
    epsilon: float
    delta: float
    rho: float
    mu: float = 0.0

    @classmethod
    def laplace(cls, epsilon: float) -> Event:
        """A pure epsilon-DP release (Laplace, or any pure mechanism)."""
        return cls(LAPLACE, epsilon, 0.0, epsilon * epsilon / 2)

    @classmethod
    def gaussian(cls, sensitivity: float, sigma: float, delta: float) -> Event:
        """A Gaussian release with noise ``sigma``; its own epsilon is the exact one at ``delta``."""
        mu = sensitivity / sigma
        return cls(GAUSSIAN, gaussian_epsilon(mu, delta), delta, mu * mu / 2, mu)


@functools.lru_cache(maxsize=256)
def event_of(mechanism: str, epsilon: float, delta: float) -> Event:
    """The event of a release recorded as (mechanism, epsilon, delta), as the ledger stores it.

    A Gaussian's noise multiplier is recovered exactly from its (epsilon, delta) calibration.
    A discrete Gaussian is (sensitivity^2 / 2 sigma^2)-zCDP (CKS 2020, Theorem 14) and its
    sigma is never below the continuous one's at the same (epsilon, delta), so the continuous
    rho bounds it; the exact Gaussian-DP composition is not claimed for it (``mu`` 0).
    """
    if mechanism == GAUSSIAN:
        return Event.gaussian(1.0, 1.0 / gaussian_mu(epsilon, delta), delta)
    if mechanism == DISCRETE_GAUSSIAN:
        mu = gaussian_mu(epsilon, delta)
        return Event(mechanism, epsilon, delta, mu * mu / 2)
    return Event(mechanism, epsilon, 0.0, epsilon * epsilon / 2)


@dataclass(frozen=True, slots=True)
class Guarantee:
    """What a set of releases proves together, and which bound proved it."""

    epsilon: float
    delta: float
    method: str


Events = Sequence[Event] | Mapping[Event, int]  # a list, or a multiset: event -> how many times


def counted(events: Events) -> dict[Event, int]:
    """``events`` as a multiset, so composing a long history costs no more than its distinct kinds."""
    counts = events if isinstance(events, Mapping) else Counter(events)
    return {event: n for event, n in counts.items() if n > 0}


def compose(events: Events, delta: float) -> Guarantee:
    """The smallest epsilon provable at total delta ``delta`` for all ``events`` together.

    Summation is always a candidate when its deltas fit, so the result is never looser than it.
    """
    counts = counted(events)
    if not counts:
        return Guarantee(0.0, 0.0, "none")
    candidates: list[Guarantee] = []
    summed_delta = math.fsum(e.delta * n for e, n in counts.items())
    if summed_delta <= delta:
        candidates.append(Guarantee(math.fsum(e.epsilon * n for e, n in counts.items()), summed_delta, "sum"))
    if delta > 0:
        rho = math.fsum(e.rho * n for e, n in counts.items())
        candidates.append(Guarantee(zcdp_epsilon(rho, delta), delta, "zcdp"))
        pure = {e: n for e, n in counts.items() if e.delta == 0}
        gaussians = {e: n for e, n in counts.items() if e.mechanism == GAUSSIAN}
        if gaussians and len(pure) + len(gaussians) == len(counts):
            mu = math.sqrt(math.fsum(e.mu * e.mu * n for e, n in gaussians.items()))
            exact = gaussian_epsilon(mu, delta)
            method = "gaussian-exact" if not pure else "sum+gaussian-exact"
            candidates.append(
                Guarantee(math.fsum(e.epsilon * n for e, n in pure.items()) + exact, delta, method)
            )
    if not candidates:
        return Guarantee(math.inf, summed_delta, "none")
    return min(candidates, key=lambda g: (g.epsilon, g.delta))


@functools.lru_cache(maxsize=256)
def zcdp_epsilon(rho: float, delta: float) -> float:
    """The epsilon at which rho-zCDP gives (epsilon, delta)-DP (CKS 2020, Prop. 12), minimised over alpha.

    Cached: a reserve asks it of the same budget several times (before, with and after a spend).
    """
    if rho <= 0:
        return 0.0
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    log_inv_delta = -math.log(delta)
    best = rho + 2 * math.sqrt(rho * log_inv_delta)  # Bun & Steinke's bound, always valid

    def eps_at(t: float) -> float:  # at order alpha = 1 + e^t
        alpha = 1 + math.exp(t)
        return alpha * rho + _conversion(alpha, log_inv_delta)

    # epsilon(alpha) is smooth with one minimum. Any alpha gives a valid bound: the search only
    # decides how tight it is.
    return max(0.0, min(best, _least_over_orders(eps_at)))


_GOLDEN = (math.sqrt(5) - 1) / 2
_LN10 = math.log(10)


def _least_over_orders(f: Callable[[float], float]) -> float:
    """The least value of ``f`` found by a golden-section search for its one minimum over
    t = ln(alpha - 1), from alpha - 1 = 1e-6 to 1e8: 60 steps (61 evaluations) narrow it to
    1e-11 in t, where the conversions searched here are flat to far below a float's precision."""
    lo, hi = -6 * _LN10, 8 * _LN10
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = f(d)
    return min(fc, fd)


def _conversion(alpha: float, log_inv_delta: float) -> float:
    """What rho-zCDP adds to alpha * rho at order ``alpha`` to give epsilon (CKS 2020, Prop. 12)."""
    return (log_inv_delta + alpha * math.log1p(-1 / alpha) - math.log(alpha - 1)) / (alpha - 1)


def _rho_within(epsilon: float, delta: float) -> float:
    """About the largest rho that :func:`zcdp_epsilon` turns into at most ``epsilon`` at ``delta``:
    the most any order alpha allows, (epsilon - conversion) / alpha, found by the same search."""
    log_inv_delta = -math.log(delta)
    bun_steinke = (math.sqrt(log_inv_delta + epsilon) - math.sqrt(log_inv_delta)) ** 2

    def less_rho(t: float) -> float:  # minus the rho order 1 + e^t allows: the search minimises
        alpha = 1 + math.exp(t)
        return (_conversion(alpha, log_inv_delta) - epsilon) / alpha

    return max(0.0, bun_steinke, -_least_over_orders(less_rho))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_delta(mu: float, epsilon: float) -> float:
    """The exact delta of a Gaussian with sensitivity/sigma ``mu`` at ``epsilon`` (Balle & Wang 2018)."""
    if mu <= 0:
        return 0.0
    second = _phi(-epsilon / mu - mu / 2)
    tail = math.exp(epsilon + math.log(second)) if second > 0 else 0.0
    return max(0.0, _phi(-epsilon / mu + mu / 2) - tail)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which a Gaussian with sensitivity/sigma ``mu`` is (epsilon, delta)-DP."""
    if mu <= 0:
        return 0.0
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > delta:
        hi *= 2
    for _ in range(200):  # delta(epsilon) decreases in epsilon: bisect
        mid = (lo + hi) / 2
        if gaussian_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The sensitivity/sigma at which a Gaussian is exactly (epsilon, delta)-DP (analytic Gaussian)."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError("a Gaussian needs epsilon > 0 and delta in (0, 1)")
    lo, hi = 0.0, 1.0
    while gaussian_epsilon(hi, delta) < epsilon:
        hi *= 2
    for _ in range(100):  # epsilon grows with mu: bisect
        mid = (lo + hi) / 2
        if gaussian_epsilon(mid, delta) < epsilon:
            lo = mid
        else:
            hi = mid
    return lo  # the side that never costs more than epsilon


def releases_within(
    event: Event,
    epsilon_cap: float,
    delta_cap: float,
    prior: Events = (),
    limit: int = 100_000,
    tolerance: float = 0.0,
    start: int | None = None,
) -> int:
    """How many more copies of ``event`` fit under (epsilon_cap, delta_cap) after ``prior``.

    The count is decided by :func:`compose` alone, as a reserve decides it. Where to look first
    is ``start``, or by default the summation and zCDP bounds solved for the count: from there a
    gallop and a bisection settle it in a few compositions, where a search from one took some
    thirty. Any start gives the same count.
    """
    history = counted(prior)
    already = history.get(event, 0)

    def fits(k: int) -> bool:
        return compose({**history, event: already + k}, delta_cap).epsilon <= epsilon_cap + tolerance

    if not fits(0) or not fits(1):
        return 0
    if start is None:
        start = _count_guess(event, epsilon_cap + tolerance, delta_cap, history) - already
    guess = min(max(start, 1), limit)
    if fits(guess):  # gallop up to a bracket: fits(lo), and hi does not fit or is past the limit
        lo, step = guess, 1
        while lo + step <= limit and fits(lo + step):
            lo, step = lo + step, step * 2
        hi = min(lo + step, limit + 1)
    else:  # gallop down; fits(1) holds
        hi, step = guess, 1
        while hi - step > 1 and not fits(hi - step):
            hi, step = hi - step, step * 2
        lo = max(hi - step, 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _count_guess(event: Event, epsilon: float, delta: float, history: Mapping[Event, int]) -> int:
    """About how many copies of ``event`` in all, beside the rest of ``history``, keep the
    summation or the zCDP bound within (epsilon, delta); the exact count is :func:`compose`'s."""
    others = [(e, n) for e, n in history.items() if e != event]
    counts = []
    if event.epsilon > 0:
        room = (epsilon - math.fsum(e.epsilon * n for e, n in others)) / event.epsilon
        if event.delta > 0:
            room = min(room, (delta - math.fsum(e.delta * n for e, n in others)) / event.delta)
        counts.append(room)
    if 0 < delta < 1 and event.rho > 0:
        rho = math.fsum(e.rho * n for e, n in others)
        counts.append((_rho_within(epsilon, delta) - rho) / event.rho)
    best = max(counts, default=math.inf)
    return 2**62 if not best < 2**62 else max(0, math.floor(best))
