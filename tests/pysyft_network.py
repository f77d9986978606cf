"""PySyft 0.10 (PyPI's ``syft``) in one process: data owners and data scientists that sync over
syft's own in-process Google Drive, ``MockDriveService``, the transport syft's own tests use.

Each peer is a real ``SyftboxManager`` with its caches on disk, so a data owner's sync scans its
datasite folder as it does for a user and a data scientist's writes what it receives into its
own folder; only Google Drive is replaced, by the mock that stands for it in syft's tests. A
data owner approves each data scientist that asks to peer with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "syft==0.10.0"


@dataclass
class Peer:
    email: str
    manager: Any = field(repr=False)  # syft.sync.syftbox_manager.SyftboxManager

    @property
    def folder(self) -> Path:
        """Its syft folder (what ``[syftbox] dir`` points at): ``<folder>/<email>/`` per datasite."""
        return Path(self.manager.syftbox_folder)

    def datasite(self, email: str | None = None) -> Path:
        return self.folder / (email or self.email)

    def sync(self) -> None:
        self.manager.sync()

    def files(self) -> list[Path]:
        """Every file in its folder, relative to it."""
        return sorted(p.relative_to(self.folder) for p in self.folder.rglob("*") if p.is_file())


@dataclass
class Network:
    root: Path
    peers: dict[str, Peer] = field(default_factory=dict)
    store: Any = field(default=None, repr=False)  # the shared MockDriveBackingStore: "Google Drive"

    def __post_init__(self) -> None:
        from syft.sync.connections.drive.mock_drive_service import MockDriveBackingStore

        self.store = MockDriveBackingStore()

    def add(self, email: str, owner: bool = False, scientist: bool = False) -> Peer:
        """A user with its own folder, a data owner (its datasite syncs to approved peers), a
        data scientist (it reads its peers' datasites and proposes changes to them), or both."""
        from syft.sync.connections.drive.gdrive_transport import GDriveConnection
        from syft.sync.connections.drive.mock_drive_service import MockDriveService
        from syft.sync.syftbox_manager import SyftboxManager, SyftboxManagerConfig

        config = SyftboxManagerConfig._base_config_for_testing(
            email=email,
            syftbox_folder=self.root / email / "SyftBox",
            has_do_role=owner,
            has_ds_role=scientist,
            use_in_memory_cache=False,  # the datasite is scanned on disk, as for a user
        )
        manager = SyftboxManager.from_config(config)
        manager._add_connection(GDriveConnection.from_service(email, MockDriveService(self.store, email)))
        manager.peer_manager.write_own_version()  # what syft's login does: SYFT_version.json
        peer = Peer(email, manager)
        self.peers[email] = peer
        return peer

    def approve(self, scientist: Peer, owner: Peer) -> None:
        """``scientist`` asks to peer with ``owner``, which approves it."""
        scientist.manager.add_peer(owner.email, verbose=False, sync=False)
        owner.manager.load_peers()
        owner.manager.approve_peer_request(scientist.email, verbose=False)
        scientist.manager.load_peers()

    def sync(self) -> None:
        """One sync of every peer: the owners' changes out, then the scientists' in."""
        owners = [p for p in self.peers.values() if p.manager.has_do_role]
        for peer in (*owners, *(p for p in self.peers.values() if p not in owners)):
            peer.sync()
