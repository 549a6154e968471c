"""Prometheus metrics: names derived from `swimnode.counters`, the collector over a
simulated cluster (MockClock), the `/metrics` endpoint's HTTP answers, and a live
agent scraped with a real HTTP client through a crash and a garbage flood."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from swimnode import counters
from swimnode.agent.httpmetrics import MAX_REQUEST_HEAD, render_text, respond
from swimnode.metrics import (
    COUNTER_SERIES,
    GAUGE_NAMES,
    PROBE_RTT,
    SUSPICION_RESOLUTION,
    SwimCollector,
)
from swimnode.node import Node
from swimnode.protocol.codec import MESSAGE_NAMES
from swimnode.testing import open_sim_cluster
from swimnode.testing.processes import LocalCluster, free_ports, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
STEP = 15.0
CLI = [sys.executable, "-m", "swimnode"]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels), via the official parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# ----- names ------------------------------------------------------------------------


def test_every_declared_counter_has_one_conventional_series() -> None:
    declared = {
        *counters.CORE,
        *counters.AGENT,
        *(counters.TRANSPORT_PREFIX + n for n in counters.TRANSPORT),
        *(counters.SECURITY_PREFIX + n for n in counters.SECURITY),
        *(
            key(m)
            for m in MESSAGE_NAMES.values()
            for key in (
                counters.sent_key,
                counters.sent_bytes_key,
                counters.received_key,
                counters.received_bytes_key,
            )
        ),
    }
    rtt = {*counters.PROBE_RTT_BUCKETS, counters.PROBE_RTT_SUM_US}
    assert set(COUNTER_SERIES) == declared - rtt
    assert set(GAUGE_NAMES) == set(counters.GAUGES)
    # No two counters share a series, and every name follows Prometheus' conventions.
    places = [(s.family, s.label) for s in COUNTER_SERIES.values()]
    assert len(set(places)) == len(places)
    for name in {s.family for s in COUNTER_SERIES.values()} | set(GAUGE_NAMES.values()):
        assert re.fullmatch(r"swimnode_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert not name.endswith("_total"), name
    assert COUNTER_SERIES["dropped_malformed"].label == ("reason", "malformed")
    assert COUNTER_SERIES["sent_ping"].family == "swimnode_messages_sent"
    assert COUNTER_SERIES["security_dropped_auth"].family == "swimnode_security_rejections"
    assert COUNTER_SERIES["bytes_sent"].family == "swimnode_sent_bytes"


# ----- the collector on a simulated cluster ------------------------------------------


def state_of(node: Node, name: str) -> str | None:
    return {m.name: m.state.label for m in node.members()}.get(name)


async def test_collector_follows_a_crash(mock_clock: trio.testing.MockClock) -> None:
    # Two members, so the survivor declares the death itself.
    async with open_sim_cluster(2, seed=7) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=30) is not None
        node = cluster.nodes["n0"]
        collector = SwimCollector(node)
        registry = CollectorRegistry()
        registry.register(collector)
        events = node.events()

        async def observe() -> None:
            async for event in events:
                collector.observe(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(observe)
            await trio.sleep(10)  # a few probe periods, acked
            before = parse(generate_latest(registry).decode())
            cluster.crash("n1")
            assert await cluster.wait_for(lambda: state_of(node, "n1") == "dead", 60) is not None
            await trio.lowlevel.checkpoint()
            after = parse(generate_latest(registry).decode())
            # The agent's own rendering is prometheus_client's, byte for byte.
            assert render_text(registry) == generate_latest(registry)
            nursery.cancel_scope.cancel()

    assert value(before, "swimnode_members", state="alive") == 2
    assert value(before, "swimnode_members", state="dead") == 0
    assert value(after, "swimnode_members", state="alive") == 1
    assert value(after, "swimnode_members", state="dead") == 1
    assert value(before, "swimnode_deaths_declared_total") == 0
    assert value(after, "swimnode_deaths_declared_total") == 1
    assert value(after, "swimnode_probes_total") > value(before, "swimnode_probes_total")
    assert value(after, "swimnode_messages_sent_total", type="ping") > 0
    # Probes acked before the crash, each within the simulated link's few milliseconds.
    acked = value(before, PROBE_RTT + "_count")
    assert acked >= 5
    assert value(before, PROBE_RTT + "_bucket", le="0.025") == acked
    assert 0 < value(before, PROBE_RTT + "_sum") / acked < 0.025
    assert value(before, "swimnode_dropped_packets_total", reason="malformed") == 0
    assert value(after, "swimnode_awareness") >= 0
    # n0 saw n1 suspected, then dead: one suspicion timed to its end.
    count = value(after, SUSPICION_RESOLUTION + "_count", outcome="dead")
    assert count == 1
    assert value(after, SUSPICION_RESOLUTION + "_bucket", outcome="dead", le="+Inf") == 1
    assert value(after, SUSPICION_RESOLUTION + "_count", outcome="refuted") == 0
    # A library node has no transport or agent counters to report.
    assert not any(name.startswith("swimnode_transport_") for name, _ in after)


def test_render_text_escapes_as_prometheus_client_does() -> None:
    class Odd(Collector):
        def collect(self) -> Iterator[Metric]:
            family = CounterMetricFamily("odd", 'help with \\ and\na "quote"', labels=["v"])
            family.add_metric(['back\\slash "quoted"\nnewline'], 1.5)
            family.add_metric(["plain"], float("inf"))
            yield family
            gauge = GaugeMetricFamily("big", "")
            gauge.add_metric([], 1e21)
            yield gauge

    registry = CollectorRegistry()
    registry.register(Odd())
    assert render_text(registry) == generate_latest(registry)


def test_describe_needs_no_running_node() -> None:
    class NotRunning:
        def stats(self) -> dict[str, int]:
            raise AssertionError("read at registration")

        def members(self) -> list[object]:
            raise AssertionError("read at registration")

    registry = CollectorRegistry()  # auto_describe: registering calls describe()
    registry.register(SwimCollector(NotRunning()))  # type: ignore[arg-type]


# ----- the HTTP endpoint (pure) ------------------------------------------------------


def test_http_answers() -> None:
    def render() -> bytes:
        return b"swimnode_up 1\n"

    ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", render)
    assert ok.startswith(b"HTTP/1.0 200 OK\r\n") and ok.endswith(b"\r\n\r\nswimnode_up 1\n")
    assert b"Content-Length: 14\r\n" in ok
    head = respond(b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n", render)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert respond(b"GET / HTTP/1.0\r\n\r\n", render).startswith(b"HTTP/1.0 200 ")
    assert respond(b"GET /nope HTTP/1.0\r\n\r\n", render).startswith(b"HTTP/1.0 404 ")
    assert respond(b"POST /metrics HTTP/1.0\r\n\r\n", render).startswith(b"HTTP/1.0 405 ")
    assert respond(b"\xff\xfe garbage\r\n\r\n", render).startswith(b"HTTP/1.0 400 ")
    assert MAX_REQUEST_HEAD >= 4096


# ----- a live agent --------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(profile="local", log_dir=tmp_path) as c:
        yield c


def scrape(port: int, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return parse(reply.read().decode())


def flood(port: int, minimum: int, started: threading.Event, stop: threading.Event) -> int:
    """Send garbage datagrams to `port` until `stop` is set and at least `minimum`
    went out (bounded at 60 s); returns how many."""
    sent = 0
    deadline = time.monotonic() + 60
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        # 0xc1 is never used by msgpack, so no datagram can decode by accident.
        payload = b"\xc1" + bytes(range(64))
        while (sent < minimum or not stop.is_set()) and time.monotonic() < deadline:
            try:
                s.sendto(payload, ("127.0.0.1", port))
            except BlockingIOError:
                time.sleep(0.001)
                continue
            sent += 1
            if sent == 1000:
                started.set()
    return sent


def test_live_agent_metrics_through_a_crash_and_a_flood(cluster: LocalCluster) -> None:
    [metrics_port] = free_ports(1)
    # Two agents, so the survivor declares the death itself.
    seed = cluster.start("m0", args=["--metrics", f"127.0.0.1:{metrics_port}"])
    assert seed.wait_ready(STEP)
    victim = cluster.start("m1", seeds=[seed])
    assert wait_for(lambda: cluster.converged(["m0", "m1"]), STEP)

    def after_an_acked_probe() -> Samples | None:
        got = scrape(metrics_port)
        return got if value(got, PROBE_RTT + "_count") >= 1 else None

    before = wait_for(after_an_acked_probe, STEP, step=0.2)
    assert before is not None, "no probe was acked"
    assert value(before, "swimnode_members", state="alive") == 2
    assert value(before, "swimnode_members", state="dead") == 0
    assert value(before, "swimnode_transport_receive_overflow_total") >= 0
    assert value(before, "swimnode_events_lost_total") == 0
    assert value(before, PROBE_RTT + "_sum") > 0
    assert ("process_resident_memory_bytes", ()) in before
    # Serving metrics loads no HTTP library and so no OpenSSL (docs/metrics.md).
    maps = Path(f"/proc/{seed.proc.pid}/maps").read_text()
    assert "libssl" not in maps and "libcrypto" not in maps

    victim.kill()
    assert wait_for(lambda: cluster.all_see("m1", "dead", [seed]), STEP)
    after = scrape(metrics_port)
    assert value(after, "swimnode_members", state="dead") == 1
    assert value(after, "swimnode_members", state="alive") == 1
    assert value(before, "swimnode_deaths_declared_total") == 0
    assert value(after, "swimnode_deaths_declared_total") == 1
    assert value(after, SUSPICION_RESOLUTION + "_count", outcome="dead") == 1

    # 100,000 garbage datagrams: the flood goes on until three scrapes have been
    # answered, so they were answered during it.
    started, stop = threading.Event(), threading.Event()
    result: list[int] = []
    sender = threading.Thread(
        target=lambda: result.append(flood(seed.port, 100_000, started, stop)), daemon=True
    )
    sender.start()
    try:
        assert started.wait(STEP)
        during = [scrape(metrics_port) for _ in range(3)]
    finally:
        stop.set()
        sender.join(70)
    assert result and result[0] >= 100_000
    assert all(value(d, "swimnode_members", state="alive") == 1 for d in during)

    def malformed() -> float | None:
        got = value(scrape(metrics_port), "swimnode_dropped_packets_total", reason="malformed")
        return got if got > 0 else None

    assert wait_for(malformed, STEP, step=0.2)
    assert seed.running and seed.view() == {"m0": "alive", "m1": "dead"}


def test_metrics_flag_errors(tmp_path: Path) -> None:
    rpc, port = free_ports(2)
    base = [*CLI, "agent", "--rpc", f"127.0.0.1:{rpc}", "--bind", f"127.0.0.1:{port}"]
    bad = subprocess.run(
        [*base, "--metrics", "nowhere"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "swimnode agent: bad metrics address: missing port in address 'nowhere' "
        "(HOST:PORT, or [IPv6]:PORT)"
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        done = subprocess.run(
            [*base, "--metrics", f"127.0.0.1:{taken}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"swimnode agent: cannot bind metrics endpoint 127.0.0.1:{taken}: address already in use"
    ]


def test_prometheus_client_is_loaded_only_for_metrics() -> None:
    code = """
import contextlib, io, json, socket, sys
from swimnode.agent import cli

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
    busy.bind(("127.0.0.1", 0))
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        first = cli.main(["agent", "--bind", taken, "--rpc", "127.0.0.1:0"])
        loaded = "prometheus_client" in sys.modules
        if sys.argv[1] == "missing":
            sys.modules["prometheus_client"] = None
        second = cli.main(["agent", "--bind", taken, "--rpc", "127.0.0.1:0",
                           "--metrics", "127.0.0.1:0"])
print(json.dumps({"codes": [first, second], "loaded_without": loaded,
                  "loaded_with": bool(sys.modules.get("prometheus_client")),
                  "error": err.getvalue().strip().splitlines()}))
"""
    results = {}
    for case in ("present", "missing"):
        done = subprocess.run(
            [sys.executable, "-c", code, case],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        results[case] = json.loads(done.stdout.splitlines()[-1])
    present, missing = results["present"], results["missing"]
    # Without --metrics the agent never imports prometheus_client; with it, it does
    # (and then fails on the busy gossip port, exit 1).
    assert present["codes"] == [1, 1]
    assert (present["loaded_without"], present["loaded_with"]) == (False, True)
    # Without the package, --metrics is a one-line usage error naming the extra.
    assert missing["codes"] == [1, 2]
    assert missing["error"][-1] == (
        "swimnode agent: --metrics needs the prometheus_client package: "
        "pip install 'swimnode[metrics]'"
    )


def test_docs_list_every_metric() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()

    class Idle:
        def stats(self) -> dict[str, int]:
            return {}

        def members(self) -> list[object]:
            return []

    for family in SwimCollector(Idle()).describe():  # type: ignore[arg-type]
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in doc, name
