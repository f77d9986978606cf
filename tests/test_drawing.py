"""Snapping's noise is drawn in a short-lived child process, so the daemon never holds
diffprivlib: the child draws exactly what this process would, hears the pre-noise value only on
its stdin, says nothing but the answer, and a child that fails, dies, is killed or hangs is a
refused cycle whose spend stays counted. The child imports nothing from the working directory or
the caller's environment, and a stop request ends a cycle that waits on it at once."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import psutil
import pytest

from cpu_tracker_daemon import signals
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_TEMPORARY,
    Interrupted,
    MechanismUnavailableError,
    NoiseUnavailableError,
)
from cpu_tracker_daemon.privacy import drawing
from cpu_tracker_daemon.privacy.mechanisms import PrivacyConfig, Statistic, add_noise, calibrate
from cpu_tracker_daemon.storage import layout_for
from tests.conftest import FakeClock, FakeCpu, cli_env, log_events, wait_for_event, write_config
from tests.test_tracker import make_tracker, outcomes

SECRET = 12.3456789  # a pre-noise value distinctive in any output
SNAPPING = calibrate(PrivacyConfig(mechanism="snapping", epsilon=0.5), samples=5)


def child(code: str) -> list[str]:
    """A real child process running ``code`` in place of the drawing module."""
    return [sys.executable, "-c", textwrap.dedent(code)]


ANSWERS_CHECKS_FAILS_DRAWS = child(
    """
    import json, sys
    request = json.loads(sys.stdin.read())
    if request.get("check"):
        print(json.dumps({"ready": True}))
    else:
        sys.exit(3)
    """
)


class TestTheChildDrawsWhatThisProcessWould:
    @pytest.mark.slow
    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_a_seeded_draw_is_the_same_in_the_child(self, seed: int) -> None:
        """The child runs the same Snapping call: a seeded draw gives this process's value."""
        value = Statistic(SECRET, 1235)
        here = add_noise(value, SNAPPING, random.Random(seed))
        there = drawing.draw(value, SNAPPING, random.Random(seed))
        assert there == here
        assert SNAPPING.lower <= there.cpu <= SNAPPING.upper
        assert there.units is None

    @pytest.mark.slow
    def test_a_snapping_cycle_never_imports_diffprivlib_here(self, tmp_path: Path) -> None:
        """`once` with Snapping publishes a value, and its own process never loads the stack."""
        config = write_config(tmp_path, {"privacy": {"mechanism": "snapping"}})
        script = textwrap.dedent(
            f"""
            import sys
            from cpu_tracker_daemon.cli import main as cli
            code = cli.main(["--config", {str(config)!r}, "once"])
            heavy = sorted(m for m in ("diffprivlib", "numpy", "scipy", "sklearn") if m in sys.modules)
            print(code, heavy)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
        assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr
        public = json.loads(layout_for(load_config(config)).public_file.read_text())
        assert public["privacy"]["mechanism"] == "snapping"
        assert 0.0 <= public["cpu"] <= 100.0


class TestTheValueStaysOnThePipe:
    def test_the_value_is_in_stdin_only(self, tmp_path: Path) -> None:
        """The pre-noise value reaches the child on its stdin, never in its argv or environment."""
        seen = tmp_path / "seen.json"
        spy = child(
            f"""
            import json, os, sys
            stdin = sys.stdin.read()
            with open({str(seen)!r}, "w") as f:
                json.dump({{"argv": sys.argv, "env": dict(os.environ), "stdin": stdin}}, f)
            print(json.dumps({{"cpu": 50.0}}))
            """
        )
        drawing.draw(Statistic(SECRET, 1235), SNAPPING, child=spy)
        got = json.loads(seen.read_text())
        assert str(SECRET) in got["stdin"]
        assert str(SECRET) not in json.dumps(got["argv"]) + json.dumps(got["env"])

    def test_a_failing_child_says_nothing(self) -> None:
        """The real child, given a request it cannot serve, exits 70 with empty stdout and stderr:
        no traceback that could show the value."""
        request = json.dumps({"percent": SECRET, "calibration": {"bogus": SECRET}, "seed": None})
        done = subprocess.run(
            list(drawing.CHILD), input=request.encode(), capture_output=True, check=False, timeout=60
        )
        assert (done.returncode, done.stdout, done.stderr) == (drawing.CHILD_FAILED, b"", b"")


class TestAChildThatFails:
    @pytest.mark.parametrize(
        ("code", "reason"),
        [
            ("import sys; sys.exit(3)", "exited with code 3"),
            ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9"),
            ("print('not json')", "something other than a value"),
            ("print('[50.0]')", "something other than a value"),
            ("print('{\"cpu\": 1e308}')", "something other than a value"),  # outside [lower, upper]
            ("print('{\"cpu\": NaN}')", "something other than a value"),
            ("print('{\"cpu\": 50}')", "something other than a value"),  # an int: not Snapping's
        ],
    )
    def test_is_noise_unavailable(self, code: str, reason: str) -> None:
        with pytest.raises(NoiseUnavailableError, match=re.escape(reason)) as caught:
            drawing.draw(Statistic(SECRET, 1235), SNAPPING, child=child(code))
        assert caught.value.exit_code == EXIT_TEMPORARY
        assert str(SECRET) not in str(caught.value)

    @pytest.mark.slow
    def test_a_hung_child_is_killed_at_the_timeout(self) -> None:
        with pytest.raises(NoiseUnavailableError, match=r"took longer than 0\.5 s"):
            drawing.draw(
                Statistic(SECRET, 1235), SNAPPING, child=child("import time; time.sleep(60)"), timeout=0.5
            )

    def test_a_child_that_cannot_start(self, tmp_path: Path) -> None:
        with pytest.raises(NoiseUnavailableError, match="could not start"):
            drawing.draw(Statistic(SECRET, 1235), SNAPPING, child=[str(tmp_path / "missing")])

    def test_a_child_that_cannot_import_is_a_config_error_before_any_spend(self) -> None:
        """`ready` refuses Snapping with exit 3 where its child cannot answer."""
        with pytest.raises(MechanismUnavailableError, match="cannot draw noise here") as caught:
            drawing.ready("snapping", child=child("import sys; sys.exit(3)"))
        assert caught.value.exit_code == EXIT_CONFIG
        drawing.ready("discrete_laplace", child=child("import sys; sys.exit(3)"))  # no child at all

    def test_a_refused_cycle_keeps_its_spend_and_the_next_abandons_it(
        self, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The spend was reserved before the draw: the cycle is refused (noise_failed), nothing is
        published, the ledger still counts it, and the next cycle settles it as abandoned."""
        monkeypatch.setattr(drawing, "CHILD", ANSWERS_CHECKS_FAILS_DRAWS)
        monkeypatch.setattr(drawing, "_ready", set())
        tracker, _ = make_tracker(
            tmp_path, clock, FakeCpu(SECRET / 100), {"privacy": {"mechanism": "snapping"}}
        )
        result = tracker.cycle()
        assert result.outcome == "noise_failed"
        assert isinstance(result.error, NoiseUnavailableError)
        assert result.next_due_at is not None
        assert not tracker.layout.public_file.exists()
        with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM spends").fetchone() == (1,)
        first = outcomes(tracker)
        assert first == []  # reserved, never drawn
        clock.advance(2)
        assert tracker.cycle().outcome == "noise_failed"
        statuses = [status for _, status in outcomes(tracker)]
        assert statuses == ["abandoned"]
        with closing(sqlite3.connect(tracker.layout.ledger)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM spends").fetchone() == (2,)


# -- nothing but the installed package runs in the child ------------------------------------------

CPU_TRACKER = str(Path(sys.executable).with_name("cpu-tracker"))  # the installed command
OTHER_USER = "cpu-tracker-other"  # a throwaway unprivileged user, when the suite runs as root
SNAPPING_CONFIG = {"privacy": {"mechanism": "snapping"}}


def planted_json(evidence: Path) -> str:
    """Another user's ``json.py``: whoever imports it leaves a file in ``evidence`` named for
    the uid it ran as, reads the request on stdin and answers with the pre-noise value."""
    return textwrap.dedent(
        f"""
        import os, re, sys
        open(os.path.join({str(evidence)!r}, "ran-as-uid-%d" % os.getuid()), "w").close()
        request = sys.stdin.read()
        if '"check"' in request:
            os.write(1, b'{{"ready": true}}')
        else:
            raw = re.search(r'"percent": ([-0-9.e+]+)', request).group(1)
            os.write(1, ('{{"cpu": %s}}' % raw).encode())
        os._exit(0)
        """
    )


def ran(evidence: Path) -> list[str]:
    return sorted(path.name for path in evidence.glob("ran-as-uid-*"))


@pytest.fixture(scope="session")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second, unprivileged user: made with useradd for the session where it is not there."""
    if os.geteuid() != 0:
        pytest.skip("a file owned by a second user needs root to make (useradd, chown)")
    made = False
    try:
        user = pwd.getpwnam(OTHER_USER)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
            capture_output=True,
            check=False,
        )
        made = done.returncode == 0
        user = pwd.getpwnam(OTHER_USER)
    yield user
    if made:
        subprocess.run(["userdel", OTHER_USER], capture_output=True, check=False)


class TestTheChildImportsOnlyThePackage:
    @pytest.mark.slow
    def test_another_users_module_in_the_working_directory_never_runs(
        self, tmp_path: Path, other_user: pwd.struct_passwd
    ) -> None:
        """Issue 33: root's `cpu-tracker once`, run from a sticky world-writable directory where
        another user left a ``json.py``, ran it inside Snapping's child as uid 0, and it
        published the pre-noise value. Now the child never imports it: the release is drawn."""
        sticky = tmp_path / "shared"
        sticky.mkdir()
        sticky.chmod(0o1777)
        planted = sticky / "json.py"
        planted.write_text(planted_json(sticky))
        os.chown(planted, other_user.pw_uid, other_user.pw_gid)
        config = write_config(tmp_path, SNAPPING_CONFIG)
        done = subprocess.run(
            [CPU_TRACKER, "--config", str(config), "once"],
            cwd=sticky,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran(sticky) == []
        assert done.returncode == 0, done.stderr
        # The child drew the release. Its value is no evidence either way: Snapping's outputs are
        # few (the clamp and its coarse grid), so the noisy value often equals the raw mean.
        public = json.loads(layout_for(load_config(config)).public_file.read_text())
        assert public["privacy"]["mechanism"] == "snapping"

    @pytest.mark.slow
    def test_the_child_ignores_the_working_directory_and_pythonpath(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The real child, started from a directory holding a ``json.py`` and with PYTHONPATH
        naming it, passes the ready check and draws this process's value without running it."""
        planted = tmp_path / "planted"
        planted.mkdir()
        (planted / "json.py").write_text(planted_json(planted))
        monkeypatch.chdir(planted)
        monkeypatch.setenv("PYTHONPATH", str(planted))
        monkeypatch.setattr(drawing, "_ready", set())
        drawing.ready("snapping")
        value = Statistic(SECRET, 1235)
        assert drawing.draw(value, SNAPPING, random.Random(4)) == add_noise(value, SNAPPING, random.Random(4))
        assert ran(planted) == []

    def test_the_child_starts_in_the_root_directory_with_a_minimal_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Whatever the caller's working directory and environment, the child starts in / and
        sees none of the caller's variables but the numeric libraries' tuning."""
        seen = tmp_path / "seen.json"
        spy = child(
            f"""
            import json, os, sys
            with open({str(seen)!r}, "w") as f:
                json.dump({{"cwd": os.getcwd(), "env": dict(os.environ)}}, f)
            print(json.dumps({{"cpu": 50.0}}))
            """
        )
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CPU_TRACKER_TEST_MARK", "from the caller")
        monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
        drawing.draw(Statistic(SECRET, 1235), SNAPPING, child=spy)
        got = json.loads(seen.read_text())
        assert got["cwd"] == "/"
        assert "CPU_TRACKER_TEST_MARK" not in got["env"]
        assert got["env"]["OPENBLAS_CORETYPE"] == "Haswell"  # numpy's tuning on processors that need it
        assert not [name for name in got["env"] if name.startswith("PYTHON")]


# -- a stop request reaches a cycle that waits on a child -----------------------------------------


def snapping_children(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The Snapping children ``proc`` has now."""
    found = []
    with suppress(psutil.Error):
        for kid in psutil.Process(proc.pid).children():
            with suppress(psutil.Error):
                if "cpu_tracker_daemon.privacy.drawing" in kid.cmdline():
                    found.append(kid)
    return found


def hang_child(proc: subprocess.Popen[str], nth: int, timeout: float = 60) -> psutil.Process:
    """SIGSTOP the ``nth`` (from 1) Snapping child of ``proc`` as soon as it appears."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for kid in snapping_children(proc):
            if kid.pid not in seen:
                seen.append(kid.pid)
                if len(seen) == nth:
                    kid.suspend()
                    return kid
        time.sleep(0.005)
    raise AssertionError(f"no Snapping child number {nth} (saw {len(seen)}); exit code {proc.poll()}")


def ledger_rows(data: Path) -> tuple[int, list[str]]:
    """How many spends the ledger holds, and its outcomes' statuses in order."""
    with closing(sqlite3.connect(data / "ledger.sqlite3")) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM spends").fetchone()
        statuses = [status for (status,) in conn.execute("SELECT status FROM outcomes ORDER BY id")]
    return count, statuses


class TestAStopReachesAWaitOnTheChild:
    def test_a_stop_request_kills_and_reaps_a_hung_child(self, tmp_path: Path) -> None:
        """A stop request while the draw waits on a child that never answers ends the draw as
        Interrupted, with the child killed and reaped, long before the timeout."""
        stop = signals.Flag()
        threading.Timer(0.1, stop.set).start()
        with pytest.raises(Interrupted):
            drawing.draw(
                Statistic(SECRET, 1235), SNAPPING, child=child("import time; time.sleep(60)"), stop=stop
            )
        assert psutil.Process().children() == []

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("nth", "spends"),
        [(1, 0), (2, 1)],
        ids=["the-ready-check", "the-draw"],
    )
    def test_sigterm_ends_once_while_its_child_hangs(self, tmp_path: Path, nth: int, spends: int) -> None:
        """Issue 33: `once` waited 119 s for a hung Snapping child after SIGTERM, then exited 8.
        Now it exits at once as interrupted (9), the child killed and reaped; a spend reserved
        before the draw stays counted, and that window is never drawn: the next cycle abandons it."""
        config = write_config(tmp_path, SNAPPING_CONFIG)
        proc = subprocess.Popen(
            [CPU_TRACKER, "--config", str(config), "once"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        hung = None
        try:
            hung = hang_child(proc, nth)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == EXIT_INTERRUPTED, err
            assert "interrupted" in err
            finished = [e["outcome"] for e in log_events(out) if e["event"] == "cycle.finished"]
            assert finished == ["interrupted"]
            assert not hung.is_running()
        finally:
            with suppress(psutil.Error):
                if hung is not None:
                    hung.kill()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        data = tmp_path / "data"
        assert not (data / "public" / "cpu_tracker.json").exists()
        assert ledger_rows(data) == (spends, [])
        if spends == 0:
            return
        again = subprocess.run(
            [CPU_TRACKER, "--config", str(config), "once", "--force"],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert ledger_rows(data) == (2, ["abandoned", "drawn", "published"])

    @pytest.mark.slow
    @pytest.mark.parametrize("started", [False, True], ids=["the-ready-check", "the-first-draw"])
    def test_sigterm_stops_the_daemon_while_its_child_hangs(self, tmp_path: Path, started: bool) -> None:
        """Issue 33: `run` exited 118.6 s after SIGTERM with a hung Snapping child, past the
        unit's TimeoutStopSec. Now it stops at once (exit 0), the child reaped: during its start
        before any ledger is opened, during a cycle with that cycle interrupted and its spend kept
        as reserved."""
        config = write_config(tmp_path, SNAPPING_CONFIG)
        proc = subprocess.Popen(
            [CPU_TRACKER, "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        hung = None
        try:
            if started:
                wait_for_event(proc, "daemon.started", timeout=60)  # its ready check's child is gone
            hung = hang_child(proc, 1)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            events = log_events(out)
            assert events[-1]["event"] == "daemon.stopped"
            finished = [e["outcome"] for e in events if e["event"] == "cycle.finished"]
            assert finished == (["interrupted"] if started else [])
            assert not hung.is_running()
        finally:
            with suppress(psutil.Error):
                if hung is not None:
                    hung.kill()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        data = tmp_path / "data"
        assert not (data / "public" / "cpu_tracker.json").exists()
        if started:
            assert ledger_rows(data) == (1, [])
        else:
            assert not (data / "ledger.sqlite3").exists()
