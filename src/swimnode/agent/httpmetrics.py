"""The agent's `/metrics` endpoint (`agent --metrics HOST:PORT`): a small HTTP/1.0
server on Trio that answers Prometheus' scrapes.

It runs in the agent's own Trio loop rather than `prometheus_client`'s server
thread: that thread wakes twice a second even when nobody scrapes (an idle agent
should not), and reading the node from the loop that changes it needs no lock. Only
`GET` and `HEAD` of `/metrics` (and `/`) are served; anything else gets a short
error status. A slow or silent client is cut off after a few seconds, and a few
scrapes at a time are served, so the endpoint cannot tie up the agent.

The page is written by `render_text`, not by `prometheus_client.exposition`, which
imports an HTTP server and client and with them `ssl` and OpenSSL: 5.9 MiB of an
idle agent's 30 (docs/metrics.md, "Footprint"). Only `prometheus_client`'s
registry, metric families, process collector and number formatting are loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable

import trio
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..metrics import MetricsSource, SwimCollector
from ..protocol.events import Event

MAX_REQUEST_HEAD = 8192
"""Longest request line plus headers read; a longer one gets 431."""
_CLIENT_TIMEOUT = 5.0
_MAX_CLIENTS = 8
_TEXT = "text/plain; charset=utf-8"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format `render_text` writes."""
_number: Callable[[float], str] = floatToGoString  # (untyped upstream)


def render_text(registry: CollectorRegistry) -> bytes:
    """`registry`'s metrics in the Prometheus text format (0.0.4), byte for byte
    as `prometheus_client.exposition.generate_latest` writes the types exported
    here (counters, gauges and histograms, without created timestamps)."""
    out = []
    for metric in registry.collect():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        help = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help}\n# TYPE {name} {metric.type}\n")
        for sample in metric.samples:
            labels = ",".join(
                f'{key}="{_escape_label(value)}"' for key, value in sorted(sample.labels.items())
            )
            braced = f"{{{labels}}}" if labels else ""
            out.append(f"{sample.name}{braced} {_number(sample.value)}\n")
    return "".join(out).encode()


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def respond(head: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP response to a request whose head (request line and headers) is
    `head`; `render()` gives the metrics page."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, "Bad Request", _TEXT, b"bad request line\n")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response(405, "Method Not Allowed", _TEXT, b"only GET and HEAD\n")
    path = target.split("?", 1)[0]
    if path == "/metrics":
        body = render()
        status = (200, "OK", CONTENT_TYPE)
    elif path == "/":
        body = b"swimnode agent: metrics at /metrics\n"
        status = (200, "OK", _TEXT)
    else:
        return _response(404, "Not Found", _TEXT, b"not found; try /metrics\n")
    return _response(*status, body, head_only=method == "HEAD")


def _response(
    code: int, reason: str, content_type: str, body: bytes, *, head_only: bool = False
) -> bytes:
    header = (
        f"HTTP/1.0 {code} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return header if head_only else header + body


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head, None if the client left first; `b""` if it is too long."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_REQUEST_HEAD:
            return b""
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    return data


async def serve_metrics(listener: trio.SocketListener, render: Callable[[], bytes]) -> None:
    """Answer scrapes on `listener` until cancelled."""
    limiter = trio.CapacityLimiter(_MAX_CLIENTS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            # A client that goes away, or never finishes its request, gets nothing.
            with (
                trio.move_on_after(_CLIENT_TIMEOUT),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                head = await _read_head(stream)
                if head is None:
                    return
                if head == b"":
                    reply = _response(431, "Request Header Fields Too Large", _TEXT, b"")
                else:
                    reply = respond(head, render)
                await stream.send_all(reply)

    await trio.serve_listeners(handle, [listener])


async def export(
    source: MetricsSource, listener: trio.SocketListener, events: AsyncIterable[Event]
) -> None:
    """Serve `source`'s metrics (`SwimCollector`, plus the process's CPU, memory and
    file descriptors) on `listener`, timing suspicions from `events`, until cancelled."""
    registry = CollectorRegistry(auto_describe=False)
    collector = SwimCollector(source)
    registry.register(collector)
    ProcessCollector(registry=registry)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_metrics, listener, lambda: render_text(registry))
        async for event in events:
            collector.observe(event)
