"""The protocol's messages: small immutable value classes, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from ..net.transport import Address
from .appstate import Digest, NodeDelta
from .member import MemberState


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe of `target`; answered with `Ack(seq)` to the packet's source."""

    seq: int
    target: str
    sender: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a `Ping`, or relayed by a ping-req helper with the requester's seq."""

    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Sent by a ping-req helper that got no ack in time (Lifeguard): it tells the
    prober that the helper itself is reachable, so the silence is the target's."""

    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe `target` at `target_address` on the sender's behalf.

    `timeout_ms` is how long the helper should wait for the target's ack before it
    answers with a nack; the prober picks it so the nack arrives before its protocol
    period ends. 0 means the helper's own probe timeout.
    """

    seq: int
    target: str
    target_address: Address
    sender: str
    timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class Alive:
    """Member `name` is alive at `incarnation`, reachable at `address`."""

    name: str
    address: Address
    incarnation: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """`accuser` suspects member `name` at `incarnation`."""

    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`accuser` declared member `name` failed at `incarnation`."""

    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Left:
    """Member `name` left the cluster gracefully at `incarnation`."""

    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member's full record inside a `Sync`."""

    name: str
    address: Address
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull full state exchange, sent over the reliable channel. The receiver
    merges `members` and, unless `reply` is set, answers with its own full state.
    `events` are the sender's most recent user events, so that a member that missed
    one by gossip gets it here (Serf's push-pull carries its event buffer too)."""

    reply: bool
    join: bool
    members: tuple[MemberRecord, ...]
    events: tuple[UserEventMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class StateSyn:
    """Opens an anti-entropy round: the fingerprint of the sender's state digests.
    A receiver whose fingerprint differs answers with `StateDigests`.

    `members`, when not 0, is the fingerprint of the sender's membership view (sent to
    seeds, and in every round while the sender has no news in flight): a receiver
    whose view differs pushes its full membership to the sender, which pushes back
    (a push-pull), so logical partitions merge and members that missed news catch up.
    """

    sender: str
    summary: int
    members: int = 0


@dataclass(frozen=True, slots=True)
class StateDigests:
    """The responder's digests: node -> (generation, highest version)."""

    sender: str
    digests: tuple[Digest, ...]


@dataclass(frozen=True, slots=True)
class StateAck:
    """Deltas the receiver lacks, and requests for what the sender lacks. The
    initiator's ack carries both; the responder answers requests with a final ack
    that has none."""

    sender: str
    deltas: tuple[NodeDelta, ...]
    requests: tuple[Digest, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A question for every member (Serf's user queries, reduced to what key
    management needs). It spreads like membership news, through the broadcast queue,
    and each member hands it once (deduplicated by `(origin, id)`) to the handler
    registered for `kind`, then answers `QueryResponse` straight to `origin_address`.

    `timeout_ms` is how long after receipt an answer is still useful. It is relative,
    as in Serf, rather than an absolute deadline, so members need not agree on the
    time; a member that hears the query late may answer after the origin has stopped
    listening, which costs one wasted packet.

    `names` and `state` select who answers (Serf's node and tag filters): a member
    answers, and acks, only if its name is in `names` (when given) and, for every
    `(key, regex)` in `state`, its application state has `key` with a value the regex
    matches. Every member passes the query on either way.
    """

    id: int
    origin: str
    origin_address: Address
    kind: str
    payload: bytes
    timeout_ms: int
    names: tuple[str, ...] = ()
    state: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class QueryAck:
    """A member that `Query` `id` selected got it; `answering` says whether it has a
    responder for the query's kind (if not, the origin expects no answer from it)."""

    id: int
    sender: str
    answering: bool


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """One member's answer to `Query` `id`, sent directly to the query's origin (over
    the stream when it does not fit a datagram)."""

    id: int
    sender: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class UserEventMessage:
    """A user event on its way to every member (Serf's user events): `name` and a
    small `payload` from `origin`, stamped with its Lamport time `ltime`; members
    deliver each (origin, ltime, name, payload) once. `coalesce` tells handlers that
    only the latest event of this name matters."""

    ltime: int
    origin: str
    origin_address: Address
    name: str
    payload: bytes
    coalesce: bool


Message = (
    Ping
    | Ack
    | Nack
    | PingReq
    | Alive
    | Suspect
    | Dead
    | Left
    | Sync
    | StateSyn
    | StateDigests
    | StateAck
    | Query
    | QueryResponse
    | UserEventMessage
    | QueryAck
)
MembershipNews = Alive | Suspect | Dead | Left
