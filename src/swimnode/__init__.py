"""swimnode: SWIM membership, failure detection and gossip for Trio programs.

The public names below are imported on first use (PEP 562), so importing a part of
the package that needs no Trio, such as the command line client, does not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
_LAZY = {name: module for module, names in _HOMES.items() for name in names}


# Hidden from type checkers: they see the real names above, and a module-level
# __getattr__ would make them accept any misspelt name as `object`.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        # Kept as a module global, so later look-ups skip this function.
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
