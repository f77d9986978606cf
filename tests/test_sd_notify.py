"""The sd_notify protocol over a real AF_UNIX datagram socket, from the real daemon."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpu_tracker_daemon.daemon.sd_notify import Notifier
from tests.conftest import cli_env, start_cli, write_config


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(30)
        yield sock


def receive_until(sock: socket.socket, wanted: str, timeout: float = 30) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages.append(sock.recv(4096).decode())
        if any(wanted in m.splitlines() for m in messages):
            return messages
    raise AssertionError(f"{wanted} not received; got {messages}")


class TestNotifier:
    def test_outside_systemd_it_is_a_no_op(self) -> None:
        """With no NOTIFY_SOCKET nothing is sent and no watchdog interval is set."""
        notifier = Notifier({})
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        notifier.send(READY="1")  # must not raise

    def test_watchdog_is_half_the_interval_for_this_pid_only(self) -> None:
        """WATCHDOG_USEC gives a ping interval of half, unless WATCHDOG_PID names another process."""
        assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
        assert Notifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}).watchdog_interval is None

    def test_sends_datagrams(self, tmp_path: Path, listener: socket.socket) -> None:
        """send() writes KEY=value lines in one datagram."""
        Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).send(READY="1", STATUS="hello")
        assert listener.recv(4096).decode() == "READY=1\nSTATUS=hello"

    @pytest.mark.slow
    def test_daemon_reports_ready_status_reloading_stopping(
        self, tmp_path: Path, listener: socket.socket
    ) -> None:
        """The daemon sends READY=1, STATUS after a cycle, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM."""
        config = write_config(tmp_path)
        env = cli_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000")
        proc = start_cli("--config", str(config), "run", env=env)
        try:
            receive_until(listener, "READY=1")
            statuses = receive_until(listener, "WATCHDOG=1")
            messages = receive_until(listener, "WATCHDOG=1") + statuses
            assert any(m.startswith("STATUS=last cycle released") for m in messages), messages
            proc.send_signal(signal.SIGHUP)
            receive_until(listener, "RELOADING=1")
            proc.send_signal(signal.SIGTERM)
            receive_until(listener, "STOPPING=1")
            proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0
