"""The privacy audit: statistical tests of every published mechanism, through the daemon's code path.

    python benchmarks/privacy_audit.py            # 200,000 draws per neighbour (about 3 minutes)
    python benchmarks/privacy_audit.py --draws 20000 --seed 3

For each published mechanism (discrete Laplace, discrete Gaussian) and privacy unit (window,
sample), two neighbouring windows (all idle against all busy for ``window``; one sample of 50
changed from 0 to 100% for ``sample``) are released many times each, the way the daemon
releases them: the window's statistic, the noise, the public record as JSON, and the ``cpu``
read back from that text. Then:

* **threshold test**: for events {cpu >= t} and {cpu <= t} at several thresholds, the
  Clopper-Pearson bounds (95%, Bonferroni over the events) give a lower bound on the epsilon
  any observer of these outputs can prove; it must not exceed the claimed epsilon;
* **chi-square** of the noise (output minus the grid value) against the exact pmf; the same test
  against a pmf whose scale is 30% off must reject (the test has power);
* **floating-point distinguisher** (Mironov 2012): outputs off the grid (none may be), and the
  event "in (-128, 36] and not a multiple of 2^-46" that separated raw 0 from raw 100 under the
  continuous Laplace, measured as an epsilon lower bound like the thresholds.

The row `continuous laplace (before)` runs the same distinguisher on diffprivlib's float Laplace,
which releases before schema 2 used: that is the attack this audit guards against.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_tracker_daemon.config import SamplingConfig
from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.mechanisms import Calibration, PrivacyConfig, add_noise, calibrate, statistic
from cpu_tracker_daemon.records import public_record
from cpu_tracker_daemon.sampling import Reading, Window

SAMPLES = 50
CONFIDENCE = 0.95
LATTICE = 2.0**-46
CASES = [("laplace", "window"), ("laplace", "sample"), ("gaussian", "window"), ("gaussian", "sample")]


def neighbours(unit: str) -> tuple[Window, Window]:
    """Two windows that differ in what ``unit`` protects: the whole window, or one sample."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    idle = (Reading(0.0, 1.0),) * SAMPLES
    busy = Reading(1.0, 1.0)
    other = (busy,) * SAMPLES if unit == "window" else (busy, *idle[1:])
    end = now + timedelta(seconds=SAMPLES)
    return Window(now, end, idle, 1.0), Window(now, end, other, 1.0)


def release(window: Window, calibration: Calibration, rng: random.Random) -> float:
    """One release as the daemon makes it, read back from the published JSON text."""
    noisy = add_noise(statistic(window, calibration), calibration, rng)
    record = public_record("0" * 32, noisy, window.start, window.end, SamplingConfig(), calibration)
    return float(json.loads(json.dumps(record))["cpu"])


def draws(window: Window, calibration: Calibration, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [release(window, calibration, rng) for _ in range(n)]


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """The two-sided (1 - alpha) Clopper-Pearson interval for a binomial proportion."""
    from scipy.stats import beta

    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def epsilon_lower_bound(
    a: Sequence[float], b: Sequence[float], events: Sequence[Callable[[float], bool]], delta: float
) -> float:
    """The largest epsilon the events prove at ``CONFIDENCE`` (Bonferroni), both directions."""
    alpha = (1 - CONFIDENCE) / (2 * len(events))
    best = 0.0
    for event in events:
        ka, kb = sum(map(event, a)), sum(map(event, b))
        for (k1, n1), (k2, n2) in (((ka, len(a)), (kb, len(b))), ((kb, len(b)), (ka, len(a)))):
            low, _ = clopper_pearson(k1, n1, alpha)
            _, high = clopper_pearson(k2, n2, alpha)
            if low - delta > 0 and high > 0:
                best = max(best, math.log((low - delta) / high))
    return best


def threshold_events(calibration: Calibration) -> list[Callable[[float], bool]]:
    """{cpu >= t} and {cpu <= t} for t at and beyond each neighbour by up to two noise scales."""
    c = calibration
    scale = c.noise_param
    above = [c.lower_units + c.sensitivity_units + round(j * scale / 2) for j in range(5)]
    below = [c.lower_units - round(j * scale / 2) for j in range(5)]
    events: list[Callable[[float], bool]] = []
    for t in above:
        events.append(lambda y, t=t: discrete.to_units(y) >= t)
    for t in below:
        events.append(lambda y, t=t: discrete.to_units(y) <= t)
    return events


def off_grid(y: float) -> bool:
    return not discrete.on_grid(y)


def mironov(y: float) -> bool:
    """Mironov's event: a value in (-128, 36] that is not a multiple of 2^-46."""
    return -128 < y <= 36 and (y / LATTICE) != math.floor(y / LATTICE)


def bin_probabilities(calibration: Calibration, edges: Sequence[int], scale_factor: float) -> list[float]:
    """P(noise in [edges[i], edges[i+1])) under the exact pmf (scaled by ``scale_factor``), with
    the two open tails as the first and last bin."""
    c = calibration
    if c.mechanism == "discrete_laplace":
        a = math.exp(-1.0 / (c.noise_param * scale_factor))

        def cdf(k: int) -> float:  # P(Y < k) = P(Y <= k - 1); P(Y <= -m) = a^m / (1 + a) for m >= 0
            return a ** (1 - k) / (1 + a) if k <= 1 else 1 - a**k / (1 + a)

    else:
        sigma = c.noise_param * scale_factor

        def cdf(k: int) -> float:  # continuity-corrected: sigma is tens of thousands of units
            return 0.5 * math.erfc(-(k - 0.5) / (sigma * math.sqrt(2)))

    points = [cdf(k) for k in edges]
    return [points[0]] + [hi - lo for lo, hi in itertools.pairwise(points)] + [1 - points[-1]]


def chi_square(noise: Sequence[int], calibration: Calibration, scale_factor: float = 1.0) -> float:
    """The p-value of the noise's histogram against the exact pmf."""
    from scipy.stats import chi2

    scale = calibration.noise_param
    edges = [round(j * scale / 2) for j in range(-8, 9)]
    expected = bin_probabilities(calibration, edges, scale_factor)
    counts = [0] * (len(edges) + 1)
    for y in noise:
        counts[sum(1 for e in edges if y >= e)] += 1
    n = len(noise)
    stat = sum((k - n * p) ** 2 / (n * p) for k, p in zip(counts, expected, strict=True) if n * p > 0)
    return float(chi2.sf(stat, len(counts) - 1))


@dataclass(frozen=True)
class Row:
    mechanism: str
    unit: str
    epsilon: float
    delta: float
    draws: int
    threshold_lower_bound: float
    chi_square_p: float
    chi_square_p_scale_off: float
    off_grid: int
    mironov_lower_bound: float

    @property
    def holds(self) -> bool:
        return (
            self.threshold_lower_bound <= self.epsilon
            and self.mironov_lower_bound <= self.epsilon
            and self.off_grid == 0
            and self.chi_square_p > 1e-4
            and self.chi_square_p_scale_off < 1e-6
        )


def audit(mechanism: str, unit: str, n: int, seed: int, epsilon: float = 0.5) -> Row:
    c = calibrate(PrivacyConfig(mechanism=mechanism, unit=unit, epsilon=epsilon), SAMPLES)
    first, second = neighbours(unit)
    a, b = draws(first, c, n, seed), draws(second, c, n, seed + 1)
    base = statistic(first, c).units
    noise = [discrete.to_units(y) - base for y in a]
    return Row(
        mechanism=c.mechanism,
        unit=unit,
        epsilon=c.epsilon,
        delta=c.delta,
        draws=n,
        threshold_lower_bound=epsilon_lower_bound(a, b, threshold_events(c), c.delta),
        chi_square_p=chi_square(noise, c),
        chi_square_p_scale_off=chi_square(noise, c, 1.3),
        off_grid=sum(map(off_grid, a)) + sum(map(off_grid, b)),
        mironov_lower_bound=epsilon_lower_bound(a, b, [mironov], c.delta),
    )


def continuous_before(n: int, seed: int, epsilon: float = 0.5) -> Row:
    """Mironov's distinguisher against diffprivlib's float Laplace at raw 0 and raw 100."""
    from diffprivlib.mechanisms import Laplace

    mech = Laplace(epsilon=epsilon, sensitivity=100.0, random_state=seed)
    a = [float(mech.randomise(0.0)) for _ in range(n)]
    b = [float(mech.randomise(100.0)) for _ in range(n)]
    return Row(
        mechanism="continuous laplace (before)",
        unit="window",
        epsilon=epsilon,
        delta=0.0,
        draws=n,
        threshold_lower_bound=math.nan,
        chi_square_p=math.nan,
        chi_square_p_scale_off=math.nan,
        off_grid=sum(map(off_grid, a)) + sum(map(off_grid, b)),
        mironov_lower_bound=epsilon_lower_bound(a, b, [mironov], 0.0),
    )


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| mechanism | unit | claimed epsilon | delta | draws per neighbour | measured lower bound "
        "(thresholds) | Mironov event lower bound | off-grid outputs | chi-square p | p with scale 30% off |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fig(value: float, spec: str) -> str:
        return "n/a" if math.isnan(value) else format(value, spec)

    for r in rows:
        lines.append(
            f"| {r.mechanism} | {r.unit} | {r.epsilon:g} | {r.delta:g} | {r.draws:,} | "
            f"{fig(r.threshold_lower_bound, '.3f')} | {r.mironov_lower_bound:.3f} | {r.off_grid:,} | "
            f"{fig(r.chi_square_p, '.3g')} | {fig(r.chi_square_p_scale_off, '.3g')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--draws", type=int, default=200_000, help="releases per neighbour")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows = [audit(m, u, args.draws, args.seed) for m, u in CASES]
    print(table([*rows, continuous_before(args.draws, args.seed)]))
    failed = [r for r in rows if not r.holds]
    for r in failed:
        print(f"FAILED: {r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
