"""The simulated network for the asyncio driver, and an asyncio loop on virtual time.

`swimnode.testing.network.Network` is built on Trio (its endpoints wait in Trio
cancel scopes and read `trio.current_time`), so the asyncio driver cannot use it.
`AioNetwork` is its asyncio counterpart over the same model: every packet's fate
(latency, jitter, loss, duplication, reordering, per-link overrides, partitions,
chosen drops, slow receivers, stream ordering and failures) and every counter are
`swimnode.testing.linkmodel.LinkModel`'s, the class both simulators already share.
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
from typing import Any, TypeVar, Unpack

from ..net.aiotransport import Deliver
from ..net.transport import Address, Packet
from .linkmodel import LinkKnobs, LinkModel, endpoint_rng

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


class AioNetwork(LinkModel):
    """A simulated network of `AioSimTransport` endpoints, for asyncio.

    The knobs (`seed`, `latency`, `jitter`, `loss`, `duplicate`, `reorder`,
    `max_datagram`, `queue_limit`), fault injection and `stats` are `LinkModel`'s.
    Sending reads the running loop's clock, so it must happen in that loop.
    """

    def __init__(self, seed: int = 0, **knobs: Unpack[LinkKnobs]) -> None:
        super().__init__(seed, **knobs)
        self._endpoints: dict[Address, AioSimTransport] = {}

    def attach(self, address: Address) -> AioSimTransport:
        """Create a transport bound to `address`; `ValueError` if one is there."""
        if address in self._endpoints:
            raise ValueError(f"address {address[0]}:{address[1]} is already attached")
        transport = self._endpoints[address] = AioSimTransport(self, address)
        return transport

    def is_attached(self, address: Address) -> bool:
        """Whether a live transport is bound to `address`."""
        return address in self._endpoints

    def crash(self, address: Address) -> None:
        """Kill the network side of a node at once: its packets in flight are
        dropped (counted as `unreachable`). Stopping the node is the caller's."""
        transport = self._endpoints.get(address)
        if transport is not None:
            transport._shut_down()

    def _detach(self, transport: AioSimTransport) -> None:
        if self._endpoints.get(transport.local_address) is transport:
            del self._endpoints[transport.local_address]

    def _push(self, dest: AioSimTransport, at: float, packet: Packet) -> None:
        dest._pending += 1
        asyncio.get_running_loop().call_at(at, dest._arrive, packet)

    def _dispatch(self, sender: AioSimTransport, dest_addr: Address, data: bytes) -> None:
        """Route one datagram (already counted as sent)."""
        if len(data) > self.max_datagram:
            self.stats.oversize += 1
            return
        dest = self._endpoints.get(dest_addr)
        if dest is None:
            self.stats.unreachable += 1
            return
        src = sender.local_address
        now = asyncio.get_running_loop().time()
        for at in self._datagram_arrivals(sender._rng, src, dest_addr, data, now):
            if dest._pending >= self.queue_limit:
                self.stats.overflow += 1
            else:
                self._push(dest, at, Packet(src, data, False))

    def _dispatch_reliable(self, sender: AioSimTransport, dest_addr: Address, data: bytes) -> None:
        dest = self._endpoints.get(dest_addr)
        src = sender.local_address
        self._check_stream(src, dest_addr, len(data), dest is not None)
        assert dest is not None
        now = asyncio.get_running_loop().time()
        at = self._stream_arrival(sender._rng, src, dest_addr, now, sender._tails.get(dest_addr))
        if dest._pending >= self.queue_limit:
            raise self._overflow(dest_addr)
        sender._tails[dest_addr] = at
        self._push(dest, at, Packet(src, data, True))


class AioSimTransport:
    """One endpoint of an `AioNetwork`; a `swimnode.net.aiotransport.AioTransport`.
    Obtain with `AioNetwork.attach`."""

    def __init__(self, network: AioNetwork, address: Address) -> None:
        self._net = network
        self._address = address
        self._rng = endpoint_rng(network.seed, address)
        self._deliver: Deliver | None = None
        self._pending = 0
        self._tails: dict[Address, float] = {}
        self._sent = network._sent_counts(address)
        self._closed = False

    @property
    def overhead(self) -> int:
        """Datagrams go out as given: no framing."""
        return 0

    @property
    def local_address(self) -> Address:
        """The address this transport is attached at."""
        return self._address

    @property
    def closed(self) -> bool:
        """Whether `aclose()` or `AioNetwork.crash` has shut this transport."""
        return self._closed

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
        stats, counts = self._net.stats, self._sent
        stats.sent, stats.bytes_sent = stats.sent + 1, stats.bytes_sent + len(data)
        counts[0], counts[1] = counts[0] + 1, counts[1] + len(data)

    def _arrive(self, packet: Packet) -> None:
        net = self._net
        self._pending -= 1
        if self._closed:
            net.stats.unreachable += 1
        elif net._partitions and net.is_blocked(packet.source, self._address):
            net.stats.partition += 1
        else:
            net.stats.delivered += 1
            if self._deliver is not None:
                self._deliver(packet)

    def _shut_down(self) -> None:
        if not self._closed:
            self._closed = True
            self._net._detach(self)
