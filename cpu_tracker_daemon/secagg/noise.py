"""Noise that splits exactly: each member's share of one discrete Laplace draw.

Discrete Laplace of scale t is G1 - G2 with G geometric, NB(1, q), q = exp(-1/t); the negative
binomial is infinitely divisible, so m members adding NB(1/m, q) - NB(1/m, q) each add up to
exactly discrete Laplace of scale t, and k >= m of them to discrete Laplace plus independent
symmetric noise (still epsilon-DP: post-processing). NB(r, q) is drawn as a Poisson number of
logarithmic variables (its compound-Poisson form) from the OS CSPRNG. The rates are irrational,
so the draws use floating point; only integers come out.
"""

from __future__ import annotations

import math
import random
from typing import Protocol


class Uniform01(Protocol):
    def random(self) -> float:
        """A uniform float in [0, 1)."""
        ...


_SYSTEM = random.SystemRandom()


def calibrated_members(members: int, beta: float) -> int:
    """How many members' shares must add up to the whole noise when up to ``beta`` of the
    ``members`` may drop out or collude: ceil((1 - beta) members), at least 1."""
    if not 0 <= beta < 1:
        raise ValueError("beta must be in [0, 1)")
    return max(1, math.ceil((1 - beta) * members - 1e-9))


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
