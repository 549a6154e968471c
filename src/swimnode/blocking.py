"""swimnode for threaded programs: the node runs in one background thread.

    with swimnode.blocking.start_node(config) as node:
        node.set_state("role", "worker")
        for event in node.events():
            ...

The node is the Trio node itself (`swimnode.node.Node`) under `trio.run` in a
daemon thread (`NodeThread`); every call from another thread is carried to it with
`trio.from_thread`, so all of them are safe from any thread. Leaving the block,
`node.close()`, Ctrl-C in the block, or the interpreter's exit stops it (after a
graceful leave if `leave_on_exit`). docs/embedding.md compares this with the other
flavours, with figures.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import trio

from .driver import QueryReplies, Receivable
from .eventhub import EventStream
from .hosted import NodeRunner
from .net.keyring import Keyring
from .net.seeds import SeedSource
from .net.transport import Address, Transport
from .node import Node, NodeNotRunning
from .nodeview import NodeView
from .protocol.config import Config
from .protocol.events import Event
from .protocol.queries import QueryProgress, QueryResult

__all__ = [
    "BlockingEventStream",
    "BlockingNode",
    "BlockingQueryReplies",
    "EventCallback",
    "NodeNotRunning",
    "NodeThread",
    "start_node",
]

T = TypeVar("T")
log = logging.getLogger("swimnode")


class NodeThread:
    """One daemon thread running Trio, hosting any number of nodes.

    `start_node` gives each node a thread of its own; a program (or a simulation,
    with `clock=trio.testing.MockClock(...)`) that runs many nodes can share one:
    `with NodeThread() as thread: node = thread.start_node(config)`. Closing the
    thread (also at the interpreter's exit) stops the nodes it still hosts.
    """

    def __init__(self, *, clock: trio.abc.Clock | None = None, name: str = "swimnode") -> None:
        self._clock = clock
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._runners: list[NodeRunner] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> NodeThread:
        """Start the thread; return once Trio runs in it."""
        self._thread.start()
        self._started.wait()
        if self._token is None:
            self._thread.join()
            raise RuntimeError("the swimnode thread failed to start") from self._error
        # Daemon thread plus an exit hook: the interpreter neither waits for the
        # thread nor kills it mid-leave; the hook stops it cleanly first.
        atexit.register(self.close)
        return self

    def __enter__(self) -> NodeThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=self._clock)
        except BaseException as exc:
            self._error = exc
            log.error("swimnode thread failed: %s", exc, exc_info=exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _stop_nodes(self) -> None:
        async with trio.open_nursery() as nursery:
            for runner in self._runners:
                runner.request_stop()
                nursery.start_soon(runner.wait_done)

    def in_thread(self) -> bool:
        """Whether the caller runs in this thread (e.g. in an event callback)."""
        return threading.get_ident() == self._thread.ident

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await async_fn(*args)` in the thread; block until it is done."""
        if self.in_thread():
            raise RuntimeError(
                "a blocking swimnode call cannot run on the node's own thread "
                "(in an event callback or query handler); call it from another thread"
            )
        try:
            return trio.from_thread.run(async_fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise NodeNotRunning("the node's thread has stopped") from None

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the thread (directly if already there); block until done."""
        if self.in_thread():
            return fn(*args)
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise NodeNotRunning("the node's thread has stopped") from None

    def start_node(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        keyring: Keyring | None = None,
        insecure_plaintext: bool = False,
        seed_source: SeedSource | None = None,
        leave_on_exit: bool = False,
    ) -> BlockingNode:
        """Start a node in this thread; see `swimnode.blocking.start_node`."""
        runner = NodeRunner(
            config,
            transport=transport,
            keyring=keyring,
            insecure_plaintext=insecure_plaintext,
            seed_source=seed_source,
            leave_on_exit=leave_on_exit,
        )
        return self._serve(runner, owns_thread=False)

    def _serve(self, runner: NodeRunner, *, owns_thread: bool) -> BlockingNode:
        if self._nursery is None:
            raise RuntimeError("start the NodeThread first (`with NodeThread() as thread:`)")
        node: Node = self.run(self._nursery.start, runner.serve)
        self._runners.append(runner)
        return BlockingNode(runner, node, self, owns_thread=owns_thread)

    def close(self) -> None:
        """Stop every node still hosted here (each leaving first if it was started
        with `leave_on_exit`), then end the thread."""
        atexit.unregister(self.close)
        if self._token is None:  # never started
            return
        if not self.in_thread():
            with contextlib.suppress(NodeNotRunning):
                self.run(self._stop_nodes)
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._stop.set)
        if not self.in_thread() and self._thread.is_alive():
            self._thread.join()


class BlockingNode(NodeView[NodeRunner, Node]):
    """One cluster member, for threaded code. Create with `start_node`.

    Every method is safe from any thread. After the node has stopped, calls raise
    `NodeNotRunning`.
    """

    def __init__(
        self, runner: NodeRunner, node: Node, thread: NodeThread, *, owns_thread: bool
    ) -> None:
        super().__init__(runner, node)
        self._thread = thread
        self._owns_thread = owns_thread
        self._closed = False

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = self._thread.run_sync(self._checked, fn, *args)
        return result

    def _command(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._runner.stopped:
            raise NodeNotRunning("the node has stopped")
        result: T = self._thread.run(self._runner.command, fn, *args)
        return result

    def join(self, seeds: Iterable[Address]) -> int:
        """Exchange full state with each seed and block until done; return how many
        answered. Raises `swimnode.JoinError` if none answered in `config.join_timeout`."""
        return self._command(self._node.join, list(seeds))

    def leave(self) -> None:
        """Leave gracefully and block until the node has stopped (see
        `swimnode.Node.leave`)."""
        self._thread.run(self._runner.leave, self._node)

    def query(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
        on_progress: Callable[[QueryProgress], object] | None = None,
    ) -> QueryResult:
        """Ask every member the filters select and block until the answers are in
        (see `swimnode.Node.query`); `on_progress` runs on the node's thread for each
        ack and answer as it arrives, so it must be quick."""
        names, state = list(names), list(state)

        async def ask() -> QueryResult:
            return await self._node.query(
                kind, payload, timeout=timeout, names=names, state=state, on_progress=on_progress
            )

        return self._command(ask)

    @contextmanager
    def query_stream(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
    ) -> Iterator[BlockingQueryReplies]:
        """`query`, with each ack and answer handed to this thread as it arrives
        (see `swimnode.Node.query_stream`):

            with node.query_stream("ping") as replies:
                for reply in replies:
                    ...
            print(replies.result.missing)
        """
        names, state = list(names), list(state)
        replies = self._write(self._node.open_replies, kind, payload, timeout, names, state)
        try:
            yield BlockingQueryReplies(self, replies)
        finally:
            with contextlib.suppress(NodeNotRunning):
                self._thread.run_sync(self._node.close_replies, replies)

    def events(self, timeout: float | None = None) -> BlockingEventStream:
        """Subscribe to membership events from now on: `for event in node.events()`.

        The same events, buffer and `EventsLost` rule as `swimnode.Node.events`.
        Iteration ends when the node stops, once the buffer is drained; with a
        `timeout`, waiting longer than that for one event raises `TimeoutError`.
        """
        return BlockingEventStream(self, timeout)

    def on_event(self, callback: Callable[[Event], object]) -> EventCallback:
        """Call `callback(event)` for every event from now on, on the node's thread.

        It must be quick: the node does nothing else meanwhile (its own events
        buffer up to `config.event_buffer`, then `EventsLost`). It may read the
        node (`members()`, ...) but not block on it (`join`, `leave`, `query`). An
        exception it raises is logged and the next event still comes.
        """
        stream = self._read(self._runner.add_callback, self._node, callback)
        return EventCallback(stream, self._thread)

    def close(self) -> None:
        """Stop the node (after a graceful leave if `leave_on_exit`) and wait until
        its sockets are closed; the same as leaving the `with` block. A node that
        failed while running raises its error here. From an event callback it only
        asks the node to stop."""
        if self._thread.in_thread():
            # From a callback: waiting here would wait for this very thread.
            self._runner.request_stop()
            return
        if not self._closed:
            self._closed = True
            with contextlib.suppress(NodeNotRunning):
                self._thread.run_sync(self._runner.request_stop)
                self._thread.run(self._runner.wait_done)
            if self._owns_thread:
                self._thread.close()
            if self._runner.error is not None:
                raise self._runner.error

    def __enter__(self) -> BlockingNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventCallback:
    """An `on_event` registration; `close()` stops the calls."""

    def __init__(self, stream: EventStream, thread: NodeThread) -> None:
        self._stream = stream
        self._thread = thread

    def close(self) -> None:
        """Stop calling the callback (events already taken may still be delivered)."""
        with contextlib.suppress(NodeNotRunning):
            self._thread.run_sync(self._stream.close)


def _drain(source: Receivable[T]) -> tuple[list[T], bool]:
    """Everything `source` holds now, and whether it has ended; on the node's thread."""
    items = []
    while (item := source.receive_nowait()) is not None:
        items.append(item)
    return items, source.finished


class _BlockingReader(Generic[T]):
    """Waits in a thread for what the node puts in `source` on its own thread, and
    takes it in batches: `for item in reader`. With a `timeout`, waiting longer
    than that for one item raises `TimeoutError`."""

    def __init__(self, node: BlockingNode, source: Receivable[T], timeout: float | None) -> None:
        self._thread = node._thread
        self._timeout = timeout
        self._cond = threading.Condition()
        self._ready = False
        self._taken: deque[T] = deque()
        self._source = source
        # Whatever came before this waits in the source for the first `next`.
        node._read(source.set_notify, self._wake)

    def _wake(self) -> None:
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def __iter__(self) -> _BlockingReader[T]:
        return self

    def __next__(self) -> T:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not self._taken:
            with self._cond:
                self._ready = False
            items, finished = self._take()
            self._taken.extend(items)
            if self._taken:
                break
            if finished:
                raise StopIteration
            self._wait(deadline)
        return self._taken.popleft()

    def _take(self) -> tuple[list[T], bool]:
        try:
            return self._thread.run_sync(_drain, self._source)
        except NodeNotRunning:
            # The thread's Trio run has ended, so nothing else touches the source.
            return _drain(self._source)

    def _wait(self, deadline: float | None) -> None:
        with self._cond:
            while not self._ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"nothing arrived within {self._timeout} s")
                self._cond.wait(remaining)


class BlockingEventStream(_BlockingReader[Event]):
    """One subscription's events for threads: `for event in stream`.

    It reads the node's own bounded buffer (`swimnode.EventStream`) in batches, so
    a slow reader gets `EventsLost` where it missed events, and holds at most one
    batch (a buffer's worth) itself.
    """

    def __init__(self, node: BlockingNode, timeout: float | None) -> None:
        self._stream: EventStream = node._read(node._node.events)
        super().__init__(node, self._stream, timeout)

    def close(self) -> None:
        """Stop receiving events; a waiting iteration ends."""
        try:
            self._thread.run_sync(self._stream.close)
        except NodeNotRunning:
            self._stream.close()


class BlockingQueryReplies(_BlockingReader[QueryProgress]):
    """One query's acks and answers for threads (`BlockingNode.query_stream`):
    `for reply in replies`, ending with the query."""

    def __init__(self, node: BlockingNode, replies: QueryReplies) -> None:
        super().__init__(node, replies, None)
        self._replies = replies

    @property
    def result(self) -> QueryResult:
        """What the query gathered (see `swimnode.driver.QueryReplies.result`)."""
        return self._replies.result


def start_node(
    config: Config,
    *,
    transport: Transport | None = None,
    keyring: Keyring | None = None,
    insecure_plaintext: bool = False,
    seed_source: SeedSource | None = None,
    leave_on_exit: bool = False,
) -> BlockingNode:
    """Start a node in a background thread of its own; return once it runs.

    Use it as `with start_node(config) as node:`, or call `node.close()`. The
    arguments and security rules are `swimnode.open_node`'s, and bad ones raise the
    same errors before any thread starts. With `leave_on_exit`, stopping (the
    block's end, Ctrl-C in it, `close()`, the interpreter's exit) leaves gracefully
    first.
    """
    runner = NodeRunner(
        config,
        transport=transport,
        keyring=keyring,
        insecure_plaintext=insecure_plaintext,
        seed_source=seed_source,
        leave_on_exit=leave_on_exit,
    )
    thread = NodeThread(name=f"swimnode-{config.name}").start()
    try:
        return thread._serve(runner, owns_thread=True)
    except BaseException:
        thread.close()
        raise
