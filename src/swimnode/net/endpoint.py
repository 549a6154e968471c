"""The state every unframed transport keeps the same way, without I/O.

Four backends send datagrams as given: the UDP + TCP transports of Trio
(`swimnode.net.udp`) and asyncio (`swimnode.net.aioudp`), and the simulated
networks' endpoints (`swimnode.testing.network`, `swimnode.testing.aionetwork`).
`Endpoint` holds what they share (an address, no overhead, closed or not);
`SocketEndpoint` adds what the two real ones share (the limits, `stats` and the
rule for admitting a connection). Neither imports an event loop, so the asyncio
side and the Trio side inherit the same code.
"""

from __future__ import annotations

import collections
from typing import TypedDict, Unpack

from .. import counters
from .transport import Address

__all__ = ["Endpoint", "SocketEndpoint", "SocketLimits"]


class Endpoint:
    """An address to send from, datagrams without framing, and whether it is shut.

    A subclass sets `_closed` when it shuts.
    """

    def __init__(self, address: Address) -> None:
        self._address = address
        self._closed = False

    @property
    def overhead(self) -> int:
        """Datagrams go out as given: no framing."""
        return 0

    @property
    def local_address(self) -> Address:
        """The address other nodes reach this one at."""
        return self._address

    @property
    def closed(self) -> bool:
        """Whether `aclose()` has run (or, on a simulated network, the node crashed)."""
        return self._closed


class SocketLimits(TypedDict):
    """The limits of a transport over real sockets, as
    `swimnode.net.udp.open_udp_transport` takes (and checks) them."""

    max_datagram: int
    max_stream_bytes: int
    max_connections: int
    stream_timeout: float


class SocketEndpoint(Endpoint):
    """An `Endpoint` over real sockets: its `SocketLimits`, `stats` with the keys
    and meanings of `swimnode.net.udp.UdpTransport.stats`, and the count of
    connections being read."""

    stats: collections.Counter[str]

    def __init__(self, address: Address, **limits: Unpack[SocketLimits]) -> None:
        super().__init__(address)
        self.stats = collections.Counter()
        self._max_datagram = limits["max_datagram"]
        self._max_stream_bytes = limits["max_stream_bytes"]
        self._max_connections = limits["max_connections"]
        self._stream_timeout = limits["stream_timeout"]
        self._active = 0

    @property
    def active_connections(self) -> int:
        """Incoming TCP connections currently being read."""
        return self._active

    def _admit(self) -> bool:
        """Whether to read a connection just accepted. One over `max_connections`
        is counted as ``stream_rejected`` and must be closed at once; an admitted
        one counts as active until its reader decrements `_active`."""
        if self._active >= self._max_connections:
            self.stats[counters.STREAM_REJECTED] += 1
            return False
        self._active += 1
        return True
