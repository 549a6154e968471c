"""The Trio node run for a program that is not a Trio program (`swimnode.blocking`).

`swimnode.blocking` runs the unchanged `swimnode.node.Node` (the reference driver)
under `trio.run` in a background thread; `NodeRunner` is the Trio side of one such
node, and `swimnode.nodeview.NodeView` the user's side. docs/embedding.md says why,
with the measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .eventhub import EventStream
from .net.keyring import Keyring
from .net.securelayer import check_secure_bind
from .net.seeds import SeedSource
from .net.transport import Transport
from .node import Node, NodeNotRunning, open_node
from .protocol.config import Config
from .protocol.events import Event

T = TypeVar("T")
log = logging.getLogger("swimnode")


class NodeRunner:
    """The Trio side of one hosted node: `serve` runs it until `request_stop` (or
    until it leaves), and `command` runs a call on it that ends when the node does.

    Arguments and security rules are `swimnode.open_node`'s; they are checked here,
    in the caller's thread, before any thread or task starts.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None,
        keyring: Keyring | None,
        insecure_plaintext: bool,
        seed_source: SeedSource | None,
        leave_on_exit: bool,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a swimnode.Config, not {type(config).__name__}")
        if transport is None:
            check_secure_bind(config.bind[0], keyring, insecure_plaintext)
        self.config = config
        self._transport = transport
        self._keyring = keyring
        self._insecure_plaintext = insecure_plaintext
        self._seed_source = seed_source
        self.leave_on_exit = leave_on_exit
        self.stopped = False
        """True once the node has stopped; read from any thread."""
        self.error: Exception | None = None
        """What stopped the node if it failed after starting."""
        # Cancelling a scope before it is entered is allowed, so a stop requested
        # while the node is still starting takes effect as soon as it has started.
        self._stop = trio.CancelScope()
        self._done = trio.Event()
        self._commands: set[trio.CancelScope] = set()
        self._relays: trio.Nursery | None = None
        self._node: Node | None = None

    async def serve(self, *, task_status: trio.TaskStatus[Node]) -> None:
        """Run the node; `task_status.started(node)` once it runs. A failure to
        start is raised to the starter; a later failure is kept in `error` and
        logged, so it stops this node but no other node of the same Trio run."""
        error: Exception | None = None
        try:
            # Callback relays outlive the node, so they drain its last events.
            async with trio.open_nursery() as relays:
                self._relays = relays
                try:
                    await self._run(task_status)
                except Exception as exc:
                    # Caught inside, so the nursery does not wrap it in a group.
                    error = exc
                finally:
                    self._mark_stopped()
        finally:
            self._done.set()
        if error is not None:
            if self._node is None:
                raise single(error)
            self.error = error
            log.error("%s: node failed: %s", self.config.name, error, exc_info=error)

    async def _run(self, task_status: trio.TaskStatus[Node]) -> None:
        async with open_node(
            self.config,
            transport=self._transport,
            keyring=self._keyring,
            insecure_plaintext=self._insecure_plaintext,
            seed_source=self._seed_source,
        ) as node:
            self._node = node
            task_status.started(node)
            with self._stop:
                await node.wait_stopped()
            if self._stop.cancelled_caught and self.leave_on_exit:
                await node.leave()

    def _mark_stopped(self) -> None:
        self.stopped = True
        for scope in self._commands:
            scope.cancel()

    def request_stop(self) -> None:
        """Stop the node (leaving first if `leave_on_exit`); call on the Trio thread."""
        self._stop.cancel()

    async def wait_done(self) -> None:
        """Wait until `serve` has ended, event callbacks included."""
        await self._done.wait()

    async def command(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)`, raising `NodeNotRunning` if the node has stopped or
        stops first (a join or query would otherwise wait for ever)."""
        if self.stopped:
            raise NodeNotRunning("the node has stopped")
        with trio.CancelScope() as scope:
            self._commands.add(scope)
            try:
                return await fn(*args)
            finally:
                self._commands.discard(scope)
        raise NodeNotRunning("the node stopped before the call finished")

    async def leave(self, node: Node) -> None:
        """Leave gracefully and wait until the node has stopped."""
        await self.command(node.leave)
        await self._done.wait()

    def add_callback(self, node: Node, callback: Callable[[Event], object]) -> EventStream:
        """Call `callback(event)` on the Trio thread for each event from now on (a
        failing callback is logged and skipped); call on the Trio thread. Closing
        the returned stream ends the calls."""
        if self.stopped or self._relays is None:
            raise NodeNotRunning("the node has stopped")
        stream = node.events()
        self._relays.start_soon(_relay, stream, callback)
        return stream


def single(error: Exception) -> Exception:
    """The one exception inside nested single-member groups (Trio's nurseries
    wrap what they raise), so a caller sees the error itself."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _relay(stream: EventStream, callback: Callable[[Event], object]) -> None:
    async for event in stream:
        try:
            callback(event)
        except Exception:
            log.exception("event callback %r failed", callback)
