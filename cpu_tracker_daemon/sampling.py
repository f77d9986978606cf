"""CPU readings: the only module that imports psutil. Busy time is what /proc/stat says it is,
from a baseline of this module's own."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cpu_tracker_daemon.errors import Interrupted
from cpu_tracker_daemon.schedule import Clock
from cpu_tracker_daemon.signals import StopRequest


@dataclass(frozen=True)
class Reading:
    """The whole machine's busy and total CPU-seconds (all cores) over one sub-interval."""

    busy: float
    total: float

    @property
    def percent(self) -> float:
        """Busy share in percent; 0 when no tick elapsed (or counters went back after a hotplug)."""
        if self.total <= 0:
            return 0.0
        return 100.0 * min(max(self.busy / self.total, 0.0), 1.0)


class CpuSource(Protocol):
    def read(self) -> Reading:
        """The whole machine's CPU-seconds since the previous call (or construction)."""
        ...


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds split into busy and total."""

    busy: float
    total: float


def split_times(times: Any) -> CpuTimes:
    """Busy and total seconds from a psutil ``scputimes`` (any platform's fields)."""
    fields = times._asdict()
    total = sum(fields.values())
    # Linux counts guest time inside user and nice as well; do not count it twice.
    total -= fields.get("guest", 0.0) + fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return CpuTimes(busy=total - idle, total=total)


class PsutilCpuSource:
    """Whole-machine busy fraction over contiguous intervals, from our own cpu_times() baseline."""

    def __init__(self, read_times: Callable[[], Any] | None = None) -> None:
        if read_times is None:
            import psutil

            read_times = psutil.cpu_times
        self._read = read_times
        self._lock = threading.Lock()
        self._last = split_times(self._read())

    def read(self) -> Reading:
        with self._lock:
            now = split_times(self._read())
            last, self._last = self._last, now
        return Reading(busy=now.busy - last.busy, total=now.total - last.total)


@dataclass(frozen=True)
class Window:
    """One sampling window: contiguous readings and when it ran."""

    start: datetime
    end: datetime
    readings: tuple[Reading, ...]
    interval_seconds: float

    @property
    def percents(self) -> tuple[float, ...]:
        """Each reading's busy percentage."""
        return tuple(r.percent for r in self.readings)

    @property
    def busy_percent(self) -> float:
        """The window's busy percentage: all its busy CPU-seconds over all its CPU-seconds."""
        return Reading(
            busy=math.fsum(r.busy for r in self.readings),
            total=math.fsum(r.total for r in self.readings),
        ).percent


def sample_window(
    cpu: CpuSource,
    samples: int,
    interval_seconds: float,
    stop: StopRequest,
    clock: Clock,
    monotonic: Callable[[], float] = time.monotonic,
) -> Window:
    """Take ``samples`` readings over contiguous sub-intervals of ``interval_seconds``.

    The deadlines are fixed from the start, so the sub-intervals tile the window without drift.
    A sampler stalled past its deadline (CPU starvation, a VM paused, SIGSTOP) does not catch up
    with readings over next to no time, which would read 0 ticks as 0% busy: each sub-interval
    lasts at least half an interval, so the window ends late by at most what the stall took.
    Waiting goes through ``stop.wait``: a stop request raises :class:`Interrupted` at once.
    """
    start = clock()
    cpu.read()  # the window's baseline: whatever came before is not ours
    origin = last = monotonic()
    readings: list[Reading] = []
    for i in range(1, samples + 1):
        deadline = max(origin + i * interval_seconds, last + interval_seconds / 2)
        if stop.wait(max(deadline - monotonic(), 0.0)) or stop.is_set():
            raise Interrupted()
        readings.append(cpu.read())
        last = monotonic()
    return Window(start=start, end=clock(), readings=tuple(readings), interval_seconds=interval_seconds)
