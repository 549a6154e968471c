"""The receive path never waits on a probe (a blocked receive loop is how a SWIM
implementation manufactures false suspicions)."""

import random

import msgpack
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from swimnode import Config
from swimnode.protocol import codec
from swimnode.protocol.core import SwimCore
from swimnode.protocol.messages import Ack, Alive, Message, Nack, Ping, PingReq, Suspect
from swimnode.testing import open_sim_cluster


def packet(*msgs: Message) -> bytes:
    return codec.encode_packet([codec.encode_message(m) for m in msgs])


async def test_pings_are_answered_at_once_while_serving_ping_reqs_for_a_dead_member(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(3, seed=11) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        cluster.crash("n2")
        dead = cluster.address_of("n2")
        helper = cluster.address_of("n1")
        probe = cluster.network.attach(("tester", 1))
        # Many ping-reqs for the dead member, each of which n1 can only finish by
        # waiting out a probe timeout, then an ordinary ping.
        for seq in range(50):
            await probe.send(helper, packet(PingReq(seq, "n2", dead, "tester")))
        sent_at = trio.current_time()
        await probe.send(helper, packet(Ping(1000, "n1", "tester")))
        acked_at = None
        nacks = set()
        with trio.fail_after(5):
            while acked_at is None or len(nacks) < 50:
                pkt = await probe.receive()
                for msg in codec.decode_packet(pkt.data):
                    if isinstance(msg, Ack) and msg.seq == 1000:
                        acked_at = trio.current_time()
                    elif isinstance(msg, Nack):
                        nacks.add(msg.seq)
        # Answered within network latency (1 ms + jitter each way), not after the
        # 500 ms probe timeout the ping-reqs are waiting on.
        assert acked_at - sent_at < 0.01
        assert nacks == set(range(50))


def test_non_minimal_msgpack_is_handled_not_crashed() -> None:
    """A valid but non-minimal encoding (the tag as uint8 `cc 01`, a 16-bit array
    header) is a legal Ping; it must be answered, not crash the receive path."""
    import random

    from swimnode import Config
    from swimnode.protocol.core import SwimCore

    core = SwimCore(Config.lan("a", bind=("a", 1)), now=0.0, rng=random.Random(1))
    core.take_output()
    body = b"\xdc\x00\x04" + b"\xcc\x01" + b"\x05" + b"\xa1a" + b"\xa1b"
    core.handle_packet(1.0, ("b", 1), codec.encode_packet([body]))
    out = core.take_output()
    assert out.streams == []
    [(dest, data)] = out.datagrams
    assert dest == ("b", 1)
    assert codec.decode_packet(data)[0] == Ack(5, "a")
    assert core.stats["received_ping"] == 1


def _core() -> SwimCore:
    core = SwimCore(Config.lan("a", bind=("a", 1)), now=0.0, rng=random.Random(1))
    core.handle_packet(
        0.0, ("b", 1), codec.encode_packet([codec.encode_message(Alive("b", ("b", 1), 3))])
    )
    core.take_output()
    return core


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_or_change_membership(data: bytes) -> None:
    core = _core()
    before = core.members()
    core.handle_packet(1.0, ("x", 9), data)
    core.handle_packet(1.0, ("x", 9), b"\x01" + data, True)
    assert core.members() == before


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(msgpack_values, min_size=1, max_size=5))
def test_wrong_shapes_never_raise_or_change_membership(items: list[object]) -> None:
    core = _core()
    before = core.members()
    # Valid msgpack, arbitrary shapes, including real tags with wrong field types.
    body = [msgpack.packb(x) for x in items]
    body += [msgpack.packb([5, *items]), msgpack.packb([9, True, False, items])]
    core.handle_packet(1.0, ("x", 9), codec.encode_packet(body), True)
    assert core.members() == before


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_bit_flipped_packets_never_raise(position: int, bit: int) -> None:
    core = _core()
    good = codec.encode_packet(
        [
            codec.encode_message(m)
            for m in (Ping(7, "a", "b"), Alive("c", ("c", 1), 2), Suspect("b", 3, "c"))
        ]
    )
    flipped = bytearray(good)
    flipped[position % len(flipped)] ^= 1 << bit
    core.handle_packet(1.0, ("b", 1), bytes(flipped))
