"""Serf-style event handlers: `agent --event-handler [FILTER=]COMMAND`.

A handler is a shell command run for each event its filter accepts, with the event
in `SWIMNODE_*` environment variables; a membership event puts the affected members
on stdin, one per line (name, address, state and application state as JSON,
tab-separated), a user event its payload.

Handlers never hold up the protocol: events wait in a bounded queue (overflow is
counted under `events_lost` and logged) and one command runs at a time, in order, each
within a timeout; a command that fails or hangs is logged (and a hanging one killed,
with everything it started), and the agent goes on with the next. Events of one kind
already waiting when a command starts are handed to it together, one stdin line each;
of coalescing user events of one name waiting together, only the latest runs.

This module parses and checks handlers (no Trio: the settings use it); `handlerrunner`
runs them.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MEMBER_EVENTS: Mapping[str, str] = {
    "joined": "member-join",
    "rejoined": "member-join",
    "left": "member-leave",
    "failed": "member-failed",
    "updated": "member-update",
    "suspected": "member-suspect",
    "alive": "member-alive",
}
"""A node event's `kind` -> the handler event it is (Serf's names, plus suspect/alive)."""
FILTER_KINDS = (*dict.fromkeys(MEMBER_EVENTS.values()), "user", "query")
"""Every event kind a filter may name; `user` and `query` also take `:NAME`."""
_FILTER_TEXT = re.compile(r"[a-z][a-z0-9:,_.-]*")


class HandlerError(ValueError):
    """A handler specification that cannot be used; `str()` is one line."""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One `--event-handler`: which events it takes and the command to run."""

    command: str
    filters: tuple[tuple[str, str | None], ...] = ()
    """`(kind, name)` pairs (`name` only for `user:NAME` and `query:NAME`); empty
    accepts every event."""

    def accepts(self, event: str, name: str | None = None) -> bool:
        """Whether this handler runs for `event` (e.g. `member-failed`, or `user`
        with the user event's `name`)."""
        if not self.filters:
            return True
        return any(kind == event and (want is None or want == name) for kind, want in self.filters)


def parse_filter(text: str) -> tuple[tuple[str, str | None], ...]:
    """`member-join,user:deploy` -> its `(kind, name)` pairs; raises `HandlerError`."""
    out: list[tuple[str, str | None]] = []
    for part in text.split(","):
        kind, sep, name = part.strip().partition(":")
        if kind not in FILTER_KINDS:
            raise HandlerError(
                f"unknown event filter {part.strip()!r} (expected {', '.join(FILTER_KINDS)}, "
                "user:NAME or query:NAME, comma-separated)"
            )
        if sep and (kind not in ("user", "query") or not name):
            raise HandlerError(f"bad event filter {part.strip()!r}: only user:NAME and query:NAME")
        out.append((kind, name or None))
    return tuple(out)


def parse_handler(text: str) -> HandlerSpec:
    """`[FILTER=]COMMAND`; raises `HandlerError`. The part before the first `=` is a
    filter when it looks like one (lower-case words, `:`, `,`, `-`), so a command such
    as `X=1 ./script` runs for every event."""
    head, sep, rest = text.partition("=")
    if sep and _FILTER_TEXT.fullmatch(head.replace(" ", "")):
        filters, command = parse_filter(head), rest
    else:
        filters, command = (), text
    if not command.strip():
        raise HandlerError(f"event handler {text!r} has no command")
    return HandlerSpec(command.strip(), filters)


def handler_env(
    base: Mapping[str, str],
    event: str,
    self_name: str,
    self_address: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The environment a handler runs in: the agent's, plus the event's variables."""
    return {
        **base,
        "SWIMNODE_EVENT": event,
        "SWIMNODE_SELF_NAME": self_name,
        "SWIMNODE_SELF_ADDRESS": self_address,
        **extra,
    }


def describe(specs: Sequence[HandlerSpec]) -> str:
    """The handlers for the start-up log line."""
    parts = []
    for spec in specs:
        kinds = ",".join(k if n is None else f"{k}:{n}" for k, n in spec.filters) or "*"
        parts.append(f"{kinds}={spec.command}")
    return "; ".join(parts)


def check_command(spec: HandlerSpec) -> None:
    """Raise `HandlerError` when the command's program is a path to a file that is
    missing or not executable. A bare name (`notify`, `echo`) is left to the shell,
    which may find it on `PATH` or as a builtin; if not, the run fails and is logged."""
    try:
        words = shlex.split(spec.command)
    except ValueError as exc:
        raise HandlerError(f"event handler {spec.command!r}: {exc}") from None
    program = words[0] if words else ""
    if "/" not in program:
        return
    if not os.path.isfile(program):
        raise HandlerError(f"event handler {spec.command!r}: no such file {program!r}")
    if not os.access(program, os.X_OK):
        raise HandlerError(f"event handler {spec.command!r}: {program!r} is not executable")
