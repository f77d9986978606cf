"""A command run as root against a service's state directory acts as the directory's owner."""

from __future__ import annotations

import os
from pathlib import Path

from cpu_tracker_daemon.errors import ConfigError


def become_state_owner(data_dir: Path) -> None:
    """Run as root against a service's state directory: switch to its owner before writing.

    Files root made there (the ledger's journal, outputs) would lock the service out of its
    own state. A process not running as root, or a root-owned directory, is left alone.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = data_dir.stat()
    except OSError:
        return
    if owner.st_uid == 0:
        return
    _owner_can_run_this_python(data_dir, owner.st_uid, owner.st_gid)
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def _owner_can_run_this_python(data_dir: Path, uid: int, gid: int) -> None:
    """The switch is for good: if the owner may not read this Python's own files (one built
    under root's home, say), every import after it fails. Look first, as that user, and raise
    ConfigError naming what it cannot read."""
    import sysconfig

    from cpu_tracker_daemon.storage import user_name

    paths = sysconfig.get_paths()
    imported_from = (paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    candidates = {Path(os.__file__).parent, Path(__file__).parents[1], *map(Path, imported_from)}
    places = sorted(p for p in candidates if p.exists())  # a venv has no include/ of its own, say
    os.setegid(gid)
    os.seteuid(uid)
    try:
        unreadable = [p for p in places if not os.access(p, os.R_OK | os.X_OK, effective_ids=True)]
    finally:
        os.seteuid(0)
        os.setegid(0)
    if unreadable:
        name = user_name(uid)
        raise ConfigError(
            [
                f"paths.data_dir {data_dir} belongs to {name}, and this command writes there as {name}, "
                f"who may not read this Python's files ({unreadable[0]}); run it as {name} with a Python "
                f"{name} can read"
            ]
        )
