"""The SyftBox tree's two shapes: SyftBox's ``datasites/<email>/`` and PySyft 0.10's ``<email>/``,
told apart by the marker file syft writes at login."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpu_tracker_daemon import layout

ME = "me@example.org"


def pysyft_folder(tmp_path: Path) -> Path:
    """A folder as syft leaves it after a login: its version file at the top."""
    folder = tmp_path / "SyftBox"
    folder.mkdir()
    (folder / layout.PYSYFT_MARKER).write_text('{"syft_version": "0.10.0"}')
    return folder


class TestEngine:
    def test_a_folder_without_the_marker_is_syftboxs(self, tmp_path: Path) -> None:
        """An empty folder, a missing one and a SyftBox client's are all SyftBox's shape."""
        (tmp_path / "box" / "datasites").mkdir(parents=True)
        assert layout.engine(tmp_path / "box") == layout.SYFTBOX
        assert layout.engine(tmp_path / "missing") == layout.SYFTBOX

    def test_syfts_version_file_makes_it_pysyfts(self, tmp_path: Path) -> None:
        """The version file syft writes at login marks PySyft's shape."""
        assert layout.engine(pysyft_folder(tmp_path)) == layout.PYSYFT

    @pytest.mark.parametrize("kind", ["directory", "symlink"])
    def test_only_a_regular_file_is_the_marker(self, tmp_path: Path, kind: str) -> None:
        """A directory, or a link, of the marker's name is not syft's file."""
        folder = tmp_path / "box"
        folder.mkdir()
        (tmp_path / "elsewhere").write_text("{}")
        if kind == "directory":
            (folder / layout.PYSYFT_MARKER).mkdir()
        else:
            (folder / layout.PYSYFT_MARKER).symlink_to(tmp_path / "elsewhere")
        assert layout.engine(folder) == layout.SYFTBOX


class TestPaths:
    def test_syftbox_shape(self, tmp_path: Path) -> None:
        """SyftBox: the datasites under ``datasites/``; temp files beside their targets."""
        assert layout.datasites_dir(tmp_path) == tmp_path / "datasites"
        assert layout.app_dir(tmp_path, ME) == tmp_path / "datasites" / ME / "app_data" / "cpu_tracker"
        assert layout.staging_dir(tmp_path) is None

    def test_pysyft_shape(self, tmp_path: Path) -> None:
        """PySyft: the datasites at the folder's top, every path below following; the private
        folder beside them, outside every datasite, is where temp files are made."""
        folder = pysyft_folder(tmp_path)
        assert layout.datasites_dir(folder) == folder
        assert layout.app_dir(folder, ME) == folder / ME / "app_data" / "cpu_tracker"
        assert layout.public_app_dir(folder, ME) == folder / ME / "public" / "cpu_tracker"
        assert layout.did_path(folder, ME) == folder / ME / "app_data/cpu_tracker/identity/did.json"
        assert layout.private_app_dir(folder) == folder / "private" / "cpu_tracker"
        assert layout.staging_dir(folder) == folder / "private" / "cpu_tracker"

    def test_the_endpoint_below_the_datasites(self) -> None:
        """The budget endpoint's names from the datasites directory, as a proposed change names it."""
        assert layout.endpoint_parts(ME) == (ME, "app_data", "cpu_tracker", "rpc", "budget")

    @pytest.mark.parametrize(
        ("name", "shape", "datasite"),
        [
            (ME, layout.PYSYFT, True),
            (".cache", layout.PYSYFT, False),
            ("private", layout.PYSYFT, False),
            (".cache", layout.SYFTBOX, True),  # SyftBox's datasites/ holds datasites only
        ],
    )
    def test_what_beside_the_datasites_is_no_datasite(self, name: str, shape: str, datasite: bool) -> None:
        """Under PySyft, syft's hidden folders and this app's private folder are not datasites."""
        assert layout.is_datasite_name(name, shape) is datasite
