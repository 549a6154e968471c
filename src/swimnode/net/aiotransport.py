"""The transport interface of the asyncio driver, and its security layer.

`AioTransport` is `swimnode.net.transport.Transport` reshaped for asyncio's
callbacks: received packets are handed to the driver as they are read
(`start(deliver)`) instead of waiting in a queue for a task to take them, and a
datagram is sent without awaiting (a non-blocking socket never has to wait, see
`swimnode.net.udp.UdpTransport.send`). Each received datagram thus costs one
callback of the loop, not a callback plus a task's wakeup. Backends: real UDP and
TCP (`swimnode.net.aioudp`) and the simulated network
(`swimnode.testing.aionetwork`).

`AioSecureTransport` applies `swimnode.net.securelayer.SecurityLayer` (the same rules
and counters as the Trio `SecureTransport`) to any of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ..protocol.config import Config
from .keyring import Keyring
from .securelayer import SecurityLayer, secure_with
from .transport import Address, Packet

__all__ = ["AioSecureTransport", "AioTransport", "Deliver", "secure"]

Deliver = Callable[[Packet], None]
"""Called with each received packet, on the event loop's thread."""


class AioTransport(Protocol):
    """What the asyncio driver needs from a network backend."""

    @property
    def local_address(self) -> Address:
        """The address other nodes reach this one at."""
        ...

    @property
    def overhead(self) -> int:
        """Bytes this transport adds to every datagram it sends."""
        ...

    def start(self, deliver: Deliver) -> None:
        """Hand every packet received from now on to `deliver`, in arrival order.
        `deliver` must be quick and must not raise."""
        ...

    def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram, best effort, without waiting. Must not raise on an
        unreachable or unknown destination (it is dropped and counted)."""
        ...

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Deliver `data` whole over a reliable stream. May take time (connect);
        raises `OSError` if the peer cannot be reached."""
        ...

    async def aclose(self) -> None:
        """Stop receiving and release the address."""
        ...


class AioSecureTransport(SecurityLayer[AioTransport]):
    """An `AioTransport` that frames, encrypts and authenticates what another one
    carries, by the rules of `SecurityLayer` (see there for the arguments, `stats`
    and the checks). Packets that fail a check are counted and never delivered."""

    @property
    def local_address(self) -> Address:
        """The inner transport's address."""
        return self._inner.local_address

    def start(self, deliver: Deliver) -> None:
        """Deliver the packets that pass every check, with the framing removed."""
        unwrap = self.unwrap

        def opened(packet: Packet) -> None:
            checked = unwrap(packet)
            if checked is not None:
                deliver(checked)

        self._inner.start(opened)

    def send(self, dest: Address, data: bytes) -> None:
        """Frame (and encrypt) `data` and send it as one datagram; one over
        `max_packet` is dropped and counted as ``send_oversize``."""
        if self.datagram_fits(data):
            self._inner.send(dest, self.wrap(data))

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Frame (and encrypt) `data` and send it over the inner reliable channel.
        Raises `OSError` (``EMSGSIZE``) over `max_packet`, and whatever the inner
        transport raises."""
        self.check_reliable(data)
        await self._inner.send_reliable(dest, self.wrap(data))

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()


def secure(
    transport: AioTransport,
    config: Config,
    keyring: Keyring | None,
    *,
    clock: Callable[[], float] = time.time,
) -> AioTransport:
    """`swimnode.node.secure` for asyncio transports: wrap `transport` in the
    security layer when keys or a label are configured."""
    return secure_with(AioSecureTransport, transport, config, keyring, clock)
