"""The agent's side of its local control endpoint: a Trio server answering the
requests `swimnode.agent.client` describes and sends (the encoding and the limits are
defined there, the framing in `swimnode.net.framing`, once for both sides), plus the
reply shapes of members, events and the ring.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import trio

from ..eventhub import EventStream
from ..net import framing
from ..net.transport import Address, TransportError, format_address
from ..protocol.events import Event, MemberEvent, MemberUpdated, UserEvent
from ..protocol.member import Member
from ..protocol.queries import QueryFilters, QueryProgress, QueryResult
from ..ring import HashRing, advertised_tokens
from .client import (
    MAX_QUERY_TIMEOUT,
    MAX_REQUEST,
    MAX_VNODES,
    RpcError,
    decode_body,
    encode_frame,
)

_REQUEST_TIMEOUT = 10.0
_MAX_CLIENTS = 64


# ----- reply shapes (pure) ------------------------------------------------------------


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
        return {
            "event": event.kind,
            "member": member_to_dict(event.member),
            "changed_keys": sorted(event.changed_keys),
        }
    if isinstance(event, UserEvent):
        return {
            "event": event.kind,
            "member": member_to_dict(event.member),
            "name": event.name,
            "payload": event.payload,
            "ltime": event.ltime,
            "coalesce": event.coalesce,
        }
    if hasattr(event, "member"):
        return {"event": event.kind, "member": member_to_dict(event.member)}
    return {"event": event.kind, "count": event.count}


def ring_to_dict(
    members: Iterable[Member], *, vnodes: int = 100, tokens_key: str = "tokens"
) -> dict[str, Any]:
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
        rows.append(
            {
                "name": m.name,
                "fraction": share.get(m.name, 0.0),
                "tokens": counts.get(m.name, 0),
                "source": "derived" if advertised_tokens(m, tokens_key) is None else "advertised",
                "ranges": [[start, end] for start, end in ring.ranges(m.name)],
            }
        )
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

    def info(self) -> dict[str, Any]:
        """The agent's identity, versions, settings and member counts
        (`info.agent_info`)."""

    def send_event(self, name: str, payload: bytes, coalesce: bool) -> int:
        """Send a user event; its Lamport time. `ValueError` (one line) if refused."""

    async def query(
        self,
        kind: str,
        payload: bytes,
        filters: QueryFilters,
        timeout: float | None,  # noqa: ASYNC109
        on_progress: Callable[[QueryProgress], object],
    ) -> QueryResult:
        """Ask the members the filters select; `ValueError` (one line) if refused."""

    def events(self) -> EventStream:
        """A new subscription to membership events."""

    async def leave(self) -> None:
        """Leave the cluster gracefully."""

    def request_exit(self) -> None:
        """Ask the agent to exit (after a leave)."""

    async def keys(self, action: str, key: str | None, timeout: float | None) -> dict[str, Any]:  # noqa: ASYNC109
        """Run a cluster-wide key query; `ValueError` (one line) if refused."""


async def open_rpc_listener(address: Address) -> trio.SocketListener:
    """Bind the RPC endpoint; raises `TransportError` with a one-line message."""
    return await open_tcp_listener(address, "RPC endpoint")


async def open_tcp_listener(address: Address, what: str) -> trio.SocketListener:
    """Bind a TCP listener for the agent's endpoint `what` (RPC, metrics); raises
    `TransportError` with a one-line message naming it."""
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TransportError(
            f"cannot bind {what} {format_address(address)}: {reason[:1].lower() + reason[1:]}",
            exc.errno,
        ) from None
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


async def _read_request(stream: trio.SocketStream) -> dict[str, Any] | None:
    try:
        body = await framing.receive_frame(stream, MAX_REQUEST, "request")
    except framing.FrameTruncated:
        return None  # the client went away: nobody to answer
    except framing.FrameTooLarge as exc:
        raise RpcError(str(exc)) from None
    return None if body is None else decode_body(body)


async def _serve_one(stream: trio.SocketStream, target: Controlled) -> None:
    try:
        with trio.fail_after(_REQUEST_TIMEOUT):
            request = await _read_request(stream)
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
    elif command == "query":
        await _query(stream, request, target)
    elif command == "keys":
        try:
            reply = {
                "ok": True,
                **await target.keys(
                    _arg(request, "action", str),
                    _arg(request, "key", str, None),
                    _query_timeout(request),
                ),
            }
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
        await stream.send_all(encode_frame({"ok": False, "error": f"unknown command {command!r}"}))


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


def _query_timeout(request: Mapping[str, Any]) -> float | None:
    value = request.get("timeout")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_QUERY_TIMEOUT
    ):
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
    return {"member": member.name, "key": key, "found": found, "value": member.app_state.get(key)}


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


def _info(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    return {"info": target.info()}


def _event(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    name = _arg(request, "name", str)
    ltime = target.send_event(
        name, _arg(request, "payload", bytes, b""), _arg(request, "coalesce", bool, True)
    )
    return {"name": name, "ltime": ltime}


def _ring(request: Mapping[str, Any], target: Controlled) -> dict[str, Any]:
    vnodes = _arg(request, "vnodes", int, 100)
    if not 1 <= vnodes <= MAX_VNODES:
        raise _BadRequest(f"vnodes must be 1..{MAX_VNODES}, got {vnodes}")
    return ring_to_dict(
        target.members(), vnodes=vnodes, tokens_key=_arg(request, "tokens_key", str, "tokens")
    )


_STATE_COMMANDS = {
    "state_get": _state_get,
    "state_list": _state_list,
    "state_set": _state_set,
    "state_delete": _state_delete,
    "ring": _ring,
    "info": _info,
    "event": _event,
}


def query_result_to_dict(result: QueryResult) -> dict[str, Any]:
    """The last frame of a `query` reply."""
    return {
        "done": True,
        "kind": result.kind,
        "expected": sorted(result.expected),
        "acks": sorted(result.acks),
        "responses": dict(sorted(result.responses.items())),
        "missing": result.missing,
        "timeout": result.timeout,
    }


def _query_request(request: Mapping[str, Any]) -> tuple[str, bytes, QueryFilters, float | None]:
    names = _arg(request, "names", list, [])
    state = _arg(request, "state", list, [])
    if not all(isinstance(n, str) for n in names):
        raise _BadRequest("names must be strings")
    if not all(
        isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in state
    ):
        raise _BadRequest("state must be [key, regex] pairs of strings")
    filters = (tuple(names), tuple((k, r) for k, r in state))
    return (
        _arg(request, "name", str),
        _arg(request, "payload", bytes, b""),
        filters,
        _query_timeout(request),
    )


async def _query(stream: trio.SocketStream, request: Mapping[str, Any], target: Controlled) -> None:
    # Acks and answers go to the client as they arrive; the last frame sums up.
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)

    def progress(p: QueryProgress) -> None:
        if p.payload is None:
            send.send_nowait({"ack": p.sender, "answering": p.answering})
        else:
            send.send_nowait({"response": p.sender, "payload": p.payload})

    async def ask() -> None:
        async with send:
            try:
                kind, payload, filters, timeout = _query_request(request)
                await send.send({"ok": True})
                result = await target.query(kind, payload, filters, timeout, progress)
            except (_BadRequest, ValueError) as exc:
                await send.send({"ok": False, "error": str(exc)})
                return
            await send.send(query_result_to_dict(result))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        async with receive:
            async for frame in receive:
                await stream.send_all(encode_frame(frame))


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
