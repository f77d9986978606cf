"""The network mean's error with secure aggregation beside local DP, and what a real round costs.

At the defaults (epsilon 0.5 per window, privacy unit ``window``, sensitivity 100 points =
10,000 grid units), for N members:

* local DP (today): each member adds discrete Laplace of scale 10,000 / 0.5 units to its own
  value; the mean's error is the mean of N such draws;
* secure aggregation: each member adds a share ``NB(1/m, q) - NB(1/m, q)`` of one discrete
  Laplace of the same scale, drawn by the project's own sampler (``secagg.noise.share``), with
  m = ceil((1 - beta) N): calibrated for nothing dropped (beta 0), for a fifth dropped or
  colluding (beta 0.2) with all present, and with a fifth really dropped.

Each RMSE, in percentage points, is over ``--rounds`` simulated rounds (the masks are left out
there: they cancel exactly, which the tests check and the second table shows), beside the
theory: sqrt(n/m Var) / present for the shares, sqrt(Var / N) for local DP, Var being
discrete Laplace's 2a/(1-a)^2. Then one round of the whole protocol with the real cryptography
(X25519, HKDF, ChaCha20, AES-GCM, Shamir) at each N, a fifth dropped after sharing: whether the
sum came out exact, the CPU per member and at the aggregator, and the bytes a member writes
(its keys, shares, masked value and reveal, as the files are written).

    python benchmarks/secagg_accuracy.py [--members 10,100,1000] [--rounds 2000]

Prints Markdown tables; asserts nothing. Over a real SyftBox network a round's wall time is its
phases' sync delays: see tests/test_syftbox_network.py (three members: 9-14 s at 6 s steps).
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import numpy as np

from cpu_tracker_daemon import discrete
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", default="10,100,1000", help="comma-separated network sizes")
    parser.add_argument("--rounds", type=int, default=2000, help="simulated rounds per row")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.members.split(",")]
    rng = random.Random(2026)
    np_rng = np.random.default_rng(2026)
    print(f"RMSE of the network mean, percentage points ({args.rounds} rounds each; epsilon {EPSILON}):\n")
    header = ("members", "local DP (theory)", "beta 0 (theory)", "beta 0.2, all present (theory)",
              "beta 0.2, a fifth dropped (theory)")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- |")
    variance = discrete.laplace_variance(SCALE)
    for n in sizes:
        m = noise.calibrated_members(n, 0.2)
        present = n - n // 5
        cells = [
            (local_rmse(n, args.rounds, np_rng), math.sqrt(variance / n)),
            (secagg_rmse(n, args.rounds, 0.0, n, rng), math.sqrt(variance) / n),
            (secagg_rmse(n, args.rounds, 0.2, n, rng), math.sqrt(variance * n / m) / n),
            (secagg_rmse(n, args.rounds, 0.2, present, rng), math.sqrt(variance * present / m) / present),
        ]
        print(
            f"| {n:,} | "
            + " | ".join(f"{got:.3g} ({theory / UNITS_PER_POINT:.3g})" for got, theory in cells)
            + " |"
        )
    print("\none round of the whole protocol, a fifth dropped after sharing:\n")
    print("| members | neighbours | sum exact | CPU per member, ms | aggregator CPU, s | bytes per member |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        done = one_round(n, n // 5, 0.2, SCALE, rng)
        k = len(done.roster.neighbours(done.roster.members[0]))
        exact = "yes" if done.total == done.expected else "NO"
        print(
            f"| {n:,} | {k} | {exact} | {done.members_cpu / n * 1000:.1f} | {done.aggregator_cpu:.2f} "
            f"| {done.bytes_per_member:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
