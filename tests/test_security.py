"""SecureTransport: framing, encryption, labels, replay protection, rotation, and a
whole cluster behind it (in-memory network under MockClock; deterministic)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from swimnode import Config, MemberState, Node, open_node
from swimnode.net.keyring import Keyring
from swimnode.net.security import (
    DROP_REASONS,
    ENCRYPTED_OVERHEAD,
    HEADER_ENCRYPTED,
    HEADER_PLAINTEXT,
    SecureTransport,
    check_secure_bind,
)
from swimnode.net.transport import Address, Packet, is_loopback
from swimnode.protocol import codec
from swimnode.protocol.events import EventsLost
from swimnode.protocol.messages import Dead, Suspect
from swimnode.testing import Network

K1 = bytes([1]) * 32
K2 = bytes([2]) * 32
K3 = bytes([3]) * 32
A: Address = ("a", 7946)
B: Address = ("b", 7946)
EVE: Address = ("eve", 7946)
T0 = 1_700_000_000.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    net: Network,
    address: Address,
    keyring: Keyring | None,
    *,
    label: str = "",
    clock: Callable[[], float] | None = None,
    **kw: Any,
) -> SecureTransport:
    """A SecureTransport on a fresh sim endpoint (its clock stands at T0 unless given)."""
    return SecureTransport(
        net.attach(address), keyring=keyring, label=label, clock=clock or Clock(), **kw
    )


def drops(t: SecureTransport) -> dict[str, int]:
    """The non-zero drop counters."""
    return {k: v for k, v in t.stats.items() if v and k in DROP_REASONS}


async def receive_one(t: SecureTransport, timeout: float = 5.0) -> Packet:  # noqa: ASYNC109
    with trio.fail_after(timeout):
        return await t.receive()


async def receives_nothing(t: SecureTransport, wait: float = 1.0) -> bool:
    with trio.move_on_after(wait):
        await t.receive()
        return False
    return True


# ----- round trips ----------------------------------------------------------------------


async def test_encrypted_round_trip_datagram_and_reliable(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    a = make(net, A, ring, label="prod")
    b = make(net, B, ring, label="prod")
    assert a.local_address == A and a.encrypted and a.overhead == ENCRYPTED_OVERHEAD == 37
    big = bytes(range(256)) * 400  # over any datagram budget: reliable only
    await a.send(B, b"hello")
    first = await receive_one(b)
    await a.send_reliable(B, big)
    second = await receive_one(b)
    assert first == Packet(A, b"hello", False)
    assert second == Packet(A, big, True)
    # And back the other way.
    await b.send(A, b"world")
    assert await receive_one(a) == Packet(B, b"world", False)
    assert net.stats.bytes_sent == 5 + len(big) + 5 + 3 * ENCRYPTED_OVERHEAD
    assert drops(a) == drops(b) == {}


async def test_payload_is_not_visible_on_the_wire(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    a = make(net, A, Keyring(K1))
    sniffer = net.attach(B)  # a raw endpoint sees exactly the bytes on the wire
    secret = b"incarnation 7 of node db-1 is dead"
    await a.send(B, secret)
    raw = await sniffer.receive()
    assert raw.data[0] == HEADER_ENCRYPTED
    assert len(raw.data) == len(secret) + ENCRYPTED_OVERHEAD
    assert secret not in raw.data and b"db-1" not in raw.data
    # Two sends of the same payload never look alike (fresh nonce each time).
    await a.send(B, secret)
    assert (await sniffer.receive()).data != raw.data


async def test_plaintext_round_trip_with_label(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    a = make(net, A, None, label="staging")
    b = make(net, B, None, label="staging")
    assert not a.encrypted and a.overhead == 2 + len("staging")
    await a.send(B, b"ping")
    assert await receive_one(b) == Packet(A, b"ping", False)
    await a.send_reliable(B, b"sync")
    assert await receive_one(b) == Packet(A, b"sync", True)
    assert a.wrap(b"x") == bytes([HEADER_PLAINTEXT, 7]) + b"staging" + b"x"


# ----- packets that must be dropped ---------------------------------------------------------


async def test_wrong_key_is_dropped_as_auth(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    a = make(net, A, Keyring(K1))
    b = make(net, B, Keyring(K2))
    await a.send(B, b"x")
    await a.send_reliable(B, b"y")
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_auth": 2}


async def test_key_mismatch_between_modes(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    keyed = make(net, A, Keyring(K1))
    plain = make(net, B, None)
    await plain.send(A, b"no key")
    await keyed.send(B, b"with key")
    assert await receives_nothing(keyed)
    assert await receives_nothing(plain)
    assert drops(keyed) == {"dropped_plaintext": 1}
    assert drops(plain) == {"dropped_encrypted": 1}


async def test_other_label_is_dropped(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    # Encrypted: the label is associated data, so it fails like a wrong key.
    a = make(net, A, ring, label="prod")
    b = make(net, B, ring, label="staging")
    await a.send(B, b"x")
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_auth": 1}
    # Plaintext: told apart by the label in the clear, including "no label".
    c = make(net, ("c", 1), None, label="prod")
    d = make(net, ("d", 1), None, label="")
    e = make(net, ("e", 1), None, label="staging")
    await c.send(("e", 1), b"x")
    await d.send(("e", 1), b"x")
    assert await receives_nothing(e)
    assert drops(e) == {"dropped_label": 2}


async def test_malformed_and_oversize_frames(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    keyed = make(net, A, Keyring(K1), max_packet=100)
    plain = make(net, B, None, label="lab", max_packet=100)
    raw = net.attach(EVE)
    bare = codec.encode_packet([])  # a node without the layer: starts with 0x01
    for junk in [
        b"",
        bare,
        b"\x12",
        b"\x11short",
        bytes([HEADER_PLAINTEXT]),
        bytes([HEADER_PLAINTEXT, 9]) + b"lab",
    ]:
        await raw.send(A, junk)
        await raw.send(B, junk)
    await raw.send(A, make(net, ("big", 1), Keyring(K1)).wrap(b"x" * 101))
    await raw.send(B, bytes([HEADER_PLAINTEXT, 3]) + b"lab" + b"x" * 101)
    await raw.send(B, bytes([HEADER_PLAINTEXT, 3]) + b"lab" + b"x" * 1000)
    assert await receives_nothing(keyed)
    assert await receives_nothing(plain)
    assert drops(keyed) == {"dropped_bad_header": 4, "dropped_plaintext": 2, "dropped_oversize": 1}
    assert drops(plain) == {"dropped_bad_header": 5, "dropped_encrypted": 1, "dropped_oversize": 2}


async def test_oversize_sends(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    a = make(net, A, Keyring(K1), max_packet=10)
    b = net.attach(B)
    await a.send(B, b"x" * 11)
    assert a.stats["send_oversize"] == 1
    with pytest.raises(OSError) as info:
        await a.send_reliable(B, b"x" * 11)
    assert info.value.errno == errno.EMSGSIZE
    assert b.pending == 0 and net.stats.sent == 0


def test_invalid_options() -> None:
    net = Network()
    inner = net.attach(A)
    with pytest.raises(ValueError, match="label"):
        SecureTransport(inner, keyring=None, label="x" * 256)
    with pytest.raises(ValueError, match="replay_window"):
        SecureTransport(inner, keyring=None, replay_window=0)
    with pytest.raises(ValueError, match="max_packet"):
        SecureTransport(inner, keyring=None, max_packet=-1)
    with pytest.raises(ValueError, match="replay_cache_size"):
        SecureTransport(inner, keyring=None, replay_cache_size=0)


def test_repr_shows_no_key() -> None:
    t = SecureTransport(Network().attach(A), keyring=Keyring(K1, [K2]), label="prod")
    text = repr(t)
    assert "prod" in text and "Keyring(primary=" in text
    assert K1.hex() not in text and repr(K1) not in text and repr(K2) not in text


# ----- replay protection -----------------------------------------------------------------


async def test_exact_replay_is_dropped(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    a = make(net, A, ring)
    b = make(net, B, ring)
    sniffer = net.attach(EVE)
    # Capture a genuine frame on its way (a sends it to the sniffer) ...
    await a.send(EVE, b"dead db-1 at incarnation 3")
    frame = (await sniffer.receive()).data
    # ... and deliver it to b twice through the raw network.
    await sniffer.send(B, frame)
    assert (await receive_one(b)).data == b"dead db-1 at incarnation 3"
    await sniffer.send(B, frame)
    await sniffer.send_reliable(B, frame)  # over the stream too
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_replay": 2}


async def test_network_duplicates_are_dropped_as_replays(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=1, duplicate=1.0)
    ring = Keyring(K1)
    a, b = make(net, A, ring), make(net, B, ring)
    await a.send(B, b"once")
    assert (await receive_one(b)).data == b"once"
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_replay": 1}


async def test_stale_and_future_timestamps(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    sender_clock, receiver_clock = Clock(), Clock()
    a = make(net, A, ring, clock=sender_clock)
    b = make(net, B, ring, clock=receiver_clock, replay_window=60.0)
    for offset in (-60.5, +60.5, -3600.0):
        sender_clock.now = T0 + offset
        await a.send(B, b"old or early")
    for offset in (-59.0, +59.0):  # skew inside the window is fine
        sender_clock.now = T0 + offset
        await a.send(B, b"ok")
    assert (await receive_one(b)).data == b"ok"
    assert (await receive_one(b)).data == b"ok"
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_stale": 3}


async def test_replay_after_the_window_is_stale_and_cache_is_pruned(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    clock = Clock()
    a = make(net, A, ring, clock=clock)
    b = make(net, B, ring, clock=clock, replay_window=10.0)
    raw = net.attach(EVE)
    frames = [a.wrap(f"m{i}".encode()) for i in range(5)]
    for frame in frames:
        await raw.send(B, frame)
    for _ in frames:
        await receive_one(b)
    assert b.replay_cache_len == 5
    clock.now += 10.5
    await raw.send(B, frames[0])
    assert await receives_nothing(b)
    await raw.send(B, a.wrap(b"fresh"))  # accepting it prunes the expired nonces
    assert (await receive_one(b)).data == b"fresh"
    assert b.replay_cache_len == 1
    assert drops(b) == {"dropped_stale": 1}


async def test_full_replay_cache_narrows_the_window_instead_of_forgetting(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=1)
    ring = Keyring(K1)
    sender_clock = Clock()
    a = make(net, A, ring, clock=sender_clock)
    b = make(net, B, ring, replay_cache_size=3)
    raw = net.attach(EVE)
    frames = []
    for i in range(4):
        sender_clock.now = T0 - 10 + i
        frames.append(a.wrap(f"m{i}".encode()))
    for frame in frames:
        await raw.send(B, frame)
        await receive_one(b)
    # The 4th accepted frame evicted the oldest nonce: its replay must still fail.
    assert b.replay_cache_len == 3 and b.stats["replay_cache_evictions"] == 1
    for frame in frames:
        await raw.send(B, frame)
    sender_clock.now = T0 - 10  # as old as the evicted one, new nonce: refused too
    await raw.send(B, a.wrap(b"late"))
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_stale": 2, "dropped_replay": 3}
    sender_clock.now = T0
    await raw.send(B, a.wrap(b"new"))
    assert (await receive_one(b)).data == b"new"


# ----- key rotation ----------------------------------------------------------------------


async def test_rotation_install_use_remove(mock_clock: trio.testing.MockClock) -> None:
    net = Network(seed=1)
    ring_a, ring_b = Keyring(K1), Keyring(K1)
    a, b = make(net, A, ring_a), make(net, B, ring_b)
    old_frame = a.wrap(b"under K1")

    # 1. install everywhere: nothing changes on the wire yet.
    ring_a.install(K2)
    ring_b.install(K2)
    # 2. use, one member at a time: the other still reads it, and is still read.
    ring_a.use(K2)
    await a.send(B, b"a on K2")
    assert (await receive_one(b)).data == b"a on K2"
    await b.send(A, b"b on K1")
    assert (await receive_one(a)).data == b"b on K1"
    ring_b.use(K2)
    # 3. remove the old key everywhere: K1 traffic is now refused.
    assert ring_a.remove(K1) and ring_b.remove(K1)
    await b.send(A, b"b on K2")
    assert (await receive_one(a)).data == b"b on K2"
    await net.attach(EVE).send(A, old_frame)
    assert await receives_nothing(a)
    assert drops(a) == {"dropped_auth": 1}


async def test_switching_primary_before_peers_install_breaks_them(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Why the procedure says "install everywhere" first.
    net = Network(seed=1)
    ring_a = Keyring(K1, [K3])
    a, b = make(net, A, ring_a), make(net, B, Keyring(K1))
    ring_a.use(K3)
    await a.send(B, b"too early")
    assert await receives_nothing(b)
    assert drops(b) == {"dropped_auth": 1}


# ----- hypothesis: the receive path never raises -------------------------------------------------


_KEYED = SecureTransport(
    Network().attach(A), keyring=Keyring(K1, [K2]), label="prod", clock=Clock()
)
_PLAIN = SecureTransport(Network().attach(A), keyring=None, label="prod", clock=Clock())
_SENDER = SecureTransport(Network().attach(B), keyring=Keyring(K2), label="prod", clock=Clock())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=300), header=st.sampled_from([None, 0x10, 0x11]))
def test_arbitrary_bytes_are_dropped_and_counted(data: bytes, header: int | None) -> None:
    if header is not None:
        data = bytes([header]) + data  # reach past the header check more often
    for t in (_KEYED, _PLAIN):
        before = t.dropped
        opened = t.unwrap(Packet(EVE, data, False))
        if opened is None:
            assert t.dropped == before + 1
        else:
            # Only a well-formed plaintext frame with our label gets through.
            assert t is _PLAIN and data[:6] == b"\x10\x04prod"
            assert opened.data == data[6:] and t.dropped == before


@settings(max_examples=300, deadline=None, derandomize=True)
@given(payload=st.binary(max_size=200), bit=st.integers(min_value=0), reliable=st.booleans())
def test_bit_flipped_frames_are_dropped_and_counted(
    payload: bytes, bit: int, reliable: bool
) -> None:
    frame = bytearray(_SENDER.wrap(payload))
    bit %= len(frame) * 8
    frame[bit // 8] ^= 1 << (bit % 8)
    before = _KEYED.dropped
    assert _KEYED.unwrap(Packet(B, bytes(frame), reliable)) is None
    assert _KEYED.dropped == before + 1
    # The untouched frame would have passed (so the flip is what was caught).
    assert _KEYED.unwrap(Packet(B, _SENDER.wrap(payload), reliable)) is not None


@settings(max_examples=40, deadline=None, derandomize=True)
@given(junk=st.lists(st.binary(max_size=80), max_size=8))
def test_receive_skips_junk_and_returns_the_next_good_packet(junk: list[bytes]) -> None:
    async def main() -> None:
        net = Network(seed=2)
        ring = Keyring(K1)
        a, b = make(net, A, ring), make(net, B, ring)
        raw = net.attach(EVE)
        for item in junk:
            await raw.send(B, item)
        # Sent later than the jitter (0.5 ms) could make up, so it arrives last.
        await trio.sleep(0.001)
        await a.send(B, b"good")
        assert await receive_one(b) == Packet(A, b"good", False)
        assert b.dropped == len(junk)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# ----- binding rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "[::1]",
        "::1%lo",
        "localhost",
        "LOCALHOST.",
        "::ffff:127.0.0.1",
    ],
)
def test_is_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "",
        "10.0.0.5",
        "192.168.1.1",
        "example.com",
        "localhost.example.com",
        "::ffff:10.0.0.1",
    ],
)
def test_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_check_secure_bind() -> None:
    check_secure_bind("127.0.0.1", None, False)
    check_secure_bind("0.0.0.0", Keyring(K1), False)
    check_secure_bind("0.0.0.0", None, True)
    with pytest.raises(ValueError) as info:
        check_secure_bind("0.0.0.0", None, False)
    assert "refusing to bind 0.0.0.0" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="all interfaces"):
        check_secure_bind("", None, False)


# ----- a whole cluster behind SecureTransport ------------------------------------------------


@dataclass
class Running:
    node: Node
    transport: SecureTransport
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(event kind, member name) for every event this node saw, in order."""

    def names(self) -> set[str]:
        return {m.name for m in self.node.members()}

    def saw(self, *kinds: str) -> list[tuple[str, str]]:
        return [e for e in self.seen if e[0] in kinds]


def address_of(name: str) -> Address:
    return (name, 7946)


class SecureCluster:
    """Nodes on one in-memory network, each behind its own SecureTransport."""

    def __init__(self, nursery: trio.Nursery, net: Network) -> None:
        self.nursery = nursery
        self.net = net
        self.nodes: dict[str, Running] = {}

    async def start(
        self, name: str, keyring: Keyring | None, *, label: str = "prod", seed: int = 0
    ) -> Running:
        config = Config.lan(
            name,
            bind=address_of(name),
            seed=seed,
            seeds=() if name == "n0" else (address_of("n0"),),
        )
        transport = SecureTransport(
            self.net.attach(config.bind), keyring=keyring, label=label, clock=trio.current_time
        )
        running: Running = await self.nursery.start(self._run, config, transport)
        self.nodes[name] = running
        return running

    async def _run(
        self, config: Config, transport: SecureTransport, *, task_status: trio.TaskStatus[Running]
    ) -> None:
        async with open_node(config, transport=transport) as node:
            running = Running(node, transport)
            events = node.events()
            task_status.started(running)
            async for event in events:
                if not isinstance(event, EventsLost):
                    running.seen.append((event.kind, event.member.name))

    def converged(self, names: list[str]) -> bool:
        want = set(names)
        for name in names:
            members = self.nodes[name].node.members()
            if {m.name for m in members if m.state is MemberState.ALIVE} != want:
                return False
        return True

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        for _ in range(round(timeout / 0.1)):
            if predicate():
                return True
            await trio.sleep(0.1)
        return predicate()


def forged_accusations(cluster: SecureCluster) -> bytes:
    """A packet claiming n1 is suspect and n2 dead at their current incarnations,
    in n3's name: what an attacker would send to make the cluster evict members."""
    view = {m.name: m for m in cluster.nodes["n0"].node.members()}
    return codec.encode_packet(
        [
            codec.encode_message(Suspect("n1", view["n1"].incarnation, "n3")),
            codec.encode_message(Dead("n2", view["n2"].incarnation, "n3")),
        ]
    )


GOOD = ["n0", "n1", "n2", "n3"]


@pytest.mark.parametrize(
    ("intruder", "reason"),
    [
        ("wrong key", "dropped_auth"),
        ("other label", "dropped_auth"),
        ("no key", "dropped_plaintext"),
    ],
)
async def test_cluster_converges_and_keeps_an_intruder_out(
    mock_clock: trio.testing.MockClock, intruder: str, reason: str
) -> None:
    net = Network(seed=11)
    async with trio.open_nursery() as nursery:
        cluster = SecureCluster(nursery, net)
        for i, name in enumerate(GOOD):
            # Separate Keyring objects holding the same key, as on separate hosts.
            await cluster.start(name, Keyring(K1), seed=i)
            await trio.sleep(0.01)
        assert await cluster.wait_for(lambda: cluster.converged(GOOD), timeout=20)

        keyring, label = {
            "wrong key": (Keyring(K2), "prod"),
            "other label": (Keyring(K1), "staging"),
            "no key": (None, "prod"),
        }[intruder]
        eve = await cluster.start("eve", keyring, label=label, seed=99)
        await trio.sleep(30)  # long enough for many join attempts and protocol periods
        # The intruder cannot join: nobody lists it, it lists nobody.
        assert eve.names() == {"eve"}
        for name in GOOD:
            assert cluster.nodes[name].names() == set(GOOD)
        assert cluster.nodes["n0"].transport.stats[reason] > 0  # its joins, refused

        # Nor can it make anyone suspect anyone, even with well-formed accusations.
        forged = forged_accusations(cluster)
        for name in GOOD:
            for _ in range(5):
                await eve.transport.send(address_of(name), forged)
                await eve.transport.send_reliable(address_of(name), forged)
        await trio.sleep(20)
        for name in GOOD:
            good = cluster.nodes[name]
            assert good.saw("suspected", "failed", "left") == [], name
            assert ("joined", "eve") not in good.seen
            assert good.transport.stats[reason] >= 10
            assert good.transport.stats["dropped_replay"] == 0
        assert cluster.converged(GOOD)

        # Control: the very same packet under the cluster's key does harm, so the
        # assertions above are meaningful.
        insider = SecureTransport(
            net.attach(("mallory", 7946)),
            keyring=Keyring(K1),
            label="prod",
            clock=trio.current_time,
        )
        await insider.send(address_of("n0"), forged_accusations(cluster))
        await trio.sleep(1)
        assert ("failed", "n2") in cluster.nodes["n0"].seen
        nursery.cancel_scope.cancel()
