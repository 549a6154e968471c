"""Running the agent's event handlers (`handlers.HandlerSpec`) on Trio: a bounded
queue, one command at a time, each within a timeout.

A command runs as `/bin/sh -c COMMAND` in a session of its own, so a timeout kills
the shell and everything it started (SIGKILL to the process group). Its stdout and
stderr are kept up to a limit and logged when it fails; the agent never waits on a
handler anywhere but in this runner's own task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from ..net.transport import format_address
from ..protocol.codec import MAX_QUERY_RESPONSE_PAYLOAD
from ..protocol.events import Event, EventsLost, UserEvent
from ..protocol.member import Member
from ..protocol.messages import Query
from .cli import to_json_value
from .handlers import MEMBER_EVENTS, HandlerSpec, handler_env

log = logging.getLogger("swimnode.agent.handlers")

QUEUE_SIZE = 256
"""Handler runs waiting at most; more are dropped, counted and logged."""
TIMEOUT = 30.0
"""Longest a handler may run before it is killed (seconds)."""
_OUTPUT_LOG_LIMIT = 300


def member_line(member: Member) -> str:
    """One stdin line: name, address, state, application state as compact JSON (bytes
    as `{"$base64": ...}`, as in every JSON output of the command line)."""
    state = json.dumps(to_json_value(dict(member.app_state)), separators=(",", ":"))
    return f"{member.name}\t{format_address(member.address)}\t{member.state.label}\t{state}\n"


def members_input(members: Iterable[Member]) -> bytes:
    """The stdin of a handler run for these members."""
    return "".join(member_line(m) for m in members).encode()


@dataclass(slots=True)
class Job:
    """One handler run waiting in the queue."""

    spec: HandlerSpec
    event: str
    members: list[Member] = field(default_factory=list)
    user: UserEvent | None = None
    """The user event, for `event == "user"` (its payload is the stdin)."""
    query: Query | None = None
    """The query, for `event == "query"` (its payload is the stdin, and the
    command's output, when it succeeds, the answer)."""


class HandlerRunner:
    """Queues handler runs for events and runs them one at a time."""

    def __init__(
        self,
        specs: Sequence[HandlerSpec],
        self_name: str,
        self_address: str,
        *,
        on_lost: Callable[[int], None],
        answer: Callable[[Query, bytes], None] = lambda query, payload: None,
        timeout: float = TIMEOUT,
        queue_size: int = QUEUE_SIZE,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.specs = list(specs)
        self._self = (self_name, self_address)
        self._on_lost = on_lost
        self._answer = answer
        self._timeout = timeout
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._send, self._receive = trio.open_memory_channel[Job](queue_size)

    def submit_event(self, event: Event) -> None:
        """Queue a run of every handler that takes this event. A gap in the events
        (`EventsLost`) is counted and logged: handlers missed those."""
        if isinstance(event, EventsLost):
            self._lost(event.count, "events")
            return
        if isinstance(event, UserEvent):
            for spec in self.specs:
                if spec.accepts("user", event.name):
                    self.submit(Job(spec, "user", [event.member], event))
            return
        kind = MEMBER_EVENTS.get(event.kind)
        if kind is None:
            return
        for spec in self.specs:
            if spec.accepts(kind):
                self.submit(Job(spec, kind, [event.member]))

    def accepts_queries(self) -> tuple[bool, frozenset[str]]:
        """Whether some handler takes every query, and the query names handlers take."""
        every = any(spec.accepts("query", None) for spec in self.specs)
        names = {n for spec in self.specs for kind, n in spec.filters if kind == "query" and n}
        return every, frozenset(names)

    def submit_query(self, query: Query) -> None:
        """Queue a run of every handler that takes `query` (a query handler for the
        node: it answers later, from the command's output, so it returns None)."""
        for spec in self.specs:
            if spec.accepts("query", query.kind):
                self.submit(Job(spec, "query", query=query))

    def submit(self, job: Job) -> None:
        """Queue `job` without waiting; when the queue is full it is dropped, counted
        (`on_lost`) and logged."""
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self._lost(1, f"{job.event} for {job.spec.command!r}")

    def _lost(self, count: int, what: str) -> None:
        self._on_lost(count)
        log.warning(
            "event handlers fell behind: dropped %d %s",
            count,
            what,
            extra={"fields": {"event": "handler_dropped", "count": count}},
        )

    async def run(self) -> None:
        """Run queued jobs in order, one at a time, until cancelled."""
        held: Job | None = None
        while True:
            job = held if held is not None else await self._receive.receive()
            job, held = self._merge(job)
            await self._run_one(job)

    def _merge(self, job: Job) -> tuple[Job, Job | None]:
        """`job` merged with the runs of the same handler waiting right behind it,
        as Serf coalesces: membership events of one kind become one run with a stdin
        line each; of coalescing user events of one name only the latest runs.
        Returns it with the first waiting job that could not be merged."""
        while True:
            try:
                nxt = self._receive.receive_nowait()
            except trio.WouldBlock:
                return job, None
            if nxt.spec is not job.spec or nxt.event != job.event:
                return job, nxt
            if job.query is not None or nxt.query is not None:
                return job, nxt
            if job.user is None:
                job.members.extend(nxt.members)
            elif _coalesces(job.user, nxt.user):
                job = nxt
            else:
                return job, nxt

    async def _run_one(self, job: Job) -> None:
        name, address = self._self
        extra, stdin, timeout = _job_input(job, self._timeout)
        env = handler_env(self._base_env, job.event, name, address, extra)
        command = job.spec.command
        result: subprocess.CompletedProcess[bytes] | None = None
        with trio.move_on_after(timeout):
            try:
                result = await trio.run_process(
                    ["/bin/sh", "-c", command],
                    stdin=stdin,
                    capture_stdout=True,
                    capture_stderr=True,
                    env=env,
                    check=False,
                    start_new_session=True,
                    deliver_cancel=_kill_group,
                )
            except OSError as exc:
                log.error("event handler %r could not start: %s", command, exc)
                return
        if result is None:
            log.error(
                "event handler %r for %s ran over %g s and was killed",
                command,
                job.event,
                timeout,
                extra={"fields": {"event": "handler_timeout", "handler_event": job.event}},
            )
        elif result.returncode != 0:
            output = (result.stderr or result.stdout).decode(errors="replace").strip()
            log.error(
                "event handler %r for %s exited with %d: %s",
                command,
                job.event,
                result.returncode,
                output[:_OUTPUT_LOG_LIMIT].replace("\n", " | ") or "(no output)",
                extra={"fields": {"event": "handler_failed", "handler_event": job.event}},
            )
        elif job.query is not None:
            self._answer_query(job.query, command, result.stdout)

    def _answer_query(self, query: Query, command: str, output: bytes) -> None:
        if len(output) > MAX_QUERY_RESPONSE_PAYLOAD:
            log.error(
                "event handler %r answered query %s with %d bytes, over the limit of %d",
                command,
                query.kind,
                len(output),
                MAX_QUERY_RESPONSE_PAYLOAD,
            )
            return
        self._answer(query, output)


def _job_input(job: Job, timeout: float) -> tuple[dict[str, str], bytes, float]:
    """A job's extra environment, its stdin, and how long it may run."""
    if job.user is not None:
        env = {
            "SWIMNODE_USER_EVENT": job.user.name,
            "SWIMNODE_USER_LTIME": str(job.user.ltime),
            "SWIMNODE_USER_SENDER": job.user.member.name,
        }
        return env, job.user.payload, timeout
    if job.query is not None:
        env = {"SWIMNODE_QUERY_NAME": job.query.kind, "SWIMNODE_QUERY_ORIGIN": job.query.origin}
        # An answer after the query's own timeout would find nobody listening.
        return env, job.query.payload, min(timeout, job.query.timeout_ms / 1000)
    return {}, members_input(job.members), timeout


def _coalesces(first: UserEvent, then: UserEvent | None) -> bool:
    return then is not None and first.coalesce and then.coalesce and first.name == then.name


async def _kill_group(process: trio.Process) -> None:
    # The shell's children are in its session: kill them all, not only the shell.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
