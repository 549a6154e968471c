"""swimnode: SWIM membership, failure detection and gossip for Trio programs.

The public names below are imported on first use (PEP 562), so importing a part of
the package that needs no Trio, such as the command line client, does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazyimport import lazy_getattr

if TYPE_CHECKING:
    from .eventhub import EventStream
    from .net.transport import Address, Packet, Transport
    from .node import JoinError, Node, NodeNotRunning, open_node
    from .protocol.config import Config, Profile
    from .protocol.events import (
        Event,
        EventsLost,
        MemberAlive,
        MemberEvent,
        MemberFailed,
        MemberJoined,
        MemberLeft,
        MemberRejoined,
        MemberSuspected,
        MemberUpdated,
    )
    from .protocol.member import Member, MemberState

__all__ = [
    "Address",
    "Config",
    "Event",
    "EventStream",
    "EventsLost",
    "JoinError",
    "Member",
    "MemberAlive",
    "MemberEvent",
    "MemberFailed",
    "MemberJoined",
    "MemberLeft",
    "MemberRejoined",
    "MemberState",
    "MemberSuspected",
    "MemberUpdated",
    "Node",
    "NodeNotRunning",
    "Packet",
    "Profile",
    "Transport",
    "__version__",
    "open_node",
]

__version__ = "0.1.0"

_HOMES = {
    "protocol.config": ("Config", "Profile"),
    "eventhub": ("EventStream",),
    "protocol.events": (
        "Event",
        "EventsLost",
        "MemberAlive",
        "MemberEvent",
        "MemberFailed",
        "MemberJoined",
        "MemberLeft",
        "MemberRejoined",
        "MemberSuspected",
        "MemberUpdated",
    ),
    "protocol.member": ("Member", "MemberState"),
    "node": ("JoinError", "Node", "NodeNotRunning", "open_node"),
    "net.transport": ("Address", "Packet", "Transport"),
}
# Hidden from type checkers: they see the real names above, and a module-level
# __getattr__ would make them accept any misspelt name as `object`.
if not TYPE_CHECKING:
    __getattr__ = lazy_getattr(__name__, globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
