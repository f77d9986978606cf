"""Shamir shares of 32-byte secrets, encrypted for their recipients.

PyCryptodome's Shamir works on 16-byte blocks in GF(2^128): a 32-byte secret is two blocks
shared with the same indices. Each share travels under AES-256-GCM with a key from X25519
agreement between sender and recipient; the round, sender and recipient are its associated
data, so a share cannot be replayed into another round or passed off as another's.
"""

from __future__ import annotations

import os

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cpu_tracker_daemon.secagg import masks

Share = tuple[int, bytes]  # (index, 32 bytes)


class ShareError(ValueError):
    """A share that does not decrypt, or shares that do not reconstruct one secret."""


def split(secret: bytes, threshold: int, count: int) -> list[Share]:
    """``count`` shares of a 32-byte ``secret``, any ``threshold`` of which rebuild it."""
    if len(secret) != 32:
        raise ValueError("secrets are 32 bytes")
    low = Shamir.split(threshold, count, secret[:16])
    high = Shamir.split(threshold, count, secret[16:])
    return [(i, a + b) for (i, a), (j, b) in zip(low, high, strict=True) if i == j]


def combine(shares: list[Share]) -> bytes:
    low = Shamir.combine([(i, s[:16]) for i, s in shares])
    high = Shamir.combine([(i, s[16:]) for i, s in shares])
    return low + high


def seal(
    own: X25519PrivateKey, peer: bytes, round_id: str, sender: str, recipient: str, data: bytes
) -> bytes:
    key = masks.agreed(own, peer, round_id, "share")
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data, _aad(round_id, sender, recipient))


def unseal(
    own: X25519PrivateKey, peer: bytes, round_id: str, sender: str, recipient: str, box: bytes
) -> bytes:
    key = masks.agreed(own, peer, round_id, "share")
    try:
        return AESGCM(key).decrypt(box[:12], box[12:], _aad(round_id, sender, recipient))
    except InvalidTag:
        raise ShareError(f"a share from {sender} to {recipient} does not decrypt") from None


def _aad(round_id: str, sender: str, recipient: str) -> bytes:
    return f"{round_id}|{sender}|{recipient}".encode()
