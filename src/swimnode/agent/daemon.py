"""`python -m swimnode agent`: a long-running cluster member with a local RPC endpoint.

The agent binds its RPC endpoint and its UDP+TCP port before joining, so a busy port
is reported before the cluster hears of it; logs one line per membership change; and
on SIGINT or SIGTERM (or the `leave` RPC) leaves gracefully and exits 0. A second
signal during the leave stops at once.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .. import counters
from ..eventhub import EventStream
from ..net.keyring import Keyring, load_key_file, parse_key
from ..net.security import SecureTransport
from ..net.seeds import (
    CombinedSeeds,
    DnsSeeds,
    FileSeeds,
    SeedSource,
    SeedSourceError,
    StaticSeeds,
)
from ..net.transport import Address, format_address
from ..net.udp import UdpTransport, open_udp_transport
from ..node import Node, open_node, secure
from ..protocol.events import EventsLost, MemberUpdated, UserEvent
from ..protocol.member import Member
from ..protocol.messages import Query
from ..protocol.queries import FALLBACK_KIND, QueryFilters, QueryProgress, QueryResult
from . import rpc
from .handlers import HandlerError, check_command
from .handlers import describe as describe_handlers
from .info import agent_info
from .keyqueries import KeyQueryError, register_key_handlers, run_key_query
from .settings import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    AgentSettings,
    UsageError,
)

if TYPE_CHECKING:
    from .handlerrunner import HandlerRunner

log = logging.getLogger("swimnode.agent")

# A leave normally finishes within the node's own leave_timeout; this margin covers
# the final flush and closing sockets, so a stuck peer cannot hold the exit forever.
_LEAVE_MARGIN = 2.0


class Agent:
    """The running agent as the RPC server sees it (`rpc.Controlled`)."""

    def __init__(
        self,
        node: Node,
        transport: UdpTransport,
        settings: AgentSettings,
        *,
        security: SecureTransport | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.node = node
        self.transport = transport
        self.settings = settings
        self.security = security
        """The security layer over `transport`, when keys or a label are set."""
        self.keyring = keyring
        self.metrics_address: Address | None = None
        """Where `/metrics` is served, once bound (`--metrics`)."""
        self.events_lost = 0
        """Membership events this agent's log or handlers missed."""
        self.exit_requested = trio.Event()
        self._leave_done: trio.Event | None = None
        self._started = time.monotonic()

    @property
    def name(self) -> str:
        """The local member's name."""
        return self.node.name

    def members(self) -> list[Member]:
        """Every member the node knows, sorted by name."""
        return sorted(self.node.members(), key=lambda m: m.name)

    def set_state(self, key: str, value: Any) -> None:
        """Set one key of our application state (`ValueError` if not allowed)."""
        self.node.set_state(key, value)

    def delete_state(self, key: str) -> bool:
        """Delete one key of our application state; false if it was not set."""
        return self.node.delete_state(key)

    def stats(self) -> dict[str, int]:
        """The node's protocol counters plus the transport's, prefixed `transport_`,
        and the security layer's, prefixed `security_` (zero without one)."""
        out = dict.fromkeys(counters.ALWAYS_REPORTED, 0)
        out.update(self.node.stats())
        out[counters.EVENTS_LOST] = self.events_lost
        out.update({counters.TRANSPORT_PREFIX + k: v for k, v in self.transport.stats.items()})
        if self.security is not None:
            out.update({counters.SECURITY_PREFIX + k: v for k, v in self.security.stats.items()})
        return dict(sorted(out.items()))

    def info(self) -> dict[str, Any]:
        """The `info` report (`info.agent_info`): key fingerprints, never keys."""
        return agent_info(
            config=self.node.config,
            profile=self.settings.profile,
            bind=self.transport.local_address,
            rpc=self.settings.rpc,
            metrics=self.metrics_address,
            fingerprints=self.keyring.fingerprints if self.keyring is not None else [],
            members=self.node.members(),
            uptime=time.monotonic() - self._started,
            overridden=[name for name, _ in self.settings.protocol],
        )

    async def keys(self, action: str, key: str | None, timeout: float | None) -> dict[str, Any]:  # noqa: ASYNC109
        """Run a cluster-wide key query (`keyqueries.run_key_query`) and return its
        report as a dict. Raises `ValueError` with a one-line message that never
        contains key text."""
        raw = parse_key(key) if key is not None else None
        try:
            report = await run_key_query(self.node, self.keyring, action, raw, timeout=timeout)
        except KeyQueryError as exc:
            raise ValueError(str(exc)) from None
        fields: dict[str, Any] = {
            "event": "keys",
            "action": action,
            "key": report.key,
            "answered": len(report.answers),
            "nodes": len(report.expected),
            "failed": report.failed,
        }
        log.info(
            "keys %s%s: %d of %d members answered, %d failed",
            action,
            f" {report.key}" if report.key else "",
            len(report.answers),
            len(report.expected),
            len(report.failed),
            extra={"fields": fields},
        )
        return report.to_dict()

    def events(self) -> EventStream:
        """A new subscription to the node's membership events."""
        return self.node.events()

    async def leave(self) -> None:
        """Leave gracefully, once; concurrent callers wait for the same leave."""
        if self._leave_done is not None:
            await self._leave_done.wait()
            return
        self._leave_done = trio.Event()
        log.info("leaving the cluster", extra={"fields": {"event": "leaving"}})
        try:
            with trio.move_on_after(self.node.config.leave_timeout + _LEAVE_MARGIN):
                await self.node.leave()
        finally:
            self._leave_done.set()

    async def query(
        self,
        kind: str,
        payload: bytes,
        filters: QueryFilters,
        timeout: float | None,  # noqa: ASYNC109
        on_progress: Callable[[QueryProgress], object],
    ) -> QueryResult:
        """Ask the members the `(names, state)` filters select; `on_progress` sees
        each ack and answer as it comes. `ValueError` (one line) if refused."""
        names, state = filters
        return await self.node.query(
            kind, payload, timeout=timeout, names=names, state=state, on_progress=on_progress
        )

    def send_event(self, name: str, payload: bytes, coalesce: bool) -> int:
        """Send a user event to every member; returns its Lamport time. `ValueError`
        (one line) over the size or rate limits."""
        return self.node.send_event(name, payload, coalesce=coalesce)

    def count_lost(self, count: int) -> None:
        """Count membership events the log or the handlers missed (`events_lost`)."""
        self.events_lost += count

    async def run_handlers(self, runner: HandlerRunner, events: EventStream) -> None:
        """Run the event handlers for every membership event, until the node stops."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            async for event in events:
                runner.submit_event(event)
            nursery.cancel_scope.cancel()

    def request_exit(self) -> None:
        """Ask `run_agent` to return."""
        self.exit_requested.set()

    async def log_events(self, events: EventStream) -> None:
        """One log line per membership change, until the node stops."""
        async for event in events:
            if isinstance(event, EventsLost):
                self.count_lost(event.count)
                log.warning(
                    "missed %d membership events (logging fell behind)",
                    event.count,
                    extra={"fields": {"event": "events_lost", "count": event.count}},
                )
                continue
            if isinstance(event, UserEvent):
                _log_user_event(event)
                continue
            m = event.member
            address = format_address(m.address)
            fields: dict[str, Any] = {
                "event": event.kind,
                "name": m.name,
                "address": address,
                "state": m.state.label,
                "incarnation": m.incarnation,
            }
            keys = ""
            if isinstance(event, MemberUpdated) and event.changed_keys:
                fields["changed_keys"] = sorted(event.changed_keys)
                keys = f", keys {', '.join(fields['changed_keys'])}"
            log.info(
                "member %s %s (%s, incarnation %d%s)",
                m.name,
                event.kind,
                address,
                m.incarnation,
                keys,
                extra={"fields": fields},
            )

    async def leave_on_signal(self) -> None:
        """Leave and exit on the first SIGINT or SIGTERM."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                break
        # The receiver is closed now, so a second Ctrl-C interrupts a slow leave.
        await self.leave()
        self.request_exit()


def _log_user_event(event: UserEvent) -> None:
    fields = {
        "event": "user",
        "name": event.name,
        "sender": event.member.name,
        "ltime": event.ltime,
        "bytes": len(event.payload),
    }
    log.info(
        "user event %s from %s (Lamport time %d, %d bytes)",
        event.name,
        event.member.name,
        event.ltime,
        len(event.payload),
        extra={"fields": fields},
    )


class LoggedSeeds(SeedSource):
    """The agent's seed sources: `--seed` addresses, `--seed-file`s and `--seed-dns`
    names combined, logging each failing source as a warning (a combination fails
    only when every source does, which would hide a typo in one file name)."""

    def __init__(self, settings: AgentSettings) -> None:
        sources: list[SeedSource] = []
        if settings.seeds:
            sources.append(StaticSeeds(settings.seeds))
        sources += [FileSeeds(path) for path in settings.seed_files]
        sources += [DnsSeeds(host, port) for host, port in settings.seed_dns]
        self.combined = CombinedSeeds(sources)

    async def resolve(self) -> list[Address]:
        """Every source's addresses; see `CombinedSeeds.resolve`. When every source
        fails, the error names each failure (the node logs it and keeps its last
        good list of seeds)."""
        try:
            found = await self.combined.resolve()
        except SeedSourceError:
            raise SeedSourceError("; ".join(str(e) for _, e in self.combined.last_errors)) from None
        for _, error in self.combined.last_errors:
            log.warning(
                "seed source: %s",
                error,
                extra={"fields": {"event": "seed_source_error", "error": str(error)}},
            )
        return found

    def __repr__(self) -> str:
        return f"LoggedSeeds({self.combined!r})"


def seed_source(settings: AgentSettings) -> SeedSource | None:
    """What the node should re-read for seeds, or None when `--seed` alone is given
    (the node's static `config.seeds` cover that)."""
    if not settings.seed_files and not settings.seed_dns:
        return None
    return LoggedSeeds(settings)


def _describe_seeds(settings: AgentSettings) -> str:
    parts = [format_address(s) for s in settings.seeds]
    parts += [f"file {path}" for path in settings.seed_files]
    parts += [f"dns {format_address(a)}" for a in settings.seed_dns]
    return ", ".join(parts) or "none"


def load_keyring(settings: AgentSettings) -> Keyring | None:
    """The agent's keys: from `settings.key_file` (warning, in one line, when other
    users may read it) or `SWIMNODE_KEYS`; None for none. Raises `UsageError`."""
    if settings.key_file is None:
        return settings.keyring
    try:
        keyring = load_key_file(settings.key_file)
    except ValueError as exc:  # one line naming the file and line, never the key
        raise UsageError(str(exc)) from None
    try:
        mode = os.stat(settings.key_file).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "key file %s is accessible by group or others (mode %03o); run chmod 600 on it",
            settings.key_file,
            stat.S_IMODE(mode),
            extra={
                "fields": {
                    "event": "key_file_mode",
                    "path": settings.key_file,
                    "mode": f"{stat.S_IMODE(mode):03o}",
                }
            },
        )
    return keyring


def _describe_security(keyring: Keyring | None, label: str) -> str:
    # Fingerprints only: logs must never hold key material.
    parts = []
    if keyring is not None:
        parts.append(f"{len(keyring)} key(s), primary {keyring.fingerprints[0]}")
    else:
        parts.append("no encryption")
    if label:
        parts.append(f"label {label!r}")
    return ", ".join(parts)


def _describe_profile(settings: AgentSettings) -> str:
    changed = ", ".join(f"{name}={value}" for name, value in settings.protocol)
    return f"{settings.profile} with {changed}" if changed else settings.profile


async def run_agent(settings: AgentSettings) -> None:
    """Run the agent until it has left the cluster. Raises `TransportError` when an
    address cannot be bound, `UsageError` for a bad key file."""
    config = settings.node_config()
    keyring = load_keyring(settings)
    check_handlers(settings)
    exporter = load_exporter(settings)
    async with contextlib.AsyncExitStack() as stack:
        listener = await stack.enter_async_context(await rpc.open_rpc_listener(settings.rpc))
        metrics_listener = None
        if settings.metrics is not None:
            metrics_listener = await stack.enter_async_context(
                await rpc.open_tcp_listener(settings.metrics, "metrics endpoint")
            )
        udp = await stack.enter_async_context(
            open_udp_transport(config.bind, advertise=config.advertise)
        )
        # Wrapped here rather than inside open_node so `stats` can read its counters.
        transport = secure(udp, config, keyring)
        security = transport if isinstance(transport, SecureTransport) else None
        async with open_node(
            config, transport=transport, seed_source=seed_source(settings)
        ) as node:
            agent = Agent(node, udp, settings, security=security, keyring=keyring)
            metrics = None
            if exporter is not None and metrics_listener is not None:
                agent.metrics_address = metrics_listener.socket.getsockname()[:2]
                metrics = (exporter, metrics_listener)
            await _serve(settings, node, agent, listener, metrics)
    log.info("agent stopped", extra={"fields": {"event": "stopped"}})


def register_query_responders(node: Node, runner: HandlerRunner) -> None:
    """Make the event handlers that take queries the node's responders: for every
    kind (`query`), or for the names they list (`query:NAME`)."""
    every, names = runner.accepts_queries()

    def respond(query: Query) -> None:
        runner.submit_query(query)  # the answer comes later, from the command

    for kind in sorted(names) + ([FALLBACK_KIND] if every else []):
        node.on_query(kind, respond)


def check_handlers(settings: AgentSettings) -> None:
    """Raise `UsageError` when an event handler names a script that is missing or
    not executable."""
    for spec in settings.event_handlers:
        try:
            check_command(spec)
        except HandlerError as exc:
            raise UsageError(str(exc)) from None


Exporter = Callable[[Agent, trio.SocketListener, EventStream], Awaitable[None]]
"""Serves an agent's metrics on a listener, fed by its events (`httpmetrics.export`)."""


def load_exporter(settings: AgentSettings) -> Exporter | None:
    """The metrics exporter when `--metrics` is given; raises `UsageError` when
    `prometheus_client` is missing. Loaded only then: it costs memory at every start."""
    if settings.metrics is None:
        return None
    try:
        from . import httpmetrics
    except ImportError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise UsageError(
            "--metrics needs the prometheus_client package: pip install 'swimnode[metrics]'"
        ) from None
    return httpmetrics.export


async def _serve(
    settings: AgentSettings,
    node: Node,
    agent: Agent,
    listener: trio.SocketListener,
    metrics: tuple[Exporter, trio.SocketListener] | None,
) -> None:
    # Subscribe before the first checkpoint so the join's events are all logged.
    events = node.events()
    metric_events = node.events() if metrics is not None else None
    handler_events = node.events() if settings.event_handlers else None
    # load_settings has checked these against the same limits, so none is refused.
    for key, value in settings.state:
        node.set_state(key, value)
    register_key_handlers(node, agent.keyring)
    log.info(
        "agent %s listening on %s (rpc %s, profile %s, seeds %s, %s)",
        node.name,
        format_address(node.address),
        format_address(settings.rpc),
        _describe_profile(settings),
        _describe_seeds(settings),
        _describe_security(agent.keyring, settings.label),
        extra={
            "fields": {
                "event": "started",
                "name": node.name,
                "address": format_address(node.address),
                "rpc": format_address(settings.rpc),
            }
        },
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rpc.serve_rpc, listener, agent)
        nursery.start_soon(agent.log_events, events)
        nursery.start_soon(agent.leave_on_signal)
        if handler_events is not None:
            # Loaded only with handlers: an agent without them keeps the memory.
            from .handlerrunner import HandlerRunner

            runner = HandlerRunner(
                settings.event_handlers,
                node.name,
                format_address(node.address),
                on_lost=agent.count_lost,
                answer=node.answer_query,
            )
            register_query_responders(node, runner)
            log.info(
                "event handlers: %s",
                describe_handlers(settings.event_handlers),
                extra={"fields": {"event": "handlers", "count": len(settings.event_handlers)}},
            )
            nursery.start_soon(agent.run_handlers, runner, handler_events)
        if metrics is not None and metric_events is not None:
            export, metrics_listener = metrics
            nursery.start_soon(export, agent, metrics_listener, metric_events)
        await agent.exit_requested.wait()
        nursery.cancel_scope.cancel()


# ----- logging --------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus the record's
    structured `fields` (event, name, address, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line of JSON."""
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{_utc(record.created)} [{record.levelname}] {record.getMessage()}"


def _utc(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _not_node_membership_line(record: logging.LogRecord) -> bool:
    # The node logs each membership change at INFO as plain text; the agent logs the
    # same change with structured fields, so the node's copy would double every line.
    return record.name != "swimnode.members"


def configure_logging(level: str, as_json: bool) -> None:
    """Send swimnode's logs to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else _TextFormatter())
    handler.addFilter(_not_node_membership_line)
    root = logging.getLogger("swimnode")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# ----- entry point ----------------------------------------------------------------------


def run(settings: AgentSettings) -> int:
    """Run `python -m swimnode agent` with its settings; returns the exit code. A
    `TransportError` (address busy, ...) or `UsageError` found only at start-up goes
    to the command line's error handling."""
    configure_logging(settings.log_level, settings.log_json)
    try:
        trio.run(run_agent, settings)
    except KeyboardInterrupt:
        print("swimnode agent: interrupted before the leave finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
