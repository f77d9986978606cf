"""The rounds over a SyftBox tree: each message a signed JSON file in its writer's datasite,
relayed through the aggregator (docs/secure-aggregation.md, "Rounds and files").

A relay can drop a message but not forge, alter or replay one; a file that fails its checks is
a member that did not take part."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.errors import OutputError
from cpu_tracker_daemon.layout import app_dir, secagg_dir
from cpu_tracker_daemon.secagg import identity, masks
from cpu_tracker_daemon.secagg.protocol import (
    Member,
    ProtocolError,
    PublicKeys,
    Reveal,
    Roster,
    Survivors,
    graph_of,
    unmask,
    went_on,
)

SCHEMA = "cpu-tracker/secagg/v2"
MAX_BYTES = 8 << 20  # the roster at 100,000 members: some 250 bytes each
# A member believes a quorum of endorsements that is not there with odds below 2^-40 a round.
CERTAINTY_BITS = 40
# Each of the aggregator's polls rereads every member file still missing, and once most are in
# the rest are mostly members who dropped: its polls drift apart, each after an eighth of the
# time it has waited (a file is noticed at most that much later; the deadline's look stays).
PATIENCE = 0.125
_ROUND = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_ENVELOPE = ("schema", "kind", "round", "from", "sig")
# When each wait ends, in steps from the round's start: a member waits for the aggregator's next
# file two steps after the aggregator stops collecting the files that file is made from, so a
# file published at its deadline is still seen by a member whose clock is up to a step fast.
# One step must exceed the tree's sync delay.
MEMBER_WAITS = {"roster": 3, "openings": 5, "inbox": 7, "proceed": 9, "survivors": 11, "endorsements": 13}
AGGREGATOR_COLLECTS = {
    "keys": 1,
    "open": 3,
    "shares": 5,
    "check": 7,
    "masked": 9,
    "endorse": 11,
    "reveal": 13,
}

Log = Callable[..., None]
_P = ParamSpec("_P")
WRITE_FAILED = "could not write its message"
MAX_SCALE = 1e12  # grid units: a noise scale past this buries any sum (and exp(-1 / scale) is 1)
BOX_BYTES = 12 + 68 + 16  # a sealed share: AES-GCM's nonce, the index and two shares, its tag


_SYSTEM_RANDOM = random.SystemRandom()


def _no_log(event: str, **fields: Any) -> None:
    return None


@dataclass(frozen=True)
class Tree:
    """Where each file of the protocol lives in a SyftBox folder."""

    root: Path  # the SyftBox folder: its datasites/ holds everyone's
    _folders: dict[tuple[str, str], tuple[Path, str]] = field(default_factory=dict, compare=False, repr=False)

    def base(self, who: str) -> Path:
        return secagg_dir(app_dir(self.root, who))

    def folder(self, who: str, round_id: str) -> Path:
        """``who``'s folder for the round (its names checked once, the path kept: a round
        reads and writes each folder many times)."""
        return self._folder(who, round_id)[0]

    def file(self, who: str, round_id: str, name: str) -> Path:
        return self.folder(who, round_id) / f"{name}.json"

    def present(self, who: str, round_id: str, name: str) -> bool:
        """Whether anything is at ``file(...)``, links followed: a quick look before the careful
        read, since a poll mostly finds nothing yet."""
        try:
            os.stat(f"{self._folder(who, round_id)[1]}/{name}.json")  # noqa: PTH116 - no Path for a miss
        except (OSError, ValueError):
            return False
        return True

    def _folder(self, who: str, round_id: str) -> tuple[Path, str]:
        found = self._folders.get((who, round_id))
        if found is None:
            if not _ROUND.match(round_id):
                raise ProtocolError(f"round id {round_id!r} is not a safe directory name")
            if not identity._safe_name(who):
                raise ProtocolError(f"{who!r} is not a datasite name")
            path = self.base(who) / round_id
            found = self._folders[who, round_id] = (path, os.fspath(path))
        return found


@dataclass(frozen=True)
class RoundClock:
    """The round's time: seconds on a monotonic clock, and a way to wait."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll: float = 0.2


@dataclass
class Keyring:
    """Whose signature is whose: each peer's identity key as pinned (on first use, from its
    did.json in the tree); a key that changed is refused and said once in the log."""

    tree: Tree
    pins: identity.Pins
    log: Log = _no_log
    _refused: set[str] = field(default_factory=set)

    def prefetch(self, who: Iterable[str]) -> None:
        """Pin, in one write, the published keys of those not pinned yet."""
        found = {}
        for name in who:
            if (
                self.pins.get(name) is None
                and (key := identity.read_identity(self.tree.root, name)) is not None
            ):
                found[name] = key
        if found:
            self.pins.check_all(found)

    def key_of(self, who: str) -> bytes | None:
        key = self.pins.get(who)
        if key is None:
            self.prefetch((who,))
            key = self.pins.get(who)
        return key

    def verify(self, who: str, round_id: str, kind: str, body: Mapping[str, Any], signature: Any) -> bool:
        key = self.key_of(who)
        if key is not None and identity.verify_message(key, round_id, kind, body, signature, sender=who):
            return True
        if who not in self._refused:
            self._refused.add(who)
            published = identity.read_identity(self.tree.root, who)
            if key is None:
                reason = "no identity key is published (public/did.json)"
            elif published is not None and published != key:
                reason = (
                    f"its identity key changed from {identity.fingerprint(key)} to "
                    f"{identity.fingerprint(published)}; if its owner confirms the new key, run "
                    f"'cpu-tracker secagg accept-key {who}'"
                )
            else:
                reason = "the signature does not verify (forged, altered or replayed)"
            self.log("secagg.message_refused", sender=who, round=round_id, kind=kind, reason=reason)
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, size: int | None = None) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_BYTES:
        raise ValueError("not base64 text")
    data = binascii.a2b_base64(text, strict_mode=True)  # base64.b64decode(validate=True), less its wrapper
    if size is not None and len(data) != size:
        raise ValueError(f"{size} bytes expected")
    return data


def _signed(
    signer: identity.Identity, who: str, round_id: str, kind: str, body: dict[str, Any]
) -> dict[str, Any]:
    sig = identity.sign_message(signer, round_id, kind, body, sender=who)
    return {"schema": SCHEMA, "kind": kind, "round": round_id, "from": who, **body, "sig": sig}


def _write(
    tree: Tree,
    signer: identity.Identity,
    who: str,
    round_id: str,
    kind: str,
    body: dict[str, Any],
    folder: permissions.Folder | None,
    name: str | None = None,
) -> None:
    """Write one signed message; with ``folder``, first the round folder and its permission
    files (they grant each file's readers; the folder is terminal, so nothing above grants
    more). A round passes its folder with its first message only: the aggregator's grants name
    every member, and rendering them again for each of its messages made a round quadratic."""
    path = tree.file(who, round_id, name or kind)
    if folder is not None:
        storage.ensure_dir(path.parent, tree.root)
        permissions.ensure(path.parent, folder, tree.root)
    doc = _signed(signer, who, round_id, kind, body)
    storage.atomic_write(path, _encode(doc), storage.PUBLIC_FILE_MODE, tree.root)


def _encode(doc: dict[str, Any]) -> bytes:
    """A message's file: compact JSON (the C encoder; an indented file would take the slower
    pure-Python one)."""
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _read(
    tree: Tree, keyring: Keyring, who: str, round_id: str, kind: str, name: str | None = None
) -> dict[str, Any] | None:
    """``who``'s message of ``kind`` in this round, its signature checked, or None. The file is
    reached from the tree's root without following a link (a round folder linked to another
    member's is not read as this member's)."""
    if not tree.present(who, round_id, name or kind):
        return None
    path = tree.file(who, round_id, name or kind)
    try:
        doc = storage.strict_json(storage.read_untrusted_below(path, tree.root, MAX_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("kind") != kind:
        return None
    if doc.get("round") != round_id or doc.get("from") != who:
        return None
    body = {k: v for k, v in doc.items() if k not in _ENVELOPE}
    if not keyring.verify(who, round_id, kind, body, doc.get("sig")):
        return None
    return {**body, "sig": doc["sig"]}  # checked: the aggregator relays it with the content


def member_folder(owner: str, aggregator: str) -> permissions.Folder:
    """A member's round: everything for the aggregator alone, who relays what others need."""
    return permissions.Folder(
        owner, _COMMENT, (permissions.Rule("*.json", read=(aggregator,)),), terminal=True
    )


def aggregator_folder(owner: str, members: Iterable[str]) -> permissions.Folder:
    """The aggregator's round: the roster's files for its members, each inbox for its member,
    the result for everyone."""
    readers = tuple(members)
    rules = [
        permissions.Rule(f"{name}.json", read=readers)
        for name in ("roster", "openings", "proceed", "survivors", "endorsements")
    ]
    rules += [permissions.Rule(f"inbox-{m}.json", read=(m,)) for m in readers]
    rules.append(permissions.Rule("result.json", read=(permissions.EVERYONE,)))
    return permissions.Folder(owner, _COMMENT, tuple(rules), terminal=True)


_COMMENT = "Written by cpu-tracker: secure aggregation (docs/secure-aggregation.md)."


def _wait(clock: RoundClock, deadline: float, ready: Callable[[], bool], patience: float = 0.0) -> bool:
    """``ready()`` every poll until it is true, or once more at the deadline. With ``patience``,
    the polls drift apart: each waits at least that fraction of the time waited so far."""
    started = clock.now()
    while not ready():
        now = clock.now()
        if now >= deadline:
            return False
        clock.sleep(min(max(clock.poll, patience * (now - started)), max(deadline - now, 0.0)))
    return True


def _await(clock: RoundClock, deadline: float, attempt: Callable[[], Any]) -> Any:
    """``attempt()`` until it gives something other than None, or None at the deadline."""
    found = None

    def ready() -> bool:
        nonlocal found
        found = attempt()
        return found is not None

    _wait(clock, deadline, ready)
    return found


def _deadlines(start: float, step: float, steps: Mapping[str, int]) -> dict[str, float]:
    return {phase: start + step * n for phase, n in steps.items()}


# -- message bodies --------------------------------------------------------------------------------


def keys_body(keys: PublicKeys) -> dict[str, Any]:
    return {"c": _b64(keys.c), "s": _b64(keys.s), "commit": _b64(keys.commit)}


def parse_keys(body: Mapping[str, Any]) -> PublicKeys:
    return PublicKeys(_unb64(body["c"], 32), _unb64(body["s"], 32), _unb64(body["commit"], 32))


def shares_body(roster: Roster, boxes: Mapping[str, bytes]) -> dict[str, Any]:
    return {"roster": roster.digest.hex(), "boxes": {peer: _b64(box) for peer, box in boxes.items()}}


def reveal_body(roster: Roster, revealed: Mapping[str, Reveal]) -> dict[str, Any]:
    return {
        "roster": roster.digest.hex(),
        "reveals": {
            about: {"kind": k, "index": i, "share": _b64(sh)} for about, (k, (i, sh)) in revealed.items()
        },
    }


def roster_body(roster: Roster, signatures: Mapping[str, str]) -> dict[str, Any]:
    return {
        "beta_dropped": roster.beta_dropped,
        "beta_colluding": roster.beta_colluding,
        "scale": roster.scale,
        "local_scale": roster.local_scale,
        "keys": {m: {**keys_body(roster.keys[m]), "sig": signatures[m]} for m in roster.members},
    }


def parse_roster(round_id: str, body: Mapping[str, Any]) -> tuple[Roster, dict[str, Any]]:
    """The roster in an aggregator's file and each member's signature over its keys."""
    entries = body["keys"]
    if not isinstance(entries, Mapping):
        raise TypeError("keys must be a table")
    keys = {str(m): parse_keys(e) for m, e in entries.items()}
    signatures = {str(m): e.get("sig") for m, e in entries.items()}
    numbers = [body[k] for k in ("beta_dropped", "beta_colluding", "scale", "local_scale")]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
        raise ValueError("the calibration must be numbers")
    try:
        calibration = [float(x) for x in numbers]
    except OverflowError:  # an integer past a float's range
        raise ValueError("the calibration must be numbers a float holds") from None
    return Roster(round_id, keys, *calibration), signatures


def message_bytes(round_id: str, kind: str, body: dict[str, Any]) -> int:
    """The size of the file ``_write`` makes of ``body`` (its signature included)."""
    doc = {
        "schema": SCHEMA,
        "kind": kind,
        "round": round_id,
        "from": "m00000@example.org",
        **body,
        "sig": "x" * 88,
    }
    return len(_encode(doc))


def _names(value: Any) -> frozenset[str]:
    """A list of member names from a file another machine wrote; anything else is empty."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return frozenset()
    return frozenset(value)


def _of_roster(body: Mapping[str, Any] | None, roster: Roster) -> Mapping[str, Any] | None:
    return body if body is not None and body.get("roster") == roster.digest.hex() else None


# -- a member's round --------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What a member asks of a roster before it takes part: at least its own calibration."""

    beta_dropped: float = 0.0
    beta_colluding: float = 0.0
    scale: float = 0.0
    local_scale: float = 0.0
    min_members: int = 1

    def refusal(self, roster: Roster) -> str | None:
        if max(roster.scale, roster.local_scale) > MAX_SCALE:
            return f"the roster's noise scale is beyond {MAX_SCALE:g} grid units: no sum could be read"
        if len(roster.members) < self.min_members:
            return (
                f"the roster has {len(roster.members)} members, fewer than this member's minimum "
                f"{self.min_members}"
            )
        ours = (self.beta_dropped, self.beta_colluding, self.scale, self.local_scale)
        theirs = (roster.beta_dropped, roster.beta_colluding, roster.scale, roster.local_scale)
        if any(t < o * (1 - 1e-12) for t, o in zip(theirs, ours, strict=True)):
            return (
                "the roster calibrates for less noise than this member's configuration "
                f"(beta_dropped {theirs[0]:g}, beta_colluding {theirs[1]:g}, scale {theirs[2]:g}, "
                f"local scale {theirs[3]:g} against {ours[0]:g}, {ours[1]:g}, {ours[2]:g}, {ours[3]:g})"
            )
        return None


def _write_failures_said(round_: Callable[_P, str]) -> Callable[_P, str]:
    """A file the member cannot write (a full disk) ends its round, said as such: whether it
    had spent is the caller's ledger's to say."""

    @functools.wraps(round_)
    def said(*args: _P.args, **kwargs: _P.kwargs) -> str:
        try:
            return round_(*args, **kwargs)
        except OutputError as exc:
            return f"{WRITE_FAILED} ({exc.reason})"

    return said


@_write_failures_said
def member_round(  # noqa: PLR0915 - the phases read top to bottom, in the order they run
    tree: Tree,
    me: Member,
    signer: identity.Identity,
    keyring: Keyring,
    aggregator: str,
    round_id: str,
    start: float,
    step: float,
    value: int,
    noise_share: Callable[[Roster], int],
    before_sending: Callable[[], None],
    clock: RoundClock = RoundClock(),
    requirements: Requirements = Requirements(),
) -> str:
    """Take part in one round; return what happened (``revealed`` or why it stopped).

    ``noise_share`` draws this member's noise for the roster's calibration (its share of the
    central noise and its own); ``before_sending`` runs just before the masked value is written
    (the ledger's spend goes there: it is made before anything that depends on the value can be
    seen). Everything a neighbour or the aggregator could break is checked before it: a round
    that ends earlier costs nothing. A file this member cannot write (a full disk) ends its
    round, said as such: whether it had spent is the caller's ledger's to say."""
    deadline = _deadlines(start, step, MEMBER_WAITS)
    mine: list[permissions.Folder] = [member_folder(me.name, aggregator)]  # until the first send

    def send(kind: str, body: dict[str, Any]) -> None:
        _write(tree, signer, me.name, round_id, kind, body, mine.pop() if mine else None)

    def relayed(name: str, kind: str, until: float, roster: Roster | None = None) -> Mapping[str, Any] | None:
        def attempt() -> Mapping[str, Any] | None:
            body = _read(tree, keyring, aggregator, round_id, kind, name)
            return body if roster is None else _of_roster(body, roster)

        found: Mapping[str, Any] | None = _await(clock, until, attempt)
        return found

    send("keys", keys_body(me.rekey()))
    roster_doc = relayed("roster", "roster", deadline["roster"])
    if roster_doc is None:
        return "no roster"
    try:
        roster, signatures = parse_roster(round_id, roster_doc)
        randomness = me.accept(roster)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"bad roster: {exc}"
    if (why := requirements.refusal(roster)) is not None:
        return why
    send("open", {"roster": roster.digest.hex(), "r": _b64(randomness)})
    openings_doc = relayed("openings", "openings", deadline["openings"], roster)
    if openings_doc is None:
        return "no openings"
    try:
        raw = openings_doc["openings"]
        graph = graph_of(roster, {m: _unb64(raw.get(m), 32) for m in roster.members})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"bad openings: {exc}"
    peers = graph.neighbours(me.name)
    keyring.prefetch(peers)
    forged = [
        p
        for p in peers
        if not keyring.verify(p, round_id, "keys", keys_body(roster.keys[p]), signatures.get(p))
    ]
    if forged:
        return f"refused: the keys of {', '.join(sorted(forged)[:3])} are not signed by their owners"
    unusable = [
        p
        for p in peers
        if not (masks.valid_public(roster.keys[p].c) and masks.valid_public(roster.keys[p].s))
    ]
    if unusable:
        return f"refused: the keys of {', '.join(sorted(unusable)[:3])} cannot be agreed with"
    send("shares", shares_body(roster, me.share(graph)))
    inbox_doc = relayed(f"inbox-{me.name}", "inbox", deadline["inbox"], roster)
    if inbox_doc is None:
        return "no inbox"
    raw_boxes = inbox_doc.get("boxes")
    if not isinstance(raw_boxes, Mapping):
        return "bad inbox: no boxes"
    boxes, garbled = {}, []
    for sender, text in raw_boxes.items():
        try:
            boxes[str(sender)] = _unb64(text, BOX_BYTES)
        except ValueError:
            garbled.append(str(sender))
    opened, bad = me.check_inbox(graph, boxes)
    bad = sorted({*bad, *garbled})
    send("check", {"roster": roster.digest.hex(), "bad": bad})
    proceed = relayed("proceed", "proceed", deadline["proceed"], roster)
    if proceed is None:
        return "no word to proceed"
    shared = _names(proceed.get("shared"))
    if me.name not in shared:
        why = f"a box from {', '.join(bad[:3])} did not open" if bad else "the aggregator left it out"
        return f"left out before the spend: {why}"
    if any(peer in shared for peer in bad):
        return "refused: the aggregator kept a member whose box did not open"
    try:
        masked = me.masked(graph, shared, value, noise_share(roster), opened)
    except (ProtocolError, ValueError, OverflowError) as exc:  # a noise scale no sampler takes, too
        return f"refused before the spend: {exc}"
    before_sending()
    send("masked", {"roster": roster.digest.hex(), "shared": went_on(roster, shared).hex(), "masked": masked})
    survivors_doc = relayed("survivors", "survivors", deadline["survivors"], roster)
    if survivors_doc is None:
        return "no survivor list"
    try:
        survivors = Survivors(_names(survivors_doc["shared"]), _names(survivors_doc["present"]))
        unproven = _unproven(
            keyring, round_id, roster, survivors.shared, survivors.present, survivors_doc.get("proofs")
        )
        if unproven:
            listed = ", ".join(unproven[:3])
            return f"refused to reveal: {listed} listed as arrived without its signed masked value"
        digest = me.endorse(graph, survivors)
    except (KeyError, TypeError, ValueError) as exc:
        return f"refused to reveal: {exc}"
    send("endorse", {"roster": roster.digest.hex(), "survivors": digest.hex()})
    endorsed = relayed("endorsements", "endorsements", deadline["endorsements"], roster)
    if endorsed is None or endorsed.get("survivors") != digest.hex():
        return "refused to reveal: no endorsements of the survivor set this member endorsed"
    try:
        endorsers = _endorsers(keyring, round_id, roster, digest, endorsed["endorsements"])
        revealed = me.reveal(graph, survivors, endorsers, opened)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"refused to reveal: {exc}"
    send("reveal", reveal_body(roster, revealed))
    return "revealed"


def sample_size(claimed: int, quorum: int) -> int:
    """How many of ``claimed`` endorsements a member checks, drawn at random, so that were fewer
    than ``quorum`` of them genuine it would draw a bad one but for odds of 2^-CERTAINTY_BITS:
    the least s with ((quorum - 1) / claimed)^s <= 2^-CERTAINTY_BITS (docs/secure-aggregation.md,
    "Checking the quorum"). ``claimed`` itself when there are too few to sample from."""
    if quorum <= 1 or claimed < quorum:
        return claimed
    return min(claimed, math.ceil(CERTAINTY_BITS * math.log(2) / math.log(claimed / (quorum - 1))))


def _unproven(
    keyring: Keyring,
    round_id: str,
    roster: Roster,
    shared: frozenset[str],
    present: Iterable[str],
    proofs: Any,
) -> list[str]:
    """Members listed as arrived whose signed masked message, naming this same U2, the aggregator
    did not relay: an arrival is proved by the member's own signature, never taken on the
    aggregator's word (which could list as arrived members it left out, and leave less noise
    than the round needs), and only for the U2 that member masked with (a member shown another
    U2 masked with other neighbours; listing it as arrived here would expose its value)."""
    if not isinstance(proofs, Mapping):
        return sorted(present)
    body = {"roster": roster.digest.hex(), "shared": went_on(roster, shared).hex(), "masked": None}
    missing = []
    for member in sorted(present):
        proof = proofs.get(member)
        if not isinstance(proof, Mapping):
            missing.append(member)
            continue
        body["masked"] = proof.get("masked")
        if not keyring.verify(member, round_id, "masked", body, proof.get("sig")):
            missing.append(member)
    return missing


def _endorsers(
    keyring: Keyring,
    round_id: str,
    roster: Roster,
    digest: bytes,
    signatures: Any,
    rng: random.Random = _SYSTEM_RANDOM,
) -> set[str]:
    """The roster members who endorsed ``digest``, enough to reach the quorum or all there are.
    When a random sample of the claimed signatures (:func:`sample_size`, drawn from the OS
    CSPRNG after the file was read) is smaller than the quorum and verifies in full, the claim
    stands; otherwise, as when the sample meets a bad signature, every signature is checked
    until the quorum is reached."""
    if not isinstance(signatures, Mapping):
        return set()
    body = {"roster": roster.digest.hex(), "survivors": digest.hex()}
    members = set(roster.members)
    candidates = [m for m in signatures if m in members]
    keyring.prefetch(candidates)
    sample = sample_size(len(candidates), roster.quorum)
    if sample < roster.quorum and all(
        keyring.verify(m, round_id, "endorse", body, signatures[m]) for m in rng.sample(candidates, sample)
    ):
        return set(candidates)
    valid: set[str] = set()
    for member in candidates:
        if keyring.verify(member, round_id, "endorse", body, signatures[member]):
            valid.add(member)
            if len(valid) >= roster.quorum:
                break
    return valid


# -- the aggregator's round --------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What the aggregator announces: the fractions it tolerates and the noise scales."""

    beta_dropped: float
    beta_colluding: float
    scale: float
    local_scale: float


def aggregator_round(  # noqa: PLR0915 - the phases read top to bottom, in the order they run
    tree: Tree,
    signer: identity.Identity,
    keyring: Keyring,
    me: str,
    members: Iterable[str],
    round_id: str,
    start: float,
    step: float,
    calibration: Calibration,
    clock: RoundClock = RoundClock(),
) -> dict[str, Any]:
    """Run one round for ``members`` (those whose signed keys arrive take part); publish and
    return the result."""
    deadline = _deadlines(start, step, AGGREGATOR_COLLECTS)
    candidates = sorted(set(members))
    keyring.prefetch(candidates)
    result: dict[str, Any] = {"members": 0, "roster": 0, "calibrated": 0, "sum_units": None}

    def collect(
        kind: str, among: Iterable[str], roster: Roster | None = None, keep: Keep = _whole
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for who in among:
            body: Mapping[str, Any] | None = _read(tree, keyring, who, round_id, kind)
            if roster is not None:
                body = _of_roster(body, roster)
            if body is not None:
                found[who] = keep(body)
        return found

    def gather(
        kind: str, among: list[str], roster: Roster | None = None, keep: Keep = _whole
    ) -> dict[str, Any]:
        """Each member's file of ``kind`` as ``keep`` makes it, by the phase's deadline (``keep``
        drops what is not needed as each file is read, so no file's JSON is kept whole)."""
        got: dict[str, Any] = {}

        def ready() -> bool:
            got.update(collect(kind, [w for w in among if w not in got], roster, keep))
            return len(got) == len(among)

        _wait(clock, deadline[kind], ready, PATIENCE)
        return got

    keys: dict[str, PublicKeys] = {}
    signatures: dict[str, str] = {}
    for who, body in gather("keys", candidates).items():
        try:
            keys[who] = parse_keys(body)
        except (KeyError, TypeError, ValueError):
            continue
        if not (masks.valid_public(keys[who].c) and masks.valid_public(keys[who].s)):
            keyring.log(
                "secagg.member_refused", round=round_id, member=who, reason="round keys cannot be agreed with"
            )
            del keys[who]
            continue
        signatures[who] = body["sig"]
    if not keys:
        result["aborted"] = "no member published keys"
        return result
    roster = Roster(
        round_id,
        keys,
        calibration.beta_dropped,
        calibration.beta_colluding,
        calibration.scale,
        calibration.local_scale,
    )
    result.update(roster=len(roster.members), calibrated=roster.calibrated)
    ours: list[permissions.Folder] = [aggregator_folder(me, roster.members)]  # until the first

    def publish(kind: str, body: dict[str, Any], name: str | None = None) -> None:
        _write(tree, signer, me, round_id, kind, body, ours.pop() if ours else None, name)

    def abort(why: str) -> dict[str, Any]:
        result["aborted"] = why
        publish("result", result)
        return result

    digest = roster.digest.hex()
    publish("roster", roster_body(roster, signatures))
    opens = gather("open", list(roster.members), roster)
    openings: dict[str, bytes] = {}
    for who, body in opens.items():
        try:
            openings[who] = _unb64(body["r"], 32)
        except (KeyError, ValueError):
            continue
    try:
        graph = graph_of(roster, openings)
    except ProtocolError as exc:
        return abort(f"before any share: {exc}")
    publish("openings", {"roster": digest, "openings": {m: _b64(r) for m, r in openings.items()}})
    boxes: dict[str, dict[str, str]] = {}
    for who, body in gather("shares", list(roster.members), roster).items():
        sent = body.get("boxes")
        if isinstance(sent, Mapping) and all(_well_formed(sent.get(p)) for p in graph.neighbours(who)):
            boxes[who] = {p: sent[p] for p in graph.neighbours(who)}
        else:  # a box missing or malformed: it has not shared, and nobody will mask with it
            keyring.log(
                "secagg.member_refused", round=round_id, member=who, reason="its boxes are incomplete"
            )
    if len(boxes) < roster.must_arrive:
        return abort(f"{len(boxes)} members shared, fewer than the {roster.must_arrive} the round needs")
    shared_by = list(boxes)
    inboxes: dict[str, dict[str, str]] = {member: {} for member in roster.members}
    for sender, sent in boxes.items():  # each box to its recipient, if a neighbour of its sender
        for recipient in graph.neighbours(sender):
            if recipient in sent:
                inboxes[recipient][sender] = sent[recipient]
    del boxes
    for member, inbox in inboxes.items():
        publish("inbox", {"roster": digest, "boxes": inbox}, name=f"inbox-{member}")
    del inboxes
    checks = gather("check", sorted(shared_by), roster)
    everyone = frozenset(roster.members)
    accusations = {who: _names(body.get("bad")) & everyone for who, body in checks.items()}
    leaving = _left_out(accusations)
    if leaving:
        keyring.log(
            "secagg.members_left_out", round=round_id, members=sorted(leaving)[:10], count=len(leaving)
        )
    shared = frozenset(checks) - leaving
    if len(shared) < roster.must_arrive:
        return abort(f"{len(shared)} members may go on, fewer than the {roster.must_arrive} the round needs")
    publish("proceed", {"roster": digest, "shared": sorted(shared)})
    masked: dict[str, int] = {}
    proofs: dict[str, dict[str, Any]] = {}
    named = went_on(roster, shared).hex()
    for who, body in gather("masked", sorted(shared), roster).items():
        value = body.get("masked")
        if body.get("shared") != named:  # it masked with another U2: its value is not in this sum
            continue
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < masks.MODULUS:
            masked[who] = value
            proofs[who] = {"masked": value, "sig": body["sig"]}  # it names this U2
    survivors = Survivors(shared, frozenset(masked))
    result["members"] = len(survivors.present)
    if len(survivors.present) < roster.must_arrive:
        return abort(f"{len(survivors.present)} arrived, fewer than the {roster.must_arrive} the round needs")
    publish(
        "survivors", {"roster": digest, "shared": sorted(shared), "present": sorted(masked), "proofs": proofs}
    )
    agreed = survivors.digest(roster).hex()
    endorsements = {
        who: body["sig"]
        for who, body in gather("endorse", sorted(survivors.present), roster).items()
        if body.get("survivors") == agreed
    }
    if len(endorsements) < roster.quorum:
        return abort(f"{len(endorsements)} members endorsed the survivor set, {roster.quorum} needed")
    publish("endorsements", {"roster": digest, "survivors": agreed, "endorsements": endorsements})
    reveals = gather(
        "reveal", sorted(survivors.present), roster, lambda body: _parse_reveals(body.get("reveals"))
    )
    try:
        total = unmask(graph, survivors, masked, reveals)
    except ProtocolError as exc:
        return abort(str(exc))
    result.update(sum_units=total, mean=total / len(survivors.present) / 100, aborted=None)
    publish("result", result)
    return result


Keep = Callable[[Mapping[str, Any]], Any]


def _whole(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body


def _left_out(accusations: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Who leaves the round, before anyone spends, over boxes that did not open. One of each
    such pair lies or is broken, and nobody else can tell which: a member named by two or more,
    or naming two or more, leaves alone (one liar cannot take two honest members with it);
    otherwise both ends of the accusation leave."""
    named: dict[str, set[str]] = {}
    for accuser, accused in accusations.items():
        for who in accused:
            named.setdefault(who, set()).add(accuser)
    out: set[str] = set()
    for accuser, accused in accusations.items():
        if len(accused) >= 2:
            out.add(accuser)
    for who, by in named.items():
        if len(by) >= 2:
            out.add(who)
    for accuser, accused in accusations.items():
        for who in accused:
            if accuser not in out and who not in out:
                out |= {accuser, who}
    return frozenset(out)


def _well_formed(box: Any) -> bool:
    try:
        _unb64(box, BOX_BYTES)
    except ValueError:
        return False
    return True


def _parse_reveals(raw: Any) -> dict[str, Reveal]:
    out: dict[str, Reveal] = {}
    if not isinstance(raw, Mapping):
        return out
    for about, item in raw.items():
        try:
            kind, index, share = item["kind"], item["index"], _unb64(item["share"], 32)
        except (KeyError, TypeError, ValueError):
            continue
        if kind in ("b", "s") and isinstance(index, int) and 0 < index < 1 << 16:
            out[str(about)] = (kind, (index, share))
    return out
