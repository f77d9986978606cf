"""Files on disk: where the outputs go, atomic writes, modes, and reads of untrusted files.

Below the configured root no symlink is ever followed, and every output is written to a temp file
and renamed into place: readers see the old file or the new one, never a part. The temp file is
made beside the output, or, in a tree whose sync would see it there (PySyft's), in the private
folder outside every datasite."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cpu_tracker_daemon.config import Config
from cpu_tracker_daemon.errors import ConfigError, OutputError, StateAccessError
from cpu_tracker_daemon.layout import (
    PRIVATE_NAME,
    PUBLIC_NAME,
    PYSYFT,
    app_dir,
    budget_endpoint,
    datasites_dir,
    engine,
    is_datasite_name,
    local_private_dir,
    local_public_dir,
    private_app_dir,
    public_app_dir,
    staging_dir,
)

if TYPE_CHECKING:
    from typing import Any

LEDGER_NAME = "ledger.sqlite3"
LOCK_NAME = "cpu-tracker.lock"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644
_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything lives, derived from the configuration alone."""

    data_dir: Path  # paths.data_dir: the ledger and the lock ($STATE_DIRECTORY under systemd)
    public_dir: Path
    private_dir: Path
    syft_owner: str | None = None
    syft_readers: tuple[str, ...] = ()
    output_root: Path | None = None  # the configured directory the outputs live under (trusted)

    @property
    def root(self) -> Path:
        return self.data_dir if self.output_root is None else self.output_root

    @property
    def ledger(self) -> Path:
        return self.data_dir / LEDGER_NAME

    @property
    def lock(self) -> Path:
        return self.data_dir / LOCK_NAME

    @property
    def public_file(self) -> Path:
        return self.public_dir / PUBLIC_NAME

    @property
    def private_file(self) -> Path:
        return self.private_dir / PRIVATE_NAME

    @property
    def requests_dir(self) -> Path:
        """Where readers drop budget requests and find the owner's answers (syft-rpc's layout)."""
        return budget_endpoint(self.public_dir)


def layout_for(config: Config) -> Layout:
    """The layout: under ``paths.data_dir``, or the SyftBox tree when ``[syftbox]`` is set."""
    data = config.paths.data_dir
    sb = config.syftbox
    if sb.dir is not None:
        return Layout(
            data_dir=data,
            public_dir=app_dir(sb.dir, sb.email),
            private_dir=private_app_dir(sb.dir),
            syft_owner=sb.email,
            syft_readers=sb.readers,
            output_root=sb.dir,
        )
    return Layout(
        data_dir=data,
        public_dir=local_public_dir(data),
        private_dir=local_private_dir(data),
        output_root=data,
    )


def network_dir(config: Config) -> Path:
    """The aggregator's public folder (:func:`cpu_tracker_daemon.layout.public_app_dir`)."""
    sb = config.syftbox
    assert sb.dir is not None
    return public_app_dir(sb.dir, sb.email)


def _directories(layout: Layout) -> tuple[tuple[Path, int, str, Path], ...]:
    """Each directory the daemon writes, with its mode, the name a user knows it by, and the
    configured root it is reached from without following symlinks."""
    return (
        (layout.data_dir, PRIVATE_DIR_MODE, "paths.data_dir", layout.data_dir),
        (layout.private_dir, PRIVATE_DIR_MODE, "the private output directory", layout.root),
        (layout.public_dir, PUBLIC_DIR_MODE, "the public output directory", layout.root),
    )


def output_dirs(layout: Layout) -> tuple[tuple[Path, Path], ...]:
    """Each directory written, with the root it is reached from."""
    return tuple((directory, root) for directory, _, _, root in _directories(layout))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_dir(directory: Path, under: Path, mode: int | None = None) -> int:
    """A descriptor on ``directory``, reached from ``under`` without following any symlink below
    it; with ``mode``, missing directories are created (their parents fsynced) and the last one
    is chmod-ed through its descriptor. Raises OSError (ELOOP or ENOTDIR for a symlink)."""
    parts = directory.relative_to(under).parts
    fd = os.open(under, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if mode is None:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                    os.fsync(fd)
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        if mode == PRIVATE_DIR_MODE:
            os.fchmod(fd, mode)  # ours: never leave private data group-readable
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_dir(directory: Path, root: Path, mode: int = PUBLIC_DIR_MODE) -> None:
    """Create ``directory`` below ``root`` without following a symlink; raise OutputError."""
    try:
        os.close(open_dir(directory, root, mode))
    except OSError as exc:
        symlink = exc.errno in (errno.ELOOP, errno.ENOTDIR)
        why = "a symlink (or a file) in its path; nothing is written through one" if symlink else None
        raise OutputError(str(directory), why or exc.strerror or str(exc)) from None


def _refuse_private_in_public(layout: Layout) -> str | None:
    if layout.output_root is None or layout.syft_owner is None:
        return None
    shape = engine(layout.output_root)
    datasites = os.path.realpath(datasites_dir(layout.output_root))
    private = os.path.realpath(layout.private_dir)
    inside = private == datasites or private.startswith(datasites + os.sep)
    if inside and shape == PYSYFT:  # PySyft's datasites share the folder's top with private/
        inside = is_datasite_name(Path(os.path.relpath(private, datasites)).parts[0], shape)
    if inside:
        synced = "a synced datasite" if shape == PYSYFT else "the synced datasites/"
        return (
            f"the private output directory {layout.private_dir} resolves to {private}, inside "
            f"{synced}; the raw value must never be there: remove the link"
        )
    return None


def _scanned(layout: Layout, directory: Path) -> bool:
    """Whether ``directory`` is one a sync scans for every file, temp files included (a PySyft
    datasite's), so that nothing but finished outputs may ever be made in it."""
    if layout.output_root is None or layout.syft_owner is None:
        return False
    staging = staging_dir(layout.output_root)
    return staging is not None and directory not in (staging, layout.data_dir)


def _file_in_the_way(directory: Path, name: str, reported: set[Path], problems: list[str]) -> bool:
    """Whether a file where ``directory`` or one of its parents should be stops it being made;
    the first directory it stops is reported, naming the file, and the ones below it are not."""
    probe = directory
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if probe.is_dir():
        return False
    if probe not in reported:
        reported.add(probe)
        problems.append(
            f"{name} {directory} cannot be made: {probe} is a file, not a directory; "
            "choose another path, or move that file"
        )
    return True


def check_creatable(layout: Layout) -> None:
    """Without writing anything, raise ConfigError for each directory that could not be made.

    A directory passes if it exists writable, or its nearest existing ancestor is. One this user
    cannot even see into (another user's private directory) is as good as missing.
    """
    problems: list[str] = []
    blockers: set[Path] = set()
    for directory, _, name, _ in _directories(layout):
        if _file_in_the_way(directory, name, blockers, problems):
            continue
        probe = directory
        # os.path's, not Path's: a directory this user may not enter is as good as missing, not an error.
        while not os.path.exists(probe) and probe.parent != probe:  # noqa: PTH110
            probe = probe.parent
        if not (os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)):  # noqa: PTH112
            owner = _other_owner(probe)
            fix = f"{probe} is {owner}'s: run the command as {owner}, or " if owner else ""
            problems.append(
                f"{name} {directory} cannot be created or written by this user; {fix}choose another directory"
            )
    if problems:
        raise ConfigError(problems)


def user_name(uid: int) -> str:
    """The name of the user ``uid``, or ``uid N`` when the system knows none."""
    import pwd  # only to name another user

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _other_owner(path: Path) -> str | None:
    """The name of ``path``'s owner when that is another user (None for this one, or unknown)."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    return None if uid == os.geteuid() else user_name(uid)


def state_access_error(path: Path) -> StateAccessError:
    """For a file of the state this user may not reach: the nearest directory above it that this
    user can see, with its owner, and what to do."""
    for directory in path.parents:
        try:
            uid = directory.stat().st_uid
        except OSError:
            continue
        return StateAccessError(str(directory), user_name(uid), os.geteuid())
    return StateAccessError(str(path.parent), "another user", os.geteuid())  # pragma: no cover - / is seen


def prepare(layout: Layout) -> None:
    """Create the directories with their modes and prove each is writable.

    Raises ConfigError naming the directory, so a bad path is reported before anything else
    is written.
    """
    refuse_foreign_tree(layout)
    problems: list[str] = []
    blockers: set[Path] = set()
    for directory, mode, name, root in _directories(layout):
        if _file_in_the_way(directory, name, blockers, problems):
            continue
        try:
            make_dirs_durably(root, PRIVATE_DIR_MODE if root == layout.data_dir else PUBLIC_DIR_MODE)
            fd = open_dir(directory, root, mode)
            try:
                if _scanned(layout, directory):  # a probe file there could be synced: ask instead
                    if not os.access(".", os.W_OK | os.X_OK, dir_fd=fd):
                        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                else:
                    probe = f".write-probe.{os.urandom(4).hex()}{_TMP_SUFFIX}"
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                    os.close(os.open(probe, flags, 0o600, dir_fd=fd))
                    os.unlink(probe, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and directory != root:
                problems.append(
                    f"{name} {directory} has a symlink (or a file) in its path below {root}; "
                    "the daemon never writes through one: replace it with a real directory"
                )
            else:
                problems.append(
                    f"{name} {directory} is not writable ({exc.strerror or exc}); "
                    "choose a directory this user can write"
                )
    leak = _refuse_private_in_public(layout)
    if leak is not None:
        problems.append(leak)
    if problems:
        raise ConfigError(problems)


MOUNTINFO = Path("/proc/self/mountinfo")
# File systems whose locks cannot be trusted to keep a second daemon out of one state directory.
_REMOTE = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "fuse")


def filesystem_type(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The type of the file system ``path`` is on, from the mount table (None where unknown)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not tail:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, tail.split()[0]
    return kind


def require_local(directory: Path, mountinfo: Path = MOUNTINFO) -> None:
    """Refuse a state directory on a network or FUSE file system: its locks may exclude nothing,
    and two daemons on one ledger each believe they are alone."""
    kind = filesystem_type(directory, mountinfo)
    if kind is not None and (kind in _REMOTE or kind.startswith("fuse.")):
        raise ConfigError(
            [
                f"paths.data_dir {directory} is on a {kind} file system, whose locks cannot be trusted "
                "to keep a second daemon out; put it on a local disk"
            ]
        )


def refuse_foreign_tree(layout: Layout) -> None:
    """As root, never write into an output tree another user owns: whatever root creates or
    chmods there crosses a privilege line (the tree's owner controls every link in it). Switch
    to that user instead; the service's own state is handled by ``--system``."""
    if os.geteuid() != 0 or layout.output_root is None:
        return
    try:
        owner = layout.output_root.stat().st_uid
    except OSError:
        return
    if owner != 0:
        raise ConfigError(
            [
                f"refusing to write as root into {layout.output_root}, which uid {owner} owns; "
                "run this command as that user"
            ]
        )


def remove_stale_temps(directories: Iterable[tuple[Path, Path]], now: float | None = None) -> list[Path]:
    """Delete temp files an interrupted write left behind; they are never outputs.

    Each directory is reached from its root without following a symlink, so nothing outside
    the tree is touched. Call only while holding the instance lock, or a live writer's temp file
    could vanish. In a tree's staging directory (:func:`cpu_tracker_daemon.layout.staging_dir`),
    where commands that take no instance lock (``aggregate``, ``budget approve``) make theirs
    too, a temp file younger than :data:`STAGING_GRACE_SECONDS` (by ``now``, the wall clock) may
    be a live write's and stays.
    """
    removed = []
    for directory, root in directories:
        try:
            fd = open_dir(directory, root)
        except OSError:
            continue
        shared = directory == staging_dir(root)
        try:
            for name in os.listdir(fd):  # noqa: PTH208 - relative to the descriptor, never a path
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    with suppress(FileNotFoundError):
                        if shared and _age(name, fd, now) < STAGING_GRACE_SECONDS:
                            continue
                        os.unlink(name, dir_fd=fd)
                        removed.append(directory / name)
        finally:
            os.close(fd)
    return removed


STAGING_GRACE_SECONDS = 60.0  # a live write takes milliseconds: a temp file this old is an orphan


def _age(name: str, directory: int, now: float | None) -> float:
    """Seconds since ``name`` in ``directory`` was last written."""
    import time  # only where a staging directory holds temp files

    written = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mtime
    return (time.time() if now is None else now) - written


def make_dirs_durably(directory: Path, mode: int) -> None:
    """``mkdir -p`` whose new directories survive power loss: each new one's parent is fsynced
    (a directory entry is durable only then), so nothing written inside can outlive its folder."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        new.mkdir(mode=mode, exist_ok=True)
        fsync_dir(new.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int, under: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with ``mode``; raise OutputError.

    With ``under``, the directory is reached from it without following any symlink (see the
    module's note); the temp file is created and renamed relative to that directory, never
    through a link. Where the tree under ``under`` has a staging directory
    (:func:`cpu_tracker_daemon.layout.staging_dir`), the temp file is made there, outside every
    datasite, and renamed across; beside ``path`` when that directory is on another file system
    or cannot be made. The temp file is removed on any failure, and the previous ``path`` stays.
    """
    try:
        directory = open_dir(path.parent, under) if under is not None else os.open(path.parent, _DIR_FLAGS)
    except OSError as exc:
        why = "a symlink (or a file) in its path" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else None
        raise OutputError(str(path), why or exc.strerror or str(exc)) from None
    try:
        staging = _staging(path, under, directory)
        try:
            _write_and_rename(path.name, data, mode, staging, directory)
        except OSError as exc:
            if staging == directory or exc.errno != errno.EXDEV:
                raise
            _write_and_rename(path.name, data, mode, directory, directory)  # another mount after all
        finally:
            if staging != directory:
                os.close(staging)
    except OSError as exc:
        raise OutputError(str(path), exc.strerror or str(exc)) from None
    finally:
        os.close(directory)


def _staging(path: Path, under: Path | None, directory: int) -> int:
    """A descriptor on the directory to make ``path``'s temp file in: the tree's staging
    directory when it has one, made if missing (reached without following a link), and on the
    file system of ``directory``; else ``directory`` itself."""
    staging = staging_dir(under) if under is not None else None
    if staging is None or under is None or path.parent == staging:
        return directory
    try:
        fd = open_dir(staging, under, PRIVATE_DIR_MODE)
    except OSError:
        return directory
    if os.fstat(fd).st_dev != os.fstat(directory).st_dev:  # a rename cannot cross file systems
        os.close(fd)
        return directory
    return fd


def _write_and_rename(name: str, data: bytes, mode: int, staging: int, directory: int) -> None:
    """Write ``data`` to a new temp file in ``staging``, fsync it, rename it to ``name`` in
    ``directory`` and fsync the directories; the temp file is removed if any step fails."""
    tmp = f".{name}.{os.urandom(6).hex()}{_TMP_SUFFIX}"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode, dir_fd=staging
        )
        try:
            os.fchmod(fd, mode)  # the umask must not change what readers may do
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=staging, dst_dir_fd=directory)
    except OSError:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=staging)
        raise
    os.fsync(directory)
    if staging != directory:
        os.fsync(staging)  # the temp file's name is gone from it too


def write_json(path: Path, record: dict[str, Any], mode: int, under: Path | None = None) -> None:
    atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode, under)


def read_untrusted_below(path: Path, root: Path, max_bytes: int) -> bytes:
    """:func:`read_untrusted` of ``path``, its directory reached from ``root`` without following
    any symlink; OSError when that directory cannot be reached."""
    directory = open_dir(path.parent, root)
    try:
        return read_untrusted(Path(path.name), max_bytes, dir_fd=directory)
    finally:
        os.close(directory)


def read_untrusted(path: Path, max_bytes: int, dir_fd: int | None = None) -> bytes:
    """At most ``max_bytes`` of a file another machine wrote: never through a symlink, never a FIFO.

    Raises ``ValueError`` whose message is the reason: ``missing``, ``symlink``, ``unreadable``,
    ``not a regular file`` or ``too large``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ValueError("missing") from None
    except OSError as exc:
        raise ValueError("symlink" if exc.errno == errno.ELOOP else "unreadable") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError("too large")
    return data


def strict_json(data: bytes) -> Any:
    """UTF-8 JSON with no NaN or Infinity; raises ValueError (also for too deep a nesting)."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def read_text(path: Path) -> str | None:
    """The UTF-8 text of ``path``, or None when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable as one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
