"""A real systemd booted in a container, for the service tests.

``debootstrap`` builds a minimal Debian root once and caches it; each test run boots a
throw-away copy with ``systemd-nspawn --ephemeral --boot`` and runs commands inside with
``nsenter``. Nothing here needs systemd on the host (no machined, no D-Bus).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
# libpam-systemd and dbus-user-session: a user's own systemd --user instance (linger), for the user unit.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-venv",
    "libpam-systemd",
    "dbus-user-session",
)
CACHE = Path(os.environ.get("CPU_TRACKER_TEST_CACHE", "/var/cache/cpu-tracker-test"))
MIRROR = os.environ.get("CPU_TRACKER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REQUIRE_ENV = "CPU_TRACKER_REQUIRE_CONTAINER"
_ROOT_VERSION = "3"  # bump when PACKAGES change, so a stale cached root is rebuilt


def unavailable() -> str | None:
    """Why this machine cannot boot the container, or None if it can."""
    if sys.platform != "linux":
        return "a systemd container needs Linux"
    if os.geteuid() != 0:
        return "booting a systemd container needs root"
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages systemd-container, debootstrap)"
    return None


def cached_root() -> Path:
    """The debootstrapped root, built once (about 80 s) and reused; built aside, then renamed."""
    root = CACHE / f"{SUITE}-v{_ROOT_VERSION}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f".{root.name}.{os.getpid()}.building"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    (building / ".complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


def build_wheels(checkout: Path, out: Path) -> None:
    """The package's wheel from the checkout, plus every dependency's wheel (cached by pip)."""
    own = out / "own"
    deps = CACHE / "wheels"
    for directory in (own, deps):
        directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(own), str(checkout)], check=True, timeout=600
    )
    wheel = next(own.glob("cpu_tracker_daemon-*.whl"))
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "--dest", str(deps), str(wheel)], check=True, timeout=1200
    )
    for extra in deps.glob("cpu_tracker_daemon-*.whl"):
        extra.unlink()


@dataclass
class Machine:
    """A booted container: ``run`` executes a command in it as root."""

    process: subprocess.Popen[bytes]
    init_pid: int

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        done = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wd", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, check=check, timeout=timeout)

    def wait_until(self, script: str, timeout: float, what: str) -> str:
        """Run ``script`` until it exits 0; return its stdout."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.sh(script, check=False)
            if done.returncode == 0:
                return done.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {done.stdout}{done.stderr}")
            time.sleep(0.5)

    def shutdown(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # nspawn turns SIGTERM into an orderly poweroff of the container
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                tree.setdefault(int(line.split()[1]), []).append(int(entry.name))
    return tree


def _init_of(nspawn_pid: int) -> int | None:
    """The container's PID 1 (as the host numbers it): a descendant of nspawn whose NSpid ends in 1."""
    tree = _children()
    pending = list(tree.get(nspawn_pid, []))
    while pending:
        pid = pending.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) >= 2 and nspid[-1] == "1":
            return pid
        pending.extend(tree.get(pid, []))
    return None


def boot(root: Path, name: str, binds: Sequence[tuple[Path, str]], log: Path) -> Machine:
    """Boot a throw-away copy of ``root`` and wait until its systemd reports it is up."""
    args = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={root}",
        "--ephemeral",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--machine={name}",
        "--console=pipe",
        *[f"--bind-ro={host}:{inside}" for host, inside in binds],
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    init = None
    while init is None:
        if process.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn exited {process.returncode}: {log.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the container's systemd did not start within 60 s")
        time.sleep(0.2)
        init = _init_of(process.pid)
    machine = Machine(process, init)
    try:
        # Until systemd has exec'd and opened its socket, systemctl cannot connect: retry.
        deadline = time.monotonic() + 180
        while True:
            done = machine.run("systemctl", "is-system-running", "--wait", check=False, timeout=180)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the container's systemd is {state!r}: {done.stderr.strip()}")
            time.sleep(0.5)
    except BaseException:
        machine.shutdown()
        raise
    return machine
