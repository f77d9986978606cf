"""Where cpu-tracker's files live: each path of the SyftBox tree, from the SyftBox folder and an
email, and the same outputs under the data directory when there is no SyftBox."""

from __future__ import annotations

from pathlib import Path

APP_FOLDER = "cpu_tracker"  # this app's folder, below app_data/, public/ and private/
PUBLIC_NAME = "cpu_tracker.json"  # a release, in the public folder
PRIVATE_NAME = "cpu_tracker.json"  # the same window unnoised, in the private folder
DID_NAME = "did.json"
_APP = ("app_data", APP_FOLDER)  # a datasite's folder of this app
_ENDPOINT = ("rpc", "budget")  # syft-rpc's endpoint for budget requests, below the app's folder


def datasites_dir(root: Path) -> Path:
    """Every datasite of the SyftBox folder ``root``, one folder per email."""
    return root / "datasites"


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
    """This app's private folder, ``private/cpu_tracker/``: outside datasites/, never synced."""
    return root / "private" / APP_FOLDER


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
