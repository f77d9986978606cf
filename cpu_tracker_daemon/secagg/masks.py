"""Masks that cancel in the sum: pairwise masks from X25519 agreement, and a self mask."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MODULUS = 2**32
_NONCE = bytes(16)  # ChaCha20's 16-byte nonce (counter and nonce): each key is used once
_RAW = serialization.Encoding.Raw


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


_PROBE = X25519PrivateKey.generate()


def valid_public(raw: bytes) -> bool:
    """Whether ``raw`` is an X25519 public key agreement can use: 32 bytes that are not one of
    the small-order points (with which every agreement fails, or gives a secret anyone knows)."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return False
    return True


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def key_from(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agreed(own: X25519PrivateKey, peer: bytes, round_id: str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` that only ``own`` and ``peer``'s owner can compute."""
    secret = own.exchange(X25519PublicKey.from_public_bytes(peer))
    return derive(secret, round_id, purpose)


def derive(secret: bytes, round_id: str, purpose: str) -> bytes:
    kdf = HKDF(hashes.SHA256(), 32, salt=round_id.encode(), info=f"cpu-tracker secagg {purpose}".encode())
    return kdf.derive(secret)


def word(seed: bytes) -> int:
    """The PRG: the first 32-bit word of ChaCha20's keystream under ``seed``."""
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(bytes(4))
    return int.from_bytes(stream, "little")


def pairwise(me: str, peer: str, seed: bytes) -> int:
    """What ``me`` adds for the pair: the word if ``me`` sorts first, its negative if not."""
    w = word(seed)
    return w if me < peer else (-w) % MODULUS


def self_mask(seed: bytes, round_id: str) -> int:
    return word(derive(seed, round_id, "self mask"))


def signed(value: int) -> int:
    """A residue mod 2^32 read as a signed 32-bit integer."""
    value %= MODULUS
    return value - MODULUS if value >= MODULUS // 2 else value
