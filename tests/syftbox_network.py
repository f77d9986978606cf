"""A real SyftBox network on 127.0.0.1: PyPI's ``syftbox`` 0.4 server and sync clients.

The SyftBox packages live in their own venv (``.venv-syftbox`` beside ours, made on first use),
so their pins never touch ours. The server runs with authentication in its development mode
(``auth_enabled`` false): ``/auth/request_email_token`` returns the email token, which
``/auth/validate_email_token`` turns into an access token. Each client runs as
``syftbox client --service``, configured by environment alone, with its own sync folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-syftbox"
# syftbox 0.4.0's typer breaks on click 8.2 (make_metavar's new ctx argument).
PACKAGES = ("syftbox==0.4.0", "click<8.2")
HOST = "127.0.0.1"


def install() -> Path:
    """The SyftBox venv's bin directory, installing it when missing; raise RuntimeError why not."""
    bin_dir = VENV / "bin"
    marker = VENV / "installed.json"
    if marker.exists() and json.loads(marker.read_text()) == list(PACKAGES):
        return bin_dir
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise RuntimeError(f"cannot install {' '.join(PACKAGES)}: {str(detail).strip()[-300:]}") from None
    marker.write_text(json.dumps(list(PACKAGES)))
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def _post(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"), timeout=10) as r:
        return dict(json.loads(r.read()))


@dataclass
class Client:
    email: str
    home: Path
    proc: subprocess.Popen[bytes]

    @property
    def box(self) -> Path:
        """The sync folder (what ``[syftbox] dir`` points at)."""
        return self.home / "SyftBox"

    @property
    def config_path(self) -> Path:
        return self.home / "config.json"

    def datasite(self, email: str | None = None) -> Path:
        return self.box / "datasites" / (email or self.email)


@dataclass
class Network:
    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def server_data(self) -> Path:
        return self.root / "server" / "data"

    def start_server(self) -> None:
        work = self.root / "server"
        work.mkdir(parents=True)
        env = {**_clean_env(), "SYFTBOX_DATA_FOLDER": str(self.server_data), "SYFTBOX_AUTH_ENABLED": "false"}
        self.server = subprocess.Popen(
            [
                str(self.bin_dir / "uvicorn"),
                "syftbox.server.server:app",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            cwd=work,
            env=env,
            stdout=(work / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until("the SyftBox server answers", self._answers, timeout=60)

    def _answers(self) -> bool:
        assert self.server is not None
        if self.server.poll() is not None:
            raise AssertionError(
                f"the SyftBox server exited: {(self.root / 'server/server.log').read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/info", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def access_token(self, email: str) -> str:
        email_token = _post(f"{self.url}/auth/request_email_token", {"email": email})["email_token"]
        validated = _post(f"{self.url}/auth/validate_email_token?email={email}", token=email_token)
        return str(validated["access_token"])

    def add_client(self, email: str) -> Client:
        home = self.root / email
        home.mkdir(parents=True)
        env = {
            **_clean_env(),
            "HOME": str(home),
            "SYFTBOX_EMAIL": email,
            "SYFTBOX_ACCESS_TOKEN": self.access_token(email),
            "SYFTBOX_DATA_DIR": str(home / "SyftBox"),
            "SYFTBOX_SERVER_URL": self.url,
            "SYFTBOX_CLIENT_CONFIG_PATH": str(home / "config.json"),
            "SYFTBOX_PORT": str(free_port()),
        }
        proc = subprocess.Popen(
            [str(self.bin_dir / "syftbox"), "client", "--service"],
            cwd=home,
            env=env,
            stdout=(home / "client.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        client = Client(email, home, proc)
        self.clients[email] = client
        return client

    def wait_ready(self) -> None:
        """Until every client has its datasite and sees every other one's (a first sync each way)."""
        for client in self.clients.values():
            for other in self.clients:
                wait_until(
                    f"{client.email} syncs {other}'s datasite",
                    lambda c=client, o=other: (c.datasite(o) / "public").is_dir(),
                    timeout=60,
                )

    def server_files(self) -> list[Path]:
        return [p for p in self.server_data.rglob("*") if p.is_file()]

    def stop(self) -> None:
        procs = [c.proc for c in self.clients.values()] + ([self.server] if self.server else [])
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}
