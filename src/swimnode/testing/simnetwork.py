"""The simulated networks of transports, without a scheduler.

`swimnode.testing.network.Network` (for Trio) and
`swimnode.testing.aionetwork.AioNetwork` (for asyncio) hand out endpoints that
look like transports. Attaching and crashing endpoints and routing each packet
to the one it is for, by `LinkModel`'s decision, are `SimNetwork`'s, so the two
cannot disagree on them; a subclass adds only what its event loop decides: the
clock, and how a packet waits until its arrival time (`_now`, `_push`).
"""

from __future__ import annotations

from typing import Generic, TypeVar, Unpack

from ..net.endpoint import Endpoint
from ..net.transport import Address, Packet
from .linkmodel import LinkKnobs, LinkModel, endpoint_rng

__all__ = ["SimEndpoint", "SimNetwork"]


class SimEndpoint(Endpoint):
    """An endpoint of a `SimNetwork`: its address, the generator its packets'
    fates are drawn from, and its counters.

    A subclass provides `pending` and `_shut_down`.
    """

    def __init__(self, network: LinkModel, address: Address) -> None:
        super().__init__(address)
        self._rng = endpoint_rng(network.seed, address)
        # Per peer, when the last stream message to it arrives: the next one
        # must not overtake it.
        self._tails: dict[Address, float] = {}
        self._sent = network._sent_counts(address)

    @property
    def pending(self) -> int:
        """Packets queued for this endpoint, including ones still in flight."""
        raise NotImplementedError

    def _shut_down(self) -> None:
        """Close the endpoint and detach it from its network (idempotent)."""
        raise NotImplementedError


E = TypeVar("E", bound=SimEndpoint)


class SimNetwork(LinkModel, Generic[E]):
    """A `LinkModel` with endpoints of type `E` attached at addresses.

    A subclass provides `_new_endpoint`, `_now` and `_push`.
    """

    def __init__(self, seed: int = 0, **knobs: Unpack[LinkKnobs]) -> None:
        super().__init__(seed, **knobs)
        self._endpoints: dict[Address, E] = {}

    # -- what a subclass provides -------------------------------------------

    def _new_endpoint(self, address: Address) -> E:
        """A new endpoint at `address`, not yet registered."""
        raise NotImplementedError

    def _now(self) -> float:
        """The event loop's clock, which arrival times are on."""
        raise NotImplementedError

    def _push(self, sender: E, dest: E, at: float, packet: Packet) -> None:
        """Hand `packet` to `dest` at time `at`; the caller has checked that its
        queue has room."""
        raise NotImplementedError

    # -- endpoints ----------------------------------------------------------

    def attach(self, address: Address) -> E:
        """Create a transport bound to `address`.

        Raises `ValueError` if another transport is attached there already.
        An address can be attached again after its transport is closed or
        crashed; the new transport starts with an empty queue.
        """
        if address in self._endpoints:
            raise ValueError(f"address {address[0]}:{address[1]} is already attached")
        transport = self._endpoints[address] = self._new_endpoint(address)
        return transport

    def is_attached(self, address: Address) -> bool:
        """Whether a live transport is bound to `address`."""
        return address in self._endpoints

    def crash(self, address: Address) -> None:
        """Kill the network side of a node at once: its transport shuts as if
        closed and its packets in flight are dropped (counted as `unreachable`).
        Stopping the node's own tasks is up to the caller. Does nothing if
        nothing is attached at `address`.
        """
        transport = self._endpoints.get(address)
        if transport is not None:
            transport._shut_down()
        self._paused.discard(address)

    def _detach(self, transport: E) -> None:
        if self._endpoints.get(transport._address) is transport:
            del self._endpoints[transport._address]

    # -- routing ------------------------------------------------------------

    def _dispatch(self, sender: E, dest_addr: Address, data: bytes) -> None:
        """Route one datagram (already counted as sent)."""
        if len(data) > self.max_datagram:
            self.stats.oversize += 1
            return
        dest = self._endpoints.get(dest_addr)
        if dest is None:
            self.stats.unreachable += 1
            return
        src = sender._address
        arrivals = self._datagram_arrivals(sender._rng, src, dest_addr, data, self._now())
        for at in arrivals:
            # A packet per copy: each copy through a shared link is asked after on its own.
            packet = Packet(src, data, False)
            if dest.pending >= self.queue_limit:
                self.stats.overflow += 1
                self._hold(None)
            else:
                self._hold(packet)
                self._push(sender, dest, at, packet)

    def _dispatch_reliable(self, sender: E, dest_addr: Address, data: bytes) -> None:
        """Route one stream message (already counted as sent), or raise as a
        failed stream send would."""
        dest = self._endpoints.get(dest_addr)
        src = sender._address
        self._check_stream(src, dest_addr, len(data), dest is not None)
        assert dest is not None
        tail = sender._tails.get(dest_addr)
        at = self._stream_arrival(sender._rng, src, dest_addr, len(data), self._now(), tail)
        if dest.pending >= self.queue_limit:
            self._hold(None)
            raise self._overflow(dest_addr)
        sender._tails[dest_addr] = at
        packet = Packet(src, data, True)
        self._hold(packet)
        self._push(sender, dest, at, packet)
