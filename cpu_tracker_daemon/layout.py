"""Where cpu-tracker's files live: each path of the SyftBox tree, from the SyftBox folder and an
email, and the same outputs under the data directory when there is no SyftBox.

Two shapes of tree: SyftBox's (the Go client, syftbox 0.4), whose datasites sit in
``datasites/<email>/``, and PySyft 0.10's, whose datasites sit in ``<email>/`` at the top of the
folder. Which one a folder is, the folder itself says (:func:`engine`), so every path below
follows it without being told."""

from __future__ import annotations

import os
import stat
from pathlib import Path

APP_FOLDER = "cpu_tracker"  # this app's folder, below app_data/, public/ and private/
PUBLIC_NAME = "cpu_tracker.json"  # a release, in the public folder
PRIVATE_NAME = "cpu_tracker.json"  # the same window unnoised, in the private folder
DID_NAME = "did.json"
_APP = ("app_data", APP_FOLDER)  # a datasite's folder of this app
_ENDPOINT = ("rpc", "budget")  # syft-rpc's endpoint for budget requests, below the app's folder
_PRIVATE = "private"  # beside the datasites: what no engine syncs

AUTO, SYFTBOX, PYSYFT = "auto", "syftbox", "pysyft"
LAYOUTS = (AUTO, SYFTBOX, PYSYFT)  # the values of [syftbox] layout
# The file PySyft 0.10 (the ``syft`` package) writes at the top of its folder whenever a client
# logs in (syft/version.py, VERSION_FILE_NAME); no SyftBox client writes it.
PYSYFT_MARKER = "SYFT_version.json"


def engine(root: Path) -> str:
    """The shape of the tree in the folder ``root``: :data:`PYSYFT` when PySyft's marker file is
    there (a regular file, not a link), else :data:`SYFTBOX`."""
    try:
        return PYSYFT if stat.S_ISREG(os.lstat(root / PYSYFT_MARKER).st_mode) else SYFTBOX
    except OSError:
        return SYFTBOX


def datasites_dir(root: Path) -> Path:
    """Every datasite of the folder ``root``, one folder per email: ``datasites/`` under SyftBox,
    the folder itself under PySyft."""
    return root if engine(root) == PYSYFT else root / "datasites"


def is_datasite_name(name: str, shape: str) -> bool:
    """Whether ``name``, in the datasites directory of a tree of ``shape``, may be a datasite:
    under PySyft the folder's top also holds syft's own (``.cache``, ``.sync.lock``) and this
    app's private folder, which are not."""
    return shape != PYSYFT or not (name.startswith(".") or name == _PRIVATE)


def app_dir(root: Path, email: str) -> Path:
    """``email``'s folder of this app, ``datasites/<email>/app_data/cpu_tracker/``: its release,
    budget requests, secure rounds and DID document."""
    return datasites_dir(root).joinpath(email, *_APP)


def release_parts(email: str) -> tuple[str, ...]:
    """The names from ``datasites/`` down to ``email``'s release, for a walk that follows no link."""
    return (email, *_APP, PUBLIC_NAME)


def public_app_dir(root: Path, email: str) -> Path:
    """``email``'s folder of this app in its public/ folder, ``datasites/<email>/public/cpu_tracker/``:
    an aggregator's estimates of the network and its dashboard."""
    return datasites_dir(root) / email / "public" / APP_FOLDER


def private_app_dir(root: Path) -> Path:
    """This app's private folder, ``private/cpu_tracker/``: outside every datasite, never synced."""
    return root / _PRIVATE / APP_FOLDER


def staging_dir(root: Path) -> Path | None:
    """Where a file written below ``root`` is made before it is renamed into place, when that
    must not be beside it: under PySyft, whose scan of a datasite sees every file (hidden and
    ``*.tmp`` ones too), the private folder, outside every datasite. None under SyftBox, whose
    clients skip temp files: beside the file."""
    return private_app_dir(root) if engine(root) == PYSYFT else None


def endpoint_parts(email: str) -> tuple[str, ...]:
    """The names from the datasites directory down to ``email``'s budget endpoint."""
    return (email, *_APP, *_ENDPOINT)


def did_path(root: Path, email: str) -> Path:
    """Where ``email`` publishes its DID document, ``app_data/cpu_tracker/identity/did.json``.
    Not ``public/did.json``: syft-crypto's own apps refuse to start beside a did.json whose keys
    they do not hold."""
    return app_dir(root, email) / "identity" / DID_NAME


def secagg_dir(app: Path) -> Path:
    """The secure rounds' folders, one per round, below an app folder (:func:`app_dir`)."""
    return app / "secagg"


def budget_endpoint(app: Path) -> Path:
    """The budget requests' folder below an app folder: one folder per reader (syft-rpc's layout)."""
    return app.joinpath(*_ENDPOINT)


def budget_endpoint_url(email: str) -> str:
    """The syft URL of ``email``'s :func:`budget_endpoint`."""
    return "syft://" + "/".join((email, *_APP, *_ENDPOINT))


def local_public_dir(data_dir: Path) -> Path:
    """Without SyftBox: the public folder, below the data directory."""
    return data_dir / "public"


def local_private_dir(data_dir: Path) -> Path:
    """Without SyftBox: the private folder, below the data directory."""
    return data_dir / "private"
