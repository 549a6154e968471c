"""Simulated clusters for tests, tools and the demo (like `trio.testing`): the
in-memory network (`swimnode.testing.network`), clusters of nodes on it, local agent
processes, and the cluster fuzzer (`swimnode.testing.fuzz`, needs the `[test]` extra)."""

from .cluster import Observed, SimCluster, open_sim_cluster, seed_trio_scheduler
from .network import LinkParams, Network, NetworkStats, SimTransport

__all__ = [
    "LinkParams",
    "Network",
    "NetworkStats",
    "Observed",
    "SimCluster",
    "SimTransport",
    "open_sim_cluster",
    "seed_trio_scheduler",
]
