"""How far one lying member, or k, moves the published secure mean when the roster is split into G
groups whose sums are unmasked apart and combined by their median; beside local DP.

    python benchmarks/secure_robustness.py            # 10, 100, 1,000 members, 2,000 rounds: ~5 min
    python benchmarks/secure_robustness.py --quick    # 200 rounds: about a minute and a half

The design is in docs/secure-aggregation.md ("A lying member"); nothing here changes the daemon.
No cryptography is run: the masks cancel exactly in a group's sum (tests/test_secagg.py checks
it), so a round is the sum of what each member adds, its value and its noise. The noise is drawn
by the daemon's own functions exactly as ``secagg.rounds.member_noise`` draws it (checked at the
start): a share of the central noise, ``secagg.noise.share`` calibrated as a roster of the
group's size is (``Roster.calibrated``, beta_dropped = beta_colluding = 0.2), plus the member's own
discrete Laplace noise at the local scale (local epsilon 5). A member's own noise is drawn once a
round and used for every G; its share is drawn for each G, whose calibration differs. Values: true
loads around 40% (sd 20, clipped to 0-100, on the 0.01 grid), as in benchmarks/robustness.py.

G = 1 is today: one sum, published as its mean unless it fails the aggregator's check
(``published.secure_estimate``: a sum more than ``INVALID_SIGMAS`` noise deviations outside the
range is published as invalid). G > 1: the members are shuffled into G groups of sizes n // G
and n // G + 1; each group's mean is clamped to what that check accepts for its size (a group
outside it is kept at the bound, not dropped: the round is still published), and the estimate is
the median of the G group means. Only G whose groups have at least ``MIN_GROUP`` members are run:
below that a group's calibration, floor(0.2 n_g), covers no absent and no colluding member.

The liar is one member (its group is random). Strategies, after the outside audit in issue 29:
* blind: it adds ``upper`` plus ``INVALID_SIGMAS - 1.5`` noise deviations of its group's sum:
  under the check even if all the others sat at 100%;
* informed: it reads the last round's published result (the same loads, fresh noise, other
  groups) as the others' sum in its group, and fills the headroom to the check, less 1.645 sqrt(2)
  deviations (accepted about 95% of the time);
* steer: from the same reading, it sets its group's mean (today: the published mean) to 90%;
* any residue: it sends the residue mod 2^32 that makes its group's sum the largest signed sum,
  2^31 - 1 (a uniformly random residue also lands outside the check, nearly always). For the
  median this is also the most any strategy can do: its group at the top.
The shift is the mean over rounds of (estimate with the liar - the same round with it honest),
counted over the rounds that were published; "SE" is the estimate's RMSE on honest rounds; a
cell reads "points (SE) [share of rounds published]". k liars (2, and a tenth) coordinate: the
informed liars of one group fill its headroom together; "at the top" puts every group that holds
one at the top; "majority" is the share of rounds in which they hold more than half the groups.

The 95% interval of the median is the exact 0.975 quantile of the median of G independent group
means, each the exact noise distribution of its group's sum (its characteristic function
inverted, as ``secagg.noise.interval`` does) plus the spread that splitting the members adds (a
group's true mean is not the network's): none, or the worst that values in [0, 100] allow
(population sd 50); and, the design's, that worst spread with whatever one group says (the
quantile of the (G + 1) / 2-th smallest of the other G - 1 means). G = 1 shows today's published
interval (``noise.interval``). Local DP: benchmarks/robustness.py's own search (any declared epsilon, any
value its reader accepts) at the same N, with fewer networks at 1,000 members (its reader is
slow); shift over its honest SE. The last table is exact arithmetic, not simulation: what a
fifth of the roster colluding, placed at random, does to a group (see the design).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # robustness.py, the local-DP benchmark
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import robustness

from cpu_tracker_daemon.config import (
    DEFAULT_BETA_COLLUDING,
    DEFAULT_BETA_DROPPED,
    DEFAULT_LOCAL_EPSILON,
)
from cpu_tracker_daemon.privacy.discrete import discrete_laplace, laplace_scale
from cpu_tracker_daemon.privacy.mechanisms import PrivacyConfig, calibrate
from cpu_tracker_daemon.secagg import masks, noise, published
from cpu_tracker_daemon.secagg.protocol import Graph, PublicKeys, Roster
from cpu_tracker_daemon.secagg.rounds import member_noise

CAL = calibrate(PrivacyConfig(), 50)
SCALE = published.scale_of(CAL)  # the central noise's discrete Laplace scale, grid units
LOCAL = float(laplace_scale(CAL.sensitivity_units, DEFAULT_LOCAL_EPSILON))  # each member's own
LOW, HIGH = CAL.lower_units, CAL.upper_units
SIGMAS = published.INVALID_SIGMAS
PER_POINT = 100  # grid units per percentage point
GROUPS = (1, 3, 5, 7, 9, 15, 25)
SIZES = (10, 100, 1000)
STRATEGIES = ("blind", "informed", "steer", "residue")
Z95_ONE_SIDED = 1.6448536269514722
WORST_SPREAD = (CAL.upper - CAL.lower) / 2  # the largest population sd values in range can have
LATTICE = 1 << 21  # grid units: far wider than the noise of any sum here (checked)
DROPOUT = 0.05  # independent drop-out rate for the availability column


def roster_of(size: int) -> Roster:
    """A roster of ``size`` members at the defaults: what a group of that size is calibrated as."""
    key = PublicKeys(bytes(32), bytes(32), bytes(32))
    members = {f"m{i:05d}@example.org": key for i in range(size)}
    return Roster("0", members, DEFAULT_BETA_DROPPED, DEFAULT_BETA_COLLUDING, SCALE, LOCAL)


def min_group() -> int:
    """The least size at which a roster's calibration covers one absent and one colluding member."""
    size = 3  # secure_aggregation.min_members
    while roster_of(size).max_dropped < 1 or roster_of(size).max_colluding < 1:
        size += 1
    return size


MIN_GROUP = min_group()


@dataclass(frozen=True)
class Group:
    """One group size's calibration and the aggregator's check for it, from the package's code."""

    size: int
    calibrated: int
    sd_units: float  # the noise's standard deviation in the group's sum, as the check computes it
    half_units: float  # the published 95% half width of that noise (secure_estimate)
    degree: int  # neighbours of each member within the group
    threshold: int  # shares that rebuild a member's secrets

    @property
    def floor(self) -> float:  # the check's bounds, in grid units of the sum
        return LOW * self.size - SIGMAS * self.sd_units

    @property
    def ceiling(self) -> float:
        return HIGH * self.size + SIGMAS * self.sd_units

    def valid(self, total: float) -> bool:
        return self.floor <= total <= self.ceiling


_GROUPS: dict[int, Group] = {}


def group_of(size: int) -> Group:
    if size not in _GROUPS:
        roster = roster_of(size)
        est = published.secure_estimate(CAL, roster.calibrated, size, HIGH * size // 2, LOCAL)
        assert est is not None
        graph = Graph(roster, bytes(32))
        _GROUPS[size] = Group(
            size,
            roster.calibrated,
            est["standard_error"] * PER_POINT * size,
            (est["ci95"][1] - est["ci95"][0]) / 2 * PER_POINT * size,
            graph.degree(),
            graph.threshold(roster.members[0]),
        )
    return _GROUPS[size]


def split(n: int, g: int) -> list[int]:
    """Group sizes: n // g, and n // g + 1 for the first n % g groups."""
    return [n // g + (1 if i < n % g else 0) for i in range(g)]


def check_member_noise() -> None:
    """The draws below are what ``rounds.member_noise`` draws: its share plus its own noise."""
    roster = roster_of(10)
    for seed in range(20):
        a, b = random.Random(seed), random.Random(seed + 1000)
        expected = member_noise(roster, a, b)
        a, b = random.Random(seed), random.Random(seed + 1000)
        assert expected == own_noise(b) + noise.share(roster.scale, roster.calibrated, a)


_LOCAL_FRACTION = Fraction(roster_of(3).local_scale)


def own_noise(rng: random.Random) -> int:
    return discrete_laplace(_LOCAL_FRACTION, rng)


# -- the interval of the median ------------------------------------------------------------------


_CDFS: dict[int, np.ndarray] = {}


def noise_cdf(group: Group) -> np.ndarray:
    """P(noise <= k - LATTICE / 2) for the noise in a group's sum, all present: its
    characteristic function inverted on the lattice, as ``secagg.noise.interval`` does."""
    if group.size in _CDFS:
        return _CDFS[group.size]
    q, ql = math.exp(-1.0 / SCALE), math.exp(-1.0 / LOCAL)
    r = group.size / group.calibrated
    theta = 2 * math.pi * np.arange(LATTICE // 2 + 1) / LATTICE
    half_sine = np.sin(theta / 2) ** 2
    log_phi = r * (2 * math.log1p(-q) - np.log((1 - q) ** 2 + 4 * q * half_sine))
    log_phi += group.size * (2 * math.log1p(-ql) - np.log((1 - ql) ** 2 + 4 * ql * half_sine))
    pmf = np.clip(np.fft.fftshift(np.fft.irfft(np.exp(log_phi), n=LATTICE)), 0.0, None)
    edge = LATTICE // 16
    assert pmf[:edge].sum() + pmf[-edge:].sum() < 1e-12, "the lattice is too small for this sum"
    return _CDFS.setdefault(group.size, np.cumsum(pmf))


def median_interval(
    sizes: Sequence[int], n: int, spread: float, one_liar: bool = False, level: float = 0.95
) -> tuple[float, float]:
    """The half width (points) of the ``level`` interval of the median of the group means, and
    the median's standard deviation: each group's mean is its noise over its size plus a normal
    term of the variance that drawing its members from the n adds (population sd ``spread``).
    With ``one_liar``, the interval holds whatever one group says: the median is then between the
    (G - 1) / 2-th and the (G + 1) / 2-th of the G - 1 other groups' means, so the half width is
    the ``(1 + level) / 2`` quantile of the latter (a group of the larger size left out)."""
    parts = {}
    for size in sorted(set(sizes)):
        group = group_of(size)
        noise_sd = group.sd_units / (PER_POINT * size)
        tau = spread * math.sqrt((1 / size - 1 / n) * n / (n - 1)) if n > 1 else 0.0
        parts[size] = (noise_sd, tau)
    top = max(math.hypot(s, t) for s, t in parts.values())
    step = min(math.hypot(s, t) for s, t in parts.values()) / 400
    x = np.arange(-25 * top, 25 * top + step, step)
    cdfs = {}
    for size, (_, tau) in parts.items():
        cdf = noise_cdf(group_of(size))
        index = np.floor(x * PER_POINT * size).astype(np.int64) + LATTICE // 2
        f = cdf[np.clip(index, 0, LATTICE - 1)]
        if tau > 0:
            reach = min(int(8 * tau / step), len(x) // 2 - 1)
            grid = np.arange(-reach, reach + 1) * step
            kernel = np.exp(-0.5 * (grid / tau) ** 2)
            f = np.cumsum(np.convolve(np.diff(f, prepend=0.0), kernel / kernel.sum(), mode="same"))
        cdfs[size] = f
    rank = len(sizes) // 2 + 1  # the median's place among the G, counted from the bottom
    honest = sorted(sizes)[:-1] if one_liar else list(sizes)
    counts = np.zeros((len(honest) + 1, len(x)))  # counts[j]: P(exactly j group means are <= x)
    counts[0] = 1.0
    for size in honest:
        f = cdfs[size]
        counts[1:] = counts[1:] * (1 - f) + counts[:-1] * f
        counts[0] *= 1 - f
    rank_cdf = counts[rank:].sum(axis=0)  # P(the rank-th smallest is <= x)
    half = float(x[np.searchsorted(rank_cdf, (1 + level) / 2)])
    density = np.diff(rank_cdf, prepend=0.0)
    return half, float(math.sqrt(np.sum(density * x * x)))


# -- the rounds -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one (N, G) accumulates over the rounds."""

    n: int
    g: int
    sizes: list[int]
    half: tuple[float, float, float]  # 95% half widths (points): noise only, the worst spread,
    # and the worst spread whatever one group says
    sd: tuple[float, float]  # the median's computed sd, the same two ways
    squared: float = 0.0
    honest: int = 0
    honest_invalid: int = 0
    covered: list[int] = field(default_factory=lambda: [0, 0, 0])
    covered_attacked: list[int] = field(default_factory=lambda: [0, 0])
    shift: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, published, rounds]
    last_error: float = 0.0  # the last round's published error (points)
    last_noise: float = 0.0  # G = 1: the last round's total noise, and the liars' own noise
    last_own: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, name: str, moved: float | None) -> None:
        cell = self.shift.setdefault(name, [0.0, 0, 0])
        cell[2] += 1
        if moved is not None:
            cell[0] += moved
            cell[1] += 1

    @property
    def rmse(self) -> float:
        return math.sqrt(self.squared / self.honest)

    def cell(self, name: str, show_published: bool) -> str:
        total, published_, rounds = self.shift[name]
        if published_ == 0:
            return f"none published [0 of {rounds:,}]"
        moved = total / published_
        text = f"{moved:+.3g} ({moved / self.rmse:+.2f})"
        return text + (f" [{published_ / rounds:.1%}]" if show_published else "")


def estimate(tally: Tally, sums: np.ndarray, sizes: np.ndarray) -> float | None:
    """The published estimate from the groups' sums (grid units), or None if the round is invalid."""
    if tally.g == 1:
        return float(sums[0]) / (PER_POINT * tally.n) if group_of(tally.n).valid(float(sums[0])) else None
    floors = np.array([group_of(int(s)).floor for s in sizes])
    ceilings = np.array([group_of(int(s)).ceiling for s in sizes])
    return float(np.median(np.clip(sums, floors, ceilings) / (PER_POINT * sizes)))


def one_round(
    tally: Tally,
    values: np.ndarray,
    own: np.ndarray,
    ks: Sequence[int],
    rng: random.Random,
    np_rng: np.random.Generator,
    first: bool,
) -> None:
    n, g = tally.n, tally.g
    order = np_rng.permutation(n) if g > 1 else np.arange(n)
    where = np.empty(n, dtype=np.int64)  # where[i]: member i's group
    start = 0
    for index, size in enumerate(tally.sizes):
        where[order[start : start + size]] = index
        start += size
    sizes = np.array(tally.sizes, dtype=np.int64)
    calibrated = {s: group_of(s).calibrated for s in set(tally.sizes)}
    shares = np.array([noise.share(SCALE, calibrated[tally.sizes[where[i]]], rng) for i in range(n)])
    contributions = values + own + shares
    sums = np.bincount(where, weights=contributions, minlength=g)
    truth = float(values.mean()) / PER_POINT
    est = estimate(tally, sums, sizes)
    if est is None:  # an honest sum beyond 8 deviations: possible, and very rare
        tally.honest_invalid += 1
        return
    tally.squared += (est - truth) ** 2
    tally.honest += 1
    for i, half in enumerate(tally.half):
        tally.covered[i] += abs(est - truth) <= half
    if not first:
        attack(tally, sums, sizes, where, values, contributions, ks, est, truth)
    tally.last_error = est - truth
    tally.last_noise = float((own + shares).sum())
    tally.last_own = (own + shares)[: max(ks, default=1)].copy()


def attack(
    tally: Tally,
    sums: np.ndarray,
    sizes: np.ndarray,
    where: np.ndarray,
    values: np.ndarray,
    contributions: np.ndarray,
    ks: Sequence[int],
    honest: float,
    truth: float,
) -> None:
    """Each strategy of one liar (member 0), and of k coordinated liars (members 0 to k - 1)."""
    last_mean = truth + tally.last_error  # what the last round published, the loads unchanged

    def guess(group: int, lying: Sequence[int]) -> float:
        """The liars' reading, from the last round, of the honest members' sum in ``group``."""
        if tally.g == 1:  # the last published sum, less the liars' own last contributions
            theirs = float(sum(values[i] + tally.last_own[i] for i in lying))
            return float(values.sum()) + tally.last_noise - theirs
        return (int(sizes[group]) - len(lying)) * PER_POINT * last_mean

    def informed(group: int, lying: Sequence[int]) -> float:
        """What the liars in ``group`` add in all to fill its headroom, less 1.645 sqrt(2) sd."""
        spec = group_of(int(sizes[group]))
        here = [i for i in lying if where[i] == group]
        return spec.ceiling - guess(group, here) - Z95_ONE_SIDED * math.sqrt(2) * spec.sd_units

    def lie(fills: dict[int, float | None], lying: Sequence[int]) -> float | None:
        """The estimate when the liars in each group of ``fills`` add that much in all (None: the
        residue that reads as the largest signed sum, 2^31 - 1)."""
        lied = sums.copy()
        for group, total in fills.items():
            rest = int(sums[group]) - int(sum(contributions[i] for i in lying if where[i] == group))
            residue = masks.MODULUS // 2 - 1 - rest if total is None else round(total)
            lied[group] = masks.signed(rest + residue)
        return estimate(tally, lied, sizes)

    home = int(where[0])
    spec = group_of(int(sizes[home]))
    plans: dict[str, float | None] = {
        "blind": HIGH + (SIGMAS - 1.5) * spec.sd_units,
        "informed": informed(home, [0]),
        "steer": 0.9 * HIGH * spec.size - guess(home, [0]),
        "residue": None,
    }
    for name, plan in plans.items():
        lied = lie({home: plan}, [0])
        tally.add(name, None if lied is None else lied - honest)
        if name == "residue" and lied is not None:
            for i, half in enumerate(tally.half[1:]):
                tally.covered_attacked[i] += abs(lied - truth) <= half
    for k in ks:
        lying = range(k)
        groups = sorted({int(where[i]) for i in lying})
        lied = lie({h: informed(h, lying) for h in groups}, lying)
        tally.add(f"k={k} informed", None if lied is None else lied - honest)
        if tally.g > 1:
            lied = lie(dict.fromkeys(groups), lying)
            tally.add(f"k={k} top", None if lied is None else lied - honest)
            tally.add(f"k={k} majority", float(len(groups) > tally.g // 2))


def simulate(n: int, gs: Sequence[int], trials: int, seed: int, ks: Sequence[int]) -> list[Tally]:
    rng, exact = random.Random(seed), random.Random(seed + 1)
    np_rng = np.random.default_rng(seed)
    tallies = []
    for g in gs:
        sizes = split(n, g)
        if g == 1:
            one = group_of(n)
            half = one.half_units / (PER_POINT * n)
            sd = one.sd_units / (PER_POINT * n)
            tallies.append(Tally(n, g, sizes, (half, half, half), (sd, sd)))
        else:
            plain, worst = median_interval(sizes, n, 0.0), median_interval(sizes, n, WORST_SPREAD)
            robust = median_interval(sizes, n, WORST_SPREAD, one_liar=True)
            tallies.append(Tally(n, g, sizes, (plain[0], worst[0], robust[0]), (plain[1], worst[1])))
    for t in range(trials + 1):  # round 0 only gives round 1 its "last round"
        true = np.clip(np_rng.normal(40.0, 20.0, n), 0.0, 100.0)
        values = np.rint(true * PER_POINT).astype(np.int64)
        own = np.array([own_noise(exact) for _ in range(n)], dtype=np.int64)
        for tally in tallies:
            one_round(tally, values, own, ks, rng, np_rng, first=t == 0)
    return tallies


# -- what a fifth colluding does to a group ------------------------------------------------------


def hypergeom_sf(population: int, marked: int, draws: int, at_least: int) -> float:
    """P(X >= at_least), X the marked among ``draws`` drawn without replacement."""
    total = math.comb(population, draws)
    return (
        sum(
            math.comb(marked, x) * math.comb(population - marked, draws - x)
            for x in range(max(at_least, 0), min(marked, draws) + 1)
        )
        / total
    )


def binom_sf(trials: int, p: float, at_least: int) -> float:
    return sum(math.comb(trials, x) * p**x * (1 - p) ** (trials - x) for x in range(at_least, trials + 1))


def window_epsilon(left: float, honest: int) -> float:
    """The privacy loss of one member's window when the honest shares in its group's sum make
    ``left`` of the central noise and ``honest`` present members (it among them) add their own
    noise: the largest |log p(y) - log p(y - sensitivity)| over the sum's noise pmf where both
    exceed 1e-13 (the pmf from its characteristic function, as above; in the tails the loss
    tends to sensitivity / scale, the protocol's epsilon)."""
    q, ql = math.exp(-1.0 / SCALE), math.exp(-1.0 / LOCAL)
    theta = 2 * math.pi * np.arange(LATTICE // 2 + 1) / LATTICE
    half_sine = np.sin(theta / 2) ** 2
    log_phi = left * (2 * math.log1p(-q) - np.log((1 - q) ** 2 + 4 * q * half_sine))
    log_phi += honest * (2 * math.log1p(-ql) - np.log((1 - ql) ** 2 + 4 * ql * half_sine))
    pmf = np.fft.fftshift(np.fft.irfft(np.exp(log_phi), n=LATTICE))
    delta = CAL.sensitivity_units
    a, b = pmf[delta:], pmf[:-delta]
    both = (a > 1e-13) & (b > 1e-13)
    return float(np.max(np.abs(np.log(a[both]) - np.log(b[both]))))


def colluders_row(n: int, g: int) -> str:
    """For a member of a group of the smallest size: the odds that a fifth of the roster,
    placed at random, holds a threshold of its neighbours (its secrets rebuilt: its value left
    under its own noise alone) or more colluders than its group is calibrated for; the honest
    noise then left at the 99th percentile and the epsilon it gives a member's window; the
    central variance a group calibrated for the colluders' 1e-6 quantile would add; and
    availability at independent drop-outs."""
    size = min(split(n, g))
    group, roster = group_of(size), roster_of(size)
    colluders = math.floor(DEFAULT_BETA_COLLUDING * n)
    exposed = hypergeom_sf(n - 1, colluders, group.degree, group.threshold)
    over = hypergeom_sf(n - 1, colluders, size - 1, roster.max_colluding + 1)
    x99 = roster.max_colluding
    while hypergeom_sf(n, colluders, size, x99 + 1) > 0.01:
        x99 += 1
    honest = size - roster.max_dropped - x99
    left = honest / group.calibrated
    x_tail = roster.max_colluding
    while hypergeom_sf(n, colluders, size, x_tail + 1) > 1e-6 / g:
        x_tail += 1
    tail_m = size - roster.max_dropped - x_tail
    factor = f"{group.calibrated / tail_m:.2f}" if tail_m > 0 else "impossible"
    aborts = binom_sf(size, DROPOUT, roster.max_dropped + 1)
    groups_lost = binom_sf(g, aborts, g - (g // 2 + 1) + 1) if g > 1 else aborts
    epsilon = window_epsilon(min(left, 1.0), honest)
    return (
        f"| {n:,} | {g} | {size} | {group.calibrated} | {group.degree} / {group.threshold} | "
        f"{exposed:.1e} | {over:.2f} | {min(left, 1.0):.2f}, {epsilon:.3g} | {factor} | "
        f"{aborts:.1e} | {groups_lost:.1e} |"
    )


# -- the command ----------------------------------------------------------------------------------


def table(header: Sequence[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))


def liar_counts(n: int) -> list[int]:
    """The k of the k-liar rows: 2, and a tenth of the members."""
    return sorted({k for k in (2, n // 10) if k > 1})


def print_accuracy(results: dict[int, list[Tally]]) -> None:
    print("Accuracy on honest rounds (points): the estimate's RMSE beside its computed sd (noise")
    print("only / the worst spread of values); the 95% interval's half width and its coverage of")
    print("the true mean (noise only / the worst spread / that and whatever one group says); and")
    print("the coverage with one liar at the top (the last two intervals):\n")
    table(("N", "G", "group sizes", "RMSE", "computed sd", "95% half width", "coverage, honest",
           "coverage, one liar"))  # fmt: skip
    for n, tallies in results.items():
        for t in tallies:
            if t.g == 1:
                cells = [
                    f"{t.sd[0]:.3g}",
                    f"{t.half[0]:.3g}",
                    f"{t.covered[0] / t.honest:.3f}",
                    "no estimate",
                ]
            else:
                attacked = t.shift["residue"][2]
                cells = [
                    f"{t.sd[0]:.3g} / {t.sd[1]:.3g}",
                    " / ".join(f"{h:.3g}" for h in t.half),
                    " / ".join(f"{c / t.honest:.3f}" for c in t.covered),
                    " / ".join(f"{c / attacked:.3f}" for c in t.covered_attacked),
                ]
            sizes = ", ".join(str(s) for s in sorted(set(t.sizes)))
            print(f"| {n:,} | {t.g} | {sizes} | {t.rmse:.3g} | " + " | ".join(cells) + " |")
            if t.honest_invalid:
                print(f"| | | {t.honest_invalid} honest rounds failed the check, left out | | | | | |")


def print_one_liar(
    results: dict[int, list[Tally]], local: dict[tuple[int, int], tuple[float, float, int]]
) -> None:
    print("\nOne liar: the mean shift of the published estimate, points (in SE, the honest RMSE)")
    print("[share of rounds published]; local DP from benchmarks/robustness.py at the same N:\n")
    table(("N", "G", "SE", "blind", "informed", "steer to 90%", "any residue (G > 1: at the top)"))
    for n, tallies in results.items():
        for t in tallies:
            cells = [t.cell(s, show_published=t.g == 1) for s in STRATEGIES]
            print(f"| {n:,} | {t.g} | {t.rmse:.3g} | " + " | ".join(cells) + " |")
        moved, se, used = local[(n, 1)]
        print(
            f"| {n:,} | local DP ({used:,} networks) | {se:.3g} | "
            f"worst of its search: {moved:+.3g} ({moved / se:+.2f}) | | | |"
        )


def print_k_liars(
    results: dict[int, list[Tally]], local: dict[tuple[int, int], tuple[float, float, int]]
) -> None:
    print("\nk liars, coordinated: the mean shift, points (in SE); local DP beside:\n")
    table(("N", "k", "G", "informed, filling their groups' headroom", "their groups at the top",
           "they hold a majority of groups", "local DP"))  # fmt: skip
    for n, tallies in results.items():
        for k in liar_counts(n):
            moved, se, _ = local[(n, k)]
            for t in tallies:
                top, majority = "-", "-"
                if t.g > 1:
                    top = t.cell(f"k={k} top", show_published=False)
                    held, _, rounds = t.shift[f"k={k} majority"]
                    majority = f"{held / rounds:.2f}"
                informed = t.cell(f"k={k} informed", show_published=t.g == 1)
                beside = f"{moved:+.3g} ({moved / se:+.2f})"
                print(f"| {n:,} | {k} | {t.g} | {informed} | {top} | {majority} | {beside} |")


def print_colluders(sizes: Sequence[int]) -> None:
    print(
        "\nGroups and colluders (exact arithmetic; a fifth of the roster colluding, placed at random; "
        f"a group of the smallest size; drop-outs independent at {DROPOUT:.0%}):\n"
    )
    table(("N", "G", "n_g", "calibrated", "neighbours / threshold", "P(colluders hold a threshold)",
           "P(more colluders than calibrated)", "at its 99th percentile: honest noise left, epsilon",
           "central variance to calibrate for 1e-6", "P(a group aborts)", "P(no estimate)"))  # fmt: skip
    for n in sizes:
        for g in GROUPS:
            if g == 1 or n // g >= MIN_GROUP:
                print(colluders_row(n, g))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=2000, help="simulated rounds per network size")
    parser.add_argument("--members", default=",".join(map(str, SIZES)), help="comma-separated sizes")
    parser.add_argument("--quick", action="store_true", help="200 rounds, fewer local-DP networks")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    trials = 200 if args.quick else args.trials
    sizes = [int(s) for s in args.members.split(",")]
    check_member_noise()
    started = time.monotonic()
    print(
        f"Secure rounds, {trials:,} a size (seed {args.seed}); epsilon {CAL.epsilon}, local epsilon "
        f"{DEFAULT_LOCAL_EPSILON:g}, beta_dropped {DEFAULT_BETA_DROPPED}, beta_colluding "
        f"{DEFAULT_BETA_COLLUDING}; groups of at least {MIN_GROUP} (floor(0.2 n_g) >= 1).\n"
    )
    results: dict[int, list[Tally]] = {}
    local: dict[tuple[int, int], tuple[float, float, int]] = {}
    for n in sizes:
        gs = [g for g in GROUPS if g == 1 or n // g >= MIN_GROUP]
        results[n] = simulate(n, gs, trials, args.seed + n, liar_counts(n))
        networks = max(20, min(trials, 400_000 // n))  # robustness.py's reader is slow at 1,000
        for k in (1, *liar_counts(n)):
            moved, se, _ = robustness.shift(n, k, networks, seed=n * 7 + k, estimator="after")
            local[(n, k)] = (moved, se, networks)
    print_accuracy(results)
    print_one_liar(results, local)
    print_k_liars(results, local)
    print_colluders(sizes)
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
