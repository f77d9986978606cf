"""One process per state directory: the instance lock, and who holds it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cpu_tracker_daemon import storage
from cpu_tracker_daemon.errors import AnotherInstanceError, ConfigError

AGGREGATE_LOCK = "aggregate.lock"


class InstanceLock:
    """An exclusive ``flock`` on the state directory's lock file, held for the process's life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:  # never through a link: a planted one would truncate whatever it points at
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    [f"the lock file {self.path} is a symlink, which is never opened; remove it"]
                ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(fd)
            raise AnotherInstanceError(str(self.path), f"pid {holder}") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.ENOLCK:
                raise
            raise ConfigError(
                [
                    f"the file system of {self.path.parent} offers no file locks (ENOLCK: NFS without "
                    "lockd?), so a second daemon could not be kept out; put paths.data_dir on a local disk"
                ]
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def claim_state(layout: storage.Layout) -> Iterator[None]:
    """Create and check the directories, take the instance lock, then clear stale temp files.

    In this order: a bad directory is a config error before any lock file is made, and temp
    files are removed only once no other instance can be writing them.
    """
    storage.prepare(layout)
    storage.require_local(layout.data_dir)
    with InstanceLock(layout.lock):
        storage.remove_stale_temps(storage.output_dirs(layout))
        yield


def holder(path: Path) -> int | None:
    """The pid of the process holding the lock at ``path``, or None if none does (a status check
    never takes the lock for long, so it never stands in the daemon's way). Raises
    PermissionError when this user may not read the lock file: then nobody here can tell."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
