"""Cluster-wide queries: a question for every member (Serf's queries).

A query is disseminated like membership news. Filters (`names`, and `(key, regex)`
pairs on application state) select the members that answer; each selected member
acks once, saying whether it has a responder for the kind, hands its copy to the
handler registered for the kind (or the `"*"` fallback) once, and sends the answer
straight to the origin, at once or later (`answer`). The origin gathers acks and
answers until every selected member that was live when the query started has
answered (or acked without a responder), or the timeout passes; halfway through it
asks the silent members directly. Each ack and answer is also signalled as it comes
(`QueryProgress`). All of it is core state and core timers; a driver only relays.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import counters
from . import codec
from .broadcasts import log_scale
from .config import Config
from .member import Member
from .messages import Query, QueryAck, QueryResponse

if TYPE_CHECKING:
    from .core import SwimCore

QueryHandler = Callable[[Query], bytes | None]
"""Answers one query: the response payload, or None to stay silent. It runs inside
the node's receive path, so it must be quick and must not block; an exception it
raises is logged and counted (``query_handler_errors``) and nothing is answered."""

FALLBACK_KIND = "*"
"""The handler registered under this kind answers queries of kinds without their own."""
_QUERY_MEMORY = 60.0
"""Seconds a query id is remembered (at least) so late copies are not handled again."""
_MAX_SEEN_QUERIES = 4096
"""Cap on remembered query ids: they are few (operator commands), so this only
bounds what a misbehaving member could make us hold."""


def default_query_timeout(config: Config, n_live: int) -> float:
    """Serf's default: `gossip_interval * query_timeout_mult * ceil(log10(N + 1))`,
    long enough for the query to reach everyone through gossip and the answers to
    come back (dissemination takes O(log N) rounds)."""
    return config.gossip_interval * config.query_timeout_mult * log_scale(n_live)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a query gathered at its origin."""

    id: int
    kind: str
    expected: frozenset[str]
    """Members that were live (alive or suspect, us included) when the query started."""
    responses: dict[str, bytes]
    """Member name -> response payload, for every member that answered in time (a
    member that joined meanwhile may answer too)."""
    timeout: float
    """Seconds the origin was prepared to wait."""
    acks: frozenset[str] = frozenset()
    """Selected members that acknowledged the query."""

    @property
    def missing(self) -> list[str]:
        """Expected members that did not answer in time, sorted."""
        return sorted(self.expected - self.responses.keys())


@dataclass(slots=True)
class _Collector:
    """Answers to one of our queries in flight."""

    query: Query
    expected: frozenset[str]
    timeout: float
    resend_at: float
    deadline: float
    responses: dict[str, bytes] = field(default_factory=dict)
    acks: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    """Members that acked without a responder: no answer will come from them."""

    def result(self) -> QueryResult:
        return QueryResult(
            self.query.id,
            self.query.kind,
            self.expected,
            dict(self.responses),
            self.timeout,
            frozenset(self.acks),
        )

    @property
    def complete(self) -> bool:
        return self.expected <= self.responses.keys() | self.silent


@dataclass(frozen=True, slots=True)
class QueryProgress:
    """An ack (`payload` None) or an answer to one of our queries, as it arrived."""

    id: int
    sender: str
    payload: bytes | None
    answering: bool = True
    """For an ack: whether the member has a responder (an answer may follow)."""


def selects(query: Query, member: Member) -> bool:
    """Whether `query`'s filters select `member` (by name, and by application state
    as this node knows it). A regex `regex_problem` refuses matches nothing, and
    neither does a value longer than `MAX_FILTERED_VALUE_CHARS`."""
    if query.names and member.name not in query.names:
        return False
    state = member.app_state
    for key, regex in query.state:
        if key not in state or regex_problem(regex) is not None:
            return False
        text = _text(state[key])
        if len(text) > MAX_FILTERED_VALUE_CHARS or re.search(regex, text) is None:
            return False
    return True


_re_parser: Any = importlib.import_module("re._parser")
"""The parser behind `re` (3.11 and later; private, so no stubs): the pattern's
structure is what bounds its cost."""

MAX_FILTERED_VALUE_CHARS = 256
"""State filters match values of at most this many characters (as `_text` puts
them); longer ones never match. Bounding the input bounds what a regex can cost."""
_MAX_MATCH_WORK = 1 << 23
"""Most work `regex_problem` lets one state filter's regex do on one value."""


@functools.lru_cache(maxsize=256)
def regex_problem(regex: str) -> str | None:
    """Why `regex` may not be a state filter, or None if it may.

    Filters come from other members and Python's regexes backtrack, so a pattern
    such as ``(a+)+$`` could take hours on a short value. Whoever evaluates a
    filter refuses any pattern whose worst case on a value of
    `MAX_FILTERED_VALUE_CHARS` characters could be long: backreferences (matching
    them is NP-hard), quantified groups that hold a quantifier or an alternation
    (exponential), and patterns whose count of ways to match (the product of each
    quantifier's range and each alternation's size), times their length, times
    the positions a search starts from (one when anchored with ``^``) is over
    `_MAX_MATCH_WORK`. ``^web-\\d+$``, ``prod|stage``, ``a.*b`` and an address
    ``^(\\d{1,3}\\.){3}\\d{1,3}$`` pass; ``(a+)+$`` and ``.*a.*b`` do not, nor
    does ``\\d+\\.\\d+`` unless anchored."""
    try:
        parsed = _re_parser.parse(regex)
    except (re.error, RecursionError, OverflowError):
        return "not a valid regex"
    try:
        paths, length = _match_paths(list(parsed))
    except ValueError as exc:
        return str(exc)
    anchored = bool(parsed) and str(parsed[0][0]) == "AT" and str(parsed[0][1]) in _STARTS
    starts = 1 if anchored else MAX_FILTERED_VALUE_CHARS
    if paths * length * starts > _MAX_MATCH_WORK:
        return "it could backtrack too long on other members; simplify it or anchor it with ^"
    return None


_STARTS = {"AT_BEGINNING", "AT_BEGINNING_STRING"}
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_MAX_NESTED_REPEAT = 16
"""A group holding choices may be repeated at most this many times (``{1,3}``)."""
_GROUPS = {"SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"}


def _match_paths(items: list[tuple[Any, Any]]) -> tuple[int, int]:
    """(ways a backtracking matcher can take through `items`, their length in
    nodes); ValueError for a construct whose cost has no useful bound."""
    paths, length = 1, 0
    for op, arg in items:
        name = str(op)
        length += 1
        if name in _REPEATS:
            low, high, body = arg
            inner, size = _match_paths(list(body))
            if inner > 1 and high > _MAX_NESTED_REPEAT:
                raise ValueError(
                    "a group repeated without a small bound may not hold a quantifier "
                    "or an alternation"
                )
            span = max(1, min(high, MAX_FILTERED_VALUE_CHARS) - low + 1)
            paths *= span * inner ** max(1, high)
            length += size
        elif name == "BRANCH":
            counted = [_match_paths(list(alternative)) for alternative in arg[1]]
            paths *= sum(p for p, _ in counted)
            length += max(n for _, n in counted)
        elif name in _GROUPS:
            inner, size = _match_paths(list(arg[-1]))
            paths *= inner
            length += size
        elif name.startswith("GROUPREF"):
            raise ValueError("backreferences are not allowed")
    return paths, length


def _text(value: object) -> str:
    # Strings are matched as they are; other values as compact JSON (bytes as hex),
    # so `--state weight=^3$` matches the number 3.
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_hex)


def _hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(type(value).__name__)


def check_filters(names: tuple[str, ...], state: tuple[tuple[str, str], ...]) -> None:
    """Raise `ValueError` (one line) for filters the codec would refuse."""
    if len(names) > codec.MAX_QUERY_FILTERS or len(state) > codec.MAX_QUERY_FILTERS:
        raise ValueError(f"at most {codec.MAX_QUERY_FILTERS} node and state filters each")
    for key, regex in state:
        if len(regex.encode()) > codec.MAX_QUERY_REGEX_BYTES:
            raise ValueError(
                f"state filter {key!r}: regex over {codec.MAX_QUERY_REGEX_BYTES} bytes"
            )
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"state filter {key!r}: bad regex {regex!r}: {exc}") from None
        problem = regex_problem(regex)
        if problem is not None:
            raise ValueError(f"state filter {key!r}: regex {regex!r} refused: {problem}")


QueryFilters = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]
"""`(names, state)` as `Query` carries them."""
_NO_FILTERS: QueryFilters = ((), ())


class Queries:
    """The queries a node has seen, answers, and asked."""

    def __init__(self, core: SwimCore) -> None:
        self._core = core
        self.handlers: dict[str, QueryHandler] = {}
        # (origin, id) -> when we stop recognising copies.
        self._seen: dict[tuple[str, int], float] = {}
        self._ours: dict[int, _Collector] = {}

    def next_deadline(self) -> float:
        """When the earliest of our queries needs attention (its resend or its end)."""
        if not self._ours:
            return math.inf
        return min(min(c.resend_at, c.deadline) for c in self._ours.values())

    def start(
        self,
        kind: str,
        payload: bytes,
        timeout: float | None,
        now: float,
        filters: QueryFilters = _NO_FILTERS,
    ) -> int:
        """Ask every member the filters select (us included); returns the query's id.
        Raises `ValueError` if `kind`, `payload` or the filters break the codec's
        limits."""
        core = self._core
        if not kind or len(kind.encode()) > codec.MAX_QUERY_KIND_BYTES:
            raise ValueError(f"query kind must be 1..{codec.MAX_QUERY_KIND_BYTES} bytes")
        if len(payload) > codec.MAX_QUERY_PAYLOAD:
            raise ValueError(f"query payload over {codec.MAX_QUERY_PAYLOAD} bytes")
        names, state = filters
        check_filters(names, state)
        if timeout is None:
            timeout = default_query_timeout(core.config, core.n_live)
        timeout_ms = min(codec.MAX_QUERY_TIMEOUT_MS, max(1, round(timeout * 1000)))
        query = Query(
            core.rng.getrandbits(63),
            core.name,
            core.address,
            kind,
            payload,
            timeout_ms,
            tuple(names),
            tuple(state),
        )
        expected = frozenset(m.name for m in core.members() if m.is_live and selects(query, m))
        core.stats[counters.QUERIES_STARTED] += 1
        self._ours[query.id] = _Collector(
            query, expected, timeout, now + timeout / 2, now + timeout
        )
        self.receive(query, now)
        return query.id

    def receive(self, query: Query, now: float) -> None:
        """A copy of `query` arrived (or we started it): pass it on and answer it,
        once per query."""
        core = self._core
        key = (query.origin, query.id)
        seen = self._seen
        if key in seen:
            core.stats[counters.QUERIES_DUPLICATE] += 1
            return
        # Copies keep arriving while the query spreads, which takes a few gossip
        # rounds; remember it at least that long even if its timeout is shorter.
        expires = now + max(query.timeout_ms / 1000, _QUERY_MEMORY)
        if len(seen) >= _MAX_SEEN_QUERIES:
            # An authenticated member flooding queries: expire the stale ones, and
            # if that is not enough forget the oldest (dicts keep insertion order).
            for old in [k for k, t in seen.items() if t <= now] or [next(iter(seen))]:
                del seen[old]
        seen[key] = expires
        core.stats[counters.QUERIES_RECEIVED] += 1
        core.broadcasts.queue(("query", *key), codec.encode_message(query))
        if not selects(query, core.local_member):
            core.stats[counters.QUERIES_NOT_SELECTED] += 1
            return
        handler = self.handlers.get(query.kind) or self.handlers.get(FALLBACK_KIND)
        self._reply(query, QueryAck(query.id, core.name, handler is not None))
        if handler is None:
            core.stats[counters.QUERIES_UNHANDLED] += 1
            return
        try:
            payload = handler(query)
        except Exception as exc:
            core.stats[counters.QUERY_HANDLER_ERRORS] += 1
            core.signal_query_handler_failed(query.kind, exc)
            return
        if payload is not None:
            self.answer(query, payload)

    def answer(self, query: Query, payload: bytes) -> None:
        """Answer `query` with `payload`, now or later (a handler that returned None
        may answer afterwards). Raises `ValueError` over the response size limit."""
        core = self._core
        if len(payload) > codec.MAX_QUERY_RESPONSE_PAYLOAD:
            core.stats[counters.QUERY_HANDLER_ERRORS] += 1
            raise ValueError(
                f"query answer is {len(payload)} bytes, over the limit of "
                f"{codec.MAX_QUERY_RESPONSE_PAYLOAD}"
            )
        if query.origin != core.name:
            core.stats[counters.QUERY_RESPONSES_SENT] += 1
        self._reply(query, QueryResponse(query.id, core.name, payload))

    def _reply(self, query: Query, message: QueryAck | QueryResponse) -> None:
        core = self._core
        if query.origin == core.name:
            # Our own query: no need for a round trip through the network.
            self._collect(message)
        else:
            core.send(query.origin_address, [codec.encode_message(message)])

    def _collect(self, message: QueryAck | QueryResponse) -> None:
        collector = self._ours.get(message.id)
        if collector is None:
            self._core.stats[counters.QUERY_RESPONSES_LATE] += 1  # or forged, or duplicated
            return
        # The first ack and answer from a member count (a second one could only come
        # from a duplicate or a restart under the same name).
        if isinstance(message, QueryAck):
            if message.sender in collector.acks:
                return
            collector.acks.add(message.sender)
            if not message.answering:
                collector.silent.add(message.sender)
            progress = QueryProgress(message.id, message.sender, None, message.answering)
        else:
            if message.sender in collector.responses:
                return
            collector.responses[message.sender] = message.payload
            collector.acks.add(message.sender)  # an answer says it got the query
            progress = QueryProgress(message.id, message.sender, message.payload)
        self._core.signal_query_progress(progress)
        if collector.complete:
            self._finish(collector)

    def response(self, message: QueryAck | QueryResponse) -> None:
        """An ack or an answer to a query arrived."""
        self._collect(message)

    def run_timers(self, now: float) -> None:
        """Resend our queries that are halfway through, end those that are due."""
        for collector in list(self._ours.values()):
            if now >= collector.deadline:
                self._finish(collector)
            elif now >= collector.resend_at:
                collector.resend_at = math.inf
                self._resend(collector)

    def _resend(self, collector: _Collector) -> None:
        # Epidemic spread reaches everyone only with high probability, and in a
        # small cluster the retransmit limit is small, so the origin makes sure. A
        # member that had it already recognises the id and ignores it.
        core = self._core
        data = codec.encode_message(collector.query)
        for name in sorted(collector.expected - collector.responses.keys() - collector.silent):
            member = core.member(name)
            if member is not None and member.is_live and name != core.name:
                core.stats[counters.QUERIES_RESENT] += 1
                core.send(member.address, [data])

    def _finish(self, collector: _Collector) -> None:
        del self._ours[collector.query.id]
        self._core.signal_query_finished(collector.result())
