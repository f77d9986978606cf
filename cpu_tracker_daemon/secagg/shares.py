"""Shamir shares of 32-byte secrets, byte for byte as PyCryptodome's, and each share sealed for
its recipient.

A sealed share's associated data names its round, sender and recipient, so it cannot be replayed
into another round or passed off as another's."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cpu_tracker_daemon.secagg import masks

Share = tuple[int, bytes]  # (index, 32 bytes)

_FIELD = 1 << 128  # share indices are the field's nonzero elements, 1 .. 2^128 - 1
_POLY = _FIELD | 0x87  # x^128 + x^7 + x^2 + x + 1, PyCryptodome's _Element.irr_poly
_BLOCK = _FIELD - 1

# Spread form: bit i of an element (or of a product not yet reduced) is byte i of an int, 0 or 1.
# The integer product of two spread operands has in byte i the number of pairs of set bits whose
# degrees add to i: at most the shorter operand's length in bytes, here never over 128 < 256, so
# no byte carries into the next, and byte i's parity is bit i of the carry-less product.
_SLOTS = 1024  # bytes kept when a product is masked back to 0s and 1s
_ONES = int.from_bytes(b"\x01" * _SLOTS, "big")
_REDUCED = int.from_bytes(b"\x01" * 128, "big")  # the bytes of a reduced element
_LONGEST = 1 << (8 * 512)  # a running product longer than 512 bytes is reduced before it grows on
_SMALL = tuple(int.from_bytes(format(v, "b").encode(), "big") & _ONES for v in range(256))
_ASCII_ZEROS = int.from_bytes(b"0" * 512, "big")  # spread bytes 0 and 1 to the digits "0" and "1"
_GAP = "0" * 128  # between a value's two blocks when both are spread into one operand
_LOW_PRODUCT = (1 << 256) - 1


class ShareError(ValueError):
    """A share that does not decrypt, or shares that do not reconstruct one secret."""


def split(secret: bytes, threshold: int, count: int) -> list[Share]:
    """``count`` shares of a 32-byte ``secret`` at indices 1..count, any ``threshold`` of which
    rebuild it: PyCryptodome's ``Shamir.split(threshold, count, half)`` of each half, joined.
    The polynomials' other coefficients come from the OS CSPRNG."""
    if len(secret) != 32:
        raise ValueError("secrets are 32 bytes")
    if not 1 <= threshold <= count:
        raise ValueError(f"a threshold of {threshold} for {count} shares: it is 1 to the count")
    # Horner's rule at every index at once: one int holds each share's two blocks in lanes of
    # ``width`` bytes (16 for the block, ``gap`` above it for the product before its reduction).
    gap, width, bits, low, high = _lanes(count)
    pad = bytes(gap)

    def broadcast(c: bytes) -> int:  # a pair of coefficients, in every share's lanes
        return int.from_bytes((pad + c[:16] + pad + c[16:]) * count, "big")

    coefficients = os.urandom(32 * (threshold - 1)) + secret  # the highest degree first
    acc = broadcast(coefficients[:32])
    for at in range(32, len(coefficients), 32):
        product = acc & bits[0]  # times each lane's index: shifted by each of its set bits
        for shift, lanes in enumerate(bits[1:], 1):
            product ^= (acc & lanes) << shift
        over = (product >> 128) & high
        acc = (
            (product & low)
            ^ over
            ^ (over << 1)
            ^ (over << 2)
            ^ (over << 7)
            ^ broadcast(coefficients[at : at + 32])
        )
    out = acc.to_bytes(2 * count * width, "big")
    return [
        (
            i,
            out[(2 * i - 2) * width + gap : (2 * i - 1) * width]
            + out[(2 * i - 1) * width + gap : 2 * i * width],
        )
        for i in range(1, count + 1)
    ]


def combine(shares: list[Share]) -> bytes:
    """The secret that ``shares`` rebuild, exactly as PyCryptodome's ``Shamir.combine`` of each
    half would (garbage shares give the same wrong secret). Raises ShareError, the sender's
    fault, for no shares, two at one index, an index outside 1..2^128 - 1 or a value that is not
    32 bytes."""
    indices = tuple(_index(index) for index, _ in shares)
    return _combiner(indices).combine([value for _, value in shares])


class Combiner:
    """The Lagrange coefficients at 0 for one set of share indices, to rebuild any number of
    secrets shared at them: ``Combiner(indices).combine(values)`` is
    ``combine(list(zip(indices, values)))``, without the coefficients' work each time."""

    __slots__ = ("_coefficients", "indices")

    def __init__(self, indices: Sequence[int]) -> None:
        if not indices:
            raise ShareError("no shares to combine")
        self.indices = tuple(_index(index) for index in indices)
        if len(set(self.indices)) != len(self.indices):
            twice = sorted({i for i in self.indices if self.indices.count(i) > 1})
            raise ShareError(f"two shares at index {twice[0]}: a sender duplicated or forged one")
        self._coefficients = _lagrange(self.indices)

    def combine(self, values: Sequence[bytes]) -> bytes:
        """The secret whose shares at ``indices`` are ``values``, in the same order."""
        if len(values) != len(self.indices):
            raise ValueError(f"{len(values)} values for {len(self.indices)} indices")
        total = 0
        for coefficient, value in zip(self._coefficients, values, strict=True):
            if not isinstance(value, bytes | bytearray) or len(value) != 32:
                raise ShareError("a share's value is not 32 bytes")
            bits = format(int.from_bytes(value, "big"), "0256b")
            # Both blocks in one operand, 256 bytes apart: their products do not overlap.
            spread = int.from_bytes((bits[:128] + _GAP + bits[128:]).encode(), "big") & _ONES
            total ^= coefficient * spread & _ONES
        both = int((total | _ASCII_ZEROS).to_bytes(512, "big"), 2)
        return _reduce(both >> 256).to_bytes(16, "big") + _reduce(both & _LOW_PRODUCT).to_bytes(16, "big")


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


@functools.lru_cache(maxsize=256)
def _combiner(indices: tuple[int, ...]) -> Combiner:
    return Combiner(indices)


def _index(index: object) -> int:
    if not isinstance(index, int) or not 0 < index < _FIELD:
        raise ShareError(f"a share's index is {index!r}, not a whole number from 1 to 2^128 - 1")
    return index


def _lagrange(indices: tuple[int, ...]) -> list[int]:
    """l_j = prod over m != j of x_m / (x_j + x_m) for each index x_j, spread: one inversion for
    all (Montgomery's trick) of d_j = x_j prod (x_j + x_m), then l_j = prod x_m / d_j."""
    numerator = _product(indices)
    denominators = _denominators(indices)
    prefix = [1]  # prefix[j] = d_0 ... d_(j-1); 1 is spread 1
    for d in denominators:
        prefix.append(_multiply(prefix[-1], d))
    rest = _multiply(_spread(_inverse(_unspread(prefix.pop()))), numerator)
    coefficients = [0] * len(indices)
    for j in range(len(indices) - 1, -1, -1):  # rest = numerator / (d_0 ... d_j)
        coefficients[j] = _multiply(rest, prefix[j])
        rest = _multiply(rest, denominators[j])
    return coefficients


def _denominators(indices: tuple[int, ...]) -> list[int]:
    """d_j = x_j prod over m != j of (x_j + x_m) for each index x_j, spread."""
    if max(indices) >= len(_SMALL) or len(indices) > _SLOTS // 8:
        return [_product(x_j ^ x_m if x_m != x_j else x_j for x_m in indices) for x_j in indices]
    out = []  # the usual case, unrolled: every factor spreads to 8 bytes or fewer, all fit in _ONES
    for x_j in indices:
        acc = _SMALL[x_j]
        for x_m in indices:
            if x_m != x_j:
                acc = acc * _SMALL[x_j ^ x_m] & _ONES
        out.append(_reduce_spread(acc))
    return out


def _product(elements: Iterable[int]) -> int:
    """The product of nonzero elements, spread, reduced only when it grows long: the factors
    are indices and sums of two, most of them a few bits."""
    acc = 1
    for e in elements:
        acc = acc * (_SMALL[e] if e < 256 else _spread(e)) & _ONES
        if acc >= _LONGEST:
            acc = _reduce_spread(acc)
    return _reduce_spread(acc)


def _multiply(a: int, b: int) -> int:
    """The product of two spread elements, spread."""
    return _reduce_spread(a * b & _ONES)


def _reduce_spread(p: int) -> int:
    """A spread product modulo the field's polynomial: x^128 = x^7 + x^2 + x + 1."""
    while p >> 1024:
        over = p >> 1024
        p = (p & _REDUCED) ^ over ^ (over << 8) ^ (over << 16) ^ (over << 56)
    return p


def _reduce(p: int) -> int:
    """A product modulo the field's polynomial: x^128 = x^7 + x^2 + x + 1."""
    while p >> 128:
        over = p >> 128
        p = (p & _BLOCK) ^ over ^ (over << 1) ^ (over << 2) ^ (over << 7)
    return p


def _spread(a: int) -> int:
    return int.from_bytes(format(a, "b").encode(), "big") & _ONES


def _unspread(a: int) -> int:
    """A reduced spread element as its 128 bits."""
    return int((a | _ASCII_ZEROS >> 3072).to_bytes(128, "big"), 2)


def _inverse(a: int) -> int:
    """1 / a for a nonzero element: the extended Euclidean algorithm in GF(2)[x]."""
    u, v, g, h = a, _POLY, 1, 0  # invariants: g a = u and h a = v, modulo the polynomial
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g, h, shift = v, u, h, g, -shift
        u ^= v << shift
        g ^= h << shift
    return g


@functools.lru_cache(maxsize=16)
def _lanes(count: int) -> tuple[int, int, tuple[int, ...], int, int]:
    """``split``'s layout for ``count`` shares: the gap above each block, the lane's width in
    bytes, per bit b of the indices the lanes whose index has it, and the masks of each lane's
    block and of what lies above it."""
    gap = count.bit_length() // 8 + 1
    width = 16 + gap
    on, off = b"\xff" * (2 * width), bytes(2 * width)
    bits = tuple(
        int.from_bytes(b"".join(on if i >> b & 1 else off for i in range(1, count + 1)), "big")
        for b in range(count.bit_length())
    )
    low = int.from_bytes((bytes(gap) + b"\xff" * 16) * (2 * count), "big")
    high = int.from_bytes((bytes(16) + b"\xff" * gap) * (2 * count), "big")
    return gap, width, bits, low, high
