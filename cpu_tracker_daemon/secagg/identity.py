"""Signing identities: this member's Ed25519 key, its DID document in syft-crypto's format, and
the peers' keys pinned on first use.

The key is never regenerated, and a peer's changed key is refused until ``cpu-tracker secagg
accept-key`` accepts it."""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cpu_tracker_daemon import permissions, storage
from cpu_tracker_daemon.errors import ConfigError, CpuTrackerError, OutputError, one_line
from cpu_tracker_daemon.layout import did_path

if TYPE_CHECKING:
    from cpu_tracker_daemon.config import Config

IDENTITY_NAME = "identity.key"
PINS_NAME = "pins.json"
DEFAULT_DOMAIN = "syftbox.net"  # syft-crypto's did:web domain is the SyftBox server's host
SIGNATURE_DOMAIN = b"cpu-tracker secagg v2\n"
PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
MAX_KEY_BYTES = 4096
MAX_DID_BYTES = 64 * 1024
MAX_PINS_BYTES = 64 * 1024 * 1024  # some 400,000 peers
PINS_SCHEMA = "cpu-tracker/pins"
FIRST_USE, ACCEPTED = "first use", "accepted"
_PREKEY_INFO = b"cpu-tracker did.json x25519 prekey v1"
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_PEM = serialization.Encoding.PEM
_RAW = serialization.Encoding.Raw
_NEVER_REPLACED = "the key is never replaced automatically: a new one must be accepted by every peer"


class IdentityError(ConfigError):
    """A signing key, a DID document or the pins cannot be trusted; secure rounds stop (exit 3,
    as for a bad configuration: a restart cannot fix it, a person must look)."""

    def __init__(self, problem: str, remedy: str) -> None:
        self.problem, self.remedy = problem, remedy
        CpuTrackerError.__init__(self, f"{problem}; {remedy}")
        self.problems = [str(self)]


class KeyChangedError(IdentityError):
    """A peer's did.json holds another key than the one pinned for it."""

    def __init__(self, email: str, old: bytes, new: bytes) -> None:
        self.email, self.old, self.new = email, old, new
        who = one_line(email)
        super().__init__(
            f"the signing key of {who} changed (pinned {fingerprint(old)}, its did.json now holds "
            f"{fingerprint(new)}), so its round messages are refused",
            f"confirm the new fingerprint with its owner, then run 'cpu-tracker secagg accept-key {who}'",
        )


# -- the key -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """This member's Ed25519 signing key."""

    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path, uid: int | None = None) -> Identity:
        """The key at ``path``, created there if there is none. Raises IdentityError for a file
        that is there but unusable (never replaced), or when none can be created.
        ``uid`` is the owner the file must have (default: this process's effective user)."""
        owner = os.geteuid() if uid is None else uid
        try:
            storage.make_dirs_durably(path.parent, storage.PRIVATE_DIR_MODE)
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _cannot_create(path, exc) from None
        try:
            for _ in range(3):  # missing, then lost the race, then deleted at once: give up
                key = _read_key(directory, path, owner)
                if key is None:
                    key = _create_key(directory, path)
                if key is not None:
                    return cls(key)
        finally:
            os.close(directory)
        raise IdentityError(
            f"the identity key {path} appeared and vanished while it was being created",
            "something else is deleting files in paths.data_dir; stop it and try again",
        )

    @property
    def public(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return self.key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    def prekey(self) -> X25519PrivateKey:
        """The X25519 prekey the DID document publishes: derived from this key with HKDF, so the
        document is the same each time without a second key file."""
        seed = self.key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PREKEY_INFO).derive(seed)
        return X25519PrivateKey.from_private_bytes(derived)


def identity_path(config: Config) -> Path:
    return config.paths.data_dir / IDENTITY_NAME


def pins_path(config: Config) -> Path:
    return config.paths.data_dir / PINS_NAME


def _cannot_create(path: Path, exc: OSError) -> IdentityError:
    return IdentityError(
        f"the secure-aggregation identity key {path} cannot be created ({exc.strerror or exc})",
        "make paths.data_dir a directory this user can write (with free space), then start again",
    )


def _unusable(path: Path, reason: str, remedy: str) -> IdentityError:
    return IdentityError(
        f"the secure-aggregation identity key {path} is unusable ({reason}); secure rounds stop", remedy
    )


def _open_state_file(
    directory: int, path: Path, uid: int, what: Callable[[str], IdentityError]
) -> int | None:
    """A descriptor on ``path`` (in ``directory``), or None when it is missing; never through a
    symlink, and only on a regular file that ``uid`` owns (its mode is the caller's to check)."""
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise what("a symlink" if exc.errno == errno.ELOOP else f"unreadable: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise what("not a regular file")
        if info.st_uid != uid:
            raise what(f"owned by uid {info.st_uid}, not by this user, uid {uid}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_key(directory: int, path: Path, uid: int) -> Ed25519PrivateKey | None:
    moved = f"restore it from a backup, or move it aside knowingly ({_NEVER_REPLACED})"

    def unusable(reason: str) -> IdentityError:
        if reason.startswith("owned by"):
            return _unusable(path, reason, f"run as the user that owns it, or chown it to this one; {moved}")
        return _unusable(path, reason, moved)

    fd = _open_state_file(directory, path, uid, unusable)
    if fd is None:
        return None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise _unusable(
                path,
                f"mode {mode:04o}: group or others may read it",
                f"if nobody else can have read it, chmod 600 {path}; else move it aside knowingly "
                f"({_NEVER_REPLACED})",
            )
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    return _parse_key(data, unusable)


def _parse_key(data: bytes, unusable: Callable[[str], IdentityError]) -> Ed25519PrivateKey:
    if len(data) == PUBLIC_BYTES:
        return Ed25519PrivateKey.from_private_bytes(data)
    if not data.lstrip().startswith(b"-----BEGIN "):
        raise unusable(f"{len(data)} bytes, neither a raw 32-byte Ed25519 key nor a PEM PKCS8 one")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise unusable(f"not a readable PEM private key: {one_line(str(exc))[:80]}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise unusable(f"a PEM {type(key).__name__}, not an Ed25519 key")
    return key


def _create_key(directory: int, path: Path) -> Ed25519PrivateKey | None:
    """A new key, written in full to a temp file and then hard-linked to ``path``: the link fails
    if ``path`` exists, so of two processes racing, one key wins and the other returns None."""
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=directory
        )
        try:
            os.fchmod(fd, storage.PRIVATE_FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except FileExistsError:
            return None
        os.unlink(tmp, dir_fd=directory)
        os.fsync(directory)
    except OSError as exc:
        raise _cannot_create(path, exc) from None
    finally:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=directory)
    return key


# -- signatures ----------------------------------------------------------------------------------


def fingerprint(public: bytes) -> str:
    """The first 64 bits of the key's SHA-256, in hex groups of four (``3f2a:91c0:7b4e:d815``)."""
    digest = hashlib.sha256(public).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def fingerprint_matches(public: bytes, given: str) -> bool:
    """Whether ``given`` (a fingerprint as printed, or more of the SHA-256, with or without
    separators) is this key's."""
    wanted = re.sub(r"[\s:-]", "", given).lower()
    full = hashlib.sha256(public).hexdigest()
    return len(wanted) >= 16 and re.fullmatch(r"[0-9a-f]+", wanted) is not None and full.startswith(wanted)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s over ``message``; False for anything malformed."""
    if not (isinstance(public, bytes) and isinstance(message, bytes) and isinstance(signature, bytes)):
        return False
    if len(public) != PUBLIC_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def signed_bytes(round_id: str, kind: str, body: Mapping[str, Any], *, sender: str) -> bytes:
    """What a round message's signature covers: the domain separator, then the canonical JSON
    (sorted keys, no spaces, ASCII) of its sender, round, kind and body. Raises TypeError or
    ValueError for a body that is not plain JSON (NaN included)."""
    if not all(isinstance(s, str) for s in (round_id, kind, sender)):
        raise TypeError("round id, kind and sender must be strings")
    if not isinstance(body, Mapping):
        raise TypeError("a message body is a JSON object")
    doc = {"from": sender, "round": round_id, "kind": kind, "body": dict(body)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return SIGNATURE_DOMAIN + text.encode("ascii")


def sign_message(
    identity: Identity, round_id: str, kind: str, body: Mapping[str, Any], *, sender: str
) -> str:
    """The base64 signature of a round message (see :func:`signed_bytes`)."""
    signature = identity.sign(signed_bytes(round_id, kind, body, sender=sender))
    return base64.b64encode(signature).decode("ascii")


def verify_message(
    public: bytes, round_id: str, kind: str, body: Mapping[str, Any], signature_b64: Any, *, sender: str
) -> bool:
    """Whether ``signature_b64`` is ``public``'s over this message; False for anything malformed."""
    if not isinstance(signature_b64, str) or len(signature_b64) > 4 * SIGNATURE_BYTES:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        message = signed_bytes(round_id, kind, body, sender=sender)
    except (binascii.Error, TypeError, ValueError, RecursionError):
        return False
    return verify(public, message, signature)


# -- the DID document ----------------------------------------------------------------------------


def _safe_name(email: Any) -> bool:
    """Whether ``email`` names one datasite folder: no separator, no dot-name, printable."""
    return (
        isinstance(email, str)
        and 0 < len(email) <= 254
        and email.isprintable()
        and not email.startswith(".")
        and "/" not in email
        and "\\" not in email
    )


def did_id(email: str, domain: str = DEFAULT_DOMAIN) -> str:
    """syft-crypto's did:web id: the domain, then the email percent-encoded."""
    return f"did:web:{domain}:{quote(email, safe='')}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: Any, size: int) -> bytes | None:
    if not isinstance(text, str) or len(text) > 2 * size or not _B64URL.match(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == size else None


def did_document(email: str, identity: Identity, domain: str = DEFAULT_DOMAIN) -> dict[str, Any]:
    """The DID document syft-crypto's ``create_x3dh_did_document`` makes for this identity: the
    Ed25519 key under ``#identity-key``, and the X25519 prekey under ``#signed-prekey`` with the
    identity key's signature over its 32 raw bytes (base64url, unpadded, as theirs)."""
    did = did_id(email, domain)
    prekey = identity.prekey().public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
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
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(identity.public),
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
                    "kty": "OKP",
                    "crv": "X25519",
                    "x": _b64url(prekey),
                    "kid": "signed-prekey",
                    "use": "enc",
                    "signature": _b64url(identity.sign(prekey)),
                },
            }
        ],
    }


def _method(doc: dict[str, Any], section: str, ref: str) -> dict[str, Any] | None:
    """The one entry of ``section`` whose id is ``ref`` (None when absent; ValueError when the
    section is malformed or names it twice)."""
    entries = doc.get(section, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{section} is not a list of objects")
    found = [e for e in entries if e.get("id") == ref]
    if len(found) > 1:
        raise ValueError(f"{ref} is named twice")
    return found[0] if found else None


def identity_from_did(doc: Any, email: str) -> bytes | None:
    """The Ed25519 key of ``email``'s DID document, or None for anything malformed: an id that
    is not ``email``'s, a key that is not a 32-byte Ed25519 JWK, or a signed prekey whose
    signature does not verify under it."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        return None
    did = doc["id"]
    if not (did.startswith("did:web:") and did.endswith(":" + quote(email, safe=""))):
        return None
    try:
        method = _method(doc, "verificationMethod", f"{did}#identity-key")
        prekey = _method(doc, "keyAgreement", f"{did}#signed-prekey")
    except ValueError:
        return None
    public = _jwk_key(method, "Ed25519VerificationKey2020", "Ed25519", did)
    if public is None:
        return None
    if prekey is not None:
        spk = _jwk_key(prekey, "X25519KeyAgreementKey2020", "X25519", did)
        signature = _unb64url(prekey["publicKeyJwk"].get("signature"), SIGNATURE_BYTES) if spk else None
        if spk is None or signature is None or not verify(public, spk, signature):
            return None
    return public


def _jwk_key(method: dict[str, Any] | None, kind: str, curve: str, did: str) -> bytes | None:
    if method is None or method.get("type") != kind or method.get("controller") != did:
        return None
    jwk = method.get("publicKeyJwk")
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != curve:
        return None
    return _unb64url(jwk.get("x"), PUBLIC_BYTES)


def read_identity(root: Path, email: str) -> bytes | None:
    """``email``'s Ed25519 key from its did.json in the SyftBox folder ``root``, or None when it
    is missing or malformed. Read capped, reached from ``root`` without following any symlink."""
    if not _safe_name(email):
        return None
    path = did_path(root, email)
    try:
        doc = storage.strict_json(storage.read_untrusted_below(path, root, MAX_DID_BYTES))
    except (OSError, ValueError):
        return None
    return identity_from_did(doc, email)


def _public_folder(owner: str) -> permissions.Folder:
    comment = "Written by cpu-tracker: everyone may read this identity (did.json)."
    return permissions.Folder(owner, comment, (permissions.Rule("**", read=(permissions.EVERYONE,)),))


def publish(root: Path, email: str, identity: Identity, domain: str = DEFAULT_DOMAIN) -> Path:
    """Write ``email``'s did.json for ``identity`` (atomically, reached from ``root`` without
    following a symlink) and return its path; the same document is not written again. Permission
    files are written only where the public folder has none: the datasite's own are never
    replaced. A did.json holding another identity key (another tool's: syft-crypto's) is never
    overwritten: IdentityError."""
    if not _safe_name(email):
        raise IdentityError(f"{email!r} is not a datasite name", "set [syftbox] email to your datasite's")
    path = did_path(root, email)
    storage.make_dirs_durably(root, storage.PUBLIC_DIR_MODE)
    storage.ensure_dir(path.parent, root)
    doc = did_document(email, identity, domain)
    existing = _published(root, path, email)
    if existing is not None and existing[1] != identity.public:
        public = existing[1]
        held = f"key {fingerprint(public)}" if public is not None else "no identity key cpu-tracker can read"
        raise IdentityError(
            f"{path} holds {held}, not this member's {identity.fingerprint} (another tool's "
            "identity, such as syft-crypto's?); it was not overwritten and secure rounds stop",
            "move it aside only if no other SyftBox app uses it, then start again",
        )
    for name, text in permissions.render(_public_folder(email)).items():
        if not os.path.lexists(path.parent / name):
            storage.atomic_write(path.parent / name, text.encode(), storage.PUBLIC_FILE_MODE, under=root)
    if existing is not None and existing[0] == doc:
        return path
    storage.atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), storage.PUBLIC_FILE_MODE, root)
    return path


def _published(root: Path, path: Path, email: str) -> tuple[Any, bytes | None] | None:
    """The did.json there now and its identity key (None if unreadable), or None if missing."""
    try:
        doc = storage.strict_json(storage.read_untrusted_below(path, root, MAX_DID_BYTES))
    except OSError as exc:
        raise OutputError(str(path), exc.strerror or str(exc)) from None
    except ValueError as exc:
        if str(exc) == "missing":
            return None
        return str(exc), None
    return doc, identity_from_did(doc, email)


# -- pins ----------------------------------------------------------------------------------------


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Pin:
    """A peer's key as pinned: when, and whether on first use or accepted by a person."""

    key: bytes
    since: str  # ISO 8601, UTC
    how: str  # FIRST_USE or ACCEPTED


class Pins:
    """Each peer's signing key, pinned on first use, in one JSON file (mode 0600). Every change
    is made under a lock on the file as it is on disk now, so the daemon's pins and a person's
    ``accept-key`` never undo each other; a corrupt file stops secure rounds and is never reset."""

    def __init__(
        self, path: Path, pins: dict[str, Pin], clock: Callable[[], str] = _utc_now, uid: int | None = None
    ) -> None:
        self.path = path
        self._pins = pins
        self._clock = clock
        self._uid = os.geteuid() if uid is None else uid

    @classmethod
    def load(cls, path: Path, clock: Callable[[], str] = _utc_now, uid: int | None = None) -> Pins:
        """The pins at ``path`` (none yet when it is missing); IdentityError when it is unusable."""
        pins = cls(path, {}, clock, uid)
        pins._pins = pins._read()
        return pins

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, email: str) -> bytes | None:
        pin = self._pins.get(email)
        return None if pin is None else pin.key

    def pin(self, email: str) -> Pin | None:
        return self._pins.get(email)

    def check(self, email: str, public: bytes) -> str:
        """``same`` when ``public`` is the key pinned for ``email``, ``pinned`` when none was (it
        is now, durably); KeyChangedError when another key is."""
        outcome = self.check_all({email: public})[email]
        if outcome == "changed":
            old = self.get(email)
            assert old is not None
            raise KeyChangedError(email, old, public)
        return outcome

    def check_all(self, keys: Mapping[str, bytes]) -> dict[str, str]:
        """:meth:`check` for many peers at once, with one write for all the new pins: each
        email's outcome, ``same``, ``pinned`` or ``changed`` (refused, not raised)."""
        for public in keys.values():
            if not isinstance(public, bytes) or len(public) != PUBLIC_BYTES:
                raise ValueError("a pinned key is 32 raw bytes")
        if all(self.get(email) == public for email, public in keys.items()):
            return dict.fromkeys(keys, "same")
        with self._locked():
            self._pins = self._read()  # an accept-key since: its pin counts
            outcomes: dict[str, str] = {}
            now = self._clock()
            for email, public in keys.items():
                known = self.get(email)
                if known is None:
                    self._pins[email] = Pin(public, now, FIRST_USE)
                    outcomes[email] = "pinned"
                else:
                    outcomes[email] = "same" if known == public else "changed"
            if "pinned" in outcomes.values():
                self._write()
        return outcomes

    def accept(self, email: str, public: bytes) -> bytes | None:
        """Pin ``public`` for ``email`` in place of any other, recorded with the time; return the
        key it replaces."""
        if not isinstance(public, bytes) or len(public) != PUBLIC_BYTES:
            raise ValueError("a pinned key is 32 raw bytes")
        with self._locked():
            self._pins = self._read()
            old = self.get(email)
            self._pins[email] = Pin(public, self._clock(), ACCEPTED)
            self._write()
        return old

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            storage.make_dirs_durably(self.path.parent, storage.PRIVATE_DIR_MODE)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise self._unusable(f"its lock file {lock} cannot be opened: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _unusable(self, reason: str) -> IdentityError:
        return IdentityError(
            f"the pinned peer keys {self.path} are unusable ({reason}); secure rounds stop",
            "restore the file from a backup, or move it aside knowingly (every peer is then pinned "
            "again on first use); it is never reset automatically",
        )

    def _read(self) -> dict[str, Pin]:
        try:
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._unusable(f"its directory is unreadable: {exc.strerror}") from None
        try:
            fd = _open_state_file(directory, self.path, self._uid, self._unusable)
        finally:
            os.close(directory)
        if fd is None:
            return {}
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o022:
                raise self._unusable(f"mode {mode:04o}: group or others may write it")
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PINS_BYTES:
                    raise self._unusable(f"larger than {MAX_PINS_BYTES} bytes")
        finally:
            os.close(fd)
        try:
            return _parse_pins(storage.strict_json(b"".join(chunks)))
        except ValueError as exc:
            raise self._unusable(one_line(str(exc))[:120]) from None

    def _write(self) -> None:
        doc = {
            "schema": PINS_SCHEMA,
            "version": 1,
            "pins": {
                email: {"key": base64.b64encode(pin.key).decode("ascii"), "since": pin.since, "how": pin.how}
                for email, pin in sorted(self._pins.items())
            },
        }
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True)
        storage.atomic_write(self.path, (text + "\n").encode("ascii"), storage.PRIVATE_FILE_MODE)


def _parse_pins(doc: Any) -> dict[str, Pin]:
    if not isinstance(doc, dict) or doc.get("schema") != PINS_SCHEMA or doc.get("version") != 1:
        raise ValueError(f"not a {PINS_SCHEMA} file of version 1")
    raw = doc.get("pins")
    if not isinstance(raw, dict):
        raise ValueError("no pins object")  # noqa: TRY004 - every malformed part is a ValueError here
    pins = {}
    for email, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("how") not in (FIRST_USE, ACCEPTED):
            raise ValueError(f"the pin of {email!r} is malformed")
        key, since = entry.get("key"), entry.get("since")
        try:
            public = base64.b64decode(key, validate=True) if isinstance(key, str) else b""
        except binascii.Error:
            public = b""
        if len(public) != PUBLIC_BYTES or not isinstance(since, str):
            raise ValueError(f"the pin of {email!r} is malformed")
        pins[email] = Pin(public, since, entry["how"])
    return pins
