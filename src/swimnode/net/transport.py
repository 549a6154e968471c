"""The transport interface every network backend implements.

The protocol core never touches sockets; the node shell moves bytes between the
core and one `Transport`. Two backends exist: real UDP/TCP and the in-memory
network in `swimnode.testing.network`. Both deliver whole packets (a datagram, or one
message that went over a stream) tagged with where they came from.

Addresses are written and read here too (`format_address`, `parse_address`,
`is_loopback`): the agent's settings, the RPC client and the transports share these
rules, and this module imports nothing heavier than the standard library, so a
short-lived command line client can use them without loading Trio.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

Address = tuple[str, int]
"""A `(host, port)` pair. Hosts are strings so simulated names work too."""

DEFAULT_PORT = 7946
"""Port assumed when an address names only a host."""


class TransportError(OSError):
    """The transport could not be set up, e.g. its address is unavailable.

    `str()` is a one-line message meant for the operator, such as
    ``cannot bind 127.0.0.1:7946: address already in use (udp)``; `errno` is
    set when the operating system reported one.
    """

    message: str

    def __init__(self, message: str, error_number: int | None = None) -> None:
        # A single argument keeps str() free of the "[Errno N]" prefix that
        # OSError adds when given (errno, strerror).
        super().__init__(message)
        self.errno = error_number
        self.message = message

    def __str__(self) -> str:
        return self.message


def format_address(address: Address) -> str:
    """`host:port`, with IPv6 hosts in brackets (`[::1]:7946`)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str, port_text: str, lowest: int = 1) -> int:
    # isdigit() alone would accept non-ASCII digits and int() would accept "+1" or " 1".
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"invalid port {port_text!r} in address {text!r}")
    port = int(port_text)
    if not lowest <= port <= 65535:
        raise ValueError(f"port {port} out of range {lowest}-65535 in address {text!r}")
    return port


def _default(text: str, default_port: int | None) -> int:
    if default_port is None:
        raise ValueError(f"missing port in address {text!r} (HOST:PORT, or [IPv6]:PORT)")
    return default_port


def _check_host(text: str, host: str) -> None:
    if not host:
        raise ValueError(f"missing host in address {text!r}")
    if any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"invalid host {host!r} in address {text!r}")


def parse_address(
    text: str, default_port: int | None = DEFAULT_PORT, *, allow_port_zero: bool = False
) -> Address:
    """Parse ``host:port``, ``[ipv6]:port``, ``[ipv6]``, a bare IPv6 literal or a bare host.

    Surrounding whitespace is ignored. A missing port means `default_port`, or is an
    error if that is None. Port 0 ("any free port") is accepted only with
    `allow_port_zero` (for binding). IPv6 literals are returned without brackets in
    compressed form (``[0:0::1]`` gives ``"::1"``) so equal addresses compare equal.
    Raises ValueError with a one-line message on anything else (empty text, bad port,
    unbracketed IPv6 with a port...).
    """
    lowest = 0 if allow_port_zero else 1
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty address {text!r}")
    if stripped.startswith("["):
        close = stripped.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in address {text!r}")
        literal, rest = stripped[1:close], stripped[close + 1 :]
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise ValueError(f"invalid IPv6 address {literal!r} in {text!r}") from None
        if not rest:
            return host, _default(text, default_port)
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in address {text!r}")
        return host, _parse_port(text, rest[1:], lowest)
    colons = stripped.count(":")
    if colons > 1:
        # Several colons and no brackets: only a bare IPv6 literal makes sense, since
        # "::1:7946" cannot be split into host and port unambiguously.
        try:
            literal = ipaddress.IPv6Address(stripped).compressed
        except ValueError:
            raise ValueError(
                f"invalid address {text!r} (write IPv6 with a port as [addr]:port)"
            ) from None
        return literal, _default(text, default_port)
    if colons == 1:
        host, port_text = stripped.split(":")
        _check_host(text, host)
        return host, _parse_port(text, port_text, lowest)
    _check_host(text, stripped)
    return stripped, _default(text, default_port)


def is_loopback(host: str) -> bool:
    """Whether `host` certainly names this machine only: a loopback IP literal
    (``127.0.0.0/8``, ``::1``, IPv4-mapped ``::ffff:127.x.x.x``; brackets and an
    IPv6 zone are allowed) or ``localhost``. Other names are not resolved and
    count as not loopback, and so does a wildcard such as ``0.0.0.0``."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


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

    @property
    def overhead(self) -> int:
        """Bytes this transport adds to every datagram it sends (framing,
        encryption); the protocol keeps its datagrams this much smaller."""
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


def check_secure_bind(
    bind: str | Address,
    *,
    keyed: bool,
    insecure_plaintext: bool,
    remedy: str = "configure a key file, or allow unencrypted traffic explicitly "
    "with insecure plaintext",
) -> None:
    """Refuse to run in plaintext where other machines can reach the node.

    Secure by default: binding `bind` (a host, or a host and port) beyond loopback
    without keys (`keyed` false) raises `ValueError` (one line, ending with `remedy`,
    which each interface words for its own settings) unless `insecure_plaintext`
    says so explicitly. Loopback needs no keys, so local clusters and tests work out
    of the box.
    """
    host = bind if isinstance(bind, str) else bind[0]
    if keyed or insecure_plaintext or is_loopback(host):
        return
    shown = (host or "all interfaces") if isinstance(bind, str) else format_address(bind)
    raise ValueError(f"refusing to bind {shown} without an encryption key: {remedy}")
