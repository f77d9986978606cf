"""How far can one lying peer, or k colluding ones, move the network estimate?

    python benchmarks/robustness.py              # 2,000 networks per row
    python benchmarks/robustness.py --trials 200

Honest peers' true loads are drawn around 40% (sd 20, clipped to 0-100) and release with the
daemon's default noise (epsilon 0.5, window unit, discrete-Laplace standard deviation 282.8).
An adversary replaces k of them. It may declare any epsilon from 1e-6 to 1000 (the reader
recomputes the noise that implies, so it cannot declare one without the other) and publish any
value the reader accepts (within 30 declared deviations of the range); it picks, per row, the
declaration and value that move the estimate most. The shift is the mean, over networks, of the
estimate with the adversary minus the same network with those peers honest, beside the honest
standard error. The `before` rows run the same attack on the estimator as it was (weights capped
at 10x the median, no clipping, between-peer variance uncapped). The last column is the 95%
interval's coverage of the network's true mean on honest networks.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_tracker_daemon.network.estimate import estimate
from cpu_tracker_daemon.network.peers import MAX_SIGMAS
from cpu_tracker_daemon.privacy.mechanisms import PrivacyConfig, calibrate

EPSILONS = (1e-6, 1e-3, 0.05, 0.2, 0.5, 1.0, 2.0, 10.0, 1000.0)
HONEST = calibrate(PrivacyConfig(), 50).noise_stddev


def robust(values: list[float], stddevs: list[float]) -> float:
    return estimate(values, stddevs).mean


def before(values: list[float], stddevs: list[float]) -> float:
    return estimate(values, stddevs, max_weight_ratio=10.0, lower=-math.inf, upper=math.inf).mean


def network(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    true = np.clip(rng.normal(40.0, 20.0, n), 0.0, 100.0)
    return true, true + rng.laplace(0.0, HONEST / math.sqrt(2.0), n)


def shift(n: int, k: int, trials: int, seed: int, estimator: str) -> tuple[float, float, str]:
    """The adversary's best mean shift over (declared epsilon, value), and the honest SE."""
    fn = robust if estimator == "after" else before
    best, best_how = 0.0, ""
    networks = [network(np.random.default_rng(seed + t), n) for t in range(trials)]
    honest_se = float(np.mean([estimate(v.tolist(), [HONEST] * n).standard_error for _, v in networks]))
    for epsilon in EPSILONS:
        sigma = calibrate(PrivacyConfig(epsilon=epsilon), 50).noise_stddev
        for value in (100.0 + MAX_SIGMAS * sigma, 100.0 + 2.5 * sigma, 100.0):
            total = 0.0
            for _, noisy in networks:
                honest = noisy.tolist()
                lying = [value] * k + honest[k:]
                stddevs = [sigma] * k + [HONEST] * (n - k)
                total += fn(lying, stddevs) - fn(honest, [HONEST] * n)
            mean = total / trials
            if abs(mean) > abs(best):
                best, best_how = mean, f"epsilon {epsilon:g}, value {value:.4g}"
    return best, honest_se, best_how


def coverage(n: int, trials: int, seed: int) -> float:
    covered = 0
    for t in range(trials):
        true, noisy = network(np.random.default_rng(seed + 10_000 + t), n)
        est = estimate(noisy.tolist(), [HONEST] * n)
        covered += est.ci_low <= float(true.mean()) <= est.ci_high
    return covered / trials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=2000, help="networks per row")
    args = parser.parse_args(argv)
    print(
        "| N | liars | estimator | worst mean shift (points) | honest SE | shift / SE | attack | coverage |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for n, k in ((10, 1), (100, 1), (100, 5)):
        cover = coverage(n, args.trials, seed=n)
        for which in ("before", "after"):
            moved, se, how = shift(n, k, args.trials, seed=n * 7 + k, estimator=which)
            print(
                f"| {n} | {k} | {which} | {moved:+.1f} | {se:.1f} | {moved / se:+.2f} | {how} | "
                f"{f'{cover:.3f}' if which == 'after' else ''} |"
            )
            if which == "after" and k == 1 and abs(moved) > se:
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
