"""The agent's local control protocol and its blocking client: msgpack maps over TCP,
each framed by a 4-byte big-endian length.

A client sends one request, ``{"command": NAME, ...arguments}``, and reads one reply,
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``:

* ``members`` -> ``{"members": [MEMBER, ...]}``
* ``stats`` -> ``{"stats": {counter: int}}``
* ``info`` -> ``{"info": {...}}``: the agent's name, addresses, versions, profile,
  timers, key fingerprints, members by state and uptime (`swimnode.agent.info.agent_info`)
* ``leave`` -> ``{}`` once the leave has been disseminated (the agent then exits)
* ``monitor`` -> ``{"members": [...]}``, then one frame per membership change,
  ``{"event": KIND, "member": MEMBER}`` (``updated`` adds ``"changed_keys": [...]``) or
  ``{"event": "events_lost", "count": N}``, until either side closes the connection.
* ``event`` ``{name, payload?: bytes, coalesce?: bool}`` -> ``{"name", "ltime"}``: send a
  user event to every member (monitor frames of ``user`` events add ``"name"``,
  ``"payload"``, ``"ltime"`` and ``"coalesce"``; ``member`` is the sender)
* ``query`` ``{name, payload?: bytes, names?: [NAME], state?: [[KEY, REGEX]], timeout?}``
  -> ``{}``, then ``{"ack": NAME, "answering": bool}`` and ``{"response": NAME,
  "payload": bytes}`` frames as they arrive, then ``{"done": true, "kind", "expected",
  "acks", "responses": {NAME: bytes}, "missing", "timeout"}``
* ``state_get`` ``{key, member?}`` -> ``{"member", "key", "found": bool, "value"}``
* ``state_list`` ``{member?}`` -> ``{"member", "state": {key: value}}``
* ``state_set`` ``{key, value}`` -> ``{"member", "key"}``
* ``state_delete`` ``{key}`` -> ``{"member", "key", "deleted": bool}``
* ``ring`` ``{vnodes?, tokens_key?}`` -> ``{"vnodes", "tokens_key", "members": [{"name",
  "fraction", "tokens", "source": "advertised" | "derived", "ranges": [[start, end],
  ...]}]}`` (see `swimnode.agent.rpc.ring_to_dict`)
* ``keys`` ``{action: "list" | "install" | "use" | "remove", key?: base64, timeout?:
  seconds}`` -> a cluster-wide key report (`keyqueries.KeyReport.to_dict`): ``{"action",
  "key": fingerprint, "nodes", "answered", "failed": {name: reason}, "keys":
  {fingerprint: count}, "primary": {fingerprint: count}, "members": {name: {"ok",
  "error", "keys", "primary"}}, "timeout"}``. The key goes to the agent only; it is
  never echoed back or logged.

``member`` defaults to the agent's own name. ``MEMBER`` is ``{"name", "address":
"host:port", "state", "incarnation", "app_state": {key: value}}``; values travel as
msgpack, bytes included.

The server (`swimnode.agent.rpc`) runs inside the agent on Trio. This module holds what both
sides share, the message encoding (framed by `swimnode.net.framing`) and the request
limits, and the client, which is plain
blocking sockets: the command line tools are short-lived and should not pay for
importing Trio.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from ..net import framing
from ..net.transport import Address, format_address

MAX_FRAME = 16 * 1024 * 1024
"""Largest frame either side accepts; a membership listing of thousands fits."""
MAX_REQUEST = 64 * 1024
"""Largest request body the agent reads; the client refuses to send a larger one."""
MAX_VNODES = 4096
"""Most derived tokens per member the `ring` command builds (it runs in the agent)."""
MAX_QUERY_TIMEOUT = 600.0
"""Longest a `keys` request may ask the agent to wait for answers (seconds)."""


class RpcError(Exception):
    """The agent could not be reached or answered with an error; `str()` is one line."""


# ----- wire format (pure) -------------------------------------------------------------


def encode_frame(message: dict[str, Any]) -> bytes:
    """One length-prefixed msgpack frame (`swimnode.net.framing`)."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return framing.encode(body)


def decode_body(body: bytes) -> dict[str, Any]:
    """The map inside a frame; raises `RpcError` if it is not one."""
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RpcError(f"malformed RPC frame: {exc}") from None
    if not isinstance(value, dict):
        raise RpcError("malformed RPC frame: not a map")
    return value


# ----- client ---------------------------------------------------------------------------


def _connect(address: Address, timeout: float) -> socket.socket:
    where = format_address(address)
    try:
        return socket.create_connection(address, timeout=timeout)
    except TimeoutError:
        raise RpcError(f"cannot reach the agent at {where}: timed out") from None
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            reason = "connection refused (is `swimnode agent` running?)"
        else:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            reason = reason[:1].lower() + reason[1:]
        raise RpcError(f"cannot reach the agent at {where}: {reason}") from None


def _recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    try:
        body = framing.recv_frame(sock, MAX_FRAME, "reply")
    except framing.FrameTruncated:
        raise RpcError("the agent closed the connection mid-reply") from None
    except framing.FrameTooLarge as exc:
        raise RpcError(str(exc)) from None
    return None if body is None else decode_body(body)


def _checked(reply: dict[str, Any] | None) -> dict[str, Any]:
    if reply is None:
        raise RpcError("the agent closed the connection without answering")
    if not reply.get("ok"):
        raise RpcError(f"the agent refused: {reply.get('error', 'no reason given')}")
    return reply


def call(
    address: Address, command: str, args: Mapping[str, Any] | None = None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one command (with its arguments) and return the agent's reply; raises
    `RpcError`."""
    request = {**(args or {}), "command": command}
    try:
        frame = encode_frame(request)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RpcError(f"cannot encode the request: {exc}") from None
    try:
        framing.check_size(len(frame) - framing.HEADER.size, MAX_REQUEST, "request")
    except framing.FrameTooLarge as exc:
        raise RpcError(str(exc)) from None
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(frame)
            return _checked(_recv_frame(sock))
        except TimeoutError:
            raise RpcError(
                f"the agent at {format_address(address)} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcError(f"connection to the agent broke: {exc}") from None


def members(address: Address, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The agent's member list, as `swimnode.agent.rpc.member_to_dict` shapes."""
    listing: list[dict[str, Any]] = call(address, "members", timeout=timeout)["members"]
    return listing


def query(address: Address, args: Mapping[str, Any], *, timeout: float) -> Iterator[dict[str, Any]]:
    """Yield a query's frames as the agent sends them: ``{"ack": NAME, "answering":
    bool}`` and ``{"response": NAME, "payload": bytes}`` as they arrive, then the
    summary ``{"done": true, ...}``. Raises `RpcError`; `timeout` bounds each wait."""
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(encode_frame({**args, "command": "query"}))
            _checked(_recv_frame(sock))
            while (frame := _recv_frame(sock)) is not None:
                if "ok" in frame:
                    _checked(frame)
                    continue
                yield frame
                if frame.get("done"):
                    return
        except TimeoutError:
            raise RpcError(
                f"the agent at {format_address(address)} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcError(f"connection to the agent broke: {exc}") from None
    raise RpcError("the agent closed the connection before the query ended")


def monitor(address: Address, *, timeout: float = 10.0) -> Iterator[dict[str, Any]]:
    """Yield the current members as ``{"event": "member", "member": ...}``, then every
    event frame until the agent closes the connection. Raises `RpcError`."""
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(encode_frame({"command": "monitor"}))
            first = _checked(_recv_frame(sock))
            for member in first["members"]:
                yield {"event": "member", "member": member}
            # Events come whenever the cluster changes; wait for them indefinitely.
            sock.settimeout(None)
            while (frame := _recv_frame(sock)) is not None:
                yield frame
        except TimeoutError:
            raise RpcError(
                f"the agent at {format_address(address)} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcError(f"connection to the agent broke: {exc}") from None
