"""Keyring: key text format, key files, rotation operations, and keys kept out of sight."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from swimnode.net.keyring import (
    KEY_SIZE,
    Keyring,
    fingerprint,
    generate_key,
    load_key_file,
    parse_key,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
K3 = bytes(range(2, 34))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ----- text format ------------------------------------------------------------------


def test_generate_key_is_base64_of_32_random_bytes() -> None:
    a, b = generate_key(), generate_key()
    assert a != b
    assert len(a) == 44
    assert len(parse_key(a)) == KEY_SIZE


def test_parse_key_round_trip_and_whitespace() -> None:
    assert parse_key(b64(K1)) == K1
    assert parse_key(f"  {b64(K1)}\n") == K1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "key is empty"),
        ("   ", "key is empty"),
        ("not base64!!", "key is not valid base64"),
        ("é" * 44, "key is not valid base64"),
        (b64(K1)[:-4], "key must decode to 32 bytes, got 30"),
        (b64(K1 + b"x"), "key must decode to 32 bytes, got 33"),
        # URL-safe alphabet is not the standard one.
        (base64.urlsafe_b64encode(b"\xff" * 32).decode(), "key is not valid base64"),
    ],
)
def test_parse_key_errors_are_one_line_and_do_not_echo(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_key(text)
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    if text.strip():
        assert text.strip() not in str(info.value)


def test_fingerprint_is_first_8_hex_of_sha256() -> None:
    assert fingerprint(K1) == hashlib.sha256(K1).hexdigest()[:8]


# ----- keyring operations -------------------------------------------------------------


def test_primary_first_and_install_use_remove() -> None:
    ring = Keyring(K1)
    assert ring.primary == K1 and ring.keys == [K1] and len(ring) == 1
    assert ring.install(K2) is True
    assert ring.install(b64(K2)) is False  # already there, text form accepted too
    assert ring.keys == [K1, K2]
    ring.use(K2)
    assert ring.primary == K2 and ring.keys == [K2, K1]
    assert ring.remove(K1) is True
    assert ring.keys == [K2]
    assert ring.remove(K3) is False  # not installed: nothing to do


def test_use_requires_installed_key() -> None:
    ring = Keyring(K1)
    with pytest.raises(ValueError, match=r"^key [0-9a-f]{8} is not installed"):
        ring.use(K2)
    assert ring.primary == K1


def test_remove_refuses_primary() -> None:
    ring = Keyring(K1, [K2])
    with pytest.raises(ValueError, match="is the primary key"):
        ring.remove(K1)
    assert ring.keys == [K1, K2]


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring(b"short")
    with pytest.raises(TypeError):
        Keyring(123)  # type: ignore[arg-type]
    ring = Keyring(K1)
    with pytest.raises(ValueError):
        ring.install("garbage")


def test_contains() -> None:
    ring = Keyring(K1, [K2])
    assert K2 in ring and b64(K2) in ring
    assert K3 not in ring and "garbage" not in ring


def test_keys_never_appear_in_repr_or_str() -> None:
    ring = Keyring(K1, [K2])
    for text in (repr(ring), str(ring), f"{ring}"):
        for key in (K1, K2):
            assert b64(key) not in text
            assert key.hex() not in text
            assert repr(key) not in text
        assert fingerprint(K1) in text and fingerprint(K2) in text
    assert ring.fingerprints == [fingerprint(K1), fingerprint(K2)]


def test_encrypt_decrypt_tries_every_key_primary_first() -> None:
    old, new = Keyring(K1), Keyring(K2, [K1])
    nonce = os.urandom(12)
    sealed = old.encrypt(nonce, b"hello", b"ad")
    assert new.decrypt(nonce, sealed, b"ad") == b"hello"  # via the secondary key
    assert new.decrypt(nonce, sealed, b"other ad") is None
    assert Keyring(K3).decrypt(nonce, sealed, b"ad") is None
    assert new.decrypt(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"ad") is None


# ----- key files ----------------------------------------------------------------------


def test_load_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# cluster keys\n\n{b64(K2)}  # new primary\n   {b64(K1)}\n")
    ring = load_key_file(path)
    assert ring.keys == [K2, K1]


def test_load_key_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text(f"{b64(K1)}\n# fine\nnot-a-key\n")
    with pytest.raises(ValueError) as info:
        load_key_file(bad)
    assert str(info.value) == f"{bad}:3: key is not valid base64"

    short = tmp_path / "short"
    short.write_text(b64(b"x" * 16) + "\n")
    with pytest.raises(ValueError, match=r"short:1: key must decode to 32 bytes, got 16$"):
        load_key_file(short)

    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"empty: no keys found$"):
        load_key_file(empty)

    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"missing: cannot read key file: No such file"):
        load_key_file(missing)

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_key_file(binary)
