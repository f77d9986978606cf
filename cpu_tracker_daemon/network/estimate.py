"""The network estimate: a robust weighted mean of peers' noisy values (random effects,
DerSimonian & Laird), its standard error and 95% interval.

What one lying peer can do is bounded: each value is clipped to the range widened by
``CLIP_SIGMAS`` of its noise, tau^2 is capped, and no weight exceeds ``max_weight_ratio`` times
the median, so a peer moves the mean by at most its weight share times the clip range
(``Estimate.max_influence``)."""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
CLIP_SIGMAS = 2.5


@dataclass(frozen=True)
class Estimate:
    mean: float
    standard_error: float
    ci_low: float
    ci_high: float
    peers: int
    between_peer_sd: float
    max_weight_share: float
    clipped: int = 0  # values clipped to their own c-sigma range around [lower, upper]
    max_influence: float = 0.0  # the most one peer's value can move the mean: share x clip range


def estimate(
    values: Sequence[float],
    stddevs: Sequence[float],
    max_weight_ratio: float = 1.0,
    lower: float = 0.0,
    upper: float = 100.0,
) -> Estimate:
    """The network mean of ``values`` whose noise has standard deviations ``stddevs``."""
    n = len(values)
    if n == 0 or n != len(stddevs):
        raise ValueError("need one standard deviation per value, and at least one value")
    # Packed doubles and generators: a pass over 100,000 peers holds a few arrays, not lists of
    # float objects (each 32 bytes a peer).
    reach = array("d", (CLIP_SIGMAS * s for s in stddevs))
    bounded = array("d", (min(max(x, lower - r), upper + r) for x, r in zip(values, reach, strict=True)))
    clipped = sum(b != x for b, x in zip(bounded, values, strict=True))
    variances = array("d", (s * s for s in stddevs))
    tau2 = min(_dersimonian_laird(bounded, variances), ((upper - lower) / 2) ** 2)
    weights = array("d", (1.0 / (v + tau2) for v in variances))
    cap = max_weight_ratio * statistics.median(weights)
    for i, w in enumerate(weights):
        weights[i] = min(w, cap)
    total = math.fsum(weights)
    mean = math.fsum(w * x for w, x in zip(weights, bounded, strict=True)) / total
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
        clipped=clipped,
        max_influence=max(w / total * (upper - lower + 2 * r) for w, r in zip(weights, reach, strict=True)),
    )


# An interval wider than a quarter of the range on each side (+-25 points at 0-100%) spans most
# of what a CPU load can be: it tells a reader nothing they did not know.
INFORMATIVE_FRACTION = 0.25
TARGET_HALF_WIDTH = 5.0  # points: the precision the advice aims at


def informative(ci_low: float, ci_high: float, lower: float = 0.0, upper: float = 100.0) -> bool:
    """Whether a 95% interval is narrow enough to say something: at most ``INFORMATIVE_FRACTION``
    of the range on each side of the estimate (the interval before any clipping)."""
    return (ci_high - ci_low) / 2 <= INFORMATIVE_FRACTION * (upper - lower)


@dataclass(frozen=True)
class Reading:
    """What a person may read from an estimate. The estimate itself stays unbiased (it may lie
    outside the range, as noise does); what is shown lies within it and says when it was clipped."""

    mean: float
    ci_low: float
    ci_high: float
    clipped: bool  # any of the three was outside [lower, upper]
    informative: bool  # the interval is narrow enough to say something
    half_width: float  # of the 95% interval, before clipping
    members_for_target: int  # about how many members like these give +-TARGET_HALF_WIDTH


def reading(est: Estimate, lower: float = 0.0, upper: float = 100.0) -> Reading:
    """Clip ``est`` to [lower, upper] for display, and judge whether it is worth reading.

    With the members' weights equal the variance of the mean is (sigma^2 + tau^2) / N, so N
    (half width / target)^2 members give the target; a larger epsilon shrinks sigma instead."""

    def clip(value: float) -> float:
        return min(max(value, lower), upper)

    half = (est.ci_high - est.ci_low) / 2
    shown = (clip(est.mean), clip(est.ci_low), clip(est.ci_high))
    return Reading(
        mean=shown[0],
        ci_low=shown[1],
        ci_high=shown[2],
        clipped=shown != (est.mean, est.ci_low, est.ci_high),
        informative=informative(est.ci_low, est.ci_high, lower, upper),
        half_width=half,
        members_for_target=max(est.peers, math.ceil(est.peers * (half / TARGET_HALF_WIDTH) ** 2)),
    )


def _dersimonian_laird(values: Sequence[float], variances: Sequence[float]) -> float:
    """The method-of-moments estimate of the between-peer variance (0 when it cannot be told)."""
    n = len(values)
    if n < 2:
        return 0.0
    w = array("d", (1.0 / v for v in variances))
    sw = math.fsum(w)
    fixed = math.fsum(wi * x for wi, x in zip(w, values, strict=True)) / sw
    q = math.fsum(wi * (x - fixed) ** 2 for wi, x in zip(w, values, strict=True))
    c = sw - math.fsum(wi * wi for wi in w) / sw
    return max(0.0, (q - (n - 1)) / c) if c > 0 else 0.0
