"""The SWIM protocol core: a state machine with no I/O.

`SwimCore` takes decoded input and the current time, updates the membership table, and
queues what to send and which events happened; the caller (the Trio shell in `node.py`,
or a test) moves bytes and reads events with `take_output()`. Timers are data: the
caller asks `next_timer()` when to call `run_timers()` next, and `next_chore()` when
periodic chores (anti-entropy, reaping) are due at the latest; `start_probe` runs those
that are nearly due early, on the same wakeup. All randomness comes from
the injected `random.Random`, so a seed reproduces a run.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ..net.transport import Address
from . import codec
from .appstate import StateLimits, StateStore
from .awareness import Awareness
from .broadcasts import BroadcastQueue, retransmit_limit
from .config import Config
from .events import (
    MemberAlive,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRejoined,
    MemberSuspected,
    MemberUpdated,
)
from .member import Member, MemberState, supersedes
from .messages import (
    Ack,
    Alive,
    Dead,
    Left,
    MemberRecord,
    MembershipNews,
    Message,
    Nack,
    Ping,
    PingReq,
    Query,
    QueryResponse,
    StateAck,
    StateDigests,
    StateSyn,
    Suspect,
    Sync,
)
from .periodic import Periodic
from .ratelimit import RateLimiter
from .suspicion import Suspicion, confirmations_needed, suspicion_bounds

ALIVE, SUSPECT, DEAD, LEFT = MemberState


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    address: Address
    incarnation: int
    sent_at: float
    ends_at: float
    acked: bool = False
    helpers: frozenset[str] = frozenset()  # asked to probe; only their nacks count
    nacks: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    """A probe this node makes on behalf of a ping-req sender."""

    requester: Address
    requester_name: str
    requester_seq: int
    target: str
    deadline: float


class _NameSet:
    """A set of names with O(1) add/remove and O(k) random sampling."""

    __slots__ = ("_index", "_names")

    def __init__(self) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def add(self, name: str) -> None:
        if name not in self._index:
            self._index[name] = len(self._names)
            self._names.append(name)

    def discard(self, name: str) -> None:
        i = self._index.pop(name, None)
        if i is None:
            return
        last = self._names.pop()
        if i < len(self._names):
            self._names[i] = last
            self._index[last] = i

    def sample(self, rng: random.Random, k: int, exclude: tuple[str, ...] = ()) -> list[str]:
        n = len(self._names)
        want = min(k + len(exclude), n)
        picked = rng.sample(self._names, want) if want else []
        return [p for p in picked if p not in exclude][:k]


def _live_hash(member: Member) -> int:
    """A member's share of the membership fingerprint: a hash of its name and
    incarnation while it is alive or suspect, else 0 (so records of departed members,
    which every node forgets at its own time, never make views differ)."""
    if member.state is not ALIVE and member.state is not SUSPECT:
        return 0
    raw = f"{member.name}\0{member.incarnation}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


class _MemberTable(dict[str, Member]):
    """The member records, and the XOR of their `_live_hash`es kept up to date on
    every write, so reading the membership fingerprint costs nothing. Only item
    assignment and `del` are used on it; other mutators would bypass the fingerprint."""

    __slots__ = ("fingerprint",)

    def __init__(self) -> None:
        super().__init__()
        self.fingerprint = 0

    def __setitem__(self, name: str, member: Member) -> None:
        old = self.get(name)
        if old is None:
            self.fingerprint ^= _live_hash(member)
        elif old.incarnation != member.incarnation or old.state is not member.state:
            self.fingerprint ^= _live_hash(old) ^ _live_hash(member)
        super().__setitem__(name, member)

    def __delitem__(self, name: str) -> None:
        self.fingerprint ^= _live_hash(self[name])
        super().__delitem__(name)


_MAX_RELAY_TIMEOUT = 30.0
"""Cap on the wait a ping-req may ask of a helper, so a forged one holds little."""

_QUERY_MEMORY = 60.0
"""Seconds a query id is remembered (at least) so late copies are not handled again."""
_MAX_SEEN_QUERIES = 4096
"""Cap on remembered query ids: they are few (operator commands), so this only
bounds what a misbehaving member could make us hold."""

_TIMER_SUSPICION = 0
_TIMER_RELAY = 1


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
        self.config = config
        self.name = config.name
        self.address = config.advertise_address
        self.incarnation = incarnation
        self.rng = rng
        self.awareness = Awareness(
            config.awareness_max_multiplier, enabled=config.lifeguard_awareness
        )
        self.broadcasts = BroadcastQueue(config.retransmit_mult)
        self.stats: Counter[str] = Counter()
        self._limiter = RateLimiter(config.request_rate, config.request_burst)
        # A layer below us (encryption) adds this much to every datagram.
        self.payload_budget = config.udp_payload - framing_overhead
        self.state = StateStore(
            self.name,
            generation,
            StateLimits(
                max_key_bytes=config.state_max_key_bytes,
                max_value_bytes=config.state_max_value_bytes,
                max_node_bytes=config.state_max_bytes,
                tombstone_ttl=config.state_tombstone_ttl,
            ),
        )
        self.leaving = False
        self.join_replies = 0
        self.acks_received = 0
        """Acks that answered one of our own probes, so far."""
        self.seeds: list[Address] = list(config.seeds)
        """Where anti-entropy rounds look for seeds; the shell refreshes it."""

        self._members = _MemberTable()
        self._members[self.name] = Member(self.name, self.address, incarnation, ALIVE, now)
        self._peers = _NameSet()  # live members other than us
        self._departed: dict[str, float] = {}  # dead/left member -> when
        self._probe_order: list[str] = []
        self._probe_set: set[str] = set()
        self._probe_index = 0
        self._seq = rng.randrange(1 << 31)
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, int, str]] = []
        self.timer_changed = False
        # Chores ride on a probe tick within half a probe period of their due time.
        # The first state round is at a random offset, so that nodes started
        # together do not all sync at once.
        slack = config.probe_interval / 2
        every = config.state_gossip_interval
        self._state_chore = Periodic(every, min(slack, every / 2), now + rng.uniform(0, every))
        every = max(1.0, config.dead_reclaim_time / 10)
        self._reap_chore = Periodic(every, min(slack, every / 2), now + every)

        # The encoding of the latest news applied about each member (see handle_packet).
        self._news_by_member: dict[str, bytes] = {}
        self._known_news: set[bytes] = set()

        # Queries: (origin, id) -> when we stop recognising copies, and what the
        # shell still has to handle (see `take_queries`).
        self._seen_queries: dict[tuple[str, int], float] = {}
        self._query_inbox: list[tuple[Query, float]] = []
        self._query_responses: list[QueryResponse] = []

        self._out: list[tuple[Address, bytes, bool]] = []
        self._events: list[MemberEvent] = []
        self._queue_news(Alive(self.name, self.address, incarnation))

    # ----- views -------------------------------------------------------------------

    @property
    def local_member(self) -> Member:
        """Our own record."""
        return self._members[self.name]

    def members(self) -> list[Member]:
        """Every known member, us included, dead and left ones until reclaimed."""
        return list(self._members.values())

    def member(self, name: str) -> Member | None:
        """The record for `name`, if known."""
        return self._members.get(name)

    @property
    def n_live(self) -> int:
        """Live members (alive or suspect), counting us."""
        return len(self._peers) + 1

    @property
    def active_suspicions(self) -> int:
        """Suspicion timers currently running."""
        return len(self._suspicions)

    def probe_interval(self) -> float:
        """The current protocol period, stretched by local health."""
        return self.awareness.scale(self.config.probe_interval)

    def probe_timeout(self) -> float:
        """How long to wait for a direct ack, stretched by local health."""
        return self.awareness.scale(self.config.probe_timeout)

    def push_pull_interval(self) -> float:
        """memberlist's pushPullScale: beyond 32 members, slow full syncs down
        logarithmically so their total cost stays flat."""
        n = self.n_live
        base = self.config.push_pull_interval
        if n <= 32:
            return base
        return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def take_events(self) -> list[MemberEvent]:
        """Events since the last call (leaving queued sends in place)."""
        events, self._events = self._events, []
        return events

    def take_output(self) -> tuple[list[tuple[Address, bytes, bool]], list[MemberEvent]]:
        """Everything to send (`(dest, data, reliable)`) and events since last call."""
        out, events = self._out, self._events
        self._out, self._events = [], []
        return out, events

    # ----- input -------------------------------------------------------------------

    def handle_packet(self, source: Address, data: bytes, reliable: bool, now: float) -> None:
        """Process one received packet. Bad input is counted and dropped."""
        self.stats["packets_received"] += 1
        self.stats["bytes_received"] += len(data)
        if not reliable and len(data) > codec.MAX_DATAGRAM_BYTES:
            self.stats["dropped_oversize"] += 1
            return
        stats, known = self.stats, self._known_news
        messages: list[Message] = []
        known_tags: list[int] = []
        try:
            # Epidemic gossip delivers the same news many times over. News identical
            # to what we last applied about a member changes nothing, so it is not
            # even decoded; everything else is decoded in full before any of it is
            # acted on, so a packet is taken whole or not at all.
            for part in codec.split_packet(data):
                if part in known:
                    # Byte-identical to an encoding of ours, so part[1] is its tag
                    # (codec.message_tag, inlined; a peer's encoding need not be
                    # minimal, which is why only known parts are read this way).
                    known_tags.append(part[1])
                else:
                    messages.append(codec.decode_message(part))
        except codec.DecodeError:
            stats["dropped_malformed"] += 1
            return
        if known_tags:
            stats["received_known_news"] += len(known_tags)
            for tag, count in Counter(known_tags).items():
                stats[codec.RECEIVED_KEYS[tag]] += count
        for msg in messages:
            stats[codec.received_key(msg)] += 1
            self._dispatch(source, msg, reliable, now)

    def _dispatch(self, source: Address, msg: Message, reliable: bool, now: float) -> None:
        match msg:
            case Ping(seq, target, sender):
                if target != self.name:
                    # Someone else used to live at this address (a restart under
                    # another name); an ack would vouch for the wrong member.
                    self.stats["dropped_misdirected"] += 1
                    return
                self._send(source, self._tell_suspect(sender, Ack(seq, self.name)))
            case Ack(seq, _):
                self._on_ack(seq, now)
            case Nack(seq, sender):
                probe = self._probes.get(seq)
                if probe is not None and sender in probe.helpers:
                    probe.nacks.add(sender)
            case PingReq(seq, target, target_address, _, timeout_ms):
                if not self._allow(source, now):
                    return
                timeout = timeout_ms / 1000 if timeout_ms else self.config.probe_timeout
                self._relay_probe(
                    source,
                    msg.sender,
                    seq,
                    target,
                    target_address,
                    min(timeout, _MAX_RELAY_TIMEOUT),
                    now,
                )
            case Alive() | Suspect() | Dead() | Left():
                self._apply(msg, now)
            case StateSyn(sender, summary, members):
                if summary != self.state.summary and self._allow(source, now):
                    digests = StateDigests(self.name, tuple(self.state.digests()))
                    self._send(self._reply_address(sender, source), [codec.encode_message(digests)])
                # With news in flight, views differ for a while by design; a peer
                # we do not hold as live, though, may be from another partition.
                if (
                    members
                    and members != self.members_fingerprint()
                    and (not self.broadcasts or sender not in self._peers)
                    and self._allow(source, now)
                ):
                    self.stats["membership_mismatches"] += 1
                    self._send(
                        self._reply_address(sender, source),
                        [self._sync_message(reply=False, join=False)],
                        reliable=True,
                    )
            case StateDigests(sender, digests):
                they_lack, we_lack = self.state.compare(digests, accept=self._members)
                deltas = self.state.deltas(they_lack, self.config.state_delta_budget)
                if deltas or we_lack:
                    ack = StateAck(self.name, tuple(deltas), tuple(we_lack))
                    self._send(self._reply_address(sender, source), [codec.encode_message(ack)])
            case StateAck(sender, deltas, requests):
                for delta in deltas:
                    if delta.name not in self._members:
                        self.stats["state_deltas_unknown_member"] += 1
                        continue
                    changed = self.state.apply(delta, now)
                    if changed:
                        self._state_changed(delta.name, changed)
                if requests:
                    answer = self.state.deltas(requests, self.config.state_delta_budget)
                    if answer:
                        ack = StateAck(self.name, tuple(answer), ())
                        self._send(self._reply_address(sender, source), [codec.encode_message(ack)])
            case Query():
                self._on_query(msg, now)
            case QueryResponse():
                self._query_responses.append(msg)
            case Sync(reply, join, records):
                if not reliable:
                    self.stats["dropped_unreliable_sync"] += 1
                    return
                self._merge_sync(records, now, old_news=reply and join)
                if reply:
                    if join:
                        self.join_replies += 1
                        self._announce_join(records[0].name if records else "")
                elif records and self._allow(source, now):
                    # The sender's own record comes first: answer at its address.
                    self._send(
                        records[0].address,
                        [self._sync_message(reply=True, join=join)],
                        reliable=True,
                    )

    def _allow(self, source: Address, now: float) -> bool:
        # Requests that make us send more than we got are rate-limited per source
        # host (a stream's source port is ephemeral, so the host is the identity).
        if self._limiter.allow(source[0], now):
            return True
        self.stats["dropped_rate_limited"] += 1
        return False

    def _tell_suspect(self, name: str, reply: Ack | Nack) -> list[bytes]:
        # The buddy system run backwards: a suspect that probes us, directly or
        # through us, learns of the suspicion from our answer, even if the rumour
        # already ran out of retransmissions while it was unreachable.
        parts = [codec.encode_message(reply)]
        member = self._members.get(name)
        if member is not None and member.state is SUSPECT and self.config.lifeguard_buddy:
            parts.append(self._suspect_message(member))
        return parts

    def _reply_address(self, sender: str, source: Address) -> Address:
        # Over a stream the source is an ephemeral port; the member's own address is
        # where it listens.
        member = self._members.get(sender)
        return member.address if member is not None else source

    def _on_ack(self, seq: int, now: float) -> None:
        probe = self._probes.get(seq)
        if probe is not None:
            if not probe.acked:
                probe.acked = True
                self.acks_received += 1
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(
                relay.requester,
                self._tell_suspect(relay.requester_name, Ack(relay.requester_seq, relay.target)),
            )
            return
        self.stats["stale_acks"] += 1

    def _relay_probe(
        self,
        requester: Address,
        requester_name: str,
        seq: int,
        target: str,
        address: Address,
        timeout: float,
        now: float,
    ) -> None:
        relay_seq = self._next_seq()
        deadline = now + timeout
        self._relays[relay_seq] = _Relay(requester, requester_name, seq, target, deadline)
        self._push_timer(deadline, _TIMER_RELAY, relay_seq, "")
        self._send(address, [codec.encode_message(Ping(relay_seq, target, self.name))])

    # ----- probing -----------------------------------------------------------------

    def start_probe(self, now: float) -> int | None:
        """Begin this period's probe: ping the next member in the shuffled
        round-robin order. Returns the probe's sequence number, or None if there is
        nobody to probe."""
        if self.leaving:
            return None
        target = self._next_probe_target()
        # Chores nearly due run now, on this wakeup, even with nobody to probe; the
        # state round's opening message rides in the ping's datagram, so idle nodes
        # trade one packet a period instead of two.
        syn = self._state_round(now, target) if self._state_chore.ripe(now) else None
        if self._reap_chore.ripe(now):
            self._reap(now)
        if target is None:
            return None
        seq = self._next_seq()
        self._probes[seq] = _Probe(
            seq, target.name, target.address, target.incarnation, now, now + self.probe_interval()
        )
        parts = [codec.encode_message(Ping(seq, target.name, self.name))]
        if target.state is SUSPECT and self.config.lifeguard_buddy:
            # Lifeguard's buddy system: tell the suspect directly so it refutes now
            # instead of waiting for the rumour to reach it. It goes first so the
            # refutation is already queued when the ack is built, and rides on it.
            parts.insert(0, self._suspect_message(target))
        if syn is not None:
            parts.append(syn)
        self.stats["probes"] += 1
        self._send(target.address, parts)
        return seq

    def probe_acked(self, seq: int) -> bool:
        """Whether our probe `seq` (still in its period) has been answered."""
        probe = self._probes.get(seq)
        return probe is not None and probe.acked

    def probe_indirect(self, seq: int, now: float) -> None:
        """The direct probe timed out: ask `indirect_checks` members to try."""
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        helpers = self._peers.sample(self.rng, self.config.indirect_checks, exclude=(probe.target,))
        # The helpers' nacks must land before this period ends to count (Lifeguard), so
        # they get most, not all, of the time that is left.
        left = probe.ends_at - now
        timeout_ms = max(1, int(left * 0.8 * 1000))
        msg = codec.encode_message(PingReq(seq, probe.target, probe.address, self.name, timeout_ms))
        for name in helpers:
            self._send(self._members[name].address, [msg])
        self.stats["indirect_probes"] += len(helpers)
        if self.config.lifeguard_awareness:
            probe.helpers = frozenset(helpers)

    def finish_probe(self, seq: int, now: float) -> None:
        """The protocol period ended: an unanswered probe makes the target suspect."""
        probe = self._probes.pop(seq, None)
        if probe is None:
            return
        if probe.acked:
            self.awareness.apply(-1)
            return
        self.stats["probe_failures"] += 1
        # Lifeguard: missing nacks mean our own messages are not getting through.
        if probe.helpers:
            self.awareness.apply(len(probe.helpers - probe.nacks))
        else:
            self.awareness.apply(1)
        target = self._members.get(probe.target)
        # A probe says nothing about a newer incarnation (a restart or refutation
        # that arrived while it ran), so only the probed incarnation is suspected.
        if target is not None and target.is_live and target.incarnation == probe.incarnation:
            if target.state is ALIVE:
                self.stats["suspicions_raised"] += 1
            self._apply(Suspect(target.name, target.incarnation, self.name), now)

    def _next_probe_target(self) -> Member | None:
        checked = 0
        while checked <= len(self._probe_order):
            if self._probe_index >= len(self._probe_order):
                # SWIM §4.3: a fresh random order each pass bounds the time until
                # every member is probed.
                self._probe_order = [
                    n for n in self._members if n != self.name and n in self._peers
                ]
                self._probe_set = set(self._probe_order)
                self.rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            name = self._probe_order[self._probe_index]
            self._probe_index += 1
            checked += 1
            if name in self._peers:
                return self._members[name]
        return None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # ----- gossip and sync -----------------------------------------------------------

    def gossip(self, now: float) -> None:
        """Send queued broadcasts to `gossip_nodes` random members (and sometimes to
        a recently dead one, so a healed partition hears about us)."""
        if not self.broadcasts:
            return
        targets = [self._members[n] for n in self._peers.sample(self.rng, self.config.gossip_nodes)]
        horizon = now - self.config.gossip_to_the_dead_time
        recent_dead = [
            n for n, t in self._departed.items() if t >= horizon and self._members[n].state is DEAD
        ]
        if recent_dead and self.rng.random() < len(recent_dead) / (len(self._peers) + 1):
            targets.append(self._members[self.rng.choice(recent_dead)])
        for member in targets:
            if not self.broadcasts:
                break
            self._send(member.address, [])

    def sync_target(self) -> Address | None:
        """A random live member for a periodic push-pull, or None."""
        peer = self._random_peer()
        return peer.address if peer is not None else None

    def _random_peer(self) -> Member | None:
        picked = self._peers.sample(self.rng, 1)
        return self._members[picked[0]] if picked else None

    def sync_packet(self, *, join: bool) -> bytes:
        """Our full state, to push to a seed or a random member over a stream."""
        return codec.encode_packet([self._sync_message(reply=False, join=join)])

    def _sync_message(self, *, reply: bool, join: bool) -> bytes:
        own = self.local_member
        records = [MemberRecord(own.name, own.address, own.incarnation, own.state)]
        records += [
            MemberRecord(m.name, m.address, m.incarnation, m.state)
            for m in self._members.values()
            if m.name != self.name
        ]
        return codec.encode_message(Sync(reply, join, tuple(records)))

    def _announce_join(self, seed: str) -> None:
        # Gossip from the seed alone reaches the last member only after log(N)
        # rounds; telling up to `join_announce_nodes` members at once cuts that by
        # log(k) rounds and, in a cluster no bigger than k + 2 (us, the seed and k
        # others), to one datagram's latency. The cap keeps a join storm of a large
        # cluster from costing O(N) datagrams per joiner; the gossip the seed
        # started covers the rest.
        if self.leaving:
            return
        alive = codec.encode_message(Alive(self.name, self.address, self.incarnation))
        names = self._peers.sample(self.rng, self.config.join_announce_nodes, exclude=(seed,))
        self.stats["join_announcements"] += len(names)
        self._send_direct(alive, names)

    def _merge_sync(
        self, records: tuple[MemberRecord, ...], now: float, *, old_news: bool = False
    ) -> None:
        sender = records[0].name if records else ""
        spent = 0
        if old_news:
            # What a seed tells a newcomer, the rest of the cluster already knows: the
            # newcomer passes it on only twice (catching a straggler or two) instead
            # of the full count, or every join would cost O(N) broadcasts everywhere.
            limit = retransmit_limit(self.config.retransmit_mult, self.n_live + len(records))
            spent = max(0, limit - 2)
        for rec in records:
            news: MembershipNews
            if rec.state is ALIVE:
                news = Alive(rec.name, rec.address, rec.incarnation)
            elif rec.state is LEFT:
                news = Left(rec.name, rec.incarnation)
            else:
                # As memberlist does: a remote death is only a suspicion here, so a
                # stale full state cannot kill a member outright.
                news = Suspect(rec.name, rec.incarnation, sender)
            self._apply(news, now, spent=spent)

    # ----- application state and anti-entropy ----------------------------------------

    def set_state(self, key: str, value: object, now: float) -> None:
        """Set one of our application-state keys (`ValueError` if not allowed)."""
        self.state.set(key, value, now)
        self._state_changed(self.name, [key])

    def delete_state(self, key: str, now: float) -> bool:
        """Delete one of our keys; false if it was not set."""
        if self.state.delete(key, now) is None:
            return False
        self._state_changed(self.name, [key])
        return True

    def _state_changed(self, name: str, keys: list[str]) -> None:
        member = self._members.get(name)
        if member is None:
            return
        member = replace(member, app_state=self.state.values(name))
        self._members[name] = member
        self._events.append(MemberUpdated(member, frozenset(keys)))

    def _state_round(self, now: float, peer: Member | None) -> bytes | None:
        """One anti-entropy round (Cassandra's gossiper): a state exchange with `peer`,
        whose opening StateSyn is returned for the caller to send (alone, or beside a
        ping); with probability `unreachable / (live + 1)` a full membership push-pull
        with a dead member, so partitions heal; and, after a round with a non-seed, a
        state round with a random seed with probability `seeds / (live + unreachable)`
        which also compares membership views and, where they differ, leads to a
        push-pull, so logical partitions merge (an agreeing seed costs one datagram,
        not two full-state streams)."""
        self._state_chore.done(now)
        self.timer_changed = True
        syn = None
        if peer is not None:
            self.stats["state_rounds"] += 1
            # Once our news is all sent, our view should match everyone's: the
            # fingerprint lets a peer that knows better find a member who missed
            # some news (gossip reaches everyone only with high probability) long
            # before the next push-pull.
            syn = self._state_syn(with_members=not self.broadcasts)
        live = len(self._peers)
        dead = [n for n in self._departed if self._members[n].state is DEAD]
        if dead and self.rng.random() < len(dead) / (live + 1):
            self.stats["syncs_to_dead"] += 1
            target = self._members[self.rng.choice(dead)].address
            self._send(target, [self._sync_message(reply=False, join=False)], reliable=True)
        others = [s for s in self.seeds if s != self.address]
        if (
            others
            and peer is not None
            and peer.address not in others
            and self.rng.random() < len(others) / (live + len(dead))
        ):
            self.stats["syncs_to_seeds"] += 1
            seed = self.rng.choice(others)
            self._send(seed, [self._state_syn(with_members=True)])
        return syn

    def _state_syn(self, *, with_members: bool) -> bytes:
        members = self.members_fingerprint() if with_members else 0
        return codec.encode_message(StateSyn(self.name, self.state.summary, members))

    def members_fingerprint(self) -> int:
        """A 64-bit fingerprint of our membership view: the name and incarnation of
        every alive or suspect member; never 0. Equal views give equal fingerprints."""
        return self._members.fingerprint or 1

    # ----- queries -----------------------------------------------------------------

    def start_query(self, kind: str, payload: bytes, timeout: float, now: float) -> Query:
        """Ask every member: queue a `Query` for dissemination and deliver it to
        ourselves too (see `take_queries`). Raises `ValueError` if `kind` or
        `payload` breaks the codec's limits."""
        if not kind or len(kind.encode()) > codec.MAX_QUERY_KIND_BYTES:
            raise ValueError(f"query kind must be 1..{codec.MAX_QUERY_KIND_BYTES} bytes")
        if len(payload) > codec.MAX_QUERY_PAYLOAD:
            raise ValueError(f"query payload over {codec.MAX_QUERY_PAYLOAD} bytes")
        timeout_ms = min(codec.MAX_QUERY_TIMEOUT_MS, max(1, round(timeout * 1000)))
        query = Query(self.rng.getrandbits(63), self.name, self.address, kind, payload, timeout_ms)
        self.stats["queries_started"] += 1
        self._on_query(query, now)
        return query

    def respond(self, query: Query, payload: bytes) -> None:
        """Answer `query` at its origin's address (over the stream if too large for
        a datagram: `_send` decides)."""
        if len(payload) > codec.MAX_QUERY_RESPONSE_PAYLOAD:
            raise ValueError(f"query response over {codec.MAX_QUERY_RESPONSE_PAYLOAD} bytes")
        self.stats["query_responses_sent"] += 1
        self._send(
            query.origin_address,
            [codec.encode_message(QueryResponse(query.id, self.name, payload))],
        )

    def resend_query(self, query: Query, names: Sequence[str]) -> None:
        """Send our `query` straight to the members `names` (those that have not
        answered yet): epidemic spread reaches everyone only with high probability,
        and in a small cluster the retransmit limit is small, so the origin makes
        sure. A member that had it already recognises the id and ignores it."""
        data = codec.encode_message(query)
        for name in names:
            member = self._members.get(name)
            if member is not None and member.is_live and name != self.name:
                self.stats["queries_resent"] += 1
                self._send(member.address, [data])

    def take_queries(self) -> tuple[list[tuple[Query, float]], list[QueryResponse]]:
        """Queries to hand to their handlers (each with the local time after which an
        answer is useless), and responses received, since the last call."""
        queries, responses = self._query_inbox, self._query_responses
        self._query_inbox, self._query_responses = [], []
        return queries, responses

    def _on_query(self, query: Query, now: float) -> None:
        key = (query.origin, query.id)
        seen = self._seen_queries
        if key in seen:
            self.stats["queries_duplicate"] += 1
            return
        # Copies keep arriving while the query spreads, which takes a few gossip
        # rounds; remember it at least that long even if its timeout is shorter.
        expires = now + max(query.timeout_ms / 1000, _QUERY_MEMORY)
        if len(seen) >= _MAX_SEEN_QUERIES:
            # An authenticated member flooding queries: expire the stale ones, and
            # if that is not enough forget the oldest (dicts keep insertion order).
            for old in [k for k, t in seen.items() if t <= now] or [next(iter(seen))]:
                del seen[old]
        seen[key] = expires
        self.stats["queries_received"] += 1
        self.broadcasts.queue(("query", *key), codec.encode_message(query))
        self._query_inbox.append((query, now + query.timeout_ms / 1000))

    # ----- leave -------------------------------------------------------------------

    def leave(self, now: float) -> None:
        """Start a graceful leave: stop probing, tell every live member directly with
        one datagram each, and broadcast a `Left` about us."""
        if self.leaving:
            return
        self.leaving = True
        me = self.local_member
        self._members[self.name] = replace(me, state=LEFT, state_changed_at=now)
        left = self._queue_news(Left(self.name, self.incarnation))
        # Gossip alone leaves a member that every round happened to miss waiting for
        # a push-pull; a datagram to each is cheap once, and the gossip, which
        # keeps its full transmit count, covers the ones lost.
        self._send_direct(left, self._peers)

    def leave_pending(self) -> bool:
        """True while our `Left` broadcast still has transmissions to go."""
        return self.broadcasts.pending(self.name)

    # ----- timers ------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When `run_timers` should next be called, if ever."""
        return self._timers[0][0] if self._timers else None

    def run_timers(self, now: float) -> None:
        """Fire every timer that is due: expired suspicions become deaths, and
        relayed probes that got no ack answer their requester with a nack."""
        while self._timers and self._timers[0][0] <= now:
            _, kind, seq, name = heapq.heappop(self._timers)
            if kind == _TIMER_RELAY:
                relay = self._relays.pop(seq, None)
                if relay is not None and self.config.lifeguard_awareness:
                    self._send(
                        relay.requester,
                        self._tell_suspect(
                            relay.requester_name, Nack(relay.requester_seq, self.name)
                        ),
                    )
                continue
            susp = self._suspicions.get(name)
            if susp is None or susp.deadline > now:
                continue  # stale entry: refuted, or superseded by a shorter deadline
            self.stats["deaths_declared"] += 1
            self._apply(Dead(name, susp.incarnation, self.name), now)

    def next_chore(self) -> float:
        """When `run_chores` must be called at the latest (`start_probe` runs the
        chores early when its tick comes close to their due time)."""
        return min(self._state_chore.deadline, self._reap_chore.deadline)

    def run_chores(self, now: float) -> None:
        """Run the chores no probe tick took care of in time: an anti-entropy round
        with a random live member, and reaping."""
        if now >= self._state_chore.deadline:
            peer = self._random_peer()
            syn = self._state_round(now, peer)
            if peer is not None and syn is not None:
                self._send(peer.address, [syn])
        if now >= self._reap_chore.deadline:
            self._reap(now)

    def _reap(self, now: float) -> None:
        self._reap_chore.done(now)
        self.timer_changed = True
        self.reap(now)

    def _push_timer(self, deadline: float, kind: int, seq: int, name: str) -> None:
        if not self._timers or deadline < self._timers[0][0]:
            self.timer_changed = True
        heapq.heappush(self._timers, (deadline, kind, seq, name))

    def reap(self, now: float) -> None:
        """Forget dead and left members after `dead_reclaim_time`."""
        horizon = now - self.config.dead_reclaim_time
        for name in [n for n, t in self._departed.items() if t <= horizon]:
            del self._departed[name]
            del self._members[name]
            self.broadcasts.discard(name)
            self._remember_news(name, None)
            self.state.forget(name)
        self.stats["tombstones_collected"] += self.state.collect_tombstones(now)

    # ----- state rules -------------------------------------------------------------

    def _apply(self, news: MembershipNews, now: float, *, spent: int = 0) -> None:
        """Merge one piece of news. If it changes our view it is passed on, with
        `spent` of its transmissions counted as already made (see _merge_sync)."""
        name = news.name
        state = _STATE_OF[type(news)]
        if name == self.name:
            self._news_about_self(news, state)
            return
        cur = self._members.get(name)
        if cur is None:
            if isinstance(news, Alive):
                self._add_member(news, now, spent)
            # Suspicion or death of an unknown member carries no address: ignore.
            return
        if not supersedes(state, news.incarnation, cur):
            if (
                isinstance(news, Suspect)
                and cur.state is SUSPECT
                and news.incarnation == cur.incarnation
            ):
                self._confirm(name, news)
            return
        address = news.address if isinstance(news, Alive) else cur.address
        new = Member(name, address, news.incarnation, state, now, cur.app_state)
        self._members[name] = new
        self._queue_news(news, spent)
        was_live = cur.is_live
        if new.is_live:
            self._peers.add(name)
            self._departed.pop(name, None)
            if not was_live:
                self._insert_probe_target(name)
        else:
            self._peers.discard(name)
            self._departed[name] = now
        if state is SUSPECT:
            self._start_suspicion(new, news, now)
        else:
            self._suspicions.pop(name, None)
        event = _event_for(cur, new)
        if not (isinstance(event, MemberUpdated) and cur.address == new.address):
            # A bare incarnation bump (a refutation we never saw the cause of) is
            # protocol noise, not news for the user.
            self._events.append(event)

    def _add_member(self, news: Alive, now: float, spent: int) -> None:
        member = Member(news.name, news.address, news.incarnation, ALIVE, now)
        self._members[news.name] = member
        self._peers.add(news.name)
        self._insert_probe_target(news.name)
        self._queue_news(news, spent)
        self._events.append(MemberJoined(member))

    def _insert_probe_target(self, name: str) -> None:
        if name in self._probe_set:
            return  # a revived member still has its place in this pass
        self._probe_set.add(name)
        # SWIM §4.3: a random position keeps the detection-time bound for newcomers.
        # (random() rather than randint: this runs once per member per node at join.)
        pos = int(self.rng.random() * (len(self._probe_order) + 1))
        self._probe_order.insert(pos, name)
        if pos < self._probe_index:
            self._probe_index += 1

    def _start_suspicion(self, member: Member, news: MembershipNews, now: float) -> None:
        accuser = news.accuser if isinstance(news, Suspect) else self.name
        lo, hi = suspicion_bounds(
            self.config.suspicion_mult,
            self.config.suspicion_max_timeout_mult,
            self.n_live,
            self.config.probe_interval,
        )
        k = (
            confirmations_needed(self.config.suspicion_mult, self.n_live)
            if self.config.lifeguard_dynamic_suspicion
            else 0
        )
        susp = Suspicion(
            started_at=now, incarnation=member.incarnation, accuser=accuser, lo=lo, hi=hi, k=k
        )
        self._suspicions[member.name] = susp
        self._push_timer(susp.deadline, _TIMER_SUSPICION, 0, member.name)

    def _confirm(self, name: str, news: Suspect) -> None:
        susp = self._suspicions.get(name)
        if susp is not None and susp.confirm(news.accuser):
            self.stats["suspicion_confirmations"] += 1
            self._push_timer(susp.deadline, _TIMER_SUSPICION, 0, name)
            # Pass the confirmation on so other members can count it too.
            self._queue_news(news)

    def _news_about_self(self, news: MembershipNews, state: MemberState) -> None:
        if self.leaving:
            if state is not LEFT:
                self._queue_news(Left(self.name, self.incarnation))
            return
        if isinstance(news, Alive):
            if news.incarnation <= self.incarnation:
                return
        elif news.incarnation < self.incarnation:
            return
        # Refute: only we raise our incarnation. A suspicion, a death, an old leave,
        # or an alive record from our previous life (a restart) all lose to it.
        if state is SUSPECT:
            self.stats["suspicions_refuted"] += 1
            self.awareness.apply(1)
        elif state is DEAD:
            self.stats["deaths_refuted"] += 1
        else:
            self.stats["refutations"] += 1
        self.incarnation = news.incarnation + 1
        self._members[self.name] = replace(self.local_member, incarnation=self.incarnation)
        self._queue_news(Alive(self.name, self.address, self.incarnation))

    def _suspect_message(self, member: Member) -> bytes:
        return codec.encode_message(Suspect(member.name, member.incarnation, self.name))

    def _queue_news(self, news: MembershipNews, spent: int = 0) -> bytes:
        """Queue `news` for broadcast; returns its encoding."""
        data = codec.encode_message(news)
        self.broadcasts.queue(news.name, data, spent)
        self._remember_news(news.name, data)
        return data

    def _remember_news(self, name: str, data: bytes | None) -> None:
        old = self._news_by_member.pop(name, None)
        if old is not None:
            self._known_news.discard(old)
        if data is not None:
            self._news_by_member[name] = data
            self._known_news.add(data)

    # ----- output ------------------------------------------------------------------

    def _send_direct(self, data: bytes, names: Iterable[str]) -> None:
        """One datagram carrying only `data` to each of `names` (news about us that
        should not wait for gossip)."""
        for name in names:
            self._send(self._members[name].address, [data], piggyback=False)

    def _send(
        self, dest: Address, parts: list[bytes], *, reliable: bool = False, piggyback: bool = True
    ) -> None:
        if not reliable:
            used = sum(len(p) for p in parts)
            if used + codec.packet_overhead(len(parts)) > self.payload_budget:
                # Never an oversized datagram: the stream carries it whole.
                reliable = True
        if not reliable and piggyback:
            # Reserve the larger array header up front; piggyback what fits.
            budget = self.payload_budget - used - codec.packet_overhead(16)
            room = codec.MAX_MESSAGES_PER_PACKET - len(parts)
            parts = parts + self.broadcasts.take(budget, self.n_live, max_items=room)
            if not parts:
                return
        data = codec.encode_packet(parts)
        stats = self.stats
        stats["packets_sent"] += 1
        stats["bytes_sent"] += len(data)
        keys = codec.SENT_KEYS
        for part in parts:
            # part[1] is codec.message_tag(part), inlined: this loop runs for every
            # piggybacked message of every packet.
            count_key, bytes_key = keys[part[1]]
            stats[count_key] += 1
            stats[bytes_key] += len(part)
        self._out.append((dest, data, reliable))


_STATE_OF: dict[type, MemberState] = {Alive: ALIVE, Suspect: SUSPECT, Dead: DEAD, Left: LEFT}


def _event_for(old: Member, new: Member) -> MemberEvent:
    if new.state is ALIVE:
        if old.state is SUSPECT:
            return MemberAlive(new)
        if old.state in (DEAD, LEFT):
            return MemberRejoined(new)
        return MemberUpdated(new)
    if new.state is SUSPECT:
        return MemberSuspected(new)
    if new.state is DEAD:
        return MemberFailed(new)
    return MemberLeft(new)
