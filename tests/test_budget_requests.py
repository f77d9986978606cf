"""Budget requests: hostile files are skipped with a reason; approve and deny are final and answered."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.budget import requests as budget_requests
from cpu_tracker_daemon.cli.main import main
from cpu_tracker_daemon.config import load_config
from cpu_tracker_daemon.errors import EXIT_USAGE
from cpu_tracker_daemon.untrusted import NotAccepted
from tests.conftest import run_cli, write_config

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
READER = "aggregator@openmined.org"


_BODY = ("schema", "schema_version", "cap", "epsilon", "delta", "reason")
_RENAMED = {"request_id": "id", "requester": "sender", "created_at": "created"}
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def request_doc(omit: str | None = None, body: Any = None, **overrides: Any) -> dict[str, Any]:
    """A syft-rpc request a reader would send; ``overrides`` name message or body fields (the
    ask's ``cap``, ``epsilon``, ... go into the base64 body), ``omit`` drops one."""
    ask: dict[str, Any] = {
        "schema": budget_requests.REQUEST_SCHEMA,
        "schema_version": 1,
        "cap": "lifetime",
        "epsilon": 5.0,
        "delta": 0.0,
        "reason": "quarterly network report",
    }
    doc = budget_requests.request_message(
        "req-0001-abc", READER, "syft://me@example.org/app_data/cpu_tracker/rpc/budget",
        cap="lifetime", epsilon=5.0, reason=ask["reason"], created=NOW - timedelta(hours=1), expires=FAR,
    )  # fmt: skip
    for key, value in overrides.items():
        if key in _BODY:
            ask[key] = value
        else:
            doc[_RENAMED.get(key, key)] = value
    ask.pop(omit or "", None)
    doc.pop(omit or "", None)
    doc["body"] = body if body is not None else base64.b64encode(json.dumps(ask).encode()).decode()
    return doc


def drop(
    directory: Path, doc: Any, name: str | None = None, raw: bytes | None = None, folder: str | None = None
) -> Path:
    """Write a request file where its sender would: in ``rpc/budget/<sender>/``."""
    sender = doc.get("sender") if isinstance(doc, dict) else None
    folder = folder or (sender if isinstance(sender, str) and "@" in sender else READER)
    directory = directory / folder
    directory.mkdir(parents=True, exist_ok=True)
    request_id = doc.get("id", "x") if isinstance(doc, dict) else "x"
    path = directory / (name or f"{request_id}{budget_requests.REQUEST_SUFFIX}")
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return path


def answer(path: Path) -> dict[str, Any]:
    """The decision inside a syft-rpc response file."""
    message = json.loads(path.read_text())
    body = json.loads(base64.b64decode(message["body"]))
    assert message["status_code"] == (200 if body["decision"] == "approved" else 403)
    return dict(body)


HOSTILE: dict[str, tuple[Any, str]] = {
    "not an object": ([1, 2], "not a JSON object"),
    "extra key": (request_doc(admin=True), "unexpected or missing keys"),
    "missing key": (request_doc(omit="expires"), "unexpected or missing keys"),
    "extra key in the body": (
        request_doc(body=base64.b64encode(b'{"admin": 1}').decode()),
        "unexpected or missing keys in the body",
    ),
    "missing key in the body": (request_doc(omit="reason"), "unexpected or missing keys in the body"),
    "body not base64": (request_doc(body="{not base64}"), "body is not a base64 JSON object"),
    "body not an object": (
        request_doc(body=base64.b64encode(b"[1]").decode()),
        "body is not a base64 JSON object",
    ),
    "other method": (request_doc(method="GET"), "not addressed to this member's budget endpoint"),
    "expired": (request_doc(expires=(NOW - timedelta(seconds=1)).isoformat()), "expired"),
    "headers not text": (request_doc(headers={"x": 1}), "bad headers"),
    "other schema": (request_doc(schema="cpu-tracker/release"), "unknown schema"),
    "future version": (request_doc(schema_version=2), "unknown schema"),
    "id with slash": (request_doc(request_id="../../etc/x"), "bad id"),
    "id too short": (request_doc(request_id="abc"), "bad id"),
    "stranger in its own folder": (
        request_doc(requester="mallory@evil.example"),
        "not a listed reader's folder",
    ),
    "requester not text": (request_doc(requester=["a"]), "sender is not a listed reader"),
    "bad cap": (request_doc(cap="everything"), "bad cap"),
    "epsilon zero": (request_doc(epsilon=0), "epsilon out of range"),
    "epsilon negative": (request_doc(epsilon=-5), "epsilon out of range"),
    "epsilon huge": (request_doc(epsilon=1e9), "epsilon out of range"),
    "epsilon text": (request_doc(epsilon="5"), "not a finite number"),
    "epsilon bool": (request_doc(epsilon=True), "not a finite number"),
    "delta too big": (request_doc(delta=0.5), "delta out of range"),
    "empty reason": (request_doc(reason="   "), "bad reason"),
    "control characters": (request_doc(reason="ok\x1b[2Jgone"), "bad reason"),
    "reason too long": (request_doc(reason="x" * 600), "bad reason"),
    "naive time": (request_doc(created_at="2026-06-01T11:00:00"), "created is not a timezone-aware time"),
    "not a time": (request_doc(created_at="yesterday"), "created is not a timezone-aware time"),
    "from the future": (
        request_doc(created_at=(NOW + timedelta(hours=3)).isoformat()),
        "created is in the future",
    ),
}


class TestHostileFiles:
    @pytest.mark.parametrize("case", sorted(HOSTILE))
    def test_each_kind_is_skipped_with_its_reason(self, tmp_path: Path, case: str) -> None:
        """A bad request file is skipped and counted by reason; nothing is pending and nothing raises."""
        doc, reason = HOSTILE[case]
        drop(
            tmp_path,
            doc,
            name=f"bad-file-0001{budget_requests.REQUEST_SUFFIX}" if case.startswith("id") else None,
        )
        found = budget_requests.scan(tmp_path, [READER], [], NOW)
        assert (found.pending, dict(found.skipped)) == ([], {reason: 1})

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b"\xff\xfe garbage", "not UTF-8 JSON"),
            (b'{"epsilon": NaN}', "not UTF-8 JSON"),
            (b"{" * 10_000, "too large"),
            (b"", "not UTF-8 JSON"),
        ],
    )
    def test_undecodable_bytes_are_skipped(self, tmp_path: Path, raw: bytes, reason: str) -> None:
        """Binary junk, NaN, oversized and empty files are skipped before any parsing can hurt."""
        drop(tmp_path, {}, name=f"junk-000001{budget_requests.REQUEST_SUFFIX}", raw=raw)
        assert dict(budget_requests.scan(tmp_path, [READER], [], NOW).skipped) == {reason: 1}

    def test_symlink_and_fifo_are_refused(self, tmp_path: Path) -> None:
        """A symlink (even to a valid request) and a FIFO are not read."""
        real = drop(tmp_path / "elsewhere", request_doc())
        (tmp_path / "box" / READER).mkdir(parents=True)
        (tmp_path / "box" / READER / real.name).symlink_to(real)
        os.mkfifo(tmp_path / "box" / READER / f"fifo-000001{budget_requests.REQUEST_SUFFIX}")
        found = budget_requests.scan(tmp_path / "box", [READER], [], NOW)
        assert (found.pending, dict(found.skipped)) == ([], {"symlink": 1, "not a regular file": 1})

    def test_file_name_must_match_the_id(self, tmp_path: Path) -> None:
        """A request cannot claim another file's id."""
        drop(tmp_path, request_doc(), name=f"other-id-0001{budget_requests.REQUEST_SUFFIX}")
        assert dict(budget_requests.scan(tmp_path, [READER], [], NOW).skipped) == {
            "file name does not match id": 1
        }

    def test_duplicates_and_replays_are_not_pending(self, tmp_path: Path) -> None:
        """The same ask under a second id is a duplicate; an id already decided is a replay."""
        drop(tmp_path, request_doc())
        drop(tmp_path, request_doc(request_id="req-0002-abc", created_at=NOW.isoformat()))
        drop(tmp_path, request_doc(request_id="req-0003-abc", epsilon=1.0))
        found = budget_requests.scan(tmp_path, [READER], ["req-0003-abc"], NOW)
        assert [r.request_id for r in found.pending] == ["req-0001-abc"]
        assert [r.request_id for r in found.decided] == ["req-0003-abc"]
        assert dict(found.skipped) == {"duplicate": 1}

    def test_one_requester_lists_at_most_its_quota(self, tmp_path: Path) -> None:
        """A reader that files 101 valid asks gets its oldest 100 listed; the rest are counted."""
        for n in range(budget_requests.MAX_PER_REQUESTER + 1):
            drop(tmp_path, request_doc(request_id=f"req-{n:04d}-abc", reason=f"ask {n}"))
        found = budget_requests.scan(tmp_path, [READER], [], NOW)
        assert len(found.pending) == budget_requests.MAX_PER_REQUESTER
        assert dict(found.skipped) == {"too many from one requester": 1}

    @pytest.mark.slow
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
    def test_any_bytes_parse_or_are_rejected(self, raw: bytes) -> None:
        """Fuzzed file contents never raise anything but NotAccepted."""
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / f"fuzz-000001{budget_requests.REQUEST_SUFFIX}"
            path.write_bytes(raw)
            with contextlib.suppress(NotAccepted):
                budget_requests.parse(path, [READER], NOW)


class TestIdentity:
    def test_a_request_in_another_readers_folder_is_refused(self, tmp_path: Path) -> None:
        """The audit: the requester was a field the writer filled in. A request is now bound to the
        folder it was written in, which only that reader may write: claiming another name there,
        or leaving the file outside any reader's folder, is refused."""
        other = "analyst@example.org"
        drop(tmp_path, request_doc(requester=READER), folder=other)
        drop(tmp_path, request_doc(request_id="req-0002-abc"), folder=".")
        found = budget_requests.scan(tmp_path, [READER, other], [], NOW)
        assert (found.pending, dict(found.skipped)) == (
            [],
            {"sender is not the owner of its folder": 1, "not in its requester's folder": 1},
        )


class TestApproveAndDeny:
    def box(self, tmp_path: Path) -> Path:
        return tmp_path / "data" / "public" / "rpc" / "budget"

    def test_approve_grants_once_and_answers(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """approve adds a grant naming the requester, writes the answer, and a replay changes nothing."""
        config = str(write_config(tmp_path))
        drop(self.box(tmp_path), request_doc(created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "requests", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [r["request_id"] for r in listed["pending"]] == ["req-0001-abc"]
        assert main(["--config", config, "budget", "approve", "req-0001-abc", "--reason", "ok"]) == 0
        capsys.readouterr()
        got = answer(self.box(tmp_path) / READER / "req-0001-abc.response")
        assert (got["decision"], got["granted"]) == (
            "approved",
            {"cap": "lifetime", "epsilon": 5.0, "delta": 0.0},
        )
        assert main(["--config", config, "budget", "show", "--json"]) == 0
        view = json.loads(capsys.readouterr().out)
        assert view["budget"]["caps"]["lifetime"]["granted"] == 5.0
        assert "from aggregator@openmined.org" in view["grants"][0]["reason"]
        # The same file again, or approving again: still one grant.
        assert main(["--config", config, "budget", "approve", "req-0001-abc"]) == 0
        assert main(["--config", config, "budget", "requests", "--json"]) == 0
        assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["pending"] == []
        assert main(["--config", config, "budget", "show", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["budget"]["caps"]["lifetime"]["granted"] == 5.0

    def test_deny_is_final_and_answered(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """deny needs a reason, writes it back, grants nothing, and cannot be turned into an approval."""
        config = str(write_config(tmp_path))
        drop(self.box(tmp_path), request_doc(created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "deny", "req-0001-abc", "--reason", "too much"]) == 0
        got = answer(self.box(tmp_path) / READER / "req-0001-abc.response")
        assert (got["decision"], got["note"], got["granted"]) == ("denied", "too much", None)
        assert main(["--config", config, "budget", "approve", "req-0001-abc"]) == EXIT_USAGE
        assert "already denied" in capsys.readouterr().err

    def test_a_request_rewritten_after_listing_is_not_granted(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The audit: listed as epsilon 5, rewritten to 1000 and delta 1e-4 before approve, it was
        granted 1000. Approval now binds to the listed file's bytes: refused, nothing granted."""
        config = str(write_config(tmp_path))
        created = datetime.now(UTC).isoformat()
        drop(self.box(tmp_path), request_doc(created_at=created))
        assert main(["--config", config, "budget", "requests"]) == 0
        assert "asks epsilon 5 for the lifetime cap (file sha256 " in capsys.readouterr().out
        drop(self.box(tmp_path), request_doc(created_at=created, epsilon=1000.0, delta=1e-4))
        assert main(["--config", config, "budget", "approve", "req-0001-abc"]) == EXIT_USAGE
        assert "changed after 'cpu-tracker budget requests' listed it" in capsys.readouterr().err
        assert not (self.box(tmp_path) / READER / "req-0001-abc.response").exists()
        assert main(["--config", config, "budget", "show", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["grants"] == []

    def test_approve_needs_the_request_to_have_been_listed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An approval of a file the owner never saw listed is refused with the command to run."""
        config = str(write_config(tmp_path))
        drop(self.box(tmp_path), request_doc(created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "approve", "req-0001-abc"]) == EXIT_USAGE
        assert "was not listed; run 'cpu-tracker budget requests'" in capsys.readouterr().err

    def test_a_decided_ask_filed_again_is_a_duplicate(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Denied once, the same ask under a new id is not pending again, and cannot be approved."""
        config = str(write_config(tmp_path))
        drop(self.box(tmp_path), request_doc(created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "deny", "req-0001-abc", "--reason", "no"]) == 0
        drop(
            self.box(tmp_path),
            request_doc(request_id="req-0009-abc", created_at=datetime.now(UTC).isoformat()),
        )
        capsys.readouterr()
        assert main(["--config", config, "budget", "requests", "--json"]) == 0
        found = json.loads(capsys.readouterr().out)
        assert (found["pending"], found["skipped"]) == ([], {"duplicate": 1})
        assert main(["--config", config, "budget", "approve", "req-0009-abc"]) == EXIT_USAGE
        assert "asks again what was already decided" in capsys.readouterr().err

    @pytest.mark.slow
    def test_junk_files_that_sort_first_do_not_hide_a_request(self, tmp_path: Path) -> None:
        """10,000 junk files named to sort before it hid a real request from the listing and from
        approve; junk no longer counts against anyone, and approve reads the named file itself."""
        config = str(write_config(tmp_path))
        box = self.box(tmp_path)
        (box / READER).mkdir(parents=True)
        for n in range(10_000):
            (box / READER / f"a{n:07d}-junk{budget_requests.REQUEST_SUFFIX}").write_bytes(b"junk")
        drop(box, request_doc(request_id="zz-0001-abc", created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "requests"]) == 0
        assert main(["--config", config, "budget", "approve", "zz-0001-abc"]) == 0
        assert answer(box / READER / "zz-0001-abc.response")["decision"] == "approved"

    def test_unknown_request_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Approving an id that is not a valid pending request is exit 2 with one line."""
        config = str(write_config(tmp_path))
        assert main(["--config", config, "budget", "approve", "nope-0000-x"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "budget requests" in err


NOISY = "aaron@example.org"  # a listed reader whose folder sorts before READER's
OWNER = "me@example.org"


def junk(folder: Path, count: int, prefix: str = "a") -> None:
    """``count`` request files that are not JSON, named to sort before any real request."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        fd = os.open(
            folder / f"{prefix}{n:07d}-junk{budget_requests.REQUEST_SUFFIX}", os.O_WRONLY | os.O_CREAT
        )
        os.write(fd, b"junk")
        os.close(fd)


class TestOneReaderCannotHideAnother:
    def syftbox(self, tmp_path: Path) -> tuple[str, Path]:
        """A member of a SyftBox tree under tmp_path with two readers, its folders and its budget
        endpoint made as the daemon makes them; its config, and the endpoint."""
        sb = tmp_path / "SyftBox"
        config = write_config(
            tmp_path, {"syftbox": {"dir": str(sb), "email": OWNER, "readers": [NOISY, READER]}}
        )
        layout = storage.layout_for(load_config(config))
        storage.prepare(layout)
        box = budget_requests.ensure_requests_dir(layout)
        assert box == sb / "datasites" / OWNER / "app_data" / "cpu_tracker" / "rpc" / "budget"
        return str(config), box

    def test_each_readers_files_are_capped_on_their_own(self, tmp_path: Path) -> None:
        """One reader's files past the cap are counted against it alone: the other reader's
        request, in a folder that sorts after, is still read and pending."""
        junk(tmp_path / NOISY, 7)
        drop(tmp_path, request_doc(request_id="zz-0001-abc"))
        found = budget_requests.scan(tmp_path, [NOISY, READER], [], NOW, max_files=5)
        assert [r.request_id for r in found.pending] == ["zz-0001-abc"]
        assert dict(found.skipped) == {"not UTF-8 JSON": 5, "too many files from one reader": 2}
        assert dict(found.skipped_from) == {NOISY: 7}

    def test_a_reader_at_the_cap_in_its_own_folder_is_read_by_name(self, tmp_path: Path) -> None:
        """Within one folder the first files by name are read, whatever order the directory
        gives: a request that sorts before the junk is pending, one after it is counted."""
        junk(tmp_path / READER, 4, prefix="m")
        drop(tmp_path, request_doc(request_id="aa-0001-abc"))
        drop(tmp_path, request_doc(request_id="zz-0001-abc", epsilon=1.0))
        found = budget_requests.scan(tmp_path, [READER], [], NOW, max_files=3)
        assert [r.request_id for r in found.pending] == ["aa-0001-abc"]
        assert dict(found.skipped) == {"not UTF-8 JSON": 2, "too many files from one reader": 3}
        assert dict(found.skipped_from) == {READER: 5}

    def test_nothing_skipped_names_no_reader(self, tmp_path: Path) -> None:
        """A reader whose files are all valid is not named among the senders of skipped files."""
        drop(tmp_path, request_doc())
        found = budget_requests.scan(tmp_path, [NOISY, READER], [], NOW)
        assert (len(found.pending), dict(found.skipped_from)) == (1, {})

    def test_the_owner_is_told_how_many_were_skipped_from_whom(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The listing says in one line how many files each reader's folder had skipped, and the
        JSON has the same counts by reader."""
        config, box = self.syftbox(tmp_path)
        junk(box / NOISY, 3)
        drop(box, request_doc(created_at=datetime.now(UTC).isoformat()))
        assert main(["--config", config, "budget", "requests"]) == 0
        out = capsys.readouterr().out
        assert f"  skipped from {NOISY}: 3 files\n" in out
        assert READER + " asks epsilon 5" in out
        assert main(["--config", config, "budget", "requests", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["skipped_from"] == {NOISY: 3}

    @pytest.mark.slow
    def test_100001_junk_files_from_one_reader_do_not_hide_anothers(self, tmp_path: Path) -> None:
        """The attack: 100,001 junk request files from one listed reader, and the other reader's
        valid request was no longer listed ("too many files") and approving it exited 2. Each
        reader is now capped on its own: listed, approved, answered, the junk counted against
        its sender."""
        config, box = self.syftbox(tmp_path)
        junk(box / NOISY, 100_001)
        drop(box, request_doc(request_id="zz-0001-abc", created_at=datetime.now(UTC).isoformat()))
        listing = run_cli("--config", config, "budget", "requests")
        assert (listing.returncode, listing.stderr) == (0, "")
        assert f"  zz-0001-abc  {READER} asks epsilon 5 for the lifetime cap" in listing.stdout
        cap = budget_requests.MAX_FILES_PER_READER
        assert f"  skipped, not UTF-8 JSON: {cap}\n" in listing.stdout
        assert f"  skipped, too many files from one reader: {100_001 - cap}\n" in listing.stdout
        assert f"  skipped from {NOISY}: 100001 files\n" in listing.stdout
        approve = run_cli("--config", config, "budget", "approve", "zz-0001-abc")
        assert (approve.returncode, approve.stderr) == (0, "")
        assert answer(box / READER / "zz-0001-abc.response")["decision"] == "approved"


def test_permission_file_lets_each_reader_write_requests_in_its_own_folder_only() -> None:
    """rpc/budget/syft.pub.yaml: each reader writes *.request in its own folder and reads the
    answers there; it writes nothing else, and cannot read or write another reader's folder."""
    other = "analyst@example.org"
    text = permissions.pub_yaml(budget_requests.requests_folder("me@example.org", [READER, other]))
    rules = text.split("  - pattern: ")[1:]
    assert [r.split("\n")[0] for r in rules] == [
        f'"{READER}/*.request"', f'"{READER}/*.response"',
        f'"{other}/*.request"', f'"{other}/*.response"',
    ]  # fmt: skip
    assert f'write: ["{READER}"]' in rules[0]
    assert f'read: ["{READER}"]' in rules[1]
    assert "write: []" in rules[1]
    assert READER not in rules[2] + rules[3]


def test_syftbox_member_offers_a_request_box_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SyftBox member's release creates rpc/budget/ with its permissions; a reader's ask,
    addressed to this member's endpoint, is answered there; one addressed elsewhere is not listed."""
    sb = tmp_path / "SyftBox"
    config = str(write_config(tmp_path, {"syftbox": {"dir": str(sb), "email": "me@example.org"}}))
    assert main(["--config", config, "once"]) == 0
    box = sb / "datasites" / "me@example.org" / "app_data" / "cpu_tracker" / "rpc" / "budget"
    folder = budget_requests.requests_folder("me@example.org", [READER])
    assert (box / "syft.pub.yaml").read_text() == permissions.pub_yaml(folder)
    assert (box / "syftperm.yaml").read_text() == permissions.perm_yaml(folder)
    drop(box, request_doc(created_at=datetime.now(UTC).isoformat(), cap="window", epsilon=2.0))
    elsewhere = "syft://other@example.org/app_data/cpu_tracker/rpc/budget"
    drop(box, request_doc(request_id="req-0002-abc", url=elsewhere, created_at=datetime.now(UTC).isoformat()))
    assert main(["--config", config, "budget", "requests"]) == 0
    assert "skipped, not addressed to this member's budget endpoint: 1" in capsys.readouterr().out
    assert main(["--config", config, "budget", "approve", "req-0001-abc"]) == 0
    assert "granted epsilon 2 to the window cap" in capsys.readouterr().out
    assert answer(box / READER / "req-0001-abc.response")["decision"] == "approved"
