"""The agent's local control endpoint: msgpack maps over TCP, each framed by a 4-byte
big-endian length.

A client sends one request, ``{"command": NAME}``, and reads one reply,
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``:

* ``members`` -> ``{"members": [MEMBER, ...]}``
* ``stats`` -> ``{"stats": {counter: int}}``
* ``leave`` -> ``{}`` once the leave has been disseminated (the agent then exits)
* ``monitor`` -> ``{"members": [...]}``, then one frame per membership change,
  ``{"event": KIND, "member": MEMBER}`` or ``{"event": "events_lost", "count": N}``,
  until either side closes the connection.

``MEMBER`` is ``{"name", "address": "host:port", "state", "incarnation"}``. The server
runs inside the agent (Trio); the client is plain blocking sockets, as fits a
short-lived command line tool.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any, Protocol

import msgpack
import trio

from .events import Event, EventStream, MemberEvent
from .member import Member
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
    """The RPC and JSON shape of a member."""
    return {
        "name": member.name,
        "address": format_address(member.address),
        "state": member.state.label,
        "incarnation": member.incarnation,
    }


def event_to_dict(event: Event) -> dict[str, Any]:
    """The RPC shape of a membership event."""
    if hasattr(event, "member"):
        return {"event": event.kind, "member": member_to_dict(event.member)}
    return {"event": event.kind, "count": event.count}


# ----- server ---------------------------------------------------------------------------

class Controlled(Protocol):
    """What the RPC server needs from the agent it controls."""

    def members(self) -> list[Member]:
        """Every known member."""

    def stats(self) -> dict[str, int]:
        """Protocol and transport counters."""

    def events(self) -> EventStream:
        """A new subscription to membership events."""

    async def leave(self) -> None:
        """Leave the cluster gracefully."""

    def request_exit(self) -> None:
        """Ask the agent to exit (after a leave)."""


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
    else:
        await stream.send_all(encode_frame({"ok": False,
                                            "error": f"unknown command {command!r}"}))


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


def call(address: Address, command: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one command and return the agent's reply; raises `RpcError`."""
    with _connect(address, timeout) as sock:
        try:
            sock.sendall(encode_frame({"command": command}))
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
