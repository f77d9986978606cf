"""SyftBox permission files for both client generations (``syft.pub.yaml`` for the Go client,
``syftperm.yaml`` for 0.4), rendered from one rule set so that they cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cpu_tracker_daemon import storage

PUB_NAME = "syft.pub.yaml"  # the Go client's
PERM_NAME = "syftperm.yaml"  # syftbox 0.4's
NAMES = (PUB_NAME, PERM_NAME)
EVERYONE = "*"


@dataclass(frozen=True)
class Rule:
    """Who may read, and who may create and write, the files that match ``pattern``."""

    pattern: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()  # writers may read what they write


@dataclass(frozen=True)
class Folder:
    """The permissions of one folder of the owner's datasite."""

    owner: str
    comment: str
    rules: tuple[Rule, ...]
    terminal: bool = False  # parent folders' grants stop here


def _quoted(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def pub_yaml(folder: Folder) -> str:
    """``syft.pub.yaml``, in the flow style SyftBox writes."""
    lines = [f"# {folder.comment}", f"terminal: {'true' if folder.terminal else 'false'}", "rules:"]
    for rule in folder.rules:
        lines += [
            f"  - pattern: {json.dumps(rule.pattern)}",
            "    access:",
            f"      admin: {_quoted([folder.owner])}",
            f"      write: {_quoted(rule.write)}",
            f"      read: {_quoted(_unique(rule.write + rule.read))}",
        ]
    return "\n".join(lines) + "\n"


def perm_yaml(folder: Folder) -> str:
    """``syftperm.yaml``: one entry per user and pattern (the owner needs none)."""
    lines = [f"# {folder.comment}"]
    if folder.terminal:
        lines.append(_entry("**", EVERYONE, ("read", "create", "write"), disallow=True))
    for rule in folder.rules:
        for user in _unique(rule.write):
            lines.append(_entry(rule.pattern, user, ("read", "create", "write")))
        for user in _unique(rule.read):
            if user not in rule.write:
                lines.append(_entry(rule.pattern, user, ("read",)))
    return "\n".join(lines) + "\n"


def _entry(path: str, user: str, permissions: tuple[str, ...], disallow: bool = False) -> str:
    fields = [
        f"path: {json.dumps(path)}",
        f"user: {json.dumps(user)}",
        f"permissions: [{', '.join(permissions)}]",
    ]
    if disallow:
        fields.append("type: disallow")
    return "- {" + ", ".join(fields) + "}"


def _unique(users: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(users))


def render(folder: Folder) -> dict[str, str]:
    """Each permission file's name and text."""
    return {PUB_NAME: pub_yaml(folder), PERM_NAME: perm_yaml(folder)}


def ensure(directory: Path, folder: Folder, root: Path) -> bool:
    """Write each permission file of ``directory`` that is missing or differs; return whether any
    was written. ``directory`` is reached from ``root`` without following a symlink."""
    written = False
    for name, text in render(folder).items():
        target = directory / name
        if storage.read_text(target) != text:
            storage.atomic_write(target, text.encode(), storage.PUBLIC_FILE_MODE, under=root)
            written = True
    return written


def release_folder(owner: str, readers: Iterable[str]) -> Folder:
    """A member's release folder: the readers may read, nobody else, nobody writes."""
    return Folder(
        owner,
        "Written by cpu-tracker: only the listed readers may read this app's output.",
        (Rule("**", read=tuple(readers)),),
    )


def public_folder(owner: str) -> Folder:
    """The aggregator's output folder: everyone may read."""
    comment = "Written by cpu-tracker: the network aggregate is public."
    return Folder(owner, comment, (Rule("**", read=(EVERYONE,)),))
