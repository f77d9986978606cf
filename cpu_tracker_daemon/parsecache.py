"""The config file's parsed tables, kept so that a command need not import the TOML reader.

Python's TOML reader is the dearest thing a command imports: ``tomllib`` brings ``typing``,
``string`` and the regular expressions it compiles, 38 M of the 164 M instructions
``cpu-tracker status`` took before this module. So a command keeps what the reader made of the
file, keyed by the file's exact bytes, in the user's cache directory, as Python keeps bytecode
beside its source: the next command whose config file has not changed reads the same tables
back with :mod:`marshal` (built in, nothing to import), and the config is validated from them
exactly as before.

A cached entry is used only where its bytes equal the file's, so an edit, however quick, is read
afresh. The cache is trusted only where this user wrote it: the directory and the file must be
this user's, not symlinks, and not writable by anyone else (:mod:`marshal` is not safe against a
crafted file). Anything else (no file, another owner, a torn or foreign file, another Python) is
a miss: the file is parsed and the entry written again. Writing is best effort and silent, since
the cache only ever saves time; it never changes what a command reads.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys
from contextlib import suppress

TYPE_CHECKING = False  # not typing's: a command need not import typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    Tables = dict[str, Any]

FORMAT = "cpu-tracker parsed config 1"
KEEP = 4  # entries, most recent first: a user with a config or two never misses
MAX_BYTES = 1 << 20  # a bigger cache file is not ours; a bigger config is parsed every time


def parsed(data: bytes, cache: Path | None, parse: Callable[[bytes], Tables]) -> Tables:
    """``parse(data)``, or what it returned for these same bytes before, kept in ``cache`` (a
    file path; None: keep nothing). A ``parse`` that raises raises here, and nothing is kept."""
    if cache is None:
        return parse(data)
    entries = _read(cache)
    for source, tables in entries:
        if source == data:
            return tables
    tables = parse(data)
    if len(data) <= MAX_BYTES // 2:
        _write(cache, [(data, tables), *entries[: KEEP - 1]])
    return tables


def _trusted(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_dir(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _trusted(info)


def _read(cache: Path) -> list[tuple[bytes, Tables]]:
    try:
        fd = os.open(cache, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) and _trusted(info) and info.st_size <= MAX_BYTES):
            return []
        if not _trusted_dir(cache.parent):
            return []
        chunks = []
        while chunk := os.read(fd, MAX_BYTES + 1):
            chunks.append(chunk)
        blob = b"".join(chunks)
    except OSError:
        return []
    finally:
        os.close(fd)
    try:
        kept = marshal.loads(blob)  # noqa: S302 - this user's own file, checked above
    except (EOFError, ValueError, TypeError):
        return []
    if not (
        isinstance(kept, tuple)
        and len(kept) == 3
        and kept[0] == FORMAT
        and kept[1] == sys.hexversion  # another Python's reader may read a file differently
        and isinstance(kept[2], list)
    ):
        return []
    return [
        entry
        for entry in kept[2]
        if isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], bytes)
        and isinstance(entry[1], dict)
    ]


def _write(cache: Path, entries: list[tuple[bytes, Tables]]) -> None:
    try:
        blob = marshal.dumps((FORMAT, sys.hexversion, entries))
    except ValueError:  # a value marshal cannot keep (a TOML date): parsed every time
        return
    if len(blob) > MAX_BYTES:
        return
    temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted_dir(cache.parent):
            return
        temporary.unlink(missing_ok=True)  # left by a process of this pid that died writing
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        temporary.replace(cache)  # readers see the old entries or the new, never half of one
    except OSError:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
