"""The protocol's one 64-bit hash: the first 8 bytes of a BLAKE2b digest, read
big-endian. Unlike `hash()`, it is the same in every process, machine and Python
version, so nodes can compare what they compute.

`blake2b` comes from CPython's `_blake2`, the module `hashlib.blake2b` is itself
taken from: `import hashlib` would also load OpenSSL's libcrypto (about 3.6 MiB of
RSS), which a node without encryption keys never needs.
"""

from __future__ import annotations

try:
    from _blake2 import blake2b
except ImportError:  # an interpreter without CPython's built-in BLAKE2
    from hashlib import blake2b

__all__ = ["blake2b", "hash64"]


def hash64(data: bytes) -> int:
    """The 64-bit BLAKE2b hash of `data`, as an int in ``[0, 2**64)``."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")
