"""Simulated clusters on the discrete-event simulator: `open_sim_cluster`'s nodes,
names, configs and views, without Trio.

    cluster = FastCluster(100, seed=1, sim=FastSim(seed=1, loss=0.01))
    cluster.wait_for(cluster.converged, timeout=60)
    cluster.crash("n7")
    took = cluster.wait_for(lambda: cluster.all_see("n7", {MemberState.DEAD}), 60)

Nodes are started `stagger` simulated seconds apart, as `open_sim_cluster` starts
them, and get the same configs (`ClusterViews.config_for`), so the two simulations
run the same cluster and differ only in their scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from ..protocol.config import Profile
from ..protocol.contract import LeaveFinished, Signal
from ..protocol.core import SwimCore
from ..protocol.events import MemberEvent
from .clusterviews import ClusterViews, Observed
from .fastsim import FastSim

__all__ = ["FastCluster", "Start"]

Start = Literal["join", "converged"]
"""How a `FastCluster` starts: its nodes join through `n0`, or start converged."""


class FastCluster(ClusterViews):
    """`n` nodes named `n0`, `n1`, ... on a `FastSim`, joining through `n0`. Extra
    keyword arguments override config fields for every node. With `record=False`
    no events are logged (at N nodes joining makes N² of them); `on_event` sees
    every event either way.

    With `start="converged"` the nodes skip the join: all start at once, each
    already holding every other as a finished join leaves it (`SwimCore.preload`,
    with one shared record per member), and then run as usual. That is how
    clusters too large to simulate their join are measured (docs/scale.md)."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        profile: Profile = "lan",
        sim: FastSim | None = None,
        stagger: float = 0.01,
        record: bool = True,
        start: Start = "join",
        **overrides: Any,
    ) -> None:
        super().__init__(seed=seed, profile=profile, overrides=overrides)
        self.sim = sim if sim is not None else FastSim(seed)
        self.record = record
        self._cores: dict[str, SwimCore] = {}
        self._hooks: list[Callable[[float, str, MemberEvent], None]] = []
        self.sim.on_event = self._event
        self.sim.on_signal = self._signal
        if start == "converged":
            self._start_converged(n)
            return
        if start != "join":
            raise ValueError(f"start must be 'join' or 'converged', not {start!r}")
        for i in range(n):
            self.start(f"n{i}")
            if stagger:
                self.sim.run_for(stagger)

    def _start_converged(self, n: int) -> None:
        names = [f"n{i}" for i in range(n)]
        for name in names:
            self.start(name)
        records = [self._cores[name].local_member for name in names]
        for i, name in enumerate(names):
            self._cores[name].preload(records[:i] + records[i + 1 :])
            self.sim.pump(self.address_of(name))

    @property
    def now(self) -> float:
        """The simulated clock."""
        return self.sim.now

    @property
    def cores(self) -> dict[str, SwimCore]:
        """The protocol core of every running node, by name."""
        return self._cores

    def on_event(self, hook: Callable[[float, str, MemberEvent], None]) -> None:
        """Call `hook(time, observer, event)` for every membership event from now on."""
        self._hooks.append(hook)

    def start(self, name: str, **overrides: Any) -> SwimCore:
        """Start a node (again, after a crash: a restart with the same name)."""
        if name in self._cores:
            raise ValueError(f"node {name!r} is already running")
        node = self.sim.start(self.config_for(name, **overrides))
        self._cores[name] = node.core
        return node.core

    def crash(self, name: str) -> None:
        """Kill a node at once, as `kill -9` would: no leave, no more packets."""
        self.sim.crash(self.address_of(name))
        del self._cores[name]

    def leave(self, name: str) -> None:
        """Start a graceful leave; the node stops when its `Left` has been sent."""
        self._cores[name].leave(self.sim.now)
        self.sim.pump(self.address_of(name))

    def set_state(self, name: str, key: str, value: Any) -> None:
        """Set one key of node `name`'s application state (as `Node.set_state`)."""
        self._cores[name].set_state(key, value, self.sim.now)
        self.sim.pump(self.address_of(name))

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> float | None:
        """Poll `predicate` every `step` simulated seconds; return how long it took,
        or None if it still failed after `timeout`."""
        start = self.sim.now
        for _ in range(max(1, math.ceil(timeout / step)) + 1):
            if predicate():
                return self.sim.now - start
            self.sim.run_for(step)
        return None

    def _event(self, now: float, observer: str, event: MemberEvent) -> None:
        if self.record:
            self.log.append(Observed(now, observer, event))
        for hook in self._hooks:
            hook(now, observer, event)

    def _signal(self, now: float, name: str, signal: Signal) -> None:
        if isinstance(signal, LeaveFinished) and name in self._cores:
            # As the Trio node does: once the leave is done, the node stops.
            self.sim.call_at(now, lambda: self._stop(name))

    def _stop(self, name: str) -> None:
        if name in self._cores:
            self.sim.crash(self.address_of(name))
            del self._cores[name]
