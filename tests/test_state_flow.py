"""Flow control of application-state rounds. A node whose requests for state go
unanswered twice in a row has one request out at a time, waits twice as long for
each answer, and while one is due lets no peer's round push deltas at it; an answer
ends that. Without it a host behind a slow link is sent the same bulk by every peer
each round, faster than its link drains it, and none of it arrives. (The simulators
model delay and loss, not bandwidth: docs/deploy.md has the lab's slow link.)"""

from __future__ import annotations

import random
from typing import Any

from swimnode.net.transport import Address
from swimnode.protocol.appstate import Digest, NodeDelta, StateEntry
from swimnode.protocol.codec import decode_packet, encode_message, encode_packet
from swimnode.protocol.config import Config
from swimnode.protocol.core import SwimCore
from swimnode.protocol.messages import Alive, Message, StateAck, StateDigests, StateSyn


def addr(name: str) -> Address:
    return (name, 7946)


def make_core(name: str, **overrides: Any) -> SwimCore:
    config = Config.lan(name, bind=addr(name), seed=1, **overrides)
    core = SwimCore(config, now=0.0, rng=random.Random(1))
    # Peers known by name only, so their digests are accepted.
    core.handle_packet(0.0, addr("x"), packet(*(Alive(p, addr(p), 0) for p in "abc" if p != name)))
    core.take_output()
    return core


def packet(*msgs: Message) -> bytes:
    return encode_packet([encode_message(m) for m in msgs])


def acks_sent(core: SwimCore) -> list[tuple[Address, StateAck, bool]]:
    """The StateAcks in `core`'s output: (destination, ack, whether by stream)."""
    out = core.take_output()
    sends = [(dest, data, False) for dest, data in out.datagrams]
    sends += [(dest, data, True) for _, dest, data in out.streams]
    return [
        (dest, msg, reliable)
        for dest, data, reliable in sends
        for msg in decode_packet(data)
        if isinstance(msg, StateAck)
    ]


def held(core: SwimCore, name: str) -> dict[str, Any]:
    """The application state `core` holds of member `name`."""
    member = core.member(name)
    assert member is not None, name
    return dict(member.app_state)


def digests_from(core: SwimCore, peer: str, now: float, *digests: Digest) -> None:
    core.handle_packet(now, addr(peer), packet(StateDigests(peer, digests)))


def requests_to(core: SwimCore, peer: str, now: float) -> tuple[Digest, ...]:
    """Show `core` digests from `peer` holding newer state of member "a" than it has;
    the requests it makes of `peer` in return."""
    digests_from(core, peer, now, Digest("a", 7, 1000 + int(now * 10)))
    return tuple(r for _, ack, _ in acks_sent(core) for r in ack.requests)


def pushed_at(core: SwimCore, peer: str, now: float) -> bool:
    """Whether `core` answers a round that `peer` starts (with other state) with its
    digests, which would bring it the peer's deltas."""
    core.handle_packet(now, addr(peer), packet(StateSyn(peer, 12345)))
    out = core.take_output()
    return any(
        isinstance(msg, StateDigests) for _, data in out.datagrams for msg in decode_packet(data)
    )


def answer(core: SwimCore, peer: str, now: float) -> None:
    entry = StateEntry("k", 1, "v")
    core.handle_packet(now, addr(peer), packet(StateAck(peer, (NodeDelta("a", 7, (entry,)),), ())))


def test_answered_requests_flow_freely() -> None:
    b = make_core("b")
    # Answers due or not, every round asks, and every peer's round is taken.
    assert requests_to(b, "a", 0.0)
    assert requests_to(b, "c", 0.1)
    assert pushed_at(b, "a", 0.2)
    answer(b, "a", 0.3)
    assert held(b, "a") == {"k": "v"}
    # c's answer missed its 0.5 s: one miss is no congestion.
    assert requests_to(b, "a", 1.0)
    assert pushed_at(b, "c", 1.1)


def test_two_unanswered_requests_mean_one_at_a_time_with_doubling_waits() -> None:
    b = make_core("b")  # probe_timeout 0.5 s: the first wait
    assert requests_to(b, "c", 0.0)
    assert requests_to(b, "a", 0.6)  # c's answer missed its 0.5 s
    assert requests_to(b, "c", 1.7)  # a's missed its 1 s: congested from now on
    assert b.stats["state_answers_missed"] == 2
    steps = [
        (2.0, False),  # c's answer may come until 1.7 + 2
        (3.6, False),
        (3.8, True),  # then 4 s
        (7.7, False),
        (7.9, True),  # 8 s
        (15.8, False),
        (16.0, True),  # 10 s at most
        (25.9, False),
        (26.1, True),
    ]
    for now, expected in steps:
        # While an answer is due, no peer's round pushes deltas at us either.
        assert pushed_at(b, "c", now) is expected, now
        assert bool(requests_to(b, "a", now)) is expected, now


def test_an_answer_ends_congestion() -> None:
    b = make_core("b")
    for now in (0.0, 0.6, 1.7):
        assert requests_to(b, "c", now)
    assert not requests_to(b, "a", 2.0)
    answer(b, "c", 2.5)
    assert held(b, "a") == {"k": "v"}
    assert pushed_at(b, "a", 2.6)
    assert requests_to(b, "a", 2.7)
    assert requests_to(b, "c", 2.8)


def test_an_answer_from_a_peer_not_asked_does_not_end_congestion() -> None:
    b = make_core("b")
    for now in (0.0, 0.6, 1.7):
        assert requests_to(b, "c", now)
    answer(b, "a", 2.0)
    assert not requests_to(b, "a", 2.1)
    assert not pushed_at(b, "a", 2.2)
