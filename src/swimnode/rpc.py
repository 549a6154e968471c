"""The agent's local control endpoint: msgpack maps over TCP, each framed by a 4-byte
big-endian length.

A client sends one request, ``{"command": NAME, ...arguments}``, and reads one reply,
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``:

* ``members`` -> ``{"members": [MEMBER, ...]}``
* ``stats`` -> ``{"stats": {counter: int}}``
* ``leave`` -> ``{}`` once the leave has been disseminated (the agent then exits)
* ``monitor`` -> ``{"members": [...]}``, then one frame per membership change,
  ``{"event": KIND, "member": MEMBER}`` (``updated`` adds ``"changed_keys": [...]``) or
  ``{"event": "events_lost", "count": N}``, until either side closes the connection.
* ``state_get`` ``{key, member?}`` -> ``{"member", "key", "found": bool, "value"}``
* ``state_list`` ``{member?}`` -> ``{"member", "state": {key: value}}``
* ``state_set`` ``{key, value}`` -> ``{"member", "key"}``
* ``state_delete`` ``{key}`` -> ``{"member", "key", "deleted": bool}``
* ``ring`` ``{vnodes?, tokens_key?}`` -> ``{"vnodes", "tokens_key", "members": [{"name",
  "fraction", "tokens", "source": "advertised" | "derived", "ranges": [[start, end],
  ...]}]}`` (see `ring_to_dict`)
* ``keys`` ``{action: "list" | "install" | "use" | "remove", key?: base64, timeout?:
  seconds}`` -> a cluster-wide key report (`keyqueries.KeyReport.to_dict`): ``{"action",
  "key": fingerprint, "nodes", "answered", "failed": {name: reason}, "keys":
  {fingerprint: count}, "primary": {fingerprint: count}, "members": {name: {"ok",
  "error", "keys", "primary"}}, "timeout"}``. The key goes to the agent only; it is
  never echoed back or logged.

``member`` defaults to the agent's own name. ``MEMBER`` is ``{"name", "address":
"host:port", "state", "incarnation", "app_state": {key: value}}``; values travel as
msgpack, bytes included. The server runs inside the agent (Trio); the client is plain
blocking sockets, as fits a short-lived command line tool.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import msgpack
import trio

from .events import Event, EventStream, MemberEvent, MemberUpdated
from .member import Member
from .ring import TOKEN_SPACE, HashRing
from .transport import Address
from .udp import TransportError, format_address

_HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024
"""Largest frame either side accepts; a membership listing of thousands fits."""
_MAX_REQUEST = 64 * 1024
_REQUEST_TIMEOUT = 10.0
_MAX_CLIENTS = 64


class RpcError(Exception):
    """The agent could not be reached or answered with an error; `str()` is one line."""


# ----- wire format (pure) -------------------------------------------------------------

def encode_frame(message: dict[str, Any]) -> bytes:
    """One length-prefixed msgpack frame."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """The map inside a frame; raises `RpcError` if it is not one."""
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RpcError(f"malformed RPC frame: {exc}") from None
    if not isinstance(value, dict):
        raise RpcError("malformed RPC frame: not a map")
    return value


def member_to_dict(member: Member) -> dict[str, Any]:
    """The RPC shape of a member (`app_state` values as they are, bytes included)."""
    return {
        "name": member.name,
        "address": format_address(member.address),
        "state": member.state.label,
        "incarnation": member.incarnation,
        "app_state": dict(member.app_state),
    }


def event_to_dict(event: Event) -> dict[str, Any]:
    """The RPC shape of a membership event."""
    if isinstance(event, MemberUpdated):
        return {"event": event.kind, "member": member_to_dict(event.member),
                "changed_keys": sorted(event.changed_keys)}
    if hasattr(event, "member"):
        return {"event": event.kind, "member": member_to_dict(event.member)}
    return {"event": event.kind, "count": event.count}


def _advertises(member: Member, tokens_key: str) -> bool:
    # The rule HashRing.from_members applies: a non-empty list of ints in [0, 2**64).
    raw = member.app_state.get(tokens_key)
    return (isinstance(raw, list | tuple) and bool(raw)
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < TOKEN_SPACE
                    for t in raw))


def ring_to_dict(members: Iterable[Member], *, vnodes: int = 100,
                 tokens_key: str = "tokens") -> dict[str, Any]:
    """The ring the live `members` form (`HashRing.from_members`): for each live
    member, sorted by name, its share of the token space (`fraction`, summing to 1),
    how many ring tokens it holds, whether they were `advertised` in its application
    state or `derived` from its name, and its `(start, end]` ranges as ints. A live
    member that lost every token to a collision is listed with fraction 0. Raises
    `ValueError` if `vnodes < 1`."""
    live = [m for m in members if m.is_live]
    ring = HashRing.from_members(live, tokens_key=tokens_key, vnodes=vnodes)
    share = ring.ownership()
    counts = Counter(ring.token_owner(t) for t in ring.tokens)
    rows = []
    for m in sorted(live, key=lambda m: m.name):
        rows.append({
            "name": m.name,
            "fraction": share.get(m.name, 0.0),
            "tokens": counts.get(m.name, 0),
            "source": "advertised" if _advertises(m, tokens_key) else "derived",
            "ranges": [[start, end] for start, end in ring.ranges(m.name)],
        })
    return {"vnodes": vnodes, "tokens_key": tokens_key, "members": rows}


# ----- server ---------------------------------------------------------------------------

class Controlled(Protocol):
    """What the RPC server needs from the agent it controls."""

    @property
    def name(self) -> str:
        """The local member's name."""

    def members(self) -> list[Member]:
        """Every known member."""

    def set_state(self, key: str, value: Any) -> None:
        """Set one key of the local application state; `ValueError` if refused."""

    def delete_state(self, key: str) -> bool:
        """Delete one local key; false if it was not set."""

    def stats(self) -> dict[str, int]:
        """Protocol and transport counters."""

    def events(self) -> EventStream:
        """A new subscription to membership events."""

    async def leave(self) -> None:
        """Leave the cluster gracefully."""

    def request_exit(self) -> None:
        """Ask the agent to exit (after a leave)."""

    async def keys(self, action: str, key: str | None,
                   timeout: float | None) -> dict[str, Any]:  # noqa: ASYNC109
        """Run a cluster-wide key query; `ValueError` (one line) if refused."""


async def open_rpc_listener(address: Address) -> trio.SocketListener:
    """Bind the RPC endpoint; raises `TransportError` with a one-line message."""
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TransportError(f"cannot bind RPC endpoint {format_address(address)}: "
                             f"{reason[:1].lower() + reason[1:]}", exc.errno) from None
    # open_tcp_listeners may return one listener per address family of a name; the
    # agent binds literals, so the first is the one asked for.
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    if not isinstance(listener, trio.SocketListener):
        raise TypeError("expected a socket listener")
    return listener


async def serve_rpc(listener: trio.SocketListener, target: Controlled) -> None:
    """Answer RPC clients on `listener` until cancelled."""
    limiter = trio.CapacityLimiter(_MAX_CLIENTS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            # A client that went away needs no answer.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _serve_one(stream, target)

    await trio.serve_listeners(handle, [listener])


async def _read_frame(stream: trio.SocketStream, limit: int) -> dict[str, Any] | None:
    header = await _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise RpcError(f"request of {size} bytes is over the {limit} byte limit")
    body = await _read_exactly(stream, size)
    if body is None:
        return None
    return decode_body(body)


async def _read_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


async def _serve_one(stream: trio.SocketStream, target: Controlled) -> None:
    try:
        with trio.fail_after(_REQUEST_TIMEOUT):
            request = await _read_frame(stream, _MAX_REQUEST)
    except (RpcError, trio.TooSlowError) as exc:
        message = str(exc) or "no request within the timeout"
        await stream.send_all(encode_frame({"ok": False, "error": message}))
        return
    if request is None:
        return
    command = request.get("command")
    if command == "members":
        members = [member_to_dict(m) for m in target.members()]
        await stream.send_all(encode_frame({"ok": True, "members": members}))
    elif command == "stats":
        await stream.send_all(encode_frame({"ok": True, "stats": target.stats()}))
    elif command == "leave":
        await target.leave()
        await stream.send_all(encode_frame({"ok": True}))
        target.request_exit()
    elif command == "monitor":
        await _monitor(stream, target)
    elif command == "keys":
        try:
            reply = {"ok": True, **await target.keys(
                _arg(request, "action", str), _arg(request, "key", str, None),
                _query_timeout(request))}
        except (_BadRequest, ValueError) as exc:
            reply = {"ok": False, "error": str(exc)}
        await stream.send_all(encode_frame(reply))
    elif command in _STATE_COMMANDS:
        try:
            reply = {"ok": True, **_STATE_COMMANDS[command](request, target)}
        except (_BadRequest, ValueError) as exc:
            reply = {"ok": False, "error": str(exc)}
        await stream.send_all(encode_frame(reply))
    else:
        await stream.send_all(encode_frame({"ok": False,
                                            "error": f"unknown command {command!r}"}))


class _BadRequest(Exception):
    pass


def _arg(request: Mapping[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = request.get(name)
    if value is None:
        if default is ...:
            raise _BadRequest(f"missing argument {name!r}")
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _BadRequest(f"argument {name!r} must be {kind.__name__}")
    return value


MAX_QUERY_TIMEOUT = 600.0
"""Longest a `keys` request may ask the agent to wait for answers (seconds)."""


def _query_timeout(request: Mapping[str, Any]) -> float | None:
    value = request.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value <= MAX_QUERY_TIMEOUT:
        raise _BadRequest(f"timeout must be a number of seconds in (0, {MAX_QUERY_TIMEOUT:g}]")
    return float(value)


def _find_member(request: Mapping[str, Any], target: Controlled) -> Member:
    name = _arg(request, "member", str, target.name)
    for member in target.members():
        if member.name == name:
            return member
    raise _BadRequest(f"no member named {name!r}")


def _state_get(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    key = _arg(request, "key", str)
    member = _find_member(request, target)
    found = key in member.app_state
    return {"member": member.name, "key": key, "found": found,
            "value": member.app_state.get(key)}


def _state_list(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    member = _find_member(request, target)
    return {"member": member.name, "state": dict(member.app_state)}


def _state_set(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    key = _arg(request, "key", str)
    if "value" not in request:
        raise _BadRequest("missing argument 'value'")
    target.set_state(key, request["value"])
    return {"member": target.name, "key": key}


def _state_delete(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    key = _arg(request, "key", str)
    return {"member": target.name, "key": key, "deleted": target.delete_state(key)}


MAX_VNODES = 4096
"""Most derived tokens per member the `ring` command builds (it runs in the agent)."""


def _ring(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    vnodes = _arg(request, "vnodes", int, 100)
    if not 1 <= vnodes <= MAX_VNODES:
        raise _BadRequest(f"vnodes must be 1..{MAX_VNODES}, got {vnodes}")
    return ring_to_dict(target.members(), vnodes=vnodes,
                        tokens_key=_arg(request, "tokens_key", str, "tokens"))


_STATE_COMMANDS = {
    "state_get": _state_get,
    "state_list": _state_list,
    "state_set": _state_set,
    "state_delete": _state_delete,
    "ring": _ring,
}


async def _monitor(stream: trio.SocketStream, target: Controlled) -> None:
    # Subscribe before taking the snapshot so no change falls between the two; a
    # change may then show up in both, which is harmless for a monitor.
    events = target.events()
    try:
        members = [member_to_dict(m) for m in target.members()]
        await stream.send_all(encode_frame({"ok": True, "members": members}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
            event: MemberEvent | Event
            async for event in events:
                await stream.send_all(encode_frame(event_to_dict(event)))
            nursery.cancel_scope.cancel()
    finally:
        events.close()


async def _cancel_when_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    # A monitor client never sends after its request; reading tells us when it hangs
    # up, so its subscription is dropped even while the cluster is quiet.
    while await stream.receive_some(4096):
        pass
    scope.cancel()


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


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            if buf:
                raise RpcError("the agent closed the connection mid-reply")
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise RpcError(f"reply of {size} bytes is over the {MAX_FRAME} byte limit")
    body = _recv_exactly(sock, size)
    if body is None:
        raise RpcError("the agent closed the connection mid-reply")
    return decode_body(body)


def _checked(reply: dict[str, Any] | None) -> dict[str, Any]:
    if reply is None:
        raise RpcError("the agent closed the connection without answering")
    if not reply.get("ok"):
        raise RpcError(f"the agent refused: {reply.get('error', 'no reason given')}")
    return reply


def call(address: Address, command: str, args: Mapping[str, Any] | None = None, *,
         timeout: float = 10.0) -> dict[str, Any]:
    """Send one command (with its arguments) and return the agent's reply; raises
    `RpcError`."""
    request = {**(args or {}), "command": command}
    try:
        frame = encode_frame(request)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RpcError(f"cannot encode the request: {exc}") from None
    if len(frame) - _HEADER.size > _MAX_REQUEST:
        raise RpcError(f"request of {len(frame) - _HEADER.size} bytes is over the "
                       f"{_MAX_REQUEST} byte limit")
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(frame)
            return _checked(_recv_frame(sock))
        except TimeoutError:
            raise RpcError(f"the agent at {format_address(address)} did not answer "
                           f"within {timeout:g} s") from None
        except OSError as exc:
            raise RpcError(f"connection to the agent broke: {exc}") from None


def members(address: Address, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The agent's member list, as `member_to_dict` shapes."""
    listing: list[dict[str, Any]] = call(address, "members", timeout=timeout)["members"]
    return listing


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
            raise RpcError(f"the agent at {format_address(address)} did not answer "
                           f"within {timeout:g} s") from None
        except OSError as exc:
            raise RpcError(f"connection to the agent broke: {exc}") from None
