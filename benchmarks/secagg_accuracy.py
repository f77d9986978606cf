"""The network mean's error with secure aggregation beside local DP, and one real round's cost.

At the defaults (epsilon 0.5 per window, privacy unit ``window``, sensitivity 100 points =
10,000 grid units), for N members:

* local DP (today): each member adds discrete Laplace of scale 10,000 / 0.5 units to its own
  value; the mean's error is the mean of N such draws;
* secure aggregation: each member adds a share ``NB(1/m, q) - NB(1/m, q)`` of one discrete
  Laplace of the same scale, drawn by the project's own sampler (``secagg.noise.share``), with
  m = ceil((1 - beta) N): calibrated for nothing dropped (beta 0), for a fifth dropped or
  colluding (beta 0.2) with all present, and with a fifth really dropped.

Each row is the RMSE, in percentage points, of the mean over ``--rounds`` simulated rounds
(the masks are left out here: they cancel exactly, which the tests check and the last table
shows). Then one round of the whole protocol with the real cryptography (X25519, HKDF,
ChaCha20, AES-GCM, Shamir) at each N with a fifth dropped after sharing: whether the sum came
out exact, and the CPU it took per member and for the aggregator.

    python benchmarks/secagg_accuracy.py [--members 100,1000] [--rounds 2000]

Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import numpy as np

from cpu_tracker_daemon.secagg import noise
from cpu_tracker_daemon.secagg.simulate import one_round

EPSILON = 0.5
SENSITIVITY_UNITS = 10_000
SCALE = SENSITIVITY_UNITS / EPSILON
UNITS_PER_POINT = 100


def local_rmse(n: int, rounds: int, rng: np.random.Generator) -> float:
    q = math.exp(-1 / SCALE)
    draws = rng.geometric(1 - q, size=(rounds, n)) - rng.geometric(1 - q, size=(rounds, n))
    means = draws.mean(axis=1) / UNITS_PER_POINT
    return float(np.sqrt(np.mean(means**2)))


def secagg_rmse(n: int, rounds: int, beta: float, present: int, rng: random.Random) -> float:
    m = noise.calibrated_members(n, beta)
    errors = []
    for _ in range(rounds):
        total = sum(noise.share(SCALE, m, rng) for _ in range(present))
        errors.append(total / present / UNITS_PER_POINT)
    return math.sqrt(sum(e * e for e in errors) / rounds)


def real_round(n: int, dropped: int, rng: random.Random) -> tuple[bool, float, float]:
    """(exact, CPU s per member, CPU s of the aggregator) for one round with real crypto."""
    done = one_round(n, dropped, 0.2, SCALE, rng)
    return done.total == done.expected, done.members_cpu / n, done.aggregator_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", default="100,1000", help="comma-separated network sizes")
    parser.add_argument("--rounds", type=int, default=2000, help="simulated rounds per row")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.members.split(",")]
    rng = random.Random(2026)
    np_rng = np.random.default_rng(2026)
    print(f"RMSE of the network mean, percentage points ({args.rounds} rounds each; epsilon {EPSILON}):\n")
    header = (
        "members",
        "local DP",
        "secure aggregation, beta 0",
        "beta 0.2, all present",
        "beta 0.2, a fifth dropped",
    )
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- |")
    for n in sizes:
        row = [
            local_rmse(n, args.rounds, np_rng),
            secagg_rmse(n, args.rounds, 0.0, n, rng),
            secagg_rmse(n, args.rounds, 0.2, n, rng),
            secagg_rmse(n, args.rounds, 0.2, n - n // 5, rng),
        ]
        print(f"| {n:,} | " + " | ".join(f"{v:.3g}" for v in row) + " |")
    print("\none round of the whole protocol, a fifth dropped after sharing:\n")
    print("| members | sum exact | CPU per member, ms | aggregator CPU, s |")
    print("| --- | --- | --- | --- |")
    for n in sizes:
        exact, per_member, aggregator = real_round(n, n // 5, rng)
        print(f"| {n:,} | {'yes' if exact else 'NO'} | {per_member * 1000:.1f} | {aggregator:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
