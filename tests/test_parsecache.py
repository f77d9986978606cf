"""The parsed config file kept between commands: used only for the same bytes, only where this
user wrote it, and never able to change what a command reads."""

from __future__ import annotations

import json
import marshal
import os
import signal
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cpu_tracker_daemon import parsecache
from cpu_tracker_daemon.config import cache_file, load_config
from cpu_tracker_daemon.errors import ConfigError
from tests.conftest import cli_env, run_cli, start_cli, wait_for_event, write_config

NOBODY = 65534


class Reader:
    """tomllib, counting how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> dict[str, Any]:
        self.calls += 1
        return tomllib.loads(data.decode())


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "cpu-tracker" / "config.marshal"


class TestHitsAndMisses:
    def test_the_same_bytes_are_read_back_without_parsing(self, cache: Path) -> None:
        reader = Reader()
        data = b'[budget]\nlifetime_epsilon = 7.5\n[paths]\ndata_dir = "/x"\n'
        first = parsecache.parsed(data, cache, reader)
        second = parsecache.parsed(data, cache, reader)
        assert first == second == tomllib.loads(data.decode())
        assert list(second) == ["budget", "paths"]  # the order too
        assert reader.calls == 1
        assert cache.stat().st_mode & 0o777 == 0o600
        assert cache.parent.stat().st_mode & 0o777 == 0o700

    def test_an_edit_of_the_same_size_and_time_is_read_afresh(self, tmp_path: Path, cache: Path) -> None:
        """The key is the bytes, not the file's size or time: an edit within one mtime tick
        (restored here on purpose) is still seen."""
        config = write_config(tmp_path, {"budget": {"lifetime_epsilon": 11}})
        first = load_config(config, {"HOME": str(tmp_path)}, cache=cache)
        times = config.stat()
        config.write_text(config.read_text().replace("lifetime_epsilon = 11", "lifetime_epsilon = 12"))
        os.utime(config, ns=(times.st_atime_ns, times.st_mtime_ns))
        assert config.stat().st_size == times.st_size
        second = load_config(config, {"HOME": str(tmp_path)}, cache=cache)
        assert (first.budget.lifetime_epsilon, second.budget.lifetime_epsilon) == (11, 12)

    def test_a_config_read_through_the_cache_equals_one_read_without(
        self, tmp_path: Path, cache: Path
    ) -> None:
        config = write_config(
            tmp_path, {"syftbox": {"readers": ["a@b.org"]}, "privacy": {"mechanism": "gaussian"}}
        )
        plain = load_config(config, {"HOME": str(tmp_path)})
        assert load_config(config, {"HOME": str(tmp_path)}, cache=cache) == plain  # a miss
        assert load_config(config, {"HOME": str(tmp_path)}, cache=cache) == plain  # a hit

    def test_the_most_recent_files_are_kept(self, cache: Path) -> None:
        reader = Reader()
        files = [f"[budget]\nlifetime_epsilon = {n}\n".encode() for n in range(1, parsecache.KEEP + 2)]
        for data in files:
            parsecache.parsed(data, cache, reader)
        assert reader.calls == len(files)
        for data in reversed(files[1:]):  # the last KEEP, most recent first
            assert parsecache.parsed(data, cache, reader)["budget"]["lifetime_epsilon"] == data[-2] - 48
        assert reader.calls == len(files)
        parsecache.parsed(files[0], cache, reader)  # the oldest fell out
        assert reader.calls == len(files) + 1

    def test_a_file_that_does_not_parse_is_never_kept(self, tmp_path: Path, cache: Path) -> None:
        config = tmp_path / "bad.toml"
        config.write_text("[budget\n")
        for _ in range(2):
            with pytest.raises(ConfigError, match="is not valid TOML"):
                load_config(config, {}, cache=cache)
        assert not cache.exists()

    def test_a_value_marshal_cannot_keep_is_parsed_every_time(self, cache: Path) -> None:
        reader = Reader()
        data = b"[paths]\nwhen = 2026-12-06\n"
        assert parsecache.parsed(data, cache, reader) == {"paths": {"when": date(2026, 12, 6)}}
        assert parsecache.parsed(data, cache, reader)["paths"]["when"] == date(2026, 12, 6)
        assert reader.calls == 2
        assert not cache.exists()

    def test_no_cache_path_keeps_nothing(self, tmp_path: Path) -> None:
        reader = Reader()
        for _ in range(2):
            parsecache.parsed(b"[a]\n", None, reader)
        assert reader.calls == 2
        assert list(tmp_path.iterdir()) == []


class TestTrust:
    """A cache this user did not write, or others could have, is a miss, and is replaced."""

    def kept(self, cache: Path, data: bytes, tables: dict[str, Any]) -> None:
        cache.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        cache.write_bytes(marshal.dumps((parsecache.FORMAT, sys.hexversion, [(data, tables)])))
        cache.chmod(0o600)

    DATA = b"[budget]\nlifetime_epsilon = 5.0\n"
    FORGED: ClassVar[dict[str, Any]] = {"budget": {"lifetime_epsilon": 1e9}}

    def test_a_planted_entry_is_read_when_it_is_ours(self, cache: Path) -> None:
        """The control for the refusals below: the same planted file, trusted, is a hit."""
        self.kept(cache, self.DATA, self.FORGED)
        assert parsecache.parsed(self.DATA, cache, Reader()) == self.FORGED

    @pytest.mark.parametrize("mode", [0o620, 0o602], ids=["group-writable", "world-writable"])
    def test_a_file_others_may_write_is_refused(self, cache: Path, mode: int) -> None:
        self.kept(cache, self.DATA, self.FORGED)
        cache.chmod(mode)
        assert parsecache.parsed(self.DATA, cache, Reader()) == {"budget": {"lifetime_epsilon": 5.0}}
        assert cache.stat().st_mode & 0o777 == 0o600  # replaced by a sound one
        assert parsecache.parsed(self.DATA, cache, Reader()) == {"budget": {"lifetime_epsilon": 5.0}}

    def test_a_directory_others_may_write_is_refused_and_not_written(self, cache: Path) -> None:
        self.kept(cache, self.DATA, self.FORGED)
        cache.parent.chmod(0o777)
        reader = Reader()
        assert parsecache.parsed(self.DATA, cache, reader) == {"budget": {"lifetime_epsilon": 5.0}}
        assert parsecache.parsed(b"[other]\n", cache, reader) == {"other": {}}
        assert reader.calls == 2
        assert marshal.loads(cache.read_bytes())[2] == [(self.DATA, self.FORGED)]  # untouched

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
    @pytest.mark.parametrize("owned", ["file", "directory"])
    def test_another_users_cache_is_refused(self, cache: Path, owned: str) -> None:
        self.kept(cache, self.DATA, self.FORGED)
        os.chown(cache if owned == "file" else cache.parent, NOBODY, NOBODY)
        assert parsecache.parsed(self.DATA, cache, Reader()) == {"budget": {"lifetime_epsilon": 5.0}}

    def test_a_symlink_is_not_followed(self, tmp_path: Path, cache: Path) -> None:
        elsewhere = tmp_path / "elsewhere.marshal"
        self.kept(elsewhere, self.DATA, self.FORGED)
        cache.parent.mkdir(parents=True, mode=0o700)
        cache.symlink_to(elsewhere)
        assert parsecache.parsed(self.DATA, cache, Reader()) == {"budget": {"lifetime_epsilon": 5.0}}
        assert not cache.is_symlink()  # replaced by a file of its own; the target untouched
        assert marshal.loads(elsewhere.read_bytes())[2] == [(self.DATA, self.FORGED)]

    def test_a_symlinked_directory_is_not_trusted(self, tmp_path: Path, cache: Path) -> None:
        real = tmp_path / "real"
        self.kept(real / cache.name, self.DATA, self.FORGED)
        real.chmod(0o700)
        cache.parent.parent.mkdir(parents=True)
        cache.parent.symlink_to(real)
        assert parsecache.parsed(self.DATA, cache, Reader()) == {"budget": {"lifetime_epsilon": 5.0}}

    @pytest.mark.parametrize(
        "blob",
        [
            b"",
            b"\x00" * 64,  # a file torn by a crash
            marshal.dumps((parsecache.FORMAT, sys.hexversion, [(DATA, FORGED)]))[:-3],
            marshal.dumps(("another format", sys.hexversion, [(DATA, FORGED)])),
            marshal.dumps((parsecache.FORMAT, sys.hexversion - 1, [(DATA, FORGED)])),  # another Python
            marshal.dumps((parsecache.FORMAT, sys.hexversion, [(DATA, "not tables")])),
            marshal.dumps([1, 2, 3]),
        ],
    )
    def test_a_torn_or_foreign_file_is_a_miss(self, cache: Path, blob: bytes) -> None:
        self.kept(cache, b"", {})
        cache.write_bytes(blob)
        reader = Reader()
        assert parsecache.parsed(self.DATA, cache, reader) == {"budget": {"lifetime_epsilon": 5.0}}
        assert reader.calls == 1
        assert parsecache.parsed(self.DATA, cache, reader) == {"budget": {"lifetime_epsilon": 5.0}}
        assert reader.calls == 1  # rewritten, then a hit

    def test_a_cache_that_cannot_be_written_is_no_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        reader = Reader()
        for _ in range(2):
            assert parsecache.parsed(self.DATA, blocker / "cpu-tracker" / "c", reader) == {
                "budget": {"lifetime_epsilon": 5.0}
            }
        assert reader.calls == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


class TestWhere:
    def test_the_xdg_cache_directory_first(self) -> None:
        env = {"XDG_CACHE_HOME": "/c", "HOME": "/h"}
        assert cache_file(env, "linux") == Path("/c/cpu-tracker/config.marshal")

    def test_else_the_home_directory(self) -> None:
        assert cache_file({"HOME": "/h", "XDG_CACHE_HOME": "relative"}, "linux") == Path(
            "/h/.cache/cpu-tracker/config.marshal"
        )
        assert cache_file({"HOME": "/h", "XDG_CACHE_HOME": "/c"}, "darwin") == Path(
            "/h/Library/Caches/cpu-tracker/config.marshal"
        )

    def test_no_home_keeps_nothing(self) -> None:
        assert cache_file({}, "linux") is None
        assert cache_file({"HOME": "relative"}, "linux") is None


class TestCommands:
    def run(self, config: Path, cache_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        code = (
            "import sys\n"
            "from cpu_tracker_daemon.cli.main import main\n"
            f"rc = main(['--config', {str(config)!r}, *{list(args)!r}])\n"
            "print('TOMLLIB', 'tomllib' in sys.modules, 'typing' in sys.modules, rc, file=sys.stderr)\n"
        )
        env = cli_env(XDG_CACHE_HOME=str(cache_home))
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
        )

    def test_a_command_after_the_first_imports_no_toml_reader(self, tmp_path: Path) -> None:
        """The first ``status`` parses the file; the next, with the file unchanged, imports
        neither tomllib nor typing; after an edit it parses again and shows the edit."""
        config = write_config(tmp_path, {"budget": {"lifetime_epsilon": 40}})
        runs = [self.run(config, tmp_path / "home-cache", "status", "--json") for _ in range(2)]
        config.write_text(config.read_text().replace("lifetime_epsilon = 40", "lifetime_epsilon = 41"))
        runs.append(self.run(config, tmp_path / "home-cache", "status", "--json"))
        seen = [(run.stderr.split("TOMLLIB ")[-1].split(), run) for run in runs]
        assert [flags for flags, _ in seen] == [
            ["True", "True", "0"],
            ["False", "False", "0"],
            ["True", "True", "0"],
        ], [run.stderr for run in runs]
        remaining = [json.loads(run.stdout)["budget"]["remaining_epsilon"] for run in runs]
        assert remaining == [40, 40, 41]

    @pytest.mark.slow
    def test_the_daemon_keeps_nothing(self, tmp_path: Path) -> None:
        """``run`` reads its file once (and on SIGHUP), with its home hidden under a service
        manager: it never writes the cache, where ``once`` does."""
        config = write_config(tmp_path)
        daemon_cache, once_cache = tmp_path / "daemon-cache", tmp_path / "once-cache"
        proc = start_cli("--config", str(config), "run", env=cli_env(XDG_CACHE_HOME=str(daemon_cache)))
        try:
            finished = wait_for_event(proc, "cycle.finished")[-1]
            assert finished["outcome"] == "released", finished
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert not daemon_cache.exists()
        done = run_cli(
            "--config", str(config), "once", "--force", env=cli_env(XDG_CACHE_HOME=str(once_cache))
        )
        assert done.returncode == 0, done.stderr
        assert (once_cache / "cpu-tracker" / "config.marshal").is_file()
