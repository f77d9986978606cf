"""Atomic writes, modes, the layout, stale temp files and the SyftBox permission file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cpu_tracker_daemon import layout as tree
from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.config import load_config, parse_config
from cpu_tracker_daemon.errors import ConfigError, OutputError
from cpu_tracker_daemon.storage import (
    atomic_write,
    filesystem_type,
    layout_for,
    prepare,
    read_json,
    remove_stale_temps,
    require_local,
    write_json,
)
from tests.conftest import before_os_call


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestAtomicWrite:
    def test_writes_with_the_mode_despite_the_umask(self, tmp_path: Path) -> None:
        """The file gets exactly the requested mode whatever the process umask is."""
        old = os.umask(0o077)
        try:
            atomic_write(tmp_path / "f.json", b"{}", 0o644)
        finally:
            os.umask(old)
        assert mode(tmp_path / "f.json") == 0o644

    def test_failure_keeps_the_old_file_and_leaves_no_temp(self, tmp_path: Path) -> None:
        """When the rename fails, the previous content stays and the temp file is removed."""
        target = tmp_path / "out"
        target.mkdir()  # os.replace of a file over a non-empty directory fails
        (target / "keep").write_text("x")
        with pytest.raises(OutputError, match="cannot write"):
            atomic_write(target, b"new", 0o644)
        assert (target / "keep").read_text() == "x"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]

    def test_round_trip_json(self, tmp_path: Path) -> None:
        """write_json and read_json agree; read_json returns None for a non-object."""
        write_json(tmp_path / "a.json", {"cpu": 1.5}, 0o600)
        assert read_json(tmp_path / "a.json") == {"cpu": 1.5}
        (tmp_path / "b.json").write_text("[1]")
        assert read_json(tmp_path / "b.json") is None


class TestLayout:
    def test_plain_layout_modes(self, tmp_path: Path) -> None:
        """Without SyftBox: private 0700 and public 0755 under the data directory."""
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[paths]\ndata_dir = "{tmp_path / "d"}"\n')
        layout = layout_for(load_config(cfg))
        prepare(layout)
        assert mode(layout.private_dir) == 0o700
        assert mode(layout.public_dir) == 0o755
        assert mode(layout.data_dir) == 0o700

    def test_syftbox_layout_keeps_private_outside_datasites(self, tmp_path: Path) -> None:
        """With SyftBox the public file is in the datasite's app_data, the private one never is."""
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[paths]\ndata_dir = "{tmp_path / "d"}"\n'
            f'[syftbox]\ndir = "{tmp_path / "sb"}"\nemail = "me@example.org"\n'
        )
        layout = layout_for(load_config(cfg))
        assert (
            layout.public_file
            == tmp_path / "sb/datasites/me@example.org/app_data/cpu_tracker/cpu_tracker.json"
        )
        assert layout.private_file == tmp_path / "sb/private/cpu_tracker/cpu_tracker.json"
        assert "datasites" not in layout.private_file.parts

    def test_permission_file_grants_read_to_readers_admin_to_owner(self, tmp_path: Path) -> None:
        """syft.pub.yaml lists the readers under read, the owner under admin, nobody under write;
        syftperm.yaml gives each reader read and nothing more."""
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[paths]\ndata_dir = "{tmp_path / "d"}"\n'
            f'[syftbox]\ndir = "{tmp_path / "sb"}"\nemail = "me@example.org"\n'
            'readers = ["agg@example.org", "b@example.org"]\n'
        )
        layout = layout_for(load_config(cfg))
        prepare(layout)
        folder = permissions.release_folder("me@example.org", layout.syft_readers)
        assert permissions.ensure(layout.public_dir, folder, layout.root) is True
        text = (layout.public_dir / "syft.pub.yaml").read_text()
        assert 'read: ["agg@example.org", "b@example.org"]' in text
        assert 'admin: ["me@example.org"]' in text
        assert "write: []" in text
        assert (layout.public_dir / "syftperm.yaml").read_text().splitlines()[1:] == [
            '- {path: "**", user: "agg@example.org", permissions: [read]}',
            '- {path: "**", user: "b@example.org", permissions: [read]}',
        ]
        assert permissions.ensure(layout.public_dir, folder, layout.root) is False  # unchanged

    def test_not_a_directory_is_a_config_error(self, tmp_path: Path) -> None:
        """A data_dir under a regular file is reported as a config problem naming the key."""
        (tmp_path / "file").write_text("")
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[paths]\ndata_dir = "{tmp_path / "file" / "sub"}"\n')
        with pytest.raises(ConfigError, match=r"paths.data_dir .* cannot be made: .*file is a file"):
            prepare(layout_for(load_config(cfg)))

    def test_stale_temps_are_removed_outputs_kept(self, tmp_path: Path) -> None:
        """Temp files a killed write left are removed; real outputs are not."""
        (tmp_path / ".cpu_tracker.json.abc.tmp").write_text("{")
        (tmp_path / "cpu_tracker.json").write_text("{}")
        removed = remove_stale_temps([(tmp_path, tmp_path)])
        assert [p.name for p in removed] == [".cpu_tracker.json.abc.tmp"]
        assert [p.name for p in tmp_path.iterdir()] == ["cpu_tracker.json"]


ME = "me@example.org"


def member_table(tmp_path: Path, folder: Path) -> dict[str, dict[str, str]]:
    return {"paths": {"data_dir": str(tmp_path / "d")}, "syftbox": {"dir": str(folder), "email": ME}}


def pysyft_layout(tmp_path: Path) -> storage.Layout:
    """A member's layout in a PySyft 0.10 folder (syft's version file at its top), prepared."""
    folder = tmp_path / "SyftBox"
    folder.mkdir()
    (folder / tree.PYSYFT_MARKER).write_text("{}")
    config = parse_config(
        {"paths": {"data_dir": str(tmp_path / "d")}, "syftbox": {"dir": str(folder), "email": ME}}
    )
    where = layout_for(config)
    prepare(where)
    return where


def files_below(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


class TestPySyftTree:
    def test_the_release_is_in_the_datasite_and_the_raw_value_beside_it(self, tmp_path: Path) -> None:
        """Under PySyft the release is in ``<email>/app_data/``, the private file in ``private/``."""
        where = pysyft_layout(tmp_path)
        assert where.public_file == tmp_path / "SyftBox" / ME / "app_data/cpu_tracker/cpu_tracker.json"
        assert where.private_file == tmp_path / "SyftBox/private/cpu_tracker/cpu_tracker.json"

    def test_the_temp_file_is_made_outside_the_datasite(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """At the rename, the datasite holds no temp file: it waits in the private folder, which
        is left empty after it, and the release has its mode."""
        where = pysyft_layout(tmp_path)
        datasite = tmp_path / "SyftBox" / ME
        at_rename: list[tuple[list[str], list[str]]] = []
        before_os_call(
            monkeypatch,
            storage,
            "replace",
            lambda *_: at_rename.append((files_below(datasite), files_below(where.private_dir))),
        )
        write_json(where.public_file, {"cpu": 1.5}, 0o644, under=where.root)
        assert len(at_rename) == 1
        in_datasite, staged = at_rename[0]
        assert in_datasite == []
        assert [name.endswith(".tmp") for name in staged] == [True]
        assert files_below(where.private_dir) == []
        assert read_json(where.public_file) == {"cpu": 1.5}
        assert mode(where.public_file) == 0o644
        assert mode(where.private_dir) == 0o700

    @pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names descriptors through /proc")
    def test_the_staged_write_is_durable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The temp file is fsynced before the rename; the datasite's folder, where its name
        now is, and the staging folder, where it no longer is, after it."""
        where = pysyft_layout(tmp_path)
        calls: list[str] = []

        class Recording:
            def __getattr__(self, attr: str) -> object:
                return getattr(os, attr)

            @staticmethod
            def fsync(fd: int) -> None:
                calls.append("fsync " + os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), where.root))
                os.fsync(fd)

            @staticmethod
            def replace(*args: object, **kwargs: object) -> None:
                calls.append("rename")
                os.replace(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(storage, "os", Recording())
        write_json(where.public_file, {"cpu": 1.5}, 0o644, under=where.root)
        assert calls[1:] == ["rename", f"fsync {ME}/app_data/cpu_tracker", "fsync private/cpu_tracker"]
        assert calls[0].startswith("fsync private/cpu_tracker/.cpu_tracker.json.")
        assert calls[0].endswith(".tmp")

    def test_a_write_into_the_private_folder_stays_there(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The private record's temp file is made beside it: the private folder is the staging one."""
        where = pysyft_layout(tmp_path)
        write_json(where.private_file, {"cpu_raw": 1.5}, 0o600, under=where.root)
        assert files_below(where.private_dir) == ["cpu_tracker.json"]

    def test_a_linked_staging_folder_is_not_written_through(self, tmp_path: Path) -> None:
        """A link where the private folder should be is never followed: the write is made beside
        its target instead, and nothing lands where the link points."""
        folder = tmp_path / "SyftBox"
        folder.mkdir()
        (folder / tree.PYSYFT_MARKER).write_text("{}")
        (tmp_path / "elsewhere").mkdir()
        (folder / "private").symlink_to(tmp_path / "elsewhere")
        target = tree.app_dir(folder, ME) / "cpu_tracker.json"
        target.parent.mkdir(parents=True)
        write_json(target, {"cpu": 2.0}, 0o644, under=folder)
        assert read_json(target) == {"cpu": 2.0}
        assert list((tmp_path / "elsewhere").iterdir()) == []
        assert files_below(target.parent) == ["cpu_tracker.json"]

    def test_at_start_only_orphaned_staged_temps_are_removed(self, tmp_path: Path) -> None:
        """Commands that take no instance lock stage their writes in the private folder too: at
        the daemon's start a temp file there is removed only once it is older than any live
        write, and the release itself never."""
        where = pysyft_layout(tmp_path)
        write_json(where.private_file, {"cpu_raw": 1.5}, 0o600, under=where.root)
        orphan, live = where.private_dir / ".a.json.1.tmp", where.private_dir / ".b.json.2.tmp"
        orphan.write_text("{")
        live.write_text("{")
        written = live.stat().st_mtime
        os.utime(orphan, (written - storage.STAGING_GRACE_SECONDS - 1,) * 2)
        removed = remove_stale_temps(storage.output_dirs(where), now=written + 1)
        assert removed == [orphan]
        assert files_below(where.private_dir) == [".b.json.2.tmp", "cpu_tracker.json"]

    def test_preparing_makes_no_probe_in_the_datasite(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Proving the datasite's folders writable creates no file in them, even for a moment."""
        where = pysyft_layout(tmp_path)
        datasite = tmp_path / "SyftBox" / ME
        during: list[list[str]] = []
        before_os_call(monkeypatch, storage, "unlink", lambda *_: during.append(files_below(datasite)))
        prepare(where)
        assert during  # the other folders were probed
        assert [seen for seen in during if seen] == []

    def test_a_private_folder_linked_into_a_datasite_is_refused(self, tmp_path: Path) -> None:
        """The raw value must never be in a datasite: a private folder that resolves into one is
        a config error; the private folder beside the datasites is not."""
        folder = tmp_path / "SyftBox"
        (folder / ME / "notes").mkdir(parents=True)
        (folder / tree.PYSYFT_MARKER).write_text("{}")
        (folder / "private").symlink_to(folder / ME / "notes")
        config = parse_config(
            {"paths": {"data_dir": str(tmp_path / "d")}, "syftbox": {"dir": str(folder), "email": ME}}
        )
        with pytest.raises(ConfigError, match="inside a synced datasite"):
            prepare(layout_for(config))


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv/nfs rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 22 0:36 / /mnt/my\\040box rw,nosuid shared:21 - fuse.sshfs me@host:/ rw
42 40 8:2 / /srv/nfs/local rw,relatime shared:22 - ext4 /dev/sda2 rw
"""


class TestFileSystems:
    @pytest.mark.parametrize(
        ("path", "kind"),
        [("/var/lib/x", "ext4"), ("/srv/nfs/state", "nfs4"), ("/mnt/my box/s", "fuse.sshfs"),
         ("/srv/nfs/local/s", "ext4"), ("/srv/nfsx", "ext4")],
    )  # fmt: skip
    def test_the_longest_mount_point_decides(self, tmp_path: Path, path: str, kind: str) -> None:
        """The file system is the one mounted deepest above the path (mount points are escaped)."""
        table = tmp_path / "mountinfo"
        table.write_text(MOUNTINFO)
        assert filesystem_type(Path(path), table) == kind

    @pytest.mark.parametrize("path", ["/srv/nfs/state", "/mnt/my box/s"])
    def test_state_on_a_network_or_fuse_file_system_is_refused(self, tmp_path: Path, path: str) -> None:
        """Two daemons ran together on a file system whose locks excluded nothing; such a state
        directory is a configuration error naming the file system."""
        table = tmp_path / "mountinfo"
        table.write_text(MOUNTINFO)
        with pytest.raises(ConfigError, match="file system, whose locks cannot be trusted"):
            require_local(Path(path), table)
        require_local(Path("/srv/nfs/local/s"), table)
