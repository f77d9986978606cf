"""The aggregation pass over a real tree: estimate, outputs, hostile peers, history, the daemon's job."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cpu_tracker_daemon.cli.main import main
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.errors import EXIT_CONFIG
from cpu_tracker_daemon.logs import get_logger
from cpu_tracker_daemon.network.aggregate import (
    AGGREGATE_NAME,
    DASHBOARD_NAME,
    HISTORY_NAME,
    REREAD_PAUSE_SECONDS,
    Aggregator,
    output_dir,
)
from cpu_tracker_daemon.network.estimate import CLIP_SIGMAS
from cpu_tracker_daemon.network.peers import release_path
from tests.conftest import log_events, run_cli, start_cli, write_config

AGGREGATOR = "aggregator@openmined.org"
MEMBERS = [f"member{n}@example.org" for n in range(5)]


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """What the test's aggregators log (each event a dict with its ``log_level``); none of it
    reaches a handler."""
    with capture_logs() as captured:
        yield captured


@pytest.fixture(scope="module")
def member_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SyftBox tree with five releases written by the member code itself."""
    root = tmp_path_factory.mktemp("tree")
    sb = root / "SyftBox"
    for email in MEMBERS:
        home = root / email
        home.mkdir()
        config = write_config(home, {"syftbox": {"dir": str(sb), "email": email}})
        assert main(["--config", str(config), "once"]) == 0
    return sb


@pytest.fixture
def tree(member_tree: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "SyftBox"
    shutil.copytree(member_tree, copy, symlinks=True)
    return copy


def aggregator_config(tmp_path: Path, sb: Path, **aggregator: Any) -> Path:
    return write_config(
        tmp_path,
        {"syftbox": {"dir": str(sb), "email": AGGREGATOR}, "aggregator": {"enabled": True, **aggregator}},
        name="aggregator.toml",
    )


def run_pass(tmp_path: Path, sb: Path, **aggregator: Any) -> dict[str, Any]:
    config = load_config(aggregator_config(tmp_path, sb, **aggregator))
    return Aggregator(config, get_logger()).run_pass().record


def spoil(sb: Path) -> None:
    """Add peers whose files are hostile in different ways."""
    datasites = sb / "datasites"
    bad = {
        "nan@example.org": b'{"cpu": NaN}',
        "huge@example.org": b" " * 100_000,
        "poison@example.org": None,
        "future@example.org": None,
    }
    good = json.loads(release_path(datasites, MEMBERS[0]).read_text())
    for peer, raw in bad.items():
        path = release_path(datasites, peer)
        path.parent.mkdir(parents=True)
        doc = dict(good)
        if peer.startswith("poison"):
            doc["cpu"] = 1e15
        else:
            doc["timestamp"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    (datasites / "not a peer").mkdir()


@pytest.mark.usefixtures("logs")
class TestPass:
    @pytest.mark.slow
    def test_estimate_from_real_member_releases(self, tree: Path, tmp_path: Path) -> None:
        """Five members' releases give an estimate from five peers with a 95% interval around the mean."""
        record = run_pass(tmp_path, tree)
        est = record["estimate"]
        docs = [json.loads(release_path(tree / "datasites", m).read_text()) for m in MEMBERS]
        reach = [CLIP_SIGMAS * d["privacy"]["noise_stddev"] for d in docs]  # each clipped to its own reach
        values = [min(max(d["cpu"], -r), 100 + r) for d, r in zip(docs, reach, strict=True)]
        assert est["peers"] == 5
        assert est["mean"] == pytest.approx(sum(values) / 5)
        assert est["ci95"][0] < est["mean"] < est["ci95"][1]
        assert record["skipped"] == {}

    def test_hostile_peers_are_skipped_and_change_nothing(
        self, tree: Path, tmp_path: Path, logs: list[MutableMapping[str, Any]]
    ) -> None:
        """Bad peer files are counted by reason, and the estimate is exactly what it was without them."""
        clean = run_pass(tmp_path, tree)
        spoil(tree)
        spoiled = run_pass(tmp_path, tree)
        assert spoiled["estimate"]["mean"] == clean["estimate"]["mean"]
        assert spoiled["estimate"]["peers"] == 5
        assert spoiled["skipped"] == {
            "bad peer name": 1,
            "cpu implausibly far out of range": 1,
            "no release": 1,
            "not UTF-8 JSON": 1,
            "timestamp in the future": 1,
            "too large": 1,
        }
        warned = [(e["peer"], e["reason"]) for e in logs if e["event"] == "peer.skipped"]
        assert len(warned) == len(set(warned)) == 5

    def test_the_trees_own_files_are_not_peers(
        self, tree: Path, tmp_path: Path, logs: list[MutableMapping[str, Any]]
    ) -> None:
        """SyftBox's ``_.syftignore`` and any other file beside the datasites are not peers, and a
        datasite without our app is counted as having no release but not warned about."""
        datasites = tree / "datasites"
        (datasites / "_.syftignore").write_text("*.tmp\n")
        (datasites / "notes.txt").write_text("x")
        (datasites / "bystander@example.org" / "public").mkdir(parents=True)
        record = run_pass(tmp_path, tree)
        assert record["estimate"]["peers"] == 5
        assert record["skipped"] == {"no release": 1}
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == []

    def test_a_release_being_written_is_read_again_once(self, tree: Path, tmp_path: Path) -> None:
        """The 0.4 client writes a received file in place: those found empty or cut short are read
        again once, after one pause for the whole pass, before they are skipped."""
        datasites = tree / "datasites"
        whole = release_path(datasites, MEMBERS[0]).read_bytes()
        release_path(datasites, MEMBERS[0]).write_bytes(whole[: len(whole) // 2])
        release_path(datasites, MEMBERS[1]).write_bytes(b"")
        pauses: list[float] = []

        def pause(seconds: float) -> None:  # the client finishes one file while we wait
            pauses.append(seconds)
            release_path(datasites, MEMBERS[0]).write_bytes(whole)

        config = load_config(aggregator_config(tmp_path, tree))
        result = Aggregator(config, get_logger(), sleep=pause).run_pass()
        assert result.estimate is not None
        assert result.estimate.peers == 4
        assert result.skipped == {"not UTF-8 JSON": 1}
        assert pauses == [REREAD_PAUSE_SECONDS]

    @pytest.mark.slow
    def test_each_problem_is_logged_once(
        self, tree: Path, tmp_path: Path, logs: list[MutableMapping[str, Any]]
    ) -> None:
        """A second pass over the same bad files logs nothing new."""
        spoil(tree)
        config = load_config(aggregator_config(tmp_path, tree))
        aggregator = Aggregator(config, get_logger())
        aggregator.run_pass()
        first = len(logs)
        aggregator.run_pass()
        assert len(logs) == first

    def test_outputs_are_public_and_name_no_peer(self, tree: Path, tmp_path: Path) -> None:
        """aggregate.json, history.json and index.html are public-read and mention no member."""
        run_pass(tmp_path, tree)
        out = output_dir(load_config(aggregator_config(tmp_path, tree)))
        assert 'read: ["*"]' in (out / "syft.pub.yaml").read_text()
        for name in (AGGREGATE_NAME, HISTORY_NAME, DASHBOARD_NAME):
            text = (out / name).read_text()
            assert all(member not in text for member in MEMBERS), name
            assert (out / name).stat().st_mode & 0o777 == 0o644
        assert not list(out.glob("*.tmp"))

    def test_publish_peers_is_an_opt_in(self, tree: Path, tmp_path: Path) -> None:
        """With publish_peers the aggregate lists the peers and their values."""
        record = run_pass(tmp_path, tree, publish_peers=True)
        assert sorted(p["peer"] for p in record["peers"]) == MEMBERS

    def test_history_is_bounded_and_a_damaged_one_set_aside(self, tree: Path, tmp_path: Path) -> None:
        """history.json keeps the last history_length passes; an unreadable one is moved aside, not lost."""
        for _ in range(5):
            run_pass(tmp_path, tree, history_length=3)
        out = output_dir(load_config(aggregator_config(tmp_path, tree)))
        assert len(json.loads((out / HISTORY_NAME).read_text())["entries"]) == 3
        (out / HISTORY_NAME).write_text("{broken")
        run_pass(tmp_path, tree, history_length=3)
        assert len(json.loads((out / HISTORY_NAME).read_text())["entries"]) == 1
        assert [p.read_text() for p in out.glob(f"{HISTORY_NAME}.damaged-*")] == ["{broken"]

    def test_no_peers_at_all(self, tmp_path: Path) -> None:
        """An empty tree gives an aggregate with no estimate, not an error."""
        (tmp_path / "SyftBox" / "datasites").mkdir(parents=True)
        assert run_pass(tmp_path, tmp_path / "SyftBox")["estimate"] is None


class TestCommand:
    def test_aggregate_json(self, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`cpu-tracker aggregate --json` prints only the record on stdout."""
        config = aggregator_config(tmp_path, tree)
        assert main(["--config", str(config), "aggregate", "--json"]) == 0
        est = json.loads(capsys.readouterr().out)["estimate"]
        assert est["peers"] == 5
        # five members at the defaults' noise: +-248 points, too wide to read, and it says so
        assert est["informative"] is False
        assert 0.0 <= est["reading"]["ci95"][0] <= est["reading"]["ci95"][1] <= 100.0
        assert est["reading"]["members_for_target"] > 5

    def test_aggregate_needs_a_syftbox_tree(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Without [syftbox] there are no peers to read: exit 3 with one line."""
        assert main(["--config", str(write_config(tmp_path)), "aggregate"]) == EXIT_CONFIG
        assert "syftbox" in capsys.readouterr().err

    @pytest.mark.slow
    def test_daemon_runs_the_aggregator_on_its_own_schedule(self, tree: Path, tmp_path: Path) -> None:
        """With [aggregator] enabled the daemon releases and aggregates, each on its own job."""
        config = aggregator_config(tmp_path, tree, every_seconds=0.5)
        proc = start_cli("--config", str(config), "run")
        seen: list[dict[str, Any]] = []
        assert proc.stdout is not None
        while not any(e.get("event") == "aggregate.finished" for e in seen):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            seen.extend(log_events(line))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        assert proc.returncode == 0
        finished = next(e for e in seen if e.get("event") == "aggregate.finished")
        assert finished["peers"] >= 5
        assert (output_dir(load_config(config)) / DASHBOARD_NAME).exists()


class TestWhatTheCommandSays:
    """``cpu-tracker aggregate`` as a person runs it: the real command in a subprocess."""

    @pytest.mark.slow
    def test_a_secure_only_network_leads_with_the_rounds_estimate(self, tmp_path: Path) -> None:
        """It started with `No valid peer releases; skipped: {'no release': 101}` while the
        round's estimate came last: a person would think the network broken. The first line is
        now the secure round's estimate, its exact interval, its members and its window."""
        from tests.test_dashboard import secure_network

        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        ran: list[subprocess.CompletedProcess[str]] = []
        config = secure_network(
            tmp_path,
            start=hour,
            aggregate=lambda path, at: ran.append(run_cli("--config", str(path), "aggregate")),
        )
        assert [r.returncode for r in ran] == [0, 0], ran[-1].stderr
        record = json.loads((output_dir(load_config(config)) / AGGREGATE_NAME).read_text())
        reading = record["secure"]["estimate"]["reading"]
        first, second, third = ran[-1].stdout.splitlines()
        low, high = reading["ci95"]
        last = hour + timedelta(hours=1)  # the second round's window
        assert first.startswith(
            f"network CPU: {reading['mean']:.1f}% (exact 95% interval {low:.1f}% to {high:.1f}%), secure "
            f"round of 100 members, their 50 s window from {last:%H:%M} UTC on {last.day} {last:%b %Y}"
        ), first
        assert second == "members' own releases: none valid"
        assert third.startswith("skipped: no release (101); wrote ")

    @pytest.mark.slow
    def test_one_peer_is_one_peer(self, tmp_path: Path) -> None:
        """It said "from 1 peers": a count is said with its noun in the singular or the plural."""
        sb = tmp_path / "SyftBox"
        home = tmp_path / "m0"
        home.mkdir()
        member = write_config(home, {"syftbox": {"dir": str(sb), "email": MEMBERS[0]}})
        assert run_cli("--config", str(member), "once").returncode == 0
        done = run_cli("--config", str(aggregator_config(tmp_path, sb)), "aggregate")
        assert done.returncode == 0, done.stderr
        first = done.stdout.splitlines()[0]
        assert first.startswith("network CPU: Too uncertain to read (With 1 member the noise"), first
        assert first.endswith(" from 1 peer"), first


@pytest.mark.slow
@pytest.mark.usefixtures("logs")
def test_a_pass_keeps_a_few_dozen_bytes_a_peer(member_tree: Path, tmp_path: Path) -> None:
    """The pass streams the peers and keeps only the estimator's doubles: between 400 and 2,400
    peers its peak traced memory grows by under 200 bytes a peer (it kept a release object and
    six lists of floats a peer before: about 700)."""
    import tracemalloc

    from cpu_tracker_daemon.network.peers import release_path

    release = release_path(member_tree / "datasites", MEMBERS[0]).read_bytes()
    peaks = {}
    for peers in (400, 2400):
        sb = tmp_path / str(peers)
        for n in range(peers):
            path = release_path(sb / "datasites", f"p{n}@example.org")
            path.parent.mkdir(parents=True)
            path.write_bytes(release)
        config = load_config(aggregator_config(tmp_path / str(peers), sb))
        Aggregator(config, get_logger()).run_pass()  # the first pass creates the outputs
        tracemalloc.start()
        result = Aggregator(config, get_logger()).run_pass()
        peaks[peers] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.estimate is not None
        assert result.estimate.peers == peers
    assert (peaks[2400] - peaks[400]) / 2000 < 200, peaks
