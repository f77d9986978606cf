"""CPU readings: the only module that imports psutil.

psutil's ``cpu_percent()`` returns a meaningless 0.0 on its first call and keeps its baseline
per thread, and APScheduler jobs may land on any thread. So :class:`PsutilCpuSource` keeps its
own ``cpu_times()`` baseline and computes busy time the way /proc/stat defines it: everything
but idle and iowait, with guest time (already inside user and nice) not counted twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cpu_tracker_daemon.errors import Interrupted


class CpuSource(Protocol):
    def busy_fraction_since_last(self) -> float:
        """The whole machine's busy fraction (0-1) since the previous call (or construction)."""
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

    def busy_fraction_since_last(self) -> float:
        with self._lock:
            now = split_times(self._read())
            busy = now.busy - self._last.busy
            total = now.total - self._last.total
            self._last = now
        if total <= 0:
            # No tick elapsed (or counters went backwards after a hotplug): no evidence of work.
            return 0.0
        return min(max(busy / total, 0.0), 1.0)


@dataclass(frozen=True)
class Window:
    """One sampling window: contiguous readings, as percentages, and when it ran."""

    start: datetime
    end: datetime
    samples: tuple[float, ...]
    interval_seconds: float

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


def sample_window(
    cpu: CpuSource,
    samples: int,
    interval_seconds: float,
    stop: threading.Event,
    clock: Callable[[], datetime],
    monotonic: Callable[[], float] = time.monotonic,
) -> Window:
    """Take ``samples`` readings over contiguous sub-intervals of ``interval_seconds``.

    The deadlines are fixed from the start, so the sub-intervals tile the window without drift.
    Waiting goes through ``stop.wait``: a stop request raises :class:`Interrupted` at once.
    """
    start = clock()
    cpu.busy_fraction_since_last()  # the window's baseline: whatever came before is not ours
    origin = monotonic()
    readings: list[float] = []
    for i in range(1, samples + 1):
        remaining = origin + i * interval_seconds - monotonic()
        if stop.wait(max(remaining, 0.0)) or stop.is_set():
            raise Interrupted()
        readings.append(100.0 * cpu.busy_fraction_since_last())
    return Window(start=start, end=clock(), samples=tuple(readings), interval_seconds=interval_seconds)
