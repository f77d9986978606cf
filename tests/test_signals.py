"""Signal handlers that never deadlock, whatever the main thread is doing when a signal lands.

Each test runs a fresh interpreter whose main thread spins on the very wait the daemon (or
``once``) uses, while a second thread sends it signals every ~100 us. A handler that takes a lock
the main thread can hold (``threading.Event.set`` does) hangs or overflows the stack within a
fraction of a second; the safe ones run to the end.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STORM = textwrap.dedent(
    """
    import os, signal, threading, time

    done = threading.Event()  # the storm's own: no handler touches it

    def storm(signum):
        while not done.is_set():
            os.kill(os.getpid(), signum)
            time.sleep(0.0001)

    def spin(wait, signum, seconds=1.5):
        threading.Thread(target=storm, args=(signum,), daemon=True).start()
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline:
            wait()
            rounds += 1
        done.set()
        print("survived", rounds)
    """
)


def run_storm(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "storm.py"
    script.write_text(STORM + textwrap.dedent(body))
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the process deadlocked inside a signal handler") from exc


class TestHandlersNeverDeadlock:
    @pytest.mark.slow
    def test_daemon_main_loop_wait_survives_a_signal_storm(self, tmp_path: Path) -> None:
        """SIGHUP and SIGTERM landing at any bytecode of the main loop's wait (the CI hang of
        2026-12-01: SIGTERM while the loop held its wake-up Event's lock) never block."""
        for signum in ("SIGHUP", "SIGTERM"):
            done = run_storm(
                f"""
                from cpu_tracker_daemon.config import load_config
                from cpu_tracker_daemon.daemon.loop import Daemon

                daemon = Daemon(load_config(None, {{"HOME": {str(tmp_path)!r}}}), None)
                daemon.install_signal_handlers()
                spin(lambda: daemon._wait_for_wake(0), signal.{signum})
                """,
                tmp_path,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert "survived" in done.stdout

    @pytest.mark.slow
    def test_stop_request_survives_a_signal_storm(self, tmp_path: Path) -> None:
        """``once`` waits on its stop request in the main thread; a signal landing inside that
        wait sets it without blocking, and the wait then reports it."""
        done = run_storm(
            """
            from cpu_tracker_daemon import signals

            stop = signals.stop_on([signal.SIGHUP])
            spin(lambda: stop.wait(0), signal.SIGHUP)
            assert stop.is_set() and stop.wait(0)
            """,
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "survived" in done.stdout
