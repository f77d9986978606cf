"""CPU readings: our own baseline, contiguous windows, interruptible waits, real psutil."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

import psutil
import pytest

from cpu_tracker_daemon.errors import Interrupted
from cpu_tracker_daemon.sampling import PsutilCpuSource, Reading, sample_window, split_times

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
        """The first call reports the CPU-seconds since construction, not psutil's 0.0."""
        source = PsutilCpuSource(
            ScriptedTimes([Times(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), Times(30, 0, 10, 60, 0, 0, 0, 0, 0, 0)])
        )
        reading = source.read()
        assert (reading.busy, reading.total) == (40, 100)
        assert pytest.approx(reading.percent) == 40.0

    def test_counters_going_backwards_read_as_zero_not_negative(self) -> None:
        """After a CPU hotplug the totals can shrink; the reading stays within [0, 1]."""
        source = PsutilCpuSource(
            ScriptedTimes([Times(50, 0, 0, 50, 0, 0, 0, 0, 0, 0), Times(10, 0, 0, 10, 0, 0, 0, 0, 0, 0)])
        )
        assert source.read().percent == 0.0

    @pytest.mark.slow
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
                reader = threading.Thread(target=lambda: readings.append(source.read().percent / 100))
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
            def read(self) -> Reading:
                return Reading(busy=0.5, total=1.0)

        window = sample_window(Half(), 4, 0.01, threading.Event(), lambda: datetime.now(UTC))
        assert window.percents == (50.0, 50.0, 50.0, 50.0)
        assert window.end >= window.start

    @pytest.mark.slow
    def test_busy_percent_matches_proc_stat_over_the_window(self) -> None:
        """The window's busy percentage is the one cpu_times gives for the whole window.

        The two reads around the window are microseconds from the window's own, so at most a
        tick or two (of 100 per CPU-second) falls between them.
        """
        source = PsutilCpuSource()
        before = split_times(psutil.cpu_times())
        window = sample_window(source, 10, 0.05, threading.Event(), lambda: datetime.now(UTC))
        after = split_times(psutil.cpu_times())
        truth = 100 * (after.busy - before.busy) / (after.total - before.total)
        assert truth == pytest.approx(window.busy_percent, abs=2.0)

    def test_a_stalled_sampler_does_not_catch_up_with_empty_readings(self) -> None:
        """After a stall of three intervals, each sub-interval still lasts at least half an interval.

        Fixed deadlines alone would take the next three readings at once, over no time at all,
        and read them as 0% busy.
        """

        class Stalling:
            """Stands in for the stop event and the monotonic clock; the second wait overruns 3 s."""

            def __init__(self) -> None:
                self.now, self.waits = 0.0, 0

            def wait(self, timeout: float) -> bool:
                self.waits += 1
                self.now += timeout + (3.0 if self.waits == 2 else 0.0)
                return False

            def is_set(self) -> bool:
                return False

        world = Stalling()
        read_at: list[float] = []

        class Timed:
            def read(self) -> Reading:
                read_at.append(world.now)
                return Reading(busy=0.0, total=1.0)

        sample_window(Timed(), 10, 1.0, world, lambda: datetime.now(UTC), monotonic=lambda: world.now)  # type: ignore[arg-type]
        lengths = [b - a for a, b in itertools.pairwise(read_at)]
        assert len(lengths) == 10
        assert pytest.approx(lengths[1]) == 4.0  # the stalled sub-interval
        assert pytest.approx(min(lengths)) == 0.5
        assert read_at[-1] - read_at[0] <= 10.0 + 3.0  # late by no more than the stall

    @pytest.mark.slow
    def test_real_sigstop_stalls_keep_the_window_exact(self) -> None:
        """A real sampler process stopped twice for 0.4 s mid-window still reports /proc/stat's figure.

        The readings after each stall are not empty, and the window's busy percentage is the
        ratio of its CPU-seconds, so unequal sub-intervals do not skew it.
        """
        script = (
            "import json, threading, psutil\n"
            "from datetime import UTC, datetime\n"
            "from cpu_tracker_daemon.sampling import PsutilCpuSource, sample_window, split_times\n"
            "source = PsutilCpuSource()\n"
            "before = split_times(psutil.cpu_times())\n"
            "print('ready', flush=True)\n"
            "w = sample_window(source, 20, 0.1, threading.Event(), lambda: datetime.now(UTC))\n"
            "after = split_times(psutil.cpu_times())\n"
            "print(json.dumps({'truth': 100 * (after.busy - before.busy) / (after.total - before.total),\n"
            "  'window': w.busy_percent, 'totals': [r.total for r in w.readings]}))\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        for _ in range(2):
            time.sleep(0.5)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.4)
            proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
        result = json.loads(out)
        assert min(result["totals"]) > 0.0, result["totals"]
        assert result["truth"] == pytest.approx(result["window"], abs=2.0)

    def test_stop_interrupts_at_once(self) -> None:
        """A stop request during a long window raises Interrupted within a fraction of a second."""
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            sample_window(PsutilCpuSource(), 50, 1.0, stop, lambda: datetime.now(UTC))
        assert time.monotonic() - started < 1.0
