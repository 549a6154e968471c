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

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from .driver import (
    DriverBase,
    JoinError,
    NodeNotRunning,
    QueryReplies,
    Waiter,
    member_log,
    new_generation,
)
from .net.keyring import Keyring
from .net.securelayer import secure_with
from .net.security import SecureTransport, check_secure_bind
from .net.seeds import SeedSource
from .net.transport import Address, Transport
from .protocol.config import Config
from .protocol.contract import Signal, Timer

__all__ = ["JoinError", "Node", "NodeNotRunning", "member_log", "new_generation", "open_node"]


class _Waiter:
    """A command waiting for the signal that ends it."""

    __slots__ = ("done", "signal")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.signal: Signal | None = None

    def finish(self) -> None:
        self.done.set()


class Node(DriverBase):
    """One cluster member. Start it with `open_node` or `await nursery.start(node.run)`.

    `seed_source`, if given, is re-read every `config.seed_refresh_interval` and its
    addresses are used beside `config.seeds`. The reads, state calls, `join`,
    `query` and `on_query` are `swimnode.driver.DriverBase`'s, shared with the
    asyncio driver.
    """

    def __init__(
        self, config: Config, transport: Transport, *, seed_source: SeedSource | None = None
    ) -> None:
        super().__init__(config, seed_source=seed_source)
        self._transport = transport
        self._scopes: dict[Timer, trio.CancelScope] = {}
        self._stopped = trio.Event()
        self._left = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def wait_stopped(self) -> None:
        """Wait until the node's tasks have all ended (after `leave()` or cancel)."""
        await self._stopped.wait()

    async def leave(self) -> None:
        """Leave gracefully: disseminate our `left` record, then stop the node.

        Waits until the record has been sent its full retransmit count, or at most
        `config.leave_timeout`.
        """
        self.core.leave(self._now())
        await self._pump()
        await self._left.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def query_stream(
        self,
        kind: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        names: Iterable[str] = (),
        state: Iterable[tuple[str, str]] = (),
    ) -> AsyncIterator[QueryReplies]:
        """`query`, with each ack and answer handed to the block as it arrives:

            async with node.query_stream("ping", timeout=2) as replies:
                async for reply in replies:  # QueryProgress
                    print(reply.sender, reply.payload)
            print(replies.result.missing)

        Iteration ends when the query does; `replies.result` is then what `query`
        returns. Leaving the block early stops the relay, and the query runs on in
        the core until its timeout. Arguments and errors are `query`'s.
        """
        replies = self.open_replies(kind, payload, timeout, names, state)
        try:
            yield replies
        finally:
            self.close_replies(replies)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task of the node until cancelled or `leave()` completes."""
        self._start_core(self._transport.local_address, self._transport.overhead)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                for timer in Timer:
                    # Named for its concern, so a profile or a test tells them apart.
                    name = f"{__name__}.Node.{timer.name.lower()}"
                    nursery.start_soon(self._timer_loop, timer, name=name)
                if self._seed_source is not None:
                    nursery.start_soon(self._refresh_seeds, self._seed_source.resolve, trio.sleep)
                task_status.started()
        finally:
            self._nursery = None
            self._hub.close()
            self._end_commands()
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

    async def _stream(self, ticket: int, dest: Address, data: bytes) -> None:
        await self._send_stream(self._transport.send_reliable, ticket, dest, data)
        await self._pump()

    # ----- plumbing ------------------------------------------------------------------

    async def _wait_for(self, waiters: dict[int, Waiter], key: int) -> Signal | None:
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

    @staticmethod
    def _now() -> float:
        return trio.current_time()

    def _move_deadlines(self) -> None:
        deadlines = self.core.next_deadlines()
        for timer, scope in self._scopes.items():
            deadline = deadlines[timer]
            # Setting a deadline costs Trio some work even when unchanged.
            if deadline != scope.deadline:
                scope.deadline = deadline

    def _start_streams(self, streams: list[tuple[int, Address, bytes]]) -> None:
        if self._nursery is not None:
            for ticket, dest, data in streams:
                self._nursery.start_soon(self._stream, ticket, dest, data)

    def _on_left(self) -> None:
        self._left.set()

    def _has_stopped(self) -> bool:
        return self._stopped.is_set()


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
    return secure_with(SecureTransport, transport, config, keyring, clock)


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
