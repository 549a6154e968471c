"""Joining: the newcomer's direct announcement (docs/protocol.md §8.1), under MockClock
on the in-memory network."""

from typing import Any

import trio
import trio.testing

from swimnode import MemberState
from swimnode.net.transport import Address
from swimnode.protocol.codec import decode_packet
from swimnode.protocol.messages import Alive
from swimnode.testing import Network, open_sim_cluster

ALIVE = MemberState.ALIVE

STAGGER = 0.01


async def _storm(n: int, seed: int, **overrides: Any) -> tuple[float, dict[str, int]]:
    """`n` nodes (lan profile) joining 10 ms apart through n0: seconds from the last
    start until every node lists all `n` alive, and each node's join announcements."""
    last_start = trio.current_time() + (n - 1) * STAGGER
    async with open_sim_cluster(n, seed=seed, stagger=STAGGER, **overrides) as cluster:
        took = await cluster.wait_for(cluster.converged, timeout=120, step=0.005)
        assert took is not None
        took = trio.current_time() - last_start
        announced = {
            name: node.stats().get("join_announcements", 0) for name, node in cluster.nodes.items()
        }
    return took, announced


async def test_join_storm_converges_within_round_trips(mock_clock: trio.testing.MockClock) -> None:
    took, announced = await _storm(10, seed=3)
    # A join round trip and one datagram to each member: a few ms of simulated
    # latency, far below a gossip round (200 ms).
    assert took < 0.02
    # Each newcomer tells everyone the seed's reply listed, except the seed itself;
    # the seed joined nobody.
    assert announced["n0"] == 0
    assert sum(announced.values()) > 0
    assert all(
        count <= i - 1
        for i, count in (
            (int(name[1:]), count) for name, count in announced.items() if name != "n0"
        )
    )


async def test_without_the_announcement_the_storm_waits_for_gossip(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The same storm with the announcement off: the mechanism, not luck, made the
    previous test fast."""
    took, announced = await _storm(10, seed=3, join_announce_nodes=0)
    assert took > 0.05
    assert sum(announced.values()) == 0


async def test_announcement_is_capped(mock_clock: trio.testing.MockClock) -> None:
    took, announced = await _storm(12, seed=4, join_announce_nodes=2)
    assert max(announced.values()) == 2
    assert took < 60


async def test_member_that_missed_a_join_catches_up_within_seconds(
    mock_clock: trio.testing.MockClock,
) -> None:
    """n5 loses every datagram that carries news of n30, so gossip never tells it;
    the membership fingerprint in quiet anti-entropy rounds (docs/protocol.md §6.3)
    must find it long before its next push-pull (30 s period)."""
    net = Network(seed=2)
    async with open_sim_cluster(30, seed=2, network=net, stagger=STAGGER) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60) is not None
        await trio.sleep(60)  # the founders' join news has run out
        straggler = cluster.address_of("n5")

        def news_of_n30_to_n5(source: Address, dest: Address, data: bytes) -> bool:
            return dest == straggler and any(
                isinstance(m, Alive) and m.name == "n30" for m in decode_packet(data)
            )

        net.drop_datagrams(news_of_n30_to_n5)
        before = {
            name: node.stats().get("membership_mismatches", 0)
            for name, node in cluster.nodes.items()
        }
        started = trio.current_time()
        await cluster.start("n30")
        others = [n for n in cluster.nodes if n not in ("n5", "n30")]
        assert (
            await cluster.wait_for(
                lambda: all(cluster.view(o).get("n30") is ALIVE for o in others), timeout=10
            )
            is not None
        )
        assert "n30" not in cluster.view("n5")  # gossip alone did not reach it
        took = await cluster.wait_for(
            lambda: cluster.view("n5").get("n30") is ALIVE, timeout=60, step=0.1
        )
        assert took is not None
        assert trio.current_time() - started < 10
        assert net.stats.filtered > 0
        # Found by a quiet round between ordinary members, not by a seed contact
        # (only n0 is a seed) or a periodic push-pull.
        assert any(
            node.stats().get("membership_mismatches", 0) > before.get(name, 0)
            for name, node in cluster.nodes.items()
            if name != "n0"
        )
