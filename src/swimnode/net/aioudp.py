"""The real-network transport for asyncio: UDP datagrams plus TCP for reliable messages.

The asyncio twin of `swimnode.net.udp` (see there for the design): the same host
and port for UDP and TCP, and the same binding, options and limits, datagram sends
and stream reads (`swimnode.net.sockets`), stream framing (`swimnode.net.framing`)
and counters (`swimnode.counters`), with the same meaning. Usage::

    async with open_aio_udp_transport(("127.0.0.1", 7946)) as transport:
        transport.start(print)
        transport.send(("127.0.0.1", 7947), b"ping")

Differences, both from asyncio's callback style: received packets go to the
`deliver` callback as they are read, so there is no receive queue (the socket's own
buffer is the queue, and ``receive_overflow`` is never counted); datagrams are read
by a reader callback on the socket (`loop.add_reader`, which uvloop has too) into
one reusable buffer, rather than through asyncio's datagram transport, which
allocates a 256 KiB buffer per datagram and reports send errors without saying
which datagram failed. Unix event loops only (the Proactor loop has no readers).
"""

from __future__ import annotations

import asyncio
import logging
import socket as stdlib_socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Unpack

from swimnode import counters
from swimnode.net import framing, sockets
from swimnode.net.aiotransport import Deliver
from swimnode.net.endpoint import SocketEndpoint, SocketLimits
from swimnode.net.transport import Address, Packet, TransportError
from swimnode.protocol.limits import MAX_DATAGRAM_BYTES

__all__ = ["AioUdpTransport", "TransportError", "open_aio_udp_transport"]

logger = logging.getLogger(__name__)

_RECV_BUFFER = 65536
_BURST = 64
# After a failed accept (typically EMFILE) retrying at once would just spin.
_ACCEPT_BACKOFF = 0.1


class _PlainSocket:
    """A non-blocking stdlib socket shaped for `sockets.bind_pair` (binding an IP
    literal never waits, so `bind` is a coroutine only to fit Trio's)."""

    def __init__(self, family: stdlib_socket.AddressFamily, kind: stdlib_socket.SocketKind) -> None:
        self.sock = stdlib_socket.socket(family, kind)
        self.sock.setblocking(False)
        self.getsockname = self.sock.getsockname
        self.setsockopt = self.sock.setsockopt
        self.listen = self.sock.listen
        self.close = self.sock.close

    async def bind(self, address: tuple[str, int]) -> None:
        self.sock.bind(address)


class AioUdpTransport(SocketEndpoint):
    """A `swimnode.net.aiotransport.AioTransport` over real UDP and TCP sockets.

    Create it with `open_aio_udp_transport`. `stats` counts what is handled without
    raising, with the keys and meanings of `swimnode.net.udp.UdpTransport.stats`;
    `local_address` is `advertise` if one was given, otherwise the address bound.
    """

    def __init__(
        self,
        udp_socket: stdlib_socket.socket,
        tcp_socket: stdlib_socket.socket,
        local_address: Address,
        **limits: Unpack[SocketLimits],
    ) -> None:
        super().__init__(local_address, **limits)
        self._loop = asyncio.get_running_loop()
        self._udp = udp_socket
        self._tcp = tcp_socket
        self._deliver: Deliver | None = None
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- AioTransport interface -----------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Start reading datagrams and accepting connections; each packet received
        goes to `deliver` (stream packets with `reliable=True` and the connecting
        socket's address as `source`)."""
        if self._deliver is not None:
            raise RuntimeError("the transport has already started")
        self._deliver = deliver
        self._loop.add_reader(self._udp.fileno(), self._read_datagrams)
        self._spawn(self._accept_connections())

    def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram, best effort, without waiting. Never raises for
        network conditions: oversize, a host that is not an IP literal (no DNS
        lookups happen here), a full socket buffer or an OS error drops it, counted
        in `stats` as `swimnode.net.udp.UdpTransport.send` counts it."""
        if self._closed:
            raise RuntimeError("transport is closed")
        sockets.send_datagram(self._udp, dest, data, self._max_datagram, self.stats)

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Deliver `data` as one length-prefixed message over a new TCP connection
        to `dest`, within `stream_timeout` (connect, write, close). Raises
        `TimeoutError`, `OSError`, or `OSError` (``EMSGSIZE``) over
        `max_stream_bytes`, each counted as ``reliable_errors``."""
        if self._closed:
            raise RuntimeError("transport is closed")
        sockets.check_stream_size(data, self._max_stream_bytes, self.stats)
        host = sockets.ip_literal(dest[0]) or dest[0]
        try:
            async with asyncio.timeout(self._stream_timeout):
                _, writer = await asyncio.open_connection(host, dest[1])
                try:
                    writer.write(framing.encode(data))
                    await writer.drain()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except TimeoutError:
            raise sockets.stream_timed_out(dest, self._stream_timeout, self.stats) from None
        except OSError:
            self.stats[counters.RELIABLE_ERRORS] += 1
            raise

    async def aclose(self) -> None:
        """Stop receiving and release the address; background tasks are cancelled
        and waited for. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._deliver is not None:
                self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._tcp.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -----------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _read_datagrams(self) -> None:
        # Up to a burst's worth in one callback: a burst costs one wakeup of the
        # loop, and a flood still lets the loop's other callbacks run in between
        # (the socket stays readable, so the loop calls this again).
        deliver, view = self._deliver, self._view
        assert deliver is not None
        for _ in range(_BURST):
            if self._closed:
                return
            try:
                size, source = self._udp.recvfrom_into(self._buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                # E.g. ECONNREFUSED after an ICMP port-unreachable; the socket
                # itself is still fine.
                self.stats[counters.RECEIVE_ERRORS] += 1
                logger.debug("UDP receive error: %s", exc)
                continue
            deliver(Packet((source[0], source[1]), bytes(view[:size]), False))

    async def _accept_connections(self) -> None:
        while True:
            try:
                conn, _ = await self._loop.sock_accept(self._tcp)
            except OSError as exc:
                if self._closed:
                    return
                self.stats[counters.ACCEPT_ERRORS] += 1
                logger.debug("TCP accept failed: %s", exc)
                await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            if not self._admit():
                conn.close()
                continue
            self._spawn(self._serve_connection(conn))

    async def _serve_connection(self, conn: stdlib_socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            peer = conn.getpeername()
            # One deadline for the whole message, so a slow or silent client
            # cannot hold a connection slot for longer than this.
            async with asyncio.timeout(self._stream_timeout):
                reader, writer = await asyncio.open_connection(sock=conn)
                data = await self._read_message(reader)
        except TimeoutError:
            self.stats[counters.STREAM_TIMEOUTS] += 1
            return
        except OSError as exc:
            self.stats[counters.STREAM_ERRORS] += 1
            logger.debug("incoming stream failed: %s", exc)
            return
        finally:
            self._active -= 1
            if writer is not None:
                writer.transport.abort()
            else:
                conn.close()
        if data is not None and self._deliver is not None and not self._closed:
            self._deliver(Packet((peer[0], peer[1]), data, True))

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes | None:
        """One length-prefixed message, or None (counted) if it is refused or the
        stream ends early."""
        return await sockets.read_message(
            framing.read_frame(reader, self._max_stream_bytes), self.stats
        )


@asynccontextmanager
async def open_aio_udp_transport(
    bind: Address,
    *,
    advertise: Address | None = None,
    max_datagram: int = MAX_DATAGRAM_BYTES,
    max_stream_bytes: int = 16 * 1024 * 1024,
    max_connections: int = 64,
    stream_timeout: float = 10.0,
) -> AsyncIterator[AioUdpTransport]:
    """Bind UDP and TCP on `bind` and run the transport for the block's duration.

    The arguments, limits and errors are `swimnode.net.udp.open_udp_transport`'s
    (`TransportError` if the address cannot be bound, `ValueError` for a bad
    option), without `receive_queue` (see the module docstring). On exit the
    sockets are closed and the background tasks stopped.
    """
    sockets.check_options(max_datagram, max_stream_bytes, max_connections, stream_timeout, 1)
    sockets.check_bind_port(bind)
    found = sockets.literal_bind_host(bind)
    if found is None:
        # A name is resolved once, at startup, as the Trio transport does.
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                bind[0], bind[1], type=stdlib_socket.SOCK_DGRAM, flags=stdlib_socket.AI_PASSIVE
            )
        except OSError as exc:
            raise sockets.bind_resolve_error(bind, exc) from exc
        found = sockets.bind_host_from(bind, infos)
    udp_socket, tcp_socket, bound = await sockets.bind_pair(bind, *found, _PlainSocket)
    transport = AioUdpTransport(
        udp_socket.sock,
        tcp_socket.sock,
        advertise if advertise is not None else bound,
        max_datagram=max_datagram,
        max_stream_bytes=max_stream_bytes,
        max_connections=max_connections,
        stream_timeout=stream_timeout,
    )
    try:
        yield transport
    finally:
        await transport.aclose()
