"""Utility of each mechanism: error and bias of one release, and of a network's average.

For each mechanism and privacy unit at epsilon 0.1, 0.5, 1 and 2, draws releases of a fixed true
value through the daemon's own calibration and noise (``privacy.add_noise``: integer grid noise,
or diffprivlib's Snapping) and prints, as a Markdown table:

* the mean absolute error over N releases beside its theoretical value (Laplace: about the scale b;
  Gaussian: sigma * sqrt(2/pi); Snapping: none in closed form, Laplace's b shown for reference);
* the bias (mean of noisy - true) with its standard error, and whether it is zero within 4 of
  them (it must be, for every mechanism the daemon publishes as unbiased);
* for a network of 1,000 members each releasing once, the mean absolute error of the average.

Seeded, so the table is reproducible. Usage: python benchmarks/utility.py [--quick] [--true 37]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time

import numpy as np

from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.mechanisms import PrivacyConfig, Statistic, add_noise, calibrate

EPSILONS = (0.1, 0.5, 1.0, 2.0)
MECHANISMS = ("laplace", "gaussian", "snapping")
UNITS = ("window", "sample")
SAMPLES = 50
NETWORK = 1_000


def theoretical_mae(mechanism: str, scale: float, stddev: float) -> float:
    if mechanism == "gaussian":
        return stddev * math.sqrt(2 / math.pi)
    return scale  # Laplace's E|X| = b; Snapping: Laplace's b for reference


def measure(
    mechanism: str, unit: str, epsilon: float, true: float, releases: int, networks: int, seed: int
) -> dict[str, float]:
    c = calibrate(PrivacyConfig(mechanism=mechanism, unit=unit, epsilon=epsilon), SAMPLES)
    rng = random.Random(seed)
    raw = Statistic(true, discrete.to_units(true))

    def draw(_: float) -> float:
        return add_noise(raw, c, rng).cpu

    errors = np.array([draw(true) - true for _ in range(releases)])
    network_errors = np.array([np.mean([draw(true) for _ in range(NETWORK)]) - true for _ in range(networks)])
    bias = float(errors.mean())
    se = float(errors.std(ddof=1) / math.sqrt(releases))
    return {
        "mae": float(np.abs(errors).mean()),
        "theory": theoretical_mae(mechanism, c.noise_scale, c.noise_stddev),
        "bias": bias,
        "se": se,
        "network_mae": float(np.abs(network_errors).mean()),
        "network_theory": c.noise_stddev / math.sqrt(NETWORK) * math.sqrt(2 / math.pi),
        "unbiased": c.unbiased,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 releases and 20 networks (CI)")
    parser.add_argument("--true", type=float, default=37.0, help="the true CPU mean (percent)")
    args = parser.parse_args(argv)
    releases, networks = (1_000, 20) if args.quick else (10_000, 100)
    started = time.monotonic()
    print(f"true value {args.true:g}%, {releases} releases per row, {networks} networks of {NETWORK}\n")
    print(
        "| mechanism | unit | epsilon | MAE measured | MAE theory | bias +- s.e. | bias zero? "
        "| network MAE (theory) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failures = 0
    seed = 0
    for mechanism in MECHANISMS:
        for unit in UNITS:
            for epsilon in EPSILONS:
                seed += 1
                r = measure(mechanism, unit, epsilon, args.true, releases, networks, seed)
                zero = abs(r["bias"]) <= 4 * r["se"]
                verdict = "yes" if zero else ("NO" if r["unbiased"] else "no (clamped)")
                failures += int(r["unbiased"] and not zero)
                print(
                    f"| {mechanism} | {unit} | {epsilon:g} | {r['mae']:.3f} | {r['theory']:.3f} | "
                    f"{r['bias']:+.3f} +- {r['se']:.3f} | {verdict} | "
                    f"{r['network_mae']:.3f} ({r['network_theory']:.3f}) |"
                )
    print(f"\n{time.monotonic() - started:.1f} s; unbiased mechanisms with a bias beyond 4 s.e.: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
