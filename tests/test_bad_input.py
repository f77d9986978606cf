"""Issue 33's bad input, as the user gave it: the installed ``cpu-tracker`` in a subprocess,
real files, a real FIFO, ``/dev/zero``, a real second user. Each ends in one line naming the
problem and the fix, a documented exit code, and nothing written."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import cpu_tracker_daemon
from cpu_tracker_daemon.errors import EXIT_CONFIG, EXIT_INTERNAL, EXIT_TEMPORARY, EXIT_USAGE
from tests.bench import benchmark
from tests.conftest import cli_env, merge, write_config

pytestmark = pytest.mark.slow

CPU_TRACKER = Path(sys.executable).parent / "cpu-tracker"  # the installed console script
OTHER_USER = "ct-other"  # a throwaway system user this suite makes when it runs as root
MEMORY_LIMIT = 1 << 30  # the runs had a memory limit: an endless read meets it


def run_installed(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed command, under a memory limit, as a user would run it."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [str(CPU_TRACKER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=cwd,
        preexec_fn=limit_memory,
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    """A documented exit code, no internal error, no traceback, and one line (or a header and
    one line per problem) naming each of ``names``."""
    assert "internal error" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "no message"
    assert lines[0].startswith("cpu-tracker: "), lines
    if len(lines) > 1:
        assert lines[0].endswith("problems):"), lines
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def fast_config(tmp_path: Path, extra: str = "") -> Path:
    """A config with a short window whose data directory is ``tmp_path/data``, then ``extra``."""
    path = write_config(tmp_path)
    path.write_text(path.read_text() + extra)
    return path


class TestBadNumbersAndPaths:
    """Item 3: numbers near the float limits, a NUL in a path, an over-long path, a directory as
    the log file. Each was an internal error (OverflowError, ValueError, ENAMETOOLONG,
    IsADirectoryError) in some command; each is a configuration error before anything is made."""

    CASES: ClassVar[dict[str, tuple[dict[str, dict[str, Any]], str]]] = {
        "lower near 1e308": ({"privacy": {"lower": 1.7e308}}, "privacy.lower"),
        "upper near -1e308": ({"privacy": {"upper": -1.7e308}}, "privacy.upper"),
        "every_seconds 1e15": ({"schedule": {"every_seconds": 1e15}}, "schedule.every_seconds"),
        "every_seconds 1e308": ({"schedule": {"every_seconds": 1e308}}, "schedule.every_seconds"),
        "max_age_seconds 1e300": ({"aggregator": {"max_age_seconds": 1e300}}, "aggregator.max_age_seconds"),
        "NUL in data_dir": ({"paths": {"data_dir": "data\x00x"}}, "paths.data_dir"),
        "NUL in logging.file": ({"logging": {"file": "log\x00x"}}, "logging.file"),
        "over-long data_dir": ({"paths": {"data_dir": "a" * 5000}}, "paths.data_dir"),
        "over-long log file": ({"logging": {"file": "b" * 300 + "/x.log"}}, "logging.file"),
    }
    COMMANDS = (("config", "check"), ("status",), ("budget", "plan"), ("once",), ("aggregate",))

    @pytest.mark.parametrize("case", sorted(CASES))
    @pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
    def test_each_is_exit_3_naming_the_key(self, tmp_path: Path, case: str, command: tuple[str, ...]) -> None:
        """The issue's internal errors, each through the issue's five commands: exit 3 naming the
        key, and no data directory made."""
        overrides, key = self.CASES[case]
        syftbox = {"syftbox": {"dir": str(tmp_path / "SyftBox"), "email": "me@example.org"}}
        config = write_config(tmp_path, merge(syftbox, overrides))
        result = run_installed("--config", str(config), *command, cwd=tmp_path)
        assert_one_clear_line(result, EXIT_CONFIG, key)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]

    def test_a_directory_as_the_log_file_is_named_before_anything_is_written(self, tmp_path: Path) -> None:
        """``logging.file`` naming a directory: `once` was an internal error (IsADirectoryError)."""
        (tmp_path / "logs").mkdir()
        config = fast_config(tmp_path, f'[logging]\nfile = "{tmp_path / "logs"}"\n')
        for command in (("once",), ("config", "check")):
            result = run_installed("--config", str(config), *command)
            assert_one_clear_line(result, EXIT_CONFIG, "logging.file", "is a directory")
        assert not (tmp_path / "data").exists()

    def test_a_log_file_that_cannot_be_opened_is_exit_3(self, tmp_path: Path) -> None:
        """A log file below a file (ENOTDIR on open): one line naming logging.file, exit 3."""
        (tmp_path / "afile").write_text("")
        config = fast_config(tmp_path, f'[logging]\nfile = "{tmp_path / "afile" / "x.log"}"\n')
        result = run_installed("--config", str(config), "once")
        assert_one_clear_line(result, EXIT_CONFIG, "logging.file")


class TestOddConfigFiles:
    """Item 4: ``--config /dev/zero`` read until the memory limit; a FIFO hung."""

    @pytest.mark.parametrize("command", [("config", "check"), ("status",), ("once",)], ids=" ".join)
    def test_dev_zero_is_refused_in_one_line(self, command: tuple[str, ...]) -> None:
        """A character device is not a config file: exit 3 at once, not a MemoryError."""
        result = run_installed("--config", "/dev/zero", *command)
        assert_one_clear_line(result, EXIT_CONFIG, "/dev/zero", "not a regular file")

    def test_a_fifo_is_refused_without_waiting_for_a_writer(self, tmp_path: Path) -> None:
        """A FIFO no one writes to, named by --config or by $CPU_TRACKER_CONFIG: exit 3, no hang."""
        fifo = tmp_path / "config.toml"
        os.mkfifo(fifo)
        by_option = run_installed("--config", str(fifo), "status", timeout=30)
        assert_one_clear_line(by_option, EXIT_CONFIG, str(fifo), "not a regular file")
        by_env = run_installed("status", env=cli_env(CPU_TRACKER_CONFIG=str(fifo)), timeout=30)
        assert_one_clear_line(by_env, EXIT_CONFIG, "$CPU_TRACKER_CONFIG", "not a regular file")

    def test_config_init_never_waits_on_a_fifo_or_writes_a_device(self, tmp_path: Path) -> None:
        """The fuzz's find: `config init --force` onto a FIFO nobody reads waited forever; onto
        /dev/null it "wrote" the starter there. Both are exit 3 at once, naming the file."""
        fifo = tmp_path / "config.toml"
        os.mkfifo(fifo)
        for target in (str(fifo), "/dev/null"):
            result = run_installed("--config", target, "config", "init", "--force", timeout=30)
            assert_one_clear_line(result, EXIT_CONFIG, target)

    def test_a_config_larger_than_any_real_one_is_refused(self, tmp_path: Path) -> None:
        """A 17 MiB file (a comment): refused by its size, not parsed."""
        path = tmp_path / "c.toml"
        with path.open("wb") as f:
            f.write(b"#" + b"x" * (17 << 20) + b"\n")
        result = run_installed("--config", str(path), "config", "check")
        assert_one_clear_line(result, EXIT_CONFIG, "larger than")

    @pytest.mark.parametrize(
        "text",
        ["[sampling]\nsamples = " + "9" * 5000, "x = " + "[" * 50_000 + "]" * 50_000],
        ids=["5000-digit integer", "50000-deep array"],
    )
    def test_toml_the_parser_cannot_hold_is_not_valid_toml(self, tmp_path: Path, text: str) -> None:
        """An integer past Python's digit limit, arrays nested past the recursion limit: exit 3."""
        path = tmp_path / "c.toml"
        path.write_text(text + "\n")
        result = run_installed("--config", str(path), "config", "check")
        assert_one_clear_line(result, EXIT_CONFIG, "not valid TOML")


def with_readers(tmp_path: Path, count: int) -> str:
    """A [syftbox] table under ``tmp_path`` naming ``count`` readers."""
    readers = ", ".join(f'"r{i}@example.org"' for i in range(count))
    where = tmp_path / "SyftBox"
    return f'[syftbox]\ndir = "{where}"\nemail = "me@example.org"\nreaders = [{readers}]\n'


class TestFullOutputs:
    """The fuzz's find: standard output or the log file on a full disk (``> /dev/full``) was an
    internal error for every command that prints, and a logging traceback for `once`."""

    def run_to_dev_full(self, *args: str, buffered: bool) -> subprocess.CompletedProcess[str]:
        env = cli_env(PYTHONUNBUFFERED="" if buffered else "1")
        with Path("/dev/full").open("w") as full:
            return subprocess.run(
                [str(CPU_TRACKER), *args],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )

    @pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
    @pytest.mark.parametrize(
        "command", [("status",), ("config", "show"), ("budget", "plan", "--json"), ("--help",)], ids=" ".join
    )
    def test_a_command_that_prints_is_exit_8_in_one_line(
        self, tmp_path: Path, command: tuple[str, ...], buffered: bool
    ) -> None:
        """What a command prints cannot be written: exit 8 (an output could not be written)."""
        result = self.run_to_dev_full("--config", str(fast_config(tmp_path)), *command, buffered=buffered)
        assert_one_clear_line(result, EXIT_TEMPORARY, "cannot write to standard output")

    @pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
    def test_once_releases_and_says_once_that_its_log_is_lost(self, tmp_path: Path, buffered: bool) -> None:
        """`once` logging to a full stdout still releases (exit 0) and says so in one line."""
        result = self.run_to_dev_full("--config", str(fast_config(tmp_path)), "once", buffered=buffered)
        assert result.returncode == 0, result.stderr
        lost = "the log on standard output cannot be written (No space left on device); it stops there"
        assert result.stderr.strip().splitlines() == [f"cpu-tracker: {lost}"]
        assert (tmp_path / "data" / "public" / "cpu_tracker.json").exists()

    def test_a_log_file_on_a_full_disk_is_one_line_not_a_traceback(self, tmp_path: Path) -> None:
        """`logging.file = "/dev/full"`: the release happens; one line says the log lines are lost."""
        config = fast_config(tmp_path, '[logging]\nfile = "/dev/full"\n')
        result = run_installed("--config", str(config), "once")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [
            "cpu-tracker: logging.file /dev/full cannot be written (No space left on device); lines are lost"
        ]


class TestGrantBounds:
    """The fuzz's find: `budget grant 1e308`, twice, made the lifetime cap infinite, and every
    JSON view of the budget invalid JSON (``"limit": Infinity``)."""

    def test_a_grant_past_the_most_a_cap_may_be_is_refused_and_nothing_is_granted(
        self, tmp_path: Path
    ) -> None:
        """A grant taking a cap past its configured maximum: exit 2 in one line, the cap as it was."""
        config = str(fast_config(tmp_path))
        for epsilon in ("1e308", "1e9"):
            result = run_installed("--config", config, "budget", "grant", epsilon, "--reason", "x", "--yes")
            assert_one_clear_line(result, EXIT_USAGE, "past the most a cap may be (1,000,000,000)")
        shown = run_installed("--config", config, "budget", "show", "--json")
        assert json.loads(shown.stdout)["budget"]["caps"]["lifetime"]["limit"] == 100


class TestListBounds:
    """Item 7: 400,000 readers took `once` 9.9 s and 868 MiB and wrote a 127 MiB permission file."""

    def test_400000_readers_are_refused_before_anything_is_written(self, tmp_path: Path) -> None:
        """The issue's 400,000 readers: exit 3 naming the key and its bound; no permission file."""
        config = fast_config(tmp_path, with_readers(tmp_path, 400_000))
        for command in (("config", "check"), ("once",)):
            result = run_installed("--config", str(config), *command)
            assert_one_clear_line(result, EXIT_CONFIG, "syftbox.readers", "at most 1,000")
        assert not (tmp_path / "SyftBox").exists()
        assert not (tmp_path / "data").exists()

    def test_one_reader_past_the_bound_is_refused(self, tmp_path: Path) -> None:
        """1,001 readers: one past the documented bound."""
        config = fast_config(tmp_path, with_readers(tmp_path, 1001))
        result = run_installed("--config", str(config), "config", "check")
        assert_one_clear_line(result, EXIT_CONFIG, "syftbox.readers")


# -- item 5: another user's state ------------------------------------------------------------------


def _can_run(user: str, python: str) -> bool:
    probe = ["runuser", "-u", user, "--", python, "-c", "import sqlite3, signal, json"]
    return subprocess.run(probe, capture_output=True, check=False, timeout=60).returncode == 0


def _python_for(user: str) -> tuple[str, dict[str, str]]:
    """An interpreter ``user`` may run, with what it needs to import the installed package.

    This suite's own interpreter where the user may run it; else (a Python built under root's
    home, say) the system's Python of the same version, given the installed package's
    site-packages and the package's source root (what the editable install's .pth adds)."""
    if _can_run(user, sys.executable):
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if python is None or not _can_run(user, python):
        pytest.skip(f"no {version} that {user} may run: this suite's is {sys.executable}")
    source_root = str(Path(cpu_tracker_daemon.__file__).resolve().parent.parent)
    site = [p for p in sys.path if p.endswith("site-packages")]
    given = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []  # as the console script's
    return python, {"PYTHONPATH": os.pathsep.join([*given, source_root, *site])}


@pytest.fixture(scope="module")
def other_user() -> str:
    """A second, unprivileged user (made with useradd when missing); root only."""
    if os.geteuid() != 0:
        pytest.skip("handing a state directory to another user and running as it needs root")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
            check=True,
            capture_output=True,
        )
    return OTHER_USER


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory any user may enter, removed afterwards. Not ``tmp_path``: pytest keeps its base
    directory root's alone and resets its mode whenever any pytest session (another person's, in
    parallel) starts, so the other user could lose its way in mid-test."""
    directory = Path(tempfile.mkdtemp(prefix="cpu-tracker-issue33-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def run_as(user: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The installed command run by ``user``."""
    python, extra = _python_for(user)
    env = cli_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **extra)
    return subprocess.run(
        ["runuser", "-u", user, "--", python, str(CPU_TRACKER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


class TestAnotherUsersState:
    """Item 5: a state directory and ledger owned by another user. `once` and `grant` exit 3;
    `status`, `budget show`, `budget plan`, `ledger verify`, `config check` were internal errors
    (PermissionError) on a private directory, and a readable one's ledger read as corrupt (4)."""

    READERS = (
        ("status",),
        ("budget", "show"),
        ("budget", "plan"),
        ("budget", "requests"),
        ("ledger", "verify"),
        ("config", "check"),
        ("once",),
        ("budget", "grant", "1", "--reason", "more", "--yes"),
    )

    @pytest.mark.parametrize("mode", [0o700, 0o755], ids=["private directory", "readable directory"])
    @pytest.mark.parametrize("owner", ["root", "other"], ids=["root's state", "another user's state"])
    def test_every_command_says_whose_state_it_is(
        self, reachable: Path, other_user: str, owner: str, mode: int
    ) -> None:
        """One user's state (root's, or ct-other's) used by another (ct-other, or nobody): every
        command exits 3 in one line naming the directory, and the ledger is as it was."""
        config = fast_config(reachable)
        config.chmod(0o644)
        made = run_installed("--config", str(config), "once")
        assert made.returncode == 0, made.stderr
        data = reachable / "data"
        runner = other_user
        if owner == "other":
            theirs = pwd.getpwnam(other_user)
            for path in (data, *data.rglob("*")):
                os.chown(path, theirs.pw_uid, theirs.pw_gid)
            runner = "nobody"
        data.chmod(mode)
        ledger = data / "ledger.sqlite3"
        before = ledger.read_bytes()
        home = reachable / "home"
        home.mkdir(mode=0o777)
        for command in self.READERS:
            result = run_as(runner, "--config", str(config), *command, home=home)
            assert_one_clear_line(result, EXIT_CONFIG, str(data))
        assert ledger.read_bytes() == before
        made_by_once = ["cpu-tracker.lock", "ledger.sqlite3", "private", "public"]
        assert sorted(p.name for p in data.iterdir()) == made_by_once

    def test_root_on_another_users_state_writes_as_them_or_says_why_not(
        self, reachable: Path, other_user: str
    ) -> None:
        """The other way round: root's `once`, `grant` and `ledger verify` on ct-other's state
        switch to ct-other. Where ct-other may not read this Python (one built under root's
        home), every import after the switch failed: an internal error. Now it is exit 3 naming
        the directory and what ct-other cannot read; where it may, the command works."""
        config = fast_config(reachable)
        config.chmod(0o644)
        data = reachable / "data"
        data.mkdir(mode=0o700)
        theirs = pwd.getpwnam(other_user)
        os.chown(data, theirs.pw_uid, theirs.pw_gid)
        can = _can_run(other_user, sys.executable)
        for command in (
            ("once",),
            ("budget", "grant", "1", "--reason", "more", "--yes"),
            ("ledger", "verify"),
            ("budget", "requests"),  # it keeps what it listed: root's file there was another crossing
        ):
            result = run_installed("--config", str(config), *command)
            if can:
                assert result.returncode == 0, result.stderr
            else:
                assert_one_clear_line(result, EXIT_CONFIG, str(data), "may not read this Python's files")
        owners = {p.stat().st_uid for p in (data, *data.rglob("*"))}
        assert owners == {theirs.pw_uid}


# -- the fuzz: generated configs and odd command lines ---------------------------------------------


def test_a_seeded_fuzz_finds_no_internal_error_traceback_or_hang(tmp_path: Path) -> None:
    """A small seeded run of benchmarks/fuzz_config.py: its configs, and every one of its odd
    command lines, each through the installed command, end in a documented code, in one line,
    with nothing left half-written, and never hang."""
    fuzz = benchmark("fuzz_config")
    counts = fuzz.run(count=12, seed=33, workdir=tmp_path, jobs=2)
    assert counts["runs"] > 12 * 6  # the first case runs every odd command line
    for failure in fuzz.FAILURES:  # internal, tracebacks, hangs, signals, undocumented, ...
        assert counts[failure] == [], (failure, counts[failure])
    assert EXIT_INTERNAL not in counts["exits"]
