"""Shared helpers: config files in tmp_path, the real CLI in a subprocess, fake clocks and CPUs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon.sampling import Reading

FAST = {
    "sampling": {"samples": 5, "interval_seconds": 0.02},
    "schedule": {"every_seconds": 1},
    "budget": {"lifetime_epsilon": 100, "window_epsilon": 100},
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(tables: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, table in tables.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(out) + "\n"


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, table in layer.items():
            merged.setdefault(section, {}).update(table)
    return merged


def write_config(
    tmp_path: Path, overrides: dict[str, dict[str, Any]] | None = None, name: str = "c.toml"
) -> Path:
    """A fast config (5 samples x 20 ms, every 1 s, roomy budget) under tmp_path, with overrides."""
    tables = merge({"paths": {"data_dir": str(tmp_path / "data")}}, FAST, overrides or {})
    path = tmp_path / name
    path.write_text(render_toml(tables))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    service_env = ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "LOGS_DIRECTORY", "XDG_CONFIG_HOME")
    env = {
        k: v for k, v in os.environ.items() if k not in ("CPU_TRACKER_CONFIG", "NOTIFY_SOCKET", *service_env)
    }
    env.update(extra)
    return env


def tz_at_local_hour(hour: float) -> str:
    """A POSIX ``TZ`` under which the local wall clock now reads about ``hour`` o'clock.

    A test that reads "at 10:36" beside "in 60 min" fails within an hour of local midnight, when
    the time is printed with its day ("at Wed 02 Dec 00:04"); a child started with this ``TZ``
    is far from midnight whenever the test runs."""
    now = datetime.now(UTC)
    east = round(hour - (now.hour + now.minute / 60)) % 24
    east = east - 24 if east > 12 else east
    return f"<{east:+03d}>{-east:+d}"


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "cpu_tracker_daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        check=False,
    )


def start_cli(
    *args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpu_tracker_daemon", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
    )


def read_rest(fd: int, quiet: float = 0.2) -> bytes:
    """What is left to read on a pseudo-terminal's main side once the program has exited: until
    ``quiet`` seconds pass with nothing new, or the terminal is gone."""
    import select

    seen = b""
    with contextlib.suppress(OSError):
        while select.select([fd], [], [], quiet)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``text`` (other lines ignored)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def daemon_events(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    """The events of a daemon's JSON log on its stdout, as it writes them, until it closes it.
    The one reader of a running daemon's log for every test."""
    assert proc.stdout is not None
    for line in proc.stdout:
        yield from log_events(line)


def wait_for_event(proc: subprocess.Popen[str], event: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Read the daemon's log until an ``event`` line appears; return the events read."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for item in daemon_events(proc):
        seen.append(item)
        if item.get("event") == event:
            return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(
        f"no {event} within {timeout}s; saw {seen}; stderr={proc.stderr.read() if proc.stderr else ''}"
    )


class RunningDaemon:
    """A real ``cpu-tracker run`` in a subprocess, its log read event by event."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = start_cli("--config", str(config), "run", env=env)
        self.events: list[dict[str, Any]] = []
        self._events = daemon_events(self.proc)

    def wait_for(self, predicate: Any, limit: int = 200) -> dict[str, Any]:
        """The first event (of at most ``limit`` more) for which ``predicate`` holds."""
        for _ in range(limit):
            event = next(self._events, None)
            assert event is not None, "the daemon exited"
            self.events.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"not seen in {limit} events: {self.events[-5:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=20)
        return self.proc.returncode


@dataclass
class FakeClock:
    """A clock a test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2026, 1, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeCpu:
    """A CPU source whose every reading has a fixed busy fraction; counts its calls."""

    fraction: float = 0.25
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> Reading:
        with self.lock:
            self.calls += 1
        return Reading(busy=self.fraction, total=1.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class _OsWith:
    """The ``os`` module as one module of ours sees it, with one function replaced."""

    def __init__(self, name: str, function: Any) -> None:
        self._name, self._function = name, function

    def __getattr__(self, attr: str) -> Any:
        return self._function if attr == self._name else getattr(os, attr)


def before_os_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, before: Any) -> None:
    """Run ``before(*args)`` just before each call of ``os.<name>`` that ``module`` makes, and only
    that module: the moment a write is half done, for a test to look at (or sync) the disk then."""
    real = getattr(os, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        before(*args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "os", _OsWith(name, call))
