"""Cluster-wide key management over queries (Serf's `keys` command).

`swimnode keys list|install|use|remove` asks every member at once through one
`Query` (see `swimnode.protocol.queries`) and reports what each one answered:

* ``keys.list``: the member's key fingerprints, primary first; never key material.
* ``keys.install`` / ``keys.use`` / ``keys.remove``: the 32-byte key is the query's
  payload; the member applies `Keyring.install` / `use` / `remove` and answers ok or
  a one-line error (for instance when asked to remove its primary key).

Key material may only travel inside authenticated, encrypted packets, so
`run_key_query` refuses, before anything is sent, on a node without a keyring. A
member without a keyring answers every key query with an error, so a mixed cluster
is reported rather than silently half-changed.

Every answer is a msgpack map ``{"ok": bool, "error": str, "keys": [fingerprint,
...], "primary": fingerprint}`` (keys and primary after the operation; empty
without a keyring). Answers are checked like any input: a malformed one is reported
as that member's failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ..net.keyring import KEY_ACTIONS, KEY_SIZE, KeyAction, Keyring, fingerprint
from ..node import Node
from ..protocol.messages import Query
from ..protocol.queries import QueryHandler

KIND_PREFIX = "keys."
"""Query kinds are ``keys.list``, ``keys.install``, ``keys.use`` and ``keys.remove``."""

_MAX_FINGERPRINTS = 256


class KeyQueryError(Exception):
    """A key query could not be started; `str()` is one line and names no key."""


@dataclass(frozen=True, slots=True)
class KeyAnswer:
    """One member's answer to a key query."""

    ok: bool
    error: str = ""
    keys: tuple[str, ...] = ()
    """Fingerprints of the member's keys after the operation, primary first."""
    primary: str = ""


@dataclass(frozen=True, slots=True)
class KeyReport:
    """Every answer to one key query, as gathered by its origin."""

    action: KeyAction
    key: str
    """Fingerprint of the key the action was about ("" for list)."""
    expected: tuple[str, ...]
    """Members that were live when the query started, sorted."""
    answers: dict[str, KeyAnswer]
    missing: tuple[str, ...]
    """Expected members that did not answer in time."""
    timeout: float

    @property
    def failed(self) -> dict[str, str]:
        """Member -> why it failed: its own error, or no answer in time."""
        out = {name: a.error or "failed" for name, a in self.answers.items() if not a.ok}
        out.update({name: f"no answer within {self.timeout:g} s" for name in self.missing})
        return dict(sorted(out.items()))

    @property
    def ok(self) -> bool:
        """Whether every expected member answered, and each answer was ok."""
        return not self.failed

    def key_counts(self) -> dict[str, int]:
        """Fingerprint -> how many members that answered hold it."""
        counts: dict[str, int] = {}
        for answer in self.answers.values():
            for fp in answer.keys:
                counts[fp] = counts.get(fp, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def primary_counts(self) -> dict[str, int]:
        """Fingerprint -> how many members that answered use it as primary."""
        counts: dict[str, int] = {}
        for answer in self.answers.values():
            if answer.primary:
                counts[answer.primary] = counts.get(answer.primary, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """The RPC shape of the report. (It has no ``ok`` key: that is the RPC
        envelope's; success is an empty ``failed``.)"""
        return {
            "action": self.action,
            "key": self.key,
            "nodes": len(self.expected),
            "answered": len(self.answers),
            "failed": self.failed,
            "keys": self.key_counts(),
            "primary": self.primary_counts(),
            "members": {
                name: {"ok": a.ok, "error": a.error, "keys": list(a.keys), "primary": a.primary}
                for name, a in sorted(self.answers.items())
            },
            "timeout": self.timeout,
        }


def encode_answer(keyring: Keyring | None, error: str = "") -> bytes:
    """An answer payload: ok unless `error`, with the keyring's fingerprints."""
    fps = keyring.fingerprints if keyring is not None else []
    body = {"ok": not error, "error": error, "keys": fps, "primary": fps[0] if fps else ""}
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _fp(v: object) -> str:
    if not isinstance(v, str) or len(v) > 64:
        raise ValueError
    return v


def decode_answer(payload: bytes) -> KeyAnswer:
    """Parse an answer; never raises: a malformed answer becomes a failed one."""
    try:
        body = msgpack.unpackb(payload, raw=False, max_array_len=_MAX_FINGERPRINTS, max_map_len=16)
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            raise ValueError
        error = body.get("error", "")
        keys = body.get("keys", [])
        if not isinstance(error, str) or not isinstance(keys, list):
            raise ValueError
        return KeyAnswer(
            body["ok"], error[:500], tuple(_fp(k) for k in keys), _fp(body.get("primary", ""))
        )
    except Exception:  # msgpack raises many types on hostile input
        return KeyAnswer(False, "malformed answer")


def key_query_handler(action: KeyAction, keyring: Keyring | None) -> QueryHandler:
    """The handler that applies `action` to `keyring` (None: this member has no keys,
    so it answers with an error)."""

    def handle(query: Query) -> bytes:
        if keyring is None:
            return encode_answer(None, "this member runs without encryption keys")
        if action == "list":
            return encode_answer(keyring)
        if len(query.payload) != KEY_SIZE:
            return encode_answer(keyring, f"the query's key is not {KEY_SIZE} bytes")
        try:
            if action == "install":
                keyring.install(query.payload)
            elif action == "use":
                keyring.use(query.payload)
            elif not keyring.remove(query.payload):
                # Removing a key that is not there changes nothing; say so, since
                # a typo in the key would otherwise look like success.
                return encode_answer(keyring, f"key {fingerprint(query.payload)} is not installed")
        except ValueError as exc:  # Keyring messages name fingerprints only
            return encode_answer(keyring, str(exc))
        return encode_answer(keyring)

    return handle


def register_key_handlers(node: Node, keyring: Keyring | None) -> None:
    """Make `node` answer every ``keys.*`` query against `keyring`."""
    for action in KEY_ACTIONS:
        node.on_query(KIND_PREFIX + action, key_query_handler(action, keyring))


async def run_key_query(
    node: Node,
    keyring: Keyring | None,
    action: str,
    key: bytes | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (see Node.query)
) -> KeyReport:
    """Apply `action` on every member (this one included) and report each answer.

    Raises `KeyQueryError` (sending nothing) when this node has no keyring, for an
    unknown action, or when `key` is missing or given where it has no place.
    """
    if action not in KEY_ACTIONS:
        raise KeyQueryError(
            f"unknown key action {action!r} (expected one of: {', '.join(KEY_ACTIONS)})"
        )
    if keyring is None:
        raise KeyQueryError(
            "this cluster runs without encryption keys; key operations "
            "need one, so key material never travels in plaintext"
        )
    if action == "list":
        if key is not None:
            raise KeyQueryError("keys list takes no key")
        payload = b""
    else:
        if key is None or len(key) != KEY_SIZE:
            raise KeyQueryError(f"keys {action} needs a {KEY_SIZE}-byte key")
        payload = key
    result = await node.query(KIND_PREFIX + action, payload, timeout=timeout)
    answers = {name: decode_answer(data) for name, data in result.responses.items()}
    return KeyReport(
        action,
        fingerprint(key) if key is not None else "",
        tuple(sorted(result.expected)),
        answers,
        tuple(result.missing),
        result.timeout,
    )
