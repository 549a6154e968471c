"""The Trio shell around `SwimCore`: one nursery, one task per concern.

Tasks: receive (never waits on a probe), probe (one protocol period at a time), gossip,
timers (suspicion deadlines, relayed-probe nacks, and the periodic chores no probe
tick ran in time), push-pull and seeds (join and re-join when alone). Leaving the
nursery stops them all.

An idle node should cost almost nothing, and on small machines each wakeup is what
costs (docs/agent.md, "Idle cost"): so tasks sleep on events rather than poll, the
probe task does not wake at the probe timeout once the ack is in, and chores share
the probe tick.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .net.keyring import Keyring
from .net.security import SecureTransport, check_secure_bind
from .net.seeds import SeedSource, SeedSourceError
from .net.transport import Address, Transport
from .protocol import codec
from .protocol.config import Config
from .protocol.core import SwimCore
from .protocol.events import EventHub, EventStream, MemberEvent
from .protocol.member import Member
from .protocol.messages import Query
from .protocol.queries import QueryCollector, QueryHandler, QueryResult, default_query_timeout

log = logging.getLogger("swimnode")
member_log = logging.getLogger("swimnode.members")
"""One INFO line per membership change; the agent replaces it with its own format."""


class JoinError(Exception):
    """No seed answered a join within the join timeout."""


class NodeNotRunning(RuntimeError):
    """The node has not been started. (A stopped node still answers queries with
    its last state.)"""


_last_generation = 0


def new_generation() -> int:
    """A generation for a node starting now: wall-clock microseconds, strictly
    increasing within the process, so a restarted node's state outranks its past."""
    global _last_generation
    _last_generation = max(time.time_ns() // 1000, _last_generation + 1)
    return _last_generation


class Node:
    """One cluster member. Start it with `open_node` or `await nursery.start(node.run)`.

    `seed_source`, if given, is re-read every `config.seed_refresh_interval` and its
    addresses are used beside `config.seeds`.
    """

    def __init__(
        self, config: Config, transport: Transport, *, seed_source: SeedSource | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._seed_source = seed_source
        self._core: SwimCore | None = None
        self._hub = EventHub(config.event_buffer)
        self._timer_scope = trio.CancelScope()
        self._gossip_wakeup = trio.Event()
        self._gossip_wants_fresh = False
        self._seed_wakeup = trio.Event()
        self._ack_wakeup = trio.Event()
        self._seen_acks = 0
        self._stopped = trio.Event()
        self._sync_wakeup = trio.Event()
        self._seen_join_replies = 0
        self._left_sent = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random(config.seed)
        self._query_handlers: dict[str, QueryHandler] = {}
        self._queries: dict[int, QueryCollector] = {}  # ours, in flight, by id

    # ----- public API ----------------------------------------------------------------

    @property
    def core(self) -> SwimCore:
        """The protocol state machine (for inspection and tests)."""
        if self._core is None:
            raise NodeNotRunning("node has not been started")
        return self._core

    @property
    def name(self) -> str:
        """This member's name."""
        return self.config.name

    @property
    def address(self) -> Address:
        """The address peers reach this node at."""
        return self.core.address

    @property
    def local_member(self) -> Member:
        """This node's own record."""
        return self.core.local_member

    def members(self) -> list[Member]:
        """Every known member (us included), dead and left ones until reclaimed."""
        return self.core.members()

    def live_members(self) -> list[Member]:
        """Alive and suspect members, us included."""
        return [m for m in self.core.members() if m.is_live]

    def events(self) -> EventStream:
        """Subscribe to membership events from now on: `async for ev in node.events()`.

        Each subscription has its own buffer of `config.event_buffer` events; if it
        falls behind, the missed events are replaced by one `EventsLost(count)`.
        """
        return self._hub.subscribe()

    def set_state(self, key: str, value: Any) -> None:
        """Set one key of this node's application state; it reaches every member by
        anti-entropy gossip. Values: str, bytes, int, float, bool, None, or lists and
        str-keyed maps of those. Raises `ValueError` (and changes nothing) on a bad
        key or value or when a size limit would be exceeded."""
        self.core.set_state(key, value, trio.current_time())
        self._publish_events()

    def delete_state(self, key: str) -> bool:
        """Delete one key of this node's application state; false if it was not set."""
        deleted = self.core.delete_state(key, trio.current_time())
        self._publish_events()
        return deleted

    def stats(self) -> dict[str, int]:
        """Protocol counters, the awareness score and member counts."""
        core = self.core
        out = dict(core.stats)
        out["awareness"] = core.awareness.score
        out["members_live"] = core.n_live
        out["members_known"] = len(core.members())
        out["suspicions_active"] = core.active_suspicions
        out["incarnation"] = core.incarnation
        return out

    async def join(self, seeds: Iterable[Address]) -> int:
        """Exchange full state with each seed; return how many answered.

        Raises `JoinError` if none answered within `config.join_timeout`.
        """
        core = self.core
        targets = [s for s in seeds if s != core.address]
        if not targets:
            return 0
        before = core.join_replies
        sent = 0

        async def push(seed: Address) -> None:
            nonlocal sent
            ok = await self._push_sync(seed, True)  # not `sent += await`: it reads early
            sent += ok

        with trio.move_on_after(self.config.join_timeout):
            async with trio.open_nursery() as nursery:
                for seed in targets:
                    nursery.start_soon(push, seed)
            while sent and core.join_replies - before < sent:
                self._sync_wakeup = trio.Event()
                await self._sync_wakeup.wait()
        reached = core.join_replies - before
        if sent == 0:
            raise JoinError("no seed could be reached")
        if reached == 0:
            raise JoinError(f"no seed answered within {self.config.join_timeout:g} s")
        return reached

    def register_query_handler(self, kind: str, handler: QueryHandler | None) -> None:
        """Answer queries of `kind` with `handler` (None removes it). A member with
        no handler for a kind stays silent, and the origin lists it as missing."""
        if handler is None:
            self._query_handlers.pop(kind, None)
        else:
            self._query_handlers[kind] = handler

    async def query(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> QueryResult:
        """Ask every member (us included) and gather the answers.

        Returns once every member that is live now has answered, or after `timeout`
        seconds (default `default_query_timeout`: a few dozen gossip rounds). Raises
        `ValueError` if `kind` or `payload` is over the codec's limits. (`timeout` is
        part of the query, which members use to drop stale answers, so it is a
        parameter rather than the caller's cancel scope.)
        """
        core = self.core
        if timeout is None:
            timeout = default_query_timeout(self.config, core.n_live)
        expected = frozenset(m.name for m in core.members() if m.is_live)
        query = core.start_query(kind, payload, timeout, trio.current_time())
        collector = self._queries[query.id] = QueryCollector(query, expected)
        try:
            await self._flush()
            deadline = trio.current_time() + timeout
            # Halfway through, ask the members still silent directly: gossip reaches
            # them only with high probability (see `SwimCore.resend_query`).
            with trio.move_on_at(deadline - timeout / 2):
                await collector.done.wait()
            if not collector.done.is_set():
                core.resend_query(query, sorted(expected - collector.responses.keys()))
                await self._flush()
                with trio.move_on_at(deadline):
                    await collector.done.wait()
        finally:
            del self._queries[query.id]
        return collector.result(timeout)

    async def wait_stopped(self) -> None:
        """Wait until the node's tasks have all ended (after `leave()` or cancel)."""
        await self._stopped.wait()

    async def leave(self) -> None:
        """Leave gracefully: disseminate our `left` record, then stop the node.

        Waits until the record has been sent its full retransmit count, or at most
        `config.leave_timeout`.
        """
        core = self.core
        core.leave(trio.current_time())
        await self._flush()
        if core.n_live > 1:
            with trio.move_on_after(self.config.leave_timeout):
                await self._left_sent.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task of the node until cancelled or `leave()` completes."""
        if self._core is not None:
            raise RuntimeError("a Node can only be run once")
        config = self.config
        if config.advertise is None:
            config = config.replace(advertise=self._transport.local_address)
        self.config = config
        # Keep framed datagrams within the budget peers expect.
        overhead = self._transport.overhead if isinstance(self._transport, SecureTransport) else 0
        self._core = SwimCore(
            config,
            now=trio.current_time(),
            rng=random.Random(self._rng.getrandbits(64)),
            generation=new_generation(),
            framing_overhead=overhead,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._probe_loop)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._push_pull_loop)
                nursery.start_soon(self._seed_loop)
                if self._seed_source is not None:
                    nursery.start_soon(self._seed_source_loop, self._seed_source)
                task_status.started()
        finally:
            self._nursery = None
            self._hub.close()
            self._stopped.set()
            with trio.CancelScope(shield=True):
                await self._transport.aclose()

    # ----- tasks ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        core, transport = self.core, self._transport
        while True:
            pkt = await transport.receive()
            core.handle_packet(pkt.source, pkt.data, pkt.reliable, trio.current_time())
            await self._flush()

    async def _probe_loop(self) -> None:
        core = self.core
        # Stagger the first period so nodes started together do not probe in lockstep.
        await trio.sleep(self._rng.uniform(0, self.config.probe_interval))
        while True:
            start = trio.current_time()
            interval, timeout = core.probe_interval(), core.probe_timeout()
            seq = core.start_probe(start)
            await self._flush()
            if seq is not None:
                with trio.move_on_at(start + timeout):
                    while not core.probe_acked(seq):
                        self._ack_wakeup = trio.Event()
                        await self._ack_wakeup.wait()
                if not core.probe_acked(seq):
                    core.probe_indirect(seq, trio.current_time())
                    await self._flush()
            await trio.sleep_until(start + interval)
            if seq is not None:
                core.finish_probe(seq, trio.current_time())
                await self._flush()

    async def _gossip_loop(self) -> None:
        core = self.core
        interval = self.config.gossip_interval
        await trio.sleep(self._rng.uniform(0, interval))
        early = False
        while True:
            # Nothing to spread, or nobody to tell: sleep until that changes rather
            # than waking every interval for nothing.
            await self._gossip_when(fresh=False, deadline=math.inf)
            started = trio.current_time()
            core.gossip(started)
            await self._flush()
            if early:
                # At most one early round between regular ones, so a storm of news
                # costs at most twice the packets instead of four times.
                early = False
                await trio.sleep_until(started + interval)
                continue
            # News nobody has been sent yet cuts the wait for the next round short
            # (to a quarter interval), so it crosses the cluster without waiting up
            # to a whole interval at every hop; repeats keep the interval. Not when
            # the queue overflows a datagram: early rounds would only split the
            # same news over more packets.
            await trio.sleep(interval / 4)
            await self._gossip_when(fresh=True, deadline=started + interval)
            early = trio.current_time() < started + interval

    async def _gossip_when(self, *, fresh: bool, deadline: float) -> None:
        self._gossip_wants_fresh = fresh
        with trio.move_on_at(deadline):
            while not self._gossip_ready():
                self._gossip_wakeup = trio.Event()
                await self._gossip_wakeup.wait()

    def _gossip_ready(self) -> bool:
        core = self.core
        if core.n_live == 1:
            return False
        broadcasts = core.broadcasts
        if self._gossip_wants_fresh:
            return broadcasts.fresh and broadcasts.size <= core.payload_budget
        return bool(broadcasts)

    async def _timer_loop(self) -> None:
        core = self.core
        while True:
            # _flush moves this scope's deadline when the core's timers change, which
            # costs no wakeup (chores move theirs later every probe tick).
            with trio.move_on_at(self._next_deadline()) as self._timer_scope:
                await trio.sleep_forever()
            now = trio.current_time()
            core.run_timers(now)
            core.run_chores(now)
            await self._flush()

    def _next_deadline(self) -> float:
        core = self.core
        deadline = core.next_timer()
        chore = core.next_chore()
        return chore if deadline is None else min(deadline, chore)

    async def _push_pull_loop(self) -> None:
        core = self.core
        # Spread first syncs over the whole (size-scaled) interval. The scale is only
        # known once we have joined, so the wait is finished in a second step.
        phase = self._rng.random()
        await trio.sleep(phase * self.config.push_pull_interval)
        await trio.sleep(phase * (core.push_pull_interval() - self.config.push_pull_interval))
        while True:
            target = core.sync_target()
            if target is not None and self._nursery is not None:
                self._nursery.start_soon(self._push_sync, target, False)
            await trio.sleep(core.push_pull_interval())

    async def _seed_loop(self) -> None:
        # A node that knows nobody keeps knocking on its seeds, backing off up to
        # 30 s, so a cluster re-forms after every member restarted or a partition.
        # It sleeps until it is alone (see _flush) instead of checking every period.
        core = self.core
        backoff = 1.0
        while True:
            seeds = [s for s in core.seeds if s != core.address]
            if not (seeds and core.n_live == 1 and not core.leaving):
                self._seed_wakeup = trio.Event()
                await self._seed_wakeup.wait()
                continue
            try:
                await self.join(seeds)
                backoff = 1.0
            except JoinError as exc:
                log.warning("%s: join failed: %s; retrying in %g s", self.name, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
            await trio.sleep(self.config.probe_interval)

    async def _seed_source_loop(self, source: SeedSource) -> None:
        static = list(self.config.seeds)
        while True:
            try:
                found = await source.resolve()
            except SeedSourceError as exc:
                log.warning("%s: seed source: %s", self.name, exc)
            else:
                self.core.seeds = list(dict.fromkeys(static + found))
                self._seed_wakeup.set()
            await trio.sleep(self.config.seed_refresh_interval)

    # ----- plumbing ------------------------------------------------------------------

    async def _push_sync(self, dest: Address, join: bool) -> bool:
        try:
            await self._transport.send_reliable(dest, self.core.sync_packet(join=join))
        except OSError as exc:
            self.core.stats["sync_failures"] += 1
            log.debug("%s: push-pull to %s:%s failed: %s", self.name, dest[0], dest[1], exc)
            return False
        return True

    async def _send_reliable(self, dest: Address, data: bytes) -> None:
        try:
            await self._transport.send_reliable(dest, data)
        except OSError:
            self.core.stats["reliable_send_failures"] += 1

    async def _flush(self) -> None:
        core = self.core
        # Queries first: the answers they produce are sent with this flush.
        queries, responses = core.take_queries()
        for response in responses:
            collector = self._queries.get(response.id)
            if collector is None:
                core.stats["query_responses_late"] += 1  # or forged, or duplicated
            else:
                collector.add(response.sender, response.payload)
        for query, deadline in queries:
            self._answer_query(query, deadline)
        out, events = core.take_output()
        if core.timer_changed:
            core.timer_changed = False
            self._timer_scope.deadline = self._next_deadline()
        if core.acks_received != self._seen_acks:
            self._seen_acks = core.acks_received
            self._ack_wakeup.set()
        if core.n_live == 1 and core.seeds:
            self._seed_wakeup.set()
        if self._gossip_ready():
            self._gossip_wakeup.set()
        if core.join_replies != self._seen_join_replies:
            self._seen_join_replies = core.join_replies
            self._sync_wakeup.set()
        if core.leaving and (not core.leave_pending() or core.n_live == 1):
            self._left_sent.set()
        for event in events:
            self._publish(event)
        for dest, data, reliable in out:
            if reliable:
                if self._nursery is not None:
                    self._nursery.start_soon(self._send_reliable, dest, data)
            else:
                await self._transport.send(dest, data)

    def _answer_query(self, query: Query, deadline: float) -> None:
        handler = self._query_handlers.get(query.kind)
        if handler is None:
            self.core.stats["queries_unhandled"] += 1
            return
        try:
            payload = handler(query)
        except Exception:
            self.core.stats["query_handler_errors"] += 1
            log.exception("%s: handler for %r queries failed", self.name, query.kind)
            return
        if payload is None or trio.current_time() > deadline:
            return
        if len(payload) > codec.MAX_QUERY_RESPONSE_PAYLOAD:
            self.core.stats["query_handler_errors"] += 1
            log.error(
                "%s: handler for %r queries answered %d bytes, over the limit",
                self.name,
                query.kind,
                len(payload),
            )
            return
        if query.origin == self.name:
            # Our own query: no need for a round trip through the network.
            collector = self._queries.get(query.id)
            if collector is not None:
                collector.add(self.name, payload)
            return
        self.core.respond(query, payload)

    def _publish_events(self) -> None:
        # Local writes produce events but nothing to send; anti-entropy carries them.
        for event in self.core.take_events():
            self._publish(event)

    def _publish(self, event: MemberEvent) -> None:
        if member_log.isEnabledFor(logging.INFO):
            m = event.member
            member_log.info(
                "%s: member %s %s (%s:%s, incarnation %d)",
                self.name,
                m.name,
                event.kind,
                m.address[0],
                m.address[1],
                m.incarnation,
            )
        self._hub.publish(event)


@asynccontextmanager
async def open_node(
    config: Config,
    *,
    transport: Transport | None = None,
    keyring: Keyring | None = None,
    insecure_plaintext: bool = False,
    seed_source: SeedSource | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block; every task stops on exit.

    Without `transport`, binds real UDP and TCP sockets at `config.bind`; binding a
    non-loopback address without a `keyring` raises `ValueError` unless
    `insecure_plaintext` is set. With a keyring (or `config.label`) every packet is
    authenticated (and encrypted) by `swimnode.net.security.SecureTransport`. A node with
    `config.seeds` (or a `seed_source`) joins through them in the background and keeps
    retrying while it knows nobody; `await node.join(...)` joins explicitly.
    """
    if transport is None:
        from .net.udp import open_udp_transport

        # Secure by default: refuse to talk in plaintext beyond this machine.
        check_secure_bind(config.bind[0], keyring, insecure_plaintext)
        async with (
            open_udp_transport(config.bind, advertise=config.advertise) as udp,
            _running(config, secure(udp, config, keyring), seed_source) as node,
        ):
            yield node
    else:
        async with _running(config, secure(transport, config, keyring), seed_source) as node:
            yield node


def secure(
    transport: Transport,
    config: Config,
    keyring: Keyring | None,
    *,
    clock: Callable[[], float] = time.time,
) -> Transport:
    """Wrap `transport` in the security layer when keys or a label are configured
    (and it is not wrapped already). `clock` dates packets for replay checks."""
    if isinstance(transport, SecureTransport) or (keyring is None and not config.label):
        return transport
    return SecureTransport(
        transport,
        keyring=keyring,
        label=config.label,
        replay_window=config.replay_window,
        clock=clock,
    )


@asynccontextmanager
async def _running(
    config: Config, transport: Transport, seed_source: SeedSource | None
) -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        node = Node(config, transport, seed_source=seed_source)
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
