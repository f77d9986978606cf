"""Shamir sharing of a 32-byte secret: ours (cpu_tracker_daemon.secagg.shares) beside PyCryptodome's.

For a threshold t with 2t - 2 shares (t = 31 with 60 shares, a member's neighbours at 1,000
members; t = 21 with 40), times in CPU seconds per call:

* split: all the shares of one secret (PyCryptodome: ``Shamir.split`` of each 16-byte half);
* combine: one secret from t shares at indices not seen before (the Lagrange coefficients and
  the sum), and, ours only, from a Combiner already built for those indices (the sum alone).

Each figure is the fastest of several repeats, so other load on the machine inflates it least.
Checks that our shares combine with PyCryptodome's combine and that both combines give the same
bytes on the same shares; exits 1 if not.

Usage: python benchmarks/shamir.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

from Crypto.Protocol.SecretSharing import Shamir

from cpu_tracker_daemon.secagg import shares

THRESHOLDS = (31, 21)


def per_call(run: Callable[[], object], calls: int, repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``calls`` calls, in CPU seconds per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            run()
        best = min(best, (time.process_time() - started) / calls)
    return best


def pycryptodome_split(secret: bytes, threshold: int, count: int) -> list[shares.Share]:
    low = Shamir.split(threshold, count, secret[:16])
    high = Shamir.split(threshold, count, secret[16:])
    return [(i, a + b) for (i, a), (_, b) in zip(low, high, strict=True)]


def pycryptodome_combine(parts: list[shares.Share]) -> bytes:
    return Shamir.combine([(i, v[:16]) for i, v in parts]) + Shamir.combine([(i, v[16:]) for i, v in parts])


def measure(
    threshold: int, *, quick: bool, rng: random.Random
) -> tuple[list[tuple[str, float, float]], bool]:
    """Rows of (operation, ours, PyCryptodome's) in CPU seconds per call, and whether both agree."""
    count = 2 * threshold - 2
    secret = os.urandom(32)
    parts = sorted(rng.sample(shares.split(secret, threshold, count), threshold))
    indices = [i for i, _ in parts]
    values = [v for _, v in parts]
    garbage = [(i, os.urandom(32)) for i in indices]
    ok = pycryptodome_combine(parts) == secret == shares.combine(parts)
    ok = ok and pycryptodome_combine(garbage) == shares.combine(garbage)

    def combine_fresh() -> bytes:
        return shares.Combiner(indices).combine(values)  # the Lagrange coefficients every call

    combiner = shares.Combiner(indices)
    ours = (20, 3) if quick else (200, 5)  # calls, repeats
    theirs = (1, 2) if quick else (3, 3)
    their_combine = per_call(lambda: pycryptodome_combine(parts), *theirs)
    rows = [
        (
            "split",
            per_call(lambda: shares.split(secret, threshold, count), *ours),
            per_call(lambda: pycryptodome_split(secret, threshold, count), *theirs),
        ),
        ("combine, new indices", per_call(combine_fresh, *ours), their_combine),
        ("combine, Combiner reused", per_call(lambda: combiner.combine(values), *ours), their_combine),
    ]
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a few seconds)")
    args = parser.parse_args(argv)
    rng = random.Random(30)
    print("| t | shares | operation | ours | PyCryptodome | PyCryptodome / ours |")
    print("|---|---|---|---|---|---|")
    failed = []
    for threshold in THRESHOLDS:
        rows, ok = measure(threshold, quick=args.quick, rng=rng)
        if not ok:
            failed.append(threshold)
        count = 2 * threshold - 2
        for name, ours, theirs in rows:
            print(
                f"| {threshold} | {count} | {name} | {ours * 1e3:.3f} ms | {theirs * 1e3:.1f} ms "
                f"| {theirs / ours:.0f}x |",
                flush=True,
            )
    if failed:
        print(f"\nours and PyCryptodome disagree at t = {failed}")
        return 1
    print("\nchecked: our shares combine with PyCryptodome's combine; both combines give the same bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
