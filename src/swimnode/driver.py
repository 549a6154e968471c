"""What every driver of `SwimCore` does, whatever its event loop.

A driver moves bytes between a transport and the core, tells the core the time,
wakes itself at the core's deadlines, and hands events and results to the user.
`DriverBase` holds the part that does not depend on the event loop: the public
reads and state calls, the commands' bookkeeping, and what to do with the core's
output (signals, events, streams). `swimnode.node.Node` (Trio) and
`swimnode.aionode.AioDriver` (asyncio) add only how they wait: sleeping until a
deadline, receiving, sending streams, and waking a waiting command.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from .eventhub import EventHub, EventStream
from .net.seeds import SeedSource, SeedSourceError
from .net.transport import Address
from .protocol.config import Config
from .protocol.contract import (
    JoinFinished,
    LeaveFinished,
    QueryFinished,
    QueryHandlerFailed,
    RejoinFailed,
    Signal,
)
from .protocol.core import SwimCore
from .protocol.events import MemberEvent
from .protocol.member import Member
from .protocol.messages import Query
from .protocol.queries import QueryHandler, QueryProgress, QueryResult
from .wakeup import Wakeup

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


class Waiter(Protocol):
    """A command waiting for the signal that ends it; `finish` wakes it."""

    signal: Signal | None

    def finish(self) -> None: ...


T_co = TypeVar("T_co", covariant=True)


class Receivable(Protocol[T_co]):
    """Something that fills on the node's thread and is read without waiting
    (`EventStream`, `QueryReplies`): another event loop or thread waits for it with
    `set_notify` and takes what came with `receive_nowait`."""

    def receive_nowait(self) -> T_co | None: ...

    @property
    def finished(self) -> bool: ...

    def set_notify(self, callback: Callable[[], None] | None) -> None: ...


class QueryReplies:
    """One query's acks and answers as they arrive (`QueryProgress`), then its
    `result`: `async for reply in replies` in Trio, ending when the query does.

    It only relays what the core signals for the query (the core gathers, counts
    and ends it), and is the query's waiter: `finish` comes with the
    `QueryFinished` signal, or with None when the node stops first.
    """

    def __init__(self, query_id: int) -> None:
        self.id = query_id
        self.signal: Signal | None = None
        self._arrived: deque[QueryProgress] = deque()
        self._done = False
        self._wakeup = Wakeup()

    def add(self, progress: QueryProgress) -> None:
        """An ack or an answer came (from the node's `QueryProgress` signal)."""
        self._arrived.append(progress)
        self._wakeup.wake()

    def finish(self) -> None:
        """The query ended (`signal` is its `QueryFinished`), or the node stopped."""
        self._done = True
        self._wakeup.wake()

    def set_notify(self, callback: Callable[[], None] | None) -> None:
        """Also call `callback()` (on the node's thread; quick, never raising)
        whenever a reply arrives or the query ends."""
        self._wakeup.notify = callback

    def receive_nowait(self) -> QueryProgress | None:
        """The next reply if one has arrived, else None; never waits."""
        return self._arrived.popleft() if self._arrived else None

    @property
    def finished(self) -> bool:
        """True once the query has ended and every reply has been taken."""
        return self._done and not self._arrived

    @property
    def result(self) -> QueryResult:
        """What the query gathered. Raises `RuntimeError` before it has ended, and
        `NodeNotRunning` if the node stopped first."""
        if not self._done:
            raise RuntimeError("the query has not finished")
        if not isinstance(self.signal, QueryFinished):
            raise NodeNotRunning("the node stopped before the query finished")
        return self.signal.result

    def __aiter__(self) -> QueryReplies:
        return self

    async def __anext__(self) -> QueryProgress:
        while (reply := self.receive_nowait()) is None:
            if self._done:
                raise StopAsyncIteration
            await self._wakeup.wait()
        return reply


class DriverBase:
    """The event-loop-independent half of a node (see the module docstring).

    A subclass provides `_now`, `_wait_for`, `_pump_soon`, `_move_deadlines`,
    `_start_streams`, `_on_left` and `_has_stopped`, and creates the core with
    `_start_core`.
    """

    def __init__(self, config: Config, *, seed_source: SeedSource | None = None) -> None:
        self.config = config
        self._seed_source = seed_source
        self._core: SwimCore | None = None
        self._hub = EventHub(config.event_buffer)
        self._rng = random.Random(config.seed)
        self._query_handlers: dict[str, QueryHandler] = {}
        self._joins: dict[int, Waiter] = {}
        self._queries: dict[int, Waiter] = {}
        self._query_progress: dict[int, Callable[[QueryProgress], object]] = {}

    # ----- what a subclass provides ---------------------------------------------------

    def _now(self) -> float:
        """The event loop's clock, which the core's deadlines are on."""
        raise NotImplementedError

    async def _wait_for(self, waiters: dict[int, Waiter], key: int) -> Signal | None:
        """Register a waiter under `key`, send what the core queued, and wait for
        the signal that ends the command."""
        raise NotImplementedError

    def _pump_soon(self) -> None:
        """Carry out what the core asked for, from a synchronous call."""
        raise NotImplementedError

    def _move_deadlines(self) -> None:
        """Move each timer concern's sleep to the core's deadline for it."""
        raise NotImplementedError

    def _start_streams(self, streams: list[tuple[int, Address, bytes]]) -> None:
        """Start one reliable send per `(ticket, dest, data)`; each reports back
        with `SwimCore.handle_stream_result`."""
        raise NotImplementedError

    def _on_left(self) -> None:
        """The leave record has been sent its full count: a waiting leave ends."""
        raise NotImplementedError

    def _has_stopped(self) -> bool:
        """Whether the node ran and has stopped (a command would wait for ever)."""
        raise NotImplementedError

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
        self.core.set_state(key, value, self._now())
        self._pump_soon()

    def delete_state(self, key: str) -> bool:
        """Delete one key of this node's application state; false if it was not set."""
        deleted = self.core.delete_state(key, self._now())
        self._pump_soon()
        return deleted

    def send_event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> int:
        """Send a user event to every member, this node included: each delivers it
        once, as a `UserEvent` in `events()` (deduplicated by its Lamport time, which
        is returned). `coalesce` tells event handlers that only the latest event of
        this name matters. Raises `ValueError` for a name over 64 bytes, a payload
        over 512 bytes, or more than 10 events a second."""
        ltime = self.core.send_event(name, payload, coalesce, self._now())
        self._pump_soon()
        return ltime

    def stats(self) -> dict[str, int]:
        """Protocol counters, the awareness score and member counts."""
        return self.core.stats_snapshot()

    async def join(self, seeds: Iterable[Address]) -> int:
        """Exchange full state with each seed; return how many answered.

        Raises `JoinError` if none answered within `config.join_timeout`.
        """
        join_id = self._running_core().join(seeds, self._now())
        if join_id is None:
            return 0
        finished = await self._wait_for(self._joins, join_id)
        if not isinstance(finished, JoinFinished):
            raise NodeNotRunning("the node stopped before the join finished")
        if finished.error is not None:
            raise JoinError(finished.error)
        return finished.answered

    def on_query(self, name: str, handler: QueryHandler | None) -> None:
        """Answer queries named `name` with `handler(query)`, which returns the
        answer's payload, or None to answer nothing now (`answer_query` can answer
        later); None as `handler` removes it, and `"*"` answers names without a
        handler of their own. A member with no handler for a name stays silent, and
        the origin lists it as missing. The handler runs in the node's receive path:
        it must be quick. An exception it raises is logged and answers nothing."""
        if handler is None:
            self._query_handlers.pop(name, None)
        else:
            self._query_handlers[name] = handler
        if self._core is not None:
            self._core.register_query_handler(name, handler)

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
        each ack and answer as it arrives (in the node's task: it must be quick;
        `query_stream` hands them to a loop instead). Returns once every selected
        member that is live now has answered (or acked without a responder), or
        after `timeout` seconds (default `default_query_timeout`: a few dozen
        gossip rounds). Raises `ValueError` if `kind`, `payload` or a filter is
        over the codec's limits or a regex is bad, and `NodeNotRunning` if the node
        stops first. (`timeout` is part of the query, which members use to drop
        stale answers, so it is a parameter rather than the caller's cancel scope.)
        """
        query_id = self._start_query(kind, payload, timeout, names, state)
        if on_progress is not None:
            self._query_progress[query_id] = on_progress
        try:
            finished = await self._wait_for(self._queries, query_id)
        finally:
            self._query_progress.pop(query_id, None)
        if not isinstance(finished, QueryFinished):
            raise NodeNotRunning("the node stopped before the query finished")
        return finished.result

    def _start_query(
        self,
        kind: str,
        payload: bytes,
        timeout: float | None,
        names: Iterable[str],
        state: Iterable[tuple[str, str]],
    ) -> int:
        filters = (tuple(names), tuple(state))
        return self._running_core().start_query(kind, payload, timeout, self._now(), filters)

    def _running_core(self) -> SwimCore:
        if self._has_stopped():
            raise NodeNotRunning("the node has stopped")
        return self.core

    def open_replies(
        self,
        kind: str,
        payload: bytes = b"",
        timeout: float | None = None,
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
    ) -> QueryReplies:
        """Start a query whose acks and answers go to the returned `QueryReplies`
        until `close_replies`: the part of `query_stream` every flavour shares.
        Arguments and errors are `query`'s."""
        replies = QueryReplies(self._start_query(kind, payload, timeout, names, state))
        self._queries[replies.id] = replies
        self._query_progress[replies.id] = replies.add
        self._pump_soon()
        return replies

    def close_replies(self, replies: QueryReplies) -> None:
        """Stop relaying to `replies` (the query itself runs on to its end)."""
        self._queries.pop(replies.id, None)
        self._query_progress.pop(replies.id, None)

    def _end_commands(self) -> None:
        """The node stopped: wake every waiting command (with no signal)."""
        for waiter in (*self._joins.values(), *self._queries.values()):
            waiter.finish()

    def answer_query(self, query: Query, payload: bytes) -> None:
        """Answer `query` after the fact: for a handler that returned None because
        its answer takes time (the agent's event handlers do). Raises `ValueError`
        over 64 KiB."""
        self.core.answer_query(query, payload)
        self._pump_soon()

    # ----- plumbing ------------------------------------------------------------------

    def _start_core(self, advertise: Address, overhead: int) -> SwimCore:
        """Create the core (once), `advertise` filling in a config without one."""
        if self._core is not None:
            raise RuntimeError("a Node can only be run once")
        if self.config.advertise is None:
            self.config = self.config.replace(advertise=advertise)
        core = self._core = SwimCore(
            self.config,
            now=self._now(),
            rng=random.Random(self._rng.getrandbits(64)),
            generation=new_generation(),
            framing_overhead=overhead,
        )
        for kind, handler in self._query_handlers.items():
            core.register_query_handler(kind, handler)
        return core

    async def _refresh_seeds(
        self,
        resolve: Callable[[], Awaitable[list[Address]]],
        sleep: Callable[[float], Awaitable[object]],
    ) -> None:
        """Ask the seed source (`resolve`) every `config.seed_refresh_interval`
        (slept with `sleep`) and give the core what it found."""
        while True:
            try:
                found = await resolve()
            except SeedSourceError as exc:
                log.warning("%s: seed source: %s", self.name, exc)
            else:
                self.core.set_seeds(found)
                self._pump_soon()
            await sleep(self.config.seed_refresh_interval)

    async def _send_stream(
        self,
        send_reliable: Callable[[Address, bytes], Awaitable[None]],
        ticket: int,
        dest: Address,
        data: bytes,
    ) -> None:
        """Send one of the core's stream messages and tell the core how it went;
        the caller then carries out what the core asks."""
        try:
            await send_reliable(dest, data)
        except OSError as exc:
            ok = False
            log.debug("%s: stream to %s:%s failed: %s", self.name, dest[0], dest[1], exc)
        else:
            ok = True
        self.core.handle_stream_result(ticket, ok, self._now())

    def _collect(self) -> list[tuple[Address, bytes]]:
        """Take the core's output: move the timer concerns' deadlines, act on
        signals, publish events, start stream sends; return the datagrams to send."""
        out = self.core.take_output()
        self._move_deadlines()
        for signal in out.signals:
            self._on_signal(signal)
        for event in out.events:
            self._publish(event)
        if out.streams:
            self._start_streams(out.streams)
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
                self._on_left()
            case RejoinFailed(error, retry_in):
                log.warning("%s: join failed: %s; retrying in %g s", self.name, error, retry_in)
            case QueryHandlerFailed(kind, error):
                log.error(
                    "%s: handler for %r queries failed: %s", self.name, kind, error, exc_info=error
                )

    @staticmethod
    def _wake(waiters: dict[int, Waiter], key: int, signal: Signal) -> None:
        waiter = waiters.get(key)
        if waiter is not None:
            waiter.signal = signal
            waiter.finish()

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
