"""Rate-limited links in the simulated networks (`LinkModel.limit_rate`)."""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio.testing

from swimnode.net.transport import Address, Packet
from swimnode.testing import FastCluster, FastSim, Network, SimTransport, open_sim_cluster
from swimnode.testing.aionetwork import AioNetwork, run

A: Address = ("a", 1)
B: Address = ("b", 2)
C: Address = ("c", 3)


async def arrivals(t: SimTransport, window: float = 30.0) -> list[tuple[float, Packet]]:
    """Everything `t` receives within `window` seconds, with arrival times."""
    got: list[tuple[float, Packet]] = []
    with trio.move_on_after(window):
        while True:
            packet = await t.receive()
            got.append((trio.current_time(), packet))
    return got


def quiet_network() -> Network:
    return Network(latency=0.01, jitter=0.0)


async def test_what_an_address_sends_leaves_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(A, 10_000, queue_delay=1.0)
    start = trio.current_time()
    for i in range(3):
        await a.send(B, bytes([i]) * 1000)
    got = await arrivals(b)
    assert [p.data[0] for _, p in got] == [0, 1, 2]
    assert [t - start for t, _ in got] == pytest.approx([0.11, 0.21, 0.31])


async def test_what_an_address_receives_shares_its_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Ten packets arriving together each get a tenth of the rate: all are through
    # together, after the ten packets' time, where one FIFO would space them out.
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(B, 10_000, queue_delay=10.0)
    start = trio.current_time()
    for i in range(10):
        await a.send(B, bytes([i]) * 1000)
    got = await arrivals(b)
    assert len(got) == 10
    assert [t - start for t, _ in got] == pytest.approx([1.01] * 10)


async def test_a_small_packet_is_not_stuck_behind_a_large_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_network()
    a, b, c = net.attach(A), net.attach(B), net.attach(C)
    net.limit_rate(B, 1_000)
    start = trio.current_time()
    await a.send_reliable(B, b"s" * 5_000)
    await trio.sleep(1.0)
    await c.send(B, b"p" * 100)
    got = await arrivals(b)
    assert [p.data[:1] for _, p in got] == [b"p", b"s"]
    # The probe shares the link with the stream: 200 bytes' time for its 100.
    assert got[0][0] - start == pytest.approx(1.21)
    # The stream lost 100 bytes' time to it: 5,100 bytes' time in all.
    assert got[1][0] - start == pytest.approx(5.11)
    assert net.stats.congestion == 0


async def test_a_full_queue_drops_datagrams(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    # 0.5 s at 1,000 bytes/s: 500 bytes may be waiting to arrive.
    net.limit_rate(B, 1_000, queue_delay=0.5)
    for i in range(6):
        await a.send(B, bytes([i]) * 200)
    got = await arrivals(b)
    assert [p.data[0] for _, p in got] == [0, 1, 2]
    assert net.stats.congestion == 3
    assert net.stats.dropped == 3


async def test_a_stream_too_slow_to_arrive_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(B, 1_000, stream_timeout=2.0)
    # Not through in 2 s: lost at the receiver's end; the sender was told it went,
    # as a real one is once its kernel holds the bytes.
    await a.send_reliable(B, b"x" * 3_000)
    assert await arrivals(b, window=5.0) == []
    assert net.stats.congestion == 1


async def test_a_stream_too_slow_to_leave_fails_and_holds_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(A, 1_000, stream_timeout=2.0)
    start = trio.current_time()
    with pytest.raises(TimeoutError):
        await a.send_reliable(B, b"x" * 2_500)
    assert net.stats.congestion == 1
    # The failed send used the link until its timeout, 2 s after it began.
    await trio.sleep(1.5)
    await a.send_reliable(B, b"y" * 1_000)
    ((at, packet),) = await arrivals(b)
    assert packet.data == b"y" * 1_000
    assert at - start == pytest.approx(3.01)


async def test_a_stream_that_fits_arrives_whole(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(B, 1_000, stream_timeout=2.0)
    start = trio.current_time()
    await a.send_reliable(B, b"x" * 1_500)
    ((at, packet),) = await arrivals(b)
    assert packet == Packet(A, b"x" * 1_500, True)
    assert at - start == pytest.approx(1.51)


async def test_removing_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_network()
    a, b = net.attach(A), net.attach(B)
    net.limit_rate(B, 100)
    net.limit_rate(B, None)
    start = trio.current_time()
    await a.send(B, b"x" * 1_000)
    ((at, _),) = await arrivals(b)
    assert at - start == pytest.approx(0.01)


def test_bad_limits_are_refused() -> None:
    net = Network()
    for rate in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            net.limit_rate(A, rate)
    with pytest.raises(ValueError, match="queue_delay"):
        net.limit_rate(A, 1_000, queue_delay=-1.0)
    with pytest.raises(ValueError, match="stream_timeout"):
        net.limit_rate(A, 1_000, stream_timeout=float("inf"))


def test_the_asyncio_network_shares_the_link_the_same_way() -> None:
    async def main() -> list[float]:
        net = AioNetwork(latency=0.01, jitter=0.0)
        a, b = net.attach(A), net.attach(B)
        net.limit_rate(B, 10_000, queue_delay=10.0)
        loop = asyncio.get_running_loop()
        got: list[float] = []
        b.start(lambda packet: got.append(loop.time()))
        start = loop.time()
        for i in range(10):
            a.send(B, bytes([i]) * 1000)
        await asyncio.sleep(5.0)
        return [t - start for t in got]

    assert run(main()) == pytest.approx([1.01] * 10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_state_bursts_cross_a_slow_link(seed: int) -> None:
    """Bulk state pushed at a host behind a 64 kbit/s link arrives, burst after
    burst. Without the flow control of state rounds (docs/gossip.md §3) every peer
    pushed the same bulk at it each round, the pushes shared the link, none was
    through within the stream timeout, and no burst arrived (0 of 15 in this
    setting over seeds 1 to 3)."""
    sim = FastSim(seed)
    cluster = FastCluster(8, seed=seed, sim=sim)
    assert cluster.wait_for(cluster.converged, timeout=30) is not None
    slow = cluster.address_of("n7")
    sim.limit_rate(slow, 8_000)
    sim.run_for(5)
    for burst in range(3):
        # Two keys of 2 kB per member: 32 kB of state, 4 s of the slow link.
        values = {f"s{i}": f"{burst}/{i}" + "x" * 2_040 for i in (0, 1)}
        for name in cluster.names:
            for key, value in values.items():
                cluster.set_state(name, key, value)

        took = cluster.wait_for(cluster.state_converged, timeout=35, step=0.1)
        assert took is not None, f"burst {burst} did not reach every member"
        # Not quicker than the link allows (the slow host's own 4 kB is already there).
        assert took > 28_000 / 8_000
        sim.run_for(35 - took)
    assert sim.stats.congestion < 100


async def test_a_crash_forgets_what_was_crossing(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_network()
    a = net.attach(A)
    net.attach(B)
    net.limit_rate(B, 1_000)
    await a.send(B, b"x" * 400)
    await a.send_reliable(B, b"y" * 4_000)
    assert len(net._crossings) == 2
    net.crash(B)
    assert net._crossings == {}
    assert net.stats.unreachable == 2


async def test_a_trio_cluster_spreads_state_across_a_slow_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same through the Trio driver and `Network`: stream sends that time out
    on the slow link raise in the sender's task, the rest arrive."""
    async with open_sim_cluster(8, seed=5) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        cluster.network.limit_rate(cluster.address_of("n7"), 8_000)
        await trio.sleep(5)
        for burst in range(2):
            values = {f"s{i}": f"{burst}/{i}" + "x" * 2_040 for i in (0, 1)}
            for node in cluster.nodes.values():
                for key, value in values.items():
                    node.set_state(key, value)
            took = await cluster.wait_for(cluster.state_converged, timeout=35, step=0.1)
            assert took is not None, f"burst {burst} did not reach every member"
            assert took > 28_000 / 8_000
            await trio.sleep(35 - took)
