"""Cluster encryption keys: one primary key to send, several accepted to receive.

A `Keyring` is what `swimnode.net.security.SecureTransport` encrypts and decrypts with.
It follows memberlist's keyring: the primary key seals every outgoing packet, and an
incoming packet is tried against every installed key, primary first. That is all
key rotation needs, and it needs no key id on the wire:

1. `install(new)` on every member (everyone can now read `new`);
2. `use(new)` on every member (everyone now sends with `new`, and still reads `old`
   from members that have not switched yet);
3. `remove(old)` on every member.

Keys are 32 random bytes used with AES-256-GCM from `cryptography`; no cryptography
is written here. As text (command lines, key files, RPC) a key is standard base64,
44 characters. Keys never appear in `repr()`, `str()` or error messages: a key is
shown by its fingerprint, the first 8 hex digits of its SHA-256, which identifies it
in logs without revealing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_ACTIONS",
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "KeyAction",
    "Keyring",
    "fingerprint",
    "generate_key",
    "load_key_file",
    "parse_key",
]

KEY_SIZE = 32
"""Bytes in a key (AES-256)."""

NONCE_SIZE = 12
"""Bytes in an AES-GCM nonce."""

TAG_SIZE = 16
"""Bytes of authentication tag AES-GCM appends to a ciphertext."""

KeyLike = bytes | str
"""A key as 32 raw bytes, or as its base64 text (parsed with `parse_key`)."""

KeyAction = Literal["list", "install", "use", "remove"]
"""What `swimnode keys` does to every member's keyring: list its keys, or apply
`Keyring.install`, `use` or `remove`."""
KEY_ACTIONS: tuple[KeyAction, ...] = ("list", "install", "use", "remove")
"""Every `KeyAction`, in the order the command line lists them."""


def generate_key() -> str:
    """A new random key, as base64 text ready for a key file or a command line."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode("ascii")


def parse_key(text: str) -> bytes:
    """Decode a base64 (standard alphabet) key to its 32 bytes.

    Surrounding whitespace is ignored. Raises `ValueError` with a one-line message
    that never repeats the text itself (it may be a real key with a typo).
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("key is empty")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        # ValueError also covers non-ASCII characters in a str argument.
        raise ValueError("key is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise ValueError(f"key must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def fingerprint(key: bytes) -> str:
    """A short, safe-to-log name for `key`: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _as_key(key: KeyLike) -> bytes:
    if isinstance(key, str):
        return parse_key(key)
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"a key must be bytes or base64 str, not {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


class Keyring:
    """The keys a node accepts, and which one it sends with.

    `Keyring(primary, others)` takes keys as 32 raw bytes or base64 text. The
    primary key encrypts; every key (primary first) is tried to decrypt. Changes
    take effect at once for every `SecureTransport` holding this keyring.

    Methods are not thread-safe; call them from the Trio thread that runs the node
    (there is nothing to lock within one Trio run).
    """

    __slots__ = ("_ciphers", "_keys")

    def __init__(self, primary: KeyLike, others: Iterable[KeyLike] = ()) -> None:
        first = _as_key(primary)
        self._keys: list[bytes] = [first]
        # AESGCM objects are built once per key: building one per packet would
        # re-run the key schedule on the hot path.
        self._ciphers: list[AESGCM] = [_cipher(first)]
        for key in others:
            self.install(key)

    def __repr__(self) -> str:
        others = ", ".join(fingerprint(k) for k in self._keys[1:])
        return f"Keyring(primary={fingerprint(self._keys[0])}, others=[{others}])"

    __str__ = __repr__

    # -- reading --------------------------------------------------------------

    @property
    def primary(self) -> bytes:
        """The key outgoing packets are encrypted with."""
        return self._keys[0]

    @property
    def keys(self) -> list[bytes]:
        """Every installed key, primary first (a copy)."""
        return list(self._keys)

    @property
    def fingerprints(self) -> list[str]:
        """`fingerprint()` of every installed key, primary first."""
        return [fingerprint(k) for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            try:
                key = parse_key(key)
            except ValueError:
                return False
        return key in self._keys

    # -- changing -------------------------------------------------------------

    def install(self, key: KeyLike) -> bool:
        """Accept `key` for decryption (it does not become primary).

        Returns false if it was installed already.
        """
        raw = _as_key(key)
        if raw in self._keys:
            return False
        self._keys.append(raw)
        self._ciphers.append(_cipher(raw))
        return True

    def use(self, key: KeyLike) -> None:
        """Make an installed key the primary one; the old primary stays installed.

        Raises `ValueError` if `key` is not installed: switching to a key the peers
        may not have yet must be a deliberate `install` first.
        """
        raw = _as_key(key)
        try:
            index = self._keys.index(raw)
        except ValueError:
            raise ValueError(
                f"key {fingerprint(raw)} is not installed; install it before using it"
            ) from None
        self._keys.insert(0, self._keys.pop(index))
        self._ciphers.insert(0, self._ciphers.pop(index))

    def remove(self, key: KeyLike) -> bool:
        """Stop accepting `key`. Returns false if it was not installed.

        Raises `ValueError` for the primary key: a node must always be able to
        send; `use` another key first.
        """
        raw = _as_key(key)
        if raw == self._keys[0]:
            raise ValueError(
                f"key {fingerprint(raw)} is the primary key; use another key before removing it"
            )
        try:
            index = self._keys.index(raw)
        except ValueError:
            return False
        del self._keys[index]
        del self._ciphers[index]
        return True

    # -- sealing and opening ----------------------------------------------------

    def encrypt(self, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
        """AES-256-GCM with the primary key: ciphertext followed by the 16-byte tag.

        `nonce` must be `NONCE_SIZE` fresh random bytes, never reused with this key.
        """
        return self._ciphers[0].encrypt(nonce, plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes | None:
        """The plaintext, trying every key (primary first); None if no key
        authenticates it (wrong key, other associated data, or tampering)."""
        from cryptography.exceptions import InvalidTag

        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, ciphertext, associated_data)
            except InvalidTag:
                continue
        return None


def _cipher(key: bytes) -> AESGCM:
    # Imported on first use: a node without keys never loads `cryptography`
    # (about 6 MiB of resident memory per agent).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def load_key_file(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring from a text file: one base64 key per line, the first is the
    primary; blank lines and `#` comments (whole-line or trailing) are ignored.

    Raises `ValueError` with a one-line message naming the file (and line), such as
    ``keys.txt:3: key is not valid base64``. The file holds secrets: keep it
    readable by the agent's user only.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{name}: cannot read key file: {reason}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name}: key file is not UTF-8 text") from None
    keys: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(parse_key(text))
        except ValueError as exc:
            raise ValueError(f"{name}:{number}: {exc}") from None
    if not keys:
        raise ValueError(f"{name}: no keys found")
    return Keyring(keys[0], keys[1:])
