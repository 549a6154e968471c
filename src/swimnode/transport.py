"""The transport interface every network backend implements.

The protocol core never touches sockets; the node shell moves bytes between the
core and one `Transport`. Two backends exist: real UDP/TCP and the in-memory
network in `swimnode.sim`. Both deliver whole packets (a datagram, or one
message that went over a stream) tagged with where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Address = tuple[str, int]
"""A `(host, port)` pair. Hosts are strings so simulated names work too."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One received unit of bytes.

    `reliable` is true when the bytes came over a stream (TCP, or the simulated
    reliable channel); such packets may exceed the datagram budget.
    """

    source: Address
    data: bytes
    reliable: bool = False


class Transport(Protocol):
    """What the node shell needs from a network backend."""

    @property
    def local_address(self) -> Address:
        """The address other nodes reach this one at."""
        ...

    async def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram, best effort. Must not block for long and must
        not raise on an unreachable or unknown destination (it is dropped)."""
        ...

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Deliver `data` whole over a reliable stream. May take time (connect);
        raises `OSError` if the peer cannot be reached."""
        ...

    async def receive(self) -> Packet:
        """Wait for the next packet addressed to this node."""
        ...

    async def aclose(self) -> None:
        """Stop receiving and release the address."""
        ...
