"""The SWIM protocol core: one node's whole protocol as a state machine with no I/O.

The world reaches it through a few calls, in the style of h11 and foca:

- input: `handle_packet(now, source, data)`, `handle_timer(timer, now)` when
  `next_deadline(timer)` has come, `handle_stream_result(ticket, ok, now)` after
  sending what it asked to go over a stream;
- commands: `join`, `leave`, `set_state`, `delete_state`, `set_seeds`,
  `start_query`, `register_query_handler`;
- output: `take_output()`, one `Output` with datagrams, stream sends, membership
  events and signals (a join answered, a leave finished, a query ended).

Every period, phase and deadline is a timer held as data, grouped by concern
(`contract.Timer`), so a driver can give each concern a task that sleeps until its
deadline; nothing else decides when anything happens. All randomness comes from the
injected `random.Random`, so a seed reproduces a run. The mechanisms live beside
this module, one each: `membership` (table and rules), `probing`, `gossip`,
`antientropy` (state, push-pull, seeds, joins) and `queries`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .. import counters
from ..net.transport import Address
from . import codec
from .antientropy import AntiEntropy
from .appstate import Digest
from .broadcasts import BroadcastQueue
from .config import Config
from .contract import (
    Output,
    QueryFinished,
    QueryHandlerFailed,
    Signal,
    Timer,
)
from .events import MemberEvent
from .gossip import Gossip
from .member import Member, MemberState
from .membership import Membership
from .messages import (
    Ack,
    Alive,
    Dead,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    Query,
    QueryAck,
    QueryResponse,
    StateAck,
    StateDigests,
    StateSyn,
    Suspect,
    Sync,
    UserEventMessage,
)
from .probing import Prober
from .queries import Queries, QueryFilters, QueryHandler, QueryProgress, QueryResult
from .ratelimit import RateLimiter
from .userevents import UserEvents

SUSPECT = MemberState.SUSPECT
_NEWS = (Alive, Suspect, Dead, Left)


class SwimCore:
    """One node's view of the cluster and the rules that change it."""

    def __init__(
        self,
        config: Config,
        *,
        now: float,
        rng: random.Random,
        incarnation: int = 0,
        generation: int = 0,
        framing_overhead: int = 0,
    ) -> None:
        """`framing_overhead` is what a layer below (encryption) adds to every
        datagram, so the core keeps datagrams within `config.udp_payload` after it."""
        self.config = config
        self.name = config.name
        self.address = config.advertise_address
        self.rng = rng
        self.stats: Counter[str] = Counter()
        self.broadcasts = BroadcastQueue(config.retransmit_mult)
        self.payload_budget = config.udp_payload - framing_overhead
        self._limiter = RateLimiter(config.request_rate, config.request_burst)
        self._out = Output()
        self._tickets = 0
        self.prober = Prober(self, now)
        self.membership = Membership(self, incarnation, now)
        self.anti_entropy = AntiEntropy(self, generation, now)
        self.gossip = Gossip(self, now)
        self.queries = Queries(self)
        self.user_events = UserEvents(self)

    # ----- views -------------------------------------------------------------------

    @property
    def local_member(self) -> Member:
        """Our own record."""
        return self.membership.table[self.name]

    @property
    def incarnation(self) -> int:
        """Our incarnation: only we raise it, to refute news of our failure."""
        return self.membership.incarnation

    def members(self) -> list[Member]:
        """Every known member, us included, dead and left ones until reclaimed."""
        return list(self.membership.table.values())

    def preload(self, members: Iterable[Member]) -> None:
        """Start from a converged cluster: hold `members` (others, alive) as a finished
        join leaves this node once the join's news has died down, with nothing queued
        and no events. For simulations: N nodes joining is N² news, too slow to
        simulate at ten thousand nodes (docs/scale.md). Members are immutable, so
        every node may be given the same records. `ValueError` if this node already
        knows another member, or `members` holds us, a member twice or a dead one."""
        self.membership.preload(list(members))

    def member(self, name: str) -> Member | None:
        """The record for `name`, if known."""
        return self.membership.table.get(name)

    @property
    def n_live(self) -> int:
        """Live members (alive or suspect), counting us."""
        return self.membership.n_live

    @property
    def active_suspicions(self) -> int:
        """Suspicion timers currently running."""
        return self.membership.active_suspicions

    def stats_snapshot(self) -> dict[str, int]:
        """Protocol counters and the gauges of `counters.GAUGES`."""
        out = dict(self.stats)
        out[counters.AWARENESS] = self.prober.awareness.score
        out[counters.MEMBERS_LIVE] = self.n_live
        out[counters.MEMBERS_KNOWN] = len(self.membership.table)
        out[counters.SUSPICIONS_ACTIVE] = self.active_suspicions
        out[counters.INCARNATION] = self.incarnation
        out[counters.BROADCAST_QUEUE_DEPTH] = len(self.broadcasts)
        return out

    def state_digest(self, name: str) -> Digest | None:
        """The anti-entropy digest we hold for `name`'s application state."""
        return self.anti_entropy.state.digest(name)

    def members_fingerprint(self) -> int:
        """A 64-bit fingerprint of our membership view and recent user events, as
        state rounds carry it (see `AntiEntropy.fingerprint`)."""
        return self.anti_entropy.fingerprint()

    def push_pull_interval(self) -> float:
        """memberlist's pushPullScale: beyond 32 members, slow full syncs down
        logarithmically so their total cost stays flat."""
        n = self.n_live
        base = self.config.push_pull_interval
        if n <= 32:
            return base
        return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    # ----- the contract: input -------------------------------------------------------

    def handle_packet(
        self, now: float, source: Address, data: bytes, reliable: bool = False
    ) -> None:
        """Process one received packet (a datagram, or one message from a stream).
        Bad input is counted and dropped."""
        stats = self.stats
        stats[counters.PACKETS_RECEIVED] += 1
        stats[counters.BYTES_RECEIVED] += len(data)
        if not reliable and len(data) > codec.MAX_DATAGRAM_BYTES:
            stats[counters.DROPPED_OVERSIZE] += 1
            return
        known = self.membership.known_news
        messages: list[tuple[Message, int]] = []
        known_parts: list[bytes] = []
        try:
            # Epidemic gossip delivers the same news many times over. News identical
            # to what we last applied about a member changes nothing, so it is not
            # even decoded; everything else is decoded in full before any of it is
            # acted on, so a packet is taken whole or not at all.
            for part in codec.split_packet(data):
                if part in known:
                    known_parts.append(part)
                else:
                    messages.append((codec.decode_message(part), len(part)))
        except codec.DecodeError:
            stats[counters.DROPPED_MALFORMED] += 1
            return
        if known_parts:
            stats[counters.RECEIVED_KNOWN_NEWS] += len(known_parts)
            # Byte-identical to encodings of ours (a peer's encoding need not be
            # minimal, which is why only known parts are counted by their tag byte).
            codec.count_parts(stats, known_parts, codec.RECEIVED_KEYS)
        for msg, size in messages:
            count_key, bytes_key = codec.received_keys(msg)
            stats[count_key] += 1
            stats[bytes_key] += size
            self._dispatch(source, msg, reliable, now)

    def _dispatch(self, source: Address, msg: Message, reliable: bool, now: float) -> None:
        if isinstance(msg, _NEWS):
            # The bulk of what arrives: gossip about members.
            self.membership.apply(msg, now)
            return
        match msg:
            case Ping():
                self._on_ping(source, msg)
            case Ack():
                self.prober.on_ack(msg.seq, now)
            case Nack():
                self.prober.on_nack(msg.seq, msg.sender)
            case PingReq():
                self.prober.relay(source, msg, now)
            case StateSyn():
                self.anti_entropy.on_state_syn(source, msg, now)
            case StateDigests():
                self.anti_entropy.on_state_digests(source, msg, now)
            case StateAck():
                self.anti_entropy.on_state_ack(source, msg, now)
            case Sync():
                self.anti_entropy.on_sync(source, msg, reliable, now)
            case Query() | QueryAck() | QueryResponse() | UserEventMessage():
                self._on_operator_message(msg, now)

    def _on_operator_message(
        self, msg: Query | QueryAck | QueryResponse | UserEventMessage, now: float
    ) -> None:
        # What operators send through the cluster: queries, acks and answers, events.
        if isinstance(msg, Query):
            self.queries.receive(msg, now)
        elif isinstance(msg, UserEventMessage):
            self.user_events.receive(msg)
        else:
            self.queries.response(msg)

    def _on_ping(self, source: Address, ping: Ping) -> None:
        if ping.target != self.name:
            # Someone else used to live at this address (a restart under another
            # name); an ack would vouch for the wrong member.
            self.stats[counters.DROPPED_MISDIRECTED] += 1
            return
        self.send(source, self.tell_suspect(ping.sender, Ack(ping.seq, self.name)))

    def next_deadline(self, timer: Timer | None = None) -> float:
        """When `handle_timer(timer, ...)` should next be called (`math.inf`: not
        until some input changes it). Without `timer`, the earliest of all."""
        deadlines = self.next_deadlines()
        return min(deadlines) if timer is None else deadlines[timer]

    def next_deadlines(self) -> tuple[float, float, float]:
        """`next_deadline(timer)` for every `Timer` at once, indexed by it: drivers
        move all their deadlines after each call into the core."""
        return (
            min(self.prober.next_deadline(), self.membership.next_deadline()),
            min(self.gossip.next_deadline(), self.queries.next_deadline()),
            self.anti_entropy.next_deadline(),
        )

    def handle_timer(self, timer: Timer | None, now: float) -> None:
        """Run whatever of `timer`'s concern is due at `now` (all concerns if None).
        Calling it early, or twice, does nothing extra."""
        if timer is None:
            for t in Timer:
                self.handle_timer(t, now)
        elif timer is Timer.PROBE:
            self.membership.run_timers(now)
            self.prober.run_timers(now)
        elif timer is Timer.GOSSIP:
            self.queries.run_timers(now)
            self.gossip.run_timers(now)
        else:
            self.anti_entropy.run_timers(now)

    def handle_stream_result(self, ticket: int, ok: bool, now: float) -> None:
        """Report how a stream send from `Output.streams` went."""
        if not self.anti_entropy.stream_result(ticket, ok, now) and not ok:
            self.stats[counters.RELIABLE_SEND_FAILURES] += 1

    # ----- the contract: output ------------------------------------------------------

    def take_output(self) -> Output:
        """Everything to send, events and signals since the last call."""
        self.gossip.check_leave()
        out, self._out = self._out, Output()
        return out

    # ----- the contract: commands ----------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> int | None:
        """Exchange full state with each of `seeds`; the outcome comes as a
        `JoinFinished` signal with the returned id. None if there is nobody to ask
        (only our own address)."""
        return self.anti_entropy.join(seeds, now)

    def leave(self, now: float) -> None:
        """Start a graceful leave: stop probing, tell every live member directly with
        one datagram each, and broadcast a `Left` about us. A `LeaveFinished` signal
        says when it has been sent its full count (or `leave_timeout` passed)."""
        if self.membership.leaving:
            return
        left = self.membership.leave(now)
        # Gossip alone leaves a member that every round happened to miss waiting for
        # a push-pull; a datagram to each is cheap once, and the gossip, which
        # keeps its full transmit count, covers the ones lost.
        self.send_direct(left, self.membership.peers)
        self.gossip.leave_started(now)

    @property
    def leaving(self) -> bool:
        """Whether `leave` has been called."""
        return self.membership.leaving

    def set_state(self, key: str, value: Any, now: float) -> None:
        """Set one of our application-state keys (`ValueError` if not allowed)."""
        self.anti_entropy.set(key, value, now)

    def delete_state(self, key: str, now: float) -> bool:
        """Delete one of our keys; false if it was not set."""
        return self.anti_entropy.delete(key, now)

    def set_seeds(self, found: Iterable[Address]) -> None:
        """Seeds found by a seed source, used beside `config.seeds`."""
        self.anti_entropy.set_seeds(found)

    def send_event(self, name: str, payload: bytes, coalesce: bool, now: float) -> int:
        """Send a user event to every member, us included (each delivers it once, as
        a `UserEvent`); returns its Lamport time. Raises `ValueError` over the size
        limits (`codec.MAX_EVENT_NAME_BYTES`, `codec.MAX_EVENT_PAYLOAD`) or the rate
        limit (`userevents.RATE_LIMIT`)."""
        return self.user_events.send(name, payload, coalesce, now)

    def start_query(
        self,
        kind: str,
        payload: bytes,
        timeout: float | None,
        now: float,
        filters: QueryFilters = ((), ()),
    ) -> int:
        """Ask every member the `(names, state)` filters select (us included);
        returns the query's id. `QueryProgress` signals each ack and answer as it
        comes, and a `QueryFinished` signal carries them all. `timeout` defaults to
        `queries.default_query_timeout`. Raises `ValueError` if `kind`, `payload` or
        the filters break the codec's limits."""
        return self.queries.start(kind, payload, timeout, now, filters)

    def answer_query(self, query: Query, payload: bytes) -> None:
        """Answer `query` later, for a handler that returned None (its answer takes
        time, as an agent's event handler does). Raises `ValueError` over 64 KiB."""
        self.queries.answer(query, payload)

    def register_query_handler(self, kind: str, handler: QueryHandler | None) -> None:
        """Answer queries of `kind` with `handler` (None removes it); the handler of
        kind `"*"` answers kinds without their own. A member with no handler for a
        kind acks without one, and the origin expects no answer from it."""
        if handler is None:
            self.queries.handlers.pop(kind, None)
        else:
            self.queries.handlers[kind] = handler

    # ----- for the mechanisms -----------------------------------------------------------

    def emit(self, event: MemberEvent) -> None:
        self._out.events.append(event)

    def signal(self, signal: Signal) -> None:
        self._out.signals.append(signal)

    def signal_query_finished(self, result: QueryResult) -> None:
        self.signal(QueryFinished(result))

    def signal_query_progress(self, progress: QueryProgress) -> None:
        self.signal(progress)

    def signal_query_handler_failed(self, kind: str, error: BaseException) -> None:
        self.signal(QueryHandlerFailed(kind, error))

    def random_peer(self) -> Member | None:
        """A random live member other than us, or None."""
        picked = self.membership.peers.sample(self.rng, 1)
        return self.membership.table[picked[0]] if picked else None

    def allow(self, source: Address, now: float) -> bool:
        """Whether to serve a request that makes us send more than we got: they are
        rate-limited per source host (a stream's source port is ephemeral, so the
        host is the identity)."""
        if self._limiter.allow(source[0], now):
            return True
        self.stats[counters.DROPPED_RATE_LIMITED] += 1
        return False

    def tell_suspect(self, name: str, reply: Ack | Nack) -> list[bytes]:
        """`reply` for `name`, with the suspicion about it if it is suspect: the buddy
        system run backwards, so a suspect that probes us, directly or through us,
        learns of it even if the rumour already ran out of retransmissions while it
        was unreachable."""
        parts = [codec.encode_message(reply)]
        member = self.membership.table.get(name)
        if member is not None and member.state is SUSPECT and self.config.lifeguard_buddy:
            parts.append(self.suspect_message(member))
        return parts

    def suspect_message(self, member: Member) -> bytes:
        return codec.encode_message(Suspect(member.name, member.incarnation, self.name))

    def reply_address(self, sender: str, source: Address) -> Address:
        """Where to answer `sender`: over a stream the source is an ephemeral port;
        the member's own address is where it listens."""
        member = self.membership.table.get(sender)
        return member.address if member is not None else source

    def send_direct(self, data: bytes, names: Iterable[str]) -> None:
        """One datagram carrying only `data` to each of `names` (news about us that
        should not wait for gossip)."""
        table = self.membership.table
        for name in names:
            self.send(table[name].address, [data], piggyback=False)

    def send(
        self,
        dest: Address,
        parts: list[bytes],
        *,
        reliable: bool = False,
        piggyback: bool = True,
    ) -> int:
        """Queue `parts` for `dest`, in a datagram with broadcasts piggybacked in the
        room left, or over a stream if they do not fit one. Returns the stream
        ticket, or 0 for a datagram."""
        if not reliable:
            used = sum(map(len, parts))
            if used + codec.packet_overhead(len(parts)) > self.payload_budget:
                # Never an oversized datagram: the stream carries it whole.
                reliable = True
        if not reliable and piggyback:
            if self.broadcasts.size:
                # Reserve the larger array header up front; piggyback what fits.
                budget = self.payload_budget - used - codec.packet_overhead(16)
                room = codec.MAX_MESSAGES_PER_PACKET - len(parts)
                parts = parts + self.broadcasts.take(budget, self.n_live, max_items=room)
            if not parts:
                return 0
        data = codec.encode_packet(parts)
        stats = self.stats
        stats[counters.PACKETS_SENT] += 1
        stats[counters.BYTES_SENT] += len(data)
        codec.count_parts(stats, parts, codec.SENT_KEYS)
        if not reliable:
            self._out.datagrams.append((dest, data))
            return 0
        self._tickets += 1
        self._out.streams.append((self._tickets, dest, data))
        return self._tickets
