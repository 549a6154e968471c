"""Simulated clusters for tests, tools and the demo.

`open_sim_cluster` starts N nodes on the in-memory network (`swimnode.testing.network`), all
joining through the first node, and records every membership event each node sees.
Run it under `trio.testing.MockClock(autojump_threshold=0)` and a seed reproduces the
whole run: nodes, network and node random choices are all derived from it.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from ..net.keyring import Keyring
from ..net.transport import Address
from ..node import Node, open_node, secure
from ..protocol.config import Config, Profile
from ..protocol.events import Event, EventsLost
from ..protocol.member import MemberState
from .network import Network


@dataclass(frozen=True, slots=True)
class Observed:
    """One event as seen by one node, at a simulated time."""

    time: float
    observer: str
    event: Event


class SimCluster:
    """A set of nodes sharing one in-memory network. Create with `open_sim_cluster`."""

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
        self.network = network
        self.keyring = keyring
        """Keys every node gets unless started with its own (None: plaintext)."""
        self.record = record
        """Whether `log` records events (costly at a thousand nodes: N² joins)."""
        self.seed = seed
        self.profile: Profile = profile
        self.overrides = overrides
        self.log: list[Observed] = []
        self.nodes: dict[str, Node] = {}
        self._nursery = nursery
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        self._seed_address: Address | None = None
        self._starts = 0

    @staticmethod
    def address_of(name: str) -> Address:
        """The simulated address of the node called `name`."""
        return (name, 7946)

    @property
    def names(self) -> list[str]:
        """Names of the running nodes."""
        return list(self.nodes)

    def config_for(self, name: str, **overrides: Any) -> Config:
        """The config a node of this cluster gets (profile, seed node, own seed)."""
        self._starts += 1
        values = dict(self.overrides)
        values.update(overrides)
        values.setdefault("seeds", (self._seed_address,) if self._seed_address else ())
        values.setdefault("seed", self.seed * 1_000_003 + self._starts)
        return Config.profile(self.profile, name, bind=self.address_of(name), **values)

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
        if self._seed_address is None:
            self._seed_address = config.bind
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

    def view(self, observer: str) -> dict[str, MemberState]:
        """What `observer` believes: member name -> state."""
        return {m.name: m.state for m in self.nodes[observer].members()}

    def all_see(
        self, name: str, states: Iterable[MemberState], observers: Iterable[str] | None = None
    ) -> bool:
        """Whether every observer (default: every running node but `name`) holds
        `name` in one of `states` (a forgotten member counts as not seen)."""
        wanted = set(states)
        obs = [o for o in (observers if observers is not None else self.nodes) if o != name]
        return all(self.view(o).get(name) in wanted for o in obs)

    def app_state(self, observer: str, owner: str) -> dict[str, Any] | None:
        """`owner`'s application state as `observer` holds it (None if unknown)."""
        member = self.nodes[observer].core.member(owner)
        return dict(member.app_state) if member is not None else None

    def state_converged(self) -> bool:
        """Every running node holds every running node's exact current state."""
        truth = {n: dict(node.local_member.app_state) for n, node in self.nodes.items()}
        return all(self.app_state(o, n) == truth[n] for o in self.nodes for n in self.nodes)

    def converged(self) -> bool:
        """Every running node lists every running node alive, and nothing else live."""
        running = set(self.nodes)
        # Cheap counts first: at a thousand nodes the full comparison is a million
        # records, and polling it would dominate a benchmark.
        for node in self.nodes.values():
            if node.core.n_live != len(running) or node.core.active_suspicions:
                return False
        for observer in running:
            live = {m.name for m in self.nodes[observer].members() if m.is_live}
            alive = {m.name for m in self.nodes[observer].members() if m.state is MemberState.ALIVE}
            if live != running or alive != running:
                return False
        return True

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

    def events_of(
        self, kind: str, subject: str | None = None, observer: str | None = None
    ) -> list[Observed]:
        """Recorded events of one kind, optionally about one member or seen by one."""
        return [
            o
            for o in self.log
            if o.event.kind == kind
            and not isinstance(o.event, EventsLost)
            and (subject is None or o.event.member.name == subject)
            and (observer is None or o.observer == observer)
        ]


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
