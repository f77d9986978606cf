"""The service under a real systemd 252, booted with systemd-nspawn on a debootstrapped Debian.

The package is installed in the container from wheels built from this checkout, into the venv
docs/service.md describes (/opt/cpu-tracker), so the unit that ``service install`` writes there must
also equal the checked-in ``systemd/cpu-tracker.service``. The tests run in order against one
container: start, release, journal, status, reload, stop, then a broken config.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import container

CHECKOUT = Path(__file__).resolve().parent.parent
VENV = "/opt/cpu-tracker"
STATE = "/var/lib/cpu-tracker"
FAST_CONFIG = """\
[sampling]
samples = 5
interval_seconds = 0.2

[schedule]
every_seconds = 3

[logging]
file = "cpu-tracker.log"
"""

pytestmark = pytest.mark.container

_reason = container.unavailable()
if _reason is not None and os.environ.get(container.REQUIRE_ENV):
    raise RuntimeError(f"{container.REQUIRE_ENV} is set but {_reason}")
if _reason is not None:
    pytestmark = [pytest.mark.container, pytest.mark.skip(reason=_reason)]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[container.Machine]:
    work = tmp_path_factory.mktemp("container")
    root = container.cached_root()
    container.build_wheels(CHECKOUT, work / "wheels")
    booted = container.boot(
        root,
        f"cputest-{os.getpid()}",
        binds=[(work / "wheels" / "own", "/wheels/own"), (container.CACHE / "wheels", "/wheels/deps")],
        log=work / "nspawn.log",
    )
    try:
        booted.run("python3", "-m", "venv", VENV)
        booted.run(
            f"{VENV}/bin/pip", "install", "--quiet", "--no-index",
            "--find-links=/wheels/own", "--find-links=/wheels/deps", "cpu-tracker-daemon",
            timeout=600,
        )  # fmt: skip
        yield booted
    finally:
        booted.shutdown()


def _show(machine: container.Machine, *props: str) -> dict[str, str]:
    out = machine.run("systemctl", "show", "cpu-tracker", *[f"--property={p}" for p in props]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class TestUnderSystemd:
    def test_install_writes_the_checked_in_unit(self, machine: container.Machine) -> None:
        """`service install --system` writes the checked-in unit and names the next command."""
        done = machine.run(f"{VENV}/bin/cpu-tracker", "service", "install", "--system")
        assert "next: systemctl enable --now cpu-tracker" in done.stdout
        installed = machine.run("cat", "/etc/systemd/system/cpu-tracker.service").stdout
        assert (CHECKOUT / "systemd" / "cpu-tracker.service").read_text() == installed
        assert machine.run("getent", "passwd", "cpu-tracker").stdout.startswith("cpu-tracker:")
        verify = machine.run(
            "systemd-analyze", "verify", "/etc/systemd/system/cpu-tracker.service", check=False
        )
        assert (verify.returncode, verify.stderr.strip()) == (0, "")

    def test_enable_now_reaches_running(self, machine: container.Machine) -> None:
        """`systemctl enable --now` starts it as Type=notify and it reaches active (running)."""
        machine.sh(f"cat > /etc/cpu-tracker/config.toml <<'EOF'\n{FAST_CONFIG}EOF")
        machine.run("systemctl", "enable", "--now", "cpu-tracker", timeout=120)
        props = _show(machine, "Type", "ActiveState", "SubState", "User", "NRestarts")
        assert {k: props[k] for k in ("Type", "ActiveState", "SubState")} == {
            "Type": "notify",
            "ActiveState": "active",
            "SubState": "running",
        }
        assert props["User"] == "cpu-tracker"

    def test_security_score_when_loaded(self, machine: container.Machine) -> None:
        """The loaded unit, as systemd itself sees it, scores 1.0 or lower."""
        out = machine.run("systemd-analyze", "security", "--no-pager", "cpu-tracker").stdout
        score = float(out.strip().splitlines()[-1].split(":")[1].split()[0])
        assert score <= 1.0, out

    def test_a_public_release_appears(self, machine: container.Machine) -> None:
        """A release is published in the state directory with the service's own modes and owner."""
        text = machine.wait_until(f"cat {STATE}/public/cpu_tracker.json", timeout=60, what="a release")
        record = json.loads(text)
        assert record["schema"] == "cpu-tracker/release"
        owner = machine.run("stat", "-c", "%U %a", f"{STATE}/public/cpu_tracker.json").stdout.split()
        assert owner == ["cpu-tracker", "644"]
        assert (
            machine.run("stat", "-c", "%U %a", f"{STATE}/private/cpu_tracker.json").stdout.strip()
            == "cpu-tracker 600"
        )

    def test_journal_holds_json_lines(self, machine: container.Machine) -> None:
        """`journalctl -u cpu-tracker` holds the daemon's JSON events."""
        machine.wait_until(
            "journalctl -u cpu-tracker -o cat --no-pager | grep -q cycle.finished", timeout=30, what="a cycle"
        )
        lines = machine.run("journalctl", "-u", "cpu-tracker", "-o", "cat", "--no-pager").stdout.splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        names = {event["event"] for event in events}
        assert {"daemon.started", "cycle.finished"} <= names
        assert all("cpu_raw_mean" not in event for event in events)

    def test_log_file_in_the_logs_directory_survives_rotation(self, machine: container.Machine) -> None:
        """A relative logging.file lands in LogsDirectory=, and is reopened after logrotate moves it."""
        log = "/var/log/cpu-tracker/cpu-tracker.log"
        machine.wait_until(f"grep -q cycle.finished {log}", timeout=30, what="the log file")
        machine.run("mv", log, f"{log}.1")
        machine.wait_until(f"grep -q cycle.finished {log}", timeout=30, what="a reopened log file")
        assert all(line.startswith("{") for line in machine.run("cat", log).stdout.splitlines())

    def test_status_shows_the_status_text(self, machine: container.Machine) -> None:
        """`systemctl status` shows the daemon's STATUS= line once a cycle has run."""
        out = machine.wait_until(
            "systemctl status --no-pager cpu-tracker | grep 'Status:'", timeout=30, what="a STATUS line"
        )
        assert "budget left" in out

    def test_reload_keeps_it_running(self, machine: container.Machine) -> None:
        """`systemctl reload` re-reads the config in the same process, which keeps running."""
        before = _show(machine, "MainPID")["MainPID"]
        machine.run("systemctl", "reload", "cpu-tracker")
        machine.wait_until(
            "journalctl -u cpu-tracker -o cat --no-pager | grep -q config.reloaded", timeout=30, what="reload"
        )
        after = _show(machine, "MainPID", "ActiveState")
        assert {"MainPID": before, "ActiveState": "active"} == after

    def test_stop_exits_zero_and_leaves_no_partial_files(self, machine: container.Machine) -> None:
        """`systemctl stop` ends with exit status 0, and no temp file is left behind."""
        machine.run("systemctl", "stop", "cpu-tracker", timeout=60)
        props = _show(machine, "ActiveState", "Result", "ExecMainStatus")
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert machine.run("find", f"{STATE}/", "-name", "*.tmp").stdout == ""
        json.loads(machine.run("cat", f"{STATE}/public/cpu_tracker.json").stdout)

    def test_budget_is_readable_by_root_with_system(self, machine: container.Machine) -> None:
        """The owner reads and raises the service's budget with --system; the service still owns its files."""
        status = json.loads(machine.run(f"{VENV}/bin/cpu-tracker", "--system", "status", "--json").stdout)
        assert status["releases"] >= 1
        machine.run(
            f"{VENV}/bin/cpu-tracker", "--system", "budget", "grant", "5", "--reason", "container test"
        )
        owners = machine.run("find", f"{STATE}/", "!", "-user", "cpu-tracker").stdout.split()
        assert [path for path in owners if path.rstrip("/") != STATE] == []

    def test_broken_config_fails_without_a_restart_loop(self, machine: container.Machine) -> None:
        """A bad config makes the start fail with exit 3, and systemd does not restart it."""
        machine.sh("printf '[sampling]\\nsamples = \"many\"\\n' > /etc/cpu-tracker/config.toml")
        machine.run("systemctl", "reset-failed", "cpu-tracker", check=False)
        start = machine.run("systemctl", "start", "cpu-tracker", check=False, timeout=60)
        assert start.returncode != 0
        machine.sh("sleep 3")
        props = _show(machine, "ActiveState", "ExecMainStatus", "NRestarts")
        assert props == {"ActiveState": "failed", "ExecMainStatus": "3", "NRestarts": "0"}
        journal = machine.run("journalctl", "-u", "cpu-tracker", "-o", "cat", "--no-pager").stdout
        assert "sampling.samples" in journal


MEMBER = "alice"
MEMBER_EMAIL = "alice@example.org"
MEMBER_HOME = f"/home/{MEMBER}"
MEMBER_RELEASE = f"{MEMBER_HOME}/SyftBox/datasites/{MEMBER_EMAIL}/app_data/cpu_tracker/cpu_tracker.json"
MEMBER_CONFIG = f"""\
[sampling]
samples = 5
interval_seconds = 0.2

[schedule]
every_seconds = 3

[syftbox]
dir = "{MEMBER_HOME}/SyftBox"
email = "{MEMBER_EMAIL}"
"""


@pytest.fixture(scope="module")
def member(machine: container.Machine) -> str:
    """A real user whose SyftBox folder is in its home, with its own systemd --user instance
    (lingering, as for a member who is not logged in); returns its uid."""
    machine.run("useradd", "--create-home", "--shell", "/bin/sh", MEMBER)
    uid = machine.run("id", "-u", MEMBER).stdout.strip()
    as_member(machine, "mkdir", "-p", f"{MEMBER_HOME}/SyftBox", f"{MEMBER_HOME}/.config/cpu-tracker")
    as_member(
        machine, "/bin/sh", "-c", f"cat > {MEMBER_HOME}/.config/cpu-tracker/config.toml", input=MEMBER_CONFIG
    )
    machine.run("loginctl", "enable-linger", MEMBER)
    machine.wait_until(
        f"test -S /run/user/{uid}/systemd/private", timeout=60, what="the member's systemd --user"
    )
    return uid


def as_member(
    machine: container.Machine, *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` run as the member, in its own environment, beside its user manager."""
    uid = machine.run("id", "-u", MEMBER).stdout.strip()
    env = [f"HOME={MEMBER_HOME}", f"USER={MEMBER}", f"XDG_RUNTIME_DIR=/run/user/{uid}",
           f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus"]  # fmt: skip
    return machine.run("runuser", "-u", MEMBER, "--", "env", *env, *argv, check=check, input=input)


class TestMembersUserUnit:
    """A member's service: the per-user unit beside its own sync, writing into its SyftBox folder
    in its home; the system unit refuses such a folder."""

    def test_system_install_refuses_a_folder_in_a_home(self, machine: container.Machine, member: str) -> None:
        """A system config naming the member's folder is refused at install with one line
        naming --user (the unit would exit 3: ProtectHome=yes hides /home)."""
        machine.sh(
            "cat > /etc/cpu-tracker/config.toml <<'EOF'\n"
            f'[syftbox]\ndir = "{MEMBER_HOME}/SyftBox"\nemail = "{MEMBER_EMAIL}"\nEOF'
        )
        done = machine.run(f"{VENV}/bin/cpu-tracker", "service", "install", "--system", check=False)
        assert (done.returncode, done.stderr.count("\n")) == (10, 1), done.stderr
        assert f"{MEMBER_HOME}/SyftBox" in done.stderr
        assert "'cpu-tracker service install --user'" in done.stderr

    def test_sudo_install_for_a_member_names_the_user_unit(
        self, machine: container.Machine, member: str
    ) -> None:
        """`sudo cpu-tracker service install` by the member would install the system unit, which
        cannot reach its folder: it says, in one line, to install the user unit as the member."""
        machine.run("rm", "-f", "/etc/cpu-tracker/config.toml")
        done = machine.run(
            "env", f"SUDO_USER={MEMBER}", f"{VENV}/bin/cpu-tracker", "service", "install", check=False
        )
        assert (done.returncode, done.stderr.count("\n")) == (10, 1), done.stderr
        assert f"as {MEMBER}, without sudo" in done.stderr
        assert "--user" in done.stderr

    def test_install_by_the_member_is_the_user_unit(self, machine: container.Machine, member: str) -> None:
        """The member's own `cpu-tracker service install` writes the user unit, opening just its
        state directory and its SyftBox folder."""
        done = as_member(machine, f"{VENV}/bin/cpu-tracker", "service", "install")
        assert "next: systemctl --user enable --now cpu-tracker" in done.stdout
        unit = machine.run("cat", f"{MEMBER_HOME}/.config/systemd/user/cpu-tracker.service").stdout
        assert "ReadWritePaths=%h/SyftBox\n" in unit
        assert "ReadWritePaths=%h/.local/share/cpu-tracker\n" in unit
        path = f"{MEMBER_HOME}/.config/systemd/user/cpu-tracker.service"
        verify = as_member(machine, "systemd-analyze", "--user", "verify", path, check=False)
        assert (verify.returncode, verify.stderr.strip()) == (0, "")

    def test_user_unit_runs_and_releases_into_the_members_folder(
        self, machine: container.Machine, member: str
    ) -> None:
        """`systemctl --user enable --now` reaches active (running) in the sandbox, and a release
        lands in the member's SyftBox folder, the member's own file."""
        as_member(machine, "systemctl", "--user", "enable", "--now", "cpu-tracker")
        out = as_member(
            machine, "systemctl", "--user", "show", "cpu-tracker",
            "--property=Type", "--property=ActiveState", "--property=SubState",
        ).stdout  # fmt: skip
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert props == {"Type": "notify", "ActiveState": "active", "SubState": "running"}
        machine.wait_until(f"test -s {MEMBER_RELEASE}", timeout=90, what="the member's release")
        owner = machine.run("stat", "-c", "%U", MEMBER_RELEASE).stdout.strip()
        assert owner == MEMBER

    def test_a_second_process_of_the_member_reads_what_it_wrote(
        self, machine: container.Machine, member: str
    ) -> None:
        """What the user's sync client must upload, the release and its permission file, is
        readable by another process of that user (as syft-bg or the SyftBox client runs)."""
        folder = MEMBER_RELEASE.rsplit("/", 1)[0]
        script = (
            "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); "
            "r = json.loads((d / 'cpu_tracker.json').read_text()); "
            "print(r['schema'], (d / 'syft.pub.yaml').read_text().count('read'))"
        )
        done = as_member(machine, "python3", "-c", script, folder)
        schema, reads = done.stdout.split()
        assert schema == "cpu-tracker/release"
        assert int(reads) >= 1

    def test_user_unit_security_score(self, machine: container.Machine, member: str) -> None:
        """The loaded user unit, as the member's systemd sees it, scores 1.0 or lower."""
        out = as_member(machine, "systemd-analyze", "security", "--user", "--no-pager", "cpu-tracker").stdout
        score = float(out.strip().splitlines()[-1].split(":")[1].split()[0])
        assert score <= 1.0, out

    def test_user_unit_stops_cleanly(self, machine: container.Machine, member: str) -> None:
        """`systemctl --user stop` ends it with status 0 and no temp file in the folder."""
        as_member(machine, "systemctl", "--user", "stop", "cpu-tracker")
        out = as_member(
            machine, "systemctl", "--user", "show", "cpu-tracker",
            "--property=ActiveState", "--property=Result", "--property=ExecMainStatus",
        ).stdout  # fmt: skip
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert machine.run("find", f"{MEMBER_HOME}/SyftBox", "-name", "*.tmp").stdout == ""
