"""Snapping's noise is drawn in a short-lived child process, so the daemon never holds
diffprivlib: the child draws exactly what this process would, hears the pre-noise value only on
its stdin, says nothing but the answer, and a child that fails, dies, is killed or hangs is a
refused cycle whose spend stays counted."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from cpu_tracker_daemon import drawing
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.errors import MechanismUnavailableError, NoiseUnavailableError
from cpu_tracker_daemon.exit_codes import EXIT_CONFIG, EXIT_TEMPORARY, exit_code_for
from cpu_tracker_daemon.privacy import PrivacyConfig, Statistic, add_noise, calibrate
from cpu_tracker_daemon.storage import layout_for
from tests.conftest import FakeClock, FakeCpu, write_config
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
            from cpu_tracker_daemon import cli
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
        assert exit_code_for(caught.value) == EXIT_TEMPORARY
        assert str(SECRET) not in str(caught.value)

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
        assert exit_code_for(caught.value) == EXIT_CONFIG
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
