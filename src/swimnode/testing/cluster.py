"""Simulated clusters for tests, tools and the demo.

`open_sim_cluster` starts N nodes on the in-memory network (`swimnode.testing.network`), all
joining through the first node, and records every membership event each node sees.
Run it under `trio.testing.MockClock(autojump_threshold=0)` and a seed reproduces the
whole run: nodes, network and node random choices are all derived from it.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

from ..net.keyring import Keyring
from ..node import Node, open_node, secure
from ..protocol.config import Config, Profile
from ..protocol.core import SwimCore
from .clusterviews import ClusterViews, Observed
from .network import Network

__all__ = ["Observed", "SimCluster", "open_sim_cluster", "seed_trio_scheduler"]


class SimCluster(ClusterViews):
    """A set of nodes sharing one in-memory network. Create with `open_sim_cluster`.
    The views (`converged`, `all_see`, `events_of`, ...) are `ClusterViews`'."""

    def __init__(
        self,
        nursery: trio.Nursery,
        network: Network,
        *,
        seed: int,
        profile: Profile,
        overrides: dict[str, Any],
        record: bool = True,
        keyring: Keyring | None = None,
    ) -> None:
        super().__init__(seed=seed, profile=profile, overrides=overrides)
        self.network = network
        self.keyring = keyring
        """Keys every node gets unless started with its own (None: plaintext)."""
        self.record = record
        """Whether `log` records events (costly at a thousand nodes: N² joins)."""
        self.nodes: dict[str, Node] = {}
        self._nursery = nursery
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}

    async def start(
        self,
        name: str,
        *,
        keyring: Keyring | Literal["cluster"] | None = "cluster",
        **overrides: Any,
    ) -> Node:
        """Start a node (again, after a crash: a restart with the same name). It uses
        the cluster's keyring unless given its own (or None for plaintext)."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} is already running")
        config = self.config_for(name, **overrides)
        keys = self.keyring if keyring == "cluster" else keyring
        node: Node = await self._nursery.start(self._run, config, keys)
        return node

    async def _run(
        self, config: Config, keyring: Keyring | None, *, task_status: trio.TaskStatus[Node]
    ) -> None:
        # Replay windows in simulated time, so long runs stay deterministic.
        transport = secure(
            self.network.attach(config.bind), config, keyring, clock=trio.current_time
        )
        stopped = self._stopped[config.name] = trio.Event()
        with trio.CancelScope() as scope:
            self._scopes[config.name] = scope
            try:
                async with open_node(config, transport=transport) as node:
                    self.nodes[config.name] = node
                    if not self.record:
                        task_status.started(node)
                        await node.wait_stopped()
                        return
                    stream = node.events()
                    task_status.started(node)
                    async for event in stream:
                        self.log.append(Observed(trio.current_time(), config.name, event))
            finally:
                # After a crash a restarted node may already own the name.
                if self._scopes.get(config.name) is scope:
                    del self.nodes[config.name]
                    del self._scopes[config.name]
                stopped.set()

    def crash(self, name: str) -> None:
        """Kill a node at once, as `kill -9` would: no leave, no more packets."""
        self.network.crash(self.address_of(name))
        self._scopes[name].cancel()
        del self.nodes[name]
        del self._scopes[name]

    async def leave(self, name: str) -> None:
        """Make a node leave gracefully and wait until it stopped."""
        stopped = self._stopped[name]
        await self.nodes[name].leave()
        await stopped.wait()

    @property
    def cores(self) -> dict[str, SwimCore]:
        """The protocol core of every running node, by name."""
        return {name: node.core for name, node in self.nodes.items()}

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109
        step: float = 0.05,
    ) -> float | None:
        """Poll `predicate` every `step` simulated seconds; return how long it took,
        or None if it still failed after `timeout`."""
        start = trio.current_time()
        for _ in range(max(1, math.ceil(timeout / step)) + 1):
            if predicate():
                return trio.current_time() - start
            await trio.sleep(step)
        return None


def seed_trio_scheduler(seed: int) -> None:
    """Make Trio's choice among tasks ready at the same instant repeatable.

    Trio deliberately randomizes that order (to shake out bugs) with a module-level
    generator; a simulation that must replay exactly from its seed seeds it too. The
    hook is private to Trio, so if it ever disappears runs stay valid, only not
    bit-for-bit repeatable.
    """
    rng = getattr(getattr(trio, "_core", None), "_run", None)
    scheduler_rng = getattr(rng, "_r", None)
    if isinstance(scheduler_rng, random.Random):
        scheduler_rng.seed(seed)


@asynccontextmanager
async def open_sim_cluster(
    n: int,
    *,
    seed: int = 0,
    profile: Profile = "lan",
    network: Network | None = None,
    stagger: float = 0.01,
    record: bool = True,
    keyring: Keyring | None = None,
    **overrides: Any,
) -> AsyncIterator[SimCluster]:
    """Start `n` nodes named `n0`, `n1`, ... that join through `n0`; stop them all on
    exit. Extra keyword arguments override config fields for every node. With
    `record=False` no events are logged (for large benchmarks). With a `keyring`
    (or a `label` override) packets go through `swimnode.net.security.SecureTransport`."""
    net = network if network is not None else Network(seed=seed)
    seed_trio_scheduler(seed)
    async with trio.open_nursery() as nursery:
        cluster = SimCluster(
            nursery,
            net,
            seed=seed,
            profile=profile,
            overrides=overrides,
            record=record,
            keyring=keyring,
        )
        for i in range(n):
            await cluster.start(f"n{i}")
            if stagger:
                await trio.sleep(stagger)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
