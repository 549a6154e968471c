"""The RPC wire format, and server and client talking over real loopback TCP."""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio

from swimnode.agent import client as rpcclient
from swimnode.agent import rpc
from swimnode.agent.daemon import Agent
from swimnode.agent.settings import AgentSettings
from swimnode.eventhub import EventHub, EventStream
from swimnode.net.transport import Address
from swimnode.net.udp import open_udp_transport
from swimnode.node import Node
from swimnode.protocol.appstate import StateStore
from swimnode.protocol.config import Config
from swimnode.protocol.events import MemberFailed, MemberJoined, MemberUpdated
from swimnode.protocol.member import Member, MemberState
from swimnode.protocol.queries import QueryFilters, QueryProgress, QueryResult
from swimnode.ring import TOKEN_SPACE

A = Member("a", ("127.0.0.1", 7946), 0, MemberState.ALIVE, 0.0)
B = Member("b", ("::1", 7947), 3, MemberState.SUSPECT, 0.0)
C = Member("c", ("127.0.0.1", 7948), 1, MemberState.DEAD, 0.0)
WAIT = 10.0


class FakeAgent:
    """Member "a" is the agent; its application state lives in a real StateStore."""

    def __init__(self) -> None:
        self.hub = EventHub(16)
        self.left = 0
        self.exit_requested = False
        self.store = StateStore("a", 1)
        self.others = [B]

    @property
    def name(self) -> str:
        return "a"

    def members(self) -> list[Member]:
        return [dataclasses.replace(A, app_state=self.store.values("a")), *self.others]

    def set_state(self, key: str, value: Any) -> None:
        self.store.set(key, value, 0.0)

    def delete_state(self, key: str) -> bool:
        return self.store.delete(key, 0.0) is not None

    def stats(self) -> dict[str, int]:
        return {"probes": 7, "transport_send_errors": 1}

    def info(self) -> dict[str, Any]:
        return {"name": "a"}

    def send_event(self, name: str, payload: bytes, coalesce: bool) -> int:
        raise ValueError("this fake agent sends no events")

    async def query(
        self,
        kind: str,
        payload: bytes,
        filters: QueryFilters,
        timeout: float | None,  # noqa: ASYNC109
        on_progress: Callable[[QueryProgress], object],
    ) -> QueryResult:
        raise ValueError("this fake agent asks nobody")

    def events(self) -> EventStream:
        return self.hub.subscribe()

    async def leave(self) -> None:
        self.left += 1

    def request_exit(self) -> None:
        self.exit_requested = True

    async def keys(self, action: str, key: str | None, timeout: float | None) -> dict[str, Any]:  # noqa: ASYNC109
        raise ValueError("this fake agent has no keyring")


async def serving(nursery: trio.Nursery, agent: FakeAgent) -> Address:
    listener = await rpc.open_rpc_listener(("127.0.0.1", 0))
    host, port = listener.socket.getsockname()[:2]
    nursery.start_soon(rpc.serve_rpc, listener, agent)
    return host, port


def test_frames_round_trip() -> None:
    frame = rpcclient.encode_frame({"command": "members", "n": 1})
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert rpcclient.decode_body(frame[4:]) == {"command": "members", "n": 1}
    with pytest.raises(rpcclient.RpcError):
        rpcclient.decode_body(b"\xc1")
    with pytest.raises(rpcclient.RpcError):
        rpcclient.decode_body(rpcclient.encode_frame([1, 2])[4:])  # type: ignore[arg-type]


def test_member_shape() -> None:
    assert rpc.member_to_dict(B) == {
        "name": "b",
        "address": "[::1]:7947",
        "state": "suspect",
        "incarnation": 3,
        "app_state": {},
    }
    assert rpc.event_to_dict(MemberJoined(A))["event"] == "joined"
    with_state = dataclasses.replace(A, app_state={"role": "db", "raw": b"\x00"})
    assert rpc.member_to_dict(with_state)["app_state"] == {"role": "db", "raw": b"\x00"}
    updated = rpc.event_to_dict(MemberUpdated(with_state, frozenset({"role", "raw"})))
    assert updated["changed_keys"] == ["raw", "role"]
    assert "changed_keys" not in rpc.event_to_dict(MemberFailed(B))
    # The whole shape survives the msgpack frame, bytes included.
    assert rpcclient.decode_body(rpcclient.encode_frame(updated)[4:]) == updated


def test_ring_to_dict() -> None:
    advertised = dataclasses.replace(A, app_state={"tokens": [0, TOKEN_SPACE // 2]})
    ring = rpc.ring_to_dict([advertised, B, C], vnodes=8)
    assert (ring["vnodes"], ring["tokens_key"]) == (8, "tokens")
    rows = {m["name"]: m for m in ring["members"]}
    assert set(rows) == {"a", "b"}  # c is dead
    assert (rows["a"]["source"], rows["a"]["tokens"]) == ("advertised", 2)
    assert (rows["b"]["source"], rows["b"]["tokens"]) == ("derived", 8)
    assert sum(m["fraction"] for m in ring["members"]) == pytest.approx(1.0)
    assert all(0 <= t < TOKEN_SPACE for m in ring["members"] for r in m["ranges"] for t in r)
    # Another key: a's tokens are not there, so a gets derived ones.
    assert rpc.ring_to_dict([advertised], tokens_key="other")["members"][0]["source"] == "derived"
    assert rpc.ring_to_dict([C]) == {"vnodes": 100, "tokens_key": "tokens", "members": []}
    with pytest.raises(ValueError):
        rpc.ring_to_dict([A], vnodes=0)


async def test_commands() -> None:
    agent = FakeAgent()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)
            listing = await trio.to_thread.run_sync(rpcclient.members, address)
            assert [m["name"] for m in listing] == ["a", "b"]
            reply = await trio.to_thread.run_sync(rpcclient.call, address, "stats")
            assert reply["stats"] == {"probes": 7, "transport_send_errors": 1}
            await trio.to_thread.run_sync(rpcclient.call, address, "leave")
            assert (agent.left, agent.exit_requested) == (1, True)
            with pytest.raises(rpcclient.RpcError, match="unknown command 'dance'"):
                await trio.to_thread.run_sync(rpcclient.call, address, "dance")
            nursery.cancel_scope.cancel()


async def test_state_commands() -> None:
    agent = FakeAgent()

    async def call(command: str, **args: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(lambda: rpcclient.call(address, command, args))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)
            assert await call("state_set", key="role", value="db") == {
                "ok": True,
                "member": "a",
                "key": "role",
            }
            await call("state_set", key="tokens", value=[1, 2**63])
            await call("state_set", key="raw", value=b"\x00\xff")
            assert agent.store.values("a") == {
                "role": "db",
                "tokens": [1, 2**63],
                "raw": b"\x00\xff",
            }
            got = await call("state_get", key="tokens")
            assert (got["member"], got["found"], got["value"]) == ("a", True, [1, 2**63])
            assert (await call("state_get", key="raw"))["value"] == b"\x00\xff"
            missing = await call("state_get", key="nope", member="b")
            assert (missing["member"], missing["found"], missing["value"]) == ("b", False, None)
            listing = await call("state_list")
            assert listing["state"] == {"role": "db", "tokens": [1, 2**63], "raw": b"\x00\xff"}
            assert (await call("state_list", member="b"))["state"] == {}
            assert (await call("state_delete", key="role"))["deleted"] is True
            assert (await call("state_delete", key="role"))["deleted"] is False
            assert "role" not in (await call("state_list"))["state"]
            # Refusals come back as one-line errors.
            with pytest.raises(rpcclient.RpcError, match="the limit is 4096"):
                await call("state_set", key="big", value="x" * 5000)
            with pytest.raises(rpcclient.RpcError, match="no member named 'zz'"):
                await call("state_get", key="role", member="zz")
            with pytest.raises(rpcclient.RpcError, match="missing argument 'value'"):
                await call("state_set", key="k")
            with pytest.raises(rpcclient.RpcError, match="argument 'key' must be str"):
                await call("state_get", key=3)
            with pytest.raises(rpcclient.RpcError, match="non-empty"):
                await call("state_delete", key="")
            nursery.cancel_scope.cancel()


async def test_ring_command() -> None:
    agent = FakeAgent()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)
            reply = await trio.to_thread.run_sync(rpcclient.call, address, "ring")
            assert [m["name"] for m in reply["members"]] == ["a", "b"]
            assert sum(m["fraction"] for m in reply["members"]) == pytest.approx(1.0)
            assert {m["tokens"] for m in reply["members"]} == {100}
            agent.set_state("slots", [5])
            reply = await trio.to_thread.run_sync(
                lambda: rpcclient.call(address, "ring", {"vnodes": 3, "tokens_key": "slots"})
            )
            rows = {m["name"]: m for m in reply["members"]}
            assert (rows["a"]["source"], rows["a"]["tokens"]) == ("advertised", 1)
            assert rows["b"]["tokens"] == 3
            with pytest.raises(rpcclient.RpcError, match=r"vnodes must be 1\.\.4096"):
                await trio.to_thread.run_sync(
                    lambda: rpcclient.call(address, "ring", {"vnodes": 0})
                )
            nursery.cancel_scope.cancel()


async def test_real_agent_serves_state_and_ring() -> None:
    # The real Agent over a real node on loopback: what the RPC server calls exists.
    config = Config.local("solo", bind=("127.0.0.1", 0))
    with trio.fail_after(WAIT):
        async with open_udp_transport(config.bind) as udp, trio.open_nursery() as nursery:
            node = Node(config, udp)
            await nursery.start(node.run)
            agent = Agent(node, udp, AgentSettings("solo", profile="local"))
            listener = await rpc.open_rpc_listener(("127.0.0.1", 0))
            address = listener.socket.getsockname()[:2]
            nursery.start_soon(rpc.serve_rpc, listener, agent)

            def client() -> None:
                rpcclient.call(address, "state_set", {"key": "zone", "value": "eu-1"})
                assert rpcclient.call(address, "state_get", {"key": "zone"})["value"] == "eu-1"
                [me] = rpcclient.members(address)
                assert me["app_state"] == {"zone": "eu-1"}
                ring = rpcclient.call(address, "ring")
                assert [(m["name"], m["fraction"]) for m in ring["members"]] == [("solo", 1.0)]
                assert rpcclient.call(address, "state_delete", {"key": "zone"})["deleted"] is True
                with pytest.raises(rpcclient.RpcError, match="longer than 128 bytes"):
                    rpcclient.call(address, "state_set", {"key": "k" * 200, "value": 1})

            await trio.to_thread.run_sync(client)
            assert node.local_member.app_state == {}
            nursery.cancel_scope.cancel()


def test_request_too_large_is_refused_before_sending() -> None:
    with pytest.raises(rpcclient.RpcError, match="over the 65536 byte limit"):
        rpcclient.call(("127.0.0.1", 1), "state_set", {"key": "k", "value": "x" * 70000})
    with pytest.raises(rpcclient.RpcError, match="cannot encode"):
        rpcclient.call(("127.0.0.1", 1), "state_set", {"key": "k", "value": object()})


async def test_monitor_streams_snapshot_then_events() -> None:
    agent = FakeAgent()
    frames: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            address = await serving(nursery, agent)

            def consume() -> None:
                for frame in rpcclient.monitor(address):
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
        ("member", "a"),
        ("member", "b"),
        ("failed", "b"),
    ]


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
            assert rpcclient.decode_body(reply[4:])["ok"] is False
            nursery.cancel_scope.cancel()


def test_unreachable_agent_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(rpcclient.RpcError) as info:
        rpcclient.call(("127.0.0.1", port), "members", timeout=2)
    assert str(info.value) == (
        f"cannot reach the agent at 127.0.0.1:{port}: connection "
        "refused (is `swimnode agent` running?)"
    )
