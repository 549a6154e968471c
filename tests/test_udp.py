"""Tests for the real UDP/TCP transport, on loopback only."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
from collections.abc import Callable

import pytest
import trio

from swimnode.net.transport import Address, Packet, Transport
from swimnode.net.udp import TransportError, UdpTransport, open_udp_transport

LOCAL: Address = ("127.0.0.1", 0)
WAIT = 5.0  # upper bound for anything that should happen promptly on loopback


def as_transport(t: UdpTransport) -> Transport:
    # mypy checks here that UdpTransport satisfies the Transport protocol.
    return t


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _closed_tcp_port() -> int:
    """A loopback port with (almost certainly) no TCP listener on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def receive(t: UdpTransport) -> Packet:
    with trio.fail_after(WAIT):
        return await t.receive()


async def nothing_arrives(t: UdpTransport, window: float = 0.2) -> bool:
    with trio.move_on_after(window):
        await t.receive()
        return False
    return True


async def wait_until(predicate: Callable[[], bool]) -> None:
    # Polling: the transport has no events to wait on for its counters, and
    # these conditions depend on the kernel delivering packets anyway.
    with trio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def test_datagram_exchange_ipv4() -> None:
    async with open_udp_transport(LOCAL) as a, open_udp_transport(LOCAL) as b:
        ta, tb = as_transport(a), as_transport(b)
        assert ta.local_address[0] == "127.0.0.1"
        assert ta.local_address[1] != 0
        assert ta.local_address != tb.local_address

        await ta.send(tb.local_address, b"ping")
        packet = await receive(b)
        assert packet == Packet(ta.local_address, b"ping", False)

        await tb.send(packet.source, b"ack")
        assert await receive(a) == Packet(tb.local_address, b"ack", False)
        assert not a.stats and not b.stats


async def test_arrival_order_and_empty_datagram() -> None:
    async with open_udp_transport(LOCAL) as a, open_udp_transport(LOCAL) as b:
        messages = [str(i).encode() for i in range(50)] + [b""]
        for m in messages:
            await a.send(b.local_address, m)
        got = [(await receive(b)).data for _ in messages]
        # Loopback UDP does not reorder or lose at this volume.
        assert got == messages


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_datagram_exchange_ipv6(host: str) -> None:
    async with open_udp_transport((host, 0)) as a, open_udp_transport(("::1", 0)) as b:
        assert a.local_address[0] == "::1"
        await a.send(b.local_address, b"hello6")
        assert await receive(b) == Packet(a.local_address, b"hello6", False)
        # Bracketed destination hosts are accepted too.
        await b.send(("[::1]", a.local_address[1]), b"back")
        assert (await receive(a)).data == b"back"
        await a.send_reliable(b.local_address, b"stream6")
        packet = await receive(b)
        assert packet.data == b"stream6"
        assert packet.reliable
        assert packet.source[0] == "::1"


async def test_advertise_overrides_local_address() -> None:
    async with open_udp_transport(LOCAL, advertise=("10.1.2.3", 7946)) as t:
        assert t.local_address == ("10.1.2.3", 7946)


async def test_send_reliable_one_megabyte() -> None:
    payload = random.Random(1).randbytes(1024 * 1024)
    async with open_udp_transport(LOCAL) as a, open_udp_transport(LOCAL) as b:
        with trio.fail_after(WAIT):
            await a.send_reliable(b.local_address, payload)
        packet = await receive(b)
        assert packet.reliable
        assert packet.data == payload
        assert packet.source[0] == "127.0.0.1"
        await wait_until(lambda: b.active_connections == 0)
        assert not b.stats


async def test_reliable_and_datagrams_share_the_queue() -> None:
    async with open_udp_transport(LOCAL) as a, open_udp_transport(LOCAL) as b:
        await a.send(b.local_address, b"one")
        with trio.fail_after(WAIT):
            await a.send_reliable(b.local_address, b"two")
        first, second = await receive(b), await receive(b)
        assert (first.data, first.reliable) == (b"one", False)
        assert (second.data, second.reliable) == (b"two", True)


async def test_send_reliable_to_closed_port_raises() -> None:
    async with open_udp_transport(LOCAL, stream_timeout=2.0) as a:
        with trio.fail_after(WAIT), pytest.raises(OSError):
            await a.send_reliable(("127.0.0.1", _closed_tcp_port()), b"x")
        assert a.stats["reliable_errors"] == 1


async def test_send_reliable_too_large_raises() -> None:
    async with open_udp_transport(LOCAL, max_stream_bytes=10) as a:
        with trio.fail_after(WAIT), pytest.raises(OSError, match="exceeds"):
            await a.send_reliable(a.local_address, b"x" * 11)


async def test_send_reliable_timeout_is_timeout_error() -> None:
    # A listener that never accepts still completes the handshake (backlog),
    # so fill its send path instead: a tiny timeout with a large message.
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        async with open_udp_transport(LOCAL, stream_timeout=0.3) as a:
            with trio.fail_after(WAIT), pytest.raises(TimeoutError):
                await a.send_reliable(listener.getsockname(), b"x" * (16 * 1024 * 1024))
    finally:
        listener.close()


async def test_busy_udp_port_raises_transport_error() -> None:
    async with open_udp_transport(LOCAL) as a:
        with pytest.raises(TransportError) as info:
            async with open_udp_transport(a.local_address):
                pass  # pragma: no cover
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot bind 127.0.0.1:{a.local_address[1]}: ")
    assert "address already in use" in message
    assert isinstance(info.value, OSError)


async def test_busy_tcp_port_raises_transport_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(TransportError, match=r"address already in use \(tcp\)") as info:
            async with open_udp_transport(("127.0.0.1", port)):
                pass  # pragma: no cover
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("bind", "fragment"),
    [
        (("192.0.2.1", 0), "cannot bind 192.0.2.1:0: cannot assign requested address"),
        (("no-such-host.invalid", 0), "cannot bind no-such-host.invalid:0: "),
        (("127.0.0.1", 70000), "cannot bind 127.0.0.1:70000: port out of range"),
    ],
)
async def test_unbindable_address_raises_transport_error(bind: Address, fragment: str) -> None:
    with trio.fail_after(WAIT), pytest.raises(TransportError) as info:
        async with open_udp_transport(bind):
            pass  # pragma: no cover
    assert str(info.value).startswith(fragment)
    assert "\n" not in str(info.value)


class _StealFirstTcpPort(trio.abc.SocketFactory):
    """Makes the first TCP bind after a port-0 UDP bind collide, as if another
    program had grabbed that TCP port in between."""

    def __init__(self) -> None:
        self.udp: list[trio.socket.SocketType] = []
        self.blockers: list[socket.socket] = []
        self.taken: int | None = None

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        sock = trio.socket.from_stdlib_socket(socket.socket(family, type, proto))
        if type == socket.SOCK_DGRAM:
            self.udp.append(sock)
        elif self.taken is None:
            self.taken = self.udp[-1].getsockname()[1]
            # SO_REUSEADDR as the transport uses it, so a connection lingering in
            # TIME_WAIT on that port does not stop us; only a listener does, and
            # then another program already holds the port, which is the point.
            blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.blockers.append(blocker)
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                blocker.bind(("127.0.0.1", self.taken))
                blocker.listen(1)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        return sock


async def test_port_zero_retries_when_tcp_port_is_taken() -> None:
    factory = _StealFirstTcpPort()
    trio.socket.set_custom_socket_factory(factory)
    try:
        async with open_udp_transport(LOCAL) as t:
            assert len(factory.udp) == 2
            assert t.local_address[1] != factory.taken
            async with open_udp_transport(LOCAL) as other:
                await other.send_reliable(t.local_address, b"tcp on the new port")
            assert (await receive(t)).data == b"tcp on the new port"
    finally:
        trio.socket.set_custom_socket_factory(None)
        for blocker in factory.blockers:
            blocker.close()


async def test_oversize_datagram_dropped_and_counted() -> None:
    async with open_udp_transport(LOCAL, max_datagram=100) as a, open_udp_transport(LOCAL) as b:
        await a.send(b.local_address, b"x" * 101)
        assert a.stats["oversize_dropped"] == 1
        assert await nothing_arrives(b)
        await a.send(b.local_address, b"x" * 100)
        assert (await receive(b)).data == b"x" * 100


async def test_send_errors_are_counted_not_raised() -> None:
    async with open_udp_transport(LOCAL) as a:
        await a.send(("localhost", 7946), b"names are not resolved")
        await a.send(("::1", 7946), b"wrong family for an IPv4 socket")
        await a.send(("127.0.0.1", 70000), b"bad port")
        assert a.stats["send_errors"] == 3


async def test_full_send_buffer_drops_the_datagram() -> None:
    class Full:
        def sendto(self, data: bytes, address: object) -> int:
            raise BlockingIOError

    async with open_udp_transport(LOCAL) as a:
        real, a._udp_raw = a._udp_raw, Full()  # type: ignore[assignment]
        try:
            await a.send(("127.0.0.1", 7946), b"no room")
        finally:
            a._udp_raw = real
        assert a.stats["send_buffer_full"] == 1
        assert a.stats["send_errors"] == 0


async def test_silent_client_is_cut_off_and_slot_freed() -> None:
    async with open_udp_transport(LOCAL, stream_timeout=0.5) as t:
        with trio.fail_after(WAIT):
            client = await trio.open_tcp_stream(*t.local_address)
            await wait_until(lambda: t.active_connections == 1)
            start = trio.current_time()
            # The server closing the connection shows up as EOF here.
            assert await client.receive_some() == b""
            elapsed = trio.current_time() - start
            await client.aclose()
        assert 0.3 <= elapsed < 3.0
        await wait_until(lambda: t.active_connections == 0)
        assert t.stats["stream_timeouts"] == 1


async def test_partial_message_times_out() -> None:
    async with open_udp_transport(LOCAL, stream_timeout=0.5) as t:
        with trio.fail_after(WAIT):
            client = await trio.open_tcp_stream(*t.local_address)
            await client.send_all((100).to_bytes(4, "big") + b"only some")
            assert await client.receive_some() == b""
            await client.aclose()
        await wait_until(lambda: t.active_connections == 0)
        assert t.stats["stream_timeouts"] == 1
        assert await nothing_arrives(t)


async def test_connections_over_the_limit_are_refused() -> None:
    async with open_udp_transport(LOCAL, max_connections=2, stream_timeout=3.0) as t:
        with trio.fail_after(WAIT):
            held = [await trio.open_tcp_stream(*t.local_address) for _ in range(2)]
            await wait_until(lambda: t.active_connections == 2)
            extra = await trio.open_tcp_stream(*t.local_address)
            # Closed at once, long before stream_timeout.
            with trio.fail_after(1.0):
                # A reset is just as much a refusal as an orderly close.
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await extra.receive_some() == b""
            await extra.aclose()
            assert t.stats["stream_rejected"] == 1
            assert t.active_connections == 2

            # Finishing a held connection frees its slot for a new message.
            await held[0].send_all((3).to_bytes(4, "big") + b"abc")
            packet = await receive(t)
            assert (packet.data, packet.reliable) == (b"abc", True)
            await wait_until(lambda: t.active_connections == 1)
            async with open_udp_transport(LOCAL) as other:
                await other.send_reliable(t.local_address, b"fits")
            assert (await receive(t)).data == b"fits"
            for stream in held:
                await stream.aclose()
        assert t.stats["stream_rejected"] == 1


async def test_oversize_stream_length_is_refused() -> None:
    async with open_udp_transport(LOCAL, max_stream_bytes=1000) as t:
        with trio.fail_after(WAIT):
            client = await trio.open_tcp_stream(*t.local_address)
            await client.send_all((1001).to_bytes(4, "big"))
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some() == b""
            await client.aclose()
        await wait_until(lambda: t.active_connections == 0)
        assert t.stats["stream_oversize"] == 1
        assert await nothing_arrives(t)


async def test_stream_closed_early_is_counted() -> None:
    async with open_udp_transport(LOCAL) as t:
        with trio.fail_after(WAIT):
            client = await trio.open_tcp_stream(*t.local_address)
            await client.send_all((10).to_bytes(4, "big") + b"abc")
            await client.aclose()
        await wait_until(lambda: t.stats["stream_errors"] == 1)
        await wait_until(lambda: t.active_connections == 0)
        assert await nothing_arrives(t)


async def test_garbage_datagrams_are_delivered_verbatim() -> None:
    rng = random.Random(7)
    blobs = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(100)] + [os.urandom(65507)]
    async with open_udp_transport(LOCAL) as t:
        sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            await sender.bind(("127.0.0.1", 0))
            source = sender.getsockname()
            got: list[Packet] = []
            for blob in blobs:
                await sender.sendto(blob, t.local_address)
                got.append(await receive(t))
        assert [p.data for p in got] == blobs
        assert all(p.source == source and not p.reliable for p in got)
        assert not t.stats
        # Still works afterwards.
        async with open_udp_transport(LOCAL) as other:
            await other.send(t.local_address, b"still alive")
            assert (await receive(t)).data == b"still alive"


async def test_garbage_streams_do_not_break_the_listener() -> None:
    rng = random.Random(3)
    async with open_udp_transport(LOCAL, max_stream_bytes=4096, stream_timeout=0.5) as t:
        with trio.fail_after(WAIT):
            for _ in range(20):
                client = await trio.open_tcp_stream(*t.local_address)
                with contextlib.suppress(trio.BrokenResourceError):
                    await client.send_all(rng.randbytes(rng.randrange(1, 64)))
                await client.aclose()
        await wait_until(lambda: t.active_connections == 0)
        async with open_udp_transport(LOCAL) as other:
            await other.send_reliable(t.local_address, b"ok")
        while (packet := await receive(t)).data != b"ok":
            assert packet.reliable  # garbage that happened to frame correctly


async def test_full_queue_drops_datagrams() -> None:
    async with open_udp_transport(LOCAL) as a, open_udp_transport(LOCAL, receive_queue=4) as b:
        for i in range(10):
            await a.send(b.local_address, bytes([i]))
        await wait_until(lambda: b.stats["receive_overflow"] == 6)
        got = [(await receive(b)).data for _ in range(4)]
        assert got == [bytes([i]) for i in range(4)]


async def test_aclose_stops_receiving_and_releases_the_address() -> None:
    async with open_udp_transport(LOCAL) as t:
        address = t.local_address

        async def waiter() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await t.receive()

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                await t.aclose()
        assert t.closed
        await t.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await t.receive()
        with pytest.raises(trio.ClosedResourceError):
            await t.send(address, b"x")
        # The port can be bound again right away.
        async with open_udp_transport(address) as again:
            assert again.local_address == address


async def test_exception_in_block_is_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with open_udp_transport(LOCAL):
            raise KeyError("mine")


async def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        async with open_udp_transport(LOCAL, max_connections=0):
            pass  # pragma: no cover
