"""Installed as a SyftBox app: ``run.sh`` run the way each client generation runs it.

The Go client clones the repository into ``apps/<id>/`` and starts ``run.sh`` once through a
login shell, from that directory, with ``SYFTBOX_APP_DIR`` and ``SYFTBOX_CLIENT_CONFIG_PATH``
set and a PATH without virtualenvs (it drops any entry naming pyenv, conda or a venv); it
writes ``.syftboxapp.json`` beside the clone and sends the app's output to ``logs/app.log``
there; it stops the app with SIGTERM and a SIGKILL 3 s later, and never starts it again when it
exits. The 0.4 Python client runs ``sh run.sh`` every few seconds and waits for it to return.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cpu_tracker_daemon import errors
from tests.conftest import write_config
from tests.syftbox_network import REPO, wait_until

EMAIL = "member@example.org"
KILL_AFTER_SECONDS = 3.0  # the Go client's grace period between SIGTERM and SIGKILL
CLIENT_PATH = "/usr/local/bin:/usr/bin:/bin"  # the client's PATH, no virtualenv or pyenv on it
RETRY = re.compile(r"^cpu-tracker app: .*trying again in \d+ (s|min)\b", re.MULTILINE)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as the client clones it (a git work tree of this checkout's files), with
    the app metadata the client writes beside it; its venv is made by the first test that runs."""
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
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", "clone"]):
        subprocess.run([*git, *args], cwd=app_dir, check=True, capture_output=True)
    (app_dir / ".syftboxapp.json").write_text(json.dumps({"id": "cpu-tracker", "path": str(app_dir)}))
    return app_dir


@pytest.fixture
def app(checkout: Path, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The clone, and this test's own member: a client config naming its own SyftBox folder, and
    a cpu-tracker config (one release an hour) that sets no [syftbox], so the app takes the
    datasite from the client. HOME is the clone's parent's, so pip's cache is shared."""
    client = tmp_path / "client.json"
    client.write_text(json.dumps({"data_dir": str(tmp_path / "SyftBox"), "email": EMAIL, "server_url": "x"}))
    config = write_config(tmp_path, {"schedule": {"every_seconds": 3600}})
    yield {"app": checkout, "home": checkout.parents[2], "client": client, "config": config, "tmp": tmp_path}
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert dirty == "", "the app dirtied its checkout"


def client_env(app: dict[str, Path], go: bool, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(app["home"]),
        "PATH": CLIENT_PATH,
        "SYFTBOX_CLIENT_CONFIG_PATH": str(app["client"]),
        "CPU_TRACKER_CONFIG": str(app["config"]),
    }
    if go:
        env |= {
            "SYFTBOX_APP_ID": "cpu-tracker",
            "SYFTBOX_APP_DIR": str(app["app"]),
            "SYFTBOX_APP_PORT": "7938",
        }
    return env | extra


def release(app: dict[str, Path]) -> Path:
    return app["tmp"] / "SyftBox" / "datasites" / EMAIL / "app_data" / "cpu_tracker" / "cpu_tracker.json"


def app_log(app: dict[str, Path]) -> Path:
    return app["app"] / "logs" / "app.log"


def start_as_go_client(app: dict[str, Path], login: bool = True, **extra: str) -> subprocess.Popen[bytes]:
    """``run.sh`` as the Go client starts it: through a login shell, from the clone, its output
    in ``logs/app.log`` there (emptied at each start). ``login=False`` keeps the PATH given
    (Debian's /etc/profile sets its own)."""
    log = app_log(app)
    log.parent.mkdir(exist_ok=True)
    script = app["app"] / "run.sh"
    with log.open("wb") as out:
        return subprocess.Popen(
            ["/bin/sh", "-lc", f'exec "{script}"'] if login else ["/bin/sh", str(script)],
            cwd=app["app"],
            env=client_env(app, go=True, **extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def stop_as_go_client(proc: subprocess.Popen[bytes], app: dict[str, Path]) -> int:
    """SIGTERM, then what the Go client does 3 s later: SIGKILL, which fails the test."""
    if proc.poll() is not None:
        raise AssertionError(f"the app had exited {proc.returncode}:\n{app_log(app).read_text()[-3000:]}")
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=KILL_AFTER_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the app outlived SIGTERM by 3 s: the Go client would SIGKILL it") from None


def log_text(app: dict[str, Path]) -> str:
    return app_log(app).read_text(errors="replace")


def alive_until(
    proc: subprocess.Popen[bytes], app: dict[str, Path], what: str, check: Callable[[], object]
) -> None:
    """Wait for ``check()``; the app must stay alive meanwhile (the Go client never restarts it)."""

    def seen() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited {proc.returncode}, dead for good:\n{log_text(app)[-3000:]}")
        return bool(check())

    wait_until(what, seen, 600, every=0.2)


@pytest.mark.slow
class TestGoClient:
    def test_run_sh_sets_itself_up_releases_and_stops_within_the_grace_period(
        self, app: dict[str, Path]
    ) -> None:
        """First start: run.sh makes its venv, the daemon finds the datasite in the client's
        config and releases into it; SIGTERM stops it cleanly well inside the 3 s before SIGKILL;
        the clone's git status stays clean (venv, client log and metadata all ignored)."""
        proc = start_as_go_client(app)
        try:
            alive_until(proc, app, "the app's first release", release(app).is_file)
        finally:
            code = stop_as_go_client(proc, app)
        assert code == 0, log_text(app)[-3000:]
        assert '"event": "daemon.stopped"' in log_text(app)
        assert json.loads(release(app).read_text())["schema"].startswith("cpu-tracker")
        assert (app["app"] / ".venv" / "bin" / "cpu-tracker").exists()

    def test_a_refusal_keeps_the_app_alive_and_fixing_the_config_is_enough(
        self, app: dict[str, Path]
    ) -> None:
        """A bad config made the daemon exit 3, and the Go client never starts an app again: it
        stayed dead until the client restarted. Now run.sh says why and when it tries again, in
        one line each time, and the release comes once the file is fixed, with no restart."""
        good = app["config"].read_text()
        app["config"].write_text('[sampling]\nsamples = "many"\n')
        proc = start_as_go_client(app, CPU_TRACKER_APP_RETRY_SECONDS="1")
        try:
            alive_until(proc, app, "two tries, each refused", lambda: len(RETRY.findall(log_text(app))) >= 2)
            refusals = [m.group(0) for m in RETRY.finditer(log_text(app))]
            assert "exit 3" in refusals[0]
            assert errors.EXIT_CODES[errors.EXIT_CONFIG] in refusals[0]
            assert "sampling.samples" in log_text(app)
            app["config"].write_text(good)
            alive_until(proc, app, "the release once the config is fixed", release(app).is_file)
        finally:
            code = stop_as_go_client(proc, app)
        assert code == 0, log_text(app)[-3000:]

    def test_a_failed_first_install_is_tried_again(self, app: dict[str, Path]) -> None:
        """The first pip install fails (no package index: offline); run.sh says so and tries
        again with back-off until it can install, then runs: the network coming back is enough."""
        offline = app["tmp"] / "pip.conf"
        offline.write_text("[global]\nindex-url = http://127.0.0.1:9/simple\nretries = 0\ntimeout = 2\n")
        offline_uv = app["tmp"] / "uv.toml"  # where uv is installed, it installs instead of pip
        offline_uv.write_text('index-url = "http://127.0.0.1:9/simple"\n')
        proc = start_as_go_client(
            app,
            CPU_TRACKER_APP_RETRY_SECONDS="1",
            CPU_TRACKER_APP_VENV=str(app["tmp"] / "venv"),
            PIP_CONFIG_FILE=str(offline),
            UV_CONFIG_FILE=str(offline_uv),
        )
        try:
            alive_until(proc, app, "a failed install, tried again", lambda: RETRY.search(log_text(app)))
            assert "install" in RETRY.search(log_text(app)).group(0)  # type: ignore[union-attr]
            offline.write_text("")
            offline_uv.write_text("")
            alive_until(proc, app, "the release once pip can install", release(app).is_file)
        finally:
            code = stop_as_go_client(proc, app)
        assert code == 0, log_text(app)[-3000:]
        assert (app["tmp"] / "venv" / "bin" / "cpu-tracker").exists()

    def test_with_uv_on_path_it_sets_up_with_uv(
        self, app: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """Where uv is on PATH (the Go client requires it; desktop installs add its folder), the
        venv is made and filled with uv, as OpenMined's own apps do, and the daemon releases."""
        tools = tmp_path_factory.mktemp("uv")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(tools), "uv"],
            check=True, timeout=600,
        )  # fmt: skip
        venv = app["tmp"] / "venv"
        # This machine reaches PyPI through a proxy whose CA pip is told of; uv reads it here.
        certs = {"SSL_CERT_FILE": os.environ["PIP_CERT"]} if "PIP_CERT" in os.environ else {}
        proc = start_as_go_client(
            app, login=False, PATH=f"{CLIENT_PATH}:{tools / 'bin'}", CPU_TRACKER_APP_VENV=str(venv), **certs
        )
        try:
            alive_until(proc, app, "the release", release(app).is_file)
        finally:
            code = stop_as_go_client(proc, app)
        assert code == 0, log_text(app)[-3000:]
        assert f"setting up {venv} with uv" in log_text(app)
        assert "uv" in (venv / "pyvenv.cfg").read_text()

    def test_without_python_3_11_it_says_what_to_install_and_waits_for_it(
        self, app: dict[str, Path], tmp_path: Path
    ) -> None:
        """On a PATH whose python3 is too old (macOS ships 3.9), run.sh made a venv with it and
        pip failed: dead. Now it names what it found and what to install, tries again, and
        takes a Python 3.11 as soon as one is on PATH. (Started without the login shell, whose
        Debian /etc/profile would replace this PATH with the system's.)"""
        old = Path("/root/.pyenv/versions/3.10.13/bin/python3.10")
        if not old.exists():
            pytest.skip("no Python 3.10 installed to stand for an old python3")
        if any(Path(uv).exists() for uv in ("/usr/local/bin/uv", "/opt/homebrew/bin/uv")):
            pytest.skip("uv is installed where run.sh looks for it: it would fetch a Python itself")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("cat", "cksum", "dirname", "rm", "sleep", "date"):
            found = shutil.which(tool, path=CLIENT_PATH)
            assert found is not None
            (bin_dir / tool).symlink_to(found)
        (bin_dir / "python3").symlink_to(old)
        proc = start_as_go_client(
            app,
            login=False,
            PATH=str(bin_dir),
            CPU_TRACKER_APP_RETRY_SECONDS="1",
            CPU_TRACKER_APP_VENV=str(tmp_path / "venv"),
        )
        try:
            alive_until(proc, app, "a missing Python, tried again", lambda: RETRY.search(log_text(app)))
            said = RETRY.search(log_text(app)).group(0)  # type: ignore[union-attr]
            assert "Python 3.11" in said
            assert "python3 is 3.10" in said
            assert "uv" in said
            new = Path(shutil.which("python3.11", path=CLIENT_PATH) or "/usr/bin/python3.11")
            (bin_dir / "python3.11").symlink_to(new)
            alive_until(
                proc, app, "the setup with Python 3.11", lambda: f"with {bin_dir}/python3.11" in log_text(app)
            )
        finally:
            code = stop_as_go_client(proc, app)  # in the middle of pip install: out at once
        assert code == 0, log_text(app)[-3000:]


class TestRunScript:
    def test_names_each_refusal_as_the_exit_code_table_does(self) -> None:
        """run.sh's line for a refusal quotes the meaning of its exit code from errors.EXIT_CODES."""
        script = (REPO / "run.sh").read_text()
        for code in (errors.EXIT_CONFIG, errors.EXIT_LEDGER, errors.EXIT_INSTANCE):
            assert f'{code}) what="{errors.EXIT_CODES[code]}"' in script


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


@pytest.mark.slow
class TestPythonClient:
    def test_each_run_is_one_cycle_and_a_cooldown_is_success(self, app: dict[str, Path]) -> None:
        """Under the 0.4 client each run of ``sh run.sh`` is one cycle; when the cooldown has not
        elapsed it returns 0 at once rather than failing every few seconds."""
        first = run_sh(app, timeout=600)  # the first run sets the venv up
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        again = run_sh(app, timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        assert b"cooldown" in again.stdout + again.stderr
