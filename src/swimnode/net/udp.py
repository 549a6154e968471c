"""The real-network transport: UDP datagrams plus TCP for reliable messages.

Like memberlist, a node listens for UDP and TCP on the same host and port, so
one advertised address is enough for peers to reach it both ways. Datagrams
carry the protocol's small, loss-tolerant messages; `send_reliable` opens a
short-lived TCP connection per message (push/pull state exchange, and anything
too big for a datagram). A stream message is framed as a 4-byte big-endian
length followed by that many bytes, then the connection is closed.

Usage::

    async with open_udp_transport(("127.0.0.1", 7946)) as transport:
        await transport.send(("127.0.0.1", 7947), b"ping")
        packet = await transport.receive()

What does not wait (binding, options, datagram sends, stream limits) is
`swimnode.net.sockets`, which the asyncio transport shares.

The transport never parses what it carries. Everything that goes wrong on the
network is counted in `UdpTransport.stats` rather than raised, except where the
caller has to know (`send_reliable`, and binding).
"""

from __future__ import annotations

import errno
import logging
import socket as stdlib_socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Unpack

import trio

from swimnode import counters
from swimnode.net import framing
from swimnode.net.endpoint import SocketEndpoint, SocketLimits
from swimnode.net.sockets import (
    bind_host_from,
    bind_pair,
    bind_resolve_error,
    check_bind_port,
    check_options,
    check_stream_size,
    ip_literal,
    literal_bind_host,
    read_message,
    send_datagram,
    stream_timed_out,
)
from swimnode.net.transport import Address, Packet, TransportError, format_address
from swimnode.protocol.limits import MAX_DATAGRAM_BYTES

__all__ = ["TransportError", "UdpTransport", "open_udp_transport"]

logger = logging.getLogger(__name__)

_RECV_BUFFER = 65536
# After a failed accept (typically EMFILE: out of file descriptors) retrying
# at once would just spin; a short pause lets open connections finish.
_ACCEPT_BACKOFF = 0.1


class UdpTransport(SocketEndpoint):
    """A `swimnode.net.transport.Transport` over real UDP and TCP sockets.

    Create it with `open_udp_transport`, which owns its background tasks.

    `local_address` is the address peers reach this node at: `advertise` if one
    was given, otherwise the address actually bound (which may be a wildcard such
    as ``0.0.0.0`` that is not useful to peers).

    `stats` counts events that are handled without raising:

    * ``send_errors``: datagrams the OS refused, or with a destination that is
      not an IP literal;
    * ``oversize_dropped``: datagrams over `max_datagram`, never sent;
    * ``receive_overflow``: packets dropped because the receive queue was full;
    * ``receive_errors``: errors reported by the UDP socket while receiving;
    * ``stream_rejected``: connections closed at once because `max_connections`
      were already open;
    * ``stream_oversize``: incoming messages whose length prefix exceeded
      `max_stream_bytes`;
    * ``stream_timeouts``: connections that did not deliver a whole message
      within `stream_timeout`;
    * ``stream_errors``: connections that broke or closed mid-message;
    * ``accept_errors``: failed accepts on the TCP listener;
    * ``reliable_errors``: failed `send_reliable` calls (these also raise).
    """

    def __init__(
        self,
        udp_socket: stdlib_socket.socket,
        tcp_socket: trio.socket.SocketType,
        local_address: Address,
        *,
        receive_queue: int,
        **limits: Unpack[SocketLimits],
    ) -> None:
        super().__init__(local_address, **limits)
        # Datagrams go out straight through the non-blocking socket: a send never
        # needs to wait, and Trio's path (address resolution, a checkpoint and a
        # reschedule per datagram) is a large share of an idle node's CPU.
        self._udp_raw = udp_socket
        self._udp = trio.socket.from_stdlib_socket(udp_socket)
        self._tcp = tcp_socket
        self._listener = trio.SocketListener(tcp_socket)
        self._send_channel, self._receive_channel = trio.open_memory_channel[Packet](receive_queue)
        # Created up front so aclose() can stop the background tasks even if
        # it runs before they have started.
        self._tasks_scope = trio.CancelScope()

    # -- Transport interface -------------------------------------------------

    async def send(self, dest: Address, data: bytes) -> None:
        """Send one datagram, best effort, without waiting (and without yielding
        to other tasks).

        Never raises for network conditions: a datagram over `max_datagram`
        bytes, a destination host that is not an IP literal (no DNS lookups
        happen here), a full socket send buffer (`send_buffer_full`) or another
        error from the OS drops the datagram and is counted in `stats`, as the
        network itself might drop it. Raises `trio.ClosedResourceError` after
        `aclose()`.
        """
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        send_datagram(self._udp_raw, dest, data, self._max_datagram, self.stats)

    async def send_reliable(self, dest: Address, data: bytes) -> None:
        """Deliver `data` as one length-prefixed message over a new TCP
        connection to `dest`.

        The whole exchange (connect, write, close) is bounded by
        `stream_timeout`. Raises `TimeoutError` if that runs out, `OSError` if
        the peer cannot be reached or the connection breaks, and `OSError`
        (``EMSGSIZE``) if `data` exceeds `max_stream_bytes`. Unlike `send`, the
        host may be a name; it is resolved within the same time limit.
        Success means the bytes were handed to the OS, not that the peer
        processed them.
        """
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        check_stream_size(data, self._max_stream_bytes, self.stats)
        host = ip_literal(dest[0]) or dest[0]
        frame = framing.encode(data)
        try:
            with trio.fail_after(self._stream_timeout):
                stream = await trio.open_tcp_stream(host, dest[1])
                async with stream:
                    await stream.send_all(frame)
        except trio.TooSlowError:
            raise stream_timed_out(dest, self._stream_timeout, self.stats) from None
        except trio.BrokenResourceError as exc:
            self.stats[counters.RELIABLE_ERRORS] += 1
            raise ConnectionResetError(
                errno.ECONNRESET, f"connection to {format_address(dest)} broke: {exc}"
            ) from exc
        except OSError:
            self.stats[counters.RELIABLE_ERRORS] += 1
            raise

    async def receive(self) -> Packet:
        """Wait for the next packet, UDP or TCP, in arrival order.

        Stream packets have `reliable=True`; their `source` is the connecting
        socket's address, whose port is ephemeral, not the peer's listening
        port. Raises `trio.ClosedResourceError` once the transport is closed,
        including for calls already waiting.
        """
        return await self._receive_channel.receive()

    async def aclose(self) -> None:
        """Stop receiving and release the address. Queued packets are
        discarded and waiting `receive()` calls raise
        `trio.ClosedResourceError`. Idempotent; leaving the
        `open_udp_transport` block also does this and waits for the
        background tasks to finish."""
        self._shut_down()
        await trio.lowlevel.checkpoint()

    # -- internals -----------------------------------------------------------

    def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tasks_scope.cancel()
        self._receive_channel.close()
        self._send_channel.close()
        self._udp.close()
        self._tcp.close()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._tasks_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_datagrams)
                nursery.start_soon(self._accept_connections, nursery)
                task_status.started()

    def _enqueue(self, packet: Packet) -> None:
        try:
            self._send_channel.send_nowait(packet)
        except trio.WouldBlock:
            self.stats[counters.RECEIVE_OVERFLOW] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closed concurrently; nobody will read it

    async def _receive_datagrams(self) -> None:
        # One reusable buffer: allocating 64 KiB per datagram would dominate
        # the cost of the small messages that make up most traffic.
        buffer = bytearray(_RECV_BUFFER)
        view = memoryview(buffer)
        while True:
            try:
                size, source = await self._udp.recvfrom_into(buffer)
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                # E.g. ECONNRESET on Windows after an ICMP port-unreachable;
                # the socket itself is still fine.
                if self._closed:
                    return
                self.stats[counters.RECEIVE_ERRORS] += 1
                logger.debug("UDP receive error: %s", exc)
                continue
            self._enqueue(Packet((source[0], source[1]), bytes(view[:size]), False))

    async def _accept_connections(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await self._listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if self._closed:
                    return
                self.stats[counters.ACCEPT_ERRORS] += 1
                logger.debug("TCP accept failed: %s", exc)
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            if not self._admit():
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            # One deadline for reading and queueing, so a slow or silent
            # client cannot hold a connection slot for longer than this.
            deadline = trio.current_time() + self._stream_timeout
            try:
                peer = stream.socket.getpeername()
                with trio.move_on_at(deadline) as read_scope:
                    data = await self._read_message(stream)
            except (OSError, trio.BrokenResourceError) as exc:
                self.stats[counters.STREAM_ERRORS] += 1
                logger.debug("incoming stream failed: %s", exc)
                return
            if read_scope.cancelled_caught:
                self.stats[counters.STREAM_TIMEOUTS] += 1
                return
            if data is None:
                return
            # Wait for queue space rather than drop at once: unlike a
            # datagram, the sender believes this message was delivered.
            packet = Packet((peer[0], peer[1]), data, True)
            with trio.move_on_at(deadline) as queue_scope:
                try:
                    await self._send_channel.send(packet)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if queue_scope.cancelled_caught:
                self.stats[counters.RECEIVE_OVERFLOW] += 1
        finally:
            self._active -= 1
            await trio.aclose_forcefully(stream)

    async def _read_message(self, stream: trio.SocketStream) -> bytes | None:
        """One length-prefixed message, or None (counted) if it is refused or
        the stream ends early."""
        return await read_message(framing.receive_frame(stream, self._max_stream_bytes), self.stats)


async def _resolve_bind_host(bind: Address) -> tuple[stdlib_socket.AddressFamily, str]:
    found = literal_bind_host(bind)
    if found is not None:
        return found
    # Names are allowed here (it happens once, at startup), unlike on the
    # send path.
    try:
        infos = await trio.socket.getaddrinfo(
            bind[0], bind[1], type=stdlib_socket.SOCK_DGRAM, flags=stdlib_socket.AI_PASSIVE
        )
    except OSError as exc:
        raise bind_resolve_error(bind, exc) from exc
    return bind_host_from(bind, infos)


async def _bind_sockets(
    bind: Address,
) -> tuple[stdlib_socket.socket, trio.socket.SocketType, Address]:
    """Bind UDP, then TCP on the same port; returns both (UDP as a non-blocking
    stdlib socket, see `UdpTransport.send`) and the bound address."""
    check_bind_port(bind)
    family, bind_host = await _resolve_bind_host(bind)
    # Made through Trio so a custom socket factory sees them.
    udp, tcp, bound = await bind_pair(bind, family, bind_host, trio.socket.socket)
    # Used as a plain non-blocking socket from here on (see `UdpTransport.send`).
    raw = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM, fileno=udp.detach())
    raw.setblocking(False)
    return raw, tcp, bound


@asynccontextmanager
async def open_udp_transport(
    bind: Address,
    *,
    advertise: Address | None = None,
    max_datagram: int = MAX_DATAGRAM_BYTES,
    max_stream_bytes: int = 16 * 1024 * 1024,
    max_connections: int = 64,
    stream_timeout: float = 10.0,
    receive_queue: int = 1024,
) -> AsyncIterator[UdpTransport]:
    """Bind UDP and TCP on `bind` and run the transport for the block's
    duration::

        async with open_udp_transport(("0.0.0.0", 7946), advertise=("10.0.0.5", 7946)) as t:
            ...

    `bind` is `(host, port)`; the host is an IPv4 or IPv6 literal (``"::1"``
    and ``"[::1]"`` both work) or a name resolved once here. Port 0 picks a
    port free for both protocols; `UdpTransport.local_address` reports it
    unless `advertise` overrides it.

    Datagrams over `max_datagram` bytes are not sent. Incoming stream
    messages over `max_stream_bytes` are refused; at most `max_connections`
    are read at once (more are closed immediately); each must arrive within
    `stream_timeout` seconds, which also bounds `send_reliable`. Up to
    `receive_queue` packets wait for `receive()`; further datagrams are
    dropped.

    Raises `TransportError` (an `OSError`) with a one-line message if the
    address cannot be bound, and `ValueError` for invalid options. On exit
    the sockets are closed and background tasks stopped. An exception from
    the block is re-raised as itself, not wrapped in an `ExceptionGroup`.
    """
    check_options(max_datagram, max_stream_bytes, max_connections, stream_timeout, receive_queue)
    udp, tcp, bound = await _bind_sockets(bind)
    try:
        transport = UdpTransport(
            udp,
            tcp,
            advertise if advertise is not None else bound,
            max_datagram=max_datagram,
            max_stream_bytes=max_stream_bytes,
            max_connections=max_connections,
            stream_timeout=stream_timeout,
            receive_queue=receive_queue,
        )
    except BaseException:
        udp.close()
        tcp.close()
        raise
    only_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport._run)
            try:
                yield transport
            finally:
                transport._shut_down()
    except BaseExceptionGroup as group:
        # The background tasks handle their own errors, so a group holding a
        # single exception carries the caller's own; hand it back unwrapped.
        if len(group.exceptions) != 1:
            raise
        only_error = group.exceptions[0]
    finally:
        transport._shut_down()
    if only_error is not None:
        # Raised outside the except clause so its __context__ is not
        # replaced by the group.
        raise only_error
