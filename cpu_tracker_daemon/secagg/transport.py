"""The rounds over a SyftBox tree: each message a JSON file in its writer's datasite, readable
by exactly those who need it (docs/secure-aggregation.md, "Rounds and files").

Everything is under ``datasites/<writer>/app_data/cpu_tracker/secagg/<round>/``: a member's
``keys.json`` (everyone: fresh keys every round), ``shares.json`` (its neighbours and, sealed,
the aggregator), ``masked.json`` and ``reveal.json`` (the aggregator); the aggregator's
``roster.json``, ``shared.json`` and ``survivors.json`` (the roster's members) and
``result.json`` (everyone).
Each phase ends at a deadline fixed from the round's start, never when the last file came.
Files another machine wrote are read capped, without following links, and checked; one that
fails is a member that did not take part.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.secagg import masks
from cpu_tracker_daemon.secagg.protocol import (
    Member,
    ProtocolError,
    PublicKeys,
    Reveal,
    Roster,
    Survivors,
    unmask,
)

SCHEMA = "cpu-tracker/secagg"
MAX_BYTES = 1 << 20
_ROUND = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
# When each wait ends, in steps from the round's start: a member waits for the aggregator's next
# file one step after the aggregator stops collecting the files that file is made from, so a
# file published at its deadline is still seen. One step must exceed the tree's sync delay.
MEMBER_WAITS = {"roster": 2, "shared": 4, "inbox": 4, "survivors": 6}
AGGREGATOR_COLLECTS = {"keys": 1, "shares": 3, "masked": 5, "reveal": 7}


@dataclass(frozen=True)
class Tree:
    """Where each file of the protocol lives in a SyftBox folder."""

    root: Path  # the SyftBox folder: its datasites/ holds everyone's

    def base(self, who: str) -> Path:
        return self.root / "datasites" / who / "app_data" / storage.APP_DIR / "secagg"

    def file(self, who: str, round_id: str, name: str) -> Path:
        if not _ROUND.match(round_id):
            raise ProtocolError(f"round id {round_id!r} is not a safe directory name")
        return self.base(who) / round_id / f"{name}.json"


@dataclass(frozen=True)
class Clock:
    """The round's time: seconds on a monotonic clock, and a way to wait."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll: float = 0.2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")  # noqa: TRY004 - every malformed field is a ValueError here
    return base64.b64decode(text, validate=True)


def _write(tree: Tree, owner: str, path: Path, body: dict[str, Any], folder: permissions.Folder) -> None:
    """Write one message with the permission files of its folder (they grant each file's
    readers; the folder is terminal, so nothing above grants more)."""
    storage.ensure_dir(path.parent, tree.root)
    permissions.ensure(path.parent, folder, tree.root)
    kind = path.name.removesuffix(".json")
    storage.write_json(path, {"schema": SCHEMA, "kind": kind, **body}, storage.PUBLIC_FILE_MODE, tree.root)


def member_folder(owner: str, neighbours: Iterable[str], aggregator: str) -> permissions.Folder:
    """A member's round: the sealed shares for its neighbours and the aggregator (who learns
    from them only that this member shared: each box is sealed for one neighbour, as the
    server relays them in Bonawitz et al.), the rest for the aggregator alone."""
    rules = (
        permissions.Rule("keys.json", read=(permissions.EVERYONE,)),
        permissions.Rule("shares.json", read=(*neighbours, aggregator)),
        permissions.Rule("masked.json", read=(aggregator,)),
        permissions.Rule("reveal.json", read=(aggregator,)),
    )
    return permissions.Folder(owner, _COMMENT, rules, terminal=True)


def aggregator_folder(owner: str, members: Iterable[str]) -> permissions.Folder:
    """The aggregator's round: who takes part, for the members; the result, for everyone."""
    readers = tuple(members)
    rules = (
        permissions.Rule("roster.json", read=readers),
        permissions.Rule("shared.json", read=readers),
        permissions.Rule("survivors.json", read=readers),
        permissions.Rule("result.json", read=(permissions.EVERYONE,)),
    )
    return permissions.Folder(owner, _COMMENT, rules, terminal=True)


_COMMENT = "Written by cpu-tracker: secure aggregation (docs/secure-aggregation.md)."


def _read(path: Path, kind: str, round_id: str | None) -> dict[str, Any] | None:
    try:
        doc = storage.strict_json(storage.read_untrusted(path, MAX_BYTES))
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("kind") != kind:
        return None
    if round_id is not None and doc.get("round") != round_id:
        return None
    return doc


def _wait(clock: Clock, deadline: float, ready: Callable[[], bool]) -> bool:
    while not ready():
        if clock.now() >= deadline:
            return False
        clock.sleep(min(clock.poll, max(deadline - clock.now(), 0.0)))
    return True


# -- keys --------------------------------------------------------------------------------------


def publish_keys(tree: Tree, me: Member, round_id: str, aggregator: str) -> None:
    """Round 0: this round's fresh public keys (their folder's grants come with them; the
    shares' readers are known only once the roster is, so they are granted then)."""
    keys = me.rekey()
    path = tree.file(me.name, round_id, "keys")
    _write(
        tree,
        me.name,
        path,
        {"round": round_id, "c": _b64(keys.c), "s": _b64(keys.s)},
        member_folder(me.name, (), aggregator),
    )


def read_keys(tree: Tree, who: str, round_id: str) -> PublicKeys | None:
    doc = _read(tree.file(who, round_id, "keys"), "keys", round_id)
    try:
        keys = PublicKeys(_unb64(doc["c"]), _unb64(doc["s"])) if doc else None
    except (KeyError, ValueError):
        return None
    return keys if keys is not None and len(keys.c) == len(keys.s) == 32 else None


# -- a member's round --------------------------------------------------------------------------


def member_round(
    tree: Tree,
    me: Member,
    aggregator: str,
    round_id: str,
    start: float,
    step: float,
    value: int,
    noise_share: Callable[[Roster], int],
    before_sending: Callable[[], None],
    clock: Clock = Clock(),
    min_beta: float = 0.0,
    min_scale: float = 0.0,
) -> str:
    """Take part in one round; return what happened (``revealed`` or why it stopped).

    ``noise_share`` draws this member's share for the roster's calibration; ``before_sending``
    runs just before the masked value is written (the ledger's spend goes there: it is made
    before anything that depends on the value can be seen). A roster that calibrates for less
    noise than ``min_beta`` and ``min_scale`` (this member's own configuration) is refused."""
    deadline = _deadlines(start, step, MEMBER_WAITS)
    publish_keys(tree, me, round_id, aggregator)

    def from_aggregator(kind: str, until: float) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = _await(
            clock, until, lambda: _read(tree.file(aggregator, round_id, kind), kind, round_id)
        )
        return doc

    roster_doc = from_aggregator("roster", deadline["roster"])
    if roster_doc is None:
        return "no roster"
    try:
        members, beta, scale = roster_doc["members"], float(roster_doc["beta"]), float(roster_doc["scale"])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            return "bad roster"
        roster = Roster(round_id, tuple(members), beta, scale)
    except (KeyError, TypeError, ValueError, ProtocolError):
        return "bad roster"
    if roster.beta < min_beta or roster.scale < min_scale * (1 - 1e-12):
        return (
            f"the roster calibrates for beta {roster.beta:g} and scale {roster.scale:g}, less noise than "
            f"this member's beta {min_beta:g} and scale {min_scale:g}"
        )
    keys = {who: k for who in roster.members if (k := read_keys(tree, who, round_id)) is not None}
    if keys.get(me.name) != me.public():
        return "not in the roster with this round's keys"
    peers = roster.neighbours(me.name)
    if any(p not in keys for p in peers):
        return "a neighbour's keys are missing"
    mine = member_folder(me.name, peers, aggregator)

    def send(name: str, body: dict[str, Any]) -> None:
        _write(tree, me.name, tree.file(me.name, round_id, name), {"round": round_id, **body}, mine)

    send("shares", shares_body(me.share(roster, keys)))
    shared_doc = from_aggregator("shared", deadline["shared"])
    if shared_doc is None:
        return "no list of who shared"
    shared = _names(shared_doc.get("shared")) & set(roster.members)
    expected = [p for p in peers if p in shared]
    inbox = _await(clock, deadline["inbox"], lambda: _boxes_for(tree, me.name, round_id, expected))
    if inbox is None:
        return "a neighbour's shares did not arrive"
    masked = me.masked(roster, keys, shared, value, noise_share(roster))
    before_sending()
    send("masked", {"masked": masked})
    survivors_doc = from_aggregator("survivors", deadline["survivors"])
    if survivors_doc is None:
        return "no survivor list"
    try:
        survivors = Survivors(_names(survivors_doc["shared"]), _names(survivors_doc["present"]))
        revealed = me.reveal(roster, keys, survivors, inbox)
    except (KeyError, TypeError, ProtocolError, ValueError) as exc:
        return f"refused to reveal: {exc}"
    send("reveal", reveal_body(revealed))
    return "revealed"


def keys_body(keys: PublicKeys) -> dict[str, Any]:
    return {"c": _b64(keys.c), "s": _b64(keys.s)}


def shares_body(boxes: Mapping[str, bytes]) -> dict[str, Any]:
    return {"boxes": {peer: _b64(box) for peer, box in boxes.items()}}


def reveal_body(revealed: Mapping[str, Reveal]) -> dict[str, Any]:
    return {
        "reveals": {
            about: {"kind": k, "index": i, "share": _b64(sh)} for about, (k, (i, sh)) in revealed.items()
        }
    }


def message_bytes(round_id: str, kind: str, body: dict[str, Any]) -> int:
    """The size of the file ``_write`` makes of ``body``."""
    doc = {"schema": SCHEMA, "kind": kind, "round": round_id, **body}
    return len((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _names(value: Any) -> frozenset[str]:
    """A list of member names from a file another machine wrote; anything else is empty."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return frozenset()
    return frozenset(value)


def _boxes_for(tree: Tree, me: str, round_id: str, senders: Iterable[str]) -> dict[str, bytes] | None:
    """The sealed share each of ``senders`` wrote for ``me``, or None while one is missing."""
    inbox = {}
    for sender in senders:
        doc = _read(tree.file(sender, round_id, "shares"), "shares", round_id)
        try:
            inbox[sender] = _unb64(doc["boxes"][me]) if doc else b""
        except (KeyError, TypeError, ValueError):
            return None
        if not inbox[sender]:
            return None
    return inbox


def _await(clock: Clock, deadline: float, attempt: Callable[[], Any]) -> Any:
    """``attempt()`` until it gives something other than None, or None at the deadline."""
    found = None

    def ready() -> bool:
        nonlocal found
        found = attempt()
        return found is not None

    _wait(clock, deadline, ready)
    return found


# -- the aggregator's round --------------------------------------------------------------------


def aggregator_round(
    tree: Tree,
    me: str,
    members: Iterable[str],
    round_id: str,
    start: float,
    step: float,
    beta: float,
    scale: float,
    clock: Clock = Clock(),
) -> dict[str, Any]:
    """Run one round for ``members`` (those with keys take part); publish and return the result."""
    deadline = _deadlines(start, step, AGGREGATOR_COLLECTS)
    candidates = sorted(set(members))

    def round_keys() -> dict[str, PublicKeys]:
        return {who: k for who in candidates if (k := read_keys(tree, who, round_id)) is not None}

    _wait(clock, deadline["keys"], lambda: len(round_keys()) == len(candidates))
    keys = round_keys()
    if not keys:
        return {"round": round_id, "members": 0, "sum_units": None, "aborted": "no member published keys"}
    roster = Roster(round_id, tuple(keys), beta, scale)
    ours = aggregator_folder(me, roster.members)

    def publish(name: str, body: dict[str, Any]) -> None:
        _write(tree, me, tree.file(me, round_id, name), {"round": round_id, **body}, ours)

    publish("roster", {"members": list(roster.members), "beta": beta, "scale": scale})

    def collected(kind: str) -> dict[str, dict[str, Any]]:
        found = {}
        for who in roster.members:
            doc = _read(tree.file(who, round_id, kind), kind, round_id)
            if doc is not None:
                found[who] = doc
        return found

    _wait(clock, deadline["shares"], lambda: len(collected("shares")) == len(roster.members))
    shared = frozenset(collected("shares"))
    publish("shared", {"shared": sorted(shared)})
    _wait(clock, deadline["masked"], lambda: set(collected("masked")) >= shared)
    masked: dict[str, int] = {}
    for who, doc in collected("masked").items():
        value = doc.get("masked")
        if (
            who in shared
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value < masks.MODULUS
        ):
            masked[who] = value
    survivors = Survivors(shared, frozenset(masked))
    result: dict[str, Any] = {
        "members": len(survivors.present),
        "roster": len(roster.members),
        "calibrated": roster.calibrated,
        "sum_units": None,
    }
    if len(survivors.present) < roster.calibrated:
        result["aborted"] = (
            f"{len(survivors.present)} arrived, fewer than the {roster.calibrated} calibrated for"
        )
        publish("result", result)
        return result
    publish("survivors", {"shared": sorted(shared), "present": sorted(masked)})
    _wait(clock, deadline["reveal"], lambda: set(collected("reveal")) >= survivors.present)
    reveals: dict[str, dict[str, Reveal]] = {}
    for who, doc in collected("reveal").items():
        reveals[who] = _parse_reveals(doc.get("reveals"))
    try:
        total = unmask(roster, keys, survivors, masked, reveals)
    except ProtocolError as exc:
        result["aborted"] = str(exc)
    else:
        result.update(sum_units=total, mean=total / len(survivors.present) / 100)
        result["aborted"] = None
    publish("result", result)
    return result


def _parse_reveals(raw: Any) -> dict[str, Reveal]:
    out: dict[str, Reveal] = {}
    if not isinstance(raw, Mapping):
        return out
    for about, item in raw.items():
        try:
            kind, index, share = item["kind"], item["index"], _unb64(item["share"])
        except (KeyError, TypeError, ValueError):
            continue
        if kind in ("b", "s") and isinstance(index, int) and 0 < index < 1 << 16 and len(share) == 32:
            out[str(about)] = (kind, (index, share))
    return out


def _deadlines(start: float, step: float, steps: Mapping[str, int]) -> dict[str, float]:
    return {phase: start + step * n for phase, n in steps.items()}
