"""What an idle cluster costs: how often each node wakes on its own, and what it sends.

Wakeups, not work, dominate an idle agent's CPU (docs/agent.md, "Idle cost"), so these
budgets are behaviour worth guarding: counted under MockClock on the in-memory network.
"""

from __future__ import annotations

from collections import defaultdict

import trio
import trio.testing

from swimnode.node import Node
from swimnode.testing import open_sim_cluster


class WakeupLog(trio.abc.Instrument):
    """For each node, the tasks of it that ran at each instant of (mock) time."""

    def __init__(self) -> None:
        self.steps: dict[Node, dict[float, set[str]]] = defaultdict(lambda: defaultdict(set))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        owner = frame.f_locals.get("self") if frame is not None else None
        if isinstance(owner, Node):
            self.steps[owner][trio.current_time()].add(task.name.rsplit(".", 1)[-1])

    def own_wakeups(self, node: Node) -> list[set[str]]:
        """The instants at which `node` ran without having received anything: the
        wakeups its own timers cost."""
        return [names for names in self.steps[node].values() if "_receive_loop" not in names]


async def test_idle_nodes_wake_once_a_period(mock_clock: trio.testing.MockClock) -> None:
    n, window = 6, 60.0
    async with open_sim_cluster(n, seed=11) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        await trio.sleep(10)  # let the join news run out of retransmissions
        nodes = list(cluster.nodes.values())
        assert not any(node.core.broadcasts for node in nodes)
        before = [dict(node.stats()) for node in nodes]
        log = WakeupLog()
        trio.lowlevel.add_instrument(log)
        try:
            await trio.sleep(window)
        finally:
            trio.lowlevel.remove_instrument(log)
        total_contacts = 0.0
        for node, old in zip(nodes, before, strict=True):
            own = log.own_wakeups(node)
            # The probe tick (1 s in the lan profile) and, every half minute or so, a
            # push-pull: no wakeup at the probe timeout once the ack is in, none for
            # seeds, and anti-entropy and reaping ride on the probe tick. (Each timer
            # concern's task is named for it: probe, gossip, sync.)
            assert len(own) <= 1.1 * window
            assert sum("sync" in names for names in own) <= 0.05 * window
            new = node.stats()
            rounds = (new["state_rounds"] - old["state_rounds"]) / window
            sent = (new["packets_sent"] - old["packets_sent"]) / window
            # Still one state round a second, each inside a ping's datagram: a ping
            # and an ack per period, besides seed contacts and push-pulls.
            assert 0.95 <= rounds <= 1.05
            syncs = (new.get("sent_sync", 0) - old.get("sent_sync", 0)) / window
            contacts = (new.get("syncs_to_seeds", 0) - old.get("syncs_to_seeds", 0)) / window
            assert sent - syncs - contacts <= 2.05
            # Seed contacts are single datagrams while views agree; streams carry only
            # the periodic push-pulls (one per member per 30 s, and the replies).
            total_contacts += contacts
            assert new.get("membership_mismatches", 0) == old.get("membership_mismatches", 0)
            assert syncs <= 0.15
        assert total_contacts > 0  # n0, the seed, is contacted by the others


async def test_a_lone_node_does_not_spin_on_news_nobody_can_hear(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Its own `alive` news stays queued while it knows nobody; the gossip task must
    # sleep rather than retry every interval.
    async with open_sim_cluster(1, seed=3) as cluster:
        node = cluster.nodes["n0"]
        await trio.sleep(1)
        assert node.core.broadcasts
        log = WakeupLog()
        trio.lowlevel.add_instrument(log)
        try:
            await trio.sleep(30)
        finally:
            trio.lowlevel.remove_instrument(log)
        own = log.own_wakeups(node)
        assert not any("gossip" in names for names in own)
        # The probe tick, and the anti-entropy chore (which may find the dead to sync).
        assert len(own) <= 2 * 30 + 1
