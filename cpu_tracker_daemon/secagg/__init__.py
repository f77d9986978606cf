"""Secure aggregation with distributed noise: the network's noisy sum, and nothing else, to a
semi-honest aggregator (docs/secure-aggregation.md).

``noise`` splits discrete Laplace into shares, ``masks`` makes the pairwise and self masks,
``shares`` the Shamir shares and their encryption, ``protocol`` the rounds as pure functions.
The cryptography comes from ``cryptography`` (X25519, HKDF, ChaCha20, AES-GCM) and PyCryptodome
(Shamir); none of it is written here.
"""
