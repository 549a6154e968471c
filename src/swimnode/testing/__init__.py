"""Simulated clusters for tests, tools and the demo (like `trio.testing`): the
in-memory network (`swimnode.testing.network`), clusters of nodes on it, the
discrete-event simulator that runs the same cores without Trio
(`swimnode.testing.fastsim`, `fastcluster`, `scenarios`), local agent processes, and
the cluster fuzzer (`swimnode.testing.fuzz`, needs the `[test]` extra).

The names below are imported on first use (PEP 562), as in `swimnode`, so the
discrete-event simulator does not load Trio."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
_LAZY = {name: module for module, names in _HOMES.items() for name in names}


# Hidden from type checkers, as in swimnode/__init__.py.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
