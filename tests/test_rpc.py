"""The RPC wire format, and server and client talking over real loopback TCP."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio

from swimnode import rpc
from swimnode.events import EventHub, EventStream, MemberFailed, MemberJoined
from swimnode.member import Member, MemberState
from swimnode.transport import Address

A = Member("a", ("127.0.0.1", 7946), 0, MemberState.ALIVE, 0.0)
B = Member("b", ("::1", 7947), 3, MemberState.SUSPECT, 0.0)
WAIT = 10.0


class FakeAgent:
    def __init__(self) -> None:
        self.hub = EventHub(16)
        self.left = 0
        self.exit_requested = False

    def members(self) -> list[Member]:
        return [A, B]

    def stats(self) -> dict[str, int]:
        return {"probes": 7, "transport_send_errors": 1}

    def events(self) -> EventStream:
        return self.hub.subscribe()

    async def leave(self) -> None:
        self.left += 1

    def request_exit(self) -> None:
        self.exit_requested = True


async def serving(nursery: trio.Nursery, agent: FakeAgent) -> Address:
    listener = await rpc.open_rpc_listener(("127.0.0.1", 0))
    host, port = listener.socket.getsockname()[:2]
    nursery.start_soon(rpc.serve_rpc, listener, agent)
    return host, port


def test_frames_round_trip() -> None:
    frame = rpc.encode_frame({"command": "members", "n": 1})
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert rpc.decode_body(frame[4:]) == {"command": "members", "n": 1}
    with pytest.raises(rpc.RpcError):
        rpc.decode_body(b"\xc1")
    with pytest.raises(rpc.RpcError):
        rpc.decode_body(rpc.encode_frame([1, 2])[4:])  # type: ignore[arg-type]


def test_member_shape() -> None:
    assert rpc.member_to_dict(B) == {"name": "b", "address": "[::1]:7947", "state": "suspect",
                                     "incarnation": 3}
    assert rpc.event_to_dict(MemberJoined(A))["event"] == "joined"


async def test_commands() -> None:
    agent = FakeAgent()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)
            listing = await trio.to_thread.run_sync(rpc.members, address)
            assert [m["name"] for m in listing] == ["a", "b"]
            reply = await trio.to_thread.run_sync(rpc.call, address, "stats")
            assert reply["stats"] == {"probes": 7, "transport_send_errors": 1}
            await trio.to_thread.run_sync(rpc.call, address, "leave")
            assert (agent.left, agent.exit_requested) == (1, True)
            with pytest.raises(rpc.RpcError, match="unknown command 'dance'"):
                await trio.to_thread.run_sync(rpc.call, address, "dance")
            nursery.cancel_scope.cancel()


async def test_monitor_streams_snapshot_then_events() -> None:
    agent = FakeAgent()
    frames: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)

            def consume() -> None:
                for frame in rpc.monitor(address):
                    frames.append(frame)
                    if frame["event"] == "failed":
                        return

            async def publish_once_subscribed() -> None:
                # The hub signals nothing on subscribe; polling is all there is.
                while not list(agent.hub._subscribers):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                agent.hub.publish(MemberFailed(B))

            nursery.start_soon(publish_once_subscribed)
            await trio.to_thread.run_sync(consume)
            # The client hung up; the server drops its subscription.
            while list(agent.hub._subscribers):  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [(f["event"], f["member"]["name"]) for f in frames] == [
        ("member", "a"), ("member", "b"), ("failed", "b")]


async def test_bad_request_gets_an_error_reply() -> None:
    agent = FakeAgent()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)

            def send_oversize() -> bytes:
                with socket.create_connection(address, timeout=WAIT) as s:
                    s.sendall(struct.pack(">I", 1 << 30))
                    return s.recv(4096)

            reply = await trio.to_thread.run_sync(send_oversize)
            assert rpc.decode_body(reply[4:])["ok"] is False
            nursery.cancel_scope.cancel()


def test_unreachable_agent_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(rpc.RpcError) as info:
        rpc.call(("127.0.0.1", port), "members", timeout=2)
    assert str(info.value) == (f"cannot reach the agent at 127.0.0.1:{port}: connection "
                               "refused (is `swimnode agent` running?)")
