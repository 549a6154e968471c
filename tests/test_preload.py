"""`SwimCore.preload`: a node started with a converged view holds it as a finished
join leaves it, probes it as it would, and refuses a view it could not have."""

from __future__ import annotations

import math
import random

import pytest

from swimnode.net.transport import Address
from swimnode.protocol.codec import decode_packet, encode_message, encode_packet
from swimnode.protocol.config import Config
from swimnode.protocol.contract import Timer
from swimnode.protocol.core import SwimCore
from swimnode.protocol.member import Member, MemberState
from swimnode.protocol.messages import Alive, MemberRecord, Ping, Sync

ALIVE, DEAD = MemberState.ALIVE, MemberState.DEAD


def addr(name: str) -> Address:
    return (name, 7946)


def make_core(name: str = "me", seed: int = 1) -> SwimCore:
    config = Config.lan(name, bind=addr(name), seed=seed)
    return SwimCore(config, now=0.0, rng=random.Random(seed))


def records(n: int, incarnation: int = 3) -> list[Member]:
    return [Member(f"m{i}", addr(f"m{i}"), incarnation, ALIVE, 0.0) for i in range(n)]


def hear_alive(core: SwimCore, name: str, incarnation: int, now: float = 0.0) -> None:
    data = encode_packet([encode_message(Alive(name, addr(name), incarnation))])
    core.handle_packet(now, addr("x"), data)


def known(core: SwimCore, name: str) -> Member:
    member = core.member(name)
    assert member is not None, name
    return member


def view(core: SwimCore) -> set[tuple[str, Address, int, MemberState]]:
    return {(m.name, m.address, m.incarnation, m.state) for m in core.members()}


def test_preload_holds_the_view_a_join_leaves() -> None:
    others = records(12)
    preloaded = make_core()
    preloaded.preload(others)
    joined = make_core()
    me = MemberRecord("seed", addr("seed"), 1, ALIVE)
    sync = Sync(True, True, (me, *(MemberRecord(m.name, m.address, 3, ALIVE) for m in others)))
    joined.handle_packet(0.0, addr("seed"), encode_packet([encode_message(sync)]), reliable=True)
    assert view(preloaded) | {("seed", addr("seed"), 1, ALIVE)} == view(joined)
    assert preloaded.n_live == 13
    # Nothing queued, no event: the join's news died down long ago.
    assert len(preloaded.broadcasts) == 0
    out = preloaded.take_output()
    assert out.events == [] and out.datagrams == []
    assert preloaded.next_deadline(Timer.GOSSIP) == math.inf
    # News no newer than the view changes nothing: no event, nothing passed on.
    hear_alive(preloaded, "m4", 3, now=1.0)
    assert preloaded.take_output().events == [] and len(preloaded.broadcasts) == 0
    assert view(preloaded) | {("seed", addr("seed"), 1, ALIVE)} == view(joined)
    # Newer news is taken and passed on, as after a join.
    hear_alive(preloaded, "m4", 4, now=1.0)
    assert known(preloaded, "m4").incarnation == 4 and len(preloaded.broadcasts) == 1


def test_preloaded_fingerprint_matches_a_joined_view() -> None:
    others = records(20)
    a, b = make_core("a"), make_core("b")
    a.preload([*others, Member("b", addr("b"), b.local_member.incarnation, ALIVE, 0.0)])
    b.preload([*others, Member("a", addr("a"), a.local_member.incarnation, ALIVE, 0.0)])
    assert a.members_fingerprint() == b.members_fingerprint()


def test_a_preloaded_node_probes_every_member_once_per_pass() -> None:
    others = records(15)
    core = make_core()
    core.preload(others)
    probed: list[str] = []
    for _ in range(100):  # a probe's timeout is a wakeup too
        if len(probed) == 15:
            break
        now = core.next_deadline(Timer.PROBE)
        core.handle_timer(Timer.PROBE, now)
        for dest, data in core.take_output().datagrams:
            pings = [m for m in decode_packet(data) if isinstance(m, Ping)]
            probed += [p.target for p in pings if p.sender == "me" and addr(p.target) == dest]
        # Answer nobody: the probes fail, and the suspects stay in the pass.
    assert sorted(probed) == sorted(m.name for m in others)
    assert probed != sorted(probed)  # a shuffled order, not the given one


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([Member("me", addr("me"), 9, ALIVE, 0.0)], "only other, alive members"),
        ([Member("m1", addr("m1"), 1, DEAD, 0.0)], "only other, alive members"),
        (records(3) + records(1), "given twice"),
    ],
)
def test_preload_refuses_a_view_it_could_not_have(members: list[Member], error: str) -> None:
    core = make_core()
    before = view(core)
    with pytest.raises(ValueError, match=error):
        core.preload(members)
    assert view(core) == before and core.n_live == 1


def test_only_a_node_that_knows_nobody_is_preloaded() -> None:
    core = make_core()
    hear_alive(core, "m1", 1)
    before = view(core)
    with pytest.raises(ValueError, match="knows no other member"):
        core.preload(records(3))
    assert view(core) == before
