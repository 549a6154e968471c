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
* crashes (`Network.crash`).

Determinism: every random draw is made by the *sending* transport's own
`random.Random`, seeded from the network seed and the sender's address. Trio
shuffles the order of tasks that are runnable at the same instant, so a shared
generator would make runs irreproducible; per-sender generators make the fate
of each packet depend only on what that sender did, not on scheduling.
"""

from __future__ import annotations

import errno
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import trio

from swimnode.net.transport import Address, Packet

__all__ = ["LinkParams", "Network", "NetworkStats", "SimTransport"]

MAX_RELIABLE_SIZE = 64 * 1024 * 1024
"""Largest message `SimTransport.send_reliable` accepts."""

REORDER_FACTOR = 10.0
"""A reordered datagram is held back by up to this many times the latency."""

# Heap entry: (deliver_at, source, sender_seq, network_seq, packet). Ties on
# time are broken by sender and that sender's own counter so the order does not
# depend on how Trio interleaved different senders; the network-wide counter
# only matters if an address was re-attached and is there so tuples never fall
# through to comparing packets.
_Entry = tuple[float, Address, int, int, Packet]

DropFilter = Callable[[Address, Address, bytes], bool]
"""`(source, dest, data) -> drop?`, see `Network.drop_datagrams`."""


@dataclass(slots=True)
class NetworkStats:
    """Counters for everything that happened on a `Network`.

    `sent` and `bytes_sent` count calls to `send` and `send_reliable`
    (duplicates are not counted again); `delivered` counts packets handed out
    by `receive`. The remaining fields count dropped packets by reason, and
    `duplicated` counts extra copies made.
    """

    sent: int = 0
    delivered: int = 0
    bytes_sent: int = 0
    duplicated: int = 0
    loss: int = 0
    partition: int = 0
    unreachable: int = 0
    overflow: int = 0
    oversize: int = 0
    filtered: int = 0

    @property
    def dropped(self) -> int:
        """Total packets dropped for any reason."""
        return (
            self.loss
            + self.partition
            + self.unreachable
            + self.overflow
            + self.oversize
            + self.filtered
        )

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (handy for logging and comparisons)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Per-link overrides; `None` means "use the network default"."""

    latency: float | None = None
    jitter: float | None = None
    loss: float | None = None


@dataclass(frozen=True, slots=True)
class _Partition:
    side_a: frozenset[Address]
    side_b: frozenset[Address]
    one_way: bool

    def blocks(self, src: Address, dst: Address) -> bool:
        if src in self.side_a and dst in self.side_b:
            return True
        return not self.one_way and src in self.side_b and dst in self.side_a


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_delay(name: str, value: float) -> None:
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite, non-negative number of seconds, got {value!r}")


class Network:
    """A simulated network of `SimTransport` endpoints.

    Datagrams take `latency + uniform(0, jitter)` seconds (plus the receiver's
    slow delay, see `set_slow`), are dropped with probability `loss`,
    duplicated with probability `duplicate` (the copy gets its own jitter) and,
    with probability `reorder`, held back by an extra `uniform(0, 10 * latency)`
    so they swap places with neighbours. Datagrams over `max_datagram` bytes
    are dropped. A receiver holding `queue_limit` undelivered packets drops
    further ones. The defaults (`latency`, `jitter`, `loss`, `duplicate`,
    `reorder`) are plain attributes and may be changed at any time; they apply
    to packets sent afterwards.

    No nursery or background task is needed. Methods that look at the clock
    (`resume`, sending) must run inside `trio.run`.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float = 0.001,
        jitter: float = 0.0005,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        max_datagram: int = 65507,
        queue_limit: int = 4096,
    ) -> None:
        _check_delay("latency", latency)
        _check_delay("jitter", jitter)
        _check_probability("loss", loss)
        _check_probability("duplicate", duplicate)
        _check_probability("reorder", reorder)
        if max_datagram < 0:
            raise ValueError(f"max_datagram must be >= 0, got {max_datagram!r}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be >= 1, got {queue_limit!r}")
        self.seed = seed
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.max_datagram = max_datagram
        self.queue_limit = queue_limit
        self.stats = NetworkStats()
        self._transports: dict[Address, SimTransport] = {}
        self._links: dict[tuple[Address, Address], LinkParams] = {}
        self._partitions: list[_Partition] = []
        self._drop_when: DropFilter | None = None
        self._paused: set[Address] = set()
        self._slow: dict[Address, float] = {}
        # Lists rather than tuples so the hot send path can bump them in place.
        self._sent_by: dict[Address, list[int]] = {}
        self._seq = 0

    # -- endpoints ---------------------------------------------------------

    def attach(self, address: Address) -> SimTransport:
        """Create a transport bound to `address`.

        Raises `ValueError` if another transport is attached there already.
        An address can be attached again after its transport is closed or
        crashed; the new transport starts with an empty queue.
        """
        if address in self._transports:
            raise ValueError(f"address {address[0]}:{address[1]} is already attached")
        transport = SimTransport(self, address)
        self._transports[address] = transport
        return transport

    def is_attached(self, address: Address) -> bool:
        """Whether a live transport is bound to `address`."""
        return address in self._transports

    @property
    def addresses(self) -> list[Address]:
        """Currently attached addresses, in attach order."""
        return list(self._transports)

    def crash(self, address: Address) -> None:
        """Kill the network side of a node at once.

        The transport is detached, its undelivered packets are dropped
        (counted as `unreachable`), datagrams it sent while paused are
        discarded, and pending `receive()` calls raise
        `trio.ClosedResourceError`. Cancelling the node's own tasks is up to
        the caller. Does nothing if nothing is attached at `address`.
        """
        transport = self._transports.get(address)
        if transport is not None:
            transport._shut_down()
        self._paused.discard(address)

    def _detach(self, transport: SimTransport) -> None:
        if self._transports.get(transport._address) is transport:
            del self._transports[transport._address]

    # -- fault injection ---------------------------------------------------

    def set_link(
        self,
        a: Address,
        b: Address,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        symmetric: bool = True,
    ) -> None:
        """Override latency, jitter and/or loss for traffic from `a` to `b`
        (and `b` to `a` when `symmetric`).

        Arguments left as `None` keep any earlier override for that link, else
        the network default. A link's `loss` replaces the default loss.
        """
        if latency is not None:
            _check_delay("latency", latency)
        if jitter is not None:
            _check_delay("jitter", jitter)
        if loss is not None:
            _check_probability("loss", loss)
        pairs = [(a, b), (b, a)] if symmetric else [(a, b)]
        for pair in pairs:
            old = self._links.get(pair, LinkParams())
            self._links[pair] = LinkParams(
                latency=old.latency if latency is None else latency,
                jitter=old.jitter if jitter is None else jitter,
                loss=old.loss if loss is None else loss,
            )

    def clear_links(self) -> None:
        """Remove every per-link override."""
        self._links.clear()

    def partition(
        self,
        side_a: Iterable[Address],
        side_b: Iterable[Address],
        *,
        one_way: bool = False,
    ) -> None:
        """Block traffic between two groups of addresses.

        With `one_way=True` only traffic from `side_a` to `side_b` is blocked.
        Blocked datagrams are dropped (counted as `partition`), both when sent
        and when they would be delivered, so packets in flight when the
        partition starts are lost as well (a reliable message in flight is
        lost too, as a broken connection would lose it). `send_reliable`
        across a partition raises `ConnectionRefusedError`. Partitions add up
        until `heal()`.
        """
        self._partitions.append(_Partition(frozenset(side_a), frozenset(side_b), one_way))

    def drop_datagrams(self, predicate: DropFilter | None) -> None:
        """Drop every datagram for which `predicate(source, dest, data)` is true
        (counted as `filtered`), until called again with None. Reliable messages
        pass: this models a peer that misses particular gossip, not a broken link."""
        self._drop_when = predicate

    def heal(self) -> None:
        """Remove all partitions."""
        self._partitions.clear()

    def is_blocked(self, src: Address, dst: Address) -> bool:
        """Whether a partition currently blocks traffic from `src` to `dst`."""
        return any(p.blocks(src, dst) for p in self._partitions)

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
        transport = self._transports.get(address)
        if transport is not None:
            transport._pause()

    def resume(self, address: Address) -> None:
        """Unfreeze `address`: send what it held back and let it receive."""
        if address not in self._paused:
            return
        self._paused.discard(address)
        transport = self._transports.get(address)
        if transport is not None:
            transport._resume()

    def is_paused(self, address: Address) -> bool:
        """Whether `address` is currently paused."""
        return address in self._paused

    def set_slow(self, address: Address, delay: float) -> None:
        """Add `delay` seconds to everything `address` receives from now on;
        `0` clears it. Models a CPU-starved process that reads late."""
        _check_delay("delay", delay)
        if delay:
            self._slow[address] = delay
        else:
            self._slow.pop(address, None)

    # -- accounting --------------------------------------------------------

    def sent_by(self, address: Address) -> tuple[int, int]:
        """`(messages, bytes)` sent from `address` so far, over all the
        transports ever attached there."""
        counts = self._sent_by.get(address)
        return (0, 0) if counts is None else (counts[0], counts[1])

    # -- delivery ----------------------------------------------------------

    def _push(self, sender: SimTransport, dest: SimTransport, at: float, packet: Packet) -> bool:
        heap = dest._heap
        if len(heap) >= self.queue_limit:
            self.stats.overflow += 1
            return False
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
        return True

    def _link_params(self, src: Address, dst: Address) -> tuple[float, float, float]:
        """Latency, jitter and loss from `src` to `dst`: the network's, or the
        link's where `set_link` overrides them."""
        latency, jitter, loss = self.latency, self.jitter, self.loss
        link = self._links.get((src, dst)) if self._links else None
        if link is not None:
            latency = link.latency if link.latency is not None else latency
            jitter = link.jitter if link.jitter is not None else jitter
            loss = link.loss if link.loss is not None else loss
        return latency, jitter, loss

    def _dispatch(self, sender: SimTransport, dest_addr: Address, data: bytes) -> None:
        """Route one datagram (already counted as sent)."""
        stats = self.stats
        if len(data) > self.max_datagram:
            stats.oversize += 1
            return
        dest = self._transports.get(dest_addr)
        if dest is None:
            stats.unreachable += 1
            return
        src_addr = sender._address
        if self._partitions and self.is_blocked(src_addr, dest_addr):
            stats.partition += 1
            return
        if self._drop_when is not None and self._drop_when(src_addr, dest_addr, data):
            stats.filtered += 1
            return
        latency, jitter, loss = self._link_params(src_addr, dest_addr)
        rng = sender._rng
        # Draw only for enabled features so that turning one on does not
        # shift the random stream of a run that never used it.
        if loss and rng.random() < loss:
            stats.loss += 1
            return
        base = trio.current_time() + latency + self._slow.get(dest_addr, 0.0)
        at = base + rng.uniform(0.0, jitter) if jitter else base
        if self.reorder and rng.random() < self.reorder:
            at += rng.uniform(0.0, REORDER_FACTOR * latency)
        packet = Packet(src_addr, data, False)
        self._push(sender, dest, at, packet)
        if self.duplicate and rng.random() < self.duplicate:
            stats.duplicated += 1
            copy_at = base + rng.uniform(0.0, jitter) if jitter else base
            self._push(sender, dest, copy_at, packet)

    def _dispatch_reliable(self, sender: SimTransport, dest_addr: Address, data: bytes) -> None:
        stats = self.stats
        if len(data) > MAX_RELIABLE_SIZE:
            stats.oversize += 1
            raise OSError(errno.EMSGSIZE, f"reliable message of {len(data)} bytes is too large")
        dest = self._transports.get(dest_addr)
        src_addr = sender._address
        if dest is None:
            stats.unreachable += 1
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"nothing attached at {dest_addr[0]}:{dest_addr[1]}"
            )
        if self._partitions and self.is_blocked(src_addr, dest_addr):
            stats.partition += 1
            raise ConnectionRefusedError(
                errno.ECONNREFUSED,
                f"{dest_addr[0]}:{dest_addr[1]} is partitioned from {src_addr[0]}:{src_addr[1]}",
            )
        latency, jitter, _ = self._link_params(src_addr, dest_addr)
        at = trio.current_time() + latency + self._slow.get(dest_addr, 0.0)
        if jitter:
            at += sender._rng.uniform(0.0, jitter)
        # A stream never reorders: never arrive before the previous message on
        # this sender's stream to the same peer.
        at = max(at, sender._stream_tail.get(dest_addr, at))
        if len(dest._heap) >= self.queue_limit:
            # A real stream would apply back-pressure; failing loudly keeps
            # memory bounded without silently losing a "reliable" message.
            stats.overflow += 1
            raise OSError(errno.ENOBUFS, f"receive queue of {dest_addr[0]}:{dest_addr[1]} is full")
        sender._stream_tail[dest_addr] = at
        self._push(sender, dest, at, Packet(src_addr, data, True))


class SimTransport:
    """One endpoint of a `Network`; implements `swimnode.net.transport.Transport`.

    Obtain with `Network.attach`. Incoming packets sit in a heap ordered by
    arrival time and come out one per `receive()` call.
    """

    def __init__(self, network: Network, address: Address) -> None:
        """Use `Network.attach` instead of calling this directly."""
        self._net = network
        self._address = address
        host, port = address
        self._rng = random.Random(f"{network.seed}/{host}:{port}")
        self._heap: list[_Entry] = []
        # One cancel scope per waiting receive(); its deadline is the earliest
        # arrival, and senders move it earlier. Cancelling it wakes the waiter.
        self._sleepers: list[trio.CancelScope] = []
        self._closed = False
        self._paused = False
        # Set on resume or close; `send_reliable` of a paused node waits on it.
        self._unpaused = trio.Event()
        self._held: list[tuple[Address, bytes]] = []
        self._stream_tail: dict[Address, float] = {}
        self._seq = 0
        self._sent = network._sent_by.setdefault(address, [0, 0])
        if address in network._paused:
            self._pause()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SimTransport {self._address[0]}:{self._address[1]} {state}>"

    @property
    def overhead(self) -> int:
        """Datagrams go out as given: no framing."""
        return 0

    @property
    def local_address(self) -> Address:
        """The address this transport is attached at."""
        return self._address

    @property
    def network(self) -> Network:
        """The network this transport belongs to."""
        return self._net

    @property
    def pending(self) -> int:
        """Packets queued for this endpoint, including ones still in flight."""
        return len(self._heap)

    @property
    def closed(self) -> bool:
        """Whether `aclose()` or `Network.crash` has shut this transport."""
        return self._closed

    def _count_sent(self, data: bytes) -> None:
        stats = self._net.stats
        stats.sent += 1
        stats.bytes_sent += len(data)
        counts = self._sent
        counts[0] += 1
        counts[1] += len(data)

    async def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram. Never raises for network conditions: lost,
        partitioned, oversize or unroutable datagrams are dropped and counted.

        Raises `trio.ClosedResourceError` if this transport is closed.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        self._count_sent(data)
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
        self._count_sent(data)
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
                if deliver_at <= trio.current_time():
                    packet = heapq.heappop(heap)[4]
                    if net._partitions and net.is_blocked(packet.source, self._address):
                        net.stats.partition += 1
                        continue
                    net.stats.delivered += 1
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
        `unreachable`); waiting `receive()` calls raise
        `trio.ClosedResourceError`. Idempotent."""
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
        self._heap.clear()
        self._held.clear()
        net._detach(self)
        self._wake_receivers()
        self._unpaused.set()
