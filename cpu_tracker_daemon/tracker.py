"""One release cycle: recover, cooldown, sample, reserve budget, add noise, write.

The order is the privacy argument: the spend is committed to the ledger before any noise is
drawn, and the noisy record before anything is written; the raw mean goes to the private file
alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cpu_tracker_daemon import permissions, storage, timewords
from cpu_tracker_daemon.budget import requests as budget_requests
from cpu_tracker_daemon.budget.caps import BudgetStatus, CapStatus, caps_for, promise_for
from cpu_tracker_daemon.budget.ledger import (
    LOCK_TIMEOUT_SECONDS,
    BootClock,
    Ledger,
    ReleaseStatus,
    Spend,
    boot_clock,
    open_ledger,
)
from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import (
    BudgetExhaustedError,
    CooldownError,
    CpuTrackerError,
    Interrupted,
    LedgerCorruptError,
    LedgerUnavailableError,
    Outcome,
    OutputError,
    RoundEndedError,
    UsageError,
    one_line,
)
from cpu_tracker_daemon.network import metrics
from cpu_tracker_daemon.privacy import drawing
from cpu_tracker_daemon.privacy.accounting import SECURE_DISCRETE_LAPLACE, Event
from cpu_tracker_daemon.privacy.mechanisms import Calibration, Statistic, calibrate, statistic
from cpu_tracker_daemon.records import private_record, public_record
from cpu_tracker_daemon.sampling import CpuSource, Window, sample_window
from cpu_tracker_daemon.schedule import (
    WAIT_GRACE_SECONDS,
    Clock,
    Spacing,
    due_at,
    grid_late,
    planned_boot,
    planned_end,
    planned_start,
    publish_time,
    round_start,
    utc_now,
)
from cpu_tracker_daemon.schedule import max_wait as daemon_wait
from cpu_tracker_daemon.schedule import round_id as schedule_round_id
from cpu_tracker_daemon.signals import Flag, StopRequest
from cpu_tracker_daemon.storage import Layout

if TYPE_CHECKING:
    from cpu_tracker_daemon.privacy.mechanisms import RandomLike


def check_outputs(ledger: Ledger | None, layout: Layout) -> None:
    """Fail closed when an output holds a release this ledger never accounted.

    That is a ledger restored from an older copy, a ledger deleted and created anew beside the
    outputs of the old one, or a second state directory publishing to the same place: each
    would let releases out beyond a cap. An output that cannot be read says nothing either way.
    The public file is the one checked: it is this datasite's alone (the private one sits in the
    SyftBox folder, which one user owns), and it is what a second budget would publish through.
    """
    path = layout.public_file
    release_id = (storage.read_json(path) or {}).get("release_id")
    if isinstance(release_id, str) and (ledger is None or not ledger.knows(release_id)):
        raise LedgerCorruptError(
            str(layout.ledger),
            f"the release in {path} ({release_id}) is not in this ledger: it was restored from an "
            "older copy, replaced, or another cpu-tracker publishes there; restore the ledger that "
            "wrote it, or start over deliberately with 'cpu-tracker ledger reset --reason TEXT'",
        )


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did; ``error`` says why nothing was released, when nothing was."""

    outcome: Outcome  # RELEASED, or the refusal's
    duration_seconds: float
    release_id: str | None = None
    epsilon_spent: float = 0.0
    epsilon_remaining: float | None = None
    next_due_at: datetime | None = None
    recovered: int = 0
    error: CpuTrackerError | None = None
    secure_round: str | None = None  # a secure-aggregation member: the round's outcome for it

    def log_fields(self) -> dict[str, Any]:
        fields = {} if self.secure_round is None else {"secure_round": self.secure_round}
        return fields | {
            "outcome": self.outcome,
            "release_id": self.release_id,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
            "duration_seconds": round(self.duration_seconds, 3),
            "next_due_at": self.next_due_at.isoformat() if self.next_due_at else None,
            "recovered": self.recovered,
        }

    def summary(self, now: datetime, publish_after: float = 0.0) -> str:
        """The cycle in a sentence, for a terminal; the next release lands ``publish_after``
        seconds after its window starts."""
        nxt = ""
        if self.next_due_at is not None:
            lands = self.next_due_at + timedelta(seconds=publish_after)
            nxt = f"; next release {timewords.relative(lands, now)} (at {timewords.local(lands, now)})"
        if self.outcome == Outcome.RELEASED and self.secure_round is not None:
            detail = f"{self.secure_round}; epsilon {self.epsilon_spent:g}"
            return f"sent a masked value to the secure round ({detail}){nxt}"
        if self.outcome == Outcome.RELEASED:
            return f"released a value (epsilon {self.epsilon_spent:g}){nxt}"
        if self.outcome == Outcome.COOLDOWN:
            return f"in cooldown{nxt}"
        detail = one_line(str(self.error)) if self.error is not None else self.outcome
        return f"{self.outcome.replace('_', ' ')}: {detail}"


@dataclass(frozen=True)
class Tracker:
    config: Config
    layout: Layout
    cpu: CpuSource
    log: Any
    clock: Clock = utc_now
    random_state: RandomLike = None
    stop: StopRequest = field(default_factory=Flag)
    monotonic: Callable[[], float] = time.monotonic
    spacing: Spacing | None = None  # the daemon's: real time between its releases
    boot: BootClock = boot_clock
    hold_seconds: float | None = None  # None: publish_hold(config); a test with a fake clock sets 0
    lock_timeout: float = LOCK_TIMEOUT_SECONDS  # how long to wait for another process's ledger lock
    full_check: bool = True  # every open runs the full verification; the daemon's cycles need not
    announce: bool = False  # once: say what the cycle does before each wait (a daemon logs one line a cycle)

    @property
    def every(self) -> timedelta:
        return timedelta(seconds=self.config.schedule.every_seconds)

    @property
    def secure(self) -> bool:
        """A member of secure aggregation: its windows are the network's slots, and each goes to
        the slot's round instead of a release of its own."""
        return self.config.secure_aggregation.enabled

    def open_ledger(self, full: bool | None = None) -> Ledger:
        """The ledger, verified (fully when ``full``, by default ``full_check``), with the config's
        privacy promise checked against it; a missing one is created, unless an output shows
        that another ledger wrote here."""
        if not self.layout.ledger.exists():
            check_outputs(None, self.layout)
        ledger = open_ledger(
            self.layout.ledger,
            caps_for(self.config),
            self.clock(),
            boot=self.boot,
            timeout=self.lock_timeout,
            full=self.full_check if full is None else full,
        )
        assert ledger is not None  # created when missing
        try:
            ledger.check_promise(promise_for(self.config))
        except CpuTrackerError:
            ledger.close()
            raise
        return ledger

    def next_due(self, ledger: Ledger) -> datetime:
        """When the next release may start (now, if one is already due)."""
        now = self.clock()
        return due_at(self._anchor(ledger, now), self.every, now, grid_late(self.config))

    def _anchor(self, ledger: Ledger, now: datetime) -> float | None:
        anchor, skewed = ledger.cooldown_anchor(now)
        if skewed:
            self.log.warning(
                "clock.skew",
                detail="the last release is dated in the future; treating it as now",
                anchor=now.isoformat(),
            )
        return anchor

    def cycle(self, *, force: bool = False, max_wait: float = 0.0) -> CycleResult:
        """Run one cycle. Ledger corruption propagates; every other refusal is in the result."""
        started = self.monotonic()
        try:
            ledger = self.open_ledger()
        except LedgerUnavailableError as exc:  # held by a backup tool or a shell: retry next time
            return CycleResult(Outcome.LEDGER_UNAVAILABLE, self.monotonic() - started, error=exc)
        with ledger:
            recovered = 0
            check_outputs(ledger, self.layout)
            try:
                recovered = self._recover(ledger)
                return self._release(ledger, started, force, max_wait, recovered)
            except CpuTrackerError as exc:
                if exc.outcome is None:  # not a refusal: it stops the daemon or the command
                    raise
                return self._refused(ledger, started, exc, recovered)

    def _refused(self, ledger: Ledger, started: float, exc: CpuTrackerError, recovered: int) -> CycleResult:
        outcome = exc.outcome
        assert outcome is not None
        remaining = None
        due = None
        if outcome in (Outcome.BUDGET_EXHAUSTED, Outcome.COOLDOWN, Outcome.ROUND_ENDED, Outcome.NOISE_FAILED):
            remaining = ledger.status(caps_for(self.config), self.clock()).remaining
            due = self.next_due(ledger)
            if isinstance(exc, CooldownError):  # the process's own spacing may say later
                due = max(due, datetime.fromisoformat(exc.due_at))
        return CycleResult(
            outcome=outcome,
            duration_seconds=self.monotonic() - started,
            epsilon_remaining=remaining,
            next_due_at=due,
            recovered=recovered,
            error=exc,
        )

    def _recover(self, ledger: Ledger) -> int:
        """Settle releases a crash left unfinished; return how many were republished."""
        republished = 0
        for item in ledger.unfinished():
            if item.status is None:
                ledger.record(item.release_id, ReleaseStatus.ABANDONED, self.clock())
                self.log.warning(
                    "release.abandoned",
                    release_id=item.release_id,
                    detail="reserved but interrupted before noise was recorded; the spend stays counted",
                )
            elif ledger.published_after(item.reserved_ts) or item.payload is None:
                ledger.record(item.release_id, ReleaseStatus.SUPERSEDED, self.clock())
            else:
                self._write_public(item.payload)
                ledger.record(item.release_id, ReleaseStatus.PUBLISHED, self.clock())
                republished += 1
                self.log.info("release.recovered", release_id=item.release_id)
        return republished

    def _then_round(self, slot: datetime, now: datetime) -> str:
        """For a member of secure aggregation, what follows its window: the slot's round."""
        if not self.secure:
            return ""
        begins = timewords.local(round_start(slot, self.config), now)
        return f", then its secure round with {self.config.secure_aggregation.aggregator} (at {begins})"

    def blocking_cap(self, ledger: Ledger, event: Event, force: bool = False) -> CapStatus | None:
        """The cap a release costing ``event`` would not fit under, if any. The rolling period
        is the one that ends at the planned start of the window the next cycle would run."""
        now = self.clock()
        anchor = self._anchor(ledger, now)
        candidate = planned_start(anchor, self.every, now, grid_late(self.config), force)
        return ledger.status(caps_for(self.config), now, at=candidate).first_blocking(event)

    def _wait_until(self, due: datetime, at_most: float) -> bool:
        """Wait until the wall clock reads ``due``, but for no more than ``at_most`` real seconds:
        a clock set back by hours during the wait must not hold the cycle for hours. Returns
        whether the wall clock reached ``due``; a stop request raises :class:`Interrupted`."""
        deadline = self.monotonic() + at_most
        while (left := (due - self.clock()).total_seconds()) > 0:
            real_left = deadline - self.monotonic()
            if real_left <= 0:
                return False
            if self.stop.wait(min(left, real_left, 1.0)):
                raise Interrupted()
        return True

    def _release(
        self, ledger: Ledger, started: float, force: bool, max_wait: float, recovered: int
    ) -> CycleResult:
        config = self.config
        if force and self.secure:
            raise UsageError(
                "--force cannot be used with secure aggregation: a round runs only in its slot of the "
                "network's schedule; run 'cpu-tracker once' without it to take part in the next one"
            )
        calibration = calibrate(config.privacy, config.sampling.samples)
        # Checked before the cooldown wait, so the window starts as the cooldown ends; reserve()
        # checks the caps again, atomically, before anything is released.
        blocking = self.blocking_cap(ledger, calibration.event, force)
        if blocking is not None:
            raise BudgetExhaustedError(blocking.name, blocking.spent, blocking.limit, calibration.epsilon)
        drawing.ready(calibration.mechanism, stop=self.stop)
        if not force:
            due = self.next_due(ledger)
            now = self.clock()
            wait = (due - now).total_seconds()
            if wait > max_wait:
                raise CooldownError(due.isoformat())
            if wait > daemon_wait(config) or (self.announce and wait >= 1):  # once, for a secure slot
                self.log.info(
                    "cycle.waiting",
                    until=due.isoformat(),
                    summary=f"waiting for the network's slot; sampling starts {timewords.relative(due, now)} "
                    f"(at {timewords.local(due, now)}){self._then_round(due, now)}",
                )
            if not self._wait_until(due, at_most=wait + WAIT_GRACE_SECONDS):
                raise CooldownError(due.isoformat())  # the clock went back: re-plan
            if self.spacing is not None:
                left = self.spacing.seconds_left(config.schedule.every_seconds, self.monotonic())
                if left > max_wait:
                    raise CooldownError((self.clock() + timedelta(seconds=left)).isoformat())
                if left > 0 and self.stop.wait(left):
                    raise Interrupted()
        # The published window is the planned one, fixed before sampling: how late a busy
        # machine starts, ends and writes must not show in what is published.
        now = self.clock()
        _, boot_now = self.boot()
        planned = planned_start(ledger.cooldown_anchor(now)[0], self.every, now, grid_late(config), force)
        boot_at_plan = planned_boot(boot_now, now, planned)
        if self.announce:
            sampling = config.sampling
            self.log.info(
                "cycle.sampling",
                summary=f"sampling the CPU for {sampling.window_seconds:g} s (a window of {sampling.samples} "
                f"samples of {sampling.interval_seconds:g} s){self._then_round(planned, now)}...",
            )
        window_started = self.monotonic()
        window = sample_window(
            self.cpu,
            config.sampling.samples,
            config.sampling.interval_seconds,
            self.stop,
            self.clock,
            self.monotonic,
        )
        window_end = planned_end(planned, config)
        release_id = uuid.uuid4().hex
        spend = Spend(
            release_id=release_id,
            window_start=window.start,
            window_end=window.end,
            epsilon=calibration.epsilon,
            delta=calibration.delta,
            mechanism=SECURE_DISCRETE_LAPLACE if self.secure else calibration.mechanism,
            unit=calibration.unit,
            sensitivity=calibration.sensitivity,
            planned_start=planned,
            planned_boot_seconds=boot_at_plan,
            worst_epsilon=config.secure_aggregation.local_epsilon if self.secure else None,
        )
        if self.secure:
            return self._take_part(
                ledger, spend, window, calibration, planned, started, window_started, recovered
            )
        after: BudgetStatus = ledger.reserve(
            spend,
            caps_for(config),
            self.clock(),
            None if force else config.schedule.every_seconds,
            promise_for(config),
        )
        if self.spacing is not None:
            self.spacing.last_window_start = window_started
        # The spend is committed. Only now is noise drawn, and its result committed before use.
        raw = statistic(window, calibration)
        noisy = drawing.draw(raw, calibration, self.random_state, stop=self.stop)
        public = public_record(release_id, noisy, planned, window_end, config.sampling, calibration)
        ledger.record(release_id, ReleaseStatus.DRAWN, self.clock(), payload=public)
        storage.write_json(
            self.layout.private_file,
            private_record(release_id, raw, window, self.clock().isoformat()),
            storage.PRIVATE_FILE_MODE,
            under=self.layout.root,
        )
        # When the public file appears is seen by whoever syncs it: not when this window ended
        # and was written, which a busy machine does later, but a fixed time after the plan.
        publish_at = publish_time(planned, config, self.hold_seconds)
        self._wait_until(publish_at, at_most=(publish_at - planned).total_seconds())
        self._write_public(public)
        ledger.record(release_id, ReleaseStatus.PUBLISHED, self.clock())
        self._write_metrics(noisy.cpu, calibration.noise_stddev, after, window_end)
        return CycleResult(
            outcome=Outcome.RELEASED,
            duration_seconds=self.monotonic() - started,
            release_id=release_id,
            epsilon_spent=calibration.epsilon,
            epsilon_remaining=after.remaining,
            next_due_at=due_at(after.cooldown_anchor_ts, self.every, self.clock()),
            recovered=recovered,
        )

    def _take_part(
        self,
        ledger: Ledger,
        spend: Spend,
        window: Window,
        calibration: Calibration,
        planned: datetime,
        started: float,
        window_started: float,
        recovered: int,
    ) -> CycleResult:
        """Send this window to its secure round. The spend is committed just before the masked
        value is written (the round calls back), so a round that ends earlier costs nothing; one
        that ends later keeps its spend, as a release that could have been seen."""
        from cpu_tracker_daemon.secagg import rounds  # the cryptography, for members that use it

        config = self.config
        raw: Statistic = statistic(window, calibration)
        reserved: list[BudgetStatus] = []

        def before_sending() -> None:
            reserved.append(
                ledger.reserve(
                    spend, caps_for(config), self.clock(), config.schedule.every_seconds, promise_for(config)
                )
            )
            if self.spacing is not None:
                self.spacing.last_window_start = window_started

        outcome = rounds.take_part(
            config, planned, raw.units, before_sending, rounds.stop_clock(self.stop), self.log.warning
        )
        if not reserved:
            raise RoundEndedError(outcome)
        round_id = schedule_round_id(planned, self.every)
        if outcome.startswith(rounds.WRITE_FAILED):  # spent, and the masked value never left
            ledger.record(
                spend.release_id,
                ReleaseStatus.ABANDONED,
                self.clock(),
                payload={"round": round_id, "outcome": outcome},
            )
            raise RoundEndedError(outcome, spent=True)
        ledger.record(
            spend.release_id,
            ReleaseStatus.PUBLISHED,
            self.clock(),
            payload={
                "mode": "secure_aggregation",
                "round": round_id,
                "aggregator": config.secure_aggregation.aggregator,
                "outcome": outcome,
            },
        )
        storage.write_json(
            self.layout.private_file,
            private_record(spend.release_id, raw, window, self.clock().isoformat()),
            storage.PRIVATE_FILE_MODE,
            under=self.layout.root,
        )
        after = reserved[0]
        return CycleResult(
            outcome=Outcome.RELEASED,
            duration_seconds=self.monotonic() - started,
            release_id=spend.release_id,
            epsilon_spent=calibration.epsilon,
            epsilon_remaining=after.remaining,
            next_due_at=due_at(after.cooldown_anchor_ts, self.every, self.clock(), grid_late(config)),
            recovered=recovered,
            secure_round=outcome,
        )

    def _write_metrics(self, noisy: float, stddev: float, budget: BudgetStatus, at: datetime) -> None:
        """The node_exporter textfile, if configured; a failure here never fails the release."""
        directory = self.config.prometheus.textfile_dir
        if directory is None:
            return
        text = metrics.member_text(
            noisy,
            stddev,
            {cap.name: cap.spent for cap in budget.caps},
            {cap.name: cap.remaining for cap in budget.caps},
            at.timestamp(),
        )
        try:
            metrics.write_textfile(directory, metrics.MEMBER_FILE, text)
        except (OutputError, OSError) as exc:
            self.log.warning("metrics.write_failed", detail=str(exc))

    def _write_public(self, record: dict[str, Any]) -> None:
        owner = self.layout.syft_owner
        if owner is not None:  # readers may read it; offer them the budget endpoint beside it
            folder = permissions.release_folder(owner, self.layout.syft_readers)
            permissions.ensure(self.layout.public_dir, folder, self.layout.root)
            budget_requests.ensure_requests_dir(self.layout)
        storage.write_json(self.layout.public_file, record, storage.PUBLIC_FILE_MODE, under=self.layout.root)


class CycleLog:
    """Logs one canonical line per cycle, and ``budget.exhausted`` once per exhaustion."""

    def __init__(self, log: Any, publish_after: float = 0.0) -> None:
        self._log = log
        self._exhausted = False
        self._publish_after = publish_after  # from a window's start to its public file

    def __call__(self, result: CycleResult) -> None:
        if result.outcome == Outcome.BUDGET_EXHAUSTED:
            if not self._exhausted:
                self._log.warning("budget.exhausted", detail=str(result.error))
            self._exhausted = True
        elif result.outcome == Outcome.RELEASED:
            self._exhausted = False
        if result.outcome == Outcome.WRITE_FAILED:
            self._log.error("release.write_failed", detail=str(result.error))
        elif result.outcome == Outcome.LEDGER_UNAVAILABLE:
            self._log.error("ledger.unavailable", detail=str(result.error))
        level = (
            "info"
            if result.outcome in (Outcome.RELEASED, Outcome.COOLDOWN, Outcome.INTERRUPTED)
            else "warning"
        )
        fields = result.log_fields()
        fields["summary"] = result.summary(utc_now(), self._publish_after)
        getattr(self._log, level)("cycle.finished", **fields)
