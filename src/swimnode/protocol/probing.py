"""Failure detection's probe cycle (SWIM §3-4) with Lifeguard's local health.

Each protocol period the node pings the next member of a shuffled round-robin order;
if no ack comes within the probe timeout it asks `indirect_checks` members to try
(ping-req); if the period ends unanswered the member becomes suspect. The node also
probes on behalf of others (relays) and answers them with an ack or a nack. Every
phase is a deadline held here; `SwimCore.handle_timer(Timer.PROBE, now)` runs what is
due.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import counters
from . import codec
from .awareness import Awareness
from .member import Member, MemberState
from .messages import Ack, Nack, Ping, PingReq, Suspect

if TYPE_CHECKING:
    from ..net.transport import Address
    from .core import SwimCore

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT

_MAX_RELAY_TIMEOUT = 30.0
"""Cap on the wait a ping-req may ask of a helper, so a forged one holds little."""


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    address: Address
    incarnation: int
    timeout_at: float  # when it turns indirect, unless acked
    ends_at: float  # the end of its period
    sent_at: float
    acked: bool = False
    indirect: bool = False
    helpers: frozenset[str] = frozenset()  # asked to probe; only their nacks count
    nacks: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    """A probe this node makes on behalf of a ping-req sender."""

    requester: Address
    requester_name: str
    requester_seq: int
    target: str


class Prober:
    """The probe schedule, the probe in flight, relays, and local health."""

    def __init__(self, core: SwimCore, now: float) -> None:
        self._core = core
        config = core.config
        self.awareness = Awareness(
            config.awareness_max_multiplier, enabled=config.lifeguard_awareness
        )
        self._order: list[str] = []
        # The names in `_order`, as a dict: a set of ten thousand names costs nearly
        # twice a dict's memory, per node (docs/scale.md).
        self._in_order: dict[str, None] = {}
        self._index = 0
        self._seq = core.rng.randrange(1 << 31)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._relay_deadlines: list[tuple[float, int]] = []  # a heap
        # Stagger the first period so nodes started together do not probe in lockstep.
        self._tick = now + core.rng.uniform(0, config.probe_interval)

    def interval(self) -> float:
        """The current protocol period, stretched by local health."""
        return self.awareness.scale(self._core.config.probe_interval)

    def timeout(self) -> float:
        """How long to wait for a direct ack, stretched by local health."""
        return self.awareness.scale(self._core.config.probe_timeout)

    # ----- timers ------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The next probe phase or relay deadline. Once the ack is in, the probe
        timeout needs no wakeup: the period's end is next."""
        probe = self._probe
        phase = self._tick
        if probe is not None and not probe.acked and not probe.indirect:
            phase = probe.timeout_at
        relay = self._relay_deadlines[0][0] if self._relay_deadlines else math.inf
        return min(phase, relay)

    def run_timers(self, now: float) -> None:
        """Run the probe phases and relay deadlines that are due."""
        self._expire_relays(now)
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect and now >= probe.timeout_at:
            self._probe_indirect(probe, now)
        if now >= self._tick:
            if probe is not None:
                self._probe = None
                self._finish(probe, now)
            interval, timeout = self.interval(), self.timeout()
            self._tick = now + interval
            self._start(now, timeout, interval)

    def _expire_relays(self, now: float) -> None:
        # Relayed probes that got no ack answer their requester with a nack.
        core = self._core
        while self._relay_deadlines and self._relay_deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._relay_deadlines)
            relay = self._relays.pop(seq, None)
            if relay is not None and core.config.lifeguard_awareness:
                core.send(
                    relay.requester,
                    core.tell_suspect(relay.requester_name, Nack(relay.requester_seq, core.name)),
                )

    # ----- our probes ----------------------------------------------------------------

    def _start(self, now: float, timeout: float, interval: float) -> None:
        """Begin this period's probe: ping the next member in the shuffled
        round-robin order (with the chores that are nearly due riding along)."""
        core = self._core
        if core.membership.leaving:
            return
        target = self._next_target()
        # Chores nearly due run now, on this wakeup, even with nobody to probe; the
        # state round's opening message rides in the ping's datagram, so idle nodes
        # trade one packet a period instead of two.
        syn = core.anti_entropy.ripe_chores(now, target)
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(
            seq,
            target.name,
            target.address,
            target.incarnation,
            now + timeout,
            now + interval,
            now,
        )
        parts = [codec.encode_message(Ping(seq, target.name, core.name))]
        if target.state is SUSPECT and core.config.lifeguard_buddy:
            # Lifeguard's buddy system: tell the suspect directly so it refutes now
            # instead of waiting for the rumour to reach it. It goes first so the
            # refutation is already queued when the ack is built, and rides on it.
            parts.insert(0, core.suspect_message(target))
        if syn is not None:
            parts.append(syn)
        core.stats[counters.PROBES] += 1
        core.send(target.address, parts)

    def _probe_indirect(self, probe: _Probe, now: float) -> None:
        """The direct probe timed out: ask `indirect_checks` members to try."""
        core = self._core
        probe.indirect = True
        helpers = core.membership.peers.sample(
            core.rng, core.config.indirect_checks, exclude=(probe.target,)
        )
        # The helpers' nacks must land before this period ends to count (Lifeguard), so
        # they get most, not all, of the time that is left.
        left = probe.ends_at - now
        timeout_ms = max(1, int(left * 0.8 * 1000))
        msg = codec.encode_message(
            PingReq(probe.seq, probe.target, probe.address, core.name, timeout_ms)
        )
        table = core.membership.table
        for name in helpers:
            core.send(table[name].address, [msg])
        core.stats[counters.INDIRECT_PROBES] += len(helpers)
        if core.config.lifeguard_awareness:
            probe.helpers = frozenset(helpers)

    def _finish(self, probe: _Probe, now: float) -> None:
        """The protocol period ended: an unanswered probe makes the target suspect."""
        if probe.acked:
            self.awareness.apply(-1)
            return
        core = self._core
        core.stats[counters.PROBE_FAILURES] += 1
        # Lifeguard: missing nacks mean our own messages are not getting through.
        if probe.helpers:
            self.awareness.apply(len(probe.helpers - probe.nacks))
        else:
            self.awareness.apply(1)
        target = core.membership.table.get(probe.target)
        # A probe says nothing about a newer incarnation (a restart or refutation
        # that arrived while it ran), so only the probed incarnation is suspected.
        if target is not None and target.is_live and target.incarnation == probe.incarnation:
            if target.state is ALIVE:
                core.stats[counters.SUSPICIONS_RAISED] += 1
            core.membership.apply(Suspect(target.name, target.incarnation, core.name), now)

    def add_target(self, name: str) -> None:
        """A member became live: give it a place in this pass."""
        if name in self._in_order:
            return  # a revived member still has its place in this pass
        self._in_order[name] = None
        # SWIM §4.3: a random position keeps the detection-time bound for newcomers.
        # (random() rather than randint: this runs once per member per node at join.)
        pos = int(self._core.rng.random() * (len(self._order) + 1))
        self._order.insert(pos, name)
        if pos < self._index:
            self._index += 1

    def preload(self, names: list[str]) -> None:
        """Start a pass over `names`, in a random order (see `SwimCore.preload`)."""
        # Sorting by random keys is a uniform shuffle too, and at ten thousand names
        # per node several times faster than `shuffle`'s draw per swap.
        draw = self._core.rng.random
        keyed = sorted(zip([draw() for _ in names], names, strict=True))
        order = [name for _, name in keyed]
        self._order = order
        self._in_order = dict.fromkeys(order)
        self._index = 0

    def _next_target(self) -> Member | None:
        membership = self._core.membership
        peers = membership.peers
        checked = 0
        while checked <= len(self._order):
            if self._index >= len(self._order):
                # SWIM §4.3: a fresh random order each pass bounds the time until
                # every member is probed.
                self._order = [n for n in membership.table if n in peers]
                self._in_order = dict.fromkeys(self._order)
                self._core.rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    return None
            name = self._order[self._index]
            self._index += 1
            checked += 1
            if name in peers:
                return membership.table[name]
        return None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # ----- answers -----------------------------------------------------------------

    def on_ack(self, seq: int, now: float) -> None:
        """An ack arrived: for our probe, or for one we relay."""
        probe = self._probe
        if probe is not None and probe.seq == seq:
            if not probe.acked and not probe.indirect:
                self._count_rtt(now - probe.sent_at)
            probe.acked = True
            return
        relay = self._relays.pop(seq, None)
        core = self._core
        if relay is not None:
            core.send(
                relay.requester,
                core.tell_suspect(relay.requester_name, Ack(relay.requester_seq, relay.target)),
            )
            return
        core.stats[counters.STALE_ACKS] += 1

    def _count_rtt(self, rtt: float) -> None:
        # Counters rather than a histogram object: stats() stays a dict of ints that
        # every driver already reports, and the metrics exporter rebuilds the
        # histogram from them (swimnode.metrics).
        stats = self._core.stats
        index = bisect.bisect_left(counters.PROBE_RTT_BOUNDS_MS, rtt * 1000)
        stats[counters.PROBE_RTT_BUCKETS[index]] += 1
        stats[counters.PROBE_RTT_SUM_US] += round(rtt * 1_000_000)

    def on_nack(self, seq: int, sender: str) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and sender in probe.helpers:
            probe.nacks.add(sender)

    def relay(self, source: Address, request: PingReq, now: float) -> None:
        """Probe `request.target` for the member that asked (`source`), unless that
        host is over its rate limit."""
        core = self._core
        if not core.allow(source, now):
            return
        wanted = request.timeout_ms / 1000 if request.timeout_ms else core.config.probe_timeout
        seq = self._next_seq()
        self._relays[seq] = _Relay(source, request.sender, request.seq, request.target)
        heapq.heappush(self._relay_deadlines, (now + min(wanted, _MAX_RELAY_TIMEOUT), seq))
        core.send(
            request.target_address,
            [codec.encode_message(Ping(seq, request.target, core.name))],
        )
