"""The budget as arithmetic: the caps, what each has spent and would spend with one more
release, and the privacy promise. Pure: no SQLite, no files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cpu_tracker_daemon.privacy.accounting import SECURE_DISCRETE_LAPLACE, Event, compose

if TYPE_CHECKING:
    from cpu_tracker_daemon.config import Config

CAPS = ("lifetime", "window")  # the rolling cap is called "window" in the config and the ledger
_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Promise:
    """What the releases protect, fixed by the first release a ledger accounts: every later one
    must protect the same unit, or the caps would add up releases of different guarantees."""

    unit: str
    samples: int
    interval_seconds: float
    lower: float
    upper: float

    def describe(self) -> str:
        return (
            f"unit {self.unit}, {self.samples} samples of {self.interval_seconds:g} s, "
            f"bounds [{self.lower:g}, {self.upper:g}]"
        )


def worst_epsilon(mechanism: str, epsilon: float, worst: float | None) -> float:
    """The most one release gives away to anyone: its recorded worst case (a secure window's own
    noise, what a cheating aggregator with any roster learns at most); a local release's own
    epsilon; no bound for a secure window recorded without one (before members added noise of
    their own, an aggregator that cheats could learn it exactly)."""
    if worst is not None:
        return worst
    return float("inf") if mechanism == SECURE_DISCRETE_LAPLACE else epsilon


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Caps:
    """The caps from the configuration, (epsilon, delta) each, and the rolling window's length."""

    lifetime_epsilon: float
    window_epsilon: float
    window_hours: float
    lifetime_delta: float = 0.0
    window_delta: float = 0.0


@dataclass(frozen=True, slots=True)
class CapStatus:
    """One cap: its (epsilon, delta) limit, what its events add up to, and what was granted."""

    name: str
    limit: float
    spent: float
    granted: float
    base: float
    delta: float = 0.0
    granted_delta: float = 0.0
    method: str = "none"
    counts: tuple[tuple[Event, int], ...] = ()  # the spends it covers, by kind
    # The same spends' worst cases summed (:func:`worst_epsilon`): what a cheating secure
    # aggregator can learn at most. Recorded and reported; the caps hold ``spent``.
    worst_spent: float = 0.0

    @property
    def remaining(self) -> float:
        return max(self.limit - self.spent, 0.0)

    @property
    def releases(self) -> int:
        return sum(n for _, n in self.counts)

    @property
    def secure_releases(self) -> int:
        """How many of its spends were windows sent to secure rounds."""
        return sum(n for event, n in self.counts if event.mechanism == SECURE_DISCRETE_LAPLACE)

    def fits(self, event: Event) -> bool:
        return self.plus(event).within_limit()

    def within_limit(self) -> bool:
        return self.spent <= self.limit + _TOLERANCE * max(1.0, self.limit)

    def plus(self, event: Event, worst: float | None = None) -> CapStatus:
        """This cap with one more release of ``event`` counted (composed once), whose worst case
        is ``worst`` (None: its own epsilon)."""
        counts = dict(self.counts)
        counts[event] = counts.get(event, 0) + 1
        composed = compose(counts, self.delta)
        return replace(
            self,
            spent=composed.epsilon,
            method=composed.method,
            counts=tuple(counts.items()),
            worst_spent=self.worst_spent + (event.epsilon if worst is None else worst),
        )


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    lifetime: CapStatus
    window: CapStatus
    releases: int
    last_release_at: str | None
    cooldown_anchor_ts: float | None
    window_hours: float = 24.0  # the rolling period in force (never shorter than recorded)

    @classmethod
    def fresh(cls, caps: Caps) -> BudgetStatus:
        """The budget before a ledger exists: the configured caps, nothing spent or granted."""
        return cls(
            lifetime=CapStatus(
                "lifetime", caps.lifetime_epsilon, 0.0, 0.0, caps.lifetime_epsilon, caps.lifetime_delta
            ),
            window=CapStatus("window", caps.window_epsilon, 0.0, 0.0, caps.window_epsilon, caps.window_delta),
            releases=0,
            last_release_at=None,
            cooldown_anchor_ts=None,
            window_hours=caps.window_hours,
        )

    @property
    def caps(self) -> tuple[CapStatus, CapStatus]:
        return (self.lifetime, self.window)

    @property
    def remaining(self) -> float:
        return min(c.remaining for c in self.caps)

    @property
    def secure_releases(self) -> int:
        """How many windows were ever sent to secure rounds: when there are any, the spent
        epsilons are what an aggregator that follows the protocol learns, and ``worst_spent``
        what a cheating one can learn at most."""
        return self.lifetime.secure_releases

    def first_blocking(self, event: Event) -> CapStatus | None:
        return next((c for c in self.caps if not c.fits(event)), None)

    def plus(
        self, event: Event, reserved_ts: float, anchor_ts: float, worst: float | None = None
    ) -> BudgetStatus:
        """The budget once a release of ``event`` (worst case ``worst``, None: its own epsilon)
        reserved at ``reserved_ts``, anchoring the cooldown at ``anchor_ts``, is counted: in the
        lifetime, and in the rolling period that ends at its own planned start. What
        :meth:`Ledger.reserve` returns, without reading again."""
        lifetime = self.lifetime.plus(event, worst)
        last = self.last_release_at
        return replace(
            self,
            lifetime=lifetime,
            window=self.window.plus(event, worst),
            releases=lifetime.releases,
            last_release_at=iso(reserved_ts) if last is None or iso(reserved_ts) > last else last,
            cooldown_anchor_ts=anchor_ts,
        )


def caps_for(config: Config) -> Caps:
    b = config.budget
    return Caps(b.lifetime_epsilon, b.window_epsilon, b.window_hours, b.lifetime_delta, b.window_delta)


def promise_for(config: Config) -> Promise:
    s, p = config.sampling, config.privacy
    return Promise(p.unit, s.samples, s.interval_seconds, p.lower, p.upper)
