"""swimnode for asyncio programs, in the program's own event loop and thread.

    async with swimnode.aio.open_node(config) as node:
        node.set_state("role", "web")
        async for event in node.events():
            ...

The node is the Trio node itself (`swimnode.node.Node`), run as a Trio *guest* on
the asyncio loop (`trio.lowlevel.start_guest_run`): Trio's tasks run in the loop's
thread, between asyncio's callbacks, and only Trio's wait for I/O sits in a helper
thread. One guest run per loop (Trio allows one per thread) hosts all the loop's
nodes: `TrioGuest`, started with the first node and stopped with the last, or opened
explicitly to choose its clock. docs/embedding.md compares this with the other
flavours, with figures.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import trio

from .eventhub import EventStream
from .hosted import NodeRunner, NodeView
from .net.keyring import Keyring
from .net.seeds import SeedSource
from .net.transport import Address, Transport
from .node import Node, NodeNotRunning
from .protocol.config import Config
from .protocol.events import Event
from .protocol.queries import QueryResult

__all__ = ["AioEventStream", "AioNode", "NodeNotRunning", "TrioGuest", "open_node"]

T = TypeVar("T")

_guests: dict[asyncio.AbstractEventLoop, TrioGuest] = {}


def _wake_trio() -> None:
    """Scheduled on Trio only to end its wait for I/O, so that it re-reads its
    run queue and deadlines after the host changed them."""


class TrioGuest:
    """The Trio run that hosts the nodes of one asyncio event loop.

    `open_node` starts one with the loop's first node and stops it with the last.
    Open one yourself (`async with TrioGuest(clock=...)`) to choose Trio's clock,
    e.g. `trio.testing.MockClock` to simulate on `swimnode.testing.Network`; it then
    hosts every node of the loop until its block ends.
    """

    def __init__(self, *, clock: trio.abc.Clock | None = None) -> None:
        self._clock = clock
        self._implicit = False
        self._users = 0
        self._closing = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()

    async def __aenter__(self) -> TrioGuest:
        await self._start(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = _guests.get(loop)
        if previous is not None:
            if not previous._closing:
                raise RuntimeError("this event loop already has a swimnode TrioGuest")
            await _uncancellable(previous._done)
        self.loop = loop
        self.thread = threading.get_ident()
        self._started: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        _guests[loop] = self
        try:
            trio.lowlevel.start_guest_run(
                self._main,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon,
                done_callback=self._finished,
                # asyncio owns the signal wakeup fd; Trio must not take it over.
                host_uses_signal_set_wakeup_fd=True,
                clock=self._clock,
            )
        except BaseException:
            del _guests[loop]
            raise
        await _uncancellable(self._started)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set_result(None)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _finished(self, result: outcome.Outcome[None]) -> None:
        if _guests.get(self.loop) is self:
            del _guests[self.loop]
        if not self._started.done():
            self._started.set_exception(
                result.error
                if isinstance(result, outcome.Error)
                else RuntimeError("the Trio guest run ended before it started")
            )
        if isinstance(result, outcome.Error):
            self._done.set_exception(result.error)
        else:
            self._done.set_result(None)

    async def aclose(self) -> None:
        """Stop the run (every node it still hosts stops, without leaving) and
        wait until it has ended."""
        if not self._closing:
            self._closing = True
            self.run_soon(self._stop.set)
        await _uncancellable(self._done)

    def run_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` in Trio soon (from any thread), waking Trio if it waits."""
        if self._token is None:
            raise RuntimeError("the Trio guest run has not started")
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise NodeNotRunning("the node's Trio run has ended") from None

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await async_fn(*args)` in a Trio task; cancelling the asyncio caller
        cancels the Trio task."""
        future: asyncio.Future[T] = self.loop.create_future()
        scope = trio.CancelScope()

        async def task() -> None:
            try:
                with scope:
                    result = await async_fn(*args)
                    if not future.done():
                        future.set_result(result)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            finally:
                # Trio cancelled the task itself: the whole run is stopping.
                if not future.done():
                    future.set_exception(NodeNotRunning("the node's Trio run has ended"))

        assert self._nursery is not None
        self.run_soon(self._nursery.start_soon, task)
        try:
            return await future
        except asyncio.CancelledError:
            self.run_soon(scope.cancel)
            raise

    @classmethod
    async def _acquire(cls, loop: asyncio.AbstractEventLoop) -> TrioGuest:
        guest = _guests.get(loop)
        if guest is not None and not guest._closing:
            await _uncancellable(guest._started)
        else:
            guest = cls()
            guest._implicit = True
            await guest._start(loop)
        guest._users += 1
        return guest

    async def _release(self) -> None:
        self._users -= 1
        if self._implicit and self._users == 0:
            await self.aclose()


async def _uncancellable(future: asyncio.Future[T]) -> T:
    """Wait for `future` even if cancelled meanwhile (a cleanup that must finish,
    such as closing sockets); the cancellation is raised afterwards."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


class AioNode(NodeView):
    """One cluster member, for asyncio code. Create with `open_node`.

    Use it only from the event loop (and thread) that opened it; from elsewhere
    every call raises `RuntimeError`. After the node has stopped, calls raise
    `NodeNotRunning`.
    """

    def __init__(self, runner: NodeRunner, node: Node, guest: TrioGuest) -> None:
        super().__init__(runner, node)
        self._guest = guest

    def _check_loop(self) -> None:
        guest = self._guest
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if threading.get_ident() != guest.thread or loop not in (None, guest.loop):
            raise RuntimeError(
                f"swimnode.aio node {self.name!r} belongs to another event loop or thread; "
                "call it from its own loop (from elsewhere, use "
                "asyncio.run_coroutine_threadsafe or loop.call_soon_threadsafe)"
            )

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        # Trio's tasks run in this thread between asyncio's callbacks, so the node's
        # state can be read directly.
        self._check_loop()
        return self._checked(fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        result = self._read(fn, *args)
        # The call may have queued a Trio task or moved a deadline while Trio waits
        # for I/O in its helper thread with the old timeout: wake it to re-read them.
        self._guest.run_soon(_wake_trio)
        return result

    async def _command(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._check_loop()
        if self._runner.stopped:
            raise NodeNotRunning("the node has stopped")
        return await self._guest.run(self._runner.command, fn, *args)

    def events(self) -> AioEventStream:
        """Subscribe to membership events from now on: `async for ev in node.events()`.

        The same events, buffer and `EventsLost` rule as `swimnode.Node.events`;
        iteration ends when the node stops, once the buffer is drained.
        """
        stream = self._read(self._node.events)
        return AioEventStream(stream, self)

    async def join(self, seeds: Iterable[Address]) -> int:
        """Exchange full state with each seed; return how many answered. Raises
        `swimnode.JoinError` if none answered within `config.join_timeout`."""
        return await self._command(self._node.join, list(seeds))

    async def leave(self) -> None:
        """Leave gracefully, then stop the node (see `swimnode.Node.leave`);
        return once it has stopped."""
        self._check_loop()
        await self._guest.run(self._runner.leave, self._node)

    async def query(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> QueryResult:
        """Ask every member and gather the answers (see `swimnode.Node.query`)."""

        async def ask() -> QueryResult:
            return await self._node.query(kind, payload, timeout=timeout)

        return await self._command(ask)


class AioEventStream:
    """One subscription's events for asyncio: `async for event in stream`.

    It reads the node's own bounded buffer (`swimnode.EventStream`), so a slow
    reader gets `EventsLost` where it missed events, and nothing else grows.
    """

    def __init__(self, stream: EventStream, node: AioNode) -> None:
        self._stream = stream
        self._node = node
        self._waiter: asyncio.Future[None] | None = None
        # Called by the node in the loop's thread, while a Trio task runs.
        stream.set_notify(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> AioEventStream:
        return self

    async def __anext__(self) -> Event:
        self._node._check_loop()
        while True:
            event = self._stream.receive_nowait()
            if event is not None:
                return event
            if self._stream.finished:
                raise StopAsyncIteration
            self._waiter = self._node._guest.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop receiving events; a waiting iteration ends."""
        self._stream.close()


@asynccontextmanager
async def open_node(
    config: Config,
    *,
    transport: Transport | None = None,
    keyring: Keyring | None = None,
    insecure_plaintext: bool = False,
    seed_source: SeedSource | None = None,
    leave_on_exit: bool = False,
) -> AsyncIterator[AioNode]:
    """Run a node for the duration of the block, in this asyncio loop.

    The arguments and security rules are `swimnode.open_node`'s, and bad ones raise
    the same errors before anything starts. Leaving the block stops the node and
    closes its sockets, after a graceful leave if `leave_on_exit`; a node that
    failed while running raises its error there.
    """
    runner = NodeRunner(
        config,
        transport=transport,
        keyring=keyring,
        insecure_plaintext=insecure_plaintext,
        seed_source=seed_source,
        leave_on_exit=leave_on_exit,
    )
    loop = asyncio.get_running_loop()
    guest = await TrioGuest._acquire(loop)
    try:
        assert guest._nursery is not None
        try:
            node = await guest.run(guest._nursery.start, runner.serve)
        except asyncio.CancelledError:
            # It may have started all the same: make sure it stops.
            guest.run_soon(runner.request_stop)
            raise
        try:
            yield AioNode(runner, node, guest)
        finally:
            if not runner.stopped:
                guest.run_soon(runner.request_stop)
            await _uncancellable(asyncio.ensure_future(guest.run(runner.wait_done)))
        if runner.error is not None:
            raise runner.error
    finally:
        await guest._release()
