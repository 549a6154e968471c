"""Cluster-wide queries: the shell's side of `Query` / `QueryResponse`.

A query is a question for every member (Serf's queries, reduced to what key
management needs). The protocol core disseminates it like membership news and hands
each member a copy once; this module holds what the Trio shell (`Node`) needs on top:
the handler type, the default timeout, and the collector that gathers answers at the
origin until every member that was live when the query started has answered, or the
timeout passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .config import Config
from .messages import Query

QueryHandler = Callable[[Query], bytes | None]
"""Answers one query: the response payload, or None to stay silent. It runs inside
the node's receive path, so it must be quick and must not block; an exception it
raises is logged and counted (``query_handler_errors``) and nothing is answered."""


def default_query_timeout(config: Config, n_live: int) -> float:
    """Serf's default: `gossip_interval * query_timeout_mult * ceil(log10(N + 1))`,
    long enough for the query to reach everyone through gossip and the answers to
    come back (dissemination takes O(log N) rounds)."""
    return (
        config.gossip_interval
        * config.query_timeout_mult
        * max(1, math.ceil(math.log10(n_live + 1)))
    )


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

    @property
    def missing(self) -> list[str]:
        """Expected members that did not answer in time, sorted."""
        return sorted(self.expected - self.responses.keys())


@dataclass(slots=True)
class QueryCollector:
    """Responses to one query in flight; `done` is set once every expected member
    answered, so the origin need not wait out the whole timeout."""

    query: Query
    expected: frozenset[str]
    responses: dict[str, bytes] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)

    def add(self, sender: str, payload: bytes) -> None:
        """Record one answer; the first answer from a member counts (a second one
        could only come from a duplicate or a restart under the same name)."""
        self.responses.setdefault(sender, payload)
        if self.expected <= self.responses.keys():
            self.done.set()

    def result(self, timeout: float) -> QueryResult:
        """The answers gathered so far."""
        return QueryResult(
            self.query.id, self.query.kind, self.expected, dict(self.responses), timeout
        )
