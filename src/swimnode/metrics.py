"""Prometheus metrics for a swimnode node: a collector over its `stats()` and
`members()`, for a node of any flavour (Trio, asyncio, threads) or the agent.

It needs `prometheus_client` (`pip install 'swimnode[metrics]'`); nothing else in
swimnode imports this module, so a node or agent without metrics never loads it.

    from prometheus_client import REGISTRY, start_http_server
    from swimnode.metrics import SwimCollector

    REGISTRY.register(SwimCollector(node))
    start_http_server(9100)

Every metric name is derived from the declarations in `swimnode.counters` (see
`COUNTER_SERIES`): a counter `probes` is `swimnode_probes_total`; the per-type and
per-reason counters become one family with a label (`sent_ping` is
`swimnode_messages_sent_total{type="ping"}`, `dropped_malformed` is
`swimnode_dropped_packets_total{reason="malformed"}`); the gauges of
`counters.GAUGES` keep their names (`swimnode_awareness`). docs/metrics.md lists
them all. Reading is safe from the HTTP server's thread: `stats()` and `members()`
return copies.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

# The submodules, not the package's `__init__`, which would load its HTTP
# exposition too (the agent defers it: agent/httpmetrics.py).
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import counters
from .protocol.codec import MESSAGE_NAMES
from .protocol.events import Event, MemberAlive, MemberFailed, MemberSuspected
from .protocol.member import Member, MemberState

PREFIX = "swimnode_"


class MetricsSource(Protocol):
    """What the collector reads: a node (`node.stats()`, `node.members()`) or the
    agent, whose `stats()` adds its transport's and security layer's counters."""

    def stats(self) -> Mapping[str, int]:
        """Counters and gauges by their `swimnode.counters` names."""
        ...

    def members(self) -> Iterable[Member]:
        """Every known member, this node included."""
        ...


@dataclass(frozen=True, slots=True)
class Series:
    """Where one `stats()` counter goes: a counter family, maybe with a label."""

    family: str
    """Prometheus name without `_total` (the exposition adds it)."""
    help: str
    group: str
    """The `counters` family it belongs to (`core`, `transport`, `security`,
    `agent`): a group's series are exported, zero when absent, once any of its
    counters is reported, so rates work from the first scrape."""
    label: tuple[str, str] | None = None


# A few names read better in Prometheus' units-last convention.
_RENAMED = {counters.BYTES_SENT: "sent_bytes", counters.BYTES_RECEIVED: "received_bytes"}
_DROPPED = "dropped_"
_PER_TYPE = (
    (counters.sent_key, "messages_sent", "Messages sent, by type."),
    (counters.sent_bytes_key, "message_sent_bytes", "Bytes of the messages sent, by type."),
    (counters.received_key, "messages_received", "Messages received, by type."),
    (
        counters.received_bytes_key,
        "message_received_bytes",
        "Bytes of the messages received, by type.",
    ),
)


_PROBE_RTT = frozenset((*counters.PROBE_RTT_BUCKETS, counters.PROBE_RTT_SUM_US))
"""Core counters that make up the probe round-trip histogram rather than series."""


def _counter_series() -> dict[str, Series]:
    out: dict[str, Series] = {}
    for name, help in counters.CORE.items():
        if name in _PROBE_RTT:
            continue
        if name.startswith(_DROPPED):
            reason = ("reason", name.removeprefix(_DROPPED))
            out[name] = Series(
                PREFIX + "dropped_packets",
                "Packets the protocol dropped, by reason.",
                "core",
                reason,
            )
        else:
            out[name] = Series(PREFIX + _RENAMED.get(name, name), help, "core")
    for key_of, family, help in _PER_TYPE:
        for message in MESSAGE_NAMES.values():
            out[key_of(message)] = Series(PREFIX + family, help, "core", ("type", message))
    for name, help in counters.TRANSPORT.items():
        out[counters.TRANSPORT_PREFIX + name] = Series(
            PREFIX + "transport_" + name, help, "transport"
        )
    for name, help in counters.SECURITY.items():
        key = counters.SECURITY_PREFIX + name
        if name in counters.SECURITY_DROP_REASONS:
            reason = ("reason", name.removeprefix(_DROPPED))
            out[key] = Series(
                PREFIX + "security_rejections",
                "Packets the security layer refused, by reason.",
                "security",
                reason,
            )
        else:
            out[key] = Series(PREFIX + "security_" + name, help, "security")
    for name, help in counters.AGENT.items():
        out[name] = Series(PREFIX + name, help, "agent")
    return out


COUNTER_SERIES: Mapping[str, Series] = _counter_series()
"""Every declared counter's `stats()` key -> its Prometheus series."""
GAUGE_NAMES: Mapping[str, str] = {name: PREFIX + name for name in counters.GAUGES}
"""Every declared gauge's `stats()` key -> its Prometheus name."""
MEMBERS = PREFIX + "members"
PROBE_RTT = PREFIX + "probe_rtt_seconds"
SUSPICION_RESOLUTION = PREFIX + "suspicion_resolution_seconds"
SUSPICION_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
"""Upper bounds (s): the `local` profile settles a suspicion in about a second, `lan`
in 4 to 24 s, `wan` in up to two minutes."""


class _Histogram:
    """Observations bucketed on `SUSPICION_BUCKETS` (non-cumulative counts)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(SUSPICION_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(SUSPICION_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [*(f"{b:g}" for b in SUSPICION_BUCKETS), "+Inf"]
        cumulative, out = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            cumulative += count
            out.append((bound, float(cumulative)))
        return out


def _probe_rtt(stats: Mapping[str, int]) -> HistogramMetricFamily:
    """The probe round-trip histogram, from the core's bucket counters."""
    family = HistogramMetricFamily(
        PROBE_RTT, "Round trip of direct probes acked before the probe timeout."
    )
    bounds = [*(f"{ms / 1000:g}" for ms in counters.PROBE_RTT_BOUNDS_MS), "+Inf"]
    cumulative, buckets = 0, []
    for bound, key in zip(bounds, counters.PROBE_RTT_BUCKETS, strict=True):
        cumulative += stats.get(key, 0)
        buckets.append((bound, float(cumulative)))
    family.add_metric([], buckets, stats.get(counters.PROBE_RTT_SUM_US, 0) / 1_000_000)
    return family


class SwimCollector(Collector):
    """A Prometheus collector for one node: every declared counter and gauge, members
    by state, and, for the events handed to `observe`, how long suspicions lasted.

    Register it with a `prometheus_client` registry; each scrape reads
    `source.stats()` and `source.members()` once.
    """

    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self._suspected_at: dict[str, float] = {}
        self._resolved = {"dead": _Histogram(), "refuted": _Histogram()}

    def observe(self, event: Event) -> None:
        """Feed one membership event (from `node.events()`): a suspicion's end, by
        death or refutation, is timed from its start on the node's clock."""
        if isinstance(event, MemberSuspected):
            self._suspected_at.setdefault(event.member.name, event.member.state_changed_at)
            return
        member = getattr(event, "member", None)
        if member is None:
            return
        started = self._suspected_at.pop(member.name, None)
        if started is None:
            return
        if isinstance(event, MemberFailed):
            self._resolved["dead"].observe(member.state_changed_at - started)
        elif isinstance(event, MemberAlive):
            self._resolved["refuted"].observe(member.state_changed_at - started)

    def describe(self) -> Iterable[Metric]:
        """The families without reading the node (it may not run yet)."""
        return list(self._families({}, (), every_group=True))

    def collect(self) -> Iterable[Metric]:
        """Read the node once and return every family."""
        return list(self._families(self._source.stats(), self._source.members()))

    def _families(
        self, stats: Mapping[str, int], members: Iterable[Member], *, every_group: bool = False
    ) -> Iterator[Metric]:
        groups = {s.group for key in stats if (s := COUNTER_SERIES.get(key)) is not None}
        families: dict[str, CounterMetricFamily] = {}
        for key, series in COUNTER_SERIES.items():
            if not every_group and series.group not in groups:
                continue
            family = families.get(series.family)
            if family is None:
                labels = [series.label[0]] if series.label else []
                family = families[series.family] = CounterMetricFamily(
                    series.family, series.help, labels=labels
                )
            value = stats.get(key, 0)
            family.add_metric([series.label[1]] if series.label else [], value)
        yield from families.values()
        for key, name in GAUGE_NAMES.items():
            gauge = GaugeMetricFamily(name, counters.GAUGES[key])
            if key in stats:
                gauge.add_metric([], stats[key])
            yield gauge
        by_state = GaugeMetricFamily(MEMBERS, "Known members, by state.", labels=["state"])
        counts = dict.fromkeys(MemberState, 0)
        for m in members:
            counts[m.state] += 1
        for state, count in counts.items():
            by_state.add_metric([state.label], count)
        yield by_state
        yield _probe_rtt(stats)
        histogram = HistogramMetricFamily(
            SUSPICION_RESOLUTION,
            "Time from a member's suspicion to its death or refutation, as seen here.",
            labels=["outcome"],
        )
        for outcome, h in self._resolved.items():
            histogram.add_metric([outcome], h.buckets(), h.total)
        yield histogram
