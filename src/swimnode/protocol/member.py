"""Member records and the SWIM precedence rules between them (pure, no I/O)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..net.transport import Address

_NO_STATE: Mapping[str, Any] = MappingProxyType({})


class MemberState(enum.IntEnum):
    """Where a member stands. At equal incarnation a higher value is more final
    news and wins (see `supersedes`)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        """Lower-case name used in logs, JSON and events."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Member:
    """An immutable snapshot of what this node believes about one member."""

    name: str
    address: Address
    incarnation: int
    state: MemberState
    state_changed_at: float
    """Trio clock time (seconds) at which this node saw the state change."""
    app_state: Mapping[str, Any] = field(default_factory=lambda: _NO_STATE, compare=False)
    """The member's application state (read-only key/values), as far as it has
    reached us. (`state` is the member's liveness.) Not part of equality."""

    @property
    def is_live(self) -> bool:
        """Alive or suspect: still taking part in the protocol."""
        return self.state in (MemberState.ALIVE, MemberState.SUSPECT)


def supersedes(state: MemberState, incarnation: int, current: Member) -> bool:
    """Whether news `(state, incarnation)` overrides `current` (SWIM §4.2).

    News wins iff `(incarnation, state)` is greater than the current pair, compared
    lexicographically with ALIVE < SUSPECT < DEAD < LEFT. That gives the paper's rules:
    Alive(i) beats Suspect(j)/Alive(j) iff i > j; Suspect(i) beats Alive(j) iff i >= j and
    Suspect(j) iff i > j; Dead beats Alive/Suspect at the same or a lower incarnation; a
    graceful Left is final for its incarnation. Only the member itself raises its
    incarnation, so a higher incarnation is a refutation or a restart. Because it is a
    total order, merging news is commutative, idempotent and monotone.
    """
    return (incarnation, state) > (current.incarnation, current.state)
