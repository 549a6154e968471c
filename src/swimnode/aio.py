"""swimnode for asyncio programs, in the program's own event loop and thread.

    async with swimnode.aio.open_node(config) as node:
        node.set_state("role", "web")
        async for event in node.events():
            ...

The node is the protocol core (`swimnode.protocol.core.SwimCore`) driven natively
on the asyncio loop by `swimnode.aionode.AioDriver`: asyncio tasks for the timer
concerns, the transport's callback for receiving, asyncio UDP and TCP sockets
(`swimnode.net.aioudp`) and the shared security rules
(`swimnode.net.aiotransport.AioSecureTransport`). Nothing runs in another thread
and no Trio run is involved, except a short `trio.run` in a worker thread each time
a seed source (Trio code) is read; without one, Trio is not even imported. It works
on uvloop too. docs/embedding.md compares this with the other flavours, with
figures, and says why it replaced running the Trio node in Trio's guest mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Generic, TypeVar

from .aionode import AioDriver
from .driver import NodeNotRunning, QueryReplies, Receivable
from .eventhub import EventStream
from .net.aiotransport import AioTransport, secure
from .net.aioudp import open_aio_udp_transport
from .net.keyring import Keyring
from .net.securelayer import check_secure_bind
from .net.seeds import SeedSource
from .net.transport import Address
from .nodeview import NodeView
from .protocol.config import Config
from .protocol.events import Event
from .protocol.queries import QueryProgress, QueryResult

__all__ = ["AioEventStream", "AioNode", "AioQueryReplies", "NodeNotRunning", "open_node"]

T = TypeVar("T")


async def _uncancellable(future: asyncio.Future[T]) -> T:
    """Wait for `future` even if cancelled meanwhile (a cleanup that must finish,
    such as a graceful leave or closing sockets); the cancellation is raised
    afterwards."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


class AioNode(NodeView[AioDriver, AioDriver]):
    """One cluster member, for asyncio code. Create with `open_node`.

    Use it only from the event loop (and thread) that opened it; from elsewhere
    every call raises `RuntimeError`. After the node has stopped, calls raise
    `NodeNotRunning`.
    """

    def __init__(self, driver: AioDriver) -> None:
        super().__init__(driver, driver)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def _check_loop(self) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if threading.get_ident() != self._thread or loop not in (None, self._loop):
            raise RuntimeError(
                f"swimnode.aio node {self.name!r} belongs to another event loop or thread; "
                "call it from its own loop (from elsewhere, use "
                "asyncio.run_coroutine_threadsafe or loop.call_soon_threadsafe)"
            )

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        # The node runs in this thread between the loop's other callbacks, so its
        # state can be read (and changed) directly.
        self._check_loop()
        return self._checked(fn, *args)

    async def _command(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._check_loop()
        if self._runner.stopped:
            raise NodeNotRunning("the node has stopped")
        return await fn(*args)

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
        await self._command(self._node.leave)

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
        """Ask every member the filters select and gather the answers (see
        `swimnode.Node.query`); `on_progress` runs in this loop's thread for each ack
        and answer as it arrives."""
        names, state = list(names), list(state)

        async def ask() -> QueryResult:
            return await self._node.query(
                kind, payload, timeout=timeout, names=names, state=state, on_progress=on_progress
            )

        return await self._command(ask)

    @asynccontextmanager
    async def query_stream(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
    ) -> AsyncIterator[AioQueryReplies]:
        """`query`, with each ack and answer handed to the block as it arrives
        (see `swimnode.Node.query_stream`):

            async with node.query_stream("ping") as replies:
                async for reply in replies:
                    ...
            print(replies.result.missing)
        """
        replies = self._write(self._node.open_replies, kind, payload, timeout, names, state)
        try:
            yield AioQueryReplies(replies, self)
        finally:
            self._node.close_replies(replies)


class _AioReader(Generic[T]):
    """Waits in asyncio for what the node puts in `source` (it runs in the same
    loop, so only the waiting is asyncio's): `async for item in reader`."""

    def __init__(self, source: Receivable[T], node: AioNode) -> None:
        self._source = source
        self._node = node
        self._waiter: asyncio.Future[None] | None = None
        # Called by the node in the loop's thread, from its receive path or a task.
        source.set_notify(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _AioReader[T]:
        return self

    async def __anext__(self) -> T:
        self._node._check_loop()
        while True:
            item = self._source.receive_nowait()
            if item is not None:
                return item
            if self._source.finished:
                raise StopAsyncIteration
            self._waiter = self._node._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class AioEventStream(_AioReader[Event]):
    """One subscription's events for asyncio: `async for event in stream`.

    It reads the node's own bounded buffer (`swimnode.EventStream`), so a slow
    reader gets `EventsLost` where it missed events, and nothing else grows.
    """

    def __init__(self, stream: EventStream, node: AioNode) -> None:
        super().__init__(stream, node)
        self._stream = stream

    def close(self) -> None:
        """Stop receiving events; a waiting iteration ends."""
        self._stream.close()


class AioQueryReplies(_AioReader[QueryProgress]):
    """One query's acks and answers for asyncio (`AioNode.query_stream`):
    `async for reply in replies`, ending with the query."""

    def __init__(self, replies: QueryReplies, node: AioNode) -> None:
        super().__init__(replies, node)
        self._replies = replies

    @property
    def result(self) -> QueryResult:
        """What the query gathered (see `swimnode.driver.QueryReplies.result`)."""
        return self._replies.result


@asynccontextmanager
async def open_node(
    config: Config,
    *,
    transport: AioTransport | None = None,
    keyring: Keyring | None = None,
    insecure_plaintext: bool = False,
    seed_source: SeedSource | None = None,
    leave_on_exit: bool = False,
) -> AsyncIterator[AioNode]:
    """Run a node for the duration of the block, in this asyncio loop.

    The arguments and security rules are `swimnode.open_node`'s, and bad ones raise
    the same errors before anything starts; `transport`, if given, is an asyncio
    transport (`swimnode.net.aiotransport.AioTransport`, such as the simulated
    network's `swimnode.testing.aionetwork.AioNetwork`). Leaving the block stops the
    node and closes its sockets, after a graceful leave if `leave_on_exit`; a node
    that failed while running raises its error there.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a swimnode.Config, not {type(config).__name__}")
    async with AsyncExitStack() as stack:
        if transport is None:
            # Secure by default: refuse to talk in plaintext beyond this machine.
            check_secure_bind(config.bind[0], keyring, insecure_plaintext)
            transport = await stack.enter_async_context(
                open_aio_udp_transport(config.bind, advertise=config.advertise)
            )
        driver = AioDriver(config, secure(transport, config, keyring), seed_source=seed_source)
        driver.start()
        try:
            yield AioNode(driver)
        finally:
            await _uncancellable(asyncio.ensure_future(_stop(driver, leave_on_exit)))
    if driver.error is not None:
        raise driver.error


async def _stop(driver: AioDriver, leave: bool) -> None:
    """Leave first if asked and still running, then stop and close everything."""
    if leave and not driver.stopped:
        # NodeNotRunning: it stopped (failed) meanwhile, so there is nothing to leave.
        with contextlib.suppress(NodeNotRunning):
            await driver.leave()
    await driver.aclose()
