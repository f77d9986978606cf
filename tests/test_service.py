"""Service definitions: the rendered unit and plists, the checked-in copies, install and uninstall."""

from __future__ import annotations

import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import errors
from cpu_tracker_daemon.cli import main as cli
from cpu_tracker_daemon.daemon import service
from cpu_tracker_daemon.errors import ServiceError
from tests.conftest import FAST, log_events, render_toml

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = {
    ("systemd", "system"): ROOT / "systemd" / "cpu-tracker.service",
    ("systemd", "user"): ROOT / "systemd" / "user" / "cpu-tracker.service",
    ("launchd", "user"): ROOT / "launchd" / "org.openmined.cpu-tracker.plist",
    ("launchd", "system"): ROOT / "launchd" / "org.openmined.cpu-tracker.daemon.plist",
}


def target(
    manager: str, scope: str, executable: Path | None = None, home: Path | None = None
) -> service.Target:
    return service.Target(
        manager, scope, executable or service.DEFAULT_EXECUTABLE, home or service.DEFAULT_HOME, {}
    )


def this_executable() -> Path:
    return service.installed_executable()


def run_main(*argv: str, home: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(argv), {"HOME": str(home), "PATH": os.environ.get("PATH", "")})
    out, err = capsys.readouterr()
    return code, out, err


class TestRender:
    @pytest.mark.parametrize(("manager", "scope"), sorted(CHECKED_IN))
    def test_checked_in_files_are_the_default_rendering(self, manager: str, scope: str) -> None:
        """Each file in systemd/ and launchd/ is exactly what `service print` renders by default."""
        expected = service.render(target(manager, scope))
        assert expected == CHECKED_IN[manager, scope].read_text(), (
            f"regenerate with: HOME={service.DEFAULT_HOME} cpu-tracker service print {manager} --{scope} "
            f"--executable {service.DEFAULT_EXECUTABLE}"
        )

    def test_no_restart_codes_are_the_cli_codes_a_restart_cannot_fix(self) -> None:
        """RestartPreventExitStatus lists bad arguments, bad config, corrupt ledger, another instance."""
        expected = (
            errors.EXIT_USAGE,
            errors.EXIT_CONFIG,
            errors.EXIT_LEDGER,
            errors.EXIT_INSTANCE,
        )
        assert expected == service.NO_RESTART_EXIT_CODES
        unit = service.render(target("systemd", "system"))
        assert "RestartPreventExitStatus=2 3 4 5\n" in unit

    def test_unit_avoids_the_known_traps(self) -> None:
        """/proc/stat stays visible and a filtered syscall returns EPERM instead of killing numpy."""
        for scope in service.SCOPES:
            unit = service.render(target("systemd", scope))
            assert "\nProcSubset=" not in unit
            assert "SystemCallErrorNumber=EPERM\n" in unit
            assert "Type=notify\n" in unit

    def test_exec_start_is_the_given_executable(self, tmp_path: Path) -> None:
        """ExecStart and ProgramArguments name the executable they were rendered for."""
        exe = tmp_path / "venv" / "bin" / "cpu-tracker"
        assert f"ExecStart={exe} run\n" in service.render(target("systemd", "system", exe))
        plist = plistlib.loads(service.render(target("launchd", "user", exe)).encode())
        assert [str(exe), "run"] == plist["ProgramArguments"]

    def test_relative_executable_is_refused(self) -> None:
        """A relative --executable would break under the service manager, so it is an error."""
        with pytest.raises(ServiceError, match="not absolute"):
            service.render(target("systemd", "system", Path("bin/cpu-tracker")))

    @pytest.mark.parametrize("scope", service.SCOPES)
    def test_help_is_the_installed_command_not_a_web_page(self, scope: str) -> None:
        """Documentation= pointed at a repository that does not exist; the unit now names the
        installed command's --help, and no web address."""
        unit = service.render(target("systemd", scope))
        assert "://" not in unit
        assert f"# Help: {service.DEFAULT_EXECUTABLE} --help" in unit

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
    def test_user_unit_scores_one_or_lower(self, tmp_path: Path) -> None:
        """The per-user unit has the system unit's sandbox, in the user's own namespace: it scored
        6.1 (seccomp only); `systemd-analyze security --user` scores it 1.0 or less."""
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        done = subprocess.run(
            ["systemd-analyze", "security", "--user", "--offline=true", "--no-pager",
             str(CHECKED_IN["systemd", "user"])],
            capture_output=True, text=True, check=True,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        )  # fmt: skip
        score = float(done.stdout.strip().splitlines()[-1].split(":")[1].split()[0])
        assert score <= 1.0, done.stdout

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
    def test_system_unit_scores_one_or_lower_and_verifies(self, tmp_path: Path) -> None:
        """`systemd-analyze security --offline=true` scores the unit 1.0 or less; verify is clean."""
        done = subprocess.run(
            [
                "systemd-analyze",
                "security",
                "--offline=true",
                "--no-pager",
                str(CHECKED_IN["systemd", "system"]),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        score = float(done.stdout.strip().splitlines()[-1].split(":")[1].split()[0])
        assert score <= 1.0, done.stdout
        unit = tmp_path / service.UNIT_NAME
        unit.write_text(service.render(target("systemd", "system", this_executable())))
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
        )
        assert (verify.returncode, verify.stderr.strip()) == (0, "")


class TestExecutable:
    def test_found_beside_the_interpreter(self, tmp_path: Path) -> None:
        """In a venv or pipx the command sits beside the interpreter, and that one is chosen."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        exe = bin_dir / "cpu-tracker"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        assert exe == service.installed_executable(str(bin_dir / "python"))

    def test_found_on_path_else_a_clear_error(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A system install is found on PATH; with none anywhere the error names --executable."""
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(ServiceError, match="--executable"):
            service.installed_executable(str(tmp_path / "nowhere" / "python"))
        exe = tmp_path / "cpu-tracker"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        assert exe == service.installed_executable(str(tmp_path / "nowhere" / "python"))


class TestPlist:
    @pytest.mark.parametrize("scope", service.SCOPES)
    def test_parses_round_trips_and_has_the_keys_launchd_needs(self, scope: str) -> None:
        """The plist parses, survives a round trip, and carries what launchd needs to supervise it."""
        path = CHECKED_IN["launchd", scope]
        text = path.read_bytes()
        plist = plistlib.loads(text)
        assert text == plistlib.dumps(plist, sort_keys=False)
        assert path.stem == plist["Label"]
        assert all(Path(arg).is_absolute() for arg in plist["ProgramArguments"][:1])
        assert plist["ProgramArguments"][-1] == "run"
        assert plist["RunAtLoad"] is True
        assert plist["KeepAlive"] == {"SuccessfulExit": False}
        assert plist["ThrottleInterval"] >= 10
        assert plist["ProcessType"] == "Background"
        logs = Path(plist["EnvironmentVariables"]["LOGS_DIRECTORY"])
        assert logs / service.LOG_FILE == Path(plist["StandardOutPath"]) == Path(plist["StandardErrorPath"])
        assert plist["WorkingDirectory"] == plist["EnvironmentVariables"]["STATE_DIRECTORY"]
        assert ("UserName" in plist) == (scope == "system")

    @pytest.mark.slow
    def test_runs_as_launchd_would_run_it(self, tmp_path: Path) -> None:
        """ProgramArguments with the plist's environment, directory and log file: starts, releases, stops."""
        home = tmp_path / "home"
        agent = target("launchd", "user", this_executable(), home)
        plan = service.plan_install(agent, Path("/"), os.getuid())
        service.install(plan, Path("/"), force=False)
        plist: dict[str, Any] = plistlib.loads(plan.definition.read_bytes())
        env = plist["EnvironmentVariables"]
        config_dir = Path(env["CONFIGURATION_DIRECTORY"])
        (config_dir / "config.toml").write_text(render_toml(FAST))
        log = Path(plist["StandardOutPath"])
        with log.open("ab") as out:
            proc = subprocess.Popen(
                plist["ProgramArguments"],
                env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env},
                cwd=plist["WorkingDirectory"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                umask=plist["Umask"],
            )
        public = Path(env["STATE_DIRECTORY"]) / "public" / "cpu_tracker.json"
        deadline = time.monotonic() + 60
        while not public.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        events = [e["event"] for e in log_events(log.read_text())]
        assert public.exists(), log.read_text()
        assert {"daemon.started", "cycle.finished"} <= set(events)
        assert str(config_dir / "config.toml") in log.read_text()
        assert events[-1] == "daemon.stopped"
        assert public.stat().st_mode & 0o777 == 0o644


class TestInstall:
    def test_user_install_writes_creates_and_names_the_next_command(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A user install writes the unit under the root and creates the config directory it names."""
        home = Path("/home/alice")
        code, out, _ = run_main(
            "service", "install", "systemd", "--user", "--root", str(tmp_path),
            "--executable", "/x/cpu-tracker", home=home, capsys=capsys,
        )  # fmt: skip
        unit = tmp_path / "home/alice/.config/systemd/user/cpu-tracker.service"
        assert code == 0
        assert "next: systemctl --user enable --now cpu-tracker" in out
        assert "ExecStart=/x/cpu-tracker run" in unit.read_text()
        assert (tmp_path / "home/alice/.config/cpu-tracker").is_dir()

    def test_user_unit_may_write_just_where_the_config_says(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A member's config puts its SyftBox folder in its home: the user unit keeps home
        read-only but for that folder and the state directory, names them as %h/..., and
        install creates them, so the unit can start before the sync client has run."""
        home = Path("/home/alice")
        config_dir = tmp_path / "home/alice/.config/cpu-tracker"
        config_dir.mkdir(parents=True)
        (config_dir / "config.toml").write_text(
            '[syftbox]\ndir = "/home/alice/SyftBox"\nemail = "alice@example.org"\n'
        )
        code, out, err = run_main(
            "service", "install", "systemd", "--user", "--root", str(tmp_path), "--executable",
            "/x/cpu-tracker", home=home, capsys=capsys,
        )  # fmt: skip
        assert code == 0, err
        assert "next: systemctl --user enable --now cpu-tracker" in out
        unit = (tmp_path / "home/alice/.config/systemd/user/cpu-tracker.service").read_text()
        writable = [line for line in unit.splitlines() if line.startswith("ReadWritePaths=")]
        assert writable == ["ReadWritePaths=%h/.local/share/cpu-tracker", "ReadWritePaths=%h/SyftBox"]
        assert "ProtectHome=read-only\n" in unit
        assert "PrivateUsers=yes\n" in unit
        assert (tmp_path / "home/alice/SyftBox").is_dir()
        assert (tmp_path / "home/alice/.local/share/cpu-tracker").is_dir()

    def test_user_install_refuses_a_config_the_service_would_refuse(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A unit that would exit 3 at start is not written: the config's own line, exit 3."""
        config_dir = tmp_path / "home/alice/.config/cpu-tracker"
        config_dir.mkdir(parents=True)
        (config_dir / "config.toml").write_text('[sampling]\nsamples = "many"\n')
        code, _, err = run_main(
            "service", "install", "--user", "--root", str(tmp_path), "--executable", "/x/ct",
            home=Path("/home/alice"), capsys=capsys,
        )  # fmt: skip
        assert (code, err.count("\n")) == (errors.EXIT_CONFIG, 1)
        assert "sampling.samples" in err
        assert not (tmp_path / "home/alice/.config/systemd").exists()

    @pytest.mark.parametrize("manager", service.MANAGERS)
    def test_system_service_refuses_a_syftbox_folder_in_a_home(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], manager: str
    ) -> None:
        """The system config named a member's folder in /home: the unit installed, then the
        daemon exited 3, "not writable (Permission denied)", its home hidden (ProtectHome=yes).
        Install now refuses with one line naming --user, and writes nothing."""
        etc = tmp_path / "etc/cpu-tracker"
        etc.mkdir(parents=True)
        (etc / "config.toml").write_text('[syftbox]\ndir = "/home/alice/SyftBox"\nemail = "a@example.org"\n')
        code, _, err = run_main(
            "service", "install", manager, "--system", "--root", str(tmp_path), "--executable", "/x/ct",
            home=Path("/root"), capsys=capsys,
        )  # fmt: skip
        assert (code, err.count("\n")) == (errors.EXIT_SERVICE, 1)
        assert "/home/alice/SyftBox" in err
        assert "'cpu-tracker service install --user'" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["etc"]
        assert [p.name for p in (tmp_path / "etc").iterdir()] == ["cpu-tracker"]

    def test_dry_run_writes_nothing(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--dry-run prints the file and the directories, and creates none of them."""
        code, out, _ = run_main(
            "service", "install", "launchd", "--user", "--dry-run", "--root", str(tmp_path),
            "--executable", "/x/cpu-tracker", home=Path("/Users/bob"), capsys=capsys,
        )  # fmt: skip
        assert code == 0
        assert "<string>org.openmined.cpu-tracker</string>" in out
        assert "then: launchctl bootstrap gui/" in out
        assert list(tmp_path.iterdir()) == []

    def test_never_overwrites_a_changed_file_without_force(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Reinstalling the same file is fine; a changed one is kept (exit 10) unless --force."""
        args = ["service", "install", "systemd", "--user", "--root", str(tmp_path), "--executable", "/x/ct"]
        home = Path("/home/alice")
        assert run_main(*args, home=home, capsys=capsys)[0] == 0
        assert run_main(*args, home=home, capsys=capsys)[0] == 0
        unit = tmp_path / "home/alice/.config/systemd/user/cpu-tracker.service"
        unit.write_text("# mine\n")
        code, _, err = run_main(*args, home=home, capsys=capsys)
        assert (code, unit.read_text()) == (errors.EXIT_SERVICE, "# mine\n")
        assert "--force" in err
        assert err.count("\n") == 1
        assert run_main(*args, "--force", home=home, capsys=capsys)[0] == 0
        assert "ExecStart=/x/ct run" in unit.read_text()

    @pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
    def test_system_install_creates_the_service_account(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A system install writes the unit and a sysusers.d entry, and systemd-sysusers makes the user."""
        code, out, err = run_main(
            "service", "install", "systemd", "--system", "--root", str(tmp_path), "--executable", "/x/ct",
            home=Path("/root"), capsys=capsys,
        )  # fmt: skip
        assert code == 0, err
        assert "next: systemctl enable --now cpu-tracker" in out
        assert (tmp_path / "etc/systemd/system/cpu-tracker.service").is_file()
        assert (tmp_path / "etc/sysusers.d/cpu-tracker.conf").read_text() == service.SYSUSERS_LINE
        passwd = (tmp_path / "etc/passwd").read_text().splitlines()
        assert any(line.startswith("cpu-tracker:") for line in passwd)
        assert (tmp_path / "etc/cpu-tracker").is_dir()

    @pytest.mark.parametrize(
        ("executable", "interpreter", "hidden", "relaxed"),
        [
            ("/home/alice/cpu-tracker/.venv/bin/cpu-tracker", None, "/home", "ProtectHome=read-only"),
            ("/opt/cpu-tracker/bin/cpu-tracker", "/root/.pyenv/versions/3.11.7/bin/python3.11", "/root",
             "ProtectHome=read-only"),
            ("/tmp/venv/bin/cpu-tracker", None, "/tmp", "PrivateTmp=no"),
        ],
    )  # fmt: skip
    def test_a_system_unit_that_could_not_start_its_executable_is_refused(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        executable: str,
        interpreter: str | None,
        hidden: str,
        relaxed: str,
    ) -> None:
        """The quick start's venv under /home (or a venv whose python is pyenv's under /root, or
        one in /tmp) got a unit with ProtectHome=yes (PrivateTmp=yes): systemctl start failed with
        203/EXEC every 30 s. Install now refuses with the fix, writing nothing; --force writes
        the unit with the sandbox opened just there."""
        exe = tmp_path / executable.lstrip("/")
        exe.parent.mkdir(parents=True)
        exe.write_text(f"#!{interpreter or exe.parent / 'python'}\nimport sys\n")
        args = [
            "service",
            "install",
            "systemd",
            "--system",
            "--root",
            str(tmp_path),
            "--executable",
            executable,
        ]
        unit = tmp_path / "etc/systemd/system/cpu-tracker.service"
        code, _, err = run_main(*args, home=Path("/root"), capsys=capsys)
        assert code == errors.EXIT_SERVICE
        assert err.count("\n") == 1
        assert hidden in err
        assert "/opt/cpu-tracker" in err
        assert "--force" in err
        assert not unit.exists()
        code, _, err = run_main(*args, "--force", home=Path("/root"), capsys=capsys)
        if code != 0 and "sysusers" in err:
            pytest.skip("systemd-sysusers is not installed")
        assert code == 0, err
        text = unit.read_text()
        assert relaxed in text
        assert text.count("ProtectHome=") == 1
        assert text.count("PrivateTmp=") == 1
        assert ("ProtectHome=yes" in text) == (relaxed != "ProtectHome=read-only")

    def test_uninstall_removes_only_an_unchanged_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """uninstall removes its own file, refuses a changed one without --force, and keeps the data."""
        common = ["launchd", "--user", "--root", str(tmp_path), "--executable", "/x/ct"]
        home = Path("/Users/bob")
        assert run_main("service", "install", *common, home=home, capsys=capsys)[0] == 0
        plist = tmp_path / "Users/bob/Library/LaunchAgents/org.openmined.cpu-tracker.plist"
        state = tmp_path / "Users/bob/Library/Application Support/cpu-tracker"
        plist.write_text(plist.read_text() + "\n")
        code, _, err = run_main("service", "uninstall", *common, home=home, capsys=capsys)
        assert (code, plist.exists()) == (errors.EXIT_SERVICE, True)
        code, out, _ = run_main("service", "uninstall", *common, "--force", home=home, capsys=capsys)
        assert (code, plist.exists(), state.is_dir()) == (0, False, True)
        assert "launchctl bootout gui/" in out
        code, _, err = run_main("service", "uninstall", *common, home=home, capsys=capsys)
        assert code == errors.EXIT_SERVICE
        assert "nothing to uninstall" in err

    def test_relative_root_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--root must be absolute: exit 2 with one line."""
        code, _, err = run_main(
            "service",
            "install",
            "--user",
            "--root",
            "rel",
            "--executable",
            "/x",
            home=Path("/h"),
            capsys=capsys,
        )
        assert (code, err.count("\n")) == (errors.EXIT_USAGE, 1)


def test_service_module_imports_nothing_heavy() -> None:
    """`service print` stays fast: rendering needs only the standard library."""
    code = (
        "import sys; import cpu_tracker_daemon.daemon.service; "
        "print(sorted(m for m in ('numpy', 'diffprivlib', 'apscheduler', 'psutil') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
