"""cpu-tracker over PySyft 0.10 (PyPI's ``syft``): a member, an aggregator and an outsider, each a
real syft client syncing over syft's own in-process Google Drive (``MockDriveService``).

The member is a data owner that approved both others as peers; the aggregator and the outsider
are data scientists. Our CLI runs on top of each one's syft folder exactly as a user's would, and
every check reads what syft's own sync let through. Where ``syft`` is not installed the module
skips and says why; in CI (``CPU_TRACKER_REQUIRE_SYFTBOX=1``) that skip is a failure.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cpu_tracker_daemon import layout, storage
from cpu_tracker_daemon.budget import requests as budget_requests
from cpu_tracker_daemon.config import parse_config
from cpu_tracker_daemon.storage import read_json
from tests import pysyft_network
from tests.conftest import before_os_call, run_cli, write_config

try:
    import syft  # noqa: F401 - only to know it is there
except ImportError:
    if os.environ.get("CPU_TRACKER_REQUIRE_SYFTBOX") == "1":
        raise
    pytest.skip(f"syft is not installed (pip install {pysyft_network.PACKAGE})", allow_module_level=True)

from tests.pysyft_network import Network, Peer

MEMBER = "m1@example.org"
AGGREGATOR = "agg@example.org"
OUTSIDER = "eve@example.org"
APP = Path("app_data") / "cpu_tracker"
RELEASE = APP / "cpu_tracker.json"
ENDPOINT = APP / "rpc" / "budget"


@pytest.fixture
def network(tmp_path: Path) -> Network:
    """A member (data owner) that approved the aggregator and the outsider (data scientists)."""
    net = Network(tmp_path / "syft")
    member = net.add(MEMBER, owner=True)
    for email in (AGGREGATOR, OUTSIDER):
        net.approve(net.add(email, scientist=True), member)
    return net


def member_config(tmp_path: Path, net: Network, **syftbox: Any) -> Path:
    """The member's config: its syft folder, the aggregator as its only reader."""
    table = {"dir": str(net.peers[MEMBER].folder), "email": MEMBER, "readers": [AGGREGATOR], **syftbox}
    (tmp_path / "member").mkdir(exist_ok=True)
    return write_config(tmp_path / "member", {"syftbox": table})


def is_temp(path: Path) -> bool:
    return path.name.endswith(".tmp") or path.name.startswith(".write-probe")


def temp_files(peer: Peer) -> list[Path]:
    """The temp files in ``peer``'s folder."""
    return [p for p in peer.files() if is_temp(p)]


def uploaded_temp_files(peer: Peer) -> list[Path]:
    """The temp files a data owner's sync found in its datasite and uploaded to its Drive, as its
    own log of the events it sent says."""
    events = peer.manager.datasite_owner_syncer.event_cache.get_cached_events()
    return [Path(e.path_in_datasite) for e in events if is_temp(Path(e.path_in_datasite))]


def sync_in_the_middle(monkeypatch: pytest.MonkeyPatch, name: str, net: Network) -> list[list[Path]]:
    """Before each call of ``os.<name>`` by our storage module (and only by it: syft's own calls
    are left alone), sync everyone and note the temp files the member uploaded and those the
    aggregator received: what a sync that runs while a write is half done ships. Returns those
    notes, one list a call, for the test to check that the sync ran."""
    seen: list[list[Path]] = []

    def sync(*_: Any) -> None:
        net.sync()
        seen.append(uploaded_temp_files(net.peers[MEMBER]) + temp_files(net.peers[AGGREGATOR]))

    before_os_call(monkeypatch, storage, name, sync)
    return seen


class TestLayout:
    def test_syfts_folder_is_detected(self, network: Network) -> None:
        """A folder syft logged into is PySyft's: datasites at its top, no ``datasites/`` level."""
        folder = network.peers[MEMBER].folder
        assert layout.engine(folder) == layout.PYSYFT
        assert folder / MEMBER / RELEASE == layout.app_dir(folder, MEMBER) / layout.PUBLIC_NAME

    @pytest.mark.slow
    def test_a_release_is_written_into_the_datasite(self, network: Network, tmp_path: Path) -> None:
        """``once`` on the member's syft folder writes ``<folder>/<email>/app_data/...``, and the
        raw value outside every datasite."""
        done = run_cli("--config", str(member_config(tmp_path, network)), "once")
        assert done.returncode == 0, done.stderr
        folder = network.peers[MEMBER].folder
        assert (folder / MEMBER / RELEASE).is_file()
        assert not (folder / "datasites").exists()
        assert (folder / "private" / "cpu_tracker" / "cpu_tracker.json").is_file()


class TestReleases:
    @pytest.fixture
    def released(self, network: Network, tmp_path: Path) -> dict[str, Any]:
        done = run_cli("--config", str(member_config(tmp_path, network)), "once")
        assert done.returncode == 0, done.stderr
        network.sync()
        mine = read_json(network.peers[MEMBER].datasite() / RELEASE)
        assert mine is not None
        return mine

    @pytest.mark.slow
    def test_the_release_reaches_the_aggregator(self, network: Network, released: dict[str, Any]) -> None:
        """After one sync the aggregator's folder holds the member's release, byte for byte."""
        member = network.peers[MEMBER].datasite() / RELEASE
        arrived = network.peers[AGGREGATOR].datasite(MEMBER) / RELEASE
        assert member.read_bytes() == arrived.read_bytes()

    @pytest.mark.slow
    def test_the_outsider_never_gets_it(self, network: Network, released: dict[str, Any]) -> None:
        """The outsider is an approved peer but not a reader: syft's sync sends it nothing of the
        member's app folder, however many syncs run."""
        network.sync()
        network.sync()
        outsider = network.peers[OUTSIDER]
        assert [p for p in outsider.files() if p.parts[0] == MEMBER] == []

    @pytest.mark.slow
    def test_nothing_private_reaches_anyone(self, network: Network, released: dict[str, Any]) -> None:
        """Nothing from the member's private folder, and no file holding the raw value, is in
        any other folder."""
        for email in (AGGREGATOR, OUTSIDER):
            peer = network.peers[email]
            for path in peer.files():
                assert "private" not in path.parts, path
                if path.suffix == ".json":
                    assert "cpu_raw" not in (peer.folder / path).read_text(errors="replace"), path


def member_layout(net: Network) -> storage.Layout:
    """The member's layout, with its release folder and that folder's permission files made, and
    synced once, as after its first release."""
    from cpu_tracker_daemon import permissions

    member = net.peers[MEMBER]
    config = parse_config({"syftbox": {"dir": str(member.folder), "email": MEMBER, "readers": [AGGREGATOR]}})
    where = storage.layout_for(config)
    storage.ensure_dir(where.public_dir, where.root)
    permissions.ensure(where.public_dir, permissions.release_folder(MEMBER, [AGGREGATOR]), where.root)
    net.sync()
    return where


class TestNothingTemporaryIsScanned:
    def test_a_sync_during_a_write_ships_no_temp_file(
        self, network: Network, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A sync between writing the temp file and renaming it into place finds no temp file in
        the datasite: none is uploaded, none reaches the aggregator; the file itself does."""
        where = member_layout(network)
        seen = sync_in_the_middle(monkeypatch, "replace", network)
        storage.write_json(where.public_file, {"release_id": "r-1"}, storage.PUBLIC_FILE_MODE, where.root)
        assert seen == [[]]
        network.sync()
        assert read_json(network.peers[AGGREGATOR].datasite(MEMBER) / RELEASE) == {"release_id": "r-1"}

    def test_checking_the_folders_leaves_nothing_to_scan(
        self, network: Network, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Proving the datasite's folders writable at start puts no probe file where a sync sees it."""
        where = member_layout(network)
        seen = sync_in_the_middle(monkeypatch, "unlink", network)
        storage.prepare(where)
        assert seen
        assert [p for p in seen if p] == []


def aggregator_config(tmp_path: Path, net: Network) -> Path:
    (tmp_path / "aggregator").mkdir(exist_ok=True)
    table = {"dir": str(net.peers[AGGREGATOR].folder), "email": AGGREGATOR}
    return write_config(tmp_path / "aggregator", {"syftbox": table, "aggregator": {"enabled": True}})


class TestAggregate:
    @pytest.mark.slow
    def test_aggregate_counts_the_member(self, network: Network, tmp_path: Path) -> None:
        """``aggregate`` on the aggregator's syft folder counts the member, and takes syft's own
        folders and ours beside the datasites (``.cache``, ``private``) for no peer."""
        assert run_cli("--config", str(member_config(tmp_path, network)), "once").returncode == 0
        network.sync()
        done = run_cli("--config", str(aggregator_config(tmp_path, network)), "aggregate", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["estimate"]["peers"] == 1
        assert "bad peer name" not in result["skipped"]
        folder = network.peers[AGGREGATOR].folder
        assert (folder / AGGREGATOR / "public" / "cpu_tracker" / "aggregate.json").is_file()


def ask(sender: str, request_id: str, folder_of: str | None = None) -> dict[str, Any]:
    """A budget request from ``sender`` (under ``folder_of``'s name, to forge) to the member."""
    now = datetime.now(UTC)
    url = budget_requests.budget_endpoint_url(MEMBER)
    return budget_requests.request_message(
        request_id, folder_of or sender, url, "lifetime", 2.0, "network report", now, now + timedelta(hours=1)
    )


class TestBudgetRequests:
    @pytest.fixture
    def member_cfg(self, network: Network, tmp_path: Path) -> Path:
        """The member after its first release: its endpoint and permission files exist, synced."""
        config = member_config(tmp_path, network)
        assert run_cli("--config", str(config), "once").returncode == 0
        network.sync()
        return config

    def endpoint(self, network: Network, holder: str, reader: str) -> Path:
        return network.peers[holder].datasite(MEMBER) / ENDPOINT / reader

    @pytest.mark.slow
    def test_a_request_and_its_answer_travel(self, network: Network, member_cfg: Path) -> None:
        """The aggregator sends a request through its syft client; the member lists and approves
        it; the answer reaches the aggregator and not the outsider."""
        aggregator = network.peers[AGGREGATOR]
        sent = budget_requests.propose(aggregator.manager, MEMBER, ask(AGGREGATOR, "pysyft-req-0001"))
        assert Path(MEMBER, ENDPOINT, AGGREGATOR, "pysyft-req-0001.request") == sent
        network.sync()
        assert (self.endpoint(network, MEMBER, AGGREGATOR) / "pysyft-req-0001.request").is_file()
        listed = run_cli("--config", str(member_cfg), "budget", "requests")
        assert "pysyft-req-0001" in listed.stdout, listed.stderr
        approved = run_cli("--config", str(member_cfg), "budget", "approve", "pysyft-req-0001")
        assert approved.returncode == 0, approved.stderr
        network.sync()
        response = read_json(self.endpoint(network, AGGREGATOR, AGGREGATOR) / "pysyft-req-0001.response")
        assert response is not None
        assert response["status_code"] == 200
        assert json.loads(base64.b64decode(response["body"]))["decision"] == "approved"
        assert [p for p in network.peers[OUTSIDER].files() if p.name.endswith(".response")] == []

    @pytest.mark.slow
    def test_a_request_written_as_a_plain_file_never_arrives(
        self, network: Network, member_cfg: Path
    ) -> None:
        """A data scientist's own files never travel: written into its copy of the member's
        endpoint, the request stays there."""
        folder = self.endpoint(network, AGGREGATOR, AGGREGATOR)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plain-req-0001.request").write_text(json.dumps(ask(AGGREGATOR, "plain-req-0001")))
        network.sync()
        assert not (self.endpoint(network, MEMBER, AGGREGATOR) / "plain-req-0001.request").exists()

    @pytest.mark.slow
    def test_the_outsiders_request_is_refused(self, network: Network, member_cfg: Path) -> None:
        """The outsider is an approved peer but not a reader: the member's syft refuses its
        request, and the aggregator's, sent after it, arrives."""
        budget_requests.propose(network.peers[OUTSIDER].manager, MEMBER, ask(OUTSIDER, "eve-req-0001"))
        budget_requests.propose(network.peers[AGGREGATOR].manager, MEMBER, ask(AGGREGATOR, "agg-req-0002"))
        network.sync()
        assert (self.endpoint(network, MEMBER, AGGREGATOR) / "agg-req-0002.request").is_file()
        assert not self.endpoint(network, MEMBER, OUTSIDER).exists()

    @pytest.mark.slow
    def test_a_reader_cannot_write_into_another_readers_folder(
        self, network: Network, member_cfg: Path
    ) -> None:
        """The aggregator proposing a request under the outsider's name is refused."""
        forged = ask(AGGREGATOR, "forged-0001", folder_of=OUTSIDER)
        budget_requests.propose(network.peers[AGGREGATOR].manager, MEMBER, forged)
        network.sync()
        assert not self.endpoint(network, MEMBER, OUTSIDER).exists()

    def test_a_data_owner_alone_cannot_propose(self, network: Network) -> None:
        """A client without the data scientist's role is told what to do, in one line."""
        from cpu_tracker_daemon.errors import UsageError

        with pytest.raises(UsageError, match="login_ds"):
            budget_requests.propose(network.peers[MEMBER].manager, AGGREGATOR, ask(MEMBER, "own-req-0001"))
