"""Node configuration: one typed dataclass and the `lan`, `wan` and `local` profiles.

The `lan` defaults are memberlist's `DefaultLANConfig`; `wan` and `local` follow its
`DefaultWANConfig` and `DefaultLocalConfig`. Every knob is documented in
docs/protocol.md with its default and the reason for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..net.transport import Address
from .limits import MAX_DATAGRAM_BYTES, MAX_LABEL_BYTES, MAX_NAME_BYTES, MIN_DATAGRAM_BYTES

Profile = Literal["lan", "wan", "local"]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to run. Build one with `Config.lan(...)` (or `wan`,
    `local`) and override fields by keyword; `validate()` runs on construction."""

    name: str
    bind: Address = ("127.0.0.1", 7946)
    advertise: Address | None = None
    seeds: tuple[Address, ...] = ()

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    push_pull_interval: float = 30.0
    join_announce_nodes: int = 16
    """Members a newcomer tells of itself directly once a seed has answered its join;
    gossip tells the rest."""
    awareness_max_multiplier: int = 8
    dead_reclaim_time: float = 60.0

    # Lifeguard switches (Dadgar et al. 2017); all on by default, as in memberlist.
    lifeguard_awareness: bool = True
    lifeguard_dynamic_suspicion: bool = True
    lifeguard_buddy: bool = True

    state_gossip_interval: float = 1.0
    """Anti-entropy rounds (application state, seeds, gossip to the dead)."""
    state_delta_budget: int = 64 * 1024
    """Bytes of state deltas sent per round, oldest first; the rest follows later."""
    state_max_key_bytes: int = 128
    state_max_value_bytes: int = 4096
    state_max_bytes: int = 64 * 1024
    state_tombstone_ttl: float = 3600.0
    seed_refresh_interval: float = 30.0
    query_timeout_mult: int = 16
    """Serf's QueryTimeoutMult: a query's default timeout is `gossip_interval *
    query_timeout_mult * ceil(log10(N + 1))`, time for it to spread and the answers
    to come back, with margin. A query ends earlier once every member answered."""

    label: str = ""
    """Cluster label bound into every packet: clusters with other labels never merge."""
    replay_window: float = 60.0
    """With keys: packets stamped further than this from our clock are dropped."""

    request_rate: float = 50.0
    """Expensive requests (full syncs, digest replies, relayed probes) answered per
    second per source host; `request_burst` may come at once."""
    request_burst: int = 100

    udp_payload: int = 1400
    join_timeout: float = 10.0
    leave_timeout: float = 5.0
    event_buffer: int = 1024
    seed: int | None = None
    """Seed for the node's random choices; `None` draws one from the OS."""

    def __post_init__(self) -> None:
        # Accept any iterable of (host, port) pairs, e.g. a list from a config file.
        seeds = tuple((str(h), int(p)) for h, p in self.seeds)
        object.__setattr__(self, "seeds", seeds)
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first bad field."""
        if not self.name or len(self.name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"name must be 1..{MAX_NAME_BYTES} bytes of UTF-8")
        for key in _POSITIVE:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0")
        for broken, message in _RULES:
            if broken(self):
                raise ValueError(message)

    @property
    def advertise_address(self) -> Address:
        """The address peers should use: `advertise` if set, else `bind`."""
        return self.advertise if self.advertise is not None else self.bind

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def lan(cls, name: str, **overrides: Any) -> Config:
        """memberlist's LAN defaults: 1 s probes, 200 ms gossip."""
        return cls(name=name, **overrides)

    @classmethod
    def wan(cls, name: str, **overrides: Any) -> Config:
        """memberlist's WAN defaults: slower probes, more patience."""
        values: dict[str, Any] = dict(
            probe_interval=5.0,
            probe_timeout=3.0,
            suspicion_mult=6,
            push_pull_interval=60.0,
            gossip_interval=0.5,
            gossip_nodes=4,
            gossip_to_the_dead_time=60.0,
        )
        values.update(overrides)
        return cls(name=name, **values)

    @classmethod
    def local(cls, name: str, **overrides: Any) -> Config:
        """memberlist's loopback defaults: fast timers for one machine."""
        values: dict[str, Any] = dict(
            probe_interval=1.0,
            probe_timeout=0.2,
            indirect_checks=1,
            suspicion_mult=3,
            retransmit_mult=2,
            push_pull_interval=15.0,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
        )
        values.update(overrides)
        return cls(name=name, **values)

    @classmethod
    def profile(cls, profile: Profile, name: str, **overrides: Any) -> Config:
        """Build a config from a profile name."""
        builders = {"lan": cls.lan, "wan": cls.wan, "local": cls.local}
        if profile not in builders:
            raise ValueError(f"unknown profile {profile!r} (expected lan, wan or local)")
        return builders[profile](name, **overrides)


_POSITIVE = (
    "probe_interval",
    "probe_timeout",
    "gossip_interval",
    "push_pull_interval",
    "state_gossip_interval",
    "seed_refresh_interval",
    "state_tombstone_ttl",
)
"""Fields that must be > 0; checked after the name, before `_RULES`."""


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


_RULES: tuple[tuple[Callable[[Config], bool], str], ...] = (
    (
        lambda c: c.probe_timeout > c.probe_interval,
        "probe_timeout must not exceed probe_interval",
    ),
    (
        lambda c: min(c.indirect_checks, c.gossip_nodes, c.join_announce_nodes) < 0,
        "indirect_checks, gossip_nodes and join_announce_nodes must be >= 0",
    ),
    (
        lambda c: c.suspicion_mult < 1 or c.suspicion_max_timeout_mult < 1,
        "suspicion_mult and suspicion_max_timeout_mult must be >= 1",
    ),
    (lambda c: c.retransmit_mult < 1, "retransmit_mult must be >= 1"),
    (
        # Peers would be told to reach the node at the wildcard itself, which for
        # them means their own machine: the node could never join.
        lambda c: _is_wildcard(c.advertise_address[0]),
        "binding a wildcard address (0.0.0.0 or ::) needs an advertise address that "
        "peers can reach",
    ),
    (lambda c: c.awareness_max_multiplier < 1, "awareness_max_multiplier must be >= 1"),
    (
        lambda c: not MIN_DATAGRAM_BYTES <= c.udp_payload <= MAX_DATAGRAM_BYTES,
        f"udp_payload must be between {MIN_DATAGRAM_BYTES} and {MAX_DATAGRAM_BYTES} bytes",
    ),
    (
        lambda c: len(c.label.encode()) > MAX_LABEL_BYTES,
        f"label must be at most {MAX_LABEL_BYTES} bytes of UTF-8",
    ),
    (
        # A replayed packet older than the reclaim time could revive news about a
        # member everyone has forgotten.
        lambda c: not 0 < c.replay_window <= max(c.dead_reclaim_time, 1.0),
        "replay_window must be > 0 and <= max(1, dead_reclaim_time)",
    ),
    (
        lambda c: c.dead_reclaim_time < 0 or c.gossip_to_the_dead_time < 0,
        "dead_reclaim_time and gossip_to_the_dead_time must be >= 0",
    ),
    (lambda c: c.state_delta_budget < 256, "state_delta_budget must be >= 256 bytes"),
    (
        lambda c: min(c.state_max_key_bytes, c.state_max_value_bytes, c.state_max_bytes) < 1,
        "state size limits must be >= 1",
    ),
    (
        lambda c: c.request_rate <= 0 or c.request_burst < 1,
        "request_rate must be > 0 and request_burst >= 1",
    ),
    (lambda c: c.event_buffer < 1, "event_buffer must be >= 1"),
    (lambda c: c.query_timeout_mult < 1, "query_timeout_mult must be >= 1"),
)
"""The other field rules, in the order they are checked: (is broken, message)."""
