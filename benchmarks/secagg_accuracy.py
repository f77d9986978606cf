"""The network mean's error with secure aggregation beside local DP, and what a real round costs.

At the defaults (epsilon 0.5 per window, privacy unit ``window``, sensitivity 100 points =
10,000 grid units), for N members:

* local DP (today): each member adds discrete Laplace of scale 10,000 / 0.5 units to its own
  value; the mean's error is the mean of N such draws;
* secure aggregation, the central noise: each member adds a share ``NB(1/m, q) - NB(1/m, q)`` of
  one discrete Laplace of the same scale, drawn by the project's own sampler
  (``secagg.noise.share``), m members' shares making the whole noise: calibrated for nothing
  absent (beta 0, m = N); for a fifth absent or colluding, counted as one (the single beta 0.2
  before secagg v2, m = N - floor(N / 5)); and for a fifth absent and, apart from them, a fifth
  colluding (v2's defaults beta_dropped = beta_colluding = 0.2, m = N - 2 floor(N / 5)); each
  with all present and with a fifth really dropped;
* secure aggregation with each member's own noise (v2): besides its share, every member adds
  discrete Laplace of scale 10,000 / local_epsilon, a floor no roster removes; at v2's
  calibration, all present, for local epsilon 2, ``--local-epsilon`` (5 by default) and 10.

Each RMSE, in percentage points, is over ``--rounds`` simulated rounds (the masks are left out
there: they cancel exactly, which the tests check and the last table shows), beside the theory:
sqrt(n/m Var) / present for the shares, sqrt(Var / N) for local DP, Var being discrete
Laplace's 2a/(1-a)^2, and each member's own noise adding its variance once per present member.
Then one round of the whole protocol with the real cryptography (X25519, HKDF, ChaCha20,
AES-GCM, Shamir) at each N, at v2's calibration and ``--local-epsilon``, a fifth dropped after
sharing: whether the sum came out exact, the CPU per member and at the aggregator, and the
bytes a member writes (its keys, shares, masked value and reveal, as the files are written,
signatures included; not its smaller open, check and endorse files).

    python benchmarks/secagg_accuracy.py [--members 10,100,1000] [--rounds 2000] [--local-epsilon 5]
    python benchmarks/secagg_accuracy.py --quick      # 10 and 100 members, 200 rounds

Prints Markdown tables; asserts nothing. Over a real SyftBox network a round's wall time is its
phases' sync delays: see tests/test_syftbox_network.py.
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import numpy as np

from cpu_tracker_daemon.config import DEFAULT_LOCAL_EPSILON
from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.secagg import noise
from cpu_tracker_daemon.secagg.simulate import one_round

EPSILON = 0.5
SENSITIVITY_UNITS = 10_000
SCALE = SENSITIVITY_UNITS / EPSILON
UNITS_PER_POINT = 100
BETA = 0.2  # the fraction absent, and (v2) apart from them the fraction colluding
LOCAL_EPSILONS = (2.0, 10.0)  # shown beside --local-epsilon


def laplace_draws(scale: float, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Discrete Laplace of ``scale`` (grid units) as the difference of two geometric draws."""
    q = math.exp(-1 / scale)
    return rng.geometric(1 - q, size=shape) - rng.geometric(1 - q, size=shape)


def local_rmse(n: int, rounds: int, rng: np.random.Generator) -> float:
    means = laplace_draws(SCALE, (rounds, n), rng).mean(axis=1) / UNITS_PER_POINT
    return float(np.sqrt(np.mean(means**2)))


def calibrated(n: int, dropped: float, colluding: float) -> int:
    """The members whose shares make the whole noise, as a roster counts them."""
    return noise.calibrated_members(n, math.floor(dropped * n), math.floor(colluding * n))


def central_sums(n: int, rounds: int, m: int, present: int, rng: random.Random) -> np.ndarray:
    """Each round's noise in the sum: ``present`` shares of noise calibrated for ``m``."""
    return np.array([sum(noise.share(SCALE, m, rng) for _ in range(present)) for _ in range(rounds)])


def rmse(sums: np.ndarray, present: int) -> float:
    errors = sums / present / UNITS_PER_POINT
    return float(np.sqrt(np.mean(errors**2)))


def cell(got: float, theory_units: float) -> str:
    return f"{got:.3g} ({theory_units / UNITS_PER_POINT:.3g})"


def row(n: int, cells: list[str]) -> str:
    return f"| {n:,} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", default="10,100,1000", help="comma-separated network sizes")
    parser.add_argument("--rounds", type=int, default=2000, help="simulated rounds per row")
    parser.add_argument(
        "--local-epsilon", type=float, default=DEFAULT_LOCAL_EPSILON, help="secure_aggregation.local_epsilon"
    )
    parser.add_argument("--quick", action="store_true", help="10 and 100 members, 200 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.rounds = "10,100", 200
    sizes = [int(s) for s in args.members.split(",")]
    local_epsilons = sorted({*LOCAL_EPSILONS, args.local_epsilon})
    rng = random.Random(2026)
    np_rng = np.random.default_rng(2026)
    variance = discrete.laplace_variance(SCALE)

    print(f"RMSE of the network mean, percentage points ({args.rounds} rounds each; epsilon {EPSILON}):\n")
    print("The central noise alone, as before secagg v2 and at v2's calibration:\n")
    header: tuple[str, ...] = (
        "members",
        "local DP (theory)",
        "beta 0 (theory)",
        "beta 0.2, all present (theory)",
        "beta 0.2, a fifth dropped (theory)",
        "v2: 0.2 absent + 0.2 colluding, all present (theory)",
        "v2: the same, a fifth dropped (theory)",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    v2_sums: dict[int, np.ndarray] = {}
    local_dp: dict[int, tuple[float, float]] = {}
    for n in sizes:
        present = n - math.floor(BETA * n)
        local_dp[n] = (local_rmse(n, args.rounds, np_rng), math.sqrt(variance / n))
        cells = [cell(*local_dp[n])]
        scenarios = {
            "beta 0": (n, n),
            "beta 0.2": (calibrated(n, BETA, 0.0), n),
            "beta 0.2, dropped": (calibrated(n, BETA, 0.0), present),
            "v2": (calibrated(n, BETA, BETA), n),
            "v2, dropped": (calibrated(n, BETA, BETA), present),
        }
        for name, (m, alive) in scenarios.items():
            sums = central_sums(n, args.rounds, m, alive, rng)
            if name == "v2":
                v2_sums[n] = sums
            cells.append(cell(rmse(sums, alive), math.sqrt(variance * alive / m) / alive))
        print(row(n, cells))

    print(
        "\nv2's calibration, all present, with each member's own noise (the floor a cheating "
        "aggregator cannot remove) at local epsilon 2 to 10:\n"
    )
    own_columns = [
        f"+ own noise, local epsilon {e:g}{', the default' if e == DEFAULT_LOCAL_EPSILON else ''} (theory)"
        for e in local_epsilons
    ]
    header = ("members", "local DP (theory)", "central alone (theory)", *own_columns)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for n in sizes:
        m = calibrated(n, BETA, BETA)
        central = variance * n / m
        cells = [cell(*local_dp[n]), cell(rmse(v2_sums[n], n), math.sqrt(central) / n)]
        for local_epsilon in local_epsilons:
            local_scale = SENSITIVITY_UNITS / local_epsilon
            own = laplace_draws(local_scale, (args.rounds, n), np_rng).sum(axis=1)
            theory = math.sqrt(central + n * discrete.laplace_variance(local_scale)) / n
            cells.append(cell(rmse(v2_sums[n] + own, n), theory))
        print(row(n, cells))

    print(
        f"\none round of the whole protocol (v2's calibration, local epsilon {args.local_epsilon:g}), "
        "a fifth dropped after sharing:\n"
    )
    print("| members | neighbours | sum exact | CPU per member, ms | aggregator CPU, s | bytes per member |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        local_scale = SENSITIVITY_UNITS / args.local_epsilon
        done = one_round(n, n // 5, SCALE, rng, BETA, BETA, local_scale=local_scale)
        k = len(done.graph.neighbours(done.graph.roster.members[0]))
        exact = "yes" if done.total == done.expected else "NO"
        print(
            f"| {n:,} | {k} | {exact} | {done.members_cpu / n * 1000:.1f} | {done.aggregator_cpu:.2f} "
            f"| {done.bytes_per_member:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
