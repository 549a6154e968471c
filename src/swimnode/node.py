"""The Trio driver of `SwimCore`: one nursery, one task per concern.

Tasks: receiving; one per timer concern of the core (probing, gossip, anti-entropy
and seeds), each asleep until the core's deadline for its concern; one per stream
send; and, with a seed source, its refresh. The driver makes no protocol decision: it
moves bytes between the transport and the core, tells the core the time, and hands
events and results to the user. Leaving the nursery stops every task.

An idle node should cost almost nothing, and on small machines each wakeup is what
costs (docs/agent.md, "Idle cost"): a task sleeps in a cancel scope whose deadline is
its concern's next deadline, and after every step the driver moves those deadlines
(which wakes nobody), so an idle node wakes about once per protocol period.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .eventhub import EventHub, EventStream
from .net.keyring import Keyring
from .net.security import SecureTransport, check_secure_bind
from .net.seeds import SeedSource, SeedSourceError
from .net.transport import Address, Transport
from .protocol.config import Config
from .protocol.contract import (
    JoinFinished,
    LeaveFinished,
    QueryFinished,
    QueryHandlerFailed,
    RejoinFailed,
    Signal,
    Timer,
)
from .protocol.core import SwimCore
from .protocol.events import MemberEvent
from .protocol.member import Member
from .protocol.messages import Query
from .protocol.queries import QueryHandler, QueryProgress, QueryResult

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


class _Waiter:
    """A command waiting for the signal that ends it."""

    __slots__ = ("done", "signal")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.signal: Signal | None = None


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
        self._scopes: dict[Timer, trio.CancelScope] = {}
        self._stopped = trio.Event()
        self._left = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random(config.seed)
        self._query_handlers: dict[str, QueryHandler] = {}
        self._joins: dict[int, _Waiter] = {}
        self._queries: dict[int, _Waiter] = {}
        self._query_progress: dict[int, Callable[[QueryProgress], object]] = {}

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
        self._pump_soon()

    def delete_state(self, key: str) -> bool:
        """Delete one key of this node's application state; false if it was not set."""
        deleted = self.core.delete_state(key, trio.current_time())
        self._pump_soon()
        return deleted

    def send_event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> int:
        """Send a user event to every member, this node included: each delivers it
        once, as a `UserEvent` in `events()` (deduplicated by its Lamport time, which
        is returned). `coalesce` tells event handlers that only the latest event of
        this name matters. Raises `ValueError` for a name over 64 bytes, a payload
        over 512 bytes, or more than 10 events a second."""
        ltime = self.core.send_event(name, payload, coalesce, trio.current_time())
        self._pump_soon()
        return ltime

    def stats(self) -> dict[str, int]:
        """Protocol counters, the awareness score and member counts."""
        return self.core.stats_snapshot()

    async def join(self, seeds: Iterable[Address]) -> int:
        """Exchange full state with each seed; return how many answered.

        Raises `JoinError` if none answered within `config.join_timeout`.
        """
        join_id = self.core.join(seeds, trio.current_time())
        if join_id is None:
            return 0
        finished = await self._wait_for(self._joins, join_id)
        assert isinstance(finished, JoinFinished)
        if finished.error is not None:
            raise JoinError(finished.error)
        return finished.answered

    def register_query_handler(self, kind: str, handler: QueryHandler | None) -> None:
        """Answer queries of `kind` with `handler` (None removes it). A member with
        no handler for a kind stays silent, and the origin lists it as missing. The
        handler runs in the node's receive path: it must be quick."""
        if handler is None:
            self._query_handlers.pop(kind, None)
        else:
            self._query_handlers[kind] = handler
        if self._core is not None:
            self._core.register_query_handler(kind, handler)

    async def query(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
        on_progress: Callable[[QueryProgress], object] | None = None,
    ) -> QueryResult:
        """Ask every member the filters select (us included) and gather the answers.

        `names` selects members by name, `state` by `(key, regex)` on their
        application state (all must match). `on_progress`, if given, is called with
        each ack and answer as it arrives (in the node's task: it must be quick).
        Returns once every selected member that is live now has answered (or acked
        without a responder), or after `timeout` seconds (default
        `default_query_timeout`: a few dozen gossip rounds). Raises `ValueError` if
        `kind`, `payload` or a filter is over the codec's limits or a regex is bad.
        (`timeout` is part of the query, which members use to drop stale answers, so
        it is a parameter rather than the caller's cancel scope.)
        """
        filters = (tuple(names), tuple(state))
        query_id = self.core.start_query(kind, payload, timeout, trio.current_time(), filters)
        if on_progress is not None:
            self._query_progress[query_id] = on_progress
        try:
            finished = await self._wait_for(self._queries, query_id)
        finally:
            self._query_progress.pop(query_id, None)
        assert isinstance(finished, QueryFinished)
        return finished.result

    def answer_query(self, query: Query, payload: bytes) -> None:
        """Answer `query` after the fact: for a handler that returned None because
        its answer takes time (the agent's event handlers do). Raises `ValueError`
        over 64 KiB."""
        self.core.answer_query(query, payload)
        self._pump_soon()

    async def wait_stopped(self) -> None:
        """Wait until the node's tasks have all ended (after `leave()` or cancel)."""
        await self._stopped.wait()

    async def leave(self) -> None:
        """Leave gracefully: disseminate our `left` record, then stop the node.

        Waits until the record has been sent its full retransmit count, or at most
        `config.leave_timeout`.
        """
        self.core.leave(trio.current_time())
        await self._pump()
        await self._left.wait()
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
        core = self._core = SwimCore(
            config,
            now=trio.current_time(),
            rng=random.Random(self._rng.getrandbits(64)),
            generation=new_generation(),
            framing_overhead=self._transport.overhead,
        )
        for kind, handler in self._query_handlers.items():
            core.register_query_handler(kind, handler)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                for timer in Timer:
                    # Named for its concern, so a profile or a test tells them apart.
                    name = f"{__name__}.Node.{timer.name.lower()}"
                    nursery.start_soon(self._timer_loop, timer, name=name)
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
            core.handle_packet(trio.current_time(), pkt.source, pkt.data, pkt.reliable)
            await self._pump()

    async def _timer_loop(self, timer: Timer) -> None:
        core = self.core
        while True:
            # _collect moves this scope's deadline whenever the core's changes,
            # which wakes nobody; only a deadline that comes does.
            with trio.move_on_at(core.next_deadline(timer)) as self._scopes[timer]:
                await trio.sleep_forever()
            core.handle_timer(timer, trio.current_time())
            await self._pump()

    async def _seed_source_loop(self, source: SeedSource) -> None:
        while True:
            try:
                found = await source.resolve()
            except SeedSourceError as exc:
                log.warning("%s: seed source: %s", self.name, exc)
            else:
                self.core.set_seeds(found)
                self._pump_soon()
            await trio.sleep(self.config.seed_refresh_interval)

    async def _stream(self, ticket: int, dest: Address, data: bytes) -> None:
        try:
            await self._transport.send_reliable(dest, data)
        except OSError as exc:
            ok = False
            log.debug("%s: stream to %s:%s failed: %s", self.name, dest[0], dest[1], exc)
        else:
            ok = True
        self.core.handle_stream_result(ticket, ok, trio.current_time())
        await self._pump()

    # ----- plumbing ------------------------------------------------------------------

    async def _wait_for(self, waiters: dict[int, _Waiter], key: int) -> Signal | None:
        waiter = waiters[key] = _Waiter()
        try:
            await self._pump()
            await waiter.done.wait()
        finally:
            del waiters[key]
        return waiter.signal

    async def _pump(self) -> None:
        """Carry out everything the core asked for since the last call."""
        for dest, data in self._collect():
            await self._transport.send(dest, data)

    def _pump_soon(self) -> None:
        """`_pump` for synchronous callers: datagrams go out from a task."""
        datagrams = self._collect()
        if datagrams and self._nursery is not None:
            self._nursery.start_soon(self._send_datagrams, datagrams)

    async def _send_datagrams(self, datagrams: list[tuple[Address, bytes]]) -> None:
        for dest, data in datagrams:
            await self._transport.send(dest, data)

    def _collect(self) -> list[tuple[Address, bytes]]:
        """Take the core's output: move the timer tasks' deadlines, act on signals,
        publish events, start stream sends; return the datagrams to send."""
        core = self.core
        out = core.take_output()
        for timer, scope in self._scopes.items():
            deadline = core.next_deadline(timer)
            # Setting a deadline costs Trio some work even when unchanged.
            if deadline != scope.deadline:
                scope.deadline = deadline
        for signal in out.signals:
            self._on_signal(signal)
        for event in out.events:
            self._publish(event)
        if self._nursery is not None:
            for ticket, dest, data in out.streams:
                self._nursery.start_soon(self._stream, ticket, dest, data)
        return out.datagrams

    def _on_signal(self, signal: Signal) -> None:
        match signal:
            case JoinFinished():
                self._wake(self._joins, signal.join_id, signal)
            case QueryFinished():
                self._wake(self._queries, signal.result.id, signal)
            case QueryProgress():
                callback = self._query_progress.get(signal.id)
                if callback is not None:
                    callback(signal)
            case LeaveFinished():
                self._left.set()
            case RejoinFailed(error, retry_in):
                log.warning("%s: join failed: %s; retrying in %g s", self.name, error, retry_in)
            case QueryHandlerFailed(kind, error):
                log.error(
                    "%s: handler for %r queries failed: %s", self.name, kind, error, exc_info=error
                )

    @staticmethod
    def _wake(waiters: dict[int, _Waiter], key: int, signal: Signal) -> None:
        waiter = waiters.get(key)
        if waiter is not None:
            waiter.signal = signal
            waiter.done.set()

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
