"""Simulated clusters for tests, tools and the demo (like `trio.testing`): the
in-memory network (`swimnode.testing.network`), clusters of nodes on it, the
discrete-event simulator that runs the same cores without Trio
(`swimnode.testing.fastsim`, `fastcluster`, `scenarios`), local agent processes, and
the cluster fuzzer (`swimnode.testing.fuzz`, needs the `[test]` extra).

The names below are imported on first use (PEP 562), as in `swimnode`, so the
discrete-event simulator does not load Trio."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazyimport import lazy_getattr

if TYPE_CHECKING:
    from .cluster import SimCluster, open_sim_cluster, seed_trio_scheduler
    from .clusterviews import Observed
    from .fastcluster import FastCluster
    from .fastsim import FastSim
    from .linkmodel import LinkParams, NetworkStats
    from .network import Network, SimTransport

__all__ = [
    "FastCluster",
    "FastSim",
    "LinkParams",
    "Network",
    "NetworkStats",
    "Observed",
    "SimCluster",
    "SimTransport",
    "open_sim_cluster",
    "seed_trio_scheduler",
]

_HOMES = {
    "cluster": ("SimCluster", "open_sim_cluster", "seed_trio_scheduler"),
    "clusterviews": ("Observed",),
    "fastcluster": ("FastCluster",),
    "fastsim": ("FastSim",),
    "linkmodel": ("LinkParams", "NetworkStats"),
    "network": ("Network", "SimTransport"),
}
# Hidden from type checkers: they see the real names above, and a module-level
# __getattr__ would make them accept any misspelt name as `object`.
if not TYPE_CHECKING:
    __getattr__ = lazy_getattr(__name__, globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
