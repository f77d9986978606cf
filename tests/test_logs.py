"""No pre-noise value in any log line or traceback; JSON lines; logrotate-safe files."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from cpu_tracker_daemon import logs
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.privacy import mechanisms as privacy
from cpu_tracker_daemon.storage import layout_for, prepare
from cpu_tracker_daemon.tracker import CycleLog, Tracker
from tests.conftest import FakeClock, FakeCpu, log_events, write_config

SECRET_FRACTION = 0.123456789  # a raw mean of 12.3456789 percent: distinctive in any output


class TestNoRawValueInLogs:
    def test_cycle_logs_never_contain_the_raw_mean(self, tmp_path: Path) -> None:
        """A whole cycle at debug level logs nothing containing the pre-noise mean."""
        stream = io.StringIO()
        logs.configure("json", "debug", stream=stream)
        config = load_config(write_config(tmp_path))
        layout = layout_for(config)
        prepare(layout)
        tracker = Tracker(config, layout, FakeCpu(SECRET_FRACTION), logs.get_logger("t"), FakeClock())
        CycleLog(logs.get_logger("t"))(tracker.cycle())
        output = stream.getvalue()
        assert "cycle.finished" in output
        assert "12.345" not in output
        assert "12.345" in (layout.private_file).read_text()  # the value exists, privately

    def test_tracebacks_carry_no_locals(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When noise fails after sampling, the logged traceback shows no local variables."""
        stream = io.StringIO()
        logs.configure("json", "debug", stream=stream)

        def broken(value: float, *args: object, **kwargs: object) -> float:
            raise RuntimeError("noise failed")

        monkeypatch.setattr("cpu_tracker_daemon.privacy.drawing.draw", broken)
        config = load_config(write_config(tmp_path))
        layout = layout_for(config)
        prepare(layout)
        tracker = Tracker(config, layout, FakeCpu(SECRET_FRACTION), logs.get_logger("t"), FakeClock())
        log = logs.get_logger("t")
        try:
            tracker.cycle()
        except RuntimeError:
            log.exception("cycle.crashed")
        (event,) = [e for e in log_events(stream.getvalue()) if e["event"] == "cycle.crashed"]
        frames = event["exception"][0]["frames"]
        assert frames, "the traceback is rendered"
        assert all("locals" not in frame for frame in frames)
        assert "12.345" not in stream.getvalue()


class TestFormat:
    def test_stdlib_loggers_are_json_too_and_apscheduler_is_quiet(self) -> None:
        """Foreign loggers render as JSON; APScheduler's INFO chatter is dropped."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        logging.getLogger("apscheduler.scheduler").info("Added job")
        logging.getLogger("apscheduler.scheduler").warning("Run time missed")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["Run time missed"]

    def test_log_file_survives_rotation(self, tmp_path: Path) -> None:
        """After logrotate moves the file away, the next line goes to a fresh file at the same path."""
        path = tmp_path / "cpu-tracker.log"
        logs.configure("json", "info", file=path, stream=io.StringIO())
        log = logs.get_logger("t")
        log.info("before.rotate")
        path.rename(tmp_path / "cpu-tracker.log.1")
        log.info("after.rotate")
        assert "after.rotate" in path.read_text()
        assert "after.rotate" not in (tmp_path / "cpu-tracker.log.1").read_text()


def test_privacy_module_is_the_only_diffprivlib_importer() -> None:
    """Only privacy/mechanisms.py names diffprivlib, so fast paths can avoid it."""
    package = Path(privacy.__file__).parents[1]
    importers = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "import diffprivlib" in p.read_text() or "from diffprivlib" in p.read_text()
    )
    assert importers == ["privacy/mechanisms.py"]
