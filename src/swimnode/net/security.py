"""Encryption, authentication, replay protection and cluster labels as a Trio transport layer.

`SecureTransport` wraps any `swimnode.net.transport.Transport` (UDP+TCP, the simulated
network) and is one itself, so the protocol core never sees a key: it sends and
receives the same payloads as before, and whatever fails a check here never reaches
it. The rules themselves (wire format, keys, labels, replay window) are
`swimnode.net.securelayer.SecurityLayer`, which has no I/O and which the asyncio
transport applies too; its module docstring has the wire format, docs/security.md
the threat model.
"""

from __future__ import annotations

import trio

from .securelayer import (
    DROP_REASONS,
    ENCRYPTED_OVERHEAD,
    FORMAT_VERSION,
    HEADER_ENCRYPTED,
    HEADER_PLAINTEXT,
    MAX_LABEL_BYTES,
    SecurityLayer,
    check_secure_bind,
)
from .transport import Address, Packet, Transport

__all__ = [
    "DROP_REASONS",
    "ENCRYPTED_OVERHEAD",
    "FORMAT_VERSION",
    "HEADER_ENCRYPTED",
    "HEADER_PLAINTEXT",
    "MAX_LABEL_BYTES",
    "SecureTransport",
    "SecurityLayer",
    "check_secure_bind",
]


class SecureTransport(SecurityLayer[Transport]):
    """A `Transport` that frames, encrypts and authenticates what another one carries,
    by the rules of `SecurityLayer` (see there for the arguments, `stats` and the
    checks).

    `receive()` returns only packets that passed every check; everything else is
    counted in `stats` by reason (see `DROP_REASONS`) and skipped, never raised.
    """

    # -- Transport interface ---------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The inner transport's address."""
        return self._inner.local_address

    async def send(self, dest: Address, data: bytes) -> None:
        """Frame (and encrypt) `data` and send it as one datagram, best effort.

        A payload over `max_packet` is dropped and counted as ``send_oversize``
        rather than raised, as the `Transport` contract asks of datagrams.
        """
        if not self.datagram_fits(data):
            await trio.lowlevel.checkpoint()
            return
        await self._inner.send(dest, self.wrap(data))

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Frame (and encrypt) `data` and send it over the inner reliable channel.

        Raises `OSError` (``EMSGSIZE``) for a payload over `max_packet`, and
        whatever the inner transport raises.
        """
        try:
            self.check_reliable(data)
        except OSError:
            await trio.lowlevel.checkpoint()
            raise
        await self._inner.send_reliable(dest, self.wrap(data))

    async def receive(self) -> Packet:
        """The next packet that passes every check, with the framing removed.

        Waits on nothing but the inner transport's `receive()` (checking is
        synchronous), and raises only what that raises.
        """
        while True:
            packet = await self._inner.receive()
            opened = self.unwrap(packet)
            if opened is not None:
                return opened

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()
