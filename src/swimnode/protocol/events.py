"""Membership events: small immutable classes, one per kind of change, as in h11 and
foca. The core emits them; a driver delivers them (see `swimnode.eventhub`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .member import Member


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member was seen for the first time."""

    member: Member
    kind: ClassVar[str] = "joined"


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    """A member is suspected of having failed."""

    member: Member
    kind: ClassVar[str] = "suspected"


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspected member proved it is alive (it refuted the suspicion)."""

    member: Member
    kind: ClassVar[str] = "alive"


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """A member was declared dead."""

    member: Member
    kind: ClassVar[str] = "failed"


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member left gracefully."""

    member: Member
    kind: ClassVar[str] = "left"


@dataclass(frozen=True, slots=True)
class MemberRejoined:
    """A member that had failed or left is alive again (a restart)."""

    member: Member
    kind: ClassVar[str] = "rejoined"


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A member's application state changed (`changed_keys` names the keys set or
    deleted), or a live member changed its address (then `changed_keys` is empty)."""

    member: Member
    changed_keys: frozenset[str] = frozenset()
    kind: ClassVar[str] = "updated"


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A user event reached this node (each event once, the sender included):
    `name` and `payload` as sent, `ltime` its Lamport time, `coalesce` whether only
    the latest event of its name matters. `member` is the sender as this node
    knows it (alive, incarnation 0, if it knows nothing more yet)."""

    member: Member
    name: str
    payload: bytes
    ltime: int
    coalesce: bool = True
    kind: ClassVar[str] = "user"


@dataclass(frozen=True, slots=True)
class EventsLost:
    """This subscriber fell behind and `count` events were dropped for it."""

    count: int
    kind: ClassVar[str] = "events_lost"


MemberEvent = (
    MemberJoined
    | MemberSuspected
    | MemberAlive
    | MemberFailed
    | MemberLeft
    | MemberRejoined
    | MemberUpdated
    | UserEvent
)
"""Everything the core emits: membership changes, and user events (whose `member`
is their sender)."""
Event = MemberEvent | EventsLost
