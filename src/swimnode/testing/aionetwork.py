"""The simulated network for the asyncio driver, and an asyncio loop on virtual time.

`swimnode.testing.network.Network` is built on Trio (its endpoints wait in Trio
cancel scopes and read `trio.current_time`), so the asyncio driver cannot use it.
`AioNetwork` is its asyncio counterpart over the same model: every packet's fate
(latency, jitter, loss, duplication, reordering, per-link overrides, partitions,
chosen drops, slow receivers, stream ordering and failures) and every counter are
`swimnode.testing.linkmodel.LinkModel`'s, the class both simulators already share,
and attaching, crashing and routing are `swimnode.testing.simnetwork.SimNetwork`'s.
Only the delivery differs: an arrival is a `loop.call_at` of the receiving endpoint.
Pauses (`Network.pause`) are not modelled here.

`run` runs a coroutine on `VirtualTimeLoop`, whose clock jumps to the next timer
whenever nothing is ready, as `trio.testing.MockClock(autojump_threshold=0)` does:
a simulated minute takes as long as the work in it. Determinism is weaker than
under Trio's mock clock: asyncio does not order timers due at the same instant, and
arrival times with jitter are almost never equal, so runs from one seed agree in
outcome rather than bit for bit (tests/test_embed_sim.py compares outcomes).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..net.aiotransport import Deliver
from ..net.transport import Address, Packet
from .simnetwork import SimEndpoint, SimNetwork

__all__ = ["AioNetwork", "AioSimTransport", "VirtualTimeLoop", "run"]

T = TypeVar("T")


class _JumpSelector(selectors.DefaultSelector):
    """Polls real I/O without waiting; where the loop would wait for its next timer,
    moves the virtual clock there instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer at all: only real I/O (another thread's call) can come.
            return super().select(None)
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose `time()` is virtual and jumps to the next timer
    whenever no callback is ready. Real sockets still work (polled without waiting)."""

    def __init__(self) -> None:
        self._jump = _JumpSelector()
        super().__init__(self._jump)

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._jump.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


class AioNetwork(SimNetwork["AioSimTransport"]):
    """A simulated network of `AioSimTransport` endpoints, for asyncio.

    The knobs (`seed`, `latency`, `jitter`, `loss`, `duplicate`, `reorder`,
    `max_datagram`, `queue_limit`), fault injection and `stats` are `LinkModel`'s,
    attaching, crashing and routing `SimNetwork`'s. Sending reads the running
    loop's clock, so it must happen in that loop.
    """

    def _new_endpoint(self, address: Address) -> AioSimTransport:
        return AioSimTransport(self, address)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _push(
        self, sender: AioSimTransport, dest: AioSimTransport, at: float, packet: Packet
    ) -> None:
        dest._pending += 1
        asyncio.get_running_loop().call_at(at, dest._arrive, packet)


class AioSimTransport(SimEndpoint):
    """One endpoint of an `AioNetwork`; a `swimnode.net.aiotransport.AioTransport`.
    Obtain with `AioNetwork.attach`."""

    def __init__(self, network: AioNetwork, address: Address) -> None:
        super().__init__(network, address)
        self._net = network
        self._deliver: Deliver | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Packets on their way to this endpoint."""
        return self._pending

    def start(self, deliver: Deliver) -> None:
        """Hand each packet that arrives from now on to `deliver`."""
        self._deliver = deliver

    def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram; lost, partitioned, oversize or unroutable ones are
        dropped and counted. `RuntimeError` once closed."""
        self._count_sent(data)
        self._net._dispatch(self, dest, data)

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Send `data` as one message over a simulated stream: never lost, never
        reordered with earlier ones to the same peer. Raises as `LinkModel` says
        (`ConnectionRefusedError` with nobody there or a partition between,
        `OSError` when too large or the receiver's queue is full)."""
        await asyncio.sleep(0)  # a real connect yields at least once
        self._count_sent(data)
        self._net._dispatch_reliable(self, dest, data)

    async def aclose(self) -> None:
        """Detach from the network; packets still in flight are dropped (counted
        as `unreachable`). Idempotent."""
        self._shut_down()

    def _count_sent(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("transport is closed")
        self._net._record_sent(self._sent, len(data))

    def _arrive(self, packet: Packet) -> None:
        net = self._net
        if net._crossings and not self._closed:
            loop = asyncio.get_running_loop()
            wait = net._due(packet, loop.time())
            if wait > 0:
                loop.call_at(loop.time() + wait, self._arrive, packet)
                return
            if wait < 0:
                self._pending -= 1
                return
        self._pending -= 1
        if self._closed:
            net.stats.unreachable += 1
            net._forget(packet)
        elif net._arrives(packet.source, self._address) and self._deliver is not None:
            self._deliver(packet)

    def _shut_down(self) -> None:
        if not self._closed:
            self._closed = True
            self._net._detach(self)
