"""Installed as a SyftBox app: ``run.sh`` run the way each client generation runs it.

The Go client clones the repository into ``apps/<id>/`` and starts ``run.sh`` once through a
login shell, from that directory, with ``SYFTBOX_APP_DIR`` and ``SYFTBOX_CLIENT_CONFIG_PATH``
set and a PATH without virtualenvs; it stops the app with SIGTERM and a SIGKILL 3 s later. The
0.4 Python client runs ``sh run.sh`` every few seconds and waits for it to return.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.syftbox_network import REPO, wait_until

pytestmark = pytest.mark.slow

EMAIL = "member@example.org"
KILL_AFTER_SECONDS = 3.0  # the Go client's grace period between SIGTERM and SIGKILL


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The repository as the client clones it, a client config, and a fast cpu-tracker config
    that sets no [syftbox] (the app takes the datasite from the client)."""
    root = tmp_path_factory.mktemp("syftbox-app")
    app_dir = root / "SyftBox" / "apps" / "cpu-tracker"
    app_dir.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = app_dir / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode & 0o777)
    client = root / "client.json"
    client.write_text(json.dumps({"data_dir": str(root / "SyftBox"), "email": EMAIL, "server_url": "x"}))
    config = write_config(root, {"schedule": {"every_seconds": 3600}})
    return {"root": root, "app": app_dir, "client": client, "config": config}


def client_env(app: dict[str, Path], go: bool) -> dict[str, str]:
    env = {
        "HOME": str(app["root"]),
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # the client's PATH, no virtualenv on it
        "SYFTBOX_CLIENT_CONFIG_PATH": str(app["client"]),
        "CPU_TRACKER_CONFIG": str(app["config"]),
    }
    if go:
        env |= {
            "SYFTBOX_APP_ID": "cpu-tracker",
            "SYFTBOX_APP_DIR": str(app["app"]),
            "SYFTBOX_APP_PORT": "7938",
        }
    return env


def release(app: dict[str, Path]) -> Path:
    return app["root"] / "SyftBox" / "datasites" / EMAIL / "app_data" / "cpu_tracker" / "cpu_tracker.json"


class TestGoClient:
    def test_run_sh_sets_itself_up_releases_and_stops_within_the_grace_period(
        self, app: dict[str, Path]
    ) -> None:
        """First start: run.sh makes its venv, the daemon finds the datasite in the client's
        config and releases into it; SIGTERM stops it cleanly well inside the 3 s before SIGKILL."""
        proc = subprocess.Popen(
            ["/bin/sh", "-lc", f'exec "{app["app"] / "run.sh"}"'],
            cwd=app["app"],
            env=client_env(app, go=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(
                "the app's first release", lambda: release(app).is_file() or proc.poll() is not None, 600
            )
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            try:
                out, err = proc.communicate(timeout=KILL_AFTER_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise AssertionError(
                    "the app outlived SIGTERM by 3 s: the Go client would SIGKILL it"
                ) from None
        assert proc.returncode == 0, err.decode()[-2000:]
        assert time.monotonic() - sent < KILL_AFTER_SECONDS
        assert b'"event": "daemon.stopped"' in out
        assert json.loads(release(app).read_text())["schema"].startswith("cpu-tracker")
        assert (app["app"] / ".venv" / "bin" / "cpu-tracker").exists()


def run_sh(app: dict[str, Path], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """``sh run.sh`` as the 0.4 client runs it: from the app's folder, waited for."""
    return subprocess.run(
        ["sh", "run.sh"],
        check=False,
        cwd=app["app"],
        env=client_env(app, go=False),
        capture_output=True,
        timeout=timeout,
    )


class TestPythonClient:
    def test_each_run_is_one_cycle_and_a_cooldown_is_success(self, app: dict[str, Path]) -> None:
        """Under the 0.4 client each run of ``sh run.sh`` is one cycle; when the cooldown has not
        elapsed it returns 0 at once rather than failing every few seconds."""
        first = run_sh(app, timeout=600)  # the first run sets the venv up
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        started = time.monotonic()
        again = run_sh(app, timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        assert b"cooldown" in again.stdout + again.stderr
        assert time.monotonic() - started < 10
