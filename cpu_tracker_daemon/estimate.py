"""The network estimate: a weighted mean of peers' noisy values, its standard error and 95% interval.

Each peer's value is its true mean plus zero-mean noise of a declared standard deviation. The
peers' true means also differ from one another. This is the random-effects model of
meta-analysis: value_i = mu + u_i + e_i, with u_i of variance tau^2 (the between-peer spread,
estimated by DerSimonian & Laird 1986) and e_i of variance sigma_i^2 (declared). Weights
1 / (sigma_i^2 + tau^2) give an unbiased estimate of mu with the smallest variance; a peer with
far less noise than the rest would then carry almost all the weight, so no weight may exceed
``max_weight_ratio`` times the median. The standard error is computed for the weights actually
used, so capping costs a little precision and no validity. With equal noise this is the plain
mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    mean: float
    standard_error: float
    ci_low: float
    ci_high: float
    peers: int
    between_peer_sd: float
    max_weight_share: float


def estimate(values: Sequence[float], stddevs: Sequence[float], max_weight_ratio: float = 10.0) -> Estimate:
    """The network mean of ``values`` whose noise has standard deviations ``stddevs``."""
    n = len(values)
    if n == 0 or n != len(stddevs):
        raise ValueError("need one standard deviation per value, and at least one value")
    variances = [s * s for s in stddevs]
    tau2 = _dersimonian_laird(values, variances)
    weights = [1.0 / (v + tau2) for v in variances]
    cap = max_weight_ratio * statistics.median(weights)
    weights = [min(w, cap) for w in weights]
    total = math.fsum(weights)
    mean = math.fsum(w * x for w, x in zip(weights, values, strict=True)) / total
    variance = math.fsum(w * w * (v + tau2) for w, v in zip(weights, variances, strict=True)) / (
        total * total
    )
    se = math.sqrt(variance)
    return Estimate(
        mean=mean,
        standard_error=se,
        ci_low=mean - Z95 * se,
        ci_high=mean + Z95 * se,
        peers=n,
        between_peer_sd=math.sqrt(tau2),
        max_weight_share=max(weights) / total,
    )


def _dersimonian_laird(values: Sequence[float], variances: Sequence[float]) -> float:
    """The method-of-moments estimate of the between-peer variance (0 when it cannot be told)."""
    n = len(values)
    if n < 2:
        return 0.0
    w = [1.0 / v for v in variances]
    sw = math.fsum(w)
    fixed = math.fsum(wi * x for wi, x in zip(w, values, strict=True)) / sw
    q = math.fsum(wi * (x - fixed) ** 2 for wi, x in zip(w, values, strict=True))
    c = sw - math.fsum(wi * wi for wi in w) / sw
    return max(0.0, (q - (n - 1)) / c) if c > 0 else 0.0
