"""CPU readings: our own baseline, contiguous windows, interruptible waits, real psutil."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

import psutil
import pytest

from cpu_tracker_daemon.errors import Interrupted
from cpu_tracker_daemon.sampling import PsutilCpuSource, sample_window, split_times

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


class ScriptedTimes:
    def __init__(self, readings: list[Times]) -> None:
        self._readings = list(readings)

    def __call__(self) -> Any:
        return self._readings.pop(0)


class TestSplitTimes:
    def test_guest_is_not_counted_twice_and_iowait_is_idle(self) -> None:
        """Busy excludes idle and iowait; guest time is already in user and not added again."""
        t = split_times(Times(10, 0, 5, 80, 5, 0, 0, 0, 4, 0))
        assert (t.busy, t.total) == (15, 100)


class TestPsutilCpuSource:
    def test_first_reading_is_measured_not_zero(self) -> None:
        """The first call reports the busy fraction since construction, not psutil's 0.0."""
        source = PsutilCpuSource(
            ScriptedTimes([Times(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), Times(30, 0, 10, 60, 0, 0, 0, 0, 0, 0)])
        )
        assert source.busy_fraction_since_last() == pytest.approx(0.4)

    def test_counters_going_backwards_read_as_zero_not_negative(self) -> None:
        """After a CPU hotplug the totals can shrink; the reading stays within [0, 1]."""
        source = PsutilCpuSource(
            ScriptedTimes([Times(50, 0, 0, 50, 0, 0, 0, 0, 0, 0), Times(10, 0, 0, 10, 0, 0, 0, 0, 0, 0)])
        )
        assert source.busy_fraction_since_last() == 0.0

    def test_real_psutil_from_fresh_threads_sees_a_busy_core(self) -> None:
        """Read from a new thread each time, a busy spinning thread shows up (no 0.0 first reading)."""
        source = PsutilCpuSource()
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                pass

        spinner = threading.Thread(target=spin)
        spinner.start()
        readings: list[float] = []
        try:
            for _ in range(3):
                time.sleep(0.3)
                reader = threading.Thread(target=lambda: readings.append(source.busy_fraction_since_last()))
                reader.start()
                reader.join()
        finally:
            stop.set()
            spinner.join()
        floor = 0.5 / psutil.cpu_count() * 0.8  # half a core at least, with slack
        assert all(r > floor for r in readings), readings


class TestSampleWindow:
    def test_window_has_the_configured_samples(self) -> None:
        """sample_window returns exactly `samples` percentages from the source."""

        class Half:
            def busy_fraction_since_last(self) -> float:
                return 0.5

        window = sample_window(Half(), 4, 0.01, threading.Event(), lambda: datetime.now(UTC))
        assert window.samples == (50.0, 50.0, 50.0, 50.0)
        assert window.end >= window.start

    def test_mean_matches_proc_stat_over_the_window(self) -> None:
        """The mean of contiguous readings equals the whole window's busy fraction from cpu_times."""
        source = PsutilCpuSource()
        before = split_times(psutil.cpu_times())
        window = sample_window(source, 10, 0.05, threading.Event(), lambda: datetime.now(UTC))
        after = split_times(psutil.cpu_times())
        truth = 100 * (after.busy - before.busy) / (after.total - before.total)
        assert window.mean == pytest.approx(truth, abs=10.0)

    def test_stop_interrupts_at_once(self) -> None:
        """A stop request during a long window raises Interrupted within a fraction of a second."""
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            sample_window(PsutilCpuSource(), 50, 1.0, stop, lambda: datetime.now(UTC))
        assert time.monotonic() - started < 1.0
