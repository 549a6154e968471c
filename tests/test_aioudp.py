"""The asyncio transport (`swimnode.net.aioudp`) and its security layer
(`AioSecureTransport`), on loopback only: the same limits and counters as the Trio
transport, the same security rules (frames cross between the two layers both
ways), and an encrypted cluster of an aio node and a blocking (Trio) node.

Every wait is bounded; each test runs in its own `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

import swimnode.aio
import swimnode.blocking
from swimnode import Config
from swimnode.net.aiotransport import AioSecureTransport, AioTransport
from swimnode.net.aioudp import AioUdpTransport, TransportError, open_aio_udp_transport
from swimnode.net.keyring import Keyring
from swimnode.net.securelayer import ENCRYPTED_OVERHEAD, SecurityLayer
from swimnode.net.transport import Address, Packet
from swimnode.testing.processes import free_ports

LOCAL: Address = ("127.0.0.1", 0)
WAIT = 5.0  # bound for anything that should happen promptly on loopback
K1, K2 = bytes([1]) * 32, bytes([2]) * 32


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def as_transport(t: AioUdpTransport | AioSecureTransport) -> AioTransport:
    # mypy checks here that both satisfy the AioTransport protocol.
    return t


@asynccontextmanager
async def endpoint(**options: Any) -> AsyncIterator[tuple[AioUdpTransport, asyncio.Queue[Packet]]]:
    """A started transport and the queue its packets land in."""
    received: asyncio.Queue[Packet] = asyncio.Queue()
    async with open_aio_udp_transport(LOCAL, **options) as t:
        t.start(received.put_nowait)
        yield t, received


async def until(check: Callable[[], bool]) -> None:
    # Polling: counters have no events to wait on.
    async with asyncio.timeout(WAIT):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def test_datagrams_and_streams_arrive_with_their_source() -> None:
    async def main() -> None:
        async with endpoint() as (a, _), endpoint() as (b, inbox):
            as_transport(a)
            a.send(b.local_address, b"ping")
            await a.send_reliable(b.local_address, b"x" * 1_000_000)
            first = await asyncio.wait_for(inbox.get(), WAIT)
            second = await asyncio.wait_for(inbox.get(), WAIT)
        assert (first.data, first.source, first.reliable) == (b"ping", a.local_address, False)
        assert (len(second.data), second.reliable) == (1_000_000, True)

    run(main)


def test_limits_and_counters_as_the_trio_transport() -> None:
    async def main() -> None:
        async with (
            endpoint(max_datagram=100) as (a, _),
            endpoint(max_stream_bytes=10, stream_timeout=0.5) as (b, inbox),
        ):
            a.send(b.local_address, b"x" * 101)
            a.send(("not-an-ip", 1), b"x")
            assert a.stats["oversize_dropped"] == 1 and a.stats["send_errors"] == 1
            with pytest.raises(OSError, match="exceeds"):
                await b.send_reliable(a.local_address, b"x" * (16 * 1024 * 1024 + 1))
            assert b.stats["reliable_errors"] == 1
            host, port = b.local_address
            with socket.create_connection((host, port)) as sock:  # over max_stream_bytes
                sock.sendall(struct.pack(">I", 11) + b"x" * 11)
                await until(lambda: b.stats["stream_oversize"] == 1)
            with socket.create_connection((host, port)) as sock:  # ends mid-frame
                sock.sendall(struct.pack(">I", 5) + b"xy")
                sock.shutdown(socket.SHUT_WR)
                await until(lambda: b.stats["stream_errors"] == 1)
            with socket.create_connection((host, port)):  # says nothing
                await until(lambda: b.stats["stream_timeouts"] == 1)
            await until(lambda: b.active_connections == 0)
            assert inbox.empty()

    run(main)


def test_binding_errors_and_options() -> None:
    async def main() -> None:
        async with endpoint() as (a, _):
            with pytest.raises(TransportError, match="cannot bind"):
                async with open_aio_udp_transport(a.local_address):
                    pass
        with pytest.raises(ValueError, match="max_connections"):
            async with open_aio_udp_transport(LOCAL, max_connections=0):
                pass
        (port,) = free_ports(1)
        async with open_aio_udp_transport(("127.0.0.1", port)) as t:
            assert t.local_address == ("127.0.0.1", port)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # released
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))

    run(main)


def test_security_layer_is_the_trio_one() -> None:
    async def main() -> None:
        async with endpoint() as (raw, _), open_aio_udp_transport(LOCAL) as inner:
            secure = AioSecureTransport(inner, keyring=Keyring(K1), label="prod")
            as_transport(secure)
            opened: asyncio.Queue[Packet] = asyncio.Queue()
            secure.start(opened.put_nowait)
            assert secure.overhead == ENCRYPTED_OVERHEAD
            trio_side = SecurityLayer(None, keyring=Keyring(K1), label="prod")
            other_key = SecurityLayer(None, keyring=Keyring(K2), label="prod")
            raw.send(inner.local_address, trio_side.wrap(b"same rules"))
            raw.send(inner.local_address, other_key.wrap(b"refused"))
            raw.send(inner.local_address, b"\x01bare")
            got = await asyncio.wait_for(opened.get(), WAIT)
            assert got.data == b"same rules"
            await until(lambda: secure.dropped == 2)
            assert secure.stats["dropped_auth"] == 1 and secure.stats["dropped_bad_header"] == 1
            # And back: what the asyncio layer seals, the other opens.
            async with endpoint() as (sink, raw_inbox):
                secure.send(sink.local_address, b"sealed")
                frame = await asyncio.wait_for(raw_inbox.get(), WAIT)
            opened_there = trio_side.unwrap(frame)
            assert opened_there is not None and opened_there.data == b"sealed"

    run(main)


def test_encrypted_aio_and_trio_nodes_form_one_cluster() -> None:
    ports = free_ports(2)
    trio_config = Config.local("trio", bind=("127.0.0.1", ports[0]))
    aio_config = Config.local("aio", bind=("127.0.0.1", ports[1]), seeds=(("127.0.0.1", ports[0]),))
    with swimnode.blocking.start_node(trio_config, keyring=Keyring(K1)) as trio_node:

        async def main() -> None:
            async with swimnode.aio.open_node(aio_config, keyring=Keyring(K1)) as node:
                node.set_state("flavour", "aio")
                await until(
                    lambda: (
                        {m.name for m in node.live_members()} == {"trio", "aio"}
                        and any(m.app_state.get("flavour") == "aio" for m in trio_node.members())
                    )
                )

        run(main)


def test_bad_input_is_dropped_and_counted_never_raised() -> None:
    async def main() -> None:
        ports = free_ports(2)
        plain = Config.local("plain", bind=("127.0.0.1", ports[0]))
        keyed = Config.local("keyed", bind=("127.0.0.1", ports[1]))
        rng = random.Random(7)
        async with (
            swimnode.aio.open_node(plain) as a,
            swimnode.aio.open_node(keyed, keyring=Keyring(K1)) as b,
        ):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for size in (0, 1, 37, 200, 1400):
                    for target in (a, b):
                        sock.sendto(rng.randbytes(size), target.address)
            for target in (a, b):  # a torn stream frame, then garbage in a whole one
                with socket.create_connection(target.address) as conn:
                    conn.sendall(b"\x00\x00")
                with socket.create_connection(target.address) as conn:
                    conn.sendall(struct.pack(">I", 50) + rng.randbytes(50))
            await until(lambda: a.stats().get("dropped_malformed", 0) >= 6)
            security = b._node.transport
            assert isinstance(security, AioSecureTransport)
            await until(lambda: security.dropped >= 6)
            assert a.running and b.running
            assert a.local_member.state.label == b.local_member.state.label == "alive"

    run(main)
