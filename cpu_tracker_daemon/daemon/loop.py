"""The long-running process: lock, signals, scheduler, reload, notify; no business logic.

Signal handlers only record what arrived and the job thread never calls the scheduler: the main
thread acts on both, so neither can deadlock."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from cpu_tracker_daemon import logs, signals, storage, timewords
from cpu_tracker_daemon.config import DEFAULT_READERS, Config, config_path_from, load_config
from cpu_tracker_daemon.daemon.instance import AGGREGATE_LOCK, InstanceLock, claim_state
from cpu_tracker_daemon.daemon.sd_notify import Notifier
from cpu_tracker_daemon.errors import (
    AnotherInstanceError,
    ConfigError,
    CpuTrackerError,
    Interrupted,
    Outcome,
    SecureRoundError,
)
from cpu_tracker_daemon.privacy import drawing
from cpu_tracker_daemon.privacy.mechanisms import calibrate
from cpu_tracker_daemon.sampling import CpuSource, PsutilCpuSource
from cpu_tracker_daemon.schedule import (
    Clock,
    Spacing,
    clock_jumped,
    first_round_start,
    lands_after,
    max_wait,
    plan_next_run,
    utc_now,
)
from cpu_tracker_daemon.tracker import CycleLog, CycleResult, Tracker

JOB_ID = "release"
AGGREGATE_JOB_ID = "aggregate"
ROUNDS_JOB_ID = "secure-rounds"


def configure_logging(config: Config, log_format: str | None = None) -> None:
    """The config's logging, with ``log_format`` (``run --log-format``) over its format."""
    logs.configure(log_format or config.logging.format, config.logging.level, config.logging.file)


def start_summary(config: Config, first_run: datetime, now: datetime, paused: str | None) -> str:
    """The daemon's first words to a person: what it does next, and when a release lands."""
    if paused is not None:
        return (
            f"paused: the {paused} cap has no room for another release; "
            "'cpu-tracker budget grant EPSILON --reason TEXT' resumes releases"
        )
    window = config.sampling.window_seconds
    release_at = first_run + timedelta(seconds=lands_after(config))
    what = "secure round" if config.secure_aggregation.enabled else "release"
    if (first_run - now).total_seconds() <= 1:
        return f"sampling for {window:g} s; first {what} at {timewords.local(release_at, now)}"
    return (
        f"{'waiting for the network slot' if what != 'release' else 'in cooldown'}; next {what} "
        f"{timewords.relative(release_at, now)} (at {timewords.local(release_at, now)})"
    )


def readers_note(config: Config) -> str | None:
    """One line for a member whose config names no readers of its release: who reads it then
    (SyftBox's default aggregator), and where to choose; None when the config names them, or
    when nothing goes to a datasite (no [syftbox], or secure aggregation's masked values)."""
    sb = config.syftbox
    if sb.dir is None or sb.readers != DEFAULT_READERS or config.secure_aggregation.enabled:
        return None
    where = str(config.source) if config.source else "a config file ('cpu-tracker config init' writes one)"
    return (
        f"the release is readable by {', '.join(sb.readers)}, the default [syftbox] readers; "
        f"name yours with [syftbox] readers in {where}"
    )


class Daemon:
    """Runs cycles on a schedule until SIGTERM or SIGINT; reloads on SIGHUP."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        environ: Mapping[str, str] = os.environ,
        cpu: CpuSource | None = None,
        clock: Clock = utc_now,
        log_format: str | None = None,
    ) -> None:
        self._config_path = config_path
        self._log_format = log_format  # run --log-format: kept over the config's across reloads
        self._environ = environ
        self._clock = clock
        self._cpu = cpu
        self._stop = signals.Flag()  # set by handlers, the job thread on a fatal error, and shutdown
        self._wake = signals.Wakeup()
        self._reload_requested = False
        self._fatal: CpuTrackerError | None = None
        self._log = logs.get_logger("cpu_tracker.daemon")
        self._notifier = Notifier(environ)
        self._cycle_log = CycleLog(self._log, lands_after(config))
        self._last: CycleResult | None = None
        self._finished: CycleResult | None = None  # handed from the job thread to the main loop
        self._config = config
        self._layout = storage.layout_for(config)
        self._tracker: Tracker | None = None
        self._spacing = Spacing()  # shared by every Tracker this daemon makes, across reloads
        self._aggregator: Any = None
        self._scheduler: Any = None

    def _make_tracker(self, config: Config) -> Tracker:
        assert self._cpu is not None
        return Tracker(
            config=config,
            layout=self._layout,
            cpu=self._cpu,
            log=self._log,
            clock=self._clock,
            stop=self._stop,
            spacing=self._spacing,
            full_check=False,  # run() verifies the whole file once; a cycle's cost stays flat
        )

    # -- signals: record and wake, nothing else -------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self._wake.post()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True
        self._wake.post()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped; raise the error that stopped it, if one did."""
        with claim_state(self._layout):
            if self._cpu is None:
                self._cpu = PsutilCpuSource()
            self._tracker = self._make_tracker(self._config)
            # Snapping's child proves it can load diffprivlib before READY, not in a cycle.
            calibration = calibrate(self._config.privacy, self._config.sampling.samples)
            try:
                drawing.ready(calibration.mechanism, stop=self._stop)
            except Interrupted:  # stopped while the check's child ran: nothing was begun
                self._log.info("daemon.stopped", summary="stopped before the first release")
                return
            with self._tracker.open_ledger(full=True) as ledger:  # all of it, before promising anything
                first_run = self._tracker.next_due(ledger)
                blocking = self._tracker.blocking_cap(ledger, calibration.event)
            self._start_scheduler(first_run)
            paused = None if blocking is None else blocking.name
            self._log.info(
                "daemon.started",
                summary=start_summary(self._config, first_run, self._clock(), paused),
                pid=os.getpid(),
                config=str(self._config_path) if self._config_path else "embedded defaults",
                public=str(self._layout.public_file),
                every_seconds=self._config.schedule.every_seconds,
                first_run_at=first_run.isoformat(),
                per_release=calibration.as_record(),
            )
            if (note := readers_note(self._config)) is not None:
                self._log.info("release.readers", summary=note, readers=list(self._config.syftbox.readers))
            self._notifier.send(READY="1", STATUS=f"started; first release at {_hm(first_run)}")
            try:
                self._loop()
            finally:
                self._notifier.send(STOPPING="1", STATUS="stopping")
                self._stop.set()
                self._scheduler.shutdown(wait=True)
            if self._fatal is not None:
                self._log.error("daemon.failed", detail=str(self._fatal))
                raise self._fatal
            self._log.info("daemon.stopped", summary="stopped; nothing is lost, the next start carries on")

    def _loop(self) -> None:
        interval = self._notifier.watchdog_interval
        offset = self._wall_offset()
        while not self._stop.is_set():
            self._wait_for_wake(min(interval or 60.0, 60.0, max(self._config.schedule.every_seconds, 1.0)))
            # The scheduler runs on the wall clock: after the clock is set back by hours, it would
            # wait those hours. Compare the wall clock with the monotonic one and re-plan.
            jumped = self._wall_offset() - offset
            offset += jumped
            if clock_jumped(jumped) and not self._stop.is_set():
                self._on_clock_jump(jumped)
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            finished, self._finished = self._finished, None
            if finished is not None and not self._stop.is_set():
                self._after_cycle(finished)
            if interval and self._scheduler.running:
                self._notifier.send(WATCHDOG="1")

    def _wait_for_wake(self, timeout: float) -> None:
        self._wake.wait(timeout)

    def _wall_offset(self) -> float:
        return self._clock().timestamp() - time.monotonic()

    def _on_clock_jump(self, seconds: float) -> None:
        """Re-plan both jobs from the ledger's cooldown, as seen on the clock as it is now."""
        assert self._tracker is not None
        self._log.warning("clock.jumped", seconds=round(seconds, 1))
        try:
            with self._tracker.open_ledger() as ledger:
                due = self._tracker.next_due(ledger)  # a cooldown anchor now in the future moves to now
        except CpuTrackerError as exc:
            self._log.error("clock.replan_failed", detail=str(exc))
            return
        self._scheduler.modify_job(JOB_ID, next_run_time=due)
        if self._scheduler.get_job(AGGREGATE_JOB_ID) is not None:
            self._scheduler.modify_job(AGGREGATE_JOB_ID, next_run_time=self._clock())

    def _start_scheduler(self, first_run: datetime) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            # More workers let an aggregation pass and a secure round run during a member's window.
            executors={"default": ThreadPoolExecutor(max_workers=3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler.add_job(
            self._job,
            trigger=self._trigger(self._config),
            id=JOB_ID,
            name="cpu-tracker release",
            next_run_time=first_run,
        )
        self._scheduler.add_listener(self._on_job_done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self._schedule_aggregator(self._config)
        self._schedule_rounds(self._config)
        self._scheduler.start()

    def _on_job_done(self, event: Any) -> None:
        """In the job thread, once the scheduler has counted the run out: wake the main loop."""
        if event.job_id == JOB_ID:
            self._wake.post()

    def _schedule_aggregator(self, config: Config) -> None:
        """Add, change or remove the aggregation job to match ``config``."""
        from apscheduler.triggers.interval import IntervalTrigger

        trigger = IntervalTrigger(seconds=config.aggregator.every_seconds, timezone="UTC")
        self._sync_job(
            AGGREGATE_JOB_ID,
            self._aggregate_job,
            "cpu-tracker aggregation",
            trigger if config.aggregator.enabled else None,
            next_run_time=self._clock(),
        )

    def _sync_job(self, job_id: str, func: Any, name: str, trigger: Any, **first: Any) -> None:
        """Add the job with ``trigger`` (and ``first``'s options), give it the new trigger if it
        exists, or remove it when ``trigger`` is None: the config decides which."""
        job = self._scheduler.get_job(job_id)
        if trigger is None:
            if job is not None:
                self._scheduler.remove_job(job_id)
        elif job is None:
            self._scheduler.add_job(func, trigger=trigger, id=job_id, name=name, **first)
        else:
            self._scheduler.modify_job(job_id, trigger=trigger)

    def _aggregate_job(self) -> None:
        """One pass, under the aggregation lock; like the release job, never calls the scheduler."""
        from cpu_tracker_daemon.network.aggregate import Aggregator

        config = self._config
        if self._aggregator is None or self._aggregator.config is not config:
            self._aggregator = Aggregator(config, self._log, self._clock)
        try:
            with InstanceLock(self._layout.data_dir / AGGREGATE_LOCK):
                result = self._aggregator.run_pass()
        except AnotherInstanceError:
            self._log.info("aggregate.skipped", detail="another aggregation pass is running")
            return
        except CpuTrackerError as exc:
            self._log.error("aggregate.failed", detail=str(exc))
            return
        except Exception:  # noqa: BLE001 - a bug in one pass must not kill the schedule
            self._log.exception("aggregate.crashed")
            return
        self._log.info("aggregate.finished", **result.log_fields())

    def _schedule_rounds(self, config: Config) -> None:
        """Add, change or remove the secure rounds' job: it runs at each slot's round start."""
        from apscheduler.triggers.interval import IntervalTrigger

        trigger = IntervalTrigger(
            seconds=config.schedule.every_seconds, start_date=first_round_start(config), timezone="UTC"
        )
        self._sync_job(
            ROUNDS_JOB_ID,
            self._rounds_job,
            "cpu-tracker secure round",
            trigger if config.secure_aggregation.runs_rounds else None,
        )

    def _rounds_job(self) -> None:
        """Run the round that starts now, in a child process (its memory, the cryptography and
        numpy are never this process's), then refresh the aggregate that shows it."""
        from cpu_tracker_daemon.secagg import round_child

        config = self._config
        try:
            outcome = round_child.run(config, self._clock(), self._stop, self._log.warning)
        except Interrupted:
            return
        except SecureRoundError as exc:  # it ended in the child without a record: why, and where
            fields = {"traceback": exc.traceback} if exc.traceback else {}
            self._log.error("secure_round.failed", detail=str(exc), **fields)
            return
        except Exception:  # noqa: BLE001 - a bug in one round must not kill the schedule
            self._log.exception("secure_round.crashed")
            return
        self._log.info("secure_round.finished", **outcome.log_fields())
        if config.aggregator.enabled:
            self._aggregate_job()

    @staticmethod
    def _trigger(config: Config) -> Any:
        from apscheduler.triggers.interval import IntervalTrigger

        return IntervalTrigger(seconds=config.schedule.every_seconds, timezone="UTC")

    def _job(self) -> None:
        tracker = self._tracker
        assert tracker is not None
        try:
            result = tracker.cycle(max_wait=max_wait(tracker.config))
        except CpuTrackerError as exc:  # the ledger cannot be trusted: stop, fail closed
            self._fatal = exc
            self._stop.set()
            self._wake.post()
            return
        except Exception:  # noqa: BLE001 - a bug in one cycle must not kill the schedule
            self._log.exception("cycle.crashed")
            return
        self._cycle_log(result)
        self._finished = result  # the main loop picks it up when _on_job_done wakes it

    def _after_cycle(self, result: CycleResult) -> None:
        """In the main thread: keep the schedule in step with the cooldown, report status."""
        self._last = result
        if result.next_due_at is not None:
            advance = result.outcome in (
                Outcome.RELEASED,
                Outcome.COOLDOWN,
                Outcome.ROUND_ENDED,
                Outcome.NOISE_FAILED,
            )
            self._align(result.next_due_at, may_advance=advance)
        self._notify_status()

    def _align(self, due: datetime, may_advance: bool) -> None:
        """Move the next run as :func:`schedule.plan_next_run` says, a little before ``due``."""
        job = self._scheduler.get_job(JOB_ID)
        if job is None or job.next_run_time is None:
            return
        target = plan_next_run(due, self._clock(), job.next_run_time, self._config, may_advance)
        if target is not None:
            self._scheduler.modify_job(JOB_ID, next_run_time=target)

    def _notify_status(self) -> None:
        if not self._notifier.enabled or self._last is None:
            return
        job = self._scheduler.get_job(JOB_ID)
        next_run = job.next_run_time if job is not None else None
        remaining = self._last.epsilon_remaining
        self._notifier.send(
            STATUS=(
                f"last cycle {self._last.outcome} at {_hm(self._clock())}; "
                f"budget left {'?' if remaining is None else f'{remaining:g}'} epsilon; "
                f"next run {_hm(next_run) if next_run else 'none'}"
            )
        )

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            # A config file created since start (say in $CONFIGURATION_DIRECTORY) is found now.
            self._config_path = self._config_path or config_path_from(None, self._environ)
            config = load_config(self._config_path, self._environ)
            if storage.layout_for(config) != self._layout:
                raise ConfigError(
                    ["paths.data_dir and [syftbox] cannot change while running; restart instead"]
                )
            with self._make_tracker(config).open_ledger():  # the ledger's promise holds for it
                pass
            configure_logging(config, self._log_format)  # a log file it cannot open: logging unchanged
        except CpuTrackerError as exc:
            self._log.error("config.reload_failed", detail=str(exc), kept="the running configuration")
            self._notifier.send(READY="1")
            return
        self._config = config
        self._tracker = self._make_tracker(config)
        job = self._scheduler.get_job(JOB_ID)
        next_run = job.next_run_time if job is not None else self._clock()
        self._scheduler.modify_job(JOB_ID, trigger=self._trigger(config), next_run_time=next_run)
        self._schedule_aggregator(config)
        self._schedule_rounds(config)
        self._log.info("config.reloaded", every_seconds=config.schedule.every_seconds)
        self._notifier.send(READY="1", STATUS="configuration reloaded")


def _hm(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def run_daemon(
    config: Config,
    config_path: Path | None,
    environ: Mapping[str, str] = os.environ,
    log_format: str | None = None,
) -> None:
    """Entry point for ``cpu-tracker run``: configure logs, handle signals, run until stopped."""
    configure_logging(config, log_format)
    daemon = Daemon(config, config_path, environ, log_format=log_format)
    daemon.install_signal_handlers()
    daemon.run()
