"""Wire format: round trips, framing and strict decoding."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swimnode.protocol.codec import (
    MAX_MESSAGES_PER_PACKET,
    PROTOCOL_VERSION,
    DecodeError,
    decode_message,
    decode_packet,
    encode_message,
    encode_packet,
    packet_overhead,
)
from swimnode.protocol.member import MemberState
from swimnode.protocol.messages import (
    Ack,
    Alive,
    Dead,
    Left,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
    Sync,
)

U64 = 2**64 - 1

SAMPLES: list[Message] = [
    Ping(0, "node-b", "node-a"),
    Ping(U64, "b", "a"),
    Ack(17, "node-b"),
    Nack(4_000_000_000, "helper"),
    PingReq(9, "target", ("10.1.2.3", 7946), "node-a"),
    PingReq(10, "target", ("fe80::1ff:fe23:4567:890a%eth0", 65535), "node-a"),
    PingReq(11, "t", ("::1", 0), "a"),
    Alive("node-c", ("192.168.0.7", 7946), 3),
    Alive("ünïcødé-名前", ("2001:db8::7", 1), U64),
    Suspect("node-c", 3, "node-a"),
    Dead("node-c", 4, "node-b"),
    Left("node-d", 0),
    Sync(False, True, ()),
    Sync(True, False, (MemberRecord("a", ("h", 1), 0, MemberState.ALIVE),)),
]


def packet(*msgs: Message) -> bytes:
    return encode_packet([encode_message(m) for m in msgs])


def raw_packet(obj: Any) -> bytes:
    """A packet of the current version whose body is `obj` packed as msgpack."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return bytes([PROTOCOL_VERSION]) + body


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_each_message(msg: Message) -> None:
    assert decode_packet(packet(msg)) == [msg]


def test_round_trip_sync_with_many_records() -> None:
    states = list(MemberState)
    records = tuple(
        MemberRecord(
            f"node-{i}",
            (f"10.0.{i // 256}.{i % 256}" if i % 3 else f"fd00::{i:x}", 1024 + i),
            i * 7,
            states[i % 4],
        )
        for i in range(2000)
    )
    msg = Sync(False, False, records)
    [decoded] = decode_packet(packet(msg))
    assert decoded == msg
    assert isinstance(decoded, Sync)
    assert decoded.members[1234].state is states[1234 % 4]
    assert len(decoded.members) == 2000


def test_compound_packet_keeps_order() -> None:
    assert decode_packet(packet(*SAMPLES)) == SAMPLES


def test_packet_starts_with_version_byte() -> None:
    data = packet(Ack(1, "x"))
    assert data[0] == 1 == PROTOCOL_VERSION


@pytest.mark.parametrize("n", [1, 15, 16, 300])
def test_packet_overhead_matches_framing(n: int) -> None:
    parts = [encode_message(Ack(i, f"n{i}")) for i in range(n)]
    data = encode_packet(parts)
    assert len(data) - sum(len(p) for p in parts) == packet_overhead(n)
    expected = {1: 2, 15: 2, 16: 4, 300: 4}[n]  # version byte + fixarray / array16 header
    assert packet_overhead(n) == expected
    assert decode_packet(data) == [Ack(i, f"n{i}") for i in range(n)]


def test_encode_packet_rejects_too_many_parts() -> None:
    with pytest.raises(ValueError):
        encode_packet([b"\xc0"] * 65536)


def test_encode_message_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message("not a message")  # type: ignore[arg-type]


# ----- strict decoding --------------------------------------------------------------


def test_empty_and_header_only() -> None:
    for data in (b"", bytes([PROTOCOL_VERSION]), raw_packet([])):
        with pytest.raises(DecodeError):
            decode_packet(data)


@pytest.mark.parametrize("version", [0, 2, 0x90, 255])
def test_wrong_version(version: int) -> None:
    good = packet(Ack(1, "a"))
    with pytest.raises(DecodeError):
        decode_packet(bytes([version]) + good[1:])


def test_too_large_packet() -> None:
    with pytest.raises(DecodeError):
        decode_packet(bytes([PROTOCOL_VERSION]) + bytes(64 * 1024 * 1024))


def test_too_many_messages() -> None:
    ok = [encode_message(Ack(1, "a"))] * MAX_MESSAGES_PER_PACKET
    assert len(decode_packet(encode_packet(ok))) == MAX_MESSAGES_PER_PACKET
    with pytest.raises(DecodeError):
        decode_packet(encode_packet([*ok, encode_message(Ack(1, "a"))]))


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_packet(packet(Ack(1, "a")) + b"\x00")


BAD_BODIES: list[Any] = [
    # not a non-empty array of arrays
    5,
    "hello",
    None,
    True,
    [5],
    [None],
    [[]],
    [["x"]],
    # unknown / mistyped tags
    [[0, 1, "a"]],
    [[10, 1, "a"]],
    [[99, 1, "a"]],
    [[-1, 1, "a"]],
    [["1", 1, "a", "b"]],
    [[True, 1, "a", "b"]],
    [[1.0, 1, "a", "b"]],
    # wrong arity
    [[1, 1, "a"]],
    [[1, 1, "a", "b", "c"]],
    [[2, 1]],
    [[2, 1, "a", "b"]],
    [[5, "a", "h", 1]],
    [[8, "a"]],
    [[9, False, True]],
    # negative integers
    [[1, -1, "a", "b"]],
    [[2, -5, "a"]],
    [[5, "a", "h", 1, -1]],
    [[5, "a", "h", -1, 0]],
    [[7, "a", -(2**63), "b"]],
    # out-of-range integers
    [[5, "a", "h", 65536, 0]],
    [[5, "a", "h", U64, 0]],
    [[4, 1, "t", "h", 70000, "a"]],
    # wrong types
    [[1, 1.5, "a", "b"]],
    [[1, True, "a", "b"]],
    [[1, "1", "a", "b"]],
    [[1, 1, 5, "b"]],
    [[1, 1, "a", None]],
    [[2, None, "a"]],
    [[5, "a", 5, 1, 0]],
    [[5, "a", "h", "1", 0]],
    [[5, "a", "h", 1, 0.0]],
    [[5, "a", "h", True, 0]],
    [[8, "a", False]],
    # empty or oversized names / hosts
    [[1, 1, "", "b"]],
    [[2, 1, ""]],
    [[8, "x" * 256, 1]],
    [[8, "é" * 128, 1]],
    [[5, "a", "", 1, 0]],
    [[5, "a", "h" * 256, 1, 0]],
    # sync: bad flags, bad member list, bad records, bad states
    [[9, 1, True, []]],
    [[9, False, 0, []]],
    [[9, False, True, None]],
    [[9, False, True, 5]],
    [[9, False, True, [["a", "h", 1, 0]]]],
    [[9, False, True, [["a", "h", 1, 0, 0, 0]]]],
    [[9, False, True, [["a", "h", 1, 0, 4]]]],
    [[9, False, True, [["a", "h", 1, 0, -1]]]],
    [[9, False, True, [["a", "h", 1, 0, True]]]],
    [[9, False, True, [["a", "h", 1, -1, 0]]]],
    [[9, False, True, [["", "h", 1, 0, 0]]]],
    [[9, False, True, ["a"]]],
    # one good message followed by one bad one rejects the whole packet
    [[2, 1, "a"], [2, -1, "a"]],
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_invalid_structure_raises_decode_error(body: Any) -> None:
    with pytest.raises(DecodeError):
        decode_packet(raw_packet(body))


def test_uint64_limits() -> None:
    assert decode_packet(raw_packet([[2, U64, "a"]])) == [Ack(U64, "a")]
    # Anything beyond u64 cannot be packed by msgpack; a u64 port is rejected.
    with pytest.raises(DecodeError):
        decode_packet(raw_packet([[5, "a", "h", U64, 0]]))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # never-used byte
        b"\x91\xc4\x01x",  # bin payload
        b"\x91\x81\x01\x02",  # map
        b"\x91\xd4\x01\x00",  # ext
        b"\x91\x93\x02\x01\xa3\xff\xfe\xfd",  # invalid UTF-8 string
        b"\xdd" + struct.pack(">I", 2**32 - 1),  # array header claiming 4 billion items
        b"\x91" * 5000,  # very deep nesting
        b"\x91\x93\x02\xcb" + struct.pack(">d", 1.0) + b"\xa1a",  # float seq
    ],
)
def test_hostile_msgpack(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(bytes([PROTOCOL_VERSION]) + raw)


# ----- fuzzing ------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
hosts = st.text(min_size=1, max_size=40)
ports = st.integers(0, 65535)
uints = st.integers(0, U64)
addresses = st.tuples(hosts, ports)
records = st.builds(MemberRecord, names, addresses, uints, st.sampled_from(list(MemberState)))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, uints, names, names),
    st.builds(Ack, uints, names),
    st.builds(Nack, uints, names),
    st.builds(PingReq, uints, names, addresses, names),
    st.builds(Alive, names, addresses, uints),
    st.builds(Suspect, names, uints, names),
    st.builds(Dead, names, uints, names),
    st.builds(Left, names, uints),
    st.builds(Sync, st.booleans(), st.booleans(), st.lists(records, max_size=5).map(tuple)),
)
packets = st.lists(messages, min_size=1, max_size=20)

FUZZ = settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(packets)
def test_round_trip_arbitrary_messages(msgs: list[Message]) -> None:
    assert decode_packet(packet(*msgs)) == msgs


def _decode_or_decode_error(data: bytes) -> None:
    try:
        out = decode_packet(data)
    except DecodeError:
        return
    assert isinstance(out, list) and out
    for m in out:
        assert isinstance(m, Ping | Ack | Nack | PingReq | Alive | Suspect | Dead | Left | Sync)
        # Whatever decodes must re-encode to something that decodes the same.
        assert decode_packet(packet(m)) == [m]


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_version_only_raise_decode_error(data: bytes) -> None:
    _decode_or_decode_error(bytes([PROTOCOL_VERSION]) + data)


@FUZZ
@given(packets, st.data())
def test_truncated_packets_raise_decode_error(msgs: list[Message], data: st.DataObject) -> None:
    full = packet(*msgs)
    cut = data.draw(st.integers(0, len(full) - 1))
    with pytest.raises(DecodeError):
        decode_packet(full[:cut])


@FUZZ
@given(packets, st.data())
def test_bit_flipped_packets_only_raise_decode_error(
    msgs: list[Message], data: st.DataObject
) -> None:
    full = bytearray(packet(*msgs))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(full) - 1))
        full[pos] ^= 1 << data.draw(st.integers(0, 7))
    _decode_or_decode_error(bytes(full))


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), U64) | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=20,
    )
)
def test_arbitrary_msgpack_values_only_raise_decode_error(body: Any) -> None:
    _decode_or_decode_error(raw_packet(body))


def test_decoded_names_and_addresses_are_shared() -> None:
    # Built at run time, so neither string is a compile-time constant (those are
    # interned anyway and would prove nothing).
    name, host = "".join(["member", "-7"]), "".join(["10.0.0", ".7"])
    first = decode_message(encode_message(Alive(name, (host, 7946), 3)))
    second = decode_message(encode_message(Alive(name, (host, 7946), 4)))
    assert isinstance(first, Alive) and isinstance(second, Alive)
    assert first.name == name and first.name is second.name
    assert first.address is second.address  # one tuple, one host string
