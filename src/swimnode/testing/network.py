"""An in-memory network for deterministic simulation.

`Network` hands out `SimTransport` objects (one per address) that satisfy
`swimnode.net.transport.Transport`. It is meant to run under
`trio.testing.MockClock(autojump_threshold=0)`, where thousands of nodes can be
simulated quickly because the network needs no tasks of its own: `send()`
computes when a packet arrives and pushes it straight onto the destination's
heap, and `receive()` sleeps until the earliest arrival time.

Fault injection, all changeable while the simulation runs:

* datagram loss, jitter, duplication and reordering (`Network(...)` arguments,
  also plain attributes, plus per-link overrides with `Network.set_link`);
* partitions, symmetric or one way (`Network.partition`, `Network.heal`);
* frozen processes (`Network.pause`, `Network.resume`);
* slow, CPU-starved receivers (`Network.set_slow`);
* slow links, rate-limited both ways (`Network.limit_rate`);
* crashes (`Network.crash`).

What happens to each packet (the knobs, the counters, loss, delay and the rest)
is `swimnode.testing.linkmodel.LinkModel`, shared with the Trio-free `FastSim`.

Determinism: every random draw is made by the *sending* transport's own
`random.Random`, seeded from the network seed and the sender's address. Trio
shuffles the order of tasks that are runnable at the same instant, so a shared
generator would make runs irreproducible; per-sender generators make the fate
of each packet depend only on what that sender did, not on scheduling.
"""

from __future__ import annotations

import heapq
import math
from typing import Unpack

import trio

from swimnode.net.transport import Address, Packet

from .linkmodel import DropFilter, LinkKnobs, LinkParams, NetworkStats
from .simnetwork import SimEndpoint, SimNetwork

__all__ = ["DropFilter", "LinkParams", "Network", "NetworkStats", "SimTransport"]

# Heap entry: (deliver_at, source, sender_seq, network_seq, packet). Ties on
# time are broken by sender and that sender's own counter so the order does not
# depend on how Trio interleaved different senders; the network-wide counter
# only matters if an address was re-attached and is there so tuples never fall
# through to comparing packets.
_Entry = tuple[float, Address, int, int, Packet]


class Network(SimNetwork["SimTransport"]):
    """A simulated network of `SimTransport` endpoints, for Trio.

    The knobs and every packet's fate are `LinkModel`'s (see there: latency,
    jitter, loss, duplication, reordering, per-link overrides, partitions, chosen
    drops, slow receivers), attaching, crashing and routing are `SimNetwork`'s;
    this class adds the delivery on Trio's clock, and pauses.

    No nursery or background task is needed. Methods that look at the clock
    (`resume`, sending) must run inside `trio.run`.
    """

    def __init__(self, seed: int = 0, **knobs: Unpack[LinkKnobs]) -> None:
        """`seed` and the knobs as for `LinkModel`: `latency=0.001`,
        `jitter=0.0005`, `loss=0.0`, `duplicate=0.0`, `reorder=0.0`,
        `max_datagram=65507`, `queue_limit=4096`."""
        super().__init__(seed, **knobs)
        self._seq = 0

    @property
    def addresses(self) -> list[Address]:
        """Currently attached addresses, in attach order."""
        return list(self._endpoints)

    # -- pauses -------------------------------------------------------------

    def pause(self, address: Address) -> None:
        """Freeze the process at `address`, as with SIGSTOP.

        While paused nothing is delivered to it: arriving packets wait in its
        queue (still subject to `queue_limit`) and come out after `resume()`.
        Datagrams it sends are held and sent, with fresh latency, loss and so
        on, at `resume()`; `send_reliable` calls it makes block until then.
        Pausing an address that is not attached yet is allowed and applies
        once it is attached.
        """
        if address in self._paused:
            return
        self._paused.add(address)
        transport = self._endpoints.get(address)
        if transport is not None:
            transport._pause()

    def resume(self, address: Address) -> None:
        """Unfreeze `address`: send what it held back and let it receive."""
        if address not in self._paused:
            return
        self._paused.discard(address)
        transport = self._endpoints.get(address)
        if transport is not None:
            transport._resume()

    # -- delivery ----------------------------------------------------------

    def _new_endpoint(self, address: Address) -> SimTransport:
        return SimTransport(self, address)

    def _now(self) -> float:
        return trio.current_time()

    def _push(self, sender: SimTransport, dest: SimTransport, at: float, packet: Packet) -> None:
        heap = dest._heap
        self._seq += 1
        sender._seq += 1
        entry: _Entry = (at, sender._address, sender._seq, self._seq, packet)
        heapq.heappush(heap, entry)
        # Only an entry that became the earliest can shorten a sleeping
        # receiver's wait; anything later is picked up when it wakes anyway.
        # Pulling the sleeper's deadline in (instead of waking it to re-arm)
        # costs no scheduler round trip, which is most of a packet's cost.
        if heap[0] is entry and not dest._paused:
            for scope in dest._sleepers:
                if at < scope.deadline:
                    scope.deadline = at


class SimTransport(SimEndpoint):
    """One endpoint of a `Network`; implements `swimnode.net.transport.Transport`.

    Obtain with `Network.attach`. Incoming packets sit in a heap ordered by
    arrival time and come out one per `receive()` call.
    """

    def __init__(self, network: Network, address: Address) -> None:
        """Use `Network.attach` instead of calling this directly."""
        super().__init__(network, address)
        self._net = network
        self._heap: list[_Entry] = []
        # One cancel scope per waiting receive(); its deadline is the earliest
        # arrival, and senders move it earlier. Cancelling it wakes the waiter.
        self._sleepers: list[trio.CancelScope] = []
        self._paused = False
        # Set on resume or close; `send_reliable` of a paused node waits on it.
        self._unpaused = trio.Event()
        self._held: list[tuple[Address, bytes]] = []
        self._seq = 0
        if address in network._paused:
            self._pause()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SimTransport {self._address[0]}:{self._address[1]} {state}>"

    @property
    def network(self) -> Network:
        """The network this transport belongs to."""
        return self._net

    @property
    def pending(self) -> int:
        """Packets queued for this endpoint, including ones still in flight."""
        return len(self._heap)

    async def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram. Never raises for network conditions: lost,
        partitioned, oversize or unroutable datagrams are dropped and counted.

        Raises `trio.ClosedResourceError` if this transport is closed.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        self._net._record_sent(self._sent, len(data))
        if self._paused:
            self._held.append((dest, data))
            return
        self._net._dispatch(self, dest, data)

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Send `data` as one message over a simulated stream.

        Never lost, duplicated or reordered relative to earlier reliable
        messages to the same peer; arrives with the link's latency and jitter
        as `Packet(..., reliable=True)`. A paused destination simply holds it.
        Raises `ConnectionRefusedError` if nothing is attached at `dest` or a
        partition blocks the way, and `OSError` if the message exceeds 64 MiB
        or the destination's queue is full. If this node is paused the call
        blocks until it is resumed.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        self._net._record_sent(self._sent, len(data))
        while self._paused:
            await self._unpaused.wait()
            if self._closed:
                raise trio.ClosedResourceError("transport is closed")
        self._net._dispatch_reliable(self, dest, data)

    async def receive(self) -> Packet:
        """Wait for and return the next packet that has arrived.

        Raises `trio.ClosedResourceError` once the transport is closed or
        crashed, including for calls already waiting.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        net = self._net
        heap = self._heap
        while True:
            if self._closed:
                raise trio.ClosedResourceError("transport is closed")
            deliver_at = math.inf
            if heap and not self._paused:
                deliver_at = heap[0][0]
                now = trio.current_time()
                if deliver_at <= now:
                    entry = heapq.heappop(heap)
                    packet = entry[4]
                    if net._crossings:
                        wait = net._due(packet, now)
                        if wait:
                            if wait > 0:
                                heapq.heappush(
                                    heap, (now + wait, entry[1], entry[2], entry[3], packet)
                                )
                            continue
                    if not net._arrives(packet.source, self._address):
                        continue
                    # Shielded so a cancellation cannot lose the popped packet.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return packet
            # Sleep until the earliest arrival; `_push` moves the deadline in
            # if an earlier packet arrives, resume/close cancel the scope.
            # Either way the loop re-examines the heap, so nothing is missed.
            scope = trio.CancelScope(deadline=deliver_at)
            sleepers = self._sleepers
            sleepers.append(scope)
            try:
                with scope:
                    await trio.sleep_forever()
            finally:
                sleepers.remove(scope)

    async def aclose(self) -> None:
        """Detach from the network. Queued packets are dropped (counted as
        `unreachable`), datagrams held while paused are discarded, and waiting
        `receive()` calls raise `trio.ClosedResourceError`. Idempotent."""
        self._shut_down()
        await trio.lowlevel.checkpoint()

    def _pause(self) -> None:
        self._paused = True
        self._unpaused = trio.Event()

    def _resume(self) -> None:
        self._paused = False
        held, self._held = self._held, []
        for dest, data in held:
            self._net._dispatch(self, dest, data)
        self._wake_receivers()
        self._unpaused.set()

    def _wake_receivers(self) -> None:
        for scope in self._sleepers:
            scope.cancel()

    def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        net = self._net
        net.stats.unreachable += len(self._heap)
        for entry in self._heap:
            net._forget(entry[4])
        self._heap.clear()
        self._held.clear()
        net._detach(self)
        self._wake_receivers()
        self._unpaused.set()
