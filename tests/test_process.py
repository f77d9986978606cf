"""The real daemon in subprocesses: signals, two instances, kill -9 mid-release, restarts."""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import (
    cli_env,
    log_events,
    read_rest,
    run_cli,
    start_cli,
    tz_at_local_hour,
    wait_for_event,
    write_config,
)  # fmt: skip

pytestmark = pytest.mark.slow


def spends(data: Path) -> list[str]:
    conn = sqlite3.connect(data / "ledger.sqlite3")
    try:
        return [r[0] for r in conn.execute("SELECT release_id FROM spends")]
    finally:
        conn.close()


class TestSignals:
    def test_sigterm_during_a_long_window_stops_at_once_releasing_nothing(self, tmp_path: Path) -> None:
        """SIGTERM in the middle of a 50 s sampling window: exit 0 promptly, no release, no spend."""
        config = write_config(
            tmp_path,
            {"sampling": {"samples": 50, "interval_seconds": 1.0}, "schedule": {"every_seconds": 60}},
        )
        proc = start_cli("--config", str(config), "run")
        wait_for_event(proc, "daemon.started")
        time.sleep(2.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
        assert proc.returncode == 0, err
        assert elapsed < 5, f"took {elapsed:.1f}s to stop"
        events = [e["event"] for e in log_events(out)]
        assert events[-1] == "daemon.stopped"
        outcomes = [e["outcome"] for e in log_events(out) if e["event"] == "cycle.finished"]
        assert outcomes == ["interrupted"]
        assert not (tmp_path / "data" / "public" / "cpu_tracker.json").exists()
        assert spends(tmp_path / "data") == []

    def test_sigma_config_states_its_cost_before_the_first_release(self, tmp_path: Path) -> None:
        """With privacy.sigma the daemon logs the epsilon of each release at start, then releases."""
        config = write_config(tmp_path, {"privacy": {"mechanism": "gaussian", "sigma": 250.0}})
        proc = start_cli("--config", str(config), "run")
        started = wait_for_event(proc, "daemon.started")[-1]
        per = started["per_release"]
        assert isinstance(per, dict)
        assert (per["mechanism"], per["noise_stddev"], per["delta"]) == ("discrete_gaussian", 250.0, 1e-6)
        assert 0 < per["epsilon"] < 5
        wait_for_event(proc, "cycle.finished")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        public = json.loads((tmp_path / "data" / "public" / "cpu_tracker.json").read_text())
        assert public["privacy"]["epsilon"] == per["epsilon"]

    def test_sighup_storm_is_survived(self, tmp_path: Path) -> None:
        """Fifty SIGHUPs 10 ms apart: the daemon reloads, keeps releasing, and stops cleanly."""
        config = write_config(tmp_path)
        proc = start_cli("--config", str(config), "run")
        wait_for_event(proc, "daemon.started")
        for _ in range(50):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        wait_for_event(proc, "config.reloaded")
        seen = wait_for_event(proc, "cycle.finished", timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        events = [e["event"] for e in seen + log_events(out)]
        assert "cycle.crashed" not in events
        assert events[-1] == "daemon.stopped"

    def test_sighup_reloads_and_refuses_a_bad_config(self, tmp_path: Path) -> None:
        """SIGHUP applies a good config, keeps the old one on a bad config, and the daemon runs on."""
        config = write_config(tmp_path)
        proc = start_cli("--config", str(config), "run")
        wait_for_event(proc, "daemon.started")
        config.write_text(config.read_text().replace("every_seconds = 1", "every_seconds = 2"))
        proc.send_signal(signal.SIGHUP)
        reloaded = wait_for_event(proc, "config.reloaded")
        assert reloaded[-1]["every_seconds"] == 2.0
        config.write_text(config.read_text() + "[nonsense]\nx = 1\n")
        proc.send_signal(signal.SIGHUP)
        failed = wait_for_event(proc, "config.reload_failed")
        assert "nonsense" in str(failed[-1]["detail"])
        wait_for_event(proc, "cycle.finished")
        # A valid config whose privacy unit differs from the ledger's is refused the same way.
        config.write_text(config.read_text().replace("[nonsense]\nx = 1\n", '[privacy]\nunit = "sample"\n'))
        proc.send_signal(signal.SIGHUP)
        failed = wait_for_event(proc, "config.reload_failed")
        assert "accounts releases under unit window" in str(failed[-1]["detail"])
        wait_for_event(proc, "cycle.finished")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0

    def test_sighup_to_a_log_file_that_cannot_be_opened_keeps_the_running_config(
        self, tmp_path: Path
    ) -> None:
        """A reload whose logging.file cannot be opened (a FIFO nobody reads) is refused like any
        bad config: one reload_failed line, the old config kept, the daemon running on."""
        config = write_config(tmp_path)
        proc = start_cli("--config", str(config), "run")
        wait_for_event(proc, "daemon.started")
        fifo = tmp_path / "log.fifo"
        os.mkfifo(fifo)
        config.write_text(config.read_text() + f'[logging]\nfile = "{fifo}"\n')
        proc.send_signal(signal.SIGHUP)
        failed = wait_for_event(proc, "config.reload_failed")
        assert "logging.file" in str(failed[-1]["detail"])
        wait_for_event(proc, "cycle.finished")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0

    def test_sigterm_at_any_phase_of_busy_cycles_exits_cleanly(self, tmp_path: Path) -> None:
        """Stopping a daemon that cycles every 50 ms never hangs (the job never calls back into
        the scheduler while shutdown holds its locks) and always exits 0."""
        config = write_config(
            tmp_path,
            {"sampling": {"samples": 2, "interval_seconds": 0.01}, "schedule": {"every_seconds": 0.05}},
        )
        rng = random.Random(99)
        for _ in range(6):
            proc = start_cli("--config", str(config), "run")
            wait_for_event(proc, "cycle.finished")
            time.sleep(rng.random() * 0.3)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert log_events(out)[-1]["event"] == "daemon.stopped"


class TestInstances:
    def test_second_instance_exits_5_at_once(self, tmp_path: Path) -> None:
        """While one daemon runs, a second run (or once) on the same state exits 5 with one line."""
        config = write_config(tmp_path)
        proc = start_cli("--config", str(config), "run")
        try:
            wait_for_event(proc, "daemon.started")
            for command in (["run"], ["once", "--force"]):
                second = run_cli("--config", str(config), *command, timeout=20)
                assert second.returncode == 5
                assert f"pid {proc.pid}" in second.stderr
                assert len(second.stderr.strip().splitlines()) == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
        assert proc.returncode == 0


class TestCrashSafety:
    def test_kill_9_during_releases_never_loses_a_spend(self, tmp_path: Path) -> None:
        """kill -9 at random moments of a fast daemon: outputs parse, every visible release is spent."""
        config = write_config(
            tmp_path,
            {"sampling": {"samples": 2, "interval_seconds": 0.01}, "schedule": {"every_seconds": 0.05}},
        )
        data = tmp_path / "data"
        public = data / "public" / "cpu_tracker.json"
        private = data / "private" / "cpu_tracker.json"
        rng = random.Random(1234)
        visible: set[str] = set()
        for _ in range(8):
            proc = start_cli("--config", str(config), "run")
            wait_for_event(proc, "daemon.started")
            time.sleep(rng.random() * 1.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
            for path in (public, private):
                if path.exists():
                    record = json.loads(path.read_text())  # always a whole file
                    assert record["schema_version"] in (1, 2)  # private 1, public 2
            if public.exists():
                visible.add(json.loads(public.read_text())["release_id"])
            ledger = set(spends(data))
            assert visible <= ledger, "a visible release is missing from the ledger"
        # A clean run afterwards settles what the kills left and removes stale temp files.
        final = run_cli("--config", str(config), "once", "--force", timeout=60)
        assert final.returncode == 0, final.stderr
        leftovers = [
            p.name
            for d in (data, data / "public", data / "private")
            for p in d.iterdir()
            if p.name.endswith(".tmp")
        ]
        assert leftovers == []
        with closing(sqlite3.connect(data / "ledger.sqlite3")) as conn:
            unsettled = conn.execute(
                "SELECT COUNT(*) FROM spends s WHERE NOT EXISTS (SELECT 1 FROM outcomes o "
                "WHERE o.release_id = s.release_id "
                "AND o.status IN ('published', 'abandoned', 'superseded'))"
            ).fetchone()
        assert unsettled == (0,)
        assert len(visible) >= 2


class TestRestarts:
    def test_cooldown_survives_restarts(self, tmp_path: Path) -> None:
        """After a release, neither once nor a restarted daemon releases again inside every_seconds."""
        config = write_config(tmp_path, {"schedule": {"every_seconds": 60}})
        assert run_cli("--config", str(config), "once").returncode == 0
        again = run_cli("--config", str(config), "once")
        assert again.returncode == 6
        assert "next one is due at" in again.stderr
        proc = start_cli("--config", str(config), "run")
        started = wait_for_event(proc, "daemon.started")
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert len(spends(tmp_path / "data")) == 1
        first_run = str(started[-1]["first_run_at"])
        assert (
            first_run
            > json.loads((tmp_path / "data" / "public" / "cpu_tracker.json").read_text())["window"]["start"]
        )
        assert "released" not in [e.get("outcome") for e in log_events(out)]

    def test_budget_exhaustion_keeps_the_daemon_running(self, tmp_path: Path) -> None:
        """At the cap the daemon logs budget.exhausted once and keeps running without releasing."""
        config = write_config(tmp_path, {"budget": {"lifetime_epsilon": 1.0, "window_epsilon": 1.0}})
        proc = start_cli("--config", str(config), "run")
        wait_for_event(proc, "budget.exhausted", timeout=60)
        time.sleep(2.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        # logged once: the first line was read above, and no second one followed
        assert [e["event"] for e in log_events(out)].count("budget.exhausted") == 0
        assert len(spends(tmp_path / "data")) == 2


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: the first write gets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


class TestClosedPipe:
    @pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["budget", "show"], ["--help"]])
    def test_a_closed_pipe_is_a_quiet_success(self, tmp_path: Path, command: list[str]) -> None:
        """`status | head -n1` exited 1 with "internal error (BrokenPipeError)". A reader that
        went away is a quiet exit 0, as for any Unix filter."""
        config = str(write_config(tmp_path))
        write = closed_pipe()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "cpu_tracker_daemon", "--config", config, *command],
                stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, env=cli_env(), check=False,
            )  # fmt: skip
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (0, "")

    def test_the_daemon_drops_a_dead_stdout_and_keeps_its_file_log(self, tmp_path: Path) -> None:
        """`run | head -n1` printed a 30-line logging traceback every cycle. The daemon now drops
        the dead stdout, keeps releasing, and logs to its file."""
        log = tmp_path / "daemon.log"
        config = str(write_config(tmp_path, {"logging": {"file": str(log)}}))
        write = closed_pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cpu_tracker_daemon", "--config", config, "run"],
                stdout=write, stderr=subprocess.PIPE, text=True, env=cli_env(),
            )  # fmt: skip
        finally:
            os.close(write)
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and sum(
                e.get("outcome") == "released" for e in log_events(log.read_text() if log.exists() else "")
            )
            < 2
        ):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "Traceback" not in err
        assert sum(e.get("outcome") == "released" for e in log_events(log.read_text())) >= 2


NO_LOCKS_SHIM = """
#include <errno.h>
int flock(int fd, int operation) { (void)fd; (void)operation; errno = ENOLCK; return -1; }
"""


@pytest.mark.skipif(shutil.which("gcc") is None or sys.platform != "linux", reason="needs gcc on Linux")
def test_a_file_system_without_locks_is_a_configuration_error(tmp_path: Path) -> None:
    """With ENOLCK (NFS without lockd) `run` and `once` exited 1, "internal error", and systemd
    restarted them for ever. A real flock() that fails with ENOLCK (an LD_PRELOAD shim) now
    gives exit 3 with one line naming the fix."""
    shim = tmp_path / "nolocks.so"
    source = tmp_path / "nolocks.c"
    source.write_text(NO_LOCKS_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shim), str(source)], check=True, timeout=60)
    config = str(write_config(tmp_path))
    for command in ("once", "run"):
        done = run_cli("--config", config, command, env=cli_env(LD_PRELOAD=str(shim)), timeout=60)
        assert done.returncode == 3, done.stderr
        assert done.stderr.count("\n") == 1
        assert "offers no file locks (ENOLCK" in done.stderr


def test_concurrent_approve_and_deny_of_one_request_never_crash(tmp_path: Path) -> None:
    """Losers of a concurrent approve/deny got "internal error". Eight real processes race on one
    request: each exits 0 or 2 (the documented refusal), none crashes, one decision stands."""
    from datetime import UTC, datetime, timedelta

    from cpu_tracker_daemon.budget.requests import request_message

    config = str(write_config(tmp_path))
    box = tmp_path / "data" / "public" / "rpc" / "budget" / "aggregator@openmined.org"
    box.mkdir(parents=True)
    now = datetime.now(UTC)
    request = request_message(
        "race-0001",
        "aggregator@openmined.org",
        "syft://-",
        "lifetime",
        1.0,
        "r",
        now,
        now + timedelta(days=1),
    )
    (box / "race-0001.request").write_text(json.dumps(request))
    assert run_cli("--config", config, "budget", "requests").returncode == 0
    approve, deny = ["approve", "race-0001"], ["deny", "race-0001", "--reason", "no"]
    procs = [start_cli("--config", config, "budget", *(approve if n % 2 else deny)) for n in range(8)]
    results = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
    assert all(code in (0, 2) for code, _ in results), results
    assert not any("internal error" in err for _, err in results), results
    with sqlite3.connect(tmp_path / "data" / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)
    conn.close()


def run_on_a_terminal(args: list[str], seconds: float) -> str:
    """Run the real command with a pseudo-terminal as stdout and stderr for ``seconds``, then
    SIGINT it (Ctrl-C); return what a person would have seen. The clock reads about noon, so a
    time within the hour is printed without its day."""
    import pty

    main_fd, term = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpu_tracker_daemon", *args],
        stdin=subprocess.DEVNULL, stdout=term, stderr=term, close_fds=True,
        env=cli_env(TZ=tz_at_local_hour(12)),
    )  # fmt: skip
    os.close(term)
    seen = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(main_fd, 65536)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        seen += read_rest(main_fd)
    finally:
        os.close(main_fd)
    assert proc.returncode == 0
    return seen.decode(errors="replace")


class TestTerminal:
    def test_on_a_terminal_the_daemon_talks_like_a_person(self, tmp_path: Path) -> None:
        """JSON lines on a terminal were hard to read. On a tty the log is the console format and
        the first line says what happens next: "sampling for ... s; first release at HH:MM"."""
        config = str(write_config(tmp_path, {"schedule": {"every_seconds": 5}}))
        seen = run_on_a_terminal(["--config", config, "run"], 4)
        lines = [line for line in seen.splitlines() if line.strip()]
        assert lines, seen
        assert not any(line.lstrip().startswith("{") for line in lines), seen
        assert re.search(r"sampling for 0\.1 s; first release at \d\d:\d\d", seen), seen

    def test_a_flag_chooses_json_on_a_terminal_and_pipes_get_json(self, tmp_path: Path) -> None:
        """--log-format json gives JSON even on a terminal; a pipe gets JSON by default."""
        config = str(write_config(tmp_path, {"schedule": {"every_seconds": 5}}))
        seen = run_on_a_terminal(["--config", config, "run", "--log-format", "json"], 3)
        events = log_events(seen.replace("\r\n", "\n"))
        assert events, seen
        assert events[0]["event"] == "daemon.started"
        assert "sampling for" in str(events[0]["summary"])
        piped = start_cli("--config", config, "run")
        started = wait_for_event(piped, "daemon.started")[-1]
        piped.send_signal(signal.SIGTERM)
        piped.communicate(timeout=20)
        assert started["event"] == "daemon.started"

    def test_a_start_in_cooldown_says_when_the_next_release_comes(self, tmp_path: Path) -> None:
        """Started inside the cooldown: "in cooldown; next release in 28 min (at 10:36)"."""
        config = str(write_config(tmp_path, {"schedule": {"every_seconds": 3600}}))
        assert run_cli("--config", config, "once").returncode == 0
        seen = run_on_a_terminal(["--config", config, "run"], 3)
        assert re.search(r"in cooldown; next release in (59|60) min \(at \d\d:\d\d\)", seen), seen


class TestStatus:
    def test_status_says_whether_the_daemon_runs_and_when_things_happen(self, tmp_path: Path) -> None:
        """status gave UTC times only and could not say whether a daemon ran. It now names the pid
        holding the lock, and gives each time relative and in local time beside the UTC one."""
        config = str(write_config(tmp_path, {"schedule": {"every_seconds": 600}}))
        proc = start_cli("--config", config, "run")
        try:
            wait_for_event(proc, "cycle.finished")
            shown = run_cli("--config", config, "status", env=cli_env(TZ=tz_at_local_hour(12)))
            as_json = json.loads(run_cli("--config", config, "status", "--json").stdout)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        assert f"running (pid {proc.pid})" in shown.stdout
        assert as_json["daemon"] == {"running": True, "pid": proc.pid}
        assert re.search(r"last release: +(now|\d+ s ago), at \d\d:\d\d local \(20", shown.stdout), (
            shown.stdout
        )
        assert re.search(r"next due: +in (9|10) min, at \d\d:\d\d local \(20", shown.stdout), shown.stdout
        after = run_cli("--config", config, "status")
        assert "daemon:        not running" in after.stdout
        assert json.loads(run_cli("--config", config, "status", "--json").stdout)["daemon"] == {
            "running": False,
            "pid": None,
        }

    def test_a_fresh_state_names_the_ledger_once(self, tmp_path: Path) -> None:
        """Before the first release status printed a "ledger:" line twice."""
        shown = run_cli("--config", str(write_config(tmp_path)), "status")
        assert shown.returncode == 0
        assert shown.stdout.count("ledger:") == 1, shown.stdout
        assert "not created yet" in shown.stdout
