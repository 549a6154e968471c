"""The SWIM protocol core, driven directly with fake time (no Trio, no sockets)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from swimnode.net.transport import Address
from swimnode.protocol.codec import decode_packet, encode_message, encode_packet
from swimnode.protocol.config import Config
from swimnode.protocol.core import SwimCore
from swimnode.protocol.events import (
    MemberAlive,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
)
from swimnode.protocol.member import MemberState
from swimnode.protocol.messages import (
    Ack,
    Alive,
    Dead,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    StateSyn,
    Suspect,
    Sync,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
Send = tuple[Address, Address, bytes, bool]  # (source, dest, data, reliable)


def addr(name: str) -> Address:
    return (name, 7946)


def make_core(name: str, seed: int = 1, now: float = 0.0, **overrides: Any) -> SwimCore:
    cfg = Config.lan(name, bind=addr(name), seed=seed, **overrides)
    return SwimCore(cfg, now=now, rng=random.Random(seed))


def pkt(*msgs: Message) -> bytes:
    return encode_packet([encode_message(m) for m in msgs])


def feed(
    core: SwimCore, *msgs: Message, now: float = 0.0, source: str = "x", reliable: bool = False
) -> None:
    core.handle_packet(addr(source), pkt(*msgs), reliable, now)


def drain_broadcasts(core: SwimCore) -> None:
    while len(core.broadcasts):
        core.broadcasts.take(1 << 20, core.n_live)


class Net:
    """Delivers each core's output to the core at the destination address."""

    def __init__(self, cores: Iterable[SwimCore]) -> None:
        self.cores = {c.address: c for c in cores}
        self.events: dict[str, list[MemberEvent]] = {c.name: [] for c in self.cores.values()}
        self.log: list[Send] = []

    def collect(self, core: SwimCore) -> list[Send]:
        out, events = core.take_output()
        self.events[core.name] += events
        return [(core.address, dest, data, rel) for dest, data, rel in out]

    def run(
        self,
        now: float,
        drop: Callable[[Send], bool] = lambda s: False,
        pending: list[Send] | None = None,
    ) -> list[Send]:
        """Deliver everything until quiet; return what was sent (dropped included)."""
        sent: list[Send] = []
        queue = list(pending or [])
        for _ in range(1000):
            for core in self.cores.values():
                queue += self.collect(core)
            if not queue:
                return sent
            batch, queue = queue, []
            for send in batch:
                sent.append(send)
                self.log.append(send)
                src, dest, data, rel = send
                if dest in self.cores and not drop(send):
                    self.cores[dest].handle_packet(src, data, rel, now)
        raise AssertionError("network never went quiet")

    def take_events(self, name: str) -> list[MemberEvent]:
        ev, self.events[name] = self.events[name], []
        return ev


def cluster(names: str, now: float = 0.0, **overrides: Any) -> tuple[list[SwimCore], Net]:
    cores = [make_core(n, seed=i + 1, now=now, **overrides) for i, n in enumerate(names)]
    net = Net(cores)
    for i, a in enumerate(cores):
        for b in cores[i + 1 :]:
            b.handle_packet(a.address, a.sync_packet(join=True), True, now)
            net.run(now)
    for c in cores:
        assert c.n_live == len(cores)
        net.take_events(c.name)
    return cores, net


def messages(send: Send) -> list[Message]:
    return decode_packet(send[2])


def from_to(sends: list[Send], src: SwimCore, dest: SwimCore) -> list[list[Message]]:
    return [messages(s) for s in sends if s[0] == src.address and s[1] == dest.address]


def with_fakes(core: SwimCore, n: int, now: float = 0.0) -> list[str]:
    """Teach `core` about `n` members that exist only as names."""
    names = [f"m{i}" for i in range(1, n + 1)]
    feed(core, *(Alive(m, addr(m), 0) for m in names), now=now)
    core.take_output()
    return names


# ----- ping / ack ---------------------------------------------------------------------


def test_ping_gets_ack() -> None:
    b = make_core("b")
    b.take_output()
    feed(b, Ping(77, "b", "a"), source="a")
    out, _ = b.take_output()
    assert len(out) == 1
    dest, data, reliable = out[0]
    assert dest == addr("a") and not reliable
    assert decode_packet(data)[0] == Ack(77, "b")
    assert b.stats["received_ping"] == 1


def test_ping_for_another_name_is_dropped_and_counted() -> None:
    b = make_core("b")
    b.take_output()
    feed(b, Ping(77, "someone-else", "a"), source="a")
    out, events = b.take_output()
    assert out == [] and events == []
    assert b.stats["dropped_misdirected"] == 1


def test_direct_probe_acked_between_cores() -> None:
    (a, b), net = cluster("ab")
    a.awareness.apply(2)
    seq = a.start_probe(1.0)
    assert seq is not None
    sent = net.run(1.0)
    [ping_pkt] = from_to(sent, a, b)
    assert ping_pkt[0] == Ping(seq, "b", "a")
    [ack_pkt] = from_to(sent, b, a)
    assert ack_pkt[0] == Ack(seq, "b")
    a.finish_probe(seq, 2.0)
    assert a.awareness.score == 1  # a successful probe improves local health
    assert a.member("b").state is ALIVE
    assert a.stats["probe_failures"] == 0
    assert net.take_events("a") == []


# ----- sync ---------------------------------------------------------------------------


def test_sync_makes_both_sides_know_each_other() -> None:
    a, b = make_core("a", now=0.0), make_core("b", seed=2, now=0.0)
    net = Net([a, b])
    a.take_output()
    b.take_output()
    b.handle_packet(a.address, a.sync_packet(join=True), True, 1.0)
    sent = net.run(1.0)
    ev_b, ev_a = net.take_events("b"), net.take_events("a")
    assert [type(e) for e in ev_b] == [MemberJoined]
    assert ev_b[0].member.name == "a" and ev_b[0].member.address == addr("a")
    assert [type(e) for e in ev_a] == [MemberJoined]
    assert ev_a[0].member.name == "b" and ev_a[0].member.address == addr("b")
    [reply] = [s for s in sent if s[0] == b.address and s[1] == a.address]
    assert reply[3] is True  # replies go over the reliable channel
    [msg] = messages(reply)
    assert isinstance(msg, Sync) and msg.reply and msg.join
    assert a.join_replies == 1
    assert a.n_live == b.n_live == 2
    assert a.member("b").state is ALIVE and b.member("a").state is ALIVE


def test_sync_over_unreliable_channel_is_dropped() -> None:
    a, b = make_core("a"), make_core("b", seed=2)
    b.take_output()
    b.handle_packet(a.address, a.sync_packet(join=True), False, 1.0)
    assert b.stats["dropped_unreliable_sync"] == 1
    assert b.member("a") is None
    assert b.take_output() == ([], [])


# ----- indirect probes ----------------------------------------------------------------


def test_indirect_probe_relays_ack() -> None:
    cores, net = cluster("abcd")
    a = cores[0]
    seq = a.start_probe(1.0)
    assert seq is not None
    [(dest, _, _)] = a.take_output()[0]  # the direct ping is lost
    target = net.cores[dest]
    helpers = [c for c in cores[1:] if c is not target]

    a.probe_indirect(seq, 1.5)
    out, _ = a.take_output()
    assert sorted(d for d, _, _ in out) == sorted(h.address for h in helpers)
    for _, data, _ in out:
        # Helpers get 80% of the 0.5 s left in the period, so nacks arrive in time.
        assert decode_packet(data)[0] == PingReq(seq, target.name, target.address, "a", 400)
    assert a.stats["indirect_probes"] == 2

    sent = net.run(1.5, pending=[(a.address, d, data, r) for d, data, r in out])
    for h in helpers:
        [relayed] = from_to(sent, h, target)
        assert isinstance(relayed[0], Ping)
        assert relayed[0].target == target.name and relayed[0].sender == h.name
        [back] = from_to(sent, h, a)
        assert back[0] == Ack(seq, target.name)
    a.finish_probe(seq, 2.0)
    assert a.stats["probe_failures"] == 0
    assert a.member(target.name).state is ALIVE
    assert a.stats["stale_acks"] == 0


def _probe_via_single_helper(**overrides: Any) -> tuple[SwimCore, SwimCore, SwimCore, int, Net]:
    """a probes c, the direct ping is lost, b is asked to help and c is down."""
    cores, net = cluster("abc", **overrides)
    a, b, c = cores
    for _ in range(3):
        seq = a.start_probe(10.0)
        assert seq is not None
        [(dest, _, _)] = a.take_output()[0]
        if dest == c.address:
            break
        a.handle_packet(dest, pkt(Ack(seq, "b")), False, 10.0)  # b answers at once
        a.finish_probe(seq, 10.0)
    else:
        raise AssertionError("c never probed")
    assert a.awareness.score == 0
    assert a.member("b").state is ALIVE
    a.probe_indirect(seq, 10.5)
    net.run(10.5, drop=lambda s: s[1] == c.address)
    return a, b, c, seq, net


def test_helper_without_ack_sends_nack_at_deadline() -> None:
    a, b, c, seq, net = _probe_via_single_helper()
    # The helper's relay expires after the 0.4 s the prober granted it (80% of the
    # 0.5 s left in the period), so the nack reaches the prober in time.
    assert b.next_timer() == pytest.approx(10.9)
    b.run_timers(10.89)
    assert net.run(10.89) == []
    b.run_timers(10.9)
    sent = net.run(10.9, drop=lambda s: s[1] == c.address)
    [nack_pkt] = from_to(sent, b, a)
    assert nack_pkt[0] == Nack(seq, "b")
    a.finish_probe(seq, 11.0)
    # Lifeguard: a nack for every helper means our own packets get through.
    assert a.awareness.score == 0
    assert a.member("c").state is SUSPECT
    # The relay is gone: running the timers again sends nothing more.
    b.run_timers(20.0)
    assert from_to(net.run(20.0), b, a) == []


def test_missing_nack_raises_awareness() -> None:
    a, b, c, seq, net = _probe_via_single_helper()
    b.run_timers(11.0)
    net.run(11.0, drop=lambda s: s[1] in (c.address, a.address))  # the nack is lost too
    a.finish_probe(seq, 11.0)
    assert a.awareness.score == 1
    assert a.member("c").state is SUSPECT


def test_nack_from_a_member_not_asked_does_not_count() -> None:
    a, b, c, seq, net = _probe_via_single_helper()
    b.run_timers(11.0)
    net.run(11.0, drop=lambda s: s[1] in (c.address, a.address))  # b's nack is lost
    feed(a, Nack(seq, "c"), now=11.0, source="c")  # c was never asked to help
    a.finish_probe(seq, 11.0)
    assert a.awareness.score == 1


def test_no_nack_when_awareness_disabled() -> None:
    a, b, c, seq, net = _probe_via_single_helper(lifeguard_awareness=False)
    b.run_timers(11.0)
    sent = net.run(11.0, drop=lambda s: s[1] == c.address)
    assert not any(isinstance(m, Nack) for msgs in from_to(sent, b, a) for m in msgs)
    a.finish_probe(seq, 11.0)
    assert a.awareness.score == 0  # disabled: pinned at zero


def test_duplicated_nack_does_not_lower_awareness_on_failed_probe() -> None:
    a, b, _, seq, _ = _probe_via_single_helper()
    a.awareness.apply(3)
    b.run_timers(11.0)
    out, _ = b.take_output()
    [(dest, data, rel)] = out
    assert dest == a.address
    assert decode_packet(data)[0] == Nack(seq, "b")
    a.handle_packet(b.address, data, rel, 11.0)
    a.handle_packet(b.address, data, rel, 11.0)  # UDP may duplicate a datagram
    a.finish_probe(seq, 11.0)
    # A failed probe never counts as evidence of good health (Lifeguard; memberlist
    # only adds `expected - received` when fewer nacks than expected arrived).
    assert a.awareness.score >= 3
    assert a.member("c").state is SUSPECT


def _failed_probe_awareness(nacks_delivered: int) -> int:
    cores, net = cluster("abcd")
    a = cores[0]
    seq = a.start_probe(1.0)
    assert seq is not None
    [(dest, _, _)] = a.take_output()[0]
    target = net.cores[dest]
    a.probe_indirect(seq, 1.5)
    net.run(1.5, drop=lambda s: s[1] == target.address)
    nacks: list[Send] = []
    for h in cores[1:]:
        if h is not target:
            h.run_timers(2.0)
            nacks += net.collect(h)
    assert len(nacks) == 2
    for src, dest, data, rel in nacks[:nacks_delivered]:
        assert dest == a.address
        a.handle_packet(src, data, rel, 2.0)
    a.finish_probe(seq, 2.0)
    assert a.member(target.name).state is SUSPECT
    return a.awareness.score


def test_awareness_rises_less_with_expected_nacks() -> None:
    assert _failed_probe_awareness(0) == 2  # two helpers, no nack: +2
    assert _failed_probe_awareness(1) == 1
    assert _failed_probe_awareness(2) == 0


# ----- suspicion ----------------------------------------------------------------------


def test_failed_probe_suspects_target_and_raises_awareness() -> None:
    (a, b), _ = cluster("ab")
    seq = a.start_probe(1.0)
    assert seq is not None
    a.take_output()  # lost
    a.finish_probe(seq, 2.0)
    _, events = a.take_output()
    assert [type(e) for e in events] == [MemberSuspected]
    assert events[0].member.name == "b" and events[0].member.state is SUSPECT
    assert a.member("b").state is SUSPECT
    assert a.awareness.score == 1
    assert a.stats["probe_failures"] == 1 and a.stats["suspicions_raised"] == 1
    assert a.active_suspicions == 1
    # The suspicion is gossiped: the next packet to b carries Suspect(b, 0, a).
    a.gossip(2.1)
    out, _ = a.take_output()
    assert out[0][0] == b.address
    assert Suspect("b", 0, "a") in decode_packet(out[0][1])


def test_suspect_about_self_is_refuted() -> None:
    a = make_core("a")
    a.take_output()
    drain_broadcasts(a)
    feed(a, Suspect("a", 0, "b"), now=1.0)
    assert a.incarnation == 1
    assert a.local_member.incarnation == 1
    assert a.local_member.state is ALIVE
    assert a.stats["suspicions_refuted"] == 1
    assert a.awareness.score == 1
    # The refutation rides on the next packet a sends (here the ack to a ping).
    feed(a, Ping(5, "a", "b"), now=1.1, source="b")
    out, _ = a.take_output()
    msgs = decode_packet(out[0][1])
    assert msgs[0] == Ack(5, "a")
    assert Alive("a", addr("a"), 1) in msgs
    # Old news about us no longer matters.
    feed(a, Suspect("a", 0, "c"), Dead("a", 0, "c"), now=1.2)
    assert a.incarnation == 1
    # A death at the current incarnation is refuted too.
    feed(a, Dead("a", 1, "c"), now=1.3)
    assert a.incarnation == 2
    assert a.stats["deaths_refuted"] == 1


def test_alive_about_self_with_higher_incarnation_is_outbid() -> None:
    a = make_core("a")
    feed(a, Alive("a", addr("a"), 0))
    assert a.incarnation == 0
    feed(a, Alive("a", addr("a"), 4))  # from a previous life: outbid it
    assert a.incarnation == 5


def _suspected_in_cluster_of_ten(now: float = 10.0) -> SwimCore:
    """a knows 9 other members (N = 10: min 4 s, max 24 s, K = 2); m1 is suspected."""
    a = make_core("a")
    with_fakes(a, 9)
    assert a.n_live == 10
    feed(a, Suspect("m1", 0, "m2"), now=now)
    _, events = a.take_output()
    assert [type(e) for e in events] == [MemberSuspected]
    return a


def test_suspicion_expires_at_max_timeout() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    assert a.next_timer() == pytest.approx(34.0)  # 10 + 6 * 4 * 1 s
    a.run_timers(33.99)
    assert a.member("m1").state is SUSPECT
    assert a.take_output()[1] == []
    a.run_timers(34.0)
    assert a.member("m1").state is DEAD
    _, events = a.take_output()
    assert [type(e) for e in events] == [MemberFailed]
    assert events[0].member.name == "m1"
    assert a.n_live == 9
    assert a.active_suspicions == 0
    assert a.stats["deaths_declared"] == 1


def test_confirmations_from_distinct_accusers_shorten_suspicion() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Suspect("m1", 0, "m3"), now=12.0)
    one = 10.0 + 24.0 - 20.0 * math.log(2) / math.log(3)  # 21.3814...
    assert a.next_timer() == pytest.approx(one)
    assert a.stats["suspicion_confirmations"] == 1
    a.run_timers(one - 0.01)
    assert a.member("m1").state is SUSPECT
    feed(a, Suspect("m1", 0, "m4"), now=13.0)  # K = 2 reached: min timeout
    assert a.next_timer() == pytest.approx(14.0)
    feed(a, Suspect("m1", 0, "m5"), now=13.5)  # beyond K: no effect
    assert a.stats["suspicion_confirmations"] == 2
    a.run_timers(13.99)
    assert a.member("m1").state is SUSPECT
    a.run_timers(14.0)
    assert a.member("m1").state is DEAD


def test_duplicate_confirmations_do_not_shorten() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Suspect("m1", 0, "m2"), now=11.0)  # the first accuser again
    feed(a, Suspect("m1", 0, "m3"), now=11.0)
    feed(a, Suspect("m1", 0, "m3"), now=11.5)  # same confirmer twice
    assert a.stats["suspicion_confirmations"] == 1
    one = 10.0 + 24.0 - 20.0 * math.log(2) / math.log(3)
    a.run_timers(one - 0.01)
    assert a.member("m1").state is SUSPECT
    a.run_timers(one + 0.01)
    assert a.member("m1").state is DEAD


def test_confirmation_for_old_incarnation_ignored() -> None:
    a = make_core("a")
    with_fakes(a, 9)
    feed(a, Alive("m1", addr("m1"), 3))
    feed(a, Suspect("m1", 3, "m2"), now=10.0)
    feed(a, Suspect("m1", 2, "m3"), Suspect("m1", 2, "m4"), now=11.0)
    assert a.stats["suspicion_confirmations"] == 0
    a.run_timers(33.9)
    assert a.member("m1").state is SUSPECT


def test_refutation_cancels_suspicion() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Alive("m1", addr("m1"), 0), now=11.0)  # same incarnation: not a refutation
    assert a.member("m1").state is SUSPECT
    assert a.take_output()[1] == []
    feed(a, Alive("m1", addr("m1"), 1), now=12.0)
    _, events = a.take_output()
    assert [type(e) for e in events] == [MemberAlive]
    assert events[0].member.incarnation == 1
    assert a.member("m1").state is ALIVE
    assert a.active_suspicions == 0
    a.run_timers(100.0)
    assert a.member("m1").state is ALIVE
    assert a.take_output()[1] == []
    assert a.stats["deaths_declared"] == 0


def test_few_members_use_min_timeout() -> None:
    (a, _), _ = cluster("ab")
    feed(a, Suspect("b", 0, "z"), now=5.0)
    # N = 2 < K + 2, so no confirmations are expected: min = 4 * 1 * 1 s.
    assert a.next_timer() == pytest.approx(9.0)
    a.run_timers(8.99)
    assert a.member("b").state is SUSPECT
    a.run_timers(9.0)
    assert a.member("b").state is DEAD


# ----- buddy system -------------------------------------------------------------------


def _probe_suspect_b(**overrides: Any) -> tuple[SwimCore, SwimCore, Net, int, list[Message]]:
    (a, b), net = cluster("ab", **overrides)
    feed(a, Suspect("b", 0, "z"), now=1.0)  # a heard a rumour from elsewhere
    assert a.member("b").state is SUSPECT
    a.take_output()
    drain_broadcasts(a)  # so only the buddy mechanism can tell b
    drain_broadcasts(b)
    seq = a.start_probe(2.0)
    assert seq is not None
    out, _ = a.take_output()
    [(dest, data, _)] = out
    assert dest == b.address
    return a, b, net, seq, decode_packet(data)


def test_buddy_probe_carries_suspect_and_target_refutes() -> None:
    a, b, _, seq, msgs = _probe_suspect_b()
    assert Ping(seq, "b", "a") in msgs
    assert Suspect("b", 0, "a") in msgs  # in the very packet that carries the ping
    b.handle_packet(a.address, pkt(*msgs), False, 2.0)
    assert b.incarnation == 1
    out, _ = b.take_output()
    ack_side = [decode_packet(d) for dest, d, _ in out if dest == a.address]
    assert ack_side
    assert any(Ack(seq, "b") in p for p in ack_side)
    # The packet that answers the probe carries the refutation back to the prober.
    [ack_pkt] = [p for p in ack_side if Ack(seq, "b") in p]
    assert Alive("b", addr("b"), 1) in ack_pkt


def test_buddy_refutation_reaches_prober() -> None:
    a, b, net, seq, msgs = _probe_suspect_b()
    net.run(2.0, pending=[(a.address, b.address, pkt(*msgs), False)])
    a.finish_probe(seq, 2.5)
    assert a.member("b").state is ALIVE
    assert a.member("b").incarnation == 1
    assert any(isinstance(e, MemberAlive) for e in net.take_events("a"))


def test_no_buddy_suspect_when_disabled() -> None:
    a, b, _, seq, msgs = _probe_suspect_b(lifeguard_buddy=False)
    assert Ping(seq, "b", "a") in msgs
    assert not any(isinstance(m, Suspect) for m in msgs)
    b.handle_packet(a.address, pkt(*msgs), False, 2.0)
    assert b.incarnation == 0


def test_no_buddy_suspect_for_alive_target() -> None:
    (a, b), _ = cluster("ab")
    drain_broadcasts(a)
    seq = a.start_probe(1.0)
    out, _ = a.take_output()
    assert out[0][0] == b.address
    msgs = decode_packet(out[0][1])
    assert msgs[0] == Ping(seq, "b", "a")
    assert not any(isinstance(m, Suspect) for m in msgs)


# ----- chores: anti-entropy rounds and reaping ride on the probe tick -------------------


def test_state_round_rides_on_the_ping_when_due() -> None:
    (a, _, _), _ = cluster("abc")
    drain_broadcasts(a)
    a.start_probe(5.0)  # long overdue: runs, and the grid restarts from here
    a.take_output()
    rounds = a.stats["state_rounds"]
    assert a.next_chore() == pytest.approx(6.5)  # due 6.0, plus half a probe period
    seq = a.start_probe(5.7)  # ripe from 5.5
    out, _ = a.take_output()
    [(dest, data, reliable)] = [o for o in out if not o[2]]
    assert not reliable
    # With no news in flight the round also carries the membership fingerprint.
    assert decode_packet(data) == [
        Ping(seq, dest[0], "a"),
        StateSyn("a", a.state.summary, a.members_fingerprint()),
    ]
    assert a.stats["state_rounds"] == rounds + 1
    assert a.timer_changed
    # Nothing is left for the timer: the next round is due on the grid at 7.0.
    a.run_chores(6.6)
    assert a.stats["state_rounds"] == rounds + 1
    assert a.next_chore() == pytest.approx(7.5)
    # A probe tick too early for the next round sends the ping alone.
    a.start_probe(6.2)
    out, _ = a.take_output()
    assert [[type(m) for m in decode_packet(d)] for _, d, r in out if not r] == [[Ping]]
    assert a.stats["state_rounds"] == rounds + 1


def test_chores_run_on_their_own_when_no_probe_comes() -> None:
    (a, b), _ = cluster("ab", dead_reclaim_time=10.0, replay_window=5.0)
    drain_broadcasts(a)
    feed(a, Alive("m1", addr("m1"), 0), now=0.0)
    feed(a, Dead("m1", 0, "b"), now=0.5)
    a.take_output()
    a.run_chores(a.next_chore() - 0.01)
    assert a.take_output()[0] == [] and a.stats["state_rounds"] == 0
    out = []
    for _ in range(10):
        a.run_chores(a.next_chore())
        out += a.take_output()[0]
        if a.stats["state_rounds"]:
            break
    # Alone in its datagram but for piggybacked news; no ping came with it. With
    # news still in flight, no membership fingerprint: views differ for now.
    [syn] = [decode_packet(d) for dest, d, r in out if dest == b.address and not r]
    assert syn[0] == StateSyn("a", a.state.summary)
    assert not any(isinstance(m, Ping) for m in syn)
    assert a.stats["state_rounds"] == 1
    # Reaping (every dead_reclaim_time / 10, at least 1 s) also runs by itself.
    for _ in range(20):
        a.run_chores(a.next_chore())
    assert a.member("m1") is None


# ----- leave / reap -------------------------------------------------------------------


def test_leave_tells_every_live_member_directly() -> None:
    (a, b, c, _), _ = cluster("abcd")
    feed(a, Dead("d", 0, "b"), now=1.0)
    a.take_output()
    a.leave(5.0)
    out, _ = a.take_output()
    direct = {dest: decode_packet(data) for dest, data, reliable in out if not reliable}
    assert direct == {b.address: [Left("a", 0)], c.address: [Left("a", 0)]}
    # The gossip still has its whole transmit count to cover lost datagrams.
    assert a.broadcasts.pending("a")
    limit = 4 * math.ceil(math.log10(a.n_live + 1))
    left = encode_message(Left("a", 0))
    sent = sum(a.broadcasts.take(1 << 20, a.n_live).count(left) for _ in range(2 * limit))
    assert sent == limit


def test_leave_broadcasts_left_until_retransmit_limit() -> None:
    (a, b), net = cluster("ab")
    a.leave(5.0)
    a.take_output()  # the direct datagram to b
    assert a.leaving
    assert a.local_member.state is LEFT
    assert a.leave_pending()
    assert a.start_probe(5.0) is None
    limit = 4 * math.ceil(math.log10(2 + 1))  # retransmit_mult * ceil(log10(N + 1)) = 4
    lefts = 0
    for i in range(limit):
        assert a.leave_pending()
        a.gossip(5.0 + i * 0.2)
        sent = net.run(5.0 + i * 0.2)
        lefts += sum(m == Left("a", 0) for p in from_to(sent, a, b) for m in p)
    assert lefts == limit
    assert not a.leave_pending()
    ev = net.take_events("b")
    assert [type(e) for e in ev] == [MemberLeft]
    assert b.member("a").state is LEFT
    assert b.n_live == 1


def test_leaving_node_answers_suspicion_with_left() -> None:
    a = make_core("a")
    a.leave(1.0)
    drain_broadcasts(a)
    feed(a, Suspect("a", 0, "b"), now=2.0)
    assert a.incarnation == 0
    assert a.leave_pending()
    assert a.local_member.state is LEFT


def test_reap_forgets_dead_members_after_reclaim_time() -> None:
    a = make_core("a")
    with_fakes(a, 3)
    feed(a, Dead("m1", 0, "m2"), now=5.0)
    feed(a, Left("m2", 0), now=7.0)
    assert a.member("m1").state is DEAD and a.member("m2").state is LEFT
    a.reap(64.99)  # dead_reclaim_time is 60 s
    assert a.member("m1") is not None
    a.reap(65.0)
    assert a.member("m1") is None
    assert a.member("m2") is not None
    a.reap(67.0)
    assert a.member("m2") is None
    assert a.member("m3") is not None and a.member("a") is not None
    a.reap(1000.0)
    assert sorted(m.name for m in a.members()) == ["a", "m3"]


# ----- robustness and probe order -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\x00garbage",
        b"\x01\x91\xc1",
        pkt(Alive("m9", addr("m9"), 0)) + b"\x00",  # valid news then trailing junk
        bytes([1, 0x92]) + encode_message(Alive("m9", addr("m9"), 0)),  # second item missing
    ],
)
def test_garbage_is_counted_and_ignored(data: bytes) -> None:
    a = make_core("a")
    with_fakes(a, 2)
    before = a.members()
    a.handle_packet(addr("evil"), data, False, 1.0)
    assert a.stats["dropped_malformed"] == 1
    assert a.members() == before
    assert a.take_output() == ([], [])


def test_oversize_datagram_dropped() -> None:
    a = make_core("a")
    a.take_output()
    a.handle_packet(addr("x"), bytes(70_000), False, 1.0)
    assert a.stats["dropped_oversize"] == 1


def _ack(core: SwimCore, seq: int, now: float) -> str:
    """Answer the probe `core` just sent; return who was probed."""
    out, _ = core.take_output()
    # The ping is the one datagram; a state round may add a push-pull over a stream.
    [(dest, data, _)] = [o for o in out if not o[2]]
    ping = decode_packet(data)[0]
    assert isinstance(ping, Ping) and ping.seq == seq and ping.sender == core.name
    assert dest == addr(ping.target)
    core.handle_packet(dest, pkt(Ack(seq, ping.target)), False, now)
    core.finish_probe(seq, now)
    return ping.target


def test_probe_order_visits_every_member_once_per_pass() -> None:
    a = make_core("a", seed=42)
    names = with_fakes(a, 7)
    now = 1.0
    passes = []
    for _ in range(4):
        seen = []
        for _ in range(len(names)):
            seq = a.start_probe(now)
            assert seq is not None
            seen.append(_ack(a, seq, now))
            now += 1.0
        assert sorted(seen) == sorted(names)  # each member exactly once
        passes.append(seen)
    assert a.stats["probe_failures"] == 0
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_probe_order_skips_dead_members_and_returns_none_when_alone() -> None:
    a = make_core("a", seed=3)
    assert a.start_probe(0.0) is None
    names = with_fakes(a, 4)
    feed(a, Dead("m2", 0, "m1"), now=0.5)
    seen = []
    for i in range(6):
        seq = a.start_probe(1.0 + i)
        assert seq is not None
        seen.append(_ack(a, seq, 1.0 + i))
    assert "m2" not in seen
    assert sorted(seen[:3]) == sorted(set(names) - {"m2"})
    assert sorted(seen[3:]) == sorted(set(names) - {"m2"})


def test_probe_interval_stretched_by_awareness() -> None:
    a = make_core("a")
    assert a.probe_interval() == 1.0 and a.probe_timeout() == 0.5
    a.awareness.apply(2)
    assert a.probe_interval() == pytest.approx(3.0)
    assert a.probe_timeout() == pytest.approx(1.5)


def test_member_revived_mid_pass_is_not_probed_twice_in_that_pass() -> None:
    # m1 dies and comes back (a restart) before the first pass starts; the pass must
    # still visit each of the 4 live members exactly once.
    doubled = []
    for seed in range(30):
        a = make_core("a", seed=seed)
        names = with_fakes(a, 4)
        feed(a, Dead("m1", 0, "m2"), now=0.5)
        feed(a, Alive("m1", addr("m1"), 1), now=0.6)
        a.take_output()
        assert a.n_live == 5
        seen = []
        for i in range(len(names)):
            seq = a.start_probe(1.0 + i)
            assert seq is not None
            seen.append(_ack(a, seq, 1.0 + i))
        if sorted(seen) != names:
            doubled.append((seed, seen))
    assert doubled == []


def test_seed_contact_compares_membership_views() -> None:
    (a, b), _ = cluster("ab")
    (c,), _ = cluster("c")
    assert a.members_fingerprint() == b.members_fingerprint()
    assert a.members_fingerprint() != c.members_fingerprint()
    for core in (a, b, c):
        core.take_output()
    # Agreeing views: nothing comes back (equal state summaries, too).
    a.handle_packet(
        b.address, pkt(StateSyn("b", b.state.summary, b.members_fingerprint())), False, 1.0
    )
    assert a.take_output()[0] == []
    # A plain state round (no membership fingerprint) never starts a push-pull.
    a.handle_packet(c.address, pkt(StateSyn("c", c.state.summary)), False, 1.0)
    assert a.take_output()[0] == []
    # A member of another cluster: the seed pushes its view, the sender pushes back.
    a.handle_packet(
        c.address, pkt(StateSyn("c", c.state.summary, c.members_fingerprint())), False, 1.0
    )
    out, _ = a.take_output()
    assert [(dest, reliable) for dest, _, reliable in out] == [(c.address, True)]
    [sync] = decode_packet(out[0][1])
    assert isinstance(sync, Sync) and not sync.reply
    assert a.stats["membership_mismatches"] == 1
    net = Net([a, b, c])
    net.run(1.0, pending=[(a.address, c.address, out[0][1], True)])
    net.run(1.1)
    assert {m.name for m in c.members()} == {"a", "b", "c"}
    assert "c" in {m.name for m in a.members()}


def _state_round(core: SwimCore) -> None:
    for _ in range(10):
        core.run_chores(core.next_chore())
        if core.stats["state_rounds"]:
            return
    raise AssertionError("no state round ran")


def test_quiet_state_round_finds_a_member_that_missed_news() -> None:
    (a, b), net = cluster("ab")
    feed(a, Alive("m1", addr("m1"), 0), now=0.5)  # b's copy of this news was lost
    for core in (a, b):
        drain_broadcasts(core)
        core.take_output()
    assert b.member("m1") is None
    # Both quiet: b's round carries its view's fingerprint, a's view differs, so a
    # pushes its membership and b, pulling, learns of m1 (and pushes back).
    _state_round(b)
    net.run(1.0)
    assert a.stats["membership_mismatches"] == 1
    member = b.member("m1")
    assert member is not None and member.state is ALIVE


def test_differing_views_with_news_in_flight_start_no_push_pull() -> None:
    (a, b), _ = cluster("ab")
    for core in (a, b):
        drain_broadcasts(core)
        core.take_output()
    feed(a, Alive("m1", addr("m1"), 0), now=0.5)  # queued: a is still spreading it
    a.take_output()
    assert a.broadcasts
    a.handle_packet(
        b.address, pkt(StateSyn("b", b.state.summary, b.members_fingerprint())), False, 1.0
    )
    assert a.take_output()[0] == []
    assert a.stats["membership_mismatches"] == 0


def test_fingerprint_tracks_live_members_only() -> None:
    (a, _), _ = cluster("ab")
    empty = a.members_fingerprint()
    feed(a, Alive("m1", addr("m1"), 0), now=0.5)
    with_m1 = a.members_fingerprint()
    assert with_m1 != empty
    feed(a, Suspect("m1", 0, "b"), now=0.6)
    assert a.members_fingerprint() == with_m1  # suspect still counts as live
    feed(a, Alive("m1", addr("m1"), 1), now=0.7)
    assert a.members_fingerprint() not in (with_m1, empty)  # a newer incarnation
    feed(a, Dead("m1", 1, "b"), now=0.8)
    # Departed records do not count, so when each node forgets them cannot matter.
    assert a.members_fingerprint() == empty
