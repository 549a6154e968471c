"""Whole clusters on the in-memory network under MockClock (deterministic)."""

import math

import trio
import trio.testing

from swimnode import MemberFailed, MemberState
from swimnode.protocol.contract import Timer
from swimnode.protocol.suspicion import suspicion_bounds
from swimnode.testing import Network, open_sim_cluster

ALIVE, SUSPECT, DEAD, LEFT = MemberState


def detection_bound(n: int) -> float:
    """Generous upper bound on crash -> dead everywhere for the lan profile: a few
    protocol periods to be probed and fail, the longest suspicion timeout (no
    confirmations), and time to disseminate."""
    _, hi = suspicion_bounds(4, 6, n, 1.0)
    return 3 * math.e / (math.e - 1) + hi + 5.0


async def test_three_nodes_form_a_cluster(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(3, seed=1) as cluster:
        took = await cluster.wait_for(cluster.converged, timeout=10)
        assert took is not None
        for name in cluster.names:
            assert cluster.view(name) == {"n0": ALIVE, "n1": ALIVE, "n2": ALIVE}
        assert len(cluster.events_of("joined")) == 6


async def test_crashed_node_is_declared_dead_by_all(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(3, seed=2) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        cluster.crash("n2")
        took = await cluster.wait_for(
            lambda: cluster.all_see("n2", {DEAD}), timeout=detection_bound(3)
        )
        assert took is not None
        assert cluster.events_of("failed", "n2", "n0")
        assert cluster.events_of("failed", "n2", "n1")
        # Survivors never doubted each other.
        assert not cluster.events_of("failed", "n0") and not cluster.events_of("failed", "n1")


async def test_transient_partition_is_suspected_then_refuted(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(3, seed=3) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        isolated = cluster.address_of("n2")
        others = [cluster.address_of("n0"), cluster.address_of("n1")]
        cluster.network.partition([isolated], others)
        lo, _ = suspicion_bounds(4, 6, 3, 1.0)
        # Cut off for a while, but well under the shortest suspicion timeout.
        await trio.sleep(lo * 0.75)
        assert cluster.events_of("suspected", "n2")
        cluster.network.heal()
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        assert cluster.events_of("suspected", "n2")
        assert cluster.events_of("alive", "n2")
        assert not cluster.events_of("failed")
        assert cluster.nodes["n2"].local_member.incarnation >= 1


async def test_fifty_nodes_five_crash_with_loss(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=50, loss=0.05)
    async with open_sim_cluster(50, seed=50, network=net) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60, step=0.5) is not None
        crashed = [f"n{i}" for i in (3, 11, 20, 37, 49)]
        for name in crashed:
            cluster.crash(name)
        took = await cluster.wait_for(
            lambda: all(cluster.all_see(c, {DEAD}) for c in crashed),
            timeout=detection_bound(50),
            step=0.5,
        )
        assert took is not None
        survivors = set(cluster.names)
        false_dead = [
            o
            for o in cluster.events_of("failed")
            if isinstance(o.event, MemberFailed) and o.event.member.name in survivors
        ]
        assert false_dead == []
        assert all(cluster.view(o)[s] is not DEAD for o in survivors for s in survivors)


async def test_leave_is_seen_as_left_not_failed(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(5, seed=4) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        await cluster.leave("n3")
        assert "n3" not in cluster.nodes
        assert await cluster.wait_for(lambda: cluster.all_see("n3", {LEFT}), timeout=5) is not None
        assert not cluster.events_of("failed", "n3")
        assert not cluster.events_of("suspected", "n3")
        assert len(cluster.events_of("left", "n3")) == 4


async def test_fresh_news_does_not_wait_out_the_gossip_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Two leaves 50 ms apart: every node is still in the gossip interval that
    forwarded the first when the second arrives, and the second's news must not wait
    for it to end at each hop (a quarter interval at most)."""
    async with open_sim_cluster(16, seed=6, gossip_interval=1.0) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        await trio.sleep(30)  # the join news has run out
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cluster.nodes["n3"].leave)
            await trio.sleep(0.05)
            nursery.start_soon(cluster.nodes["n7"].leave)
            took = await cluster.wait_for(
                lambda: all(
                    cluster.view(o)["n7"] is LEFT for o in cluster.nodes if o not in ("n3", "n7")
                ),
                timeout=10,
                step=0.01,
            )
            assert took is not None
        # A hop or two reach 16 members; waiting out the interval would take 1 s.
        assert took <= 0.5


async def test_restarted_node_rejoins(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(4, seed=5) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        cluster.crash("n2")
        assert (
            await cluster.wait_for(
                lambda: cluster.all_see("n2", {DEAD}), timeout=detection_bound(4)
            )
            is not None
        )
        old_incarnation = max(cluster.nodes["n0"].members(), key=lambda m: m.name == "n2")
        await cluster.start("n2")  # same name, fresh process: incarnation starts at 0
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        assert cluster.events_of("rejoined", "n2")
        assert cluster.nodes["n2"].local_member.incarnation > old_incarnation.incarnation


async def test_restart_before_detection_wins_over_old_record(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(4, seed=6) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        cluster.crash("n1")
        await cluster.start("n1")  # back at once: the others still hold it alive
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        await trio.sleep(30)
        assert cluster.converged()
        assert not cluster.events_of("failed", "n1")


async def test_every_task_stops_when_the_block_exits(mock_clock: trio.testing.MockClock) -> None:
    before = trio.lowlevel.current_statistics().tasks_living
    async with open_sim_cluster(3, seed=7) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        nodes = list(cluster.nodes.values())
        # Per node: its run task, the receive task and one task per timer concern.
        per_node = 2 + len(Timer)
        assert trio.lowlevel.current_statistics().tasks_living >= before + 3 * per_node
    # Nothing of the cluster runs any more, and the nodes' transports are closed.
    assert trio.lowlevel.current_statistics().tasks_living == before
    assert all(not cluster.network.is_attached(n.address) for n in nodes)


async def test_same_seed_same_run(mock_clock: trio.testing.MockClock) -> None:
    async def trace() -> list[tuple[float, str, str, str]]:
        net = Network(seed=9, loss=0.05)
        start = trio.current_time()
        async with open_sim_cluster(8, seed=9, network=net) as cluster:
            await trio.sleep(5)
            cluster.crash("n5")
            await trio.sleep(40)
            return [
                (round(o.time - start, 9), o.observer, o.event.kind, o.event.member.name)
                for o in cluster.log
                if hasattr(o.event, "member")
            ]

    first = await trace()
    second = await trace()
    assert first == second
    assert any(kind == "failed" for _, _, kind, _ in first)
