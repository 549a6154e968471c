"""swimnode: SWIM membership, failure detection and gossip for Trio programs."""

from .config import Config, Profile
from .events import (
    Event,
    EventsLost,
    EventStream,
    MemberAlive,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRejoined,
    MemberSuspected,
    MemberUpdated,
)
from .member import Member, MemberState
from .node import JoinError, Node, NodeNotRunning, open_node
from .transport import Address, Packet, Transport

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
