"""Service definitions: the systemd unit and the launchd plists, rendered for this installation,
installed and removed. Nothing here starts or stops a service."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.config import APP_NAME, CONFIG_FILE, default_data_dir, user_config_dir
from cpu_tracker_daemon.errors import NO_RESTART, CpuTrackerError, OutputError, ServiceError

if TYPE_CHECKING:
    from cpu_tracker_daemon.config import Config

MANAGERS = ("systemd", "launchd")  # the service managers ``service`` writes files for
SCOPES = ("system", "user")
UNIT_NAME = f"{APP_NAME}.service"
LABEL = "org.openmined.cpu-tracker"
SYSTEM_USER = APP_NAME  # the systemd service's own account, made by systemd-sysusers
LAUNCHD_SYSTEM_USER = "nobody"
DEFAULT_EXECUTABLE = Path("/opt/cpu-tracker/bin/cpu-tracker")  # the install docs/service.md describes
DEFAULT_HOME = Path("/Users/you")  # for the checked-in launchd agent only
LOG_FILE = f"{APP_NAME}.log"

NO_RESTART_EXIT_CODES = NO_RESTART  # the unit's RestartPreventExitStatus=
# Where home directories are: the system unit hides them (ProtectHome=yes), and the system
# service's own user may not write a member's files in any of them.
HOMES = (Path("/home"), Path("/root"), Path("/run/user"), Path("/Users"), Path("/var/root"))


def system_dirs(platform: str = sys.platform) -> dict[str, Path]:
    """Where the system-wide service keeps its state, configuration and logs."""
    if platform == "darwin":
        return {
            "STATE_DIRECTORY": Path("/Library/Application Support") / APP_NAME,
            "CONFIGURATION_DIRECTORY": Path("/etc") / APP_NAME,
            "LOGS_DIRECTORY": Path("/Library/Logs") / APP_NAME,
        }
    return {
        "STATE_DIRECTORY": Path("/var/lib") / APP_NAME,
        "CONFIGURATION_DIRECTORY": Path("/etc") / APP_NAME,
        "LOGS_DIRECTORY": Path("/var/log") / APP_NAME,
    }


@dataclass(frozen=True)
class Target:
    """One service definition: which manager, which scope, and the paths it names."""

    manager: str
    scope: str
    executable: Path
    home: Path
    environ: Mapping[str, str]
    opened: tuple[str, ...] = ()  # sandbox lines --force replaced (see hidden_from_service)
    writable: tuple[Path, ...] = ()  # the user unit's ReadWritePaths= (see written_paths)

    @property
    def label(self) -> str:
        return LABEL if self.scope == "user" else f"{LABEL}.daemon"

    @property
    def definition(self) -> Path:
        """Where the service manager looks for the file (absolute, before any --root)."""
        if self.manager == "systemd":
            if self.scope == "system":
                return Path("/etc/systemd/system") / UNIT_NAME
            return user_config_dir(self.environ, self.home).parent / "systemd" / "user" / UNIT_NAME
        if self.scope == "system":
            return Path("/Library/LaunchDaemons") / f"{self.label}.plist"
        return self.home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    @property
    def directories(self) -> dict[str, Path]:
        """The directories the definition names, by the environment variable that carries them.

        systemd's system scope gets its own from ``StateDirectory=`` and friends; the user scope
        names only the configuration directory (state stays where the CLI looks by default,
        logs go to the journal). launchd has no such settings, so the plist passes all three.
        """
        if self.scope == "system":
            return system_dirs("darwin" if self.manager == "launchd" else "linux")
        config = {"CONFIGURATION_DIRECTORY": user_config_dir(self.environ, self.home)}
        if self.manager == "systemd":
            return config
        return {
            "STATE_DIRECTORY": self.home / "Library" / "Application Support" / APP_NAME,
            **config,
            "LOGS_DIRECTORY": self.home / "Library" / "Logs" / APP_NAME,
        }

    @property
    def config_file(self) -> Path:
        """The config file the service reads, if it exists (absolute, before any --root)."""
        return self.directories["CONFIGURATION_DIRECTORY"] / CONFIG_FILE

    @property
    def service_environ(self) -> dict[str, str]:
        """The environment the daemon sees under this service: its home and directories."""
        env = {"HOME": str(self.home)}
        if self.scope == "user":
            env |= {k: v for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME") if (v := self.environ.get(k, ""))}
        return env | {name: str(path) for name, path in self.directories.items()}

    @property
    def read_write_paths(self) -> tuple[Path, ...]:
        """The user unit's writable directories: those given, else the default state directory."""
        if self.writable:
            return self.writable
        xdg = {k: v for k in ("XDG_DATA_HOME",) if (v := self.environ.get(k, ""))}
        return (default_data_dir({"HOME": str(self.home), **xdg}, "linux"),)

    @property
    def log_file(self) -> Path | None:
        """The file launchd sends stdout and stderr to; systemd uses the journal."""
        if self.manager == "systemd":
            return None
        return self.directories["LOGS_DIRECTORY"] / LOG_FILE

    def next_command(self, uid: int) -> str:
        """The one command that starts the service once the file is in place."""
        if self.manager == "systemd":
            return f"systemctl{' --user' if self.scope == 'user' else ''} enable --now {APP_NAME}"
        domain = "system" if self.scope == "system" else f"gui/{uid}"
        return f"launchctl bootstrap {domain} {self.definition}"

    def undo_command(self, uid: int) -> str:
        """The command that stops the service before its file is removed."""
        if self.manager == "systemd":
            return f"systemctl{' --user' if self.scope == 'user' else ''} disable --now {APP_NAME}"
        domain = "system" if self.scope == "system" else f"gui/{uid}"
        return f"launchctl bootout {domain}/{self.label}"


def installed_executable(python: str = sys.executable) -> Path:
    """The ``cpu-tracker`` of this installation: beside the interpreter (venv, pipx), else on PATH."""
    beside = Path(python).parent / APP_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    import shutil  # here, not at the top: only installing needs it

    found = shutil.which(APP_NAME)
    if found:
        return Path(found).absolute()
    raise ServiceError(
        "cannot find the installed cpu-tracker command; pass --executable with its absolute path"
    )


def render(target: Target) -> str:
    """The unit file or plist text for ``target``."""
    if not target.executable.is_absolute():
        raise ServiceError(f"--executable {target.executable} is not absolute; give the full path")
    if target.manager == "systemd":
        return _systemd_unit(target)
    return _launchd_plist(target)


_SYSTEMD_HARDENING = """\
# Hardening: the daemon reads /proc/stat and writes its own directories, nothing more.
# `systemd-analyze security cpu-tracker` scores this 0.2. ProcSubset=pid is deliberately
# absent: it hides /proc/stat, which is the whole measurement.
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
PrivateUsers=yes
PrivateIPC=yes
PrivateMounts=yes
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
DevicePolicy=closed
KeyringMode=private
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
IPAddressDeny=any
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# Without this a filtered call kills the process: numpy's OpenBLAS calls mbind() at import.
SystemCallErrorNumber=EPERM
"""

# The user unit: the same sandbox, which a user manager sets up inside the user's own user
# namespace (PrivateUsers=yes), with home read-only but for the directories the daemon writes.
_SYSTEMD_USER_HARDENING_HEAD = """\
# Hardening: as the system unit's. Home is read-only but for the directories below, where the
# daemon writes: read from the config at install, so install again (--force) after changing
# paths.data_dir, [syftbox] dir, prometheus.textfile_dir or logging.file. ProtectKernelLogs= is
# left out: a user manager cannot mask /proc/kmsg (the unit fails, 226/NAMESPACE), and the
# kernel log is not the user's anyway (/proc/kmsg is root's; PrivateDevices= drops /dev/kmsg).
# `systemd-analyze security --user cpu-tracker` scores this 0.8.
"""


def _unit_path(path: Path, home: Path) -> str:
    """``path`` for a unit file: under the home as ``%h/...``, specifiers escaped, quoted if it
    has a space."""
    text = str(path).replace("%", "%%")
    if path.is_relative_to(home):
        text = "%h" + text[len(str(home).replace("%", "%%")) :]
    if any(c.isspace() or c in "\"\\'" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _user_hardening(target: Target) -> str:
    writable = "".join(
        f"ReadWritePaths={_unit_path(path, target.home)}\n" for path in target.read_write_paths
    )
    body = _SYSTEMD_HARDENING.split("\n", 3)[3]  # without the system unit's comment
    body = body.replace("ProtectHome=yes\n", f"ProtectHome=read-only\n{writable}")
    body = body.replace("ProtectKernelLogs=yes\n", "")
    return _SYSTEMD_USER_HARDENING_HEAD + body


def _systemd_unit(target: Target) -> str:
    system = target.scope == "system"
    no_restart = " ".join(str(code) for code in NO_RESTART_EXIT_CODES)
    config = f"/etc/{APP_NAME}" if system else f"~/.config/{APP_NAME}"
    lines = [
        f"# Rendered by `cpu-tracker service print systemd --{target.scope}`.",
        f"# Optional configuration: {config}/{CONFIG_FILE} (embedded defaults otherwise).",
        f"# Help: {target.executable} --help (its commands and exit codes).",
        "[Unit]",
        "Description=cpu-tracker: differentially private CPU usage telemetry",
        *(["After=time-sync.target"] if system else []),
        "",
        "[Service]",
        "Type=notify",
        f"ExecStart={target.executable} run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=30s",
        f"RestartPreventExitStatus={no_restart}",
        "WatchdogSec=5min",
        "TimeoutStopSec=30s",
    ]
    if system:
        lines += [
            f"User={SYSTEM_USER}",
            f"Group={SYSTEM_USER}",
            f"StateDirectory={APP_NAME}",
            "StateDirectoryMode=0700",
            f"LogsDirectory={APP_NAME}",
            "LogsDirectoryMode=0700",
            f"ConfigurationDirectory={APP_NAME}",
            "ConfigurationDirectoryMode=0755",
        ]
    else:
        lines += [f"ConfigurationDirectory={APP_NAME}"]
    lines += ["UMask=0077", ""]
    hardening = _SYSTEMD_HARDENING
    for line in target.opened:
        key = line.split("=", 1)[0]
        hardening = "".join(
            f"{line}\n" if old.startswith(f"{key}=") else old for old in hardening.splitlines(keepends=True)
        )
    text = "\n".join(lines) + "\n" + (hardening if system else _user_hardening(target))
    wanted = "multi-user.target" if system else "default.target"
    return text + f"\n[Install]\nWantedBy={wanted}\n"


def _launchd_plist(target: Target) -> str:
    import plistlib  # here, not at the top: the CLI builds its parser from this module

    log = target.log_file
    assert log is not None
    env = {name: str(path) for name, path in target.directories.items()}
    plist: dict[str, object] = {
        "Label": target.label,
        "ProgramArguments": [str(target.executable), "run"],
        "EnvironmentVariables": env,
        "WorkingDirectory": env["STATE_DIRECTORY"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a failure, not after a clean stop
        "ThrottleInterval": 30,
        "ExitTimeOut": 30,
        "ProcessType": "Background",
        "Umask": 0o077,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    if target.scope == "system":
        plist["UserName"] = LAUNCHD_SYSTEM_USER
        plist["GroupName"] = LAUNCHD_SYSTEM_USER
    return plistlib.dumps(plist, sort_keys=False).decode()


# -- install and uninstall ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What ``install`` writes and creates, so ``--dry-run`` can show it without doing it."""

    definition: Path
    text: str
    directories: tuple[tuple[Path, int, str | None], ...]  # path, mode, owner to give it
    sysusers: Path | None
    next_command: str


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


# What the system unit's sandbox hides from the service, and the line that would open it.
_HIDDEN = (
    (Path("/home"), "ProtectHome=yes", "ProtectHome=read-only"),
    (Path("/root"), "ProtectHome=yes", "ProtectHome=read-only"),
    (Path("/run/user"), "ProtectHome=yes", "ProtectHome=read-only"),
    (Path("/tmp"), "PrivateTmp=yes", "PrivateTmp=no"),  # noqa: S108 - a path named, not used
    (Path("/var/tmp"), "PrivateTmp=yes", "PrivateTmp=no"),  # noqa: S108
)


def hidden_from_service(executable: Path, root: Path) -> list[tuple[Path, Path, str, str]]:
    """What the system service must run that its sandbox hides: the executable and, for a
    script, its interpreter (a venv's python links to the one it was made from), each with the
    hidden directory, the line hiding it and the line that would open it."""
    exe = _under(root, executable)
    chain = [executable]
    if root == Path("/"):
        chain.append(Path(os.path.realpath(executable)))
    try:
        with exe.open("rb") as f:
            first = f.readline(512)
    except OSError:
        first = b""
    if first.startswith(b"#!") and first[2:].split():
        interpreter = Path(first[2:].split()[0].decode(errors="replace"))
        chain.append(interpreter)
        if root == Path("/"):
            chain.append(Path(os.path.realpath(interpreter)))
    found = []
    for path in dict.fromkeys(chain):
        for prefix, hiding, opening in _HIDDEN:
            if path.is_relative_to(prefix):
                found.append((path, prefix, hiding, opening))
    return found


def service_config(target: Target, root: Path) -> Config:
    """The configuration the service will run with: its config file under ``root`` if there is
    one, read in the service's environment; paths it names under ``root`` as the service sees
    them. Raises ConfigError (exit 3) for a file it would refuse."""
    from cpu_tracker_daemon.config import load_config

    path = _under(root, target.config_file)
    config = load_config(path if path.exists() else None, target.service_environ, "the default location")
    if root == Path("/"):
        return config

    def seen(p: Path | None) -> Path | None:
        return Path("/") / p.relative_to(root) if p is not None and p.is_relative_to(root) else p

    data_dir = seen(config.paths.data_dir)
    assert data_dir is not None
    return replace(
        config,
        paths=replace(config.paths, data_dir=data_dir),
        syftbox=replace(config.syftbox, dir=seen(config.syftbox.dir)),
        prometheus=replace(config.prometheus, textfile_dir=seen(config.prometheus.textfile_dir)),
        logging=replace(config.logging, file=seen(config.logging.file)),
    )


def written_paths(config: Config) -> tuple[tuple[str, Path], ...]:
    """Each directory the daemon writes under ``config``, with the key that names it."""
    found = [("paths.data_dir", config.paths.data_dir)]
    if config.syftbox.dir is not None:
        found.append(("syftbox.dir", config.syftbox.dir))
    if config.prometheus.textfile_dir is not None:
        found.append(("prometheus.textfile_dir", config.prometheus.textfile_dir))
    if config.logging.file is not None:
        found.append(("logging.file", config.logging.file.parent))
    return tuple(found)


def in_a_home(path: Path) -> Path | None:
    """The home-directory prefix ``path`` is under, or None."""
    return next((home for home in HOMES if path.is_relative_to(home)), None)


def _refuse_homes(target: Target, config: Config) -> None:
    """The system service cannot write in a home: its unit hides them, its user owns none."""
    for name, path in written_paths(config):
        if in_a_home(path) is None:
            continue
        user = SYSTEM_USER if target.manager == "systemd" else LAUNCHD_SYSTEM_USER
        hides = "which its unit hides (ProtectHome=yes) and " if target.manager == "systemd" else ""
        raise ServiceError(
            f"the system service could not write {path} ({name} in {target.config_file}): it is in "
            f"a home directory, {hides}where its own user {user} may not write; a SyftBox folder "
            "in a home belongs to a per-user service: as that folder's owner, without sudo, run "
            "'cpu-tracker service install --user'"
        )


def default_scope(euid: int, environ: Mapping[str, str]) -> str:
    """``user`` for a member; ``system`` for root, except that a member who runs ``sudo
    cpu-tracker service install`` with a SyftBox folder in its home is told to use ``--user``
    (the system service could not write there): ServiceError."""
    if euid != 0:
        return "user"
    member = environ.get("SUDO_USER", "")
    if not member or member == "root":
        return "system"
    import pwd  # only as root under sudo

    try:
        home = Path(pwd.getpwnam(member).pw_dir)
        config = service_config(Target("systemd", "user", DEFAULT_EXECUTABLE, home, {}), Path("/"))
    except (KeyError, CpuTrackerError):  # no such user, or a config its own service would refuse
        return "system"
    folder = config.syftbox.dir
    if folder is not None and in_a_home(folder) is not None:
        raise ServiceError(
            f"{member}'s SyftBox folder {folder} is in a home directory, where the system service "
            f"may not write (its unit hides homes: ProtectHome=yes); as {member}, without sudo, run "
            "'cpu-tracker service install --user' (or pass --system to install the system unit anyway)"
        )
    return "system"


def plan_install(target: Target, root: Path, uid: int, force: bool = False) -> Plan:
    config = service_config(target, root)
    if target.scope == "system":
        _refuse_homes(target, config)
    elif target.manager == "systemd":
        target = dataclasses.replace(
            target, writable=tuple(dict.fromkeys(path for _, path in written_paths(config)))
        )
    if target.manager == "systemd" and target.scope == "system":
        hidden = hidden_from_service(target.executable, root)
        if hidden and not force:
            path, prefix, hiding, opening = hidden[0]
            raise ServiceError(
                f"the system service could not start {path}: it is under {prefix}, which its unit "
                f"hides ({hiding}), and the service's own user may not enter it either (systemd "
                "would fail with 203/EXEC); install into /opt/cpu-tracker with a system python as "
                "docs/service.md shows and pass --executable /opt/cpu-tracker/bin/cpu-tracker, or pass "
                f"--force to write the unit with {opening} (the {SYSTEM_USER} user must then be "
                "able to read that path)"
            )
        opened = tuple(dict.fromkeys(opening for _, _, _, opening in hidden))
        if opened:
            target = dataclasses.replace(target, opened=opened)
    directories: list[tuple[Path, int, str | None]] = [
        (_under(root, target.directories["CONFIGURATION_DIRECTORY"]), 0o755, None)
    ]
    if target.writable:  # ReadWritePaths= must exist when the unit starts
        directories += [(_under(root, path), 0o700, None) for path in target.writable]
    if target.manager == "launchd":
        owner = LAUNCHD_SYSTEM_USER if target.scope == "system" else None
        directories += [
            (_under(root, target.directories["STATE_DIRECTORY"]), 0o700, owner),
            (_under(root, target.directories["LOGS_DIRECTORY"]), 0o700, owner),
        ]
    sysusers = None
    if target.manager == "systemd" and target.scope == "system":
        sysusers = _under(root, Path("/etc/sysusers.d") / f"{APP_NAME}.conf")
    return Plan(
        definition=_under(root, target.definition),
        text=render(target),
        directories=tuple(directories),
        sysusers=sysusers,
        next_command=target.next_command(uid),
    )


SYSUSERS_LINE = f'u {SYSTEM_USER} - "cpu-tracker daemon" /var/lib/{APP_NAME}\n'


def install(plan: Plan, root: Path, force: bool, run_sysusers: bool = True) -> None:
    """Write the definition and create the directories it names; refuse to overwrite without force."""
    existing = [p for p in (plan.definition, plan.sysusers) if p is not None and p.exists()]
    changed = [p for p in existing if _read(p) != _content(plan, p)]
    if changed and not force:
        raise ServiceError(
            f"{changed[0]} already exists and differs; compare it with 'service print' "
            "and pass --force to replace it"
        )
    try:
        for directory, mode, owner in plan.directories:
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            if owner is not None:
                _give(directory, owner)
        for path in (plan.definition, plan.sysusers):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                storage.atomic_write(path, _content(plan, path).encode(), 0o644)
    except OutputError as exc:
        raise ServiceError(
            f"cannot write {exc.path} ({exc.reason}); run with the rights to write there"
        ) from None
    except OSError as exc:
        raise ServiceError(
            f"cannot write {exc.filename}: {exc.strerror}; run with the rights to write there"
        ) from None
    if plan.sysusers is not None and run_sysusers:
        _make_system_user(root, plan.sysusers)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror}; run with the rights to read it") from None


def _give(directory: Path, owner: str) -> None:
    try:
        import shutil

        shutil.chown(directory, user=owner)
    except LookupError:
        raise ServiceError(f"there is no user {owner} to own {directory}; create it first") from None


def _content(plan: Plan, path: Path) -> str:
    return plan.text if path == plan.definition else SYSUSERS_LINE


def _make_system_user(root: Path, conf: Path) -> None:
    import shutil
    import subprocess

    tool = shutil.which("systemd-sysusers")
    if tool is None:
        raise ServiceError(
            f"systemd-sysusers is missing, so the {SYSTEM_USER} account was not made; "
            f"create a system user {SYSTEM_USER} by hand"
        )
    args = [tool, *(["--root", str(root)] if root != Path("/") else []), str(conf)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ServiceError(f"systemd-sysusers could not create the {SYSTEM_USER} account ({detail})")


def uninstall(target: Target, root: Path, force: bool, text: str) -> Path:
    """Remove the definition if it is ours; the state, config and logs stay (they hold the ledger)."""
    path = _under(root, target.definition)
    if not path.exists():
        raise ServiceError(f"{path} does not exist; nothing to uninstall")
    if _read(path) != text and not force:
        raise ServiceError(f"{path} was changed since it was installed; pass --force to remove it anyway")
    try:
        path.unlink()
    except OSError as exc:
        raise ServiceError(
            f"cannot remove {path}: {exc.strerror}; run with the rights to remove it"
        ) from None
    return path
