"""What both real-network transports do the same way, with no event loop:
binding UDP and TCP on one port, the options' checks, sending a datagram through a
non-blocking socket, reading and limiting stream messages, and counting what goes
wrong under the same names.

`swimnode.net.udp` (Trio) and `swimnode.net.aioudp` (asyncio) add only how they
wait. Nothing here imports either loop, so an asyncio program loads no Trio.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import math
import os
import socket as stdlib_socket
import sys
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from swimnode import counters
from swimnode.net import framing
from swimnode.net.transport import Address, TransportError, format_address

__all__ = [
    "MAX_UDP_PAYLOAD",
    "BindableSocket",
    "bind_host_from",
    "bind_pair",
    "bind_resolve_error",
    "check_bind_port",
    "check_options",
    "check_stream_size",
    "ip_literal",
    "literal_bind_host",
    "read_message",
    "send_datagram",
    "stream_timed_out",
]

# Named as before the split, so a logging filter on the UDP transport still applies.
logger = logging.getLogger("swimnode.net.udp")

MAX_UDP_PAYLOAD = 65527
"""Largest UDP payload any IP family can carry (IPv6 without jumbograms)."""

_PORT_ZERO_ATTEMPTS = 20
_LISTEN_BACKLOG = 128


@lru_cache(maxsize=4096)
def ip_literal(host: str) -> str | None:
    """`host` as a bare IP literal (brackets removed), or None if it is a name.

    Cached because it runs on every send to the same few peers.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


def _describe(exc: BaseException) -> str:
    if isinstance(exc, stdlib_socket.gaierror):
        text = exc.strerror or str(exc)
    elif isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def send_datagram(
    sock: stdlib_socket.socket,
    dest: Address,
    data: bytes,
    max_datagram: int,
    stats: collections.Counter[str],
) -> None:
    """Send one datagram through the non-blocking `sock` without waiting, dropping
    and counting in `stats` what cannot go (see `UdpTransport.send`); both
    transports send this way."""
    if len(data) > max_datagram:
        stats[counters.OVERSIZE_DROPPED] += 1
        return
    host = ip_literal(dest[0]) if isinstance(dest[0], str) else None
    if host is None:
        stats[counters.SEND_ERRORS] += 1
        logger.debug("dropping datagram to %r: host is not an IP literal", dest)
        return
    try:
        sock.sendto(data, (host, dest[1]))
    except BlockingIOError:
        stats[counters.SEND_BUFFER_FULL] += 1
    # ValueError/OverflowError/TypeError: a malformed port, which may have
    # come from a peer's gossip and so must not crash the caller.
    except (OSError, ValueError, OverflowError, TypeError) as exc:
        stats[counters.SEND_ERRORS] += 1
        logger.debug("sending datagram to %r failed: %s", dest, exc)


def check_stream_size(data: bytes, limit: int, stats: collections.Counter[str]) -> None:
    """Raise `OSError` (``EMSGSIZE``), counted as ``reliable_errors``, for a stream
    message over `limit` bytes."""
    if len(data) > limit:
        stats[counters.RELIABLE_ERRORS] += 1
        raise OSError(
            errno.EMSGSIZE, f"message of {len(data)} bytes exceeds the {limit} byte limit"
        )


def stream_timed_out(
    dest: Address, timeout: float, stats: collections.Counter[str]
) -> TimeoutError:
    """Count a stream send that ran out of time; the `TimeoutError` to raise."""
    stats[counters.RELIABLE_ERRORS] += 1
    return TimeoutError(
        errno.ETIMEDOUT, f"sending to {format_address(dest)} timed out after {timeout} s"
    )


async def read_message(
    frame: Awaitable[bytes | None], stats: collections.Counter[str]
) -> bytes | None:
    """The message `frame` (a framing reader's call) reads, or None, counted in
    `stats`, if it is refused or the stream ends early; both transports read
    incoming streams this way."""
    try:
        data = await frame
    except framing.FrameTooLarge:
        stats[counters.STREAM_OVERSIZE] += 1
        return None
    except framing.FrameTruncated:
        data = None
    if data is None:
        stats[counters.STREAM_ERRORS] += 1
    return data


def check_options(
    max_datagram: int,
    max_stream_bytes: int,
    max_connections: int,
    stream_timeout: float,
    receive_queue: int,
) -> None:
    """Raise `ValueError` for an option out of range (see `open_udp_transport`)."""
    if not 0 <= max_datagram <= MAX_UDP_PAYLOAD:
        raise ValueError(f"max_datagram must be in [0, {MAX_UDP_PAYLOAD}], got {max_datagram!r}")
    if not 0 <= max_stream_bytes <= framing.MAX_BODY:
        raise ValueError(f"max_stream_bytes must fit in 32 bits, got {max_stream_bytes!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
    if not (stream_timeout > 0 and math.isfinite(stream_timeout)):
        raise ValueError(f"stream_timeout must be a positive number, got {stream_timeout!r}")
    if receive_queue < 1:
        raise ValueError(f"receive_queue must be >= 1, got {receive_queue!r}")


def check_bind_port(bind: Address) -> None:
    """Raise `TransportError` for a port that cannot be bound."""
    port = bind[1]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise TransportError(f"cannot bind {format_address(bind)}: port out of range")


def literal_bind_host(bind: Address) -> tuple[stdlib_socket.AddressFamily, str] | None:
    """The family and IP literal to bind for `bind`, or None if its host is a name
    to resolve first (`bind_host_from`); an empty host means IPv4's wildcard."""
    host = bind[0]
    literal = ip_literal(host) if host else "0.0.0.0"
    if literal is None:
        return None
    version = ipaddress.ip_address(literal).version
    return (stdlib_socket.AF_INET6 if version == 6 else stdlib_socket.AF_INET), literal


def bind_resolve_error(bind: Address, exc: OSError) -> TransportError:
    """The error for a bind host that does not resolve."""
    return TransportError(f"cannot bind {format_address(bind)}: {_describe(exc)}", exc.errno)


def bind_host_from(
    bind: Address, infos: list[tuple[Any, Any, Any, Any, Any]]
) -> tuple[stdlib_socket.AddressFamily, str]:
    """The first IPv4 or IPv6 address among `getaddrinfo` results for `bind`."""
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            return family, str(sockaddr[0])
    raise TransportError(f"cannot bind {format_address(bind)}: no IPv4 or IPv6 address")


class BindableSocket(Protocol):
    """What `bind_pair` needs of a socket: Trio's, or `swimnode.net.aioudp`'s plain
    one (binding an IP literal never waits, but Trio's `bind` is awaited)."""

    async def bind(self, address: tuple[str, int]) -> None: ...
    def getsockname(self) -> Any: ...
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...
    def listen(self, backlog: int, /) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=BindableSocket)


async def bind_pair(
    bind: Address,
    family: stdlib_socket.AddressFamily,
    bind_host: str,
    make: Callable[[stdlib_socket.AddressFamily, stdlib_socket.SocketKind], S],
) -> tuple[S, S, Address]:
    """Bind UDP, then TCP on the same port of the literal `bind_host`, with sockets
    from `make`; returns both (TCP listening) and the bound address. Both transports
    bind this way, so they take ports and report errors alike."""
    port = bind[1]
    # With port 0 the OS picks a port free for UDP only; TCP may already be
    # using it, in which case we simply try another.
    attempts = _PORT_ZERO_ATTEMPTS if port == 0 else 1
    for attempt in range(attempts):
        udp = make(family, stdlib_socket.SOCK_DGRAM)
        try:
            await udp.bind((bind_host, port))
        except OSError as exc:
            udp.close()
            raise TransportError(
                f"cannot bind {format_address(bind)}: {_describe(exc)} (udp)", exc.errno
            ) from exc
        bound_host, bound_port = udp.getsockname()[:2]
        tcp = make(family, stdlib_socket.SOCK_STREAM)
        try:
            # Lets a restarted node reuse its port while old connections sit
            # in TIME_WAIT. On Windows the option means something else (it
            # allows stealing a port in use), so it is left off there.
            if sys.platform != "win32":
                tcp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            await tcp.bind((bind_host, bound_port))
            tcp.listen(_LISTEN_BACKLOG)
        except OSError as exc:
            tcp.close()
            udp.close()
            if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                continue
            shown = (bind_host, bound_port) if port == 0 else bind
            raise TransportError(
                f"cannot bind {format_address(shown)}: {_describe(exc)} (tcp)", exc.errno
            ) from exc
        return udp, tcp, (str(bound_host), int(bound_port))
    raise AssertionError("unreachable")  # pragma: no cover
