"""Tests for the in-memory simulated network."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from swimnode.net.transport import Address, Packet, Transport
from swimnode.testing import Network, SimTransport

A: Address = ("a", 1)
B: Address = ("b", 2)
C: Address = ("c", 3)


async def drain(t: SimTransport, window: float = 1.0) -> list[tuple[float, Packet]]:
    """Everything `t` receives within `window` seconds, with arrival times."""
    got: list[tuple[float, Packet]] = []
    with trio.move_on_after(window):
        while True:
            packet = await t.receive()
            got.append((trio.current_time(), packet))
    return got


async def drain_all(*ts: SimTransport, window: float = 1.0) -> list[list[tuple[float, Packet]]]:
    """`drain` several transports concurrently, so arrival times stay exact."""
    results: list[list[tuple[float, Packet]]] = [[] for _ in ts]

    async def one(i: int) -> None:
        results[i] = await drain(ts[i], window)

    async with trio.open_nursery() as nursery:
        for i in range(len(ts)):
            nursery.start_soon(one, i)
    return results


def as_transport(t: SimTransport) -> Transport:
    # mypy checks here that SimTransport satisfies the Transport protocol.
    return t


async def test_latency_and_packet_fields(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.01, jitter=0.0)
    a, b = as_transport(net.attach(A)), net.attach(B)
    start = trio.current_time()
    await a.send(B, b"hello")
    packet = await b.receive()
    assert packet == Packet(A, b"hello", False)
    assert trio.current_time() - start == pytest.approx(0.01)
    assert net.stats.sent == 1 and net.stats.delivered == 1 and net.stats.bytes_sent == 5
    assert net.sent_by(A) == (1, 5)
    assert net.sent_by(B) == (0, 0)


async def test_jitter_bounds(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.01, jitter=0.005)
    a, b = net.attach(A), net.attach(B)
    start = trio.current_time()
    for i in range(50):
        await a.send(B, bytes([i]))
    got = await drain(b)
    assert len(got) == 50
    delays = [t - start for t, _ in got]
    assert all(0.01 <= d <= 0.015 + 1e-9 for d in delays)
    assert len(set(delays)) > 1


async def test_fifo_without_jitter(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.002, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    for i in range(100):
        await a.send(B, i.to_bytes(2, "big"))
    got = await drain(b)
    assert [int.from_bytes(p.data, "big") for _, p in got] == list(range(100))


async def test_reorder_happens(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(seed=3, latency=0.01, jitter=0.0, reorder=0.5)
    a, b = net.attach(A), net.attach(B)
    for i in range(200):
        await a.send(B, i.to_bytes(2, "big"))
        await trio.sleep(0.001)
    got = [int.from_bytes(p.data, "big") for _, p in await drain(b)]
    assert sorted(got) == list(range(200))
    assert got != list(range(200))


async def test_loss_rate(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(seed=7, loss=0.25)
    a, b = net.attach(A), net.attach(B)
    for i in range(2000):
        await a.send(B, i.to_bytes(2, "big"))
    got = await drain(b)
    assert len(got) + net.stats.loss == 2000
    assert 0.21 < net.stats.loss / 2000 < 0.29
    assert net.stats.delivered == len(got)


async def test_link_loss_override_wins(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(loss=1.0)
    a, b, c = net.attach(A), net.attach(B), net.attach(C)
    net.set_link(A, B, loss=0.0, latency=0.05, jitter=0.0)
    start = trio.current_time()
    await a.send(B, b"through")
    await a.send(C, b"lost")
    await b.send(A, b"back")
    [(t, p)] = await drain(b, 0.5)
    assert p.data == b"through" and t - start == pytest.approx(0.05)
    assert [p.data for _, p in await drain(a, 0.1)] == [b"back"]
    assert await drain(c, 0.1) == []
    net.clear_links()
    await a.send(B, b"gone")
    assert await drain(b, 0.1) == []
    assert net.stats.loss == 2


async def test_one_way_link(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.001, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    net.set_link(A, B, latency=0.5, symmetric=False)
    start = trio.current_time()
    await a.send(B, b"x")
    await b.send(A, b"y")
    [(ta, _)], [(tb, _)] = await drain_all(a, b)
    assert ta - start == pytest.approx(0.001)
    assert tb - start == pytest.approx(0.5)


async def test_duplication(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1, duplicate=0.3)
    a, b = net.attach(A), net.attach(B)
    for i in range(2000):
        await a.send(B, i.to_bytes(2, "big"))
    got = await drain(b)
    assert len(got) == 2000 + net.stats.duplicated
    assert 0.25 < net.stats.duplicated / 2000 < 0.35
    assert {int.from_bytes(p.data, "big") for _, p in got} == set(range(2000))
    assert net.stats.sent == 2000


async def test_symmetric_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    net = Network()
    a, b, c = net.attach(A), net.attach(B), net.attach(C)
    net.partition([A], [B, C])
    await a.send(B, b"1")
    await b.send(A, b"2")
    await c.send(A, b"3")
    await b.send(C, b"same side")
    assert await drain(a, 0.1) == []
    assert await drain(b, 0.1) == []
    assert [p.data for _, p in await drain(c, 0.1)] == [b"same side"]
    assert net.stats.partition == 3
    assert net.is_blocked(A, B) and net.is_blocked(B, A) and not net.is_blocked(B, C)
    net.heal()
    await a.send(B, b"4")
    await b.send(A, b"5")
    assert [p.data for _, p in await drain(b, 0.1)] == [b"4"]
    assert [p.data for _, p in await drain(a, 0.1)] == [b"5"]


async def test_one_way_partition(autojump_clock: trio.testing.MockClock) -> None:
    net = Network()
    a, b = net.attach(A), net.attach(B)
    net.partition([A], [B], one_way=True)
    await a.send(B, b"blocked")
    await b.send(A, b"allowed")
    assert await drain(b, 0.1) == []
    assert [p.data for _, p in await drain(a, 0.1)] == [b"allowed"]
    with pytest.raises(ConnectionRefusedError):
        await a.send_reliable(B, b"x")
    await b.send_reliable(A, b"y")
    assert [p for _, p in await drain(a, 0.1)] == [Packet(B, b"y", True)]
    net.heal()
    await a.send(B, b"now")
    assert [p.data for _, p in await drain(b, 0.1)] == [b"now"]


async def test_in_flight_dropped_when_partition_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(latency=0.1, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    await a.send(B, b"in flight")
    await a.send_reliable(B, b"stream in flight")
    await trio.sleep(0.05)
    net.partition([A], [B])
    assert await drain(b, 0.2) == []
    assert net.stats.partition == 2
    assert b.pending == 0


async def test_pause_holds_both_directions(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.01, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    net.pause(B)
    assert net.is_paused(B)
    await a.send(B, b"to paused")
    await b.send(A, b"from paused")
    assert await drain_all(a, b) == [[], []]
    assert b.pending == 1
    resumed_at = trio.current_time()
    net.resume(B)
    assert not net.is_paused(B)
    [(ta, pa)], [(tb, pb)] = await drain_all(a, b)
    assert pb.data == b"to paused" and tb == pytest.approx(resumed_at)
    assert pa.data == b"from paused" and ta - resumed_at == pytest.approx(0.01)
    assert net.stats.sent == 2 and net.stats.delivered == 2


async def test_pause_blocks_reliable_send_and_holds_reliable_receive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(latency=0.01, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    net.pause(B)
    await a.send_reliable(B, b"to paused")  # held at B, no error
    done: list[float] = []

    async def reliable_from_paused() -> None:
        await b.send_reliable(A, b"from paused")
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reliable_from_paused)
        await trio.sleep(1.0)
        assert done == []
        assert b.pending == 1
        net.resume(B)
    assert done == [pytest.approx(1.0)]
    assert [p for _, p in await drain(b, 0.1)] == [Packet(A, b"to paused", True)]
    assert [p for _, p in await drain(a, 0.1)] == [Packet(B, b"from paused", True)]


async def test_pause_before_attach(autojump_clock: trio.testing.MockClock) -> None:
    net = Network()
    net.pause(B)
    a, b = net.attach(A), net.attach(B)
    await a.send(B, b"x")
    assert await drain(b, 0.1) == []
    net.resume(B)
    assert len(await drain(b, 0.1)) == 1


async def test_slow_node(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.01, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    net.set_slow(B, 0.3)
    start = trio.current_time()
    await a.send(B, b"slow")
    await b.send(A, b"not slow")
    [(ta, _)], [(tb, _)] = await drain_all(a, b)
    assert tb - start == pytest.approx(0.31)
    assert ta - start == pytest.approx(0.01)
    net.set_slow(B, 0)
    start = trio.current_time()
    await a.send(B, b"fast")
    ((tb, _),) = await drain(b)
    assert tb - start == pytest.approx(0.01)


async def test_overflow(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(queue_limit=5, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    for i in range(8):
        await a.send(B, bytes([i]))
    with pytest.raises(OSError):
        await a.send_reliable(B, b"full")
    assert net.stats.overflow == 4
    assert [p.data for _, p in await drain(b)] == [bytes([i]) for i in range(5)]


async def test_oversize(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(max_datagram=100)
    a, b = net.attach(A), net.attach(B)
    await a.send(B, b"x" * 101)
    await a.send(B, b"y" * 100)
    await a.send_reliable(B, b"z" * 5000)
    got = [p for _, p in await drain(b)]
    assert got == [Packet(A, b"y" * 100, False), Packet(A, b"z" * 5000, True)]
    assert net.stats.oversize == 1
    assert net.sent_by(A) == (3, 5201)


async def test_reliable_is_never_lost_or_reordered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=5, loss=1.0, duplicate=1.0, reorder=1.0, jitter=0.01)
    a, b = net.attach(A), net.attach(B)
    for i in range(100):
        await a.send_reliable(B, bytes([i]))
    got = [p for _, p in await drain(b)]
    assert got == [Packet(A, bytes([i]), True) for i in range(100)]


async def test_reliable_errors(autojump_clock: trio.testing.MockClock) -> None:
    net = Network()
    a, b = net.attach(A), net.attach(B)
    with pytest.raises(ConnectionRefusedError):
        await a.send_reliable(C, b"nobody")
    net.partition([A, C], [B])
    with pytest.raises(OSError):
        await a.send_reliable(B, b"walled off")
    net.heal()
    await a.send_reliable(B, b"ok")
    assert [p.data for _, p in await drain(b)] == [b"ok"]
    await b.aclose()
    with pytest.raises(ConnectionRefusedError):
        await a.send_reliable(B, b"closed")
    assert net.stats.unreachable == 2 and net.stats.partition == 1


async def test_attach_close_and_crash(autojump_clock: trio.testing.MockClock) -> None:
    net = Network()
    a = net.attach(A)
    with pytest.raises(ValueError, match="already attached"):
        net.attach(A)
    await a.send(B, b"nobody home")
    assert net.stats.unreachable == 1
    b = net.attach(B)
    await a.send(B, b"queued")
    await a.send(B, b"queued")
    failed = trio.Event()

    async def waiting_receiver() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await b.receive()
        failed.set()

    async with trio.open_nursery() as nursery:
        net.pause(B)
        nursery.start_soon(waiting_receiver)
        await trio.sleep(0.1)
        net.crash(B)
        await failed.wait()
    assert b.closed and not net.is_attached(B)
    assert net.stats.unreachable == 3
    with pytest.raises(trio.ClosedResourceError):
        await b.send(A, b"dead")
    b2 = net.attach(B)
    assert not net.is_paused(B)
    await a.send(B, b"reborn")
    assert [p.data for _, p in await drain(b2)] == [b"reborn"]
    await a.aclose()
    await a.aclose()
    assert net.addresses == [B]


async def test_no_lost_wakeup(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(latency=0.001, jitter=0.0)
    a, b, c = net.attach(A), net.attach(B), net.attach(C)
    net.set_link(A, B, latency=10.0)
    start = trio.current_time()
    await a.send(B, b"late")
    arrivals: list[tuple[float, bytes]] = []

    async def receiver() -> None:
        for _ in range(2):
            packet = await b.receive()
            arrivals.append((trio.current_time() - start, packet.data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.sleep(1.0)  # receiver is now asleep waiting for t=10
        await c.send(B, b"early")
    assert [data for _, data in arrivals] == [b"early", b"late"]
    assert [t for t, _ in arrivals] == pytest.approx([1.001, 10.0])


async def test_receive_cancellation_keeps_packets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(latency=0.5, jitter=0.0)
    a, b = net.attach(A), net.attach(B)
    await a.send(B, b"x")
    with trio.move_on_after(0.1):
        await b.receive()
    assert b.pending == 1
    assert (await b.receive()).data == b"x"


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        Network(loss=1.5)
    with pytest.raises(ValueError):
        Network(latency=-1.0)
    with pytest.raises(ValueError):
        Network().set_slow(A, float("inf"))


Trace = list[tuple[float, Address, Address, bytes]]


async def scripted_scenario(seed: int) -> Trace:
    net = Network(seed=seed, latency=0.005, jitter=0.004, loss=0.1, duplicate=0.05, reorder=0.1)
    addrs: list[Address] = [(f"n{i}", 7000 + i) for i in range(6)]
    transports = [net.attach(addr) for addr in addrs]
    trace: Trace = []

    async def sender(index: int) -> None:
        choose = random.Random(index)  # workload only; the network draws its own
        me = transports[index]
        for n in range(60):
            peer = addrs[choose.randrange(len(addrs))]
            await me.send(peer, f"{index}:{n}".encode())
            await trio.sleep(0.01)

    async def receiver(t: SimTransport) -> None:
        while True:
            packet = await t.receive()
            trace.append((trio.current_time(), t.local_address, packet.source, packet.data))

    async with trio.open_nursery() as nursery:
        for t in transports:
            nursery.start_soon(receiver, t)
        for i in range(len(addrs)):
            nursery.start_soon(sender, i)
        await trio.sleep(0.2)
        net.partition(addrs[:3], addrs[3:])
        await trio.sleep(0.1)
        net.pause(addrs[0])
        net.set_slow(addrs[1], 0.02)
        await trio.sleep(0.1)
        net.heal()
        net.resume(addrs[0])
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    # Different receivers at the very same instant may run in either order;
    # a stable sort keeps each receiver's own order, which must match exactly.
    trace.sort(key=lambda entry: (entry[0], entry[1]))
    return trace


def run_scenario(seed: int) -> Trace:
    return trio.run(scripted_scenario, seed, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_trace() -> None:
    first = run_scenario(42)
    second = run_scenario(42)
    assert len(first) > 100
    assert first == second
    assert run_scenario(43) != first
