"""What both simulated clusters share, with no scheduler: names and addresses, the
config each node gets, and the questions asked of the nodes' views (converged? does
everyone see X dead? which events were seen?). `SimCluster` (Trio) and `FastCluster`
(the discrete-event simulator) differ only in how nodes run and how time passes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..net.transport import Address
from ..protocol.config import Config, Profile
from ..protocol.core import SwimCore
from ..protocol.events import Event, EventsLost
from ..protocol.member import MemberState


@dataclass(frozen=True, slots=True)
class Observed:
    """One event as seen by one node, at a simulated time."""

    time: float
    observer: str
    event: Event


class ClusterViews:
    """Nodes named `n0`, `n1`, ... joining through the first one started; the
    subclass says how to reach each running node's core (`cores`)."""

    def __init__(self, *, seed: int, profile: Profile, overrides: dict[str, Any]) -> None:
        self.seed = seed
        self.profile: Profile = profile
        self.overrides = overrides
        self.log: list[Observed] = []
        self._seed_address: Address | None = None
        self._starts = 0

    @property
    def cores(self) -> Mapping[str, SwimCore]:
        """The protocol core of every running node, by name."""
        raise NotImplementedError

    @staticmethod
    def address_of(name: str) -> Address:
        """The simulated address of the node called `name`."""
        return (name, 7946)

    @property
    def names(self) -> list[str]:
        """Names of the running nodes."""
        return list(self.cores)

    def config_for(self, name: str, **overrides: Any) -> Config:
        """The config a node of this cluster gets (profile, seed node, own seed)."""
        self._starts += 1
        values = dict(self.overrides)
        values.update(overrides)
        values.setdefault("seeds", (self._seed_address,) if self._seed_address else ())
        values.setdefault("seed", self.seed * 1_000_003 + self._starts)
        config = Config.profile(self.profile, name, bind=self.address_of(name), **values)
        if self._seed_address is None:
            self._seed_address = config.bind
        return config

    def view(self, observer: str) -> dict[str, MemberState]:
        """What `observer` believes: member name -> state."""
        return {m.name: m.state for m in self.cores[observer].members()}

    def all_see(
        self, name: str, states: Iterable[MemberState], observers: Iterable[str] | None = None
    ) -> bool:
        """Whether every observer (default: every running node but `name`) holds
        `name` in one of `states` (a forgotten member counts as not seen)."""
        wanted = set(states)
        cores = self.cores
        obs = [o for o in (observers if observers is not None else cores) if o != name]
        for o in obs:
            member = cores[o].member(name)
            if member is None or member.state not in wanted:
                return False
        return True

    def app_state(self, observer: str, owner: str) -> dict[str, Any] | None:
        """`owner`'s application state as `observer` holds it (None if unknown)."""
        member = self.cores[observer].member(owner)
        return dict(member.app_state) if member is not None else None

    def state_converged(self) -> bool:
        """Every running node holds every running node's exact current state."""
        cores = self.cores
        truth = {n: dict(core.local_member.app_state) for n, core in cores.items()}
        return all(self.app_state(o, n) == truth[n] for o in cores for n in cores)

    def converged(self) -> bool:
        """Every running node lists every running node alive, and nothing else live."""
        cores = self.cores
        running = set(cores)
        # Cheap counts first: at a thousand nodes the full comparison is a million
        # records, and polling it would dominate a benchmark.
        for core in cores.values():
            if core.n_live != len(running) or core.active_suspicions:
                return False
        for core in cores.values():
            members = core.members()
            live = {m.name for m in members if m.is_live}
            alive = {m.name for m in members if m.state is MemberState.ALIVE}
            if live != running or alive != running:
                return False
        return True

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
