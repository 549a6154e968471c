"""Cluster-wide queries and the key-management queries built on them: the codec, the
core's dissemination and deduplication, and whole simulated clusters (MockClock,
in-memory network)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from swimnode.agent.keyqueries import (
    KeyQueryError,
    decode_answer,
    encode_answer,
    register_key_handlers,
    run_key_query,
)
from swimnode.driver import NodeNotRunning
from swimnode.net.keyring import Keyring, fingerprint, generate_key, parse_key
from swimnode.protocol import codec
from swimnode.protocol.codec import DecodeError, decode_packet, encode_message, encode_packet
from swimnode.protocol.config import Config
from swimnode.protocol.contract import QueryFinished
from swimnode.protocol.core import SwimCore
from swimnode.protocol.messages import Query, QueryAck, QueryResponse
from swimnode.protocol.queries import QueryProgress
from swimnode.testing import open_sim_cluster

Q = Query(2**64 - 1, "node-a", ("10.0.0.1", 7946), "keys.list", b"\x00" * 512, 600_000)
R = QueryResponse(7, "node-b", b"x" * codec.MAX_QUERY_RESPONSE_PAYLOAD)


# ----- codec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg", [Q, R, Query(0, "a", ("::1", 0), "k", b"", 0), QueryResponse(0, "b", b"")]
)
def test_query_messages_round_trip(msg: Query | QueryResponse) -> None:
    assert decode_packet(encode_packet([encode_message(msg)])) == [msg]


def raw(*fields: Any) -> bytes:
    body: bytes = msgpack.packb([list(fields)], use_bin_type=True)
    return bytes([codec.PROTOCOL_VERSION]) + body


@pytest.mark.parametrize(
    "fields",
    [
        (13, 1, "a", "h", 1, "k", b"", 0, "extra"),  # wrong arity
        (13, 1, "a", "h", 1, "", b"", 0),  # empty kind
        (13, 1, "a", "h", 1, "k" * 65, b"", 0),  # kind too long
        (13, 1, "a", "h", 1, "k", "text", 0),  # payload not bytes
        (13, 1, "a", "h", 1, "k", b"x" * 513, 0),  # payload too large
        (13, 1, "a", "h", 1, "k", b"", codec.MAX_QUERY_TIMEOUT_MS + 1),
        (13, -1, "a", "h", 1, "k", b"", 0),  # negative id
        (13, 1, "", "h", 1, "k", b"", 0),  # empty origin
        (13, 1, "a", "h", 70000, "k", b"", 0),  # bad port
        (14, 1, "b"),  # response: wrong arity
        (14, 1, "b", "text"),  # response payload not bytes
        (14, 1, "b", b"x" * (codec.MAX_QUERY_RESPONSE_PAYLOAD + 1)),
        (14, 1, 5, b""),  # sender not a name
    ],
)
def test_bad_query_messages_raise_decode_error(fields: tuple[Any, ...]) -> None:
    with pytest.raises(DecodeError):
        decode_packet(raw(*fields))


@given(
    st.builds(
        Query,
        st.integers(0, 2**64 - 1),
        st.text(min_size=1, max_size=20),
        st.tuples(st.text(min_size=1, max_size=20), st.integers(0, 65535)),
        st.text(min_size=1, max_size=16),
        st.binary(max_size=512),
        st.integers(0, codec.MAX_QUERY_TIMEOUT_MS),
    )
)
def test_arbitrary_queries_round_trip(query: Query) -> None:
    assert decode_packet(encode_packet([encode_message(query)])) == [query]


# ----- core ----------------------------------------------------------------------------


def core(name: str) -> SwimCore:
    return SwimCore(Config.lan(name, bind=(name, 1)), now=0.0, rng=random.Random(1))


def recorder(calls: list[Query], answer: bytes | None) -> Callable[[Query], bytes | None]:
    """A query handler that records each query it is handed and answers `answer`."""

    def handler(query: Query) -> bytes | None:
        calls.append(query)
        return answer

    return handler


def test_a_query_is_handled_once_and_rebroadcast() -> None:
    a, b = core("a"), core("b")
    mine: list[Query] = []
    got: list[Query] = []
    a.register_query_handler("kind", recorder(mine, b"A"))
    b.register_query_handler("kind", recorder(got, b"B"))
    query_id = a.start_query("kind", b"hi", 2.0, now=0.0)
    [query] = mine  # the origin answers itself too
    assert query.id == query_id and query.payload == b"hi"
    assert query.timeout_ms == 2000  # an answer is useless 2 s after receipt
    # Alone, the origin has every answer it expects at once, each signalled as it came.
    *progress, finished = a.take_output().signals
    assert progress == [
        QueryProgress(query_id, "a", None, answering=True),
        QueryProgress(query_id, "a", b"A"),
    ]
    assert isinstance(finished, QueryFinished)
    assert finished.result.id == query_id
    assert finished.result.responses == {"a": b"A"} and finished.result.missing == []
    data = encode_packet([encode_message(query)])
    for _ in range(3):
        b.handle_packet(1.0, a.address, data)
    assert got == [query]  # handled once
    assert b.stats["queries_duplicate"] == 2
    assert b.broadcasts.pending(("query", "a", query.id))
    # b acks and answers the origin directly.
    out = b.take_output()
    assert {dest for dest, _ in out.datagrams} == {a.address}
    replies = [m for _, data in out.datagrams for m in decode_packet(data)]
    assert QueryAck(query.id, "b", True) in replies
    assert QueryResponse(query.id, "b", b"B") in replies


def test_start_query_checks_limits() -> None:
    a = core("a")
    with pytest.raises(ValueError):
        a.start_query("", b"", 1.0, now=0.0)
    with pytest.raises(ValueError):
        a.start_query("k", b"x" * (codec.MAX_QUERY_PAYLOAD + 1), 1.0, now=0.0)


def test_large_responses_go_over_the_stream() -> None:
    a = core("a")
    a.take_output()
    a.register_query_handler("k", lambda q: b"x" * 5000)
    query = Query(1, "b", ("b", 1), "k", b"", 1000)
    a.handle_packet(0.0, ("b", 1), encode_packet([encode_message(query)]))
    out = a.take_output()
    # The ack fits a datagram (with news riding along); the answer does not.
    [(_, ack)] = out.datagrams
    assert decode_packet(ack)[0] == QueryAck(1, "a", True)
    assert [dest for _, dest, _ in out.streams] == [("b", 1)]
    [(_, _, data)] = out.streams
    assert decode_packet(data) == [QueryResponse(1, "a", b"x" * 5000)]


def test_answers_never_carry_key_material() -> None:
    key = generate_key()
    ring = Keyring(key)
    payload = encode_answer(ring)
    assert parse_key(key) not in payload and key.encode() not in payload
    assert decode_answer(payload).keys == (fingerprint(parse_key(key)),)
    assert decode_answer(b"\xc1").error == "malformed answer"
    assert decode_answer(msgpack.packb({"ok": "yes"})).ok is False


# ----- simulated clusters --------------------------------------------------------------


async def test_a_query_reaches_every_node_and_all_answer(
    mock_clock: trio.testing.MockClock,
) -> None:
    n = 12
    async with open_sim_cluster(n, seed=41) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        seen: list[str] = []
        for name, node in cluster.nodes.items():

            def handler(query: Query, name: str = name) -> bytes:
                seen.append(name)
                return name.upper().encode() + query.payload

            node.on_query("echo", handler)
        start = trio.current_time()
        result = await cluster.nodes["n3"].query("echo", b"!")
        took = trio.current_time() - start
        assert sorted(seen) == sorted(cluster.names)  # each node handled it exactly once
        assert result.responses == {name: name.upper().encode() + b"!" for name in cluster.names}
        assert result.missing == []
        assert took < result.timeout  # it ended as soon as everyone answered
        # Copies that keep circulating are recognised and not handled again.
        await trio.sleep(10)
        assert len(seen) == n


async def test_a_silent_member_is_reported_missing(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(4, seed=42) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        for name, node in cluster.nodes.items():
            # n2 has a responder that never answers, so an answer could still come.
            node.on_query("ping", recorder([], None if name == "n2" else b"pong"))
        start = trio.current_time()
        result = await cluster.nodes["n0"].query("ping", timeout=2.0)
        assert result.missing == ["n2"]
        assert set(result.responses) == {"n0", "n1", "n3"}
        assert result.acks == {"n0", "n1", "n2", "n3"}
        assert trio.current_time() - start >= 2.0 - 1e-9  # it waited until the timeout
        # The origin asked the silent member directly before giving up.
        assert cluster.nodes["n0"].stats()["queries_resent"] == 1


def _rings(n: int, key: str) -> dict[str, Keyring]:
    return {f"n{i}": Keyring(key) for i in range(n)}


async def test_key_rotation_through_queries_keeps_the_cluster_converged(
    mock_clock: trio.testing.MockClock,
) -> None:
    old, new = generate_key(), generate_key()
    old_fp, new_fp = fingerprint(parse_key(old)), fingerprint(parse_key(new))
    rings = _rings(6, old)
    async with open_sim_cluster(0, seed=43) as cluster:
        for name, ring in rings.items():
            node = await cluster.start(name, keyring=ring)
            register_key_handlers(node, ring)
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        origin = cluster.nodes["n4"]
        listing = await run_key_query(origin, rings["n4"], "list")
        assert listing.ok and listing.key_counts() == {old_fp: 6}
        for action in ("install", "use", "remove"):
            report = await run_key_query(
                origin, rings["n4"], action, parse_key(new if action != "remove" else old)
            )
            assert report.ok, (action, report.failed)
            assert len(report.answers) == 6
            await trio.sleep(2)
            assert cluster.converged(), f"diverged after {action}"
        assert all(ring.fingerprints == [new_fp] for ring in rings.values())
        listing = await run_key_query(origin, rings["n4"], "list")
        assert listing.ok, listing.failed
        assert listing.key_counts() == {new_fp: 6} and listing.primary_counts() == {new_fp: 6}
        await trio.sleep(30)
        assert cluster.converged()
        assert cluster.events_of("suspected") == []
        assert cluster.events_of("failed") == []


async def test_removing_the_primary_fails_on_every_node(mock_clock: trio.testing.MockClock) -> None:
    key = generate_key()
    rings = _rings(4, key)
    async with open_sim_cluster(0, seed=44) as cluster:
        for name, ring in rings.items():
            register_key_handlers(await cluster.start(name, keyring=ring), ring)
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        report = await run_key_query(cluster.nodes["n1"], rings["n1"], "remove", parse_key(key))
        assert not report.ok
        assert len(report.answers) == 4 and report.missing == ()
        fp = fingerprint(parse_key(key))
        assert set(report.failed.values()) == {
            f"key {fp} is the primary key; use another key before removing it"
        }
        assert all(ring.fingerprints == [fp] for ring in rings.values())
        assert cluster.converged()


async def test_key_queries_are_refused_without_keys(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(2, seed=45) as cluster:
        node = cluster.nodes["n0"]
        register_key_handlers(node, None)
        sent = node.stats().get("queries_started", 0)
        with pytest.raises(KeyQueryError, match="without encryption keys"):
            await run_key_query(node, None, "install", parse_key(generate_key()))
        assert node.stats().get("queries_started", 0) == sent  # nothing went out


async def test_query_stream_hands_over_each_reply_as_it_arrives(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(4, seed=42) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        for name, node in cluster.nodes.items():
            # n2 acks but never answers, so the query runs to its timeout.
            node.on_query("ping", recorder([], None if name == "n2" else name.encode()))
        cluster.nodes["n3"].on_query("ping", None)  # n3 no longer answers at all
        start = trio.current_time()
        arrived: list[tuple[float, QueryProgress]] = []
        async with cluster.nodes["n0"].query_stream("ping", timeout=2.0) as replies:
            async for reply in replies:
                arrived.append((trio.current_time() - start, reply))
        ended = trio.current_time() - start
        answers = {p.sender: p.payload for _, p in arrived if p.payload is not None}
        assert answers == {"n0": b"n0", "n1": b"n1"}
        # (An answer that overtakes its ack stands for both.)
        assert {p.sender for _, p in arrived} == {"n0", "n1", "n2", "n3"}
        assert [p.sender for _, p in arrived if not p.answering] == ["n3"]
        # Handed over as they came, long before the query ended at its timeout.
        assert max(t for t, _ in arrived) < 1.0 < 2.0 - 1e-9 <= ended
        result = replies.result
        assert result.responses == answers and result.acks == {"n0", "n1", "n2", "n3"}
        assert result.missing == ["n2", "n3"]


async def test_leaving_a_query_stream_early(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(3, seed=44) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        for node in cluster.nodes.values():
            node.on_query("ping", lambda q: None)  # acks, never answers
        origin = cluster.nodes["n1"]
        async with origin.query_stream("ping", timeout=5.0) as replies:
            first = await replies.__anext__()
        assert first.payload is None
        with pytest.raises(RuntimeError, match="has not finished"):
            _ = replies.result
        await trio.sleep(6)  # the query ends in the core with nobody listening
        assert origin.stats()["queries_started"] == 1
        # The next query is unaffected.
        origin.on_query("ping", lambda q: b"now")
        result = await origin.query("ping", timeout=1.0, names=["n1"])
        assert result.responses == {"n1": b"now"}


async def test_a_query_stream_ends_when_its_node_stops(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(3, seed=45) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        origin = cluster.nodes["n2"]
        got: list[QueryProgress] = []
        async with origin.query_stream("nobody-answers", timeout=30.0) as replies:
            with trio.move_on_after(40) as scope:
                cluster.crash("n2")
                async for reply in replies:
                    got.append(reply)
        assert not scope.cancelled_caught  # the iteration ended on its own
        with pytest.raises(NodeNotRunning):
            _ = replies.result
        # A plain query on a stopped node says so too, rather than waiting for ever.
        with pytest.raises(NodeNotRunning):
            await origin.query("ping")
