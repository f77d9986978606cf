"""Budget requests over SyftBox's RPC convention (syft-rpc's folders and messages), and the
owner's answers.

Request files are hostile: each is read capped and checked, and a bad one is skipped with a
reason. A reader can write only in its own folder, so that folder is who sent it; an approval
grants only what the owner was shown."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.budget.caps import CAPS
from cpu_tracker_daemon.budget.ledger import Decision, Ledger
from cpu_tracker_daemon.errors import UsageError
from cpu_tracker_daemon.layout import budget_endpoint_url, endpoint_parts
from cpu_tracker_daemon.untrusted import NotAccepted, finite_number

REQUEST_SCHEMA = "cpu-tracker/budget-request"
RESPONSE_SCHEMA = "cpu-tracker/budget-response"
REQUEST_SUFFIX = ".request"  # syft-rpc's names
RESPONSE_SUFFIX = ".response"
METHOD = "POST"
ANSWER_EXPIRES = timedelta(days=30)
MAX_BYTES = 8192
MAX_EPSILON = 1000.0
MAX_DELTA = 1e-4  # the ledger refuses more (ledger.MAX_TOTAL_DELTA)
MAX_REASON = 500
MAX_FILES_PER_READER = 20_000  # request files read from one reader's folder; the rest are counted
MAX_PER_REQUESTER = 100  # valid pending requests listed per requester, oldest first
CLOCK_SKEW = timedelta(minutes=5)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$")
_MESSAGE_KEYS = {"id", "sender", "url", "method", "headers", "body", "created", "expires"}
_MESSAGE_REQUIRED = _MESSAGE_KEYS - {"headers"}
_BODY_KEYS = {"schema", "schema_version", "cap", "epsilon", "delta", "reason"}
_BODY_REQUIRED = _BODY_KEYS - {"delta"}


@dataclass(frozen=True)
class Request:
    request_id: str
    requester: str
    cap: str
    epsilon: float
    delta: float
    reason: str
    created_at: str
    expires: str = ""
    digest: str = ""  # SHA-256 of the file's bytes

    @property
    def ask(self) -> tuple[str, str, float, float, str]:
        """What is asked, without the id: two files with the same ask are duplicates."""
        return (self.requester, self.cap, self.epsilon, self.delta, self.reason)


@dataclass
class Scan:
    pending: list[Request] = field(default_factory=list)
    decided: list[Request] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    skipped_from: Counter[str] = field(default_factory=Counter)  # by the reader whose folder held them


def requests_folder(owner: str, readers: Iterable[str]) -> permissions.Folder:
    """``rpc/budget/``: each reader may write request files in its own folder and read the answers
    there; nothing else, and nobody else's (terminal: the release folder's readers stop here)."""
    rules: list[permissions.Rule] = []
    for reader in readers:
        rules += [
            permissions.Rule(f"{reader}/*{REQUEST_SUFFIX}", write=(reader,)),
            permissions.Rule(f"{reader}/*{RESPONSE_SUFFIX}", read=(reader,)),
        ]
    return permissions.Folder(
        owner,
        "Written by cpu-tracker: each reader may write budget requests in its own folder and read answers.",
        tuple(rules),
        terminal=True,
    )


def ensure_requests_dir(layout: storage.Layout) -> Path:
    """Create the endpoint's folder (and, under SyftBox, its permission files); return it."""
    directory = layout.requests_dir
    storage.ensure_dir(directory, layout.root)
    if layout.syft_owner is not None:
        permissions.ensure(directory, requests_folder(layout.syft_owner, layout.syft_readers), layout.root)
    return directory


def endpoint_url(layout: storage.Layout) -> str | None:
    """The syft URL a request to this member must be addressed to (None outside SyftBox)."""
    if layout.syft_owner is None:
        return None
    return budget_endpoint_url(layout.syft_owner)


def request_message(
    request_id: str,
    sender: str,
    url: str,
    cap: str,
    epsilon: float,
    reason: str,
    created: datetime,
    expires: datetime,
    delta: float = 0.0,
) -> dict[str, Any]:
    """A budget request as a syft-rpc ``SyftRequest``: what a reader writes as ``<id>.request``."""
    ask = {"schema": REQUEST_SCHEMA, "schema_version": 1, "cap": cap, "epsilon": epsilon}
    ask |= {"delta": delta, "reason": reason}
    return {
        "id": request_id,
        "sender": sender,
        "url": url,
        "method": METHOD,
        "headers": {"content-type": "application/json"},
        "body": base64.b64encode(json.dumps(ask).encode()).decode(),
        "created": created.isoformat(),
        "expires": expires.isoformat(),
    }


class ProposesChanges(Protocol):
    """What :func:`propose` uses of a PySyft 0.10 data scientist's client
    (``client.datasite_watcher_syncer``): it sends one file to a peer's datasite as a change the
    peer's own syft accepts or refuses."""

    def on_file_change(
        self, relative_path: Path | str, content: str | None = None, process_now: bool = True
    ) -> None: ...


def propose(client: Any, member: str, message: dict[str, Any]) -> Path:
    """Send the request ``message`` (:func:`request_message`) to ``member`` through ``client``, a
    PySyft 0.10 client logged in as a data scientist (``syft.login_ds``). Under PySyft a data
    scientist's own files never travel: the request goes as a change proposed to the member's
    datasite, which the member's syft writes only where its ``syft.pub.yaml`` lets the sender
    write (the sender's own folder of the endpoint, ``*.request``). Returns its path in the syft
    folder; the answer arrives beside it after the member's and the client's next syncs."""
    watcher: ProposesChanges | None = getattr(client, "datasite_watcher_syncer", None)
    if watcher is None:
        raise UsageError(
            "this syft client cannot propose changes to a peer's datasite; log in with "
            "syft.login_ds (a data scientist) and send the request through that client"
        )
    path = Path(*endpoint_parts(member), str(message["sender"]), f"{message['id']}{REQUEST_SUFFIX}")
    watcher.on_file_change(path, json.dumps(message), process_now=True)
    return path


def parse(path: Path, readers: Iterable[str], now: datetime, url: str | None = None) -> Request:
    """Read and validate one request file; raise :class:`NotAccepted` naming what is wrong."""
    try:
        data = storage.read_untrusted(path, MAX_BYTES)
    except ValueError as why:
        raise NotAccepted(str(why)) from None
    try:
        doc = storage.strict_json(data)
    except ValueError:
        raise NotAccepted("not UTF-8 JSON") from None
    known = readers if isinstance(readers, set | frozenset) else set(readers)
    request = _validate(doc, path.name, known, now, url)
    if request.requester != path.parent.name:
        raise NotAccepted("sender is not the owner of its folder")
    return dataclasses.replace(request, digest=hashlib.sha256(data).hexdigest())


def _validate(
    doc: Any, filename: str, readers: set[str] | frozenset[str], now: datetime, url: str | None
) -> Request:
    if not isinstance(doc, dict):
        raise NotAccepted("not a JSON object")
    keys = set(doc)
    if not keys <= _MESSAGE_KEYS or not keys >= _MESSAGE_REQUIRED:
        raise NotAccepted("unexpected or missing keys")
    request_id, requester = doc["id"], doc["sender"]
    if not (isinstance(request_id, str) and _ID.match(request_id)):
        raise NotAccepted("bad id")
    if filename != f"{request_id}{REQUEST_SUFFIX}":
        raise NotAccepted("file name does not match id")
    if not isinstance(requester, str) or requester not in readers:
        raise NotAccepted("sender is not a listed reader")
    if doc["method"] != METHOD or not isinstance(doc["url"], str) or (url is not None and doc["url"] != url):
        raise NotAccepted("not addressed to this member's budget endpoint")
    headers = doc.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise NotAccepted("bad headers")
    created = _time(doc["created"], "created")
    expires = _time(doc["expires"], "expires")
    if created > now + CLOCK_SKEW:
        raise NotAccepted("created is in the future")
    if expires <= now:
        raise NotAccepted("expired")
    ask = _body(doc["body"])
    cap, reason = ask["cap"], ask["reason"]
    if cap not in CAPS:
        raise NotAccepted("bad cap")
    epsilon = finite_number(ask["epsilon"], "not a finite number")
    delta = finite_number(ask.get("delta", 0.0), "not a finite number")
    if not 0 < epsilon <= MAX_EPSILON:
        raise NotAccepted("epsilon out of range")
    if not 0 <= delta <= MAX_DELTA:
        raise NotAccepted("delta out of range")
    if not (isinstance(reason, str) and 0 < len(reason.strip()) <= MAX_REASON and reason.isprintable()):
        raise NotAccepted("bad reason")
    return Request(
        request_id, requester, cap, epsilon, delta, reason.strip(), created.isoformat(), expires.isoformat()
    )


def _time(value: Any, name: str) -> datetime:
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise NotAccepted(f"{name} is not a timezone-aware time")
    return when


def _body(value: Any) -> dict[str, Any]:
    """The ask inside a request's base64 body: a JSON object of exactly the known keys."""
    try:
        ask = storage.strict_json(base64.b64decode(value, validate=True)) if isinstance(value, str) else None
    except (ValueError, binascii.Error):
        ask = None
    if not isinstance(ask, dict):
        raise NotAccepted("body is not a base64 JSON object")
    keys = set(ask)
    if not keys <= _BODY_KEYS or not keys >= _BODY_REQUIRED:
        raise NotAccepted("unexpected or missing keys in the body")
    if ask["schema"] != REQUEST_SCHEMA or ask["schema_version"] != 1:
        raise NotAccepted("unknown schema")
    return ask


def _decided_ask(d: Decision) -> tuple[str, str, float, float, str]:
    return (d.requester, d.cap, d.epsilon, d.delta, d.reason)


def scan(
    directory: Path,
    readers: Iterable[str],
    decided: Iterable[str] | dict[str, Decision],
    now: datetime,
    url: str | None = None,
    max_files: int = MAX_FILES_PER_READER,
) -> Scan:
    """Sort every request file into pending, already decided, or skipped (counted by reason, and
    by reader for those in a reader's folder).

    ``decided`` are the ledger's decisions (or just their ids): an ask already decided, filed
    again under a new id, is a duplicate. Each reader's folder is read on its own: at most
    ``max_files`` of its request files (the first by name), so one reader's files cannot push
    another's out of the listing.
    """
    result = Scan()
    done = set(decided)
    decided_asks = {_decided_ask(d) for d in decided.values()} if isinstance(decided, dict) else set()
    known = frozenset(readers)
    folders = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(REQUEST_SUFFIX):
                    result.skipped["not in its requester's folder"] += 1
                elif entry.is_dir(follow_symlinks=False) and entry.name in known:
                    folders.append(entry.name)
                elif entry.is_dir():
                    result.skipped["not a listed reader's folder"] += 1
    except (FileNotFoundError, NotADirectoryError):
        return result
    for reader in sorted(folders):
        valid, skipped = _read_folder(directory / reader, known, now, url, max_files)
        asks: set[tuple[str, str, float, float, str]] = set()
        for request in sorted(valid, key=_age):
            if request.request_id in done:
                result.decided.append(request)
            elif request.ask in decided_asks or request.ask in asks:
                skipped["duplicate"] += 1
            elif len(asks) >= MAX_PER_REQUESTER:
                skipped["too many from one requester"] += 1
            else:
                asks.add(request.ask)
                result.pending.append(request)
        result.skipped.update(skipped)
        if skipped.total():
            result.skipped_from[reader] = skipped.total()
    result.pending.sort(key=_age)
    result.decided.sort(key=_age)
    return result


def _age(request: Request) -> tuple[str, str]:
    return (request.created_at, request.request_id)


def _read_folder(
    folder: Path, readers: frozenset[str], now: datetime, url: str | None, max_files: int
) -> tuple[list[Request], Counter[str]]:
    """One reader's valid requests among its first ``max_files`` request files by name, and what
    was skipped, by reason: the files that did not parse, and those past ``max_files``, unread.
    The folder is streamed; at most ``max_files`` names are held, however many it has."""
    skipped: Counter[str] = Counter()
    total = 0

    def names() -> Iterator[str]:
        nonlocal total
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(REQUEST_SUFFIX):
                    total += 1
                    yield entry.name

    try:
        first = heapq.nsmallest(max_files, names())
    except OSError:  # gone, or not readable, since the endpoint was listed
        skipped["reader's folder not readable"] += 1
        return [], skipped
    if total > len(first):
        skipped["too many files from one reader"] += total - len(first)
    valid = []
    for name in first:
        try:
            valid.append(parse(folder / name, readers, now, url))
        except NotAccepted as why:
            skipped[str(why)] += 1
    return valid, skipped


def decide(
    ledger: Ledger,
    layout: storage.Layout,
    readers: Iterable[str],
    request_id: str,
    decision: str,
    note: str,
    decided_by: str,
    now: datetime,
) -> Decision:
    """Approve or deny a valid pending request, in the ledger; return the decision to answer with.

    Deciding again the same way returns the recorded decision (so a lost answer can be
    rewritten); the other way is refused, since a decision is final.
    """
    decisions = ledger.decisions()
    earlier = decisions.get(request_id)
    if earlier is not None:
        if earlier.decision != decision:
            raise UsageError(f"request {request_id} was already {earlier.decision}; a decision is final")
        return earlier
    request = _read_one(layout, readers, request_id, now)
    if request.ask in {_decided_ask(d) for d in decisions.values()}:
        raise UsageError(f"request {request_id} asks again what was already decided; it is a duplicate")
    if decision == "approved":
        shown = listed(layout).get(request_id)
        if shown is None:
            raise UsageError(
                f"request {request_id} was not listed; run 'cpu-tracker budget requests' and approve "
                "what it shows"
            )
        if shown != _listing(request):
            raise UsageError(
                f"request {request_id} changed after 'cpu-tracker budget requests' listed it; list the "
                "requests again and decide on what they say now"
            )
    final = Decision(
        request_id=request.request_id,
        requester=request.requester,
        cap=request.cap,
        epsilon=request.epsilon,
        delta=request.delta,
        reason=request.reason,
        decision=decision,
        note=note.strip(),
        decided_by=decided_by,
        decided_at=now.isoformat(),
    )
    try:
        ledger.decide(final)
    except ValueError:  # decided by a concurrent approve or deny since decisions() was read
        raise UsageError(f"request {request_id} was decided meanwhile; a decision is final") from None
    return final


def _read_one(layout: storage.Layout, readers: Iterable[str], request_id: str, now: datetime) -> Request:
    """The request file for ``request_id`` itself, read and validated: however many other files
    the directory holds, they cannot hide or stand in for it."""
    missing = f"no valid pending request {request_id}; 'cpu-tracker budget requests' lists them"
    if not _ID.match(request_id):
        raise UsageError(missing)
    name = f"{request_id}{REQUEST_SUFFIX}"
    found = [layout.requests_dir / r / name for r in readers if (layout.requests_dir / r / name).exists()]
    if len(found) > 1:
        raise UsageError(f"request id {request_id} was filed by more than one reader; deny it, or ask again")
    if not found:
        raise UsageError(missing)
    try:
        return parse(found[0], readers, now, endpoint_url(layout))
    except NotAccepted as why:
        raise UsageError(f"{missing} ({why})") from None


LISTED_NAME = "requests-listed.json"


def _listing(request: Request) -> dict[str, Any]:
    return {
        "digest": request.digest,
        "requester": request.requester,
        "cap": request.cap,
        "epsilon": request.epsilon,
        "delta": request.delta,
    }


def remember_listed(layout: storage.Layout, pending: Iterable[Request], now: datetime) -> None:
    """Keep what ``budget requests`` showed the owner, so an approval grants exactly that."""
    record = {"listed_at": now.isoformat(), "requests": {r.request_id: _listing(r) for r in pending}}
    storage.write_json(
        layout.data_dir / LISTED_NAME, record, storage.PRIVATE_FILE_MODE, under=layout.data_dir
    )


def listed(layout: storage.Layout) -> dict[str, Any]:
    """What the last ``budget requests`` showed, by request id (empty if it never ran)."""
    record = storage.read_json(layout.data_dir / LISTED_NAME) or {}
    shown = record.get("requests")
    return shown if isinstance(shown, dict) else {}


def response_record(decision: Decision) -> dict[str, Any]:
    """The answer's body: what was decided and, when approved, exactly what was granted."""
    return {
        "schema": RESPONSE_SCHEMA,
        "schema_version": 1,
        "request_id": decision.request_id,
        "requester": decision.requester,
        "decision": decision.decision,
        "note": decision.note,
        "granted": (
            {"cap": decision.cap, "epsilon": decision.epsilon, "delta": decision.delta}
            if decision.decision == "approved"
            else None
        ),
        "decided_at": decision.decided_at,
    }


def response_message(layout: storage.Layout, decision: Decision) -> dict[str, Any]:
    """The answer as a syft-rpc ``SyftResponse``: 200 for an approval, 403 for a denial."""
    decided = datetime.fromisoformat(decision.decided_at)
    body = json.dumps(response_record(decision), sort_keys=True).encode()
    return {
        "id": decision.request_id,
        "sender": layout.syft_owner or "",
        "url": endpoint_url(layout) or "",
        "headers": {"content-type": "application/json"},
        "body": base64.b64encode(body).decode(),
        "created": decision.decided_at,
        "expires": (decided + ANSWER_EXPIRES).isoformat(),
        "status_code": 200 if decision.decision == "approved" else 403,
    }


def write_response(layout: storage.Layout, decision: Decision) -> Path:
    """The answer, in the requester's own folder, which only it (and the owner) can read."""
    folder = ensure_requests_dir(layout) / decision.requester
    storage.ensure_dir(folder, layout.root)
    target = folder / f"{decision.request_id}{RESPONSE_SUFFIX}"
    storage.write_json(
        target, response_message(layout, decision), storage.PUBLIC_FILE_MODE, under=layout.root
    )
    return target
