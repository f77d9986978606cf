"""The aggregator's round runs in a short-lived child process: the daemon gets the round's events
and its record back, a child that fails is one clear error, a stop request or a hung child is
killed and reaped, and a real aggregator daemon never holds the round's memory or its imports."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from cpu_tracker_daemon import signals
from cpu_tracker_daemon.config import Config, load_config
from cpu_tracker_daemon.errors import Interrupted, SecureRoundError
from cpu_tracker_daemon.secagg import round_child
from cpu_tracker_daemon.secagg.published import SECURE_NAME
from cpu_tracker_daemon.storage import network_dir
from tests.conftest import RunningDaemon, log_events, write_config

AGGREGATOR = "agg@example.org"
MEMBERS = ["m0@example.org", "m1@example.org", "m2@example.org"]
STEP, EVERY = 0.6, 10  # tests/test_secure_rounds.py's fast round
ROUND_CHILD = "cpu_tracker_daemon.secagg.round_child"


def child(code: str) -> list[str]:
    """A real child process running ``code`` in place of the round's module."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def aggregator_config(tmp_path: Path, members: list[str] = MEMBERS) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "sampling": {"samples": 2, "interval_seconds": 0.05},
        "schedule": {"every_seconds": EVERY},
        "syftbox": {"dir": str(tmp_path / "box"), "email": AGGREGATOR},
        "secure_aggregation": {"members": members, "step_seconds": STEP},
    }
    return load_config(write_config(tmp_path, overrides, "agg.toml"))


class Events:
    """The ``log`` the daemon passes: each event and its fields, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.seen.append((event, fields))


def never_stop() -> signals.Flag:
    return signals.Flag()


def run_with(tmp_path: Path, command: list[str], limit: float | None = None) -> round_child.RoundOutcome:
    """A round now, with ``command`` as its child, never stopped."""
    config = aggregator_config(tmp_path)
    return round_child.run(config, datetime.now(UTC), never_stop(), Events(), child=command, limit=limit)


def children() -> set[int]:
    """This process's children: the tests compare before and after, since a child another test
    started (multiprocessing's resource tracker, say) may live as long as the process."""
    return {process.pid for process in psutil.Process().children()}


class TestTheDaemonsSide:
    def test_the_events_and_the_record_come_back(self, tmp_path: Path) -> None:
        """The child hears the configuration and the slot on stdin; its events reach ``log`` and
        its record is the outcome."""
        config = aggregator_config(tmp_path)
        now = datetime(2026, 12, 7, 12, 0, 4, tzinfo=UTC)
        echo = child(
            """
            import json, sys
            request = json.loads(sys.stdin.read())
            print(json.dumps({"log": "secagg.member_refused", "fields": {"member": "m1@example.org"}}))
            print("a line that is not JSON")
            record = {"round": "1", "members": 3, "roster": 3, "aborted": None, "estimate": None}
            print(json.dumps({"record": {**record, "request": request}}))
            """
        )
        events = Events()
        outcome = round_child.run(config, now, never_stop(), events, child=echo)
        assert events.seen == [("secagg.member_refused", {"member": "m1@example.org"})]
        request = outcome.record["request"]
        assert round_child.current_slot(config, now).isoformat() == request["slot"]
        assert config == round_child.config_of(request)
        assert (outcome.log_fields()) == {
            "round": "1",
            "members": 3,
            "roster": 3,
            "aborted": None,
            "mean": None,
            "ci95": None,
        }

    def test_an_error_in_the_child_is_named(self, tmp_path: Path) -> None:
        fails = child(
            """
            import json, sys
            print(json.dumps({"error": "the pins file is corrupt; restore it"}))
            sys.exit(1)
            """
        )
        with pytest.raises(SecureRoundError, match="stopped: the pins file is corrupt; restore it"):
            run_with(tmp_path, fails)

    def test_a_crash_carries_the_childs_traceback(self, tmp_path: Path) -> None:
        crashes = child(
            """
            import json, sys
            print(json.dumps({"crash": "KeyError: 'x'", "traceback": "Traceback ...\\nKeyError: 'x'"}))
            sys.exit(70)
            """
        )
        with pytest.raises(SecureRoundError, match="crashed: KeyError: 'x'") as caught:
            run_with(tmp_path, crashes)
        assert caught.value.traceback.endswith("KeyError: 'x'")

    def test_an_interpreter_that_fails_before_our_code_says_why(self, tmp_path: Path) -> None:
        """Its stderr comes with its stdout: the message ends with its last words."""
        broken = child("import sys; sys.exit('ModuleNotFoundError: No module named x')")
        with pytest.raises(SecureRoundError, match="exited with code 1 and no record: ModuleNotFoundError"):
            run_with(tmp_path, broken)

    def test_a_killed_child_names_the_signal(self, tmp_path: Path) -> None:
        killed = child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        with pytest.raises(SecureRoundError, match="killed by signal 9"):
            run_with(tmp_path, killed)

    def test_a_child_that_cannot_start(self, tmp_path: Path) -> None:
        with pytest.raises(SecureRoundError, match="could not start"):
            run_with(tmp_path, [str(tmp_path / "no")])

    def test_a_hung_child_is_killed_at_its_time_limit(self, tmp_path: Path) -> None:
        hangs = child("import time; time.sleep(60)")
        before = children()
        started = time.monotonic()
        with pytest.raises(SecureRoundError, match=r"took longer than 0\.5 s and was killed"):
            run_with(tmp_path, hangs, limit=0.5)
        assert time.monotonic() - started < 5
        assert children() - before == set()

    @pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["stops", "ignores-sigterm"])
    def test_a_stop_request_ends_the_child_and_reaps_it(self, tmp_path: Path, ignores_sigterm: bool) -> None:
        """SIGTERM first; a child that ignores it is killed after the grace. Either way the
        wait ends as Interrupted within a few seconds and no child is left."""
        hangs = child(
            f"""
            import json, os, signal, sys, time
            if {ignores_sigterm}:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(json.dumps({{"log": "child.started", "fields": {{"pid": os.getpid()}}}}), flush=True)
            time.sleep(60)
            """
        )
        stop = signals.Flag()
        events = Events()
        before = children()

        def stop_once_started() -> None:
            while not events.seen:
                time.sleep(0.01)
            stop.set()

        threading.Thread(target=stop_once_started, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            round_child.run(aggregator_config(tmp_path), datetime.now(UTC), stop, events, child=hangs)
        assert time.monotonic() - started < round_child.GRACE_SECONDS + 3
        ((_, fields),) = events.seen
        assert not psutil.pid_exists(fields["pid"])  # killed and reaped
        assert children() - before == set()

    def test_a_child_that_never_reads_its_request_cannot_hold_a_stop(self, tmp_path: Path) -> None:
        """A request larger than a pipe holds (the configuration of 5,000 members) is written
        as the child reads it: one that never does still lets a stop request through."""
        config = aggregator_config(tmp_path, [f"m{i:04d}@example.org" for i in range(5000)])
        stop = signals.Flag()
        before = children()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            round_child.run(
                config, datetime.now(UTC), stop, Events(), child=child("import time; time.sleep(60)")
            )
        assert time.monotonic() - started < round_child.GRACE_SECONDS + 3
        assert children() - before == set()


class TestTheChildsSide:
    def test_the_time_limit_covers_the_steps_and_an_interval(self, tmp_path: Path) -> None:
        assert pytest.approx(round_child.time_limit(aggregator_config(tmp_path))) == 14 * STEP + EVERY

    @pytest.mark.slow
    def test_the_real_child_runs_the_round_and_publishes(self, tmp_path: Path) -> None:
        """``python -I -m cpu_tracker_daemon.secagg.round_child`` from /, with no environment: a
        slot a day past is a round the aggregator started late, published as such."""
        config = aggregator_config(tmp_path)
        (tmp_path / "box" / "datasites" / AGGREGATOR).mkdir(parents=True)  # as the client makes it
        outcome = round_child.run(config, datetime.now(UTC) - timedelta(days=1), never_stop(), Events())
        assert outcome.record["aborted"] == "the aggregator started late"
        assert outcome.record == json.loads((network_dir(config) / SECURE_NAME).read_text())


# -- a real aggregator daemon ----------------------------------------------------------------------


def round_children(pid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if ROUND_CHILD in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def watch_for_round_child(pid: int, seen: dict[int, float], stop: threading.Event) -> None:
    """Each round child of ``pid`` and when it was first seen, polled every 10 ms."""
    while not stop.is_set():
        try:
            for proc in round_children(pid):
                seen.setdefault(proc.pid, time.monotonic())
        except psutil.Error:
            return
        time.sleep(0.01)


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
class TestInTheDaemon:
    def test_a_real_aggregator_daemon_runs_its_round_in_a_child(self, tmp_path: Path) -> None:
        """The round (no member sends keys: it ends at the keys' deadline) runs in a child of
        its own, gone once the round is logged; the daemon never loads the cryptography or
        numpy, so its memory after a round is its memory before."""
        config = aggregator_config(tmp_path)
        assert config.source is not None
        daemon = RunningDaemon(config.source)
        seen: dict[int, float] = {}
        done = threading.Event()
        watch = threading.Thread(target=watch_for_round_child, args=(daemon.proc.pid, seen, done))
        watch.start()
        try:
            finished = daemon.wait_for(lambda e: e["event"].startswith("secure_round."))
            assert finished["event"] == "secure_round.finished", finished
            assert finished["aborted"] == "no member published keys"
            time.sleep(0.1)
            done.set()
            assert len(seen) == 1, seen
            (pid,) = seen
            assert pid != daemon.proc.pid
            assert not psutil.pid_exists(pid)  # exited and reaped
            maps = mapped(daemon.proc.pid)
            assert "cryptography" not in maps
            assert "numpy" not in maps
        finally:
            done.set()
            watch.join()
            assert daemon.stop() == 0

    def test_sigterm_during_the_round_stops_the_daemon_and_its_child(self, tmp_path: Path) -> None:
        """SIGTERM while the round's child runs: both are gone within a few seconds, and the
        daemon exits 0 as on any stop."""
        config = aggregator_config(tmp_path)
        assert config.source is not None
        daemon = RunningDaemon(config.source)
        daemon.wait_for(lambda e: e["event"] == "daemon.started")
        deadline = time.monotonic() + EVERY + 5
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:
            children = round_children(daemon.proc.pid)
            time.sleep(0.01)
        assert children, "no round child within one interval"
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        rest, _ = daemon.proc.communicate(timeout=20)
        _, alive = psutil.wait_procs(children, timeout=max(0.0, sent + 5 - time.monotonic()))
        assert time.monotonic() - sent < 5
        assert alive == []
        assert daemon.proc.returncode == 0
        events = [e["event"] for e in log_events(rest)]
        assert "secure_round.failed" not in events  # a stop is no failure
        assert "daemon.stopped" in events
