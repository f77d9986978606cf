"""The command line: exit codes, one-line errors, fast paths, status and budget output."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon.budget import requests as budget_requests
from cpu_tracker_daemon.cli.main import main
from cpu_tracker_daemon.errors import EXIT_CODES, EXIT_INTERRUPTED
from cpu_tracker_daemon.privacy import discrete
from cpu_tracker_daemon.privacy.accounting import gaussian_epsilon
from tests.conftest import (
    RunningDaemon,
    cli_env,
    daemon_events,
    log_events,
    read_rest,
    run_cli,
    start_cli,
    tz_at_local_hour,
    write_config,
)

BAD_CONFIGS = {
    "unknown key": "[sampling]\nsampels = 5\n",
    "wrong type": '[sampling]\nsamples = "many"\n',
    "epsilon zero": "[privacy]\nepsilon = 0\n",
    "epsilon negative": "[privacy]\nepsilon = -0.5\n",
    "upper below lower": "[privacy]\nlower = 60\nupper = 40\n",
    "samples zero": "[sampling]\nsamples = 0\n",
    "not toml": "this is = = not toml\n[[[\n",
    "epsilon and sigma": "[privacy]\nepsilon = 1\nsigma = 5\n",
    "gaussian without delta": '[privacy]\nmechanism = "gaussian"\ndelta = 0\n',
    "home of an unknown user": '[syftbox]\ndir = "~no-such-user-here/SyftBox"\n',
    "control characters in names": '[sampling]\n"a\\nb\\u0007" = 1\n["x\\ty"]\n',
}


class TestBadConfigProcess:
    @pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
    def test_bad_config_is_one_line_exit_3_nothing_written(self, tmp_path: Path, case: str) -> None:
        """Each bad config: exit 3, one stderr line naming the key (or a header line and one line
        per problem), no traceback, no data dir."""
        path = tmp_path / "c.toml"
        path.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n' + BAD_CONFIGS[case])
        result = run_cli("--config", str(path), "once")
        assert result.returncode == 3
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("cpu-tracker: invalid configuration")
        if len(lines) > 1:
            assert lines[0] == f"cpu-tracker: invalid configuration ({len(lines) - 1} problems):", lines
        assert all(line.isprintable() for line in lines)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "data").exists()

    def test_unwritable_directory_is_exit_3(self, tmp_path: Path) -> None:
        """A data_dir that cannot be created: exit 3 with the key named, no output written."""
        (tmp_path / "file").write_text("")
        path = tmp_path / "c.toml"
        path.write_text(f'[paths]\ndata_dir = "{tmp_path / "file" / "data"}"\n')
        result = run_cli("--config", str(path), "once")
        assert result.returncode == 3
        assert "paths.data_dir" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        check = run_cli("--config", str(path), "config", "check")
        assert check.returncode == 3
        assert "paths.data_dir" in check.stderr

    def test_config_from_environment(self, tmp_path: Path) -> None:
        """$CPU_TRACKER_CONFIG names the config file when --config is absent."""
        path = tmp_path / "c.toml"
        path.write_text("[privacy]\nepsilon = -1\n")
        result = run_cli("config", "check", env=cli_env(CPU_TRACKER_CONFIG=str(path)))
        assert result.returncode == 3
        assert "privacy.epsilon" in result.stderr


class TestArguments:
    def test_bad_arguments_exit_2_in_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown subcommand is exit 2 with one line pointing at --help."""
        assert main(["frobnicate"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "--help" in err[0]

    def test_grant_needs_a_positive_epsilon(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """budget grant refuses zero, negative and non-numbers as argument errors."""
        config = write_config(tmp_path)
        for bad in ("0", "-1", "lots", "inf"):
            assert main(["--config", str(config), "budget", "grant", bad, "--reason", "x"]) == 2
        assert main(["--config", str(config), "budget", "grant", "1", "--reason", "  "]) == 2
        assert not (tmp_path / "data" / "ledger.sqlite3").exists()

    def test_delta_grants_stop_at_the_defended_total(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The audit granted delta 0.9 twice, and later commands died with an internal error. A
        grant that takes a cap's delta past 1e-4 is refused in one line (exit 2), nothing recorded,
        and status still works; a grant within it is kept."""
        config = str(write_config(tmp_path))
        grant = ["--config", config, "budget", "grant", "1", "--reason", "audit", "--delta"]
        assert main([*grant, "0.9"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "above the most this daemon allows (0.0001)" in err[0]
        assert main([*grant, "5e-5"]) == 0
        assert main([*grant, "5e-5"]) == 2  # 1e-6 + 5e-5 + 5e-5 > 1e-4
        capsys.readouterr()
        assert main(["--config", config, "status", "--json"]) == 0
        with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as conn:
            assert conn.execute("SELECT delta FROM grants").fetchall() == [(5e-5,)]

    def test_grant_into_a_directory_that_cannot_be_made_is_a_config_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """budget grant exited 8 ("temporary") where every other command says 3 for a state
        directory that cannot be written (here: its parent is a regular file)."""
        (tmp_path / "file").write_text("")
        config = str(write_config(tmp_path, {"paths": {"data_dir": str(tmp_path / "file" / "data")}}))
        assert main(["--config", config, "budget", "grant", "1", "--reason", "x"]) == 3
        assert main(["--config", config, "once"]) == 3
        assert "is a file, not a directory" in capsys.readouterr().err

    def test_help_lists_every_exit_code(self) -> None:
        """--help documents each exit code with its meaning."""
        result = run_cli("--help")
        assert result.returncode == 0
        for code, meaning in EXIT_CODES.items():
            assert f"  {code}  {meaning}" in result.stdout


class TestFastPaths:
    @pytest.mark.parametrize(
        "args", [["status", "--json"], ["budget", "show"], ["budget", "plan", "--json"], ["--help"]]
    )
    def test_no_heavy_imports(self, tmp_path: Path, args: list[str]) -> None:
        """status, budget show and --help never import diffprivlib, numpy, apscheduler or psutil."""
        config = write_config(tmp_path)
        code = (
            "import sys\n"
            "from cpu_tracker_daemon.cli.main import main\n"
            f"try:\n    rc = main(['--config', {str(config)!r}, *{args!r}])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "names = ('diffprivlib', 'numpy', 'apscheduler', 'psutil', 'sklearn')\n"
            "heavy = sorted(m for m in names if m in sys.modules)\n"
            "print('HEAVY', heavy, rc, file=sys.stderr)\n"
        )
        import subprocess
        import sys

        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert "HEAVY [] 0" in result.stderr, result.stderr


class TestStatusAndBudget:
    def test_status_json_before_any_release(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Before the first release status works, creates nothing, and shows the full budget."""
        config = write_config(tmp_path, {"budget": {"window_epsilon": 12, "lifetime_epsilon": 100}})
        assert main(["--config", str(config), "status", "--json"]) == 0
        view = json.loads(capsys.readouterr().out)
        assert view["last_release_at"] is None
        assert view["budget"]["spent_epsilon"] == 0.0
        assert view["budget"]["remaining_epsilon"] == 12
        assert view["paths"]["ledger"] == str(tmp_path / "data" / "ledger.sqlite3")
        assert not (tmp_path / "data").exists()

    @pytest.mark.slow
    def test_once_then_status_then_grant(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """After releases up to the cap, once exits 7; a grant with a reason lets the next one through."""
        config = str(
            write_config(
                tmp_path,
                {"schedule": {"every_seconds": 60}, "budget": {"lifetime_epsilon": 1, "window_epsilon": 1}},
            )
        )
        assert main(["--config", config, "once"]) == 0
        assert main(["--config", config, "once"]) == 6  # cooldown (at 1 s, a late start could miss it)
        assert main(["--config", config, "once", "--force"]) == 0
        assert main(["--config", config, "once", "--force"]) == 7
        err = capsys.readouterr().err
        assert "budget grant" in err
        assert main(["--config", config, "status", "--json"]) == 0
        view = json.loads(capsys.readouterr().out)
        assert view["budget"]["spent_epsilon"] == 1.0
        assert view["budget"]["remaining_epsilon"] == 0.0
        assert view["paths"]["public"].endswith("public/cpu_tracker.json")
        assert view["last_release_at"] is not None
        assert main(["--config", config, "budget", "grant", "1", "--reason", "audit", "--cap", "window"]) == 0
        assert main(["--config", config, "budget", "grant", "1", "--reason", "audit"]) == 0
        assert main(["--config", config, "once", "--force"]) == 0
        capsys.readouterr()
        assert main(["--config", config, "budget", "show"]) == 0
        out = capsys.readouterr().out
        assert "+epsilon 1 to window" in out
        assert "audit" in out

    def test_corrupt_ledger_exit_4_and_untouched(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A corrupt ledger stops once and status with exit 4 and is left exactly as found."""
        config = str(write_config(tmp_path))
        ledger = tmp_path / "data" / "ledger.sqlite3"
        ledger.parent.mkdir(parents=True)
        ledger.write_bytes(b"garbage" * 1000)
        assert main(["--config", config, "once"]) == 4
        assert main(["--config", config, "status"]) == 4
        assert ledger.read_bytes() == b"garbage" * 1000
        assert "never reset" in capsys.readouterr().err
        assert not (tmp_path / "data" / "public" / "cpu_tracker.json").exists()

    def test_config_show_prints_effective_toml(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """config show fills in defaults the file did not set."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "config", "show"]) == 0
        out = capsys.readouterr().out
        assert 'unit = "window"' in out
        assert 'readers = ["aggregator@openmined.org"]' in out
        assert main(["--config", config, "config", "show", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["sampling"]["samples"] == 5

    def test_grant_is_in_the_ledger_with_who_and_why(self, tmp_path: Path) -> None:
        """A grant is recorded with its reason and the user who made it."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "budget", "grant", "2.5", "--reason", "approved by DPO"]) == 0
        with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as conn:
            rows = conn.execute("SELECT cap, epsilon, reason, granted_by FROM grants").fetchall()
        assert rows[0][:3] == ("lifetime", 2.5, "approved by DPO")
        assert rows[0][3]


def hourly(tmp_path: Path, lifetime: float, window: float) -> str:
    """A config releasing hourly under pure-epsilon caps of ``lifetime`` and ``window``."""
    budget = {"lifetime_epsilon": lifetime, "window_epsilon": window, "lifetime_delta": 0}
    return str(write_config(tmp_path, {"schedule": {"every_seconds": 3600}, "budget": budget}))


class TestPlanAndReport:
    def test_plan_json_has_the_promised_keys_and_adds_up(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """budget plan --json: per-release cost, releases left, and the date the budget runs out."""
        config = hourly(tmp_path, lifetime=10, window=12)
        assert main(["--config", config, "budget", "plan", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert (plan["per_release"]["epsilon"], plan["per_release"]["delta"]) == (0.5, 0.0)
        assert plan["caps"]["lifetime"]["releases_remaining"] == 20  # pure summation: 10 / 0.5
        assert plan["releases_remaining"] == 20
        due = datetime.fromisoformat(plan["next_due_at"])
        assert datetime.fromisoformat(plan["exhausted_at"]) == due + timedelta(hours=20)
        assert plan["caps"]["window"]["releases_remaining"] is None  # 24 a day at 0.5 fit under 12

    def test_a_cap_beyond_the_plans_horizon_is_not_given_an_end(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A lifetime cap of 1e9 holds two billion releases: the plan counts no further than its
        horizon, and says so, instead of naming a day the releases would pause."""
        config = hourly(tmp_path, lifetime=1e9, window=1e9)
        assert main(["--config", config, "budget", "plan", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        lifetime = plan["caps"]["lifetime"]
        assert (lifetime["releases_remaining"], lifetime["at_least"], lifetime["exhausted_at"]) == (
            100_000,
            True,
            None,
        )
        assert (plan["at_least"], plan["exhausted_at"]) == (True, None)
        assert main(["--config", config, "budget", "plan"]) == 0
        text = capsys.readouterr().out
        assert "at least 100000 more" in text
        assert "paused from" not in text
        assert main(["--config", config, "budget", "show"]) == 0
        assert "at least 100000 more fit" in capsys.readouterr().out

    def test_sigma_shows_its_epsilon_before_the_first_release(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With privacy.sigma, budget plan shows the epsilon each release will cost."""
        config = str(
            write_config(tmp_path, {"privacy": {"mechanism": "gaussian", "sigma": 400.0, "delta": 1e-6}})
        )
        assert main(["--config", config, "budget", "plan", "--json"]) == 0
        per = json.loads(capsys.readouterr().out)["per_release"]
        assert per["noise_stddev"] == 400.0
        assert per["epsilon"] == pytest.approx(discrete.gaussian_epsilon(10_000, 40_000.0, 1e-6), rel=1e-9)
        assert per["epsilon"] >= gaussian_epsilon(100.0 / 400.0, 1e-6)  # never below the continuous cost

    def test_budget_show_explains_in_words(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """budget show says what one value hides, what was spent, when it pauses and how to resume."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "once"]) == 0
        capsys.readouterr()
        assert main(["--config", config, "budget", "show"]) == 0
        out = capsys.readouterr().out
        for heading in ("What one published value hides", "What the releases add up to",
                        "When releases pause", "How to resume"):  # fmt: skip
            assert heading in out
        assert "all history: 1 release, epsilon 0.5" in out
        assert "budget grant EPSILON" in out


class TestOneLedgerOneOutput:
    """A budget escaped by replacing the ledger under existing outputs is refused (exit 4)."""

    def test_deleted_ledger_beside_outputs_stops_releases_until_a_deliberate_reset(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A deleted ledger started a fresh budget beside the old outputs. Now the next release
        is refused in one line naming the fix; 'ledger reset' starts over and leaves a trace."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "once"]) == 0
        ledger = tmp_path / "data" / "ledger.sqlite3"
        ledger.unlink()
        capsys.readouterr()
        assert main(["--config", config, "once", "--force"]) == 4
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "is not in this ledger" in err[0]
        assert "cpu-tracker ledger reset" in err[0]
        assert main(["--config", config, "ledger", "reset", "--reason", "lost the disk", "--yes"]) == 0
        trace = [
            json.loads(line) for line in (tmp_path / "data" / "ledger-resets.jsonl").read_text().splitlines()
        ]
        assert [(t["reason"], t["retired"], len(t["acknowledged"])) for t in trace] == [
            ("lost the disk", None, 1)
        ]
        assert main(["--config", config, "once", "--force"]) == 0

    def test_ledger_restored_from_an_older_copy_is_refused(self, tmp_path: Path) -> None:
        """A backup restore (or VM snapshot revert) lost the latest spends: the public release is
        unknown to it, so releases stop. A reset keeps the restored file, renamed."""
        config = str(write_config(tmp_path))
        ledger = tmp_path / "data" / "ledger.sqlite3"
        assert main(["--config", config, "once"]) == 0
        backup = ledger.read_bytes()
        assert main(["--config", config, "once", "--force"]) == 0
        ledger.write_bytes(backup)
        assert main(["--config", config, "once", "--force"]) == 4
        assert main(["--config", config, "ledger", "reset", "--reason", "restored", "--yes"]) == 0
        assert [
            p.name.startswith("ledger.retired-") for p in (tmp_path / "data").glob("ledger.retired-*")
        ] == [True]

    def test_second_state_directory_publishing_to_the_same_datasite_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two state directories on one SyftBox datasite each had a budget; the second is refused."""
        syftbox = {"syftbox": {"dir": str(tmp_path / "SyftBox"), "email": "a@example.org"}}
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        first = str(write_config(tmp_path / "one", syftbox))
        second = str(write_config(tmp_path / "two", syftbox))
        assert main(["--config", first, "once"]) == 0
        capsys.readouterr()
        assert main(["--config", second, "once"]) == 4
        assert "another cpu-tracker publishes there" in capsys.readouterr().err

    def test_changing_the_privacy_unit_under_a_ledger_is_a_config_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Switching window to sample on an existing ledger is refused (exit 3) before any noise."""
        assert main(["--config", str(write_config(tmp_path)), "once"]) == 0
        capsys.readouterr()
        config = str(write_config(tmp_path, {"privacy": {"unit": "sample"}}, name="sample.toml"))
        assert main(["--config", config, "once", "--force"]) == 3
        err = capsys.readouterr().err
        assert "accounts releases under unit window" in err
        assert "unit sample" in err


class TestCrashedCommit:
    def test_read_only_commands_work_on_a_ledger_with_a_hot_journal(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """kill -9 in the middle of a commit left a hot journal, and status, budget show, plan and
        requests exited 8 ("attempt to write a readonly database") until a writer came. They roll
        the interrupted transaction back now, and what was committed before stands."""
        import subprocess
        import sys

        config = str(write_config(tmp_path))
        assert main(["--config", config, "once"]) == 0
        ledger = tmp_path / "data" / "ledger.sqlite3"
        crash = (
            "import os, sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA cache_size = 1'); c.execute('BEGIN IMMEDIATE')\n"
            "for n in range(400): c.execute('INSERT INTO meta VALUES (?, ?)', (f'junk{n}', 'x' * 4000))\n"
            "os._exit(9)\n"
        )
        subprocess.run([sys.executable, "-c", crash, str(ledger)], check=False, timeout=60)
        assert (tmp_path / "data" / "ledger.sqlite3-journal").stat().st_size > 0  # the crash is real
        capsys.readouterr()
        for command in (["status"], ["budget", "show"], ["budget", "plan"], ["budget", "requests"]):
            assert main(["--config", config, *command]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert main(["--config", config, "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["releases"] == 1
        with closing(sqlite3.connect(ledger)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'junk%'").fetchone() == (0,)


class TestSymlinks:
    """Links planted in the output tree are refused, never written, chmod-ed or deleted through."""

    def syftbox(self, tmp_path: Path) -> tuple[str, Path]:
        sb = tmp_path / "SyftBox"
        config = str(write_config(tmp_path, {"syftbox": {"dir": str(sb), "email": "me@example.org"}}))
        return config, sb

    def test_private_folder_linked_into_the_public_tree_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The security test put cpu_raw_mean into the public tree through a symlinked private
        folder, and chmod-ed its target 0700. Now: exit 3, nothing raw written, the mode kept."""
        config, sb = self.syftbox(tmp_path)
        public = sb / "datasites" / "me@example.org" / "app_data" / "cpu_tracker"
        (public / "leak").mkdir(parents=True, mode=0o755)
        (sb / "private").mkdir()
        (sb / "private" / "cpu_tracker").symlink_to(public / "leak")
        assert main(["--config", config, "once"]) == 3
        err = capsys.readouterr().err
        assert "symlink" in err
        assert "inside the synced datasites/" in err
        assert list((public / "leak").iterdir()) == []
        assert (public / "leak").stat().st_mode & 0o777 == 0o755
        assert not any("cpu_raw_mean" in p.read_text() for p in sb.rglob("*.json") if p.is_file())

    def test_public_folder_linked_out_of_the_tree_is_not_written_through(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """app_data/cpu_tracker linked to a folder elsewhere was written through, and a temp file
        there deleted. Now it is refused and the folder outside is untouched."""
        config, sb = self.syftbox(tmp_path)
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / ".keep.me.tmp").write_text("someone else's")
        (sb / "datasites" / "me@example.org" / "app_data").mkdir(parents=True)
        (sb / "datasites" / "me@example.org" / "app_data" / "cpu_tracker").symlink_to(outside)
        assert main(["--config", config, "once"]) == 3
        assert "symlink" in capsys.readouterr().err
        assert [p.name for p in outside.iterdir()] == [".keep.me.tmp"]

    def test_requests_folder_linked_elsewhere_gets_no_answer_written_through_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """rpc/budget/ linked out of the tree: the owner's answer is refused (exit 8), not written there."""
        config, sb = self.syftbox(tmp_path)
        assert main(["--config", config, "once"]) == 0
        box = sb / "datasites" / "me@example.org" / "app_data" / "cpu_tracker" / "rpc" / "budget"
        outside = tmp_path / "outside"
        (outside / "aggregator@openmined.org").mkdir(parents=True)
        now = datetime.now(UTC)
        request = budget_requests.request_message(
            "req-0001-abc", "aggregator@openmined.org", "syft://me@example.org/app_data/cpu_tracker/rpc/budget",
            "lifetime", 1.0, "r", now, now + timedelta(days=1),
        )  # fmt: skip
        (outside / "aggregator@openmined.org" / "req-0001-abc.request").write_text(json.dumps(request))
        for child in box.iterdir():
            if child.is_dir():
                child.rmdir()
            else:
                child.unlink()
        box.rmdir()
        box.symlink_to(outside)
        capsys.readouterr()
        assert main(["--config", config, "budget", "deny", "req-0001-abc", "--reason", "no"]) != 0
        assert not (outside / "aggregator@openmined.org" / "req-0001-abc.response").exists()

    def test_a_symlinked_lock_file_truncates_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A symlinked cpu-tracker.lock truncated its target; now it is refused (exit 3)."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "once"]) == 0
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        lock = tmp_path / "data" / "cpu-tracker.lock"
        lock.unlink()
        lock.symlink_to(victim)
        capsys.readouterr()
        assert main(["--config", config, "once", "--force"]) == 3
        assert "is a symlink" in capsys.readouterr().err
        assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="crossing a privilege line needs root")
def test_root_does_not_write_into_a_tree_another_user_owns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """root's `once` on a user-owned SyftBox tree chmod-ed and wrote into it. As root, with the
    tree owned by nobody, it is refused (exit 3) and the tree is left as it was."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    sb = tmp_path / "SyftBox"
    sb.mkdir()
    os.chown(sb, nobody.pw_uid, nobody.pw_gid)
    config = str(write_config(tmp_path, {"syftbox": {"dir": str(sb), "email": "me@example.org"}}))
    assert main(["--config", config, "once"]) == 3
    assert "refusing to write as root into" in capsys.readouterr().err
    assert list(sb.iterdir()) == []


class TestLedgerVerify:
    def forge(self, data: Path) -> None:
        """Append a spend with running counts of the right total and the wrong kind."""
        with closing(sqlite3.connect(data / "ledger.sqlite3", isolation_level=None)) as conn:
            columns = "release_id, reserved_ts, reserved_at, window_start, window_end, epsilon, delta"
            conn.execute(
                f"INSERT INTO spends ({columns}, mechanism, unit, sensitivity) "
                "VALUES ('forged', 0, '', '', '', 1.0, 0.0, 'discrete_laplace', 'window', 100.0)"
            )
            (mechanism, epsilon) = conn.execute("SELECT mechanism, epsilon FROM spends LIMIT 1").fetchone()
            forged = json.dumps([[mechanism, epsilon / 10, 0.0, 2]])
            conn.execute("INSERT INTO guarantees VALUES ('forged', 0.1, 0.0, 'sum', ?, NULL)", (forged,))

    def test_verify_says_sound_and_refuses_forged_counts(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``ledger verify`` runs the full check: a sound ledger is exit 0 with its size; running
        counts forged to make releases look cheaper are exit 4 with one line."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "ledger", "verify"]) == 0
        assert "no ledger" in capsys.readouterr().out
        assert main(["--config", config, "once"]) == 0
        capsys.readouterr()
        assert main(["--config", config, "ledger", "verify"]) == 0
        assert "is sound: schema 6, 1 release\n" in capsys.readouterr().out
        self.forge(tmp_path / "data")
        assert main(["--config", config, "status"]) == 0  # a read takes the cheap checks only
        capsys.readouterr()
        assert main(["--config", config, "ledger", "verify"]) == 4
        err = capsys.readouterr().err
        assert "running release counts disagree" in err
        assert err.count("\n") == 1

    @pytest.mark.slow
    def test_the_daemon_verifies_everything_when_it_starts(self, tmp_path: Path) -> None:
        """The cycles open the ledger cheaply; the daemon's start is where the full check runs,
        so a forged ledger stops it there with exit 4."""
        config = str(write_config(tmp_path))
        assert run_cli("--config", config, "once").returncode == 0
        self.forge(tmp_path / "data")
        done = run_cli("--config", config, "run", timeout=60)
        assert done.returncode == 4
        assert "running release counts disagree" in done.stderr


def grant_on_a_terminal(config: str, answer: str, *extra: str) -> tuple[int, str]:
    """`budget grant` with a pseudo-terminal as stdin and stderr, answering ``answer``."""
    import pty
    import select

    main_fd, term = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpu_tracker_daemon", "--config", config, "budget", "grant", *extra],
        stdin=term, stdout=subprocess.PIPE, stderr=term, env=cli_env(), text=True,
    )  # fmt: skip
    os.close(term)
    seen = b""
    try:
        while b"Type yes" not in seen and select.select([main_fd], [], [], 20)[0]:
            seen += os.read(main_fd, 4096)
        os.write(main_fd, answer.encode() + b"\n")
        proc.communicate(timeout=30)  # waits, and closes its stdout pipe
        seen += read_rest(main_fd, 0.5)
    finally:
        os.close(main_fd)
    return proc.returncode, seen.decode(errors="replace")


class TestGrantConfirmation:
    def test_a_grant_that_more_than_doubles_a_cap_asks_first(self, tmp_path: Path) -> None:
        """`budget grant 500` on a cap of 100 went through at once: a typo of a few digits could
        give away the budget. On a terminal it asks; "no" changes nothing; "yes" grants."""
        config = str(write_config(tmp_path))
        code, seen = grant_on_a_terminal(config, "no", "500", "--reason", "typo?")
        assert code == 2, seen
        assert "more than doubles the lifetime cap (epsilon 100 now, 600 after)" in seen
        assert "not granted" in seen
        assert not (tmp_path / "data" / "ledger.sqlite3").exists() or grants(tmp_path) == []
        code, seen = grant_on_a_terminal(config, "yes", "500", "--reason", "quarterly review")
        assert code == 0, seen
        assert grants(tmp_path) == [("lifetime", 500.0)]

    @pytest.mark.slow
    def test_without_a_terminal_it_needs_yes(self, tmp_path: Path) -> None:
        """A script cannot answer: it is refused with the flag to pass, and --yes grants."""
        config = str(write_config(tmp_path))
        refused = run_cli("--config", config, "budget", "grant", "500", "--reason", "x")
        assert refused.returncode == 2
        assert "pass --yes" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert run_cli("--config", config, "budget", "grant", "500", "--reason", "x", "--yes").returncode == 0
        assert run_cli("--config", config, "budget", "grant", "50", "--reason", "small").returncode == 0
        assert grants(tmp_path) == [("lifetime", 500.0), ("lifetime", 50.0)]


def grants(tmp_path: Path) -> list[tuple[str, float]]:
    with closing(sqlite3.connect(tmp_path / "data" / "ledger.sqlite3")) as conn:
        return conn.execute("SELECT cap, epsilon FROM grants ORDER BY id").fetchall()


def every_subparser() -> list[tuple[str, Any]]:
    import argparse

    from cpu_tracker_daemon.cli.main import build_parser

    found: list[tuple[str, Any]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), child))
                    walk(f"{prefix} {name}", child)

    walk("", build_parser())
    return found


@pytest.mark.parametrize(("name", "parser"), every_subparser(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_subcommand_help_says_what_it_does_and_what_each_option_means(name: str, parser: Any) -> None:
    """`run --help` printed a bare usage line. Each command's --help now has a description, and
    every option and argument a line of its own."""
    assert parser.description, f"'{name} --help' has no description"
    for action in parser._actions:
        if action.dest in ("help",) or action.help == "==SUPPRESS==":
            continue
        if action.__class__.__name__ == "_SubParsersAction":
            continue
        assert action.help, f"'{name} --help': {action.option_strings or action.dest} has no help"


@pytest.mark.skipif(os.geteuid() != 0, reason="crossing a privilege line needs root")
def test_status_cannot_tell_for_another_users_lock_and_says_so(tmp_path: Path) -> None:
    """A lock file this user may not read (the system service's, without sudo) is not "not
    running": the lock's holder cannot be told, and status says so."""
    import pwd

    from cpu_tracker_daemon.daemon.instance import InstanceLock, holder

    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    lock = tmp_path / ".lock"
    with InstanceLock(lock):  # held by root, mode 0600
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            answer = b"?"
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                answer = str(holder(lock)).encode()
            except PermissionError:
                answer = b"denied"
            finally:
                os.write(write, answer)
                os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        seen = os.read(read, 64)
        os.close(read)
        assert holder(lock) == os.getpid()  # root reads it: this process holds it
    assert seen == b"denied"


def _outcome(parse: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, Any]:
    from cpu_tracker_daemon.errors import UsageError

    try:
        args = parse(argv)
    except UsageError as exc:
        return "error", str(exc)
    except SystemExit as exc:
        return "exit", (exc.code, capsys.readouterr().out)
    return "parsed", vars(args)


def _command_lines() -> list[list[str]]:
    """Every command with --help, every leaf with what it needs, global options around them, and
    mistakes of each kind."""
    needs = {
        "budget grant": ["1.5", "--reason", "r", "--cap", "window"],
        "budget approve": ["abc", "--reason", "ok"],
        "budget deny": ["abc", "--reason", "no"],
        "ledger reset": ["--reason", "r"],
        "service install": ["systemd", "--user", "--dry-run"],
    }
    lines: list[list[str]] = [[], ["--help"], ["--version"], ["--system", "status"]]
    for name, _ in every_subparser():
        words = name.split()
        lines.append([*words, "--help"])
        lines.append(["--config", "c.toml", *words, *needs.get(name, [])])
        lines.append(["--config=c.toml", *words, "--json"])
    lines += [
        ["stauts"],
        ["budget"],
        ["budget", "grant", "x", "--reason", "r"],
        ["--conf", "c.toml", "status"],  # an abbreviation the word scan cannot know
        ["--", "status"],
        ["status", "extra"],
        ["once", "--force", "--json"],
    ]
    return lines


@pytest.mark.parametrize("argv", _command_lines(), ids=" ".join)
def test_every_command_line_is_a_handler_help_or_one_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command line parses to a handler, or prints help or the version and exits 0, or is a
    UsageError (one line, exit 2): argparse never exits with its own code 2 and a usage dump."""
    from cpu_tracker_daemon.cli.main import build_parser

    kind, value = _outcome(lambda a: build_parser().parse_args(a), argv, capsys)
    if kind == "parsed":
        assert callable(value["func"])
    elif kind == "exit":
        assert value[0] == 0
        assert value[1].startswith(("usage: cpu-tracker", "cpu-tracker "))
    else:
        assert "\n" not in value
        assert value.endswith("--help'")


def on_a_terminal(config: str, answer: str, *words: str) -> tuple[int, str]:
    """A command with a pseudo-terminal as stdin and stderr, answering ``answer`` once asked."""
    import pty
    import select

    main_fd, term = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpu_tracker_daemon", "--config", config, *words],
        stdin=term, stdout=subprocess.PIPE, stderr=term, env=cli_env(), text=True,
    )  # fmt: skip
    os.close(term)
    seen = b""
    try:
        while b"Type yes" not in seen and proc.poll() is None and select.select([main_fd], [], [], 20)[0]:
            seen += os.read(main_fd, 4096)
        if b"Type yes" in seen:
            os.write(main_fd, answer.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
        seen += read_rest(main_fd, 0.5)
    finally:
        os.close(main_fd)
    return proc.returncode, seen.decode(errors="replace") + out


FIFTY_SECONDS = {"sampling": {"samples": 10, "interval_seconds": 5}, "schedule": {"every_seconds": 60}}


class TestFirstHour:
    """What a new user meets in their first hour, as they run it: the real command."""

    @pytest.mark.slow
    def test_once_says_it_is_sampling_before_it_waits(self, tmp_path: Path) -> None:
        """`once` printed nothing for the 50 s of its window, to a pipe or a terminal, and looked
        hung. Its first line now says what it does and for how long; a Ctrl-C then stops it."""
        config = str(write_config(tmp_path, FIFTY_SECONDS))
        proc = start_cli("--config", config, "once")
        first = next(daemon_events(proc))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert first.get("summary") == "sampling the CPU for 50 s (a window of 10 samples of 5 s)...", first
        assert proc.returncode == EXIT_INTERRUPTED

    @pytest.mark.slow
    def test_once_on_a_terminal_says_it_is_sampling(self, tmp_path: Path) -> None:
        """On a terminal the same first line is the sentence itself."""
        import pty

        config = str(write_config(tmp_path, FIFTY_SECONDS))
        main_fd, term = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpu_tracker_daemon", "--config", config, "once"],
            stdout=term, stderr=term, env=cli_env(), text=True,
        )  # fmt: skip
        os.close(term)
        try:
            first = b""
            while not first.endswith(b"\n"):
                first += os.read(main_fd, 1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            os.close(main_fd)
        assert "sampling the CPU for 50 s (a window of 10 samples of 5 s)..." in first.decode(), first
        assert proc.returncode == EXIT_INTERRUPTED

    @pytest.mark.slow
    def test_a_secure_member_says_it_waits_for_its_slot_and_round(self, tmp_path: Path) -> None:
        """A member of secure aggregation waits for the network's slot, samples, then takes part
        in the slot's round: its first line says so, naming the aggregator, before any wait."""
        aggregator = "agg@example.org"
        config = str(
            write_config(
                tmp_path,
                {
                    "sampling": {"samples": 10, "interval_seconds": 5},
                    "schedule": {"every_seconds": 3600},
                    "syftbox": {
                        "dir": str(tmp_path / "SyftBox"),
                        "email": "m@x.org",
                        "readers": [aggregator],
                    },
                    "secure_aggregation": {"enabled": True, "aggregator": aggregator},
                },
            )
        )
        proc = start_cli("--config", config, "once")
        first = next(daemon_events(proc))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        summary = str(first.get("summary"))
        assert "slot" in summary or "sampling the CPU" in summary, first
        assert f"secure round with {aggregator}" in summary, first

    @pytest.mark.slow
    def test_run_and_status_give_the_same_time_for_the_next_release(self, tmp_path: Path) -> None:
        """`run` said the next release was at 17:44 while `status` said 17:43: one gave the time
        the release lands, the other when its window starts. Both now say when it lands. With a
        window of two minutes the two times were minutes apart; `run` now names the minute that
        `status` named just before it or just after it (the clock moves on between the three)."""
        env = cli_env(TZ=tz_at_local_hour(12))
        two_minutes = {
            "sampling": {"samples": 2, "interval_seconds": 60},
            "schedule": {"every_seconds": 3600},
        }
        config = write_config(tmp_path, two_minutes)
        pattern = r"next due: +[^,]+, at (\d\d:\d\d) local"
        before = re.search(pattern, run_cli("--config", str(config), "status", env=env).stdout)
        daemon = RunningDaemon(config, env=env)
        started = daemon.wait_for(lambda e: e.get("event") == "daemon.started")
        after = re.search(pattern, run_cli("--config", str(config), "status", env=env).stdout)
        assert daemon.stop() == 0
        said_by_run = re.search(r"first release at (\d\d:\d\d)", started["summary"])
        assert said_by_run is not None, started
        assert before is not None
        assert after is not None
        assert said_by_run.group(1) in {before.group(1), after.group(1)}

    def test_a_grant_says_what_is_left_as_it_is(self, tmp_path: Path) -> None:
        """A grant that left 104.5 said "104 left": the grant and status now say 104.5."""
        config = str(write_config(tmp_path))  # a lifetime cap of 100
        granted = run_cli("--config", config, "budget", "grant", "4.5", "--reason", "a little more")
        assert granted.returncode == 0, granted.stderr
        said = granted.stdout.rstrip()
        assert said.endswith("now epsilon 104.5 at delta 1e-06, 104.5 left"), said
        assert "lifetime 0 of 104.5 spent, 104.5 left" in run_cli("--config", config, "status").stdout

    @pytest.mark.slow
    def test_one_release_is_one_release(self, tmp_path: Path) -> None:
        """`ledger verify` said "1 releases"."""
        config = str(write_config(tmp_path))
        assert run_cli("--config", config, "once").returncode == 0
        verified = run_cli("--config", config, "ledger", "verify")
        assert verified.stdout.rstrip().endswith(", 1 release"), verified.stdout

    def test_the_system_services_status_says_how_to_start_that_service(self) -> None:
        """`--system status` suggested 'cpu-tracker run', which starts a daemon as the caller on
        the caller's state, not the system service whose status it shows."""
        shown = run_cli("--system", "status")
        assert shown.returncode == 0, shown.stderr
        if "daemon:        not running" not in shown.stdout:
            pytest.skip("the system service runs on this machine, or its state is another user's")
        start = "launchctl" if sys.platform == "darwin" else "sudo systemctl start cpu-tracker"
        assert start in shown.stdout
        assert "'cpu-tracker run'" not in shown.stdout

    @pytest.mark.slow
    def test_a_ledger_reset_asks_first(self, tmp_path: Path) -> None:
        """`ledger reset` retired the budget's history at once. On a terminal it now asks, and
        "no" changes nothing (exit 2); without a terminal it needs --yes (exit 2 without it); the
        help says both."""
        config = str(write_config(tmp_path))
        assert run_cli("--config", config, "once").returncode == 0
        data = tmp_path / "data"

        def ledgers() -> list[str]:
            files = data.glob("ledger*.sqlite3*")
            return sorted(p.name for p in files if not p.name.endswith(("-wal", "-shm")))

        before = ledgers()
        refused = run_cli("--config", config, "ledger", "reset", "--reason", "a fresh start")
        assert refused.returncode == 2
        assert "pass --yes" in refused.stderr
        assert refused.stderr.count("\n") == 1
        code, seen = on_a_terminal(config, "no", "ledger", "reset", "--reason", "a fresh start")
        assert code == 2, seen
        assert "Type yes" in seen
        assert before == ledgers()
        code, seen = on_a_terminal(config, "yes", "ledger", "reset", "--reason", "a fresh start")
        assert code == 0, seen
        assert "a new privacy ledger starts" in seen
        assert len(ledgers()) == len(before) + 1  # the old one kept, renamed
        assert run_cli("--config", config, "ledger", "reset", "--reason", "again", "--yes").returncode == 0
        helped = run_cli("ledger", "reset", "--help").stdout
        assert "--yes" in helped
        assert "exit 2" in " ".join(helped.split())

    @pytest.mark.slow
    def test_run_and_once_say_who_reads_the_release_when_no_config_says(self, tmp_path: Path) -> None:
        """With no readers configured the release goes to aggregator@openmined.org, and only
        `config show` said so. `once` and `run` say it in one line as they start; a config
        that names its readers hears nothing of it."""
        client = tmp_path / "client.json"
        client.write_text(json.dumps({"data_dir": str(tmp_path / "SyftBox"), "email": "me@example.org"}))
        env = cli_env(SYFTBOX_CLIENT_CONFIG_PATH=str(client))
        config = write_config(tmp_path, {"schedule": {"every_seconds": 3600}})

        def about_readers(events: list[dict[str, Any]]) -> list[str]:
            said = [str(e.get("summary")) for e in events]
            return [s for s in said if "aggregator@openmined.org" in s]

        daemon = RunningDaemon(config, env=env)
        daemon.wait_for(lambda e: e.get("event") == "cycle.finished")  # its first release
        assert daemon.stop() == 0
        assert len(about_readers(daemon.events)) == 1
        once = run_cli("--config", str(config), "once", env=env)  # in cooldown: it says so, exit 6
        (said,) = about_readers(log_events(once.stdout))
        assert "the default [syftbox] readers" in said
        assert str(config) in said  # where to name them
        home = tmp_path / "named"
        home.mkdir()
        readers = {"dir": str(tmp_path / "SyftBox"), "email": "you@example.org", "readers": ["a@example.org"]}
        named = write_config(home, {"syftbox": readers})
        quiet = run_cli("--config", str(named), "once", env=env)
        assert quiet.returncode == 0, quiet.stderr
        assert [e for e in log_events(quiet.stdout) if "readers" in str(e.get("summary"))] == []
