"""Anti-entropy and seeds (Cassandra's gossiper, Scuttlebutt's digests).

Application state is reconciled by state rounds (StateSyn -> StateDigests ->
StateAck), whole membership views by push-pull syncs over a stream. Seeds let a node
join, and heal logical partitions: after a round with a non-seed, a round with a seed
with probability `seeds / (live + unreachable)`, a push-pull with a dead member with
probability `unreachable / (live + 1)`, and, while the node is alone, a join through
the seeds with exponential back-off. Every one of these is a deadline held here and
run by `SwimCore.handle_timer(Timer.SYNC, now)`; the state round and reaping also
ride on the probe tick when they are nearly due (see `periodic`).

State rounds are flow-controlled. A node whose requests for state go unanswered
twice in a row takes its link to be congested: it then has one request out at a
time, waits twice as long for each answer, and while one is due lets no peer's
round push deltas at it. Without that, a host behind a slow link is sent the same
large deltas by every peer each round, faster than its link drains them, and none
of the transfers completes (docs/gossip.md §3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import counters
from . import codec
from .appstate import StateLimits, StateStore
from .contract import JoinFinished, RejoinFailed
from .member import Member, MemberState
from .messages import Alive, StateAck, StateDigests, StateSyn, Sync
from .periodic import Periodic

if TYPE_CHECKING:
    from ..net.transport import Address
    from .core import SwimCore

DEAD = MemberState.DEAD

_MAX_REJOIN_BACKOFF = 30.0
"""Longest wait between joins through the seeds while a node knows nobody."""
_MAX_ANSWER_WAIT = 10.0
"""Longest wait for the answer to a request for state before asking again: a large
answer comes over a stream, which the transports give up on after 10 s by default."""


@dataclass(slots=True)
class _Join:
    automatic: bool  # started by the seed schedule, not by a command
    pending: int  # pushes not yet reported
    sent: int  # pushes that went out
    replies_before: int
    deadline: float


class AntiEntropy:
    """Application state, its reconciliation, push-pull, seeds and joins."""

    def __init__(self, core: SwimCore, generation: int, now: float) -> None:
        self._core = core
        config = core.config
        rng = core.rng
        self.state = StateStore(
            core.name,
            generation,
            StateLimits(
                max_key_bytes=config.state_max_key_bytes,
                max_value_bytes=config.state_max_value_bytes,
                max_node_bytes=config.state_max_bytes,
                tombstone_ttl=config.state_tombstone_ttl,
            ),
        )
        self.seeds: list[Address] = list(config.seeds)
        # Chores ride on a probe tick within half a probe period of their due time.
        # The first state round is at a random offset, so that nodes started
        # together do not all sync at once.
        slack = config.probe_interval / 2
        every = config.state_gossip_interval
        self._state_chore = Periodic(every, min(slack, every / 2), now + rng.uniform(0, every))
        every = max(1.0, config.dead_reclaim_time / 10)
        self._reap_chore = Periodic(every, min(slack, every / 2), now + every)
        # Spread first push-pulls over the whole (size-scaled) interval. The scale is
        # only known once we have joined, so the wait is finished in a second step.
        self._push_pull_phase: float | None = rng.random()
        self._push_pull_at = now + self._push_pull_phase * config.push_pull_interval
        self._join_replies = 0
        self._joins: dict[int, _Join] = {}
        self._pushes: dict[int, int | None] = {}  # stream ticket -> join id, if any
        self._next_join = 0
        self._seed_at = now  # alone with seeds: join through them from then on
        self._backoff = 1.0
        # Requests for state whose answers may still come (peer -> when asked), how
        # many in a row did not come in time, and how long the next may take (see
        # `_congested`).
        self._asked: dict[str, float] = {}
        self._unanswered = 0
        self._answer_wait = config.probe_timeout

    # ----- timers ------------------------------------------------------------------

    def next_deadline(self) -> float:
        deadline = min(self._state_chore.deadline, self._reap_chore.deadline, self._push_pull_at)
        if self._joins:
            deadline = min(deadline, *(join.deadline for join in self._joins.values()))
        if self._seed_at < deadline and self._should_rejoin():
            deadline = min(deadline, self._seed_at)
        return deadline

    def run_timers(self, now: float) -> None:
        """Run the chores no probe tick took care of in time (an anti-entropy round
        with a random live member, reaping), push-pull, joins, seed contacts."""
        core = self._core
        if now >= self._state_chore.deadline:
            peer = core.random_peer()
            syn = self._state_round(now, peer)
            if peer is not None and syn is not None:
                core.send(peer.address, [syn])
        if now >= self._reap_chore.deadline:
            self._reap(now)
        if now >= self._push_pull_at:
            self._push_pull(now)
        for join_id, join in list(self._joins.items()):
            if now >= join.deadline:
                self._finish_join(join_id, now)
        if self._should_rejoin() and now >= self._seed_at:
            self.join(self.seeds, now, automatic=True)

    def ripe_chores(self, now: float, peer: Member | None) -> bytes | None:
        """On a probe tick: run the chores nearly due; returns the state round's
        opening message for `peer`, to ride in the ping's datagram."""
        syn = self._state_round(now, peer) if self._state_chore.ripe(now) else None
        if self._reap_chore.ripe(now):
            self._reap(now)
        return syn

    def _reap(self, now: float) -> None:
        self._reap_chore.done(now)
        for name in self._core.membership.reap(now):
            self.state.forget(name)
        self._core.stats[counters.TOMBSTONES_COLLECTED] += self.state.collect_tombstones(now)

    def _push_pull(self, now: float) -> None:
        core = self._core
        if self._push_pull_phase is not None:
            base = core.config.push_pull_interval
            extra = self._push_pull_phase * (core.push_pull_interval() - base)
            self._push_pull_phase = None
            if extra > 0:
                self._push_pull_at = now + extra
                return
        # Drawn either way, so that skipping leaves later random choices unchanged.
        peer = core.random_peer()
        # With no news queued, our state rounds carry the fingerprint of all a
        # push-pull would exchange, and a peer that holds otherwise starts one; a
        # full sync now would, as a rule, only confirm that views agree, at a cost
        # that grows with N. With news in flight the rounds carry no fingerprint,
        # and the push-pull still runs.
        if peer is not None and core.broadcasts:
            self._push(peer.address, None)
        self._push_pull_at = now + core.push_pull_interval()

    def _push(self, dest: Address, join_id: int | None) -> None:
        data = self._sync_message(reply=False, join=join_id is not None)
        ticket = self._core.send(dest, [data], reliable=True)
        self._pushes[ticket] = join_id

    # ----- state rounds ------------------------------------------------------------

    def _state_round(self, now: float, peer: Member | None) -> bytes | None:
        """One anti-entropy round (Cassandra's gossiper): a state exchange with `peer`,
        whose opening StateSyn is returned for the caller to send (alone, or beside a
        ping); with probability `unreachable / (live + 1)` a full membership push-pull
        with a dead member, so partitions heal; and, after a round with a non-seed, a
        state round with a random seed with probability `seeds / (live + unreachable)`
        which also compares membership views and, where they differ, leads to a
        push-pull, so logical partitions merge (an agreeing seed costs one datagram,
        not two full-state streams)."""
        core = self._core
        membership = core.membership
        self._state_chore.done(now)
        syn = None
        if peer is not None:
            core.stats[counters.STATE_ROUNDS] += 1
            # Once our news is all sent, our view should match everyone's: the
            # fingerprint lets a peer that knows better find a member who missed
            # some news (gossip reaches everyone only with high probability) long
            # before the next push-pull.
            syn = self._state_syn(with_members=not core.broadcasts)
        live = len(membership.peers)
        dead = [n for n in membership.departed if membership.table[n].state is DEAD]
        if dead and core.rng.random() < len(dead) / (live + 1):
            core.stats[counters.SYNCS_TO_DEAD] += 1
            target = membership.table[core.rng.choice(dead)].address
            core.send(target, [self._sync_message(reply=False, join=False)], reliable=True)
        others = [s for s in self.seeds if s != core.address]
        if (
            others
            and peer is not None
            and peer.address not in others
            and core.rng.random() < len(others) / (live + len(dead))
        ):
            core.stats[counters.SYNCS_TO_SEEDS] += 1
            seed = core.rng.choice(others)
            core.send(seed, [self._state_syn(with_members=True)])
        return syn

    def _state_syn(self, *, with_members: bool) -> bytes:
        core = self._core
        members = self.fingerprint() if with_members else 0
        return codec.encode_message(StateSyn(core.name, self.state.summary, members))

    def fingerprint(self) -> int:
        """64 bits of what a push-pull exchanges: the membership view and the
        recent user events. Never 0, which in a `StateSyn` means "none"."""
        core = self._core
        return (core.membership.fingerprint() ^ core.user_events.digest()) or 1

    def on_state_syn(self, source: Address, msg: StateSyn, now: float) -> None:
        core = self._core
        # Our digests would bring the peer's deltas, which a congested link must not
        # be fed on top of the answer it is still carrying.
        if (
            msg.summary != self.state.summary
            and not self._congested(now)
            and core.allow(source, now)
        ):
            digests = StateDigests(core.name, tuple(self.state.digests()))
            core.send(core.reply_address(msg.sender, source), [codec.encode_message(digests)])
        # With news in flight, views differ for a while by design; a peer we do not
        # hold as live, though, may be from another partition.
        if (
            msg.members
            and msg.members != self.fingerprint()
            and (not core.broadcasts or msg.sender not in core.membership.peers)
            and core.allow(source, now)
        ):
            core.stats[counters.MEMBERSHIP_MISMATCHES] += 1
            core.send(
                core.reply_address(msg.sender, source),
                [self._sync_message(reply=False, join=False)],
                reliable=True,
            )

    def on_state_digests(self, source: Address, msg: StateDigests, now: float) -> None:
        core = self._core
        they_lack, we_lack = self.state.compare(msg.digests, accept=core.membership.table)
        deltas = self.state.deltas(they_lack, core.config.state_delta_budget)
        requests = we_lack if we_lack and self._may_ask(msg.sender, now) else []
        if deltas or requests:
            ack = StateAck(core.name, tuple(deltas), tuple(requests))
            core.send(core.reply_address(msg.sender, source), [codec.encode_message(ack)])

    def _may_ask(self, peer: str, now: float) -> bool:
        """Whether to request what `peer` holds that we lack (noting that we did)."""
        if self._congested(now):
            return False
        self._asked[peer] = now
        return True

    def _congested(self, now: float) -> bool:
        """Whether our link seems to drain slower than it is fed: the answers to two
        requests in a row did not come in time (random loss rarely does that), and
        one is still awaited. Then we ask for one answer at a time, waiting twice as
        long for each, and let no peer's round push deltas at us."""
        for peer, asked in list(self._asked.items()):
            if now >= asked + self._answer_wait:
                del self._asked[peer]
                self._unanswered += 1
                self._core.stats[counters.STATE_ANSWERS_MISSED] += 1
                self._answer_wait = min(2 * self._answer_wait, _MAX_ANSWER_WAIT)
        return self._unanswered >= 2 and bool(self._asked)

    def on_state_ack(self, source: Address, msg: StateAck, now: float) -> None:
        core = self._core
        if not msg.requests and self._asked.pop(msg.sender, None) is not None:
            # An answer to our request (an answer never carries requests).
            self._unanswered = 0
            self._answer_wait = core.config.probe_timeout
        for delta in msg.deltas:
            if delta.name not in core.membership.table:
                core.stats[counters.STATE_DELTAS_UNKNOWN_MEMBER] += 1
                continue
            changed = self.state.apply(delta, now)
            if changed:
                self.changed(delta.name, changed)
        if msg.requests:
            answer = self.state.deltas(msg.requests, core.config.state_delta_budget)
            if answer:
                ack = StateAck(core.name, tuple(answer), ())
                core.send(core.reply_address(msg.sender, source), [codec.encode_message(ack)])

    def changed(self, name: str, keys: list[str]) -> None:
        """`keys` of `name`'s application state changed here."""
        self._core.membership.set_app_state(name, self.state.values(name), keys)

    def set(self, key: str, value: Any, now: float) -> None:
        self.state.set(key, value, now)
        self.changed(self._core.name, [key])

    def delete(self, key: str, now: float) -> bool:
        if self.state.delete(key, now) is None:
            return False
        self.changed(self._core.name, [key])
        return True

    # ----- push-pull, joins and seeds ------------------------------------------------

    def on_sync(self, source: Address, msg: Sync, reliable: bool, now: float) -> None:
        core = self._core
        if not reliable:
            core.stats[counters.DROPPED_UNRELIABLE_SYNC] += 1
            return
        records = msg.members
        core.membership.merge_sync(records, now, old_news=msg.reply and msg.join)
        core.user_events.merge_sync(msg.events, join_reply=msg.reply and msg.join)
        if msg.reply:
            if msg.join:
                self._join_replies += 1
                self._announce_join(records[0].name if records else "")
                for join_id in list(self._joins):
                    self._check_join(join_id, now)
        elif records and core.allow(source, now):
            # The sender's own record comes first: answer at its address.
            core.send(
                records[0].address,
                [self._sync_message(reply=True, join=msg.join)],
                reliable=True,
            )

    def _sync_message(self, *, reply: bool, join: bool) -> bytes:
        core = self._core
        events = core.user_events.recent()
        return core.membership.sync_message(reply=reply, join=join, events=events)

    def _announce_join(self, seed: str) -> None:
        # Gossip from the seed alone reaches the last member only after log(N)
        # rounds; telling up to `join_announce_nodes` members at once cuts that by
        # log(k) rounds and, in a cluster no bigger than k + 2 (us, the seed and k
        # others), to one datagram's latency. The cap keeps a join storm of a large
        # cluster from costing O(N) datagrams per joiner; the gossip the seed
        # started covers the rest.
        core = self._core
        membership = core.membership
        if membership.leaving:
            return
        alive = codec.encode_message(Alive(core.name, core.address, membership.incarnation))
        names = membership.peers.sample(core.rng, core.config.join_announce_nodes, exclude=(seed,))
        core.stats[counters.JOIN_ANNOUNCEMENTS] += len(names)
        core.send_direct(alive, names)

    def join(self, seeds: Iterable[Address], now: float, *, automatic: bool = False) -> int | None:
        """Push our state to each seed; returns the join's id (its end comes as a
        `JoinFinished` signal), or None if no seed but ourselves was given."""
        core = self._core
        targets = [s for s in seeds if s != core.address]
        if not targets:
            return None
        join_id = self._next_join = self._next_join + 1
        self._joins[join_id] = _Join(
            automatic, len(targets), 0, self._join_replies, now + core.config.join_timeout
        )
        for seed in targets:
            self._push(seed, join_id)
        return join_id

    def stream_result(self, ticket: int, ok: bool, now: float) -> bool:
        """A push of ours went out or failed; false if `ticket` was not a push."""
        if ticket not in self._pushes:
            return False
        join_id = self._pushes.pop(ticket)
        if not ok:
            self._core.stats[counters.SYNC_FAILURES] += 1
        join = self._joins.get(join_id) if join_id is not None else None
        if join is not None and join_id is not None:
            join.pending -= 1
            join.sent += ok
            self._check_join(join_id, now)
        return True

    def _check_join(self, join_id: int, now: float) -> None:
        join = self._joins[join_id]
        if join.pending == 0 and (
            join.sent == 0 or self._join_replies - join.replies_before >= join.sent
        ):
            self._finish_join(join_id, now)

    def _finish_join(self, join_id: int, now: float) -> None:
        core = self._core
        join = self._joins.pop(join_id)
        answered = self._join_replies - join.replies_before
        error = None
        if join.sent == 0:
            error = "no seed could be reached"
        elif answered == 0:
            error = f"no seed answered within {core.config.join_timeout:g} s"
        if not join.automatic:
            core.signal(JoinFinished(join_id, answered, error))
            return
        # A node that knows nobody keeps knocking on its seeds, backing off up to
        # 30 s, so a cluster re-forms after every member restarted or a partition.
        wait = core.config.probe_interval
        if error is None:
            self._backoff = 1.0
        else:
            core.signal(RejoinFailed(error, self._backoff))
            wait += self._backoff
            self._backoff = min(_MAX_REJOIN_BACKOFF, self._backoff * 2)
        self._seed_at = now + wait

    def _should_rejoin(self) -> bool:
        core = self._core
        return (
            core.membership.n_live == 1
            and not core.membership.leaving
            and any(s != core.address for s in self.seeds)
            and not any(j.automatic for j in self._joins.values())
        )

    def set_seeds(self, found: Iterable[Address]) -> None:
        """Seeds from a seed source, used beside the configured ones."""
        self.seeds = list(dict.fromkeys([*self._core.config.seeds, *found]))
