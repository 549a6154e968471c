"""What passes between the protocol core and a driver, besides bytes and time.

The core is driven by three kinds of input (`SwimCore.handle_packet`,
`SwimCore.handle_timer`, `SwimCore.handle_stream_result`) and by commands (join,
leave, state, queries). Everything it wants done comes out of `SwimCore.take_output`
as one `Output`: datagrams to send, messages for a stream, membership events for the
user, and `Signal`s that end a command or ask the driver to log something. The core
keeps its timers as data, grouped by concern (`Timer`): a driver gives each concern
a task that sleeps until `SwimCore.next_deadline(concern)`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..net.transport import Address
from .events import MemberEvent
from .queries import QueryProgress, QueryResult


class Timer(enum.IntEnum):
    """The core's timer concerns: each has one deadline at a time."""

    PROBE = 0
    """Failure detection: the probe period's phases (direct ping, indirect ping-req,
    end of period), suspicion deadlines, and probes relayed for others."""
    GOSSIP = 1
    """Dissemination: gossip rounds (regular and early), and the end of a leave or a
    query, which gossip carries."""
    SYNC = 2
    """Anti-entropy and seeds: state rounds, reaping, push-pull, contacting seeds
    while alone, and the end of a join."""


@dataclass(frozen=True, slots=True)
class JoinFinished:
    """A join started with `SwimCore.join` ended: `answered` seeds answered, or
    `error` says why none did."""

    join_id: int
    answered: int
    error: str | None


@dataclass(frozen=True, slots=True)
class RejoinFailed:
    """The node is alone and none of its seeds answered; it tries again in `retry_in`
    seconds (worth a warning in the log)."""

    error: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class LeaveFinished:
    """The `Left` record has been sent its full count (or nobody is left to tell, or
    the leave timeout passed): the node may stop."""


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """One of our queries ended: every expected member answered or it timed out."""

    result: QueryResult


@dataclass(frozen=True, slots=True)
class QueryHandlerFailed:
    """A registered query handler raised, or answered more than a response may hold;
    nothing was answered (worth an error in the log)."""

    kind: str
    error: BaseException


Signal = (
    JoinFinished | RejoinFailed | LeaveFinished | QueryFinished | QueryProgress | QueryHandlerFailed
)
"""Everything a driver may be told besides events."""


@dataclass(slots=True)
class Output:
    """Everything the core wants done since the last `take_output`."""

    datagrams: list[tuple[Address, bytes]] = field(default_factory=list)
    """One datagram each, fitting the configured payload budget."""
    streams: list[tuple[int, Address, bytes]] = field(default_factory=list)
    """`(ticket, dest, data)`: send `data` over a reliable stream, then report the
    outcome with `handle_stream_result(ticket, ok, now)`."""
    events: list[MemberEvent] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
