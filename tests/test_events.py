"""Event fan-out with bounded per-subscriber buffers."""

from __future__ import annotations

import trio
import trio.testing

from swimnode.eventhub import EventHub, EventStream
from swimnode.protocol.events import Event, EventsLost, MemberFailed, MemberJoined
from swimnode.protocol.member import Member, MemberState


def ev(i: int) -> MemberJoined:
    return MemberJoined(Member(f"m{i}", ("h", i), 0, MemberState.ALIVE, float(i)))


async def take(stream: EventStream, n: int) -> list[Event]:
    out: list[Event] = []
    with trio.fail_after(1):
        for _ in range(n):
            out.append(await stream.__anext__())
    return out


async def drain(stream: EventStream) -> list[Event]:
    out: list[Event] = []
    with trio.fail_after(1):
        async for e in stream:
            out.append(e)
    return out


async def test_events_arrive_in_order() -> None:
    hub = EventHub(16)
    sub = hub.subscribe()
    events = [ev(i) for i in range(5)] + [MemberFailed(ev(9).member)]
    for e in events:
        hub.publish(e)
    hub.close()
    assert await drain(sub) == events


async def test_slow_subscriber_gets_gap() -> None:
    hub = EventHub(3)
    sub = hub.subscribe()
    for i in range(10):
        hub.publish(ev(i))
    assert await take(sub, 4) == [ev(0), ev(1), ev(2), EventsLost(7)]
    hub.publish(ev(10))
    hub.publish(ev(11))
    assert await take(sub, 2) == [ev(10), ev(11)]
    hub.close()
    assert await drain(sub) == []


async def test_gap_keeps_its_place_while_partly_drained() -> None:
    hub = EventHub(3)
    sub = hub.subscribe()
    for i in range(5):
        hub.publish(ev(i))  # e0 e1 e2 [gap 2]
    assert await take(sub, 1) == [ev(0)]
    hub.publish(ev(5))  # buffer full again (3 entries): joins the gap
    assert await take(sub, 3) == [ev(1), ev(2), EventsLost(3)]
    hub.publish(ev(6))
    hub.close()
    assert await drain(sub) == [ev(6)]


async def test_subscribers_are_independent() -> None:
    hub = EventHub(3)
    fast, slow = hub.subscribe(), hub.subscribe()
    hub.publish(ev(0))
    hub.publish(ev(1))
    assert await take(fast, 2) == [ev(0), ev(1)]
    for i in range(2, 5):
        hub.publish(ev(i))
    assert await take(fast, 3) == [ev(2), ev(3), ev(4)]
    hub.close()
    assert await drain(fast) == []
    assert await drain(slow) == [ev(0), ev(1), ev(2), EventsLost(2)]


async def test_late_subscriber_sees_only_later_events() -> None:
    hub = EventHub(8)
    hub.publish(ev(0))
    sub = hub.subscribe()
    hub.publish(ev(1))
    hub.close()
    assert await drain(sub) == [ev(1)]


async def test_close_ends_iteration_after_draining() -> None:
    hub = EventHub(8)
    sub = hub.subscribe()
    hub.publish(ev(0))
    hub.publish(ev(1))
    hub.close()
    assert hub.closed
    assert await drain(sub) == [ev(0), ev(1)]
    assert await drain(sub) == []


async def test_waiting_subscriber_woken_by_publish_and_close() -> None:
    hub = EventHub(8)
    sub = hub.subscribe()
    got: list[Event] = []
    finished = trio.Event()

    async def reader() -> None:
        async for e in sub:
            got.append(e)
        finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        hub.publish(ev(0))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [ev(0)]
        assert not finished.is_set()
        hub.close()
        with trio.fail_after(1):
            await finished.wait()
    assert got == [ev(0)]


async def test_stream_close_unsubscribes() -> None:
    hub = EventHub(8)
    sub, other = hub.subscribe(), hub.subscribe()
    hub.publish(ev(0))
    sub.close()
    hub.publish(ev(1))
    assert await drain(sub) == [ev(0)]  # what was buffered, then the end
    hub.close()
    assert await drain(other) == [ev(0), ev(1)]


def test_event_kinds() -> None:
    assert ev(0).kind == "joined"
    assert EventsLost(3).kind == "events_lost"
    assert EventsLost(3) == EventsLost(3) != EventsLost(4)
