"""Anti-entropy gossip of application state, seeds and partition healing, on the
in-memory network under MockClock."""

import trio
import trio.testing

from swimnode import MemberState
from swimnode.protocol.events import MemberUpdated
from swimnode.testing import Network, open_sim_cluster

ALIVE, SUSPECT, DEAD, LEFT = MemberState


async def test_state_set_on_one_node_reaches_all_fifty(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(50, seed=21) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60, step=0.5) is not None
        cluster.nodes["n7"].set_state("tokens", [1, 2, 3])
        took = await cluster.wait_for(
            lambda: all(cluster.app_state(o, "n7") == {"tokens": [1, 2, 3]} for o in cluster.nodes),
            timeout=30,
            step=0.25,
        )
        assert took is not None
        updates = [
            o
            for o in cluster.log
            if isinstance(o.event, MemberUpdated)
            and o.event.member.name == "n7"
            and "tokens" in o.event.changed_keys
        ]
        assert {o.observer for o in updates} == set(cluster.nodes)


async def test_state_reaches_all_with_twenty_percent_loss(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=22)
    async with open_sim_cluster(50, seed=22, network=net) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60, step=0.5) is not None
        net.loss = 0.2
        for i in range(0, 50, 5):
            cluster.nodes[f"n{i}"].set_state("load", i)
        took = await cluster.wait_for(cluster.state_converged, timeout=60, step=0.5)
        assert took is not None
        assert cluster.app_state("n49", "n45") == {"load": 45}


async def test_delete_propagates_and_tombstones_do_not_resurrect(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(10, seed=23, state_tombstone_ttl=30.0) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        node = cluster.nodes["n3"]
        node.set_state("role", "db")
        node.set_state("zone", "a")
        assert await cluster.wait_for(cluster.state_converged, timeout=20) is not None
        assert node.delete_state("role")
        assert not node.delete_state("role")
        assert (
            await cluster.wait_for(
                lambda: all(cluster.app_state(o, "n3") == {"zone": "a"} for o in cluster.nodes),
                timeout=20,
            )
            is not None
        )
        await trio.sleep(120)  # well past the tombstone lifetime and reaper runs
        collected = sum(n.stats().get("tombstones_collected", 0) for n in cluster.nodes.values())
        assert collected >= len(cluster.nodes)
        assert all(cluster.app_state(o, "n3") == {"zone": "a"} for o in cluster.nodes)


async def test_restarted_node_state_replaces_its_old_state(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(5, seed=24) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        cluster.nodes["n2"].set_state("v", "old")
        cluster.nodes["n2"].set_state("gone", True)
        assert await cluster.wait_for(cluster.state_converged, timeout=20) is not None
        cluster.crash("n2")
        restarted = await cluster.start("n2")
        restarted.set_state("v", "new")
        assert (
            await cluster.wait_for(
                lambda: cluster.converged() and cluster.state_converged(), timeout=60
            )
            is not None
        )
        assert cluster.app_state("n0", "n2") == {"v": "new"}


async def test_logical_partitions_merge_through_a_shared_seed(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(0, seed=25) as cluster:
        seed = cluster.address_of("s")
        for side in "ab":
            first = cluster.address_of(f"{side}0")
            for i in range(3):
                await cluster.start(f"{side}{i}", seeds=(first, seed))
        # Two separate clusters: nobody can reach the shared seed yet.
        await trio.sleep(10)
        assert set(cluster.view("a1")) == {"a0", "a1", "a2"}
        assert set(cluster.view("b1")) == {"b0", "b1", "b2"}
        await cluster.start("s", seeds=())
        took = await cluster.wait_for(cluster.converged, timeout=120, step=0.5)
        assert took is not None
        assert set(cluster.view("a2")) == {"a0", "a1", "a2", "b0", "b1", "b2", "s"}


async def _split_and_heal(seed_on_each_side: bool) -> dict[str, int]:
    seeds = (("n0", 7946), ("n20", 7946)) if seed_on_each_side else (("n0", 7946),)
    async with open_sim_cluster(41, seed=26 + seed_on_each_side, seeds=seeds) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=60, step=0.5) is not None
        if not seed_on_each_side:
            cluster.crash("n0")  # the only seed is gone: no side can reach a seed
        side_a = [cluster.address_of(f"n{i}") for i in range(21)]
        side_b = [cluster.address_of(f"n{i}") for i in range(21, 41)]
        cluster.network.partition(side_a, side_b)
        # Longer than the longest suspicion timeout: each side buries the other.
        took = await cluster.wait_for(
            lambda: (
                cluster.all_see("n25", {DEAD}, [f"n{i}" for i in range(1, 21)])
                and cluster.all_see("n5", {DEAD}, [f"n{i}" for i in range(21, 41)])
            ),
            timeout=50,
            step=0.5,
        )
        assert took is not None
        cluster.network.heal()
        took = await cluster.wait_for(
            lambda: all(cluster.all_see(n, {ALIVE}) for n in cluster.nodes), timeout=90, step=0.5
        )
        assert took is not None, "the cluster did not merge after the partition healed"
        totals: dict[str, int] = {}
        for node in cluster.nodes.values():
            for key in ("syncs_to_dead", "syncs_to_seeds"):
                totals[key] = totals.get(key, 0) + node.stats().get(key, 0)
        return totals


async def test_network_partition_heals_with_no_seed_reachable(
    mock_clock: trio.testing.MockClock,
) -> None:
    totals = await _split_and_heal(seed_on_each_side=False)
    assert totals["syncs_to_dead"] > 0


async def test_network_partition_heals_with_a_seed_on_each_side(
    mock_clock: trio.testing.MockClock,
) -> None:
    totals = await _split_and_heal(seed_on_each_side=True)
    assert totals["syncs_to_seeds"] > 0
