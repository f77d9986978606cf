"""Signing identities: the key file, signatures over round messages, the published DID document
(syft-crypto's format) and the peers' keys pinned on first use, on real files and processes."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from cpu_tracker_daemon.errors import EXIT_CONFIG, NO_RESTART, OutputError
from cpu_tracker_daemon.secagg.identity import (
    ACCEPTED,
    FIRST_USE,
    SIGNATURE_DOMAIN,
    Identity,
    IdentityError,
    KeyChangedError,
    Pins,
    did_document,
    did_path,
    fingerprint,
    fingerprint_matches,
    identity_from_did,
    publish,
    read_identity,
    sign_message,
    signed_bytes,
    verify,
    verify_message,
)
from tests.conftest import cli_env, write_config

ALICE = "alice@example.org"
BOB = "bob@example.org"
RAW = serialization.Encoding.Raw


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class TestKeyFile:
    def test_created_once_private_and_loaded_again(self, tmp_path: Path) -> None:
        """The first load creates a PEM PKCS8 key with mode 0600 (its directory too); later
        loads return the same key and leave no temp file behind."""
        path = tmp_path / "state" / "identity.key"
        first = Identity.load_or_create(path)
        assert first.public == Identity.load_or_create(path).public
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert os.listdir(path.parent) == ["identity.key"]

    def test_raw_32_bytes_are_read_too(self, tmp_path: Path) -> None:
        """A key stored as its 32 raw bytes loads as that key."""
        key = Ed25519PrivateKey.generate()
        path = tmp_path / "identity.key"
        path.write_bytes(
            key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        )
        path.chmod(0o600)
        assert key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw) == (
            Identity.load_or_create(path).public
        )

    @pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o660])
    def test_a_key_others_may_read_is_refused_and_kept(self, tmp_path: Path, bits: int) -> None:
        """A key group or others may read is refused with the chmod that fixes it; the file is
        neither changed nor replaced."""
        path = tmp_path / "identity.key"
        Identity.load_or_create(path)
        before = path.read_bytes()
        path.chmod(bits)
        with pytest.raises(IdentityError, match=f"mode 0{bits:o}: group or others may read it") as caught:
            Identity.load_or_create(path)
        assert f"chmod 600 {path}" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert before == path.read_bytes()

    def test_a_key_another_user_owns_is_refused(self, tmp_path: Path) -> None:
        """A key file owned by another uid than the one required is refused, not replaced."""
        path = tmp_path / "identity.key"
        Identity.load_or_create(path)
        other = os.geteuid() + 1
        with pytest.raises(
            IdentityError, match=f"owned by uid {os.geteuid()}, not by this user, uid {other}"
        ):
            Identity.load_or_create(path, uid=other)

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
    def test_a_key_chowned_to_nobody_is_refused(self, tmp_path: Path) -> None:
        """Really owned by another user (nobody): refused, and left as it was."""
        path = tmp_path / "identity.key"
        Identity.load_or_create(path)
        os.chown(path, 65534, 65534)
        with pytest.raises(IdentityError, match="owned by uid 65534"):
            Identity.load_or_create(path)
        assert path.stat().st_uid == 65534

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"", "0 bytes, neither a raw 32-byte Ed25519 key nor a PEM PKCS8 one"),
            (b"x" * 31, "31 bytes"),
            (b"x" * 33, "33 bytes"),
            (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "not a readable PEM"),
            (
                X25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                "a PEM X25519PrivateKey, not an Ed25519 key",
            ),
        ],
        ids=["empty", "short", "long", "bad-pem", "x25519-pem"],
    )
    def test_a_corrupt_key_is_refused_not_replaced(self, tmp_path: Path, content: bytes, reason: str) -> None:
        """A key file that cannot be an Ed25519 key stops the rounds (exit 3, no restart) and is
        never regenerated: the same bytes stay, and nothing else is written beside it."""
        path = tmp_path / "identity.key"
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(IdentityError, match=reason) as caught:
            Identity.load_or_create(path)
        assert "never replaced automatically" in str(caught.value)
        assert caught.value.exit_code == EXIT_CONFIG
        assert EXIT_CONFIG in NO_RESTART
        assert content == path.read_bytes()
        assert os.listdir(tmp_path) == ["identity.key"]

    def test_a_symlinked_key_is_refused(self, tmp_path: Path) -> None:
        """A symlink where the key should be is never followed, even to a valid key."""
        real = tmp_path / "elsewhere.key"
        Identity.load_or_create(real)
        (tmp_path / "identity.key").symlink_to(real)
        with pytest.raises(IdentityError, match="a symlink"):
            Identity.load_or_create(tmp_path / "identity.key")

    def test_a_state_directory_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        """A state directory that is a file cannot hold the key: refused, naming it and the fix."""
        (tmp_path / "state").write_text("")
        with pytest.raises(
            IdentityError, match=r"state/identity\.key cannot be created .*make paths\.data_dir"
        ):
            Identity.load_or_create(tmp_path / "state" / "identity.key")


def _race(path: str, barrier: Any, results: Any) -> None:  # pragma: no cover - runs in the children
    barrier.wait()
    try:
        results.put((path, Identity.load_or_create(Path(path)).public.hex()))
    except Exception as exc:
        results.put((path, f"error: {exc}"))


class TestConcurrentCreation:
    def test_processes_racing_to_create_get_one_key(self, tmp_path: Path) -> None:
        """Eight processes released together on a missing key file, five times: each time all
        eight hold the one key the file holds, and none read half a file."""
        context = multiprocessing.get_context("fork")
        processes, paths = 8, [str(tmp_path / f"r{i}" / "identity.key") for i in range(5)]
        results = context.Queue()
        for path in paths:
            barrier = context.Barrier(processes)
            children = [
                context.Process(target=_race, args=(path, barrier, results)) for _ in range(processes)
            ]
            for child in children:
                child.start()
            for child in children:
                child.join(30)
                assert child.exitcode == 0
        seen: dict[str, set[str]] = {}
        for _ in range(processes * len(paths)):
            path, public = results.get(timeout=10)
            seen.setdefault(path, set()).add(public)
        for path in paths:
            assert {Identity.load_or_create(Path(path)).public.hex()} == seen[path]
            assert os.listdir(Path(path).parent) == ["identity.key"]


class TestSignatures:
    def test_round_trip(self) -> None:
        """A message signed by an identity verifies under its public key."""
        me = Identity.generate()
        body = {"masked": 123, "boxes": {"b": "AAAA"}}
        signature = sign_message(me, "r7", "masked", body, sender=ALICE)
        assert verify_message(me.public, "r7", "masked", body, signature, sender=ALICE)
        assert verify(me.public, b"hello", me.sign(b"hello"))

    def test_a_forged_signature_is_refused(self) -> None:
        """A signature made with another key does not pass for this member's."""
        me, forger = Identity.generate(), Identity.generate()
        body = {"masked": 123}
        forged = sign_message(forger, "r7", "masked", body, sender=ALICE)
        assert not verify_message(me.public, "r7", "masked", body, forged, sender=ALICE)

    @pytest.mark.parametrize(
        ("round_id", "kind", "body", "sender"),
        [
            ("r8", "masked", {"masked": 123}, ALICE),  # the same message, replayed in the next round
            ("r7", "reveal", {"masked": 123}, ALICE),  # or passed off as another phase
            ("r7", "masked", {"masked": 124}, ALICE),  # or altered
            ("r7", "masked", {"masked": 123}, BOB),  # or as another member's
        ],
        ids=["other-round", "other-kind", "other-body", "other-sender"],
    )
    def test_a_replayed_or_altered_message_is_refused(
        self, round_id: str, kind: str, body: dict[str, Any], sender: str
    ) -> None:
        """A signature binds the round, the kind, the body and the sender: change any, it fails."""
        me = Identity.generate()
        signature = sign_message(me, "r7", "masked", {"masked": 123}, sender=ALICE)
        assert not verify_message(me.public, round_id, kind, body, signature, sender=sender)

    def test_the_signed_bytes_are_canonical(self) -> None:
        """The domain separator, then sorted compact ASCII JSON: the order a body was built in,
        and a round trip through a file, change nothing."""
        body = {"z": 1, "a": ["é", 2.5, None, True]}
        data = signed_bytes("r1", "keys", body, sender=ALICE)
        assert data.startswith(SIGNATURE_DOMAIN)
        assert (
            data[len(SIGNATURE_DOMAIN) :]
            == b'{"body":{"a":["\\u00e9",2.5,null,true],"z":1},"from":"alice@example.org",'
            b'"kind":"keys","round":"r1"}'
        )
        assert data == signed_bytes(
            "r1", "keys", json.loads(json.dumps(dict(reversed(body.items())))), sender=ALICE
        )

    @pytest.mark.parametrize(
        ("public", "message", "signature"),
        [
            (b"\x00" * 31, b"m", b"\x00" * 64),
            (b"\x00" * 32, b"m", b"\x00" * 63),
            (b"\x00" * 32, b"m", b"\x00" * 64),
            ("not bytes", b"m", b"\x00" * 64),
            (b"\x00" * 32, None, b"\x00" * 64),
            (b"\x00" * 32, b"m", 12),
            (bytearray(32), b"m", bytearray(64)),
        ],
    )
    def test_verify_never_raises_on_garbage(self, public: Any, message: Any, signature: Any) -> None:
        """Wrong lengths, wrong types, a zero key: False, never an exception."""
        assert verify(public, message, signature) is False

    @pytest.mark.parametrize(
        "signature", [None, 5, "", "not base64!", "A" * 300, base64.b64encode(b"\x00" * 64).decode()]
    )
    def test_verify_message_never_raises_on_a_bad_signature(self, signature: Any) -> None:
        """A signature field that is missing, not base64, too long or wrong is refused."""
        assert not verify_message(Identity.generate().public, "r", "k", {}, signature, sender=ALICE)

    def test_a_body_that_is_not_plain_json_is_refused(self) -> None:
        """NaN, an object JSON cannot hold, or a body that is not an object (a list of pairs)
        cannot be signed, and never verifies."""
        me = Identity.generate()
        with pytest.raises(TypeError, match="JSON object"):
            signed_bytes("r", "k", [("v", 1)], sender=ALICE)  # type: ignore[arg-type]
        assert not verify_message(
            me.public, "r", "k", [["v", 1]], sign_message(me, "r", "k", {"v": 1}, sender=ALICE), sender=ALICE
        )
        with pytest.raises(ValueError, match="not JSON compliant"):
            signed_bytes("r", "k", {"v": float("nan")}, sender=ALICE)
        with pytest.raises(TypeError):
            signed_bytes("r", "k", {"v": object()}, sender=ALICE)
        good = sign_message(me, "r", "k", {"v": 1}, sender=ALICE)
        assert not verify_message(me.public, "r", "k", {"v": float("nan")}, good, sender=ALICE)
        assert not verify_message(me.public, 5, "k", {"v": 1}, good, sender=ALICE)  # type: ignore[arg-type]

    def test_a_prekey_signature_never_passes_for_a_message(self) -> None:
        """The DID document's prekey signature covers 32 raw bytes; every signed message starts
        with the separator and is longer, so neither can be taken for the other."""
        me = Identity.generate()
        prekey = me.prekey().public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
        assert len(signed_bytes("", "", {}, sender="")) > len(prekey)
        assert not prekey.startswith(SIGNATURE_DOMAIN)


class TestFingerprint:
    def test_format_and_matching(self) -> None:
        """Four groups of four hex digits of SHA-256; a given fingerprint matches with any case
        or separator, or as more of the digest, but never shortened or another key's."""
        public = Identity.generate().public
        short = fingerprint(public)
        assert len(short) == 19
        assert all(len(group) == 4 for group in short.split(":"))
        digest = hashlib.sha256(public).hexdigest()
        assert digest[:16] == short.replace(":", "")
        for given_fp in (short, short.upper(), short.replace(":", " "), digest, digest[:20]):
            assert fingerprint_matches(public, given_fp), given_fp
        for wrong in (short[:14], fingerprint(Identity.generate().public), "zzzz:zzzz:zzzz:zzzz", ""):
            assert not fingerprint_matches(public, wrong), wrong


def syft_crypto_identity(doc: dict[str, Any]) -> bytes:
    """The identity key as syft-crypto reads it (``did_utils.get_identity_public_key_from_did``):
    the first verification method whose id ends in ``#identity-key``, its JWK's ``x``."""
    for method in doc.get("verificationMethod", []):
        if method["id"].endswith("#identity-key"):
            raw = base64.urlsafe_b64decode(method["publicKeyJwk"]["x"] + "===")
            return Ed25519PublicKey.from_public_bytes(raw).public_bytes(RAW, serialization.PublicFormat.Raw)
    raise AssertionError("no identity-key")


def syft_crypto_document(email: str, identity_key: Ed25519PrivateKey, domain: str = "syftbox.net") -> Any:
    """A DID document as syft-crypto's ``bootstrap_user`` and ``create_x3dh_did_document`` make
    it: a fresh X25519 prekey signed over its raw bytes, JWKs as jwcrypto exports them."""
    did = f"did:web:{domain}:{email.replace('@', '%40')}"
    spk = X25519PrivateKey.generate().public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
    ik = identity_key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/suites/ed25519-2020/v1",
            "https://w3id.org/security/suites/x25519-2020/v1",
        ],
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#identity-key",
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyJwk": {
                    "crv": "Ed25519",
                    "kty": "OKP",
                    "x": b64url(ik),
                    "kid": "identity-key",
                    "use": "sig",
                },
            }
        ],
        "keyAgreement": [
            {
                "id": f"{did}#signed-prekey",
                "type": "X25519KeyAgreementKey2020",
                "controller": did,
                "publicKeyJwk": {
                    "crv": "X25519",
                    "kty": "OKP",
                    "x": b64url(spk),
                    "kid": "signed-prekey",
                    "use": "enc",
                    "signature": b64url(identity_key.sign(spk)),
                },
            }
        ],
    }


class TestDidDocument:
    def test_published_did_json_is_read_back(self, tmp_path: Path) -> None:
        """publish writes datasites/<email>/public/did.json (mode 0644, with both permission
        files); read_identity returns its key, and syft-crypto's reader the same key."""
        me = Identity.generate()
        path = publish(tmp_path, ALICE, me)
        assert tmp_path / "datasites" / ALICE / "app_data" / "cpu_tracker" / "identity" / "did.json" == path
        assert mode(path) == 0o644
        assert {"did.json", "syft.pub.yaml", "syftperm.yaml"} == set(os.listdir(path.parent))
        assert 'read: ["*"]' in (path.parent / "syft.pub.yaml").read_text()
        assert me.public == read_identity(tmp_path, ALICE)
        assert me.public == syft_crypto_identity(json.loads(path.read_text()))
        assert read_identity(tmp_path, BOB) is None  # nothing published there

    def test_the_document_has_syft_cryptos_fields(self) -> None:
        """The same shape, ids, types and JWK members as syft-crypto's, and a prekey signed by
        the identity key over its 32 raw bytes."""
        me = Identity.generate()
        ours = did_document(ALICE, me)
        theirs = syft_crypto_document(ALICE, me.key)
        assert theirs["@context"] == ours["@context"]
        assert "did:web:syftbox.net:alice%40example.org" == ours["id"] == theirs["id"]
        assert set(theirs) == set(ours)
        for section in ("verificationMethod", "keyAgreement"):
            (mine,), (their,) = ours[section], theirs[section]
            assert {k: v for k, v in their.items() if k != "publicKeyJwk"} == {
                k: v for k, v in mine.items() if k != "publicKeyJwk"
            }
            assert set(their["publicKeyJwk"]) == set(mine["publicKeyJwk"])
        assert (
            theirs["verificationMethod"][0]["publicKeyJwk"] == ours["verificationMethod"][0]["publicKeyJwk"]
        )
        jwk = ours["keyAgreement"][0]["publicKeyJwk"]
        prekey = base64.urlsafe_b64decode(jwk["x"] + "===")
        X25519PublicKey.from_public_bytes(prekey)
        assert verify(me.public, prekey, base64.urlsafe_b64decode(jwk["signature"] + "==="))
        assert ours == did_document(ALICE, me)  # the prekey is derived: the same every time

    def test_a_document_syft_crypto_wrote_is_read(self, tmp_path: Path) -> None:
        """A did.json written by syft-crypto (its own random prekey) gives its identity key."""
        key = Ed25519PrivateKey.generate()
        path = did_path(tmp_path, BOB)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(syft_crypto_document(BOB, key, domain="dev.syftbox.net"), indent=2))
        assert key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw) == read_identity(
            tmp_path, BOB
        )

    def test_the_same_document_is_not_written_again(self, tmp_path: Path) -> None:
        """Publishing again leaves the file as it was (nothing for SyftBox to sync)."""
        me = Identity.generate()
        path = publish(tmp_path, ALICE, me)
        before = path.stat()
        assert path == publish(tmp_path, ALICE, me)
        after = path.stat()
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    def test_another_identity_is_never_overwritten(self, tmp_path: Path) -> None:
        """A did.json holding another key (syft-crypto's, say) is refused, not replaced; so is a
        did.json that is not a DID document."""
        path = did_path(tmp_path, ALICE)
        path.parent.mkdir(parents=True)
        theirs = json.dumps(syft_crypto_document(ALICE, Ed25519PrivateKey.generate()))
        path.write_text(theirs)
        with pytest.raises(IdentityError, match="not this member's") as caught:
            publish(tmp_path, ALICE, Identity.generate())
        assert "move it aside only if no other SyftBox app uses it" in str(caught.value)
        assert theirs == path.read_text()
        path.write_text("[]")
        with pytest.raises(IdentityError, match="no identity key cpu-tracker can read"):
            publish(tmp_path, ALICE, Identity.generate())

    def test_the_datasites_own_permission_files_are_kept(self, tmp_path: Path) -> None:
        """A public folder that has its permission file keeps it; only the missing one is added."""
        public = did_path(tmp_path, ALICE).parent
        public.mkdir(parents=True)
        (public / "syft.pub.yaml").write_text("terminal: false\nrules: []\n")
        publish(tmp_path, ALICE, Identity.generate())
        assert (public / "syft.pub.yaml").read_text() == "terminal: false\nrules: []\n"
        assert (public / "syftperm.yaml").exists()

    def test_a_symlinked_did_json_is_refused(self, tmp_path: Path) -> None:
        """A did.json that is a link, even to a valid document, is not read, nor written through."""
        elsewhere = tmp_path / "elsewhere"
        real = publish(elsewhere, BOB, Identity.generate())
        link = did_path(tmp_path, BOB)
        link.parent.mkdir(parents=True)
        link.symlink_to(real)
        assert read_identity(tmp_path, BOB) is None
        with pytest.raises(IdentityError, match="symlink"):
            publish(tmp_path, BOB, Identity.generate())
        assert link.is_symlink()

    def test_a_symlinked_folder_above_it_is_refused(self, tmp_path: Path) -> None:
        """A datasite or public folder that is a link is never followed to a did.json."""
        publish(tmp_path / "elsewhere", BOB, Identity.generate())
        (tmp_path / "datasites").mkdir()
        (tmp_path / "datasites" / BOB).symlink_to(tmp_path / "elsewhere" / "datasites" / BOB)
        assert read_identity(tmp_path, BOB) is None
        with pytest.raises(OutputError, match="symlink"):
            publish(tmp_path, BOB, Identity.generate())

    @pytest.mark.parametrize("email", ["../x", "a/b", "..", ".hidden", "", "tab\there", "x" * 300])
    def test_a_name_that_is_no_datasite_is_refused(self, tmp_path: Path, email: str) -> None:
        """A name that could leave datasites/ (or is no folder name) is never read or written."""
        assert read_identity(tmp_path, email) is None
        with pytest.raises(IdentityError, match="not a datasite name"):
            publish(tmp_path, email, Identity.generate())

    def test_a_large_did_json_is_not_read(self, tmp_path: Path) -> None:
        """A did.json over the cap is refused without reading it all."""
        path = did_path(tmp_path, BOB)
        path.parent.mkdir(parents=True)
        doc = syft_crypto_document(BOB, Ed25519PrivateKey.generate())
        doc["padding"] = "x" * 70_000
        path.write_text(json.dumps(doc))
        assert read_identity(tmp_path, BOB) is None

    @pytest.mark.parametrize(
        "spoil",
        [
            lambda d: d.update(id="did:web:syftbox.net:carol%40example.org"),  # another member's
            lambda d: d["verificationMethod"][0].update(id="x#identity-key"),
            lambda d: d["verificationMethod"][0].update(type="JsonWebKey2020"),
            lambda d: d["verificationMethod"][0].update(controller="did:web:evil"),
            lambda d: d["verificationMethod"][0]["publicKeyJwk"].update(crv="X25519"),
            lambda d: d["verificationMethod"][0]["publicKeyJwk"].update(x="AAAA"),
            lambda d: d["verificationMethod"][0]["publicKeyJwk"].update(x="+/" * 22),
            lambda d: d["verificationMethod"][0]["publicKeyJwk"].pop("x"),
            lambda d: d["verificationMethod"].append(dict(d["verificationMethod"][0])),  # named twice
            lambda d: d.update(verificationMethod={}),
            lambda d: d.update(verificationMethod=[]),
            lambda d: d["keyAgreement"][0]["publicKeyJwk"].update(signature=b64url(b"\x00" * 64)),
            lambda d: d["keyAgreement"][0]["publicKeyJwk"].pop("signature"),
            lambda d: d["keyAgreement"][0]["publicKeyJwk"].update(x=b64url(b"\x01" * 32)),
            lambda d: d.update(keyAgreement="none"),
        ],
    )
    def test_a_malformed_document_gives_no_key(self, spoil: Any) -> None:
        """Any part of the document that is wrong, or a prekey whose signature fails: None."""
        doc = did_document(BOB, Identity.generate())
        assert identity_from_did(doc, BOB) is not None
        spoil(doc)
        assert identity_from_did(doc, BOB) is None

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_any_json_gives_a_key_or_none(self, doc: Any) -> None:
        """Hostile JSON of any shape is refused, never an exception."""
        assert identity_from_did(doc, BOB) is None


def pins_doc(pins: Any) -> bytes:
    return json.dumps({"schema": "cpu-tracker/pins", "version": 1, "pins": pins}).encode()


class TestPins:
    def test_first_use_then_same(self, tmp_path: Path) -> None:
        """A peer's first key is pinned and stored (mode 0600), with when and how; the same key
        again is ``same``, also after a reload."""
        path = tmp_path / "pins.json"
        key = Identity.generate().public
        pins = Pins.load(path, clock=lambda: "2026-01-01T00:00:00+00:00")
        assert pins.check(BOB, key) == "pinned"
        assert pins.check(BOB, key) == "same"
        assert mode(path) == 0o600
        reloaded = Pins.load(path)
        assert reloaded.check(BOB, key) == "same"
        pin = reloaded.pin(BOB)
        assert pin is not None
        assert (key, "2026-01-01T00:00:00+00:00", FIRST_USE) == (pin.key, pin.since, pin.how)

    def test_a_changed_key_is_refused_with_one_line(self, tmp_path: Path) -> None:
        """Another key for a pinned peer: KeyChangedError, one line naming the peer, both
        fingerprints and the command that accepts it; the pin is unchanged."""
        old, new = Identity.generate().public, Identity.generate().public
        pins = Pins.load(tmp_path / "pins.json")
        pins.check(BOB, old)
        with pytest.raises(KeyChangedError) as caught:
            pins.check(BOB, new)
        message = str(caught.value)
        assert "\n" not in message
        assert (
            f"the signing key of {BOB} changed (pinned {fingerprint(old)}, its did.json now holds "
            f"{fingerprint(new)}), so its round messages are refused; confirm the new fingerprint with "
            f"its owner, then run 'cpu-tracker secagg accept-key {BOB}'"
        ) == message
        assert (BOB, old, new) == (caught.value.email, caught.value.old, caught.value.new)
        assert caught.value.exit_code == EXIT_CONFIG
        assert old == Pins.load(tmp_path / "pins.json").get(BOB)

    def test_accept_replaces_the_pin_with_the_time(self, tmp_path: Path) -> None:
        """accept pins the new key, says which it replaced, and records when and that a person
        accepted it."""
        old, new = Identity.generate().public, Identity.generate().public
        pins = Pins.load(tmp_path / "pins.json", clock=lambda: "2026-02-03T04:05:06+00:00")
        pins.check(BOB, old)
        assert old == pins.accept(BOB, new)
        pin = Pins.load(tmp_path / "pins.json").pin(BOB)
        assert pin is not None
        assert (new, "2026-02-03T04:05:06+00:00", ACCEPTED) == (pin.key, pin.since, pin.how)
        assert pins.check(BOB, new) == "same"

    def test_an_acceptance_elsewhere_is_seen_without_a_reload(self, tmp_path: Path) -> None:
        """The daemon's pins see a key accepted by the command since, and two writers each keep
        the other's new pins."""
        path = tmp_path / "pins.json"
        old, new, carol = (Identity.generate().public for _ in range(3))
        daemon = Pins.load(path)
        daemon.check(BOB, old)
        Pins.load(path).accept(BOB, new)
        assert daemon.check(BOB, new) == "same"
        other = Pins.load(path)
        daemon.check("carol@example.org", carol)
        other.check("dave@example.org", old)
        assert {BOB, "carol@example.org", "dave@example.org"} == set(json.loads(path.read_text())["pins"])

    @pytest.mark.parametrize(
        "content",
        [
            b"{not json",
            b"[]",
            b'{"schema": "cpu-tracker/pins", "version": 2, "pins": {}}',
            b'{"schema": "cpu-tracker/pins", "version": 1, "pins": []}',
            pins_doc({"b": {"key": "AAAA", "since": "t", "how": "accepted"}}),
            pins_doc({"b": {"key": 5, "since": "t", "how": "accepted"}}),
            pins_doc({"b": {"key": base64.b64encode(b"k" * 32).decode(), "since": "t", "how": "guessed"}}),
            pins_doc({"b": {"key": base64.b64encode(b"k" * 32).decode(), "since": 5, "how": "accepted"}}),
            pins_doc({"b": "not an object"}),
            b"\xff\xfe",
        ],
    )
    def test_a_corrupt_pins_file_is_refused_never_reset(self, tmp_path: Path, content: bytes) -> None:
        """A pins file that cannot be read as pins stops the rounds and stays as it was."""
        path = tmp_path / "pins.json"
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(IdentityError, match=r"pinned peer keys .* are unusable") as caught:
            Pins.load(path)
        assert "it is never reset automatically" in str(caught.value)
        assert content == path.read_bytes()

    def test_a_pins_file_others_may_write_is_refused(self, tmp_path: Path) -> None:
        """Pins group or others could rewrite would let them choose the keys: refused."""
        path = tmp_path / "pins.json"
        Pins.load(path).check(BOB, Identity.generate().public)
        path.chmod(0o664)
        with pytest.raises(IdentityError, match="group or others may write it"):
            Pins.load(path)

    def test_a_symlinked_pins_file_is_refused(self, tmp_path: Path) -> None:
        """A link where the pins should be is never followed."""
        real = tmp_path / "real.json"
        Pins.load(real).check(BOB, Identity.generate().public)
        (tmp_path / "pins.json").symlink_to(real)
        with pytest.raises(IdentityError, match="a symlink"):
            Pins.load(tmp_path / "pins.json")

    def test_check_all_reports_a_change_without_raising(self, tmp_path: Path) -> None:
        """Many peers at once: the new ones pinned with one write, a changed one reported as
        ``changed`` and its pin kept."""
        old, new, carol = (Identity.generate().public for _ in range(3))
        pins = Pins.load(tmp_path / "pins.json")
        pins.check(BOB, old)
        assert pins.check_all({BOB: new, "carol@example.org": carol}) == {
            BOB: "changed",
            "carol@example.org": "pinned",
        }
        assert old == Pins.load(tmp_path / "pins.json").get(BOB)
        with pytest.raises(ValueError, match="32 raw bytes"):
            pins.check_all({BOB: b"short"})

    def test_ten_thousand_peers_are_fast(self, tmp_path: Path) -> None:
        """10,000 peers pin in one write, load and check again in well under a second each."""
        path = tmp_path / "pins.json"
        keys = {f"peer{i}@example.org": os.urandom(32) for i in range(10_000)}
        started = time.perf_counter()
        outcomes = Pins.load(path).check_all(keys)
        pinned = time.perf_counter() - started
        assert {"pinned"} == set(outcomes.values())
        started = time.perf_counter()
        pins = Pins.load(path)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        assert {"same"} == set(pins.check_all(keys).values())
        assert pins.check("peer9999@example.org", keys["peer9999@example.org"]) == "same"
        checked = time.perf_counter() - started
        assert len(pins) == 10_000
        assert pinned < 1.0, pinned
        assert loaded < 0.5, loaded
        assert checked < 0.1, checked


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, with no terminal on its stdin."""
    return subprocess.run(
        [sys.executable, "-m", "cpu_tracker_daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


class TestCommands:
    @pytest.mark.slow
    def test_accept_key_needs_the_confirmed_fingerprint(self, tmp_path: Path) -> None:
        """accept-key pins a peer's published key only with its fingerprint when there is no
        terminal: without one it is refused (exit 2), with a wrong one too (exit 3); with the
        right one both fingerprints are shown and the new key is pinned."""
        tree = tmp_path / "SyftBox"
        config = str(write_config(tmp_path, {"syftbox": {"dir": str(tree), "email": ALICE}}))
        pins_file = tmp_path / "data" / "pins.json"
        first = Identity.generate()
        publish(tree, BOB, first)
        done = cli("--config", config, "secagg", "accept-key", BOB, "--fingerprint", first.fingerprint)
        assert done.returncode == 0, done.stderr
        assert f"{BOB}: pinned nothing yet, its did.json holds {first.fingerprint}" in done.stdout
        assert first.public == Pins.load(pins_file).get(BOB)

        did_path(tree, BOB).unlink()  # Bob moves to a new machine and a new key
        second = Identity.generate()
        publish(tree, BOB, second)
        blind = cli("--config", config, "secagg", "accept-key", BOB)
        assert blind.returncode == 2
        assert f"pass --fingerprint {second.fingerprint}" in blind.stderr
        assert blind.stderr.count("\n") == 1
        wrong = cli("--config", config, "secagg", "accept-key", BOB, "--fingerprint", first.fingerprint)
        assert wrong.returncode == 3
        assert "nothing was changed" in wrong.stderr
        assert first.public == Pins.load(pins_file).get(BOB)

        done = cli("--config", config, "secagg", "accept-key", BOB, "--fingerprint", second.fingerprint)
        assert done.returncode == 0, done.stderr
        assert f"pinned {first.fingerprint}, its did.json holds {second.fingerprint}" in done.stdout
        assert f"accepted: {BOB} is pinned to {second.fingerprint}" in done.stdout
        pin = Pins.load(pins_file).pin(BOB)
        assert pin is not None
        assert (second.public, ACCEPTED) == (pin.key, pin.how)

        missing = cli("--config", config, "secagg", "accept-key", "carol@example.org", "--fingerprint", "ab")
        assert missing.returncode == 3
        assert "is missing or not a valid DID document" in missing.stderr

    def test_identity_shows_the_fingerprint_and_the_did_json(self, tmp_path: Path) -> None:
        """secagg identity creates the key if needed and says its fingerprint and where its
        did.json is, and whether it is published."""
        tree = tmp_path / "SyftBox"
        config = str(write_config(tmp_path, {"syftbox": {"dir": str(tree), "email": ALICE}}))
        shown = cli("--config", config, "secagg", "identity")
        assert shown.returncode == 0, shown.stderr
        me = Identity.load_or_create(tmp_path / "data" / "identity.key")
        assert f"signing key {me.fingerprint}" in shown.stdout
        assert f"did.json: {did_path(tree, ALICE)} (not published yet)" in shown.stdout
        publish(tree, ALICE, me)
        view = json.loads(cli("--config", config, "secagg", "identity", "--json").stdout)
        assert (me.fingerprint, me.public.hex(), "published") == (
            view["fingerprint"],
            view["public_key"],
            view["did_json_state"],
        )
