"""User events: the wire format, the core's Lamport clock, deduplication and limits,
and delivery to every member once on the simulated network (MockClock)."""

from __future__ import annotations

import json
import random

import msgpack
import pytest
import trio
import trio.testing

from swimnode import counters
from swimnode.agent.cli import render_monitor_frame
from swimnode.agent.rpc import event_to_dict
from swimnode.eventhub import EventStream
from swimnode.net.transport import Address
from swimnode.protocol import codec
from swimnode.protocol.config import Config
from swimnode.protocol.core import SwimCore
from swimnode.protocol.events import Event, UserEvent
from swimnode.protocol.member import Member, MemberState
from swimnode.protocol.messages import MemberRecord, Sync, UserEventMessage
from swimnode.protocol.userevents import EVENT_WINDOW, RATE_LIMIT
from swimnode.testing import Network, open_sim_cluster

SOURCE = ("127.0.0.1", 9000)


def core(name: str = "a") -> SwimCore:
    return SwimCore(Config.local(name, bind=("127.0.0.1", 7946)), now=0.0, rng=random.Random(1))


def message(ltime: int, name: str = "deploy", payload: bytes = b"v1") -> UserEventMessage:
    return UserEventMessage(ltime, "b", ("127.0.0.1", 7947), name, payload, True)


def packet(*messages: UserEventMessage) -> bytes:
    return codec.encode_packet([codec.encode_message(m) for m in messages])


def delivered(c: SwimCore) -> list[UserEvent]:
    return [e for e in c.take_output().events if isinstance(e, UserEvent)]


def test_codec_round_trip_and_limits() -> None:
    m = message(7, "deploy", b"\x00" * codec.MAX_EVENT_PAYLOAD)
    [decoded] = codec.decode_packet(packet(m))
    assert decoded == m
    for bad in (message(1, "x" * 65), message(1, ""), message(1, payload=b"x" * 513)):
        with pytest.raises(codec.DecodeError):
            codec.decode_packet(packet(bad))


def test_sender_delivers_once_and_ticks_its_clock() -> None:
    c = core()
    assert c.send_event("deploy", b"v1", True, 0.0) == 0
    assert c.send_event("deploy", b"v1", True, 0.0) == 1
    events = delivered(c)
    assert [(e.name, e.payload, e.ltime, e.member.name) for e in events] == [
        ("deploy", b"v1", 0, "a"),
        ("deploy", b"v1", 1, "a"),
    ]
    assert c.stats[counters.USER_EVENTS_SENT] == 2


def test_copies_are_delivered_once_and_the_clock_witnesses() -> None:
    c = core()
    c.handle_packet(0.0, SOURCE, packet(message(40)))
    c.handle_packet(0.1, SOURCE, packet(message(40), message(40, payload=b"v2")))
    events = delivered(c)
    assert [(e.ltime, e.payload, e.member.name) for e in events] == [
        (40, b"v1", "b"),
        (40, b"v2", "b"),
    ]
    assert c.stats[counters.USER_EVENTS_DUPLICATE] == 1
    # Lamport: what we send now comes after what we saw.
    assert c.send_event("next", b"", False, 1.0) == 41


def test_events_older_than_the_window_are_dropped() -> None:
    c = core()
    c.handle_packet(0.0, SOURCE, packet(message(EVENT_WINDOW + 100)))
    c.handle_packet(0.0, SOURCE, packet(message(50)))  # far behind the clock now
    assert [e.ltime for e in delivered(c)] == [EVENT_WINDOW + 100]
    assert c.stats[counters.USER_EVENTS_TOO_OLD] == 1


def test_size_and_rate_limits() -> None:
    c = core()
    with pytest.raises(ValueError, match="payload is 513 bytes; the limit is 512"):
        c.send_event("x", b"x" * 513, True, 0.0)
    with pytest.raises(ValueError, match=r"name must be 1\.\.64 bytes"):
        c.send_event("", b"", True, 0.0)
    for i in range(RATE_LIMIT):
        c.send_event(f"e{i}", b"", True, 0.5)
    with pytest.raises(ValueError, match=r"at most 10 user events per 1 s; try again in 1.00 s"):
        c.send_event("more", b"", True, 0.5)
    c.send_event("later", b"", True, 1.6)  # the window has passed
    assert c.stats[counters.USER_EVENTS_SENT] == RATE_LIMIT + 1


def drain(stream: EventStream) -> list[Event]:
    out = []
    while (event := stream.receive_nowait()) is not None:
        out.append(event)
    return out


async def test_every_member_gets_each_event_once_despite_loss(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(8, seed=11, network=Network(seed=11, loss=0.2)) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60) is not None
        streams = {name: node.events() for name, node in cluster.nodes.items()}
        first = cluster.nodes["n2"].send_event("deploy", b"v1")
        second = cluster.nodes["n5"].send_event("restart", b"", coalesce=False)
        await trio.sleep(30)
        for name, stream in streams.items():
            got = sorted(
                (e.member.name, e.name, e.payload, e.coalesce)
                for e in drain(stream)
                if isinstance(e, UserEvent)
            )
            assert got == [("n2", "deploy", b"v1", True), ("n5", "restart", b"", False)], name
        assert (first, second) == (0, 0)  # neither had seen the other's yet


EVENT_TAG = codec.message_tag(codec.encode_message(message(0)))
B_RECORD = MemberRecord("b", ("127.0.0.1", 7947), 0, MemberState.ALIVE)


def sync(*events: UserEventMessage, reply: bool = False, join: bool = False) -> bytes:
    return packet_of(Sync(reply, join, (B_RECORD,), events))


def packet_of(message: Sync) -> bytes:
    return codec.encode_packet([codec.encode_message(message)])


def test_sync_carries_events_only_when_there_are_some() -> None:
    # Without events a sync has its four fields, as before events rode on it.
    assert len(msgpack.unpackb(codec.encode_message(Sync(False, False, (B_RECORD,))))) == 4
    full = Sync(True, False, (B_RECORD,), tuple(message(t) for t in range(codec.MAX_SYNC_EVENTS)))
    assert codec.decode_packet(packet_of(full)) == [full]
    too_many = Sync(False, False, (), tuple(message(t) for t in range(codec.MAX_SYNC_EVENTS + 1)))
    with pytest.raises(codec.DecodeError):
        codec.decode_packet(packet_of(too_many))
    not_an_event = codec.encode_packet(
        [msgpack.packb([9, False, False, [], [[5, "b", "127.0.0.1", 1, 0]]])]
    )
    with pytest.raises(codec.DecodeError):
        codec.decode_packet(not_an_event)


def test_a_sync_delivers_missed_events_once_but_not_on_the_first_join() -> None:
    c = core()
    # The answer to our first join: events from before we were a member are
    # recorded (the clock moves past them) but not delivered.
    c.handle_packet(0.0, SOURCE, sync(message(40), reply=True, join=True), reliable=True)
    assert delivered(c) == []
    assert c.send_event("mine", b"", False, 0.0) == 41
    delivered(c)
    # A later push-pull delivers what we had missed, once, and not what we had.
    c.handle_packet(1.0, SOURCE, sync(message(40), message(42), message(42)), reliable=True)
    assert [(e.ltime, e.name) for e in delivered(c)] == [(42, "deploy")]
    c.handle_packet(2.0, SOURCE, sync(message(42)), reliable=True)
    assert delivered(c) == []
    assert c.stats[counters.USER_EVENTS_DUPLICATE] == 3


def test_push_pull_carries_the_recent_events() -> None:
    c = core()
    for t in range(codec.MAX_SYNC_EVENTS + 3):
        c.handle_packet(0.0, SOURCE, packet(message(t, payload=b"%d" % t)))
    c.take_output()
    c.handle_packet(1.0, SOURCE, sync(), reliable=True)  # a push: we answer in kind
    [(_, dest, data)] = c.take_output().streams
    [answer] = codec.decode_packet(data)
    assert isinstance(answer, Sync) and answer.reply and dest == B_RECORD.address
    # The latest ones, oldest first, bounded.
    assert [e.ltime for e in answer.events] == list(range(3, codec.MAX_SYNC_EVENTS + 3))


def test_event_digest_depends_on_the_events_not_their_order() -> None:
    events = [message(t, payload=b"%d" % t) for t in range(codec.MAX_SYNC_EVENTS + 5)]
    a, b, c = core("a"), core("b"), core("c")
    assert a.user_events.digest() == 0
    for event in events:
        a.handle_packet(0.0, SOURCE, packet(event))
    for event in reversed(events):
        b.handle_packet(0.0, SOURCE, packet(event))
    # Both keep the latest by Lamport time, whatever came first.
    assert a.user_events.recent() == b.user_events.recent() == tuple(events[5:])
    assert a.user_events.digest() == b.user_events.digest() != 0
    # Events recorded from the answer to a first join count too, so a newcomer's
    # state rounds do not find a difference that delivering would not fix.
    c.handle_packet(0.0, SOURCE, sync(*events[5:], reply=True, join=True), reliable=True)
    assert delivered(c) == []
    assert c.user_events.digest() == a.user_events.digest()
    # What state rounds carry covers the events.
    assert c.members_fingerprint() == c.membership.fingerprint() ^ c.user_events.digest()
    b.handle_packet(1.0, SOURCE, packet(message(999)))
    assert b.user_events.digest() != a.user_events.digest()


async def test_a_member_that_missed_every_copy_gets_the_event_at_a_sync(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=5)
    async with open_sim_cluster(6, seed=5, network=net) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60) is not None
        deaf = cluster.address_of("n3")

        def user_events_to_n3(source: Address, dest: Address, data: bytes) -> bool:
            return dest == deaf and any(
                codec.message_tag(part) == EVENT_TAG for part in codec.split_packet(data)
            )

        net.drop_datagrams(user_events_to_n3)
        streams = {name: node.events() for name, node in cluster.nodes.items()}
        cluster.nodes["n1"].send_event("deploy", b"v1")
        await trio.sleep(30)
        # Gossip and the sender's direct copies were all lost on the way to n3 (every
        # datagram to it that carried the event), so its copy came in a sync: a state
        # round found that its recent events differed, and a push-pull followed.
        assert net.stats.filtered > 0
        for name, stream in streams.items():
            got = [(e.member.name, e.name) for e in drain(stream) if isinstance(e, UserEvent)]
            assert got == [("n1", "deploy")], name
        assert cluster.nodes["n3"].stats()[counters.USER_EVENTS_RECEIVED] == 1


def test_rpc_and_monitor_shapes() -> None:
    sender = Member("n1", ("127.0.0.1", 7947), 0, MemberState.ALIVE, 0.0)
    frame = event_to_dict(UserEvent(sender, "deploy", b"v1.2", 7))
    assert frame["event"] == "user" and frame["member"]["name"] == "n1"
    assert (frame["name"], frame["payload"], frame["ltime"], frame["coalesce"]) == (
        "deploy",
        b"v1.2",
        7,
        True,
    )
    assert render_monitor_frame(frame, as_json=False) == (
        "user      deploy from n1 (Lamport time 7) v1.2"
    )
    assert json.loads(render_monitor_frame(dict(frame, payload=b"\xff"), as_json=True)) == {
        "event": "user",
        "name": "deploy",
        "ltime": 7,
        "coalesce": True,
        "sender": "n1",
        "payload": {"$base64": "/w=="},
    }
