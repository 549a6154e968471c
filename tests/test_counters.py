"""Every counter is declared once, in `swimnode.counters`, and nothing counts under a
name that is not declared there."""

from __future__ import annotations

import trio
import trio.testing

from swimnode import counters
from swimnode.protocol.codec import MESSAGE_NAMES
from swimnode.testing import Network, open_sim_cluster


def declared_core(name: str) -> bool:
    if name in counters.CORE or name in counters.GAUGES:
        return True
    return any(
        name
        in (
            counters.sent_key(m),
            counters.sent_bytes_key(m),
            counters.received_key(m),
            counters.received_bytes_key(m),
        )
        for m in MESSAGE_NAMES.values()
    )


async def test_a_busy_cluster_counts_only_declared_names(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(6, seed=5, network=Network(seed=5, loss=0.1)) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        cluster.nodes["n1"].set_state("role", "db")
        cluster.crash("n4")
        await trio.sleep(30)
        await cluster.leave("n5")
        await trio.sleep(5)
        seen = {key for node in cluster.nodes.values() for key in node.stats()}
    assert {"probes", "sent_ping", "deaths_declared", "state_rounds"} <= seen
    assert sorted(k for k in seen if not declared_core(k)) == []


def test_always_reported_names_belong_to_a_family() -> None:
    families = {
        "": {**counters.CORE, **counters.AGENT},
        counters.TRANSPORT_PREFIX: counters.TRANSPORT,
        counters.SECURITY_PREFIX: counters.SECURITY,
    }
    for name in counters.ALWAYS_REPORTED:
        assert any(
            name.startswith(prefix) and name[len(prefix) :] in family
            for prefix, family in families.items()
        ), name
    assert len(set(counters.ALWAYS_REPORTED)) == len(counters.ALWAYS_REPORTED)
