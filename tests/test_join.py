"""Joining: the newcomer's direct announcement (docs/protocol.md §8.1), under MockClock
on the in-memory network."""

from typing import Any

import trio
import trio.testing

from swimnode.testing import open_sim_cluster

STAGGER = 0.01


async def _storm(n: int, seed: int, **overrides: Any) -> tuple[float, dict[str, int]]:
    """`n` nodes (lan profile) joining 10 ms apart through n0: seconds from the last
    start until every node lists all `n` alive, and each node's join announcements."""
    last_start = trio.current_time() + (n - 1) * STAGGER
    async with open_sim_cluster(n, seed=seed, stagger=STAGGER, **overrides) as cluster:
        took = await cluster.wait_for(cluster.converged, timeout=120, step=0.005)
        assert took is not None
        took = trio.current_time() - last_start
        announced = {name: node.stats().get("join_announcements", 0)
                     for name, node in cluster.nodes.items()}
    return took, announced


async def test_join_storm_converges_within_round_trips(
        mock_clock: trio.testing.MockClock) -> None:
    took, announced = await _storm(10, seed=3)
    # A join round trip and one datagram to each member: a few ms of simulated
    # latency, far below a gossip round (200 ms).
    assert took < 0.02
    # Each newcomer tells everyone the seed's reply listed, except the seed itself;
    # the seed joined nobody.
    assert announced["n0"] == 0
    assert sum(announced.values()) > 0
    assert all(count <= i - 1 for i, count in
               ((int(name[1:]), count) for name, count in announced.items() if name != "n0"))


async def test_without_the_announcement_the_storm_waits_for_gossip(
        mock_clock: trio.testing.MockClock) -> None:
    """The same storm with the announcement off: the mechanism, not luck, made the
    previous test fast."""
    took, announced = await _storm(10, seed=3, join_announce_nodes=0)
    assert took > 0.05
    assert sum(announced.values()) == 0


async def test_announcement_is_capped(mock_clock: trio.testing.MockClock) -> None:
    took, announced = await _storm(12, seed=4, join_announce_nodes=2)
    assert max(announced.values()) == 2
    assert took < 60
