"""Wire format: a version byte, then one msgpack array of messages.

Each message is a msgpack array whose first element is its type tag. Messages are
encoded once and kept as bytes (the broadcast queue holds encoded news), so a packet
is built by writing an array header and concatenating encodings, and its size is known
before it is sent. Decoding is strict: anything that is not exactly a known message of
the current version raises `DecodeError`, the only exception `decode_packet` raises.
"""

from __future__ import annotations

import itertools
import operator
import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack

from .. import counters
from ..net.transport import Address
from .appstate import Digest, NodeDelta, StateEntry
from .limits import MAX_DATAGRAM_BYTES as MAX_DATAGRAM_BYTES  # re-exported for the core
from .limits import MAX_HOST_CHARS, MAX_NAME_BYTES
from .member import MemberState
from .messages import (
    Ack,
    Alive,
    Dead,
    Left,
    MemberRecord,
    MembershipNews,
    Message,
    Nack,
    Ping,
    PingReq,
    Query,
    QueryAck,
    QueryResponse,
    StateAck,
    StateDigests,
    StateSyn,
    Suspect,
    Sync,
    UserEventMessage,
)
from .sharedcache import SharedCache

PROTOCOL_VERSION = 1
MAX_MESSAGES_PER_PACKET = 1024
MAX_SYNC_MEMBERS = 100_000
MAX_PACKET_BYTES = 64 * 1024 * 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_MAP_LEN = 65536
MAX_STATE_KEY_BYTES = 1024
MAX_QUERY_KIND_BYTES = 64
MAX_QUERY_PAYLOAD = 512
"""A query rides in datagrams beside other news, so its payload stays small."""
MAX_QUERY_RESPONSE_PAYLOAD = 64 * 1024
"""A response goes to one member, over the stream when it does not fit a datagram."""
MAX_QUERY_TIMEOUT_MS = 10 * 60 * 1000
MAX_QUERY_FILTERS = 16
"""Names, and state filters, a query may carry (each list)."""
MAX_QUERY_REGEX_BYTES = 256
MAX_EVENT_NAME_BYTES = 64
MAX_EVENT_PAYLOAD = 512
"""A user event rides in datagrams beside other news, as a query does."""
MAX_SYNC_EVENTS = 64
"""Recent user events a push-pull carries (at most about 40 KiB at the size limits)."""
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
    _USER_EVENT,
    _QUERY_ACK,
) = range(1, 17)
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
    _USER_EVENT: "userevent",
    _QUERY_ACK: "queryack",
}
"""Type tag -> name, for counters."""
# Counter names per tag, built once: packets carry dozens of messages.
SENT_KEYS = {
    tag: (counters.sent_key(name), counters.sent_bytes_key(name))
    for tag, name in MESSAGE_NAMES.items()
}
RECEIVED_KEYS = {
    tag: (counters.received_key(name), counters.received_bytes_key(name))
    for tag, name in MESSAGE_NAMES.items()
}
# Filled on first use from each class's name; the user event's class is named apart
# from the `UserEvent` users receive, so its counter name is given here.
_RECEIVED_BY_TYPE: dict[type, tuple[str, str]] = {UserEventMessage: RECEIVED_KEYS[_USER_EVENT]}
_TAG = operator.itemgetter(1)


def count_parts(
    stats: dict[str, int], parts: Iterable[bytes], keys: dict[int, tuple[str, str]]
) -> None:
    """Count each encoded message in `parts` and its bytes under `keys[tag]` (the
    `SENT_KEYS` or `RECEIVED_KEYS` pairs). Only for encodings of ours: `part[1]` is
    then the tag (`message_tag`, inlined). Counted per run of one type: a packet of
    gossip is mostly one kind, and this runs for every message of every packet."""
    for tag, run in itertools.groupby(parts, _TAG):
        sizes = list(map(len, run))
        count_key, bytes_key = keys[tag]
        stats[count_key] += len(sizes)
        stats[bytes_key] += sum(sizes)


def received_keys(msg: Message) -> tuple[str, str]:
    """The `received_*` and `received_bytes_*` counters for a decoded message."""
    cls = type(msg)
    keys = _RECEIVED_BY_TYPE.get(cls)
    if keys is None:
        name = cls.__name__.lower()
        keys = (counters.received_key(name), counters.received_bytes_key(name))
        _RECEIVED_BY_TYPE[cls] = keys
    return keys


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


_ALIVES: SharedCache[tuple[str, Address, int], bytes] = SharedCache(
    lambda key: encode_message(Alive(*key)), 1 << 14
)
"""One shared encoding per `Alive` news. A node remembers the latest news about
every member (`Membership.known_news`), nearly all of it `Alive`. Keyed by the
fields, as a tuple hashes far faster than a message; at most about 3 MB."""


def encode_news(news: MembershipNews) -> bytes:
    """`encode_message(news)`, shared for `Alive` news (see `_ALIVES`)."""
    if type(news) is Alive:
        return _ALIVES[news.name, news.address, news.incarnation]
    return encode_message(news)


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
    encode = _ENCODERS.get(type(msg))
    if encode is None:
        raise TypeError(f"not a message: {msg!r}")
    return encode(msg)


def _encode_ping_req(m: PingReq) -> list[Any]:
    host, port = m.target_address
    return [_PING_REQ, m.seq, m.target, host, port, m.sender, m.timeout_ms]


def _encode_alive(m: Alive) -> list[Any]:
    host, port = m.address
    return [_ALIVE, m.name, host, port, m.incarnation]


def _encode_state_ack(m: StateAck) -> list[Any]:
    deltas = [
        [d.name, d.generation, [[e.key, e.version, e.value, e.deleted] for e in d.entries]]
        for d in m.deltas
    ]
    return [_STATE_ACK, m.sender, deltas, [_digest_to_wire(d) for d in m.requests]]


def _encode_query(m: Query) -> list[Any]:
    host, port = m.origin_address
    state = [[key, regex] for key, regex in m.state]
    return [_QUERY, m.id, m.origin, host, port, m.kind, m.payload, m.timeout_ms, m.names, state]


def _encode_sync(m: Sync) -> list[Any]:
    records = [[r.name, r.address[0], r.address[1], r.incarnation, int(r.state)] for r in m.members]
    if not m.events:
        return [_SYNC, m.reply, m.join, records]
    # Recent user events ride as a fifth field, each in its own message's wire form,
    # only when there are any: a sync without them is encoded as it always was.
    return [_SYNC, m.reply, m.join, records, [_encode_user_event(e) for e in m.events]]


def _encode_user_event(m: UserEventMessage) -> list[Any]:
    host, port = m.origin_address
    return [_USER_EVENT, m.ltime, m.origin, host, port, m.name, m.payload, m.coalesce]


# One encoder per message class: a dict lookup costs the same for every type, where
# a chain of isinstance tests grows with the type's place in the chain.
_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    Ping: lambda m: [_PING, m.seq, m.target, m.sender],
    Ack: lambda m: [_ACK, m.seq, m.sender],
    Nack: lambda m: [_NACK, m.seq, m.sender],
    PingReq: _encode_ping_req,
    Alive: _encode_alive,
    Suspect: lambda m: [_SUSPECT, m.name, m.incarnation, m.accuser],
    Dead: lambda m: [_DEAD, m.name, m.incarnation, m.accuser],
    Left: lambda m: [_LEFT, m.name, m.incarnation],
    StateSyn: lambda m: [_STATE_SYN, m.sender, m.summary, m.members],
    StateDigests: lambda m: [_STATE_DIGESTS, m.sender, [_digest_to_wire(d) for d in m.digests]],
    StateAck: _encode_state_ack,
    Query: _encode_query,
    QueryResponse: lambda m: [_QUERY_RESPONSE, m.id, m.sender, m.payload],
    QueryAck: lambda m: [_QUERY_ACK, m.id, m.sender, m.answering],
    UserEventMessage: _encode_user_event,
    Sync: _encode_sync,
}


# Names and hosts are interned: a node keeps each member's name in several tables and
# hears it over and over, and every copy decoded would otherwise stay alive in them
# (about a fifth of a member record's memory; docs/scale.md). Limits are checked first.


def _name(v: object) -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_NAME_BYTES:
        raise DecodeError("bad member name")
    return sys.intern(v)


def _host(v: object) -> str:
    if type(v) is not str or not v or len(v) > MAX_HOST_CHARS:
        raise DecodeError("bad host")
    return sys.intern(v)


def _port(v: object) -> int:
    if type(v) is not int or not 0 <= v <= 65535:
        raise DecodeError("bad port")
    return v


_ADDRESSES: SharedCache[Address, Address] = SharedCache(lambda address: address, 1 << 16)
"""One shared tuple per address decoded, for the same reason names are interned."""


def _address(host: object, port: object) -> Address:
    return _ADDRESSES[_host(host), _port(port)]


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
    _QUERY: 10,
    _QUERY_RESPONSE: 4,
    _USER_EVENT: 8,
    _QUERY_ACK: 4,
}
_SYNC_WITH_EVENTS = 5
"""A `Sync` carrying user events has one field more than `_ARITY` says."""


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
    if (type(tag) is not int or _ARITY.get(tag) != len(item)) and not (
        type(tag) is int and tag == _SYNC and len(item) == _SYNC_WITH_EVENTS
    ):
        raise DecodeError("unknown message type or wrong field count")
    return _DECODERS[tag](item)


def _decode_ping_req(item: list[Any]) -> PingReq:
    return PingReq(
        _uint(item[1]),
        _name(item[2]),
        _address(item[3], item[4]),
        _name(item[5]),
        _uint(item[6]),
    )


def _decode_state_ack(item: list[Any]) -> StateAck:
    return StateAck(
        _name(item[1]),
        tuple(_delta(d) for d in _list(item[2])),
        tuple(_digest(d) for d in _list(item[3])),
    )


def _decode_query(item: list[Any]) -> Query:
    timeout_ms = _uint(item[7])
    if timeout_ms > MAX_QUERY_TIMEOUT_MS:
        raise DecodeError("query timeout too long")
    names, state = _list(item[8]), _list(item[9])
    if len(names) > MAX_QUERY_FILTERS or len(state) > MAX_QUERY_FILTERS:
        raise DecodeError("too many query filters")
    return Query(
        _uint(item[1]),
        _name(item[2]),
        _address(item[3], item[4]),
        _query_kind(item[5]),
        _payload(item[6], MAX_QUERY_PAYLOAD),
        timeout_ms,
        tuple(_name(n) for n in names),
        tuple(_state_filter(f) for f in state),
    )


def _state_filter(v: object) -> tuple[str, str]:
    if type(v) is not list or len(v) != 2:
        raise DecodeError("bad query state filter")
    key, regex = v
    if type(key) is not str or not key or len(key.encode()) > MAX_STATE_KEY_BYTES:
        raise DecodeError("bad query state filter key")
    if type(regex) is not str or len(regex.encode()) > MAX_QUERY_REGEX_BYTES:
        raise DecodeError("bad query state filter regex")
    try:
        re.compile(regex)
    except re.error:
        raise DecodeError("bad query state filter regex") from None
    return key, regex


def _decode_user_event(item: list[Any]) -> UserEventMessage:
    name = item[5]
    if type(name) is not str or not name or len(name.encode()) > MAX_EVENT_NAME_BYTES:
        raise DecodeError("bad user event name")
    return UserEventMessage(
        _uint(item[1]),
        _name(item[2]),
        _address(item[3], item[4]),
        name,
        _payload(item[6], MAX_EVENT_PAYLOAD),
        _bool(item[7]),
    )


def _decode_sync(item: list[Any]) -> Sync:
    members = item[3]
    if type(members) is not list or len(members) > MAX_SYNC_MEMBERS:
        raise DecodeError("bad member list")
    records = []
    for rec in members:
        if type(rec) is not list or len(rec) != 5:
            raise DecodeError("bad member record")
        records.append(
            MemberRecord(_name(rec[0]), _address(rec[1], rec[2]), _uint(rec[3]), _state(rec[4]))
        )
    events = () if len(item) == 4 else _sync_events(item[4])
    return Sync(_bool(item[1]), _bool(item[2]), tuple(records), events)


def _sync_events(v: object) -> tuple[UserEventMessage, ...]:
    events = []
    for item in _list(v, MAX_SYNC_EVENTS):
        if type(item) is not list or len(item) != _ARITY[_USER_EVENT] or item[0] != _USER_EVENT:
            raise DecodeError("bad user event in a sync")
        events.append(_decode_user_event(item))
    return tuple(events)


# One decoder per type tag, each given an array of the tag's arity (`_ARITY`).
_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    _PING: lambda i: Ping(_uint(i[1]), _name(i[2]), _name(i[3])),
    _ACK: lambda i: Ack(_uint(i[1]), _name(i[2])),
    _NACK: lambda i: Nack(_uint(i[1]), _name(i[2])),
    _PING_REQ: _decode_ping_req,
    _ALIVE: lambda i: Alive(_name(i[1]), _address(i[2], i[3]), _uint(i[4])),
    _SUSPECT: lambda i: Suspect(_name(i[1]), _uint(i[2]), _name(i[3])),
    _DEAD: lambda i: Dead(_name(i[1]), _uint(i[2]), _name(i[3])),
    _LEFT: lambda i: Left(_name(i[1]), _uint(i[2])),
    _SYNC: _decode_sync,
    _STATE_SYN: lambda i: StateSyn(_name(i[1]), _uint(i[2]), _uint(i[3])),
    _STATE_DIGESTS: lambda i: StateDigests(_name(i[1]), tuple(_digest(d) for d in _list(i[2]))),
    _STATE_ACK: _decode_state_ack,
    _QUERY: _decode_query,
    _QUERY_RESPONSE: lambda i: QueryResponse(
        _uint(i[1]), _name(i[2]), _payload(i[3], MAX_QUERY_RESPONSE_PAYLOAD)
    ),
    _USER_EVENT: _decode_user_event,
    _QUERY_ACK: lambda i: QueryAck(_uint(i[1]), _name(i[2]), _bool(i[3])),
}
