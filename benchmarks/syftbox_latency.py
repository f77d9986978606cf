"""Delivery latency on a real SyftBox network: PyPI's syftbox 0.4 server and clients on 127.0.0.1.

    python benchmarks/syftbox_latency.py [--releases 10] [--requests 3]

One member releases ``--releases`` times (``once``, 1 s apart); each time, the seconds from
``once`` returning to the release being readable in the aggregator's sync folder. Then the
aggregator sends ``--requests`` budget requests; the seconds until each is readable at the member,
and from ``budget approve`` returning until the answer is readable back at the aggregator. The
SyftBox packages are installed in ``.venv-syftbox`` (tests/syftbox_network.py) on first use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu_tracker_daemon.budget.caps import requests as budget_requests  # noqa: E402
from cpu_tracker_daemon.storage import read_json  # noqa: E402
from tests.conftest import render_toml  # noqa: E402
from tests.syftbox_network import Client, Network, install, wait_until  # noqa: E402

MEMBER = "member@example.org"
AGGREGATOR = "agg@example.org"
RELEASE = Path("app_data") / "cpu_tracker" / "cpu_tracker.json"
ENDPOINT = Path("app_data") / "cpu_tracker" / "rpc" / "budget"


def cli(config: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cpu_tracker_daemon", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"cpu-tracker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")


def release_id(path: Path) -> Any:
    return (read_json(path) or {}).get("release_id")


def row(name: str, values: list[float]) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"| {name} | {len(values)} | {low:.2f} | {mid:.2f} | {high:.2f} |"


def member_config(tmp: Path, member: Client) -> Path:
    config = tmp / "member.toml"
    tables = {
        "paths": {"data_dir": str(tmp / "state")},
        "sampling": {"samples": 5, "interval_seconds": 0.02},
        "schedule": {"every_seconds": 1},
        "budget": {"lifetime_epsilon": 1000, "window_epsilon": 1000},
        "syftbox": {"dir": str(member.box), "email": MEMBER, "readers": [AGGREGATOR]},
    }
    config.write_text(render_toml(tables))
    return config


def release_latencies(member: Client, agg: Client, config: Path, count: int) -> list[float]:
    out: list[float] = []
    arrived = agg.datasite(MEMBER) / RELEASE
    for _ in range(count):
        time.sleep(1.05)  # the cooldown
        cli(config, "once")
        done = time.monotonic()
        mine = read_json(member.datasite() / RELEASE)
        assert mine is not None
        want = mine["release_id"]
        wait_until("a release at the aggregator", lambda w=want: release_id(arrived) == w, every=0.02)
        out.append(time.monotonic() - done)
    return out


def request_latencies(
    member: Client, agg: Client, config: Path, count: int
) -> tuple[list[float], list[float]]:
    there: list[float] = []
    back: list[float] = []
    url = f"syft://{MEMBER}/{ENDPOINT.as_posix()}"
    outbox = agg.datasite(MEMBER) / ENDPOINT / AGGREGATOR
    outbox.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        request_id = f"bench-{n:04d}"
        now = datetime.now(UTC)
        message = budget_requests.request_message(
            request_id, AGGREGATOR, url, "lifetime", 1.0 + n, "benchmark", now, now + timedelta(hours=1)
        )
        (outbox / f"{request_id}.request").write_text(json.dumps(message))
        sent = time.monotonic()
        inbox = member.datasite() / ENDPOINT / AGGREGATOR / f"{request_id}.request"
        wait_until("a request at the member", lambda p=inbox: read_json(p), every=0.02)
        there.append(time.monotonic() - sent)
        cli(config, "budget", "requests")
        cli(config, "budget", "approve", request_id)
        answered = time.monotonic()
        answer = outbox / f"{request_id}.response"
        wait_until("the answer at the aggregator", lambda p=answer: read_json(p), every=0.02)
        back.append(time.monotonic() - answered)
    return there, back


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(install(), Path(tmp))
        try:
            net.start_server()
            member, agg = net.add_client(MEMBER), net.add_client(AGGREGATOR)
            net.wait_ready()
            config = member_config(Path(tmp), member)
            releases = release_latencies(member, agg, config, args.releases)
            there, back = request_latencies(member, agg, config, args.requests)
        finally:
            net.stop()
    print("syftbox 0.4.0 server and 2 clients on 127.0.0.1 (sync every 1 s); seconds:\n")
    print("| path | n | min | median | max |")
    print("| --- | --- | --- | --- | --- |")
    print(row("release: `once` returned -> readable at the aggregator", releases))
    print(row("request: written -> readable at the member", there))
    print(row("answer: `approve` returned -> readable at the aggregator", back))
    print(f"\n(whole run, with the network's start: {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
