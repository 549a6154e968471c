"""The asyncio driver of `SwimCore`: `swimnode.node`'s shape, on asyncio's loop.

Tasks: one per timer concern of the core (probing, gossip, anti-entropy and seeds),
each asleep until the core's deadline for its concern; one per stream send; and,
with a seed source, its refresh. Receiving is the transport's callback
(`swimnode.net.aiotransport`): each packet goes to the core as it is read, with no
task between. As in the Trio driver, after every step the driver moves the timer
concerns' deadlines (which re-arms the loop's timer and wakes nobody), so an idle
node wakes about once per protocol period, and a datagram goes out at once through
the non-blocking socket. The reads, state calls, `join` and `query` are
`swimnode.driver.DriverBase`'s, shared with the Trio `Node`.

Use it through `swimnode.aio`, which adds the checks of loop and thread and the
lifetime of `open_node`.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Coroutine
from typing import Any

from .driver import DriverBase, NodeNotRunning, Waiter, log
from .net.aiotransport import AioTransport
from .net.seeds import SeedSource
from .net.transport import Address, Packet
from .protocol.config import Config
from .protocol.contract import Signal, Timer

__all__ = ["AioDriver"]


class _Waiter:
    """A command waiting for the signal that ends it; a signal of None means the
    node stopped first."""

    __slots__ = ("future", "signal")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.signal: Signal | None = None

    def finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _Sleeper:
    """One timer concern's sleep until a deadline that may move while it sleeps.

    Moving it re-arms the loop's timer and wakes nobody, as moving a Trio cancel
    scope's deadline does; only a deadline that comes wakes the task.
    """

    __slots__ = ("_future", "_handle", "_loop", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self.deadline = deadline
        self._handle: asyncio.TimerHandle | None = None
        self._future: asyncio.Future[None] | None = None

    async def sleep(self) -> None:
        """Return once `deadline` has come (at once if it has)."""
        self._future = self._loop.create_future()
        self._arm()
        try:
            await self._future
        finally:
            self._future = None
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def move(self, deadline: float) -> None:
        """Set the deadline, whether or not the task sleeps now."""
        if deadline != self.deadline:
            self.deadline = deadline
            if self._future is not None:
                self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        finite = math.isfinite(self.deadline)
        self._handle = self._loop.call_at(self.deadline, self._ring) if finite else None

    def _ring(self) -> None:
        self._handle = None
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


class AioDriver(DriverBase):
    """One cluster member driven on the running asyncio loop.

    `start()` starts it; it runs until `stop()`, a completed `leave()`, or a
    failure, which is kept in `error` (and logged) and stops it. After it stops,
    waiting commands raise `NodeNotRunning` and event streams end.
    """

    def __init__(
        self, config: Config, transport: AioTransport, *, seed_source: SeedSource | None = None
    ) -> None:
        super().__init__(config, seed_source=seed_source)
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sleepers: dict[Timer, _Sleeper] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._left: asyncio.Future[None] | None = None
        self.stopped = False
        """True once the node has stopped."""
        self.error: Exception | None = None
        """What stopped the node if it failed while running."""

    @property
    def transport(self) -> AioTransport:
        """The transport the node sends and receives through."""
        return self._transport

    def start(self) -> None:
        """Start the node on the running loop: its tasks, then receiving."""
        loop = self._loop = asyncio.get_running_loop()
        core = self._start_core(self._transport.local_address, self._transport.overhead)
        self._left = loop.create_future()
        for timer in Timer:
            self._sleepers[timer] = _Sleeper(loop, core.next_deadline(timer))
            # Named for its concern, so a profile or a test tells them apart.
            self._spawn(self._timer_loop(timer), f"{__name__}.AioDriver.{timer.name.lower()}")
        if self._seed_source is not None:
            # Seed sources are Trio code (file reads and DNS in worker threads); a
            # short Trio run in a thread resolves one without a second copy. Imported
            # here, so a node without one never loads Trio.
            import trio

            resolve = functools.partial(asyncio.to_thread, trio.run, self._seed_source.resolve)
            self._spawn(self._refresh_seeds(resolve, asyncio.sleep))
        self._transport.start(self._receive)

    async def leave(self) -> None:
        """Leave gracefully: disseminate our `left` record, then stop the node.

        Waits until the record has been sent its full retransmit count, or at most
        `config.leave_timeout`. Raises `NodeNotRunning` if the node stops first.
        """
        self.core.leave(self._now())
        self._pump_soon()
        assert self._left is not None
        await self._left
        if self.stopped:
            raise NodeNotRunning("the node stopped before it had left")
        self.stop()

    def stop(self) -> None:
        """Stop every task, end the event streams and wake waiting commands (with
        `NodeNotRunning`). The transport stays open: `aclose` closes it."""
        if self.stopped:
            return
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        self._hub.close()
        self._end_commands()
        if self._left is not None and not self._left.done():
            self._left.set_result(None)

    async def aclose(self) -> None:
        """Stop the node, wait for its tasks to end, and close the transport."""
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._transport.aclose()

    # ----- tasks and callbacks -------------------------------------------------------

    def _receive(self, packet: Packet) -> None:
        if self.stopped:
            return
        try:
            self.core.handle_packet(self._now(), packet.source, packet.data, packet.reliable)
            self._pump_soon()
        except Exception as exc:
            # A bug (the core drops bad input itself): stop, as the Trio node does
            # when a task fails, rather than run on in an unknown state.
            self._fail(exc)

    async def _timer_loop(self, timer: Timer) -> None:
        core, sleeper = self.core, self._sleepers[timer]
        while True:
            await sleeper.sleep()
            core.handle_timer(timer, self._now())
            self._pump_soon()

    async def _stream(self, ticket: int, dest: Address, data: bytes) -> None:
        await self._send_stream(self._transport.send_reliable, ticket, dest, data)
        self._pump_soon()

    # ----- plumbing ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # (KeyboardInterrupt and SystemExit leave the loop on their own.)
        if not task.cancelled() and isinstance(exc := task.exception(), Exception):
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if not self.stopped:
            self.error = exc
            log.error("%s: node failed: %s", self.name, exc, exc_info=exc)
            self.stop()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _wait_for(self, waiters: dict[int, Waiter], key: int) -> Signal | None:
        assert self._loop is not None
        waiter = waiters[key] = _Waiter(self._loop)
        try:
            self._pump_soon()
            await waiter.future
        finally:
            del waiters[key]
        return waiter.signal

    def _pump_soon(self) -> None:
        send = self._transport.send
        for dest, data in self._collect():
            send(dest, data)

    def _move_deadlines(self) -> None:
        deadlines = self.core.next_deadlines()
        for timer, sleeper in self._sleepers.items():
            sleeper.move(deadlines[timer])

    def _start_streams(self, streams: list[tuple[int, Address, bytes]]) -> None:
        if not self.stopped:
            for ticket, dest, data in streams:
                self._spawn(self._stream(ticket, dest, data))

    def _on_left(self) -> None:
        if self._left is not None and not self._left.done():
            self._left.set_result(None)

    def _has_stopped(self) -> bool:
        return self.stopped
