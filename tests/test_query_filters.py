"""Queries with filters, acks and answers as they arrive, late answers and failing
responders, on the simulated network under MockClock."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio
import trio.testing

from swimnode.protocol import codec
from swimnode.protocol.member import Member, MemberState
from swimnode.protocol.messages import Query
from swimnode.protocol.queries import (
    MAX_FILTERED_VALUE_CHARS,
    QueryProgress,
    check_filters,
    regex_problem,
    selects,
)
from swimnode.testing import open_sim_cluster


def echo(query: Query) -> bytes:
    return query.payload


def answer_with(payload: bytes) -> Callable[[Query], bytes]:
    return lambda query: payload


def test_filters_round_trip_and_are_checked() -> None:
    query = Query(1, "a", ("127.0.0.1", 1), "k", b"", 1000, ("n1", "n2"), (("role", "^db$"),))
    [decoded] = codec.decode_packet(codec.encode_packet([codec.encode_message(query)]))
    assert decoded == query
    bad = Query(1, "a", ("127.0.0.1", 1), "k", b"", 1000, (), (("role", "[unclosed"),))
    with pytest.raises(codec.DecodeError):
        codec.decode_packet(codec.encode_packet([codec.encode_message(bad)]))


def with_role(role: object) -> Member:
    return Member("m", ("127.0.0.1", 2), 0, MemberState.ALIVE, 0.0, {"role": role})


def query_for(regex: str) -> Query:
    return Query(1, "a", ("127.0.0.1", 1), "k", b"", 1000, (), (("role", regex),))


# Each would backtrack for hours (or years) on a value of a few dozen characters.
PATHOLOGICAL = [
    r"^(a+)+$",
    r"(a|aa)*c",
    r"(x+x+)+y",
    r"(\w+\s?)+$",
    r"(.*a){20}",
    "(a|a)" * 30 + "b",
    "a?" * 30 + "a" * 30,
    r"(a)\1*b",
    r".*.*.*.*=",
]


@pytest.mark.parametrize("regex", PATHOLOGICAL)
def test_a_pathological_filter_is_refused_by_origin_and_members(regex: str) -> None:
    assert regex_problem(regex) is not None
    with pytest.raises(ValueError, match="refused"):
        check_filters((), (("role", regex),))
    # A member handed one anyway (an older or hostile origin) refuses to run it:
    # it is simply not selected, at once.
    assert not selects(query_for(regex), with_role("a" * 40 + "!"))


def test_ordinary_filters_pass_and_long_values_never_match() -> None:
    for regex in (
        r"^db$",
        r"^(web|api|db)-\d+$",
        r"prod|stage",
        r"a.*b",
        r"^(\d{1,3}\.){3}\d{1,3}$",
    ):
        assert regex_problem(regex) is None, regex
    assert selects(query_for(r"^(web|api|db)-\d+$"), with_role("api-12"))
    assert selects(query_for(r"^weight$|^3$"), with_role(3))  # compact JSON
    # Filters match only values of bounded size, which bounds what any costs.
    long = "x" * MAX_FILTERED_VALUE_CHARS
    assert selects(query_for("x"), with_role(long))
    assert not selects(query_for("x"), with_role(long + "x"))


async def test_state_and_name_filters_select_the_responders(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_cluster(6, seed=4) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        for name, node in cluster.nodes.items():
            node.on_query("who", answer_with(name.encode()))
            node.set_state("role", "db" if name in ("n1", "n4") else "web")
            node.set_state("weight", int(name[1:]))
        assert await cluster.wait_for(cluster.state_converged, timeout=30) is not None
        origin = cluster.nodes["n0"]
        seen: list[QueryProgress] = []
        start = trio.current_time()
        result = await origin.query("who", state=[("role", "^db$")], on_progress=seen.append)
        # Only the members the filter selects answer, and the query ends as soon as
        # they have (well before its timeout).
        assert result.expected == {"n1", "n4"}
        assert result.responses == {"n1": b"n1", "n4": b"n4"}
        assert result.acks == {"n1", "n4"} and result.missing == []
        assert trio.current_time() - start < result.timeout
        # Each answer as it came (an ack may come first, or after the answer and the
        # end of the query).
        assert {(p.sender, p.payload) for p in seen if p.payload} == {("n1", b"n1"), ("n4", b"n4")}
        for name in ("n2", "n3", "n5"):
            stats = cluster.nodes[name].stats()
            assert stats.get("query_responses_sent", 0) == 0
            assert stats["queries_not_selected"] == 1
        # Names and state together; a non-string value is matched as JSON.
        result = await origin.query("who", names=["n2", "n3", "n4"], state=[("weight", "^[34]$")])
        assert result.responses == {"n3": b"n3", "n4": b"n4"}
        with pytest.raises(ValueError, match="bad regex"):
            await origin.query("who", state=[("role", "(")])


async def test_a_raising_responder_is_logged_and_answers_nothing(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_sim_cluster(3, seed=9) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None

        def broken(query: Query) -> bytes:
            raise RuntimeError("responder bug")

        cluster.nodes["n0"].on_query("k", echo)
        cluster.nodes["n1"].on_query("k", broken)
        later: list[Query] = []
        cluster.nodes["n2"].on_query("k", lambda q: later.append(q))
        caplog.set_level(logging.ERROR, "swimnode")
        async with trio.open_nursery() as nursery:

            async def answer_later() -> None:
                while not later:  # noqa: ASYNC110 (a plain list, filled by the handler)
                    await trio.sleep(0.1)
                await trio.sleep(0.5)
                cluster.nodes["n2"].answer_query(later[0], b"late")

            nursery.start_soon(answer_later)
            result = await cluster.nodes["n0"].query("k", b"hi", timeout=3.0)
        assert result.responses == {"n0": b"hi", "n2": b"late"}
        assert result.acks == {"n0", "n1", "n2"} and result.missing == ["n1"]
        assert cluster.nodes["n1"].stats()["query_handler_errors"] == 1
        assert any("responder bug" in r.getMessage() or r.exc_info for r in caplog.records)
