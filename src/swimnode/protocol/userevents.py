"""User events: a small named event for every member, delivered once each (Serf's
user events).

Each event carries a Lamport time. The sender stamps it with its clock and ticks;
every member that receives one moves its clock past it, so an event sent after
another was seen has a later time. A member remembers which events it delivered at
each of the last `EVENT_WINDOW` times and drops anything older than that window (it
could not tell an old copy from a new event), as Serf's event buffer does. Events
spread like membership news, from the broadcast queue, and the sender also tells up
to `DIRECT_FANOUT` members directly. Gossip reaches every member only with high
probability, so each push-pull also carries the latest `codec.MAX_SYNC_EVENTS` events known
here (Serf's push-pull carries its event buffer): a member that lost every copy gets
the event at its next sync, and delivers it once like any copy. Which events those
are depends only on which events a member has seen, not on the order they came in,
so members that have seen the same ones hold the same `digest`, and a state round
finds one that has not (`antientropy`).
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from typing import TYPE_CHECKING

from .. import counters
from . import codec
from .events import UserEvent
from .hash64 import hash64
from .member import Member, MemberState
from .messages import UserEventMessage

if TYPE_CHECKING:
    from .core import SwimCore

EVENT_WINDOW = 512
"""Lamport times remembered for deduplication (Serf's EventBuffer default)."""
MAX_PER_TIME = 64
"""Distinct events remembered at one Lamport time; more (a member flooding) are
dropped as duplicates, so memory stays bounded."""
DIRECT_FANOUT = 16
"""Members the sender also tells directly, one datagram each: gossip alone sends an
event only its retransmit count of times, which in a small cluster is a handful, and
events are rare enough for a few datagrams more."""
RATE_LIMIT = 10
RATE_WINDOW = 1.0
"""At most `RATE_LIMIT` events sent per `RATE_WINDOW` seconds from one node: they
travel in every gossip round, and a script in a loop should not crowd out the
membership news."""


class UserEvents:
    """The Lamport clock, the events seen, and sending."""

    def __init__(self, core: SwimCore) -> None:
        self._core = core
        self.clock = 0
        """The next Lamport time this node would stamp."""
        self._seen: dict[int, set[tuple[str, str, bytes]]] = {}
        self._sent: deque[float] = deque()
        self._recent: list[UserEventMessage] = []  # the latest known, by `_order`
        self._digest = 0  # of `_recent`, kept up to date on every change
        self._synced = False

    def send(self, name: str, payload: bytes, coalesce: bool, now: float) -> int:
        """Send a user event to every member, us included; returns its Lamport time.
        Raises `ValueError` (one line) over the size or rate limits."""
        size = len(name.encode())
        if not 0 < size <= codec.MAX_EVENT_NAME_BYTES:
            raise ValueError(f"user event name must be 1..{codec.MAX_EVENT_NAME_BYTES} bytes")
        if len(payload) > codec.MAX_EVENT_PAYLOAD:
            limit = codec.MAX_EVENT_PAYLOAD
            raise ValueError(f"user event payload is {len(payload)} bytes; the limit is {limit}")
        sent = self._sent
        while sent and sent[0] <= now - RATE_WINDOW:
            sent.popleft()
        if len(sent) >= RATE_LIMIT:
            wait = sent[0] + RATE_WINDOW - now
            raise ValueError(
                f"at most {RATE_LIMIT} user events per {RATE_WINDOW:g} s; try again in {wait:.2f} s"
            )
        sent.append(now)
        core = self._core
        message = UserEventMessage(self.clock, core.name, core.address, name, payload, coalesce)
        core.stats[counters.USER_EVENTS_SENT] += 1
        self.receive(message)
        peers = core.membership.peers.sample(core.rng, DIRECT_FANOUT)
        core.send_direct(codec.encode_message(message), peers)
        return message.ltime

    def receive(self, message: UserEventMessage) -> None:
        """A copy arrived (or we sent it): deliver and pass it on, once per event."""
        if self._first_copy(message):
            self._deliver(message)

    def recent(self) -> tuple[UserEventMessage, ...]:
        """The latest events known here that a receiver would not refuse as too old,
        oldest first, for a push-pull to carry."""
        return tuple(self._recent)

    def digest(self) -> int:
        """A 64-bit fingerprint of `recent()` (0 when there are none): equal on
        members that know the same events. Every state round reads it, so it is
        kept up to date rather than computed."""
        return self._digest

    def merge_sync(self, events: tuple[UserEventMessage, ...], join_reply: bool) -> None:
        """The events a push-pull carried. Those in the answers to a node's first
        join happened before it was a member: as Serf does by default, it records
        them (so later copies are duplicates, and its clock moves past them) but
        delivers none. Once it has had any other sync, a join (after a partition)
        delivers what it missed."""
        replay = self._synced or not join_reply
        self._synced |= not join_reply
        for message in events:
            if self._first_copy(message):
                if replay:
                    self._deliver(message)
                else:
                    self._remember(message)

    def _first_copy(self, message: UserEventMessage) -> bool:
        core = self._core
        ltime = message.ltime
        # Lamport: whatever we send from now on comes after this event.
        self.clock = max(self.clock, ltime + 1)
        recent = self._recent
        while recent and recent[0].ltime < self.clock - EVENT_WINDOW:
            self._drop_oldest()  # a receiver would refuse it as too old
        if ltime < self.clock - EVENT_WINDOW:
            core.stats[counters.USER_EVENTS_TOO_OLD] += 1
            return False
        seen = self._seen.setdefault(ltime, set())
        key = (message.origin, message.name, message.payload)
        if key in seen or len(seen) >= MAX_PER_TIME:
            core.stats[counters.USER_EVENTS_DUPLICATE] += 1
            return False
        seen.add(key)
        self._forget_before(self.clock - EVENT_WINDOW)
        return True

    def _deliver(self, message: UserEventMessage) -> None:
        core = self._core
        ltime = message.ltime
        core.stats[counters.USER_EVENTS_RECEIVED] += 1
        self._remember(message)
        core.broadcasts.queue(
            ("user", message.origin, ltime, message.name, message.payload),
            codec.encode_message(message),
        )
        sender = core.member(message.origin) or Member(
            message.origin, message.origin_address, 0, MemberState.ALIVE, 0.0
        )
        core.emit(UserEvent(sender, message.name, message.payload, ltime, message.coalesce))

    def _remember(self, message: UserEventMessage) -> None:
        # Keep the latest by Lamport time (ties by content): the same set of events
        # seen in any order leaves the same buffer.
        insort(self._recent, message, key=_order)
        self._digest ^= _event_hash(message)
        if len(self._recent) > codec.MAX_SYNC_EVENTS:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        self._digest ^= _event_hash(self._recent.pop(0))

    def _forget_before(self, oldest: int) -> None:
        # Times arrive roughly in order, so the stale ones are few at a time.
        if len(self._seen) > EVENT_WINDOW:
            for stale in [t for t in self._seen if t < oldest]:
                del self._seen[stale]


def _order(message: UserEventMessage) -> tuple[int, str, str, bytes]:
    return (message.ltime, message.origin, message.name, message.payload)


def _event_hash(m: UserEventMessage) -> int:
    return hash64(b"%d\0%s\0%s\0%s" % (m.ltime, m.origin.encode(), m.name.encode(), m.payload))
