"""Wire format: a version byte, then one msgpack array of messages.

Each message is a msgpack array whose first element is its type tag. Messages are
encoded once and kept as bytes (the broadcast queue holds encoded news), so a packet
is built by writing an array header and concatenating encodings, and its size is known
before it is sent. Decoding is strict: anything that is not exactly a known message of
the current version raises `DecodeError`, the only exception `decode_packet` raises.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from .appstate import Digest, NodeDelta, StateEntry
from .member import MemberState
from .messages import (
    Ack,
    Alive,
    Dead,
    Left,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    Query,
    QueryResponse,
    StateAck,
    StateDigests,
    StateSyn,
    Suspect,
    Sync,
)

PROTOCOL_VERSION = 1
MAX_MESSAGES_PER_PACKET = 1024
MAX_SYNC_MEMBERS = 100_000
MAX_PACKET_BYTES = 64 * 1024 * 1024
MAX_DATAGRAM_BYTES = 65507
MAX_NAME_BYTES = 255
MAX_HOST_CHARS = 255
MAX_VALUE_BYTES = 1024 * 1024
MAX_MAP_LEN = 65536
MAX_STATE_KEY_BYTES = 1024
MAX_QUERY_KIND_BYTES = 64
MAX_QUERY_PAYLOAD = 512
"""A query rides in datagrams beside other news, so its payload stays small."""
MAX_QUERY_RESPONSE_PAYLOAD = 64 * 1024
"""A response goes to one member, over the stream when it does not fit a datagram."""
MAX_QUERY_TIMEOUT_MS = 10 * 60 * 1000
_U64 = (1 << 64) - 1
_VERSION = bytes([PROTOCOL_VERSION])

(
    _PING,
    _ACK,
    _NACK,
    _PING_REQ,
    _ALIVE,
    _SUSPECT,
    _DEAD,
    _LEFT,
    _SYNC,
    _STATE_SYN,
    _STATE_DIGESTS,
    _STATE_ACK,
    _QUERY,
    _QUERY_RESPONSE,
) = range(1, 15)
MESSAGE_NAMES = {
    _PING: "ping",
    _ACK: "ack",
    _NACK: "nack",
    _PING_REQ: "pingreq",
    _ALIVE: "alive",
    _SUSPECT: "suspect",
    _DEAD: "dead",
    _LEFT: "left",
    _SYNC: "sync",
    _STATE_SYN: "statesyn",
    _STATE_DIGESTS: "statedigests",
    _STATE_ACK: "stateack",
    _QUERY: "query",
    _QUERY_RESPONSE: "queryresponse",
}
"""Type tag -> name, for counters."""
SENT_KEYS = {tag: (f"sent_{name}", f"sent_bytes_{name}") for tag, name in MESSAGE_NAMES.items()}
RECEIVED_KEYS = {tag: f"received_{name}" for tag, name in MESSAGE_NAMES.items()}
_RECEIVED_BY_TYPE: dict[type, str] = {}


def received_key(msg: Message) -> str:
    """The `received_*` counter for a decoded message."""
    cls = type(msg)
    key = _RECEIVED_BY_TYPE.get(cls)
    if key is None:
        key = _RECEIVED_BY_TYPE[cls] = "received_" + cls.__name__.lower()
    return key


"""Counter names per tag, built once: packets carry dozens of messages."""


def message_tag(encoded: bytes) -> int:
    """The type tag of an encoded message (its array header is one byte for every
    message this codec writes, and the tag a positive fixint)."""
    return encoded[1]


class DecodeError(Exception):
    """Raised for any input that is not a valid packet of this protocol version."""


def encode_message(msg: Message) -> bytes:
    """Encode one message (without the packet framing)."""
    data: bytes = msgpack.packb(_to_wire(msg), use_bin_type=True)
    return data


def encode_packet(parts: Sequence[bytes]) -> bytes:
    """Frame already-encoded messages as one packet."""
    n = len(parts)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 65536:
        header = b"\xdc" + struct.pack(">H", n)
    else:
        raise ValueError("too many messages for one packet")
    return _VERSION + header + b"".join(parts)


def packet_overhead(n_messages: int) -> int:
    """Bytes of framing `encode_packet` adds for `n_messages` messages."""
    return 2 if n_messages < 16 else 4


def decode_packet(data: bytes) -> list[Message]:
    """Decode and validate a packet. Raises only `DecodeError`."""
    return [decode_message(part) for part in split_packet(data)]


def split_packet(data: bytes) -> list[bytes]:
    """Check a packet's framing and cut it into its messages' encodings, without
    decoding them: a receiver can skip news it already holds byte for byte.
    Raises only `DecodeError`."""
    if not data:
        raise DecodeError("empty packet")
    if len(data) > MAX_PACKET_BYTES:
        raise DecodeError("packet too large")
    if data[0] != PROTOCOL_VERSION:
        raise DecodeError(f"unknown protocol version {data[0]}")
    body = data[1:]
    unpacker = msgpack.Unpacker(max_buffer_size=len(body) or 1, **_LIMITS)
    try:
        unpacker.feed(body)
        n = unpacker.read_array_header()
        if not 1 <= n <= MAX_MESSAGES_PER_PACKET:
            raise DecodeError("packet must hold 1..1024 messages")
        parts = []
        start = unpacker.tell()
        for _ in range(n):
            unpacker.skip()
            end = unpacker.tell()
            parts.append(body[start:end])
            start = end
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types on hostile input
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    if start != len(body):
        raise DecodeError("trailing bytes after the last message")
    return parts


def decode_message(part: bytes) -> Message:
    """Decode and validate one message cut out by `split_packet`."""
    try:
        raw = msgpack.unpackb(part, **_LIMITS)
    except Exception as exc:  # msgpack raises many types on hostile input
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    return _from_wire(raw)


_LIMITS: dict[str, Any] = dict(
    raw=False,
    use_list=True,
    strict_map_key=True,
    # Application-state values may be strings, bytes, maps and arrays; names and hosts
    # are checked field by field below.
    max_str_len=MAX_VALUE_BYTES,
    max_bin_len=MAX_VALUE_BYTES,
    max_array_len=max(MAX_MESSAGES_PER_PACKET, MAX_SYNC_MEMBERS),
    max_map_len=MAX_MAP_LEN,
    max_ext_len=0,
)


def _to_wire(msg: Message) -> list[Any]:
    match msg:
        case Ping(seq, target, sender):
            return [_PING, seq, target, sender]
        case Ack(seq, sender):
            return [_ACK, seq, sender]
        case Nack(seq, sender):
            return [_NACK, seq, sender]
        case PingReq(seq, target, (host, port), sender, timeout_ms):
            return [_PING_REQ, seq, target, host, port, sender, timeout_ms]
        case Alive(name, (host, port), inc):
            return [_ALIVE, name, host, port, inc]
        case Suspect(name, inc, accuser):
            return [_SUSPECT, name, inc, accuser]
        case Dead(name, inc, accuser):
            return [_DEAD, name, inc, accuser]
        case Left(name, inc):
            return [_LEFT, name, inc]
        case StateSyn(sender, summary, members):
            return [_STATE_SYN, sender, summary, members]
        case StateDigests(sender, digests):
            return [_STATE_DIGESTS, sender, [_digest_to_wire(d) for d in digests]]
        case StateAck(sender, deltas, requests):
            return [
                _STATE_ACK,
                sender,
                [
                    [
                        d.name,
                        d.generation,
                        [[e.key, e.version, e.value, e.deleted] for e in d.entries],
                    ]
                    for d in deltas
                ],
                [_digest_to_wire(d) for d in requests],
            ]
        case Query(qid, origin, (host, port), kind, payload, timeout_ms):
            return [_QUERY, qid, origin, host, port, kind, payload, timeout_ms]
        case QueryResponse(qid, sender, payload):
            return [_QUERY_RESPONSE, qid, sender, payload]
        case Sync(reply, join, members):
            records = [
                [m.name, m.address[0], m.address[1], m.incarnation, int(m.state)] for m in members
            ]
            return [_SYNC, reply, join, records]
    raise TypeError(f"not a message: {msg!r}")


def _name(v: object) -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_NAME_BYTES:
        raise DecodeError("bad member name")
    return v


def _host(v: object) -> str:
    if type(v) is not str or not v or len(v) > MAX_HOST_CHARS:
        raise DecodeError("bad host")
    return v


def _port(v: object) -> int:
    if type(v) is not int or not 0 <= v <= 65535:
        raise DecodeError("bad port")
    return v


def _uint(v: object) -> int:
    if type(v) is not int or not 0 <= v <= _U64:
        raise DecodeError("bad unsigned integer")
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise DecodeError("bad boolean")
    return v


_STATES = tuple(MemberState)  # indexing beats the enum's call path on large syncs


def _state(v: object) -> MemberState:
    if type(v) is not int or not 0 <= v <= 3:
        raise DecodeError("bad member state")
    return _STATES[v]


_ARITY = {
    _PING: 4,
    _ACK: 3,
    _NACK: 3,
    _PING_REQ: 7,
    _ALIVE: 5,
    _SUSPECT: 4,
    _DEAD: 4,
    _LEFT: 3,
    _SYNC: 4,
    _STATE_SYN: 4,
    _STATE_DIGESTS: 3,
    _STATE_ACK: 4,
    _QUERY: 8,
    _QUERY_RESPONSE: 4,
}


def _query_kind(v: object) -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_QUERY_KIND_BYTES:
        raise DecodeError("bad query kind")
    return v


def _payload(v: object, limit: int) -> bytes:
    if type(v) is not bytes or len(v) > limit:
        raise DecodeError("bad query payload")
    return v


def _digest_to_wire(d: Digest) -> list[Any]:
    return [d.name, d.generation, d.max_version]


def _list(v: object, limit: int = MAX_SYNC_MEMBERS) -> list[Any]:
    if type(v) is not list or len(v) > limit:
        raise DecodeError("bad list")
    return v


def _digest(v: object) -> Digest:
    item = _list(v)
    if len(item) != 3:
        raise DecodeError("bad digest")
    return Digest(_name(item[0]), _uint(item[1]), _uint(item[2]))


def _state_key(v: object) -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_STATE_KEY_BYTES:
        raise DecodeError("bad state key")
    return v


def _entry(v: object) -> StateEntry:
    item = _list(v)
    if len(item) != 4:
        raise DecodeError("bad state entry")
    deleted = _bool(item[3])
    if deleted and item[2] is not None:
        raise DecodeError("a tombstone carries no value")
    return StateEntry(_state_key(item[0]), _uint(item[1]), item[2], deleted)


def _delta(v: object) -> NodeDelta:
    item = _list(v)
    if len(item) != 3:
        raise DecodeError("bad state delta")
    entries = tuple(_entry(e) for e in _list(item[2]))
    if any(a.version >= b.version for a, b in itertools.pairwise(entries)):
        raise DecodeError("state delta entries out of version order")
    return NodeDelta(_name(item[0]), _uint(item[1]), entries)


def _from_wire(item: object) -> Message:
    if type(item) is not list or not item:
        raise DecodeError("message is not an array")
    tag = item[0]
    if type(tag) is not int or _ARITY.get(tag) != len(item):
        raise DecodeError("unknown message type or wrong field count")
    if tag == _PING:
        return Ping(_uint(item[1]), _name(item[2]), _name(item[3]))
    if tag == _ACK:
        return Ack(_uint(item[1]), _name(item[2]))
    if tag == _NACK:
        return Nack(_uint(item[1]), _name(item[2]))
    if tag == _PING_REQ:
        return PingReq(
            _uint(item[1]),
            _name(item[2]),
            (_host(item[3]), _port(item[4])),
            _name(item[5]),
            _uint(item[6]),
        )
    if tag == _ALIVE:
        return Alive(_name(item[1]), (_host(item[2]), _port(item[3])), _uint(item[4]))
    if tag == _SUSPECT:
        return Suspect(_name(item[1]), _uint(item[2]), _name(item[3]))
    if tag == _DEAD:
        return Dead(_name(item[1]), _uint(item[2]), _name(item[3]))
    if tag == _LEFT:
        return Left(_name(item[1]), _uint(item[2]))
    if tag == _STATE_SYN:
        return StateSyn(_name(item[1]), _uint(item[2]), _uint(item[3]))
    if tag == _STATE_DIGESTS:
        return StateDigests(_name(item[1]), tuple(_digest(d) for d in _list(item[2])))
    if tag == _STATE_ACK:
        return StateAck(
            _name(item[1]),
            tuple(_delta(d) for d in _list(item[2])),
            tuple(_digest(d) for d in _list(item[3])),
        )
    if tag == _QUERY:
        timeout_ms = _uint(item[7])
        if timeout_ms > MAX_QUERY_TIMEOUT_MS:
            raise DecodeError("query timeout too long")
        return Query(
            _uint(item[1]),
            _name(item[2]),
            (_host(item[3]), _port(item[4])),
            _query_kind(item[5]),
            _payload(item[6], MAX_QUERY_PAYLOAD),
            timeout_ms,
        )
    if tag == _QUERY_RESPONSE:
        return QueryResponse(
            _uint(item[1]), _name(item[2]), _payload(item[3], MAX_QUERY_RESPONSE_PAYLOAD)
        )
    members = item[3]
    if type(members) is not list or len(members) > MAX_SYNC_MEMBERS:
        raise DecodeError("bad member list")
    records = []
    for rec in members:
        if type(rec) is not list or len(rec) != 5:
            raise DecodeError("bad member record")
        records.append(
            MemberRecord(
                _name(rec[0]), (_host(rec[1]), _port(rec[2])), _uint(rec[3]), _state(rec[4])
            )
        )
    return Sync(_bool(item[1]), _bool(item[2]), tuple(records))
