"""The SWIM protocol core, driven directly with fake time (no Trio, no sockets)
through its sans-IO contract: packets, timers and stream results in; one `Output`
of datagrams, stream sends, events and signals out."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pytest

from swimnode.net.transport import Address
from swimnode.protocol.codec import decode_packet, encode_message, encode_packet
from swimnode.protocol.config import Config
from swimnode.protocol.contract import JoinFinished, LeaveFinished, Output, Signal, Timer
from swimnode.protocol.core import SwimCore
from swimnode.protocol.events import (
    MemberAlive,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
)
from swimnode.protocol.member import Member, MemberState
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
PROBE, GOSSIP, SYNC = Timer.PROBE, Timer.GOSSIP, Timer.SYNC


class Send(NamedTuple):
    """One packet on the wire: a datagram, or a stream send (`ticket` > 0)."""

    source: Address
    dest: Address
    data: bytes
    reliable: bool
    ticket: int = 0


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
    core.handle_packet(now, addr(source), pkt(*msgs), reliable)


def drain_broadcasts(core: SwimCore) -> None:
    while len(core.broadcasts):
        core.broadcasts.take(1 << 20, core.n_live)


def known(core: SwimCore, name: str) -> Member:
    """The record for `name`, which must exist."""
    member = core.member(name)
    assert member is not None, name
    return member


def tick(core: SwimCore, now: float) -> None:
    """Run the probe timer at `now`, which must not be before its deadline (a driver
    that is late runs it late: the period then starts at `now`)."""
    assert core.next_deadline(PROBE) <= now
    core.handle_timer(PROBE, now)


def the_ping(out: Output) -> tuple[Address, Ping]:
    """The one datagram of `out`, which must open with a ping."""
    [(dest, data)] = out.datagrams
    ping = decode_packet(data)[0]
    assert isinstance(ping, Ping)
    return dest, ping


def suspicion_deadline(core: SwimCore) -> float:
    """When the earliest suspicion expires: the suspicion part of the PROBE deadline
    (the probe cycle's own phases come every period besides)."""
    deadline = core.membership.next_deadline()
    assert core.next_deadline(PROBE) <= deadline
    return deadline


class Net:
    """Delivers each core's output to the core at the destination address, and
    reports every stream send's outcome back to its sender."""

    def __init__(self, cores: Iterable[SwimCore]) -> None:
        self.cores = {c.address: c for c in cores}
        self.events: dict[str, list[MemberEvent]] = {c.name: [] for c in self.cores.values()}
        self.signals: dict[str, list[Signal]] = {c.name: [] for c in self.cores.values()}
        self.log: list[Send] = []

    def collect(self, core: SwimCore) -> list[Send]:
        out = core.take_output()
        self.events[core.name] += out.events
        self.signals[core.name] += out.signals
        sends = [Send(core.address, dest, data, False) for dest, data in out.datagrams]
        sends += [Send(core.address, dest, data, True, t) for t, dest, data in out.streams]
        return sends

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
                delivered = send.dest in self.cores and not drop(send)
                if delivered:
                    self.cores[send.dest].handle_packet(now, send.source, send.data, send.reliable)
                if send.ticket and send.source in self.cores:
                    self.cores[send.source].handle_stream_result(send.ticket, delivered, now)
        raise AssertionError("network never went quiet")

    def take_events(self, name: str) -> list[MemberEvent]:
        ev, self.events[name] = self.events[name], []
        return ev

    def take_signals(self, name: str) -> list[Signal]:
        sig, self.signals[name] = self.signals[name], []
        return sig


def cluster(names: str, now: float = 0.0, **overrides: Any) -> tuple[list[SwimCore], Net]:
    cores = [make_core(n, seed=i + 1, now=now, **overrides) for i, n in enumerate(names)]
    net = Net(cores)
    for i, a in enumerate(cores):
        for b in cores[i + 1 :]:
            join_id = a.join([b.address], now)
            net.run(now)
            assert net.take_signals(a.name) == [JoinFinished(join_id or 0, 1, None)]
    for c in cores:
        assert c.n_live == len(cores)
        net.take_events(c.name)
        net.take_signals(c.name)
    return cores, net


def messages(send: Send) -> list[Message]:
    return decode_packet(send.data)


def from_to(sends: list[Send], src: SwimCore, dest: SwimCore) -> list[list[Message]]:
    return [messages(s) for s in sends if s.source == src.address and s.dest == dest.address]


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
    out = b.take_output()
    assert out.streams == []
    [(dest, data)] = out.datagrams
    assert dest == addr("a")
    assert decode_packet(data)[0] == Ack(77, "b")
    assert b.stats["received_ping"] == 1


def test_ping_for_another_name_is_dropped_and_counted() -> None:
    b = make_core("b")
    b.take_output()
    feed(b, Ping(77, "someone-else", "a"), source="a")
    assert b.take_output() == Output()
    assert b.stats["dropped_misdirected"] == 1


def test_direct_probe_acked_between_cores() -> None:
    (a, b), net = cluster("ab")
    a.prober.awareness.apply(2)
    tick(a, 1.0)
    sent = net.run(1.0)
    [ping_pkt] = from_to(sent, a, b)
    ping = ping_pkt[0]
    assert isinstance(ping, Ping)
    assert ping == Ping(ping.seq, "b", "a")
    [ack_pkt] = from_to(sent, b, a)
    assert ack_pkt[0] == Ack(ping.seq, "b")
    # The period (stretched to 3 s by the score of 2) ends the probe.
    assert a.next_deadline(PROBE) == pytest.approx(4.0)
    tick(a, 4.0)
    assert a.prober.awareness.score == 1  # a successful probe improves local health
    assert known(a, "b").state is ALIVE
    assert a.stats["probe_failures"] == 0
    net.run(4.0)
    assert net.take_events("a") == []


# ----- sync ---------------------------------------------------------------------------


def test_sync_makes_both_sides_know_each_other() -> None:
    a, b = make_core("a", now=0.0), make_core("b", seed=2, now=0.0)
    net = Net([a, b])
    a.take_output()
    b.take_output()
    join_id = a.join([b.address], 1.0)
    assert join_id is not None
    sent = net.run(1.0)
    ev_b, ev_a = net.take_events("b"), net.take_events("a")
    assert [type(e) for e in ev_b] == [MemberJoined]
    assert ev_b[0].member.name == "a" and ev_b[0].member.address == addr("a")
    assert [type(e) for e in ev_a] == [MemberJoined]
    assert ev_a[0].member.name == "b" and ev_a[0].member.address == addr("b")
    [push] = [s for s in sent if s.source == a.address and s.dest == b.address]
    assert push.reliable
    [reply] = [s for s in sent if s.source == b.address and s.dest == a.address]
    assert reply.reliable is True  # replies go over the reliable channel
    [msg] = messages(reply)
    assert isinstance(msg, Sync) and msg.reply and msg.join
    # One seed asked, one answered.
    assert net.take_signals("a") == [JoinFinished(join_id, 1, None)]
    assert a.n_live == b.n_live == 2
    assert known(a, "b").state is ALIVE and known(b, "a").state is ALIVE


def test_sync_over_unreliable_channel_is_dropped() -> None:
    a, b = make_core("a"), make_core("b", seed=2)
    b.take_output()
    push = encode_packet([a.membership.sync_message(reply=False, join=True)])
    b.handle_packet(1.0, a.address, push, False)
    assert b.stats["dropped_unreliable_sync"] == 1
    assert b.member("a") is None
    assert b.take_output() == Output()


# ----- indirect probes ----------------------------------------------------------------


def test_indirect_probe_relays_ack() -> None:
    cores, net = cluster("abcd")
    a = cores[0]
    tick(a, 1.0)
    out = a.take_output()  # the direct ping is lost
    assert out.streams == []
    dest, ping = the_ping(out)
    seq = ping.seq
    target = net.cores[dest]
    helpers = [c for c in cores[1:] if c is not target]

    # No ack by the probe timeout: the probe turns indirect.
    assert a.next_deadline(PROBE) == pytest.approx(1.5)
    tick(a, 1.5)
    out = a.take_output()
    assert out.streams == []
    assert sorted(d for d, _ in out.datagrams) == sorted(h.address for h in helpers)
    for _, data in out.datagrams:
        # Helpers get 80% of the 0.5 s left in the period, so nacks arrive in time.
        assert decode_packet(data)[0] == PingReq(seq, target.name, target.address, "a", 400)
    assert a.stats["indirect_probes"] == 2

    sent = net.run(1.5, pending=[Send(a.address, d, data, False) for d, data in out.datagrams])
    for h in helpers:
        [relayed] = from_to(sent, h, target)
        assert isinstance(relayed[0], Ping)
        assert relayed[0].target == target.name and relayed[0].sender == h.name
        [back] = from_to(sent, h, a)
        assert back[0] == Ack(seq, target.name)
    assert a.next_deadline(PROBE) == pytest.approx(2.0)
    tick(a, 2.0)
    assert a.stats["probe_failures"] == 0
    assert known(a, target.name).state is ALIVE
    assert a.stats["stale_acks"] == 0


class HelperCase(NamedTuple):
    a: SwimCore
    b: SwimCore
    c: SwimCore
    seq: int
    net: Net
    start: float  # when a's probe of c began


def _probe_via_single_helper(**overrides: Any) -> HelperCase:
    """a probes c, the direct ping is lost, b is asked to help and c is down."""
    cores, net = cluster("abc", **overrides)
    a, b, c = cores
    now = 10.0
    for _ in range(3):
        tick(a, now)
        dest, ping = the_ping(a.take_output())
        if dest == c.address:
            break
        a.handle_packet(now, dest, pkt(Ack(ping.seq, "b")), False)  # b answers at once
        now += 1.0
    else:
        raise AssertionError("c never probed")
    assert a.prober.awareness.score == 0
    assert known(a, "b").state is ALIVE
    # b runs its own overdue probe tick now, so only the relay is left for it
    # before the end of a's period.
    b.handle_timer(PROBE, now + 0.5)
    tick(a, now + 0.5)
    net.run(now + 0.5, drop=lambda s: s.dest == c.address)
    return HelperCase(a, b, c, ping.seq, net, now)


def test_helper_without_ack_sends_nack_at_deadline() -> None:
    a, b, c, seq, net, t = _probe_via_single_helper()
    # The helper's relay expires after the 0.4 s the prober granted it (80% of the
    # 0.5 s left in the period), so the nack reaches the prober in time.
    assert b.next_deadline(PROBE) == pytest.approx(t + 0.9)
    b.handle_timer(PROBE, t + 0.89)
    assert net.run(t + 0.89) == []
    b.handle_timer(PROBE, t + 0.9)
    sent = net.run(t + 0.9, drop=lambda s: s.dest == c.address)
    [nack_pkt] = from_to(sent, b, a)
    assert nack_pkt[0] == Nack(seq, "b")
    # The relay is gone: running the timer again sends nothing more.
    assert b.next_deadline(PROBE) > t + 0.9
    b.handle_timer(PROBE, t + 0.9)
    assert b.take_output() == Output()
    tick(a, t + 1.0)
    # Lifeguard: a nack for every helper means our own packets get through.
    assert a.prober.awareness.score == 0
    assert known(a, "c").state is SUSPECT


def test_missing_nack_raises_awareness() -> None:
    a, b, c, _, net, t = _probe_via_single_helper()
    b.handle_timer(PROBE, t + 0.9)
    net.run(t + 0.9, drop=lambda s: s.dest in (c.address, a.address))  # the nack is lost too
    tick(a, t + 1.0)
    assert a.prober.awareness.score == 1
    assert known(a, "c").state is SUSPECT


def test_nack_from_a_member_not_asked_does_not_count() -> None:
    a, b, c, seq, net, t = _probe_via_single_helper()
    b.handle_timer(PROBE, t + 0.9)
    net.run(t + 0.9, drop=lambda s: s.dest in (c.address, a.address))  # b's nack is lost
    feed(a, Nack(seq, "c"), now=t + 0.9, source="c")  # c was never asked to help
    tick(a, t + 1.0)
    assert a.prober.awareness.score == 1


def test_no_nack_when_awareness_disabled() -> None:
    a, b, c, _, net, t = _probe_via_single_helper(lifeguard_awareness=False)
    b.handle_timer(PROBE, t + 0.9)
    sent = net.run(t + 0.9, drop=lambda s: s.dest == c.address)
    assert not any(isinstance(m, Nack) for msgs in from_to(sent, b, a) for m in msgs)
    tick(a, t + 1.0)
    assert a.prober.awareness.score == 0  # disabled: pinned at zero


def test_duplicated_nack_does_not_lower_awareness_on_failed_probe() -> None:
    a, b, _, seq, _, t = _probe_via_single_helper()
    a.prober.awareness.apply(3)
    b.handle_timer(PROBE, t + 0.9)
    out = b.take_output()
    assert out.streams == []
    [(dest, data)] = out.datagrams
    assert dest == a.address
    assert decode_packet(data)[0] == Nack(seq, "b")
    a.handle_packet(t + 0.9, b.address, data, False)
    a.handle_packet(t + 0.9, b.address, data, False)  # UDP may duplicate a datagram
    tick(a, t + 1.0)
    # A failed probe never counts as evidence of good health (Lifeguard; memberlist
    # only adds `expected - received` when fewer nacks than expected arrived).
    assert a.prober.awareness.score >= 3
    assert known(a, "c").state is SUSPECT


def _failed_probe_awareness(nacks_delivered: int) -> int:
    cores, net = cluster("abcd")
    a = cores[0]
    tick(a, 1.0)
    dest, _ = the_ping(a.take_output())
    target = net.cores[dest]
    helpers = [h for h in cores[1:] if h is not target]
    for h in helpers:
        h.handle_timer(PROBE, 1.5)  # their own overdue ticks, out of the way
    tick(a, 1.5)
    net.run(1.5, drop=lambda s: s.dest == target.address)
    nacks: list[Send] = []
    for h in helpers:
        h.handle_timer(PROBE, 1.9)  # the relays expire
        nacks += net.collect(h)
    assert len(nacks) == 2
    for send in nacks[:nacks_delivered]:
        assert send.dest == a.address
        a.handle_packet(1.9, send.source, send.data, send.reliable)
    tick(a, 2.0)
    assert known(a, target.name).state is SUSPECT
    return a.prober.awareness.score


def test_awareness_rises_less_with_expected_nacks() -> None:
    assert _failed_probe_awareness(0) == 2  # two helpers, no nack: +2
    assert _failed_probe_awareness(1) == 1
    assert _failed_probe_awareness(2) == 0


# ----- suspicion ----------------------------------------------------------------------


def test_failed_probe_suspects_target_and_raises_awareness() -> None:
    (a, b), _ = cluster("ab")
    tick(a, 1.0)
    a.take_output()  # lost
    tick(a, 1.5)  # indirect: nobody else to ask
    assert a.take_output() == Output()
    assert a.member("b") is not None and known(a, "b").state is ALIVE
    tick(a, 2.0)  # the period ends unanswered
    out = a.take_output()
    events = out.events
    assert [type(e) for e in events] == [MemberSuspected]
    assert events[0].member.name == "b" and events[0].member.state is SUSPECT
    assert known(a, "b").state is SUSPECT
    assert a.prober.awareness.score == 1
    assert a.stats["probe_failures"] == 1 and a.stats["suspicions_raised"] == 1
    assert a.active_suspicions == 1
    # The suspicion is gossiped: the next gossip round to b carries Suspect(b, 0, a).
    now = max(2.1, a.next_deadline(GOSSIP))
    a.handle_timer(GOSSIP, now)
    out = a.take_output()
    assert out.datagrams[0][0] == b.address
    assert Suspect("b", 0, "a") in decode_packet(out.datagrams[0][1])


def test_suspect_about_self_is_refuted() -> None:
    a = make_core("a")
    a.take_output()
    drain_broadcasts(a)
    feed(a, Suspect("a", 0, "b"), now=1.0)
    assert a.incarnation == 1
    assert a.local_member.incarnation == 1
    assert a.local_member.state is ALIVE
    assert a.stats["suspicions_refuted"] == 1
    assert a.prober.awareness.score == 1
    # The refutation rides on the next packet a sends (here the ack to a ping).
    feed(a, Ping(5, "a", "b"), now=1.1, source="b")
    out = a.take_output()
    msgs = decode_packet(out.datagrams[0][1])
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
    events = a.take_output().events
    assert [type(e) for e in events] == [MemberSuspected]
    return a


def test_suspicion_expires_at_max_timeout() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    assert suspicion_deadline(a) == pytest.approx(34.0)  # 10 + 6 * 4 * 1 s
    a.handle_timer(PROBE, 33.99)
    assert known(a, "m1").state is SUSPECT
    assert a.take_output().events == []
    a.handle_timer(PROBE, 34.0)
    assert known(a, "m1").state is DEAD
    events = a.take_output().events
    assert [type(e) for e in events] == [MemberFailed]
    assert events[0].member.name == "m1"
    assert a.n_live == 9
    assert a.active_suspicions == 0
    assert a.stats["deaths_declared"] == 1


def _confirmed_once() -> SwimCore:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Suspect("m1", 0, "m3"), now=12.0)
    return a


def test_confirmations_from_distinct_accusers_shorten_suspicion() -> None:
    a = _confirmed_once()
    one = 10.0 + 24.0 - 20.0 * math.log(2) / math.log(3)  # 21.3814...
    assert suspicion_deadline(a) == pytest.approx(one)
    assert a.stats["suspicion_confirmations"] == 1
    # One confirmation, nothing more: it expires at `one` (on a twin: time only
    # moves forward, and this core goes on at 13 s).
    twin = _confirmed_once()
    twin.handle_timer(PROBE, one - 0.01)
    assert known(twin, "m1").state is SUSPECT
    twin.handle_timer(PROBE, one)
    assert known(twin, "m1").state is DEAD
    feed(a, Suspect("m1", 0, "m4"), now=13.0)  # K = 2 reached: min timeout
    assert suspicion_deadline(a) == pytest.approx(14.0)
    feed(a, Suspect("m1", 0, "m5"), now=13.5)  # beyond K: no effect
    assert a.stats["suspicion_confirmations"] == 2
    a.handle_timer(PROBE, 13.99)
    assert known(a, "m1").state is SUSPECT
    a.handle_timer(PROBE, 14.0)
    assert known(a, "m1").state is DEAD


def test_duplicate_confirmations_do_not_shorten() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Suspect("m1", 0, "m2"), now=11.0)  # the first accuser again
    feed(a, Suspect("m1", 0, "m3"), now=11.0)
    feed(a, Suspect("m1", 0, "m3"), now=11.5)  # same confirmer twice
    assert a.stats["suspicion_confirmations"] == 1
    one = 10.0 + 24.0 - 20.0 * math.log(2) / math.log(3)
    a.handle_timer(PROBE, one - 0.01)
    assert known(a, "m1").state is SUSPECT
    a.handle_timer(PROBE, one + 0.01)
    assert known(a, "m1").state is DEAD


def test_confirmation_for_old_incarnation_ignored() -> None:
    a = make_core("a")
    with_fakes(a, 9)
    feed(a, Alive("m1", addr("m1"), 3))
    feed(a, Suspect("m1", 3, "m2"), now=10.0)
    feed(a, Suspect("m1", 2, "m3"), Suspect("m1", 2, "m4"), now=11.0)
    assert a.stats["suspicion_confirmations"] == 0
    a.handle_timer(PROBE, 33.9)
    assert known(a, "m1").state is SUSPECT


def test_refutation_cancels_suspicion() -> None:
    a = _suspected_in_cluster_of_ten(now=10.0)
    feed(a, Alive("m1", addr("m1"), 0), now=11.0)  # same incarnation: not a refutation
    assert known(a, "m1").state is SUSPECT
    assert a.take_output().events == []
    feed(a, Alive("m1", addr("m1"), 1), now=12.0)
    events = a.take_output().events
    assert [type(e) for e in events] == [MemberAlive]
    assert events[0].member.incarnation == 1
    assert known(a, "m1").state is ALIVE
    assert a.active_suspicions == 0
    a.handle_timer(PROBE, 100.0)
    assert known(a, "m1").state is ALIVE
    assert a.take_output().events == []
    assert a.stats["deaths_declared"] == 0


def test_few_members_use_min_timeout() -> None:
    (a, _), _ = cluster("ab")
    feed(a, Suspect("b", 0, "z"), now=5.0)
    # N = 2 < K + 2, so no confirmations are expected: min = 4 * 1 * 1 s.
    assert suspicion_deadline(a) == pytest.approx(9.0)
    a.handle_timer(PROBE, 8.99)
    assert known(a, "b").state is SUSPECT
    a.handle_timer(PROBE, 9.0)
    assert known(a, "b").state is DEAD


# ----- buddy system -------------------------------------------------------------------


class BuddyCase(NamedTuple):
    a: SwimCore
    b: SwimCore
    net: Net
    seq: int
    msgs: list[Message]


def _probe_suspect_b(**overrides: Any) -> BuddyCase:
    (a, b), net = cluster("ab", **overrides)
    feed(a, Suspect("b", 0, "z"), now=1.0)  # a heard a rumour from elsewhere
    assert known(a, "b").state is SUSPECT
    a.take_output()
    drain_broadcasts(a)  # so only the buddy mechanism can tell b
    drain_broadcasts(b)
    tick(a, 2.0)
    out = a.take_output()
    assert out.streams == []
    [(dest, data)] = out.datagrams
    assert dest == b.address
    msgs = decode_packet(data)
    [ping] = [m for m in msgs if isinstance(m, Ping)]
    return BuddyCase(a, b, net, ping.seq, msgs)


def test_buddy_probe_carries_suspect_and_target_refutes() -> None:
    a, b, _, seq, msgs = _probe_suspect_b()
    assert Ping(seq, "b", "a") in msgs
    assert Suspect("b", 0, "a") in msgs  # in the very packet that carries the ping
    b.handle_packet(2.0, a.address, pkt(*msgs), False)
    assert b.incarnation == 1
    out = b.take_output()
    ack_side = [decode_packet(d) for dest, d in out.datagrams if dest == a.address]
    assert ack_side
    assert any(Ack(seq, "b") in p for p in ack_side)
    # The packet that answers the probe carries the refutation back to the prober.
    [ack_pkt] = [p for p in ack_side if Ack(seq, "b") in p]
    assert Alive("b", addr("b"), 1) in ack_pkt


def test_buddy_refutation_reaches_prober() -> None:
    a, b, net, _, msgs = _probe_suspect_b()
    net.run(2.0, pending=[Send(a.address, b.address, pkt(*msgs), False)])
    # Acked: the period's end is the next probe phase.
    assert a.next_deadline(PROBE) == pytest.approx(3.0)
    tick(a, 3.0)
    assert known(a, "b").state is ALIVE
    assert known(a, "b").incarnation == 1
    assert a.stats["probe_failures"] == 0
    net.run(3.0)
    assert any(isinstance(e, MemberAlive) for e in net.take_events("a"))


def test_no_buddy_suspect_when_disabled() -> None:
    a, b, _, seq, msgs = _probe_suspect_b(lifeguard_buddy=False)
    assert Ping(seq, "b", "a") in msgs
    assert not any(isinstance(m, Suspect) for m in msgs)
    b.handle_packet(2.0, a.address, pkt(*msgs), False)
    assert b.incarnation == 0


def test_no_buddy_suspect_for_alive_target() -> None:
    (a, b), _ = cluster("ab")
    drain_broadcasts(a)
    tick(a, 1.0)
    out = a.take_output()
    assert out.datagrams[0][0] == b.address
    msgs = decode_packet(out.datagrams[0][1])
    assert isinstance(msgs[0], Ping)
    assert msgs[0] == Ping(msgs[0].seq, "b", "a")
    assert not any(isinstance(m, Suspect) for m in msgs)


# ----- chores: anti-entropy rounds and reaping ride on the probe tick -------------------


def _ack_probe(core: SwimCore, now: float) -> tuple[Address, list[Message]]:
    """Take the probe `core` just sent (its one datagram), answer it at `now`, and
    return where it went and what it carried."""
    out = core.take_output()
    [(dest, data)] = out.datagrams
    msgs = decode_packet(data)
    ping = msgs[0]
    assert isinstance(ping, Ping) and ping.sender == core.name
    core.handle_packet(now, dest, pkt(Ack(ping.seq, ping.target)), False)
    return dest, msgs


def test_state_round_rides_on_the_ping_when_due() -> None:
    # A 0.7 s probe period, so ticks fall at points of the 1 s state-round grid that
    # show the window (ripe from half a probe period before it is due).
    (a, _, _), _ = cluster("abc", probe_interval=0.7, push_pull_interval=10_000.0)
    drain_broadcasts(a)
    tick(a, 5.0)  # long overdue: runs, and the grid restarts from here
    _ack_probe(a, 5.0)
    rounds = a.stats["state_rounds"]
    assert rounds == 1
    assert a.next_deadline(SYNC) == pytest.approx(6.35)  # due 6.0, plus half a probe period
    assert a.next_deadline(PROBE) == pytest.approx(5.7)
    tick(a, 5.7)  # ripe from 5.65
    dest, msgs = _ack_probe(a, 5.7)
    ping = msgs[0]
    assert isinstance(ping, Ping)
    # With no news in flight the round also carries the membership fingerprint.
    assert msgs == [
        Ping(ping.seq, dest[0], "a"),
        StateSyn("a", a.anti_entropy.state.summary, a.members_fingerprint()),
    ]
    assert a.stats["state_rounds"] == rounds + 1
    # The SYNC deadline moved on with it: nothing is left for that timer, the next
    # round is due on the grid at 7.0.
    assert a.next_deadline(SYNC) == pytest.approx(7.35)
    a.handle_timer(SYNC, 6.35)
    assert a.take_output() == Output()
    assert a.stats["state_rounds"] == rounds + 1
    # A probe tick too early for the next round sends the ping alone.
    tick(a, 6.4)
    _, msgs = _ack_probe(a, 6.4)
    assert [type(m) for m in msgs] == [Ping]
    assert a.stats["state_rounds"] == rounds + 1


def test_chores_run_on_their_own_when_no_probe_comes() -> None:
    # No push-pull in this test (its first comes thousands of seconds in): only the
    # chores.
    (a, b), _ = cluster(
        "ab", dead_reclaim_time=10.0, replay_window=5.0, push_pull_interval=10_000.0
    )
    drain_broadcasts(a)
    feed(a, Alive("m1", addr("m1"), 0), now=0.0)
    feed(a, Dead("m1", 0, "b"), now=0.5)
    a.take_output()
    now = max(0.5, a.next_deadline(SYNC) - 0.01)
    a.handle_timer(SYNC, now)
    assert a.take_output().datagrams == [] and a.stats["state_rounds"] == 0
    datagrams: list[tuple[Address, bytes]] = []
    for _ in range(10):
        now = a.next_deadline(SYNC)
        a.handle_timer(SYNC, now)
        datagrams += a.take_output().datagrams  # (streams: a push-pull to m1, maybe)
        if a.stats["state_rounds"]:
            break
    # Alone in its datagram but for piggybacked news; no ping came with it. With
    # news still in flight, no membership fingerprint: views differ for now.
    [syn] = [decode_packet(d) for dest, d in datagrams if dest == b.address]
    assert syn[0] == StateSyn("a", a.anti_entropy.state.summary)
    assert not any(isinstance(m, Ping) for m in syn)
    assert a.stats["state_rounds"] == 1
    # Reaping (every dead_reclaim_time / 10, at least 1 s) also runs by itself.
    while now < 12.0:
        now = a.next_deadline(SYNC)
        a.handle_timer(SYNC, now)
    assert a.member("m1") is None


# ----- leave / reap -------------------------------------------------------------------


def test_leave_tells_every_live_member_directly() -> None:
    (a, b, c, _), _ = cluster("abcd")
    feed(a, Dead("d", 0, "b"), now=1.0)
    a.take_output()
    a.leave(5.0)
    out = a.take_output()
    direct = {dest: decode_packet(data) for dest, data in out.datagrams}
    assert direct == {b.address: [Left("a", 0)], c.address: [Left("a", 0)]}
    # The gossip still has its whole transmit count to cover lost datagrams.
    assert a.broadcasts.pending("a")
    assert out.signals == []
    limit = 4 * math.ceil(math.log10(a.n_live + 1))
    left = encode_message(Left("a", 0))
    sent = sum(a.broadcasts.take(1 << 20, a.n_live).count(left) for _ in range(2 * limit))
    assert sent == limit


def test_leave_broadcasts_left_until_retransmit_limit() -> None:
    (a, b), net = cluster("ab")
    a.leave(5.0)
    out = a.take_output()  # the direct datagram to b
    assert [d for d, _ in out.datagrams] == [b.address]
    assert out.signals == []
    assert a.leaving
    assert a.local_member.state is LEFT
    assert a.broadcasts.pending("a")
    # A leaving node probes no more.
    probes = a.stats["probes"]
    tick(a, 5.0)
    assert a.take_output().datagrams == []
    assert a.stats["probes"] == probes
    limit = 4 * math.ceil(math.log10(2 + 1))  # retransmit_mult * ceil(log10(N + 1)) = 4
    lefts = rounds = 0
    now = 5.0
    while a.broadcasts.pending("a"):
        assert net.take_signals("a") == []
        now = max(now, a.next_deadline(GOSSIP))
        assert now < 5.0 + a.config.leave_timeout
        a.handle_timer(GOSSIP, now)
        sent = net.run(now)
        rounds += 1
        lefts += sum(m == Left("a", 0) for p in from_to(sent, a, b) for m in p)
    assert lefts == rounds == limit
    # The Left record is spent: the leave is over.
    assert net.take_signals("a") == [LeaveFinished()]
    ev = net.take_events("b")
    assert [type(e) for e in ev] == [MemberLeft]
    assert known(b, "a").state is LEFT
    assert b.n_live == 1


def test_leaving_node_answers_suspicion_with_left() -> None:
    a = make_core("a")
    a.leave(1.0)
    drain_broadcasts(a)
    feed(a, Suspect("a", 0, "b"), now=2.0)
    assert a.incarnation == 0
    assert a.broadcasts.pending("a")
    assert a.local_member.state is LEFT


def test_reap_forgets_dead_members_after_reclaim_time() -> None:
    a = make_core("a")
    with_fakes(a, 3)
    feed(a, Dead("m1", 0, "m2"), now=5.0)
    feed(a, Left("m2", 0), now=7.0)
    assert known(a, "m1").state is DEAD and known(a, "m2").state is LEFT
    assert a.membership.reap(64.99) == []  # dead_reclaim_time is 60 s
    assert a.member("m1") is not None
    assert a.membership.reap(65.0) == ["m1"]
    assert a.member("m1") is None
    assert a.member("m2") is not None
    assert a.membership.reap(67.0) == ["m2"]
    assert a.member("m2") is None
    assert a.member("m3") is not None and a.member("a") is not None
    a.membership.reap(1000.0)
    assert sorted(m.name for m in a.members()) == ["a", "m3"]


def test_reaping_is_a_sync_chore() -> None:
    a = make_core("a", push_pull_interval=10_000.0)
    with_fakes(a, 3)
    feed(a, Dead("m1", 0, "m2"), now=5.0)
    feed(a, Left("m2", 0), now=7.0)
    now = 7.0
    while a.member("m1") is not None:
        assert a.member("m2") is not None
        now = a.next_deadline(SYNC)
        a.handle_timer(SYNC, now)
    # The chore runs every dead_reclaim_time / 10 (with half a probe period of slack).
    assert 65.0 <= now <= 65.0 + 6.5
    while a.member("m2") is not None:
        now = a.next_deadline(SYNC)
        a.handle_timer(SYNC, now)
    assert 67.0 <= now <= 67.0 + 6.5
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
    a.handle_packet(1.0, addr("evil"), data)
    assert a.stats["dropped_malformed"] == 1
    assert a.members() == before
    assert a.take_output() == Output()


def test_oversize_datagram_dropped() -> None:
    a = make_core("a")
    a.take_output()
    a.handle_packet(1.0, addr("x"), bytes(70_000))
    assert a.stats["dropped_oversize"] == 1


def probe_and_ack(core: SwimCore, now: float) -> str:
    """Run the probe tick at `now` (which ends the previous, answered, period) and
    answer the probe it sends; return who was probed."""
    tick(core, now)
    out = core.take_output()
    # The ping is the one datagram; a state round may add a push-pull over a stream.
    [(dest, data)] = out.datagrams
    ping = decode_packet(data)[0]
    assert isinstance(ping, Ping) and ping.sender == core.name
    assert dest == addr(ping.target)
    core.handle_packet(now, dest, pkt(Ack(ping.seq, ping.target)), False)
    return ping.target


def test_probe_order_visits_every_member_once_per_pass() -> None:
    a = make_core("a", seed=42)
    names = with_fakes(a, 7)
    now = 1.0
    passes = []
    for _ in range(4):
        seen = []
        for _ in range(len(names)):
            seen.append(probe_and_ack(a, now))
            now += 1.0
        assert sorted(seen) == sorted(names)  # each member exactly once
        passes.append(seen)
    assert a.stats["probe_failures"] == 0
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_probe_order_skips_dead_members_and_sends_nothing_when_alone() -> None:
    a = make_core("a", seed=3)
    now = a.next_deadline(PROBE)
    tick(a, now)
    assert a.take_output().datagrams == []
    assert a.stats["probes"] == 0
    names = with_fakes(a, 4, now=now)
    feed(a, Dead("m2", 0, "m1"), now=now)
    seen = [probe_and_ack(a, 2.0 + i) for i in range(6)]
    assert "m2" not in seen
    assert sorted(seen[:3]) == sorted(set(names) - {"m2"})
    assert sorted(seen[3:]) == sorted(set(names) - {"m2"})


def test_probe_phases_stretched_by_awareness() -> None:
    for score, timeout, interval in [(0, 0.5, 1.0), (2, 1.5, 3.0)]:
        a = make_core("a")
        with_fakes(a, 1)
        a.prober.awareness.apply(score)
        tick(a, 1.0)
        # The probe turns indirect after the (stretched) probe timeout ...
        assert a.next_deadline(PROBE) == pytest.approx(1.0 + timeout)
        _ack_probe(a, 1.1)
        # ... unless acked: then the (stretched) period's end is next.
        assert a.next_deadline(PROBE) == pytest.approx(1.0 + interval)


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
        seen = [probe_and_ack(a, 1.0 + i) for i in range(len(names))]
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
    summary_b = b.anti_entropy.state.summary
    summary_c = c.anti_entropy.state.summary
    # Agreeing views: nothing comes back (equal state summaries, too).
    a.handle_packet(1.0, b.address, pkt(StateSyn("b", summary_b, b.members_fingerprint())))
    assert a.take_output() == Output()
    # A plain state round (no membership fingerprint) never starts a push-pull.
    a.handle_packet(1.0, c.address, pkt(StateSyn("c", summary_c)))
    assert a.take_output() == Output()
    # A member of another cluster: the seed pushes its view, the sender pushes back.
    a.handle_packet(1.0, c.address, pkt(StateSyn("c", summary_c, c.members_fingerprint())))
    out = a.take_output()
    assert out.datagrams == []
    [(ticket, dest, data)] = out.streams
    assert dest == c.address
    [sync] = decode_packet(data)
    assert isinstance(sync, Sync) and not sync.reply
    assert a.stats["membership_mismatches"] == 1
    net = Net([a, b, c])
    net.run(1.0, pending=[Send(a.address, c.address, data, True, ticket)])
    net.run(1.1)
    assert {m.name for m in c.members()} == {"a", "b", "c"}
    assert "c" in {m.name for m in a.members()}


def _state_round(core: SwimCore) -> float:
    """Run the SYNC timer until a state round has run; return when it did."""
    for _ in range(10):
        now = core.next_deadline(SYNC)
        core.handle_timer(SYNC, now)
        if core.stats["state_rounds"]:
            return now
    raise AssertionError("no state round ran")


def test_quiet_state_round_finds_a_member_that_missed_news() -> None:
    (a, b), net = cluster("ab", push_pull_interval=10_000.0)
    feed(a, Alive("m1", addr("m1"), 0), now=0.5)  # b's copy of this news was lost
    for core in (a, b):
        drain_broadcasts(core)
        core.take_output()
    assert b.member("m1") is None
    # Both quiet: b's round carries its view's fingerprint, a's view differs, so a
    # pushes its membership and b, pulling, learns of m1 (and pushes back).
    now = _state_round(b)
    net.run(max(now, 0.5))
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
    summary_b = b.anti_entropy.state.summary
    a.handle_packet(1.0, b.address, pkt(StateSyn("b", summary_b, b.members_fingerprint())))
    assert a.take_output() == Output()
    assert a.stats["membership_mismatches"] == 0


def test_periodic_push_pull_runs_only_with_news_in_flight() -> None:
    (a, b), _ = cluster("ab", push_pull_interval=5.0, state_gossip_interval=10_000.0)
    for core in (a, b):
        drain_broadcasts(core)
        core.take_output()

    def push_pulls_until(core: SwimCore, end: float) -> int:
        pushes = 0
        while (now := core.next_deadline(SYNC)) <= end:
            core.handle_timer(SYNC, now)
            pushes += len(core.take_output().streams)
        return pushes

    # Quiet: state rounds compare views, so a full sync would only confirm them.
    assert push_pulls_until(a, 60.0) == 0
    feed(a, Alive("m1", addr("m1"), 0), now=60.0)  # news queued: the rounds say nothing
    a.take_output()
    assert a.broadcasts
    assert push_pulls_until(a, 70.0) >= 1


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


# ----- the contract ---------------------------------------------------------------------


def test_acked_probe_needs_no_wakeup_at_the_probe_timeout() -> None:
    (a, _, _), _ = cluster("abc")
    tick(a, 1.0)
    assert a.next_deadline(PROBE) == pytest.approx(1.5)  # the probe timeout
    _ack_probe(a, 1.2)
    # Acked: the next wakeup is the end of the period, not the probe timeout.
    assert a.next_deadline(PROBE) == pytest.approx(2.0)
    a.handle_timer(PROBE, 1.5)  # a driver that wakes anyway changes nothing
    assert a.take_output() == Output()
    assert a.stats["indirect_probes"] == 0
    assert a.next_deadline(PROBE) == pytest.approx(2.0)
    assert a.next_deadline() <= a.next_deadline(PROBE)


def test_no_gossip_deadline_with_an_empty_queue_or_alone() -> None:
    alone = make_core("a")
    assert alone.broadcasts  # our own Alive is queued, but nobody is there to hear it
    assert alone.next_deadline(GOSSIP) == math.inf
    (a, _), _ = cluster("ab")
    drain_broadcasts(a)
    assert a.next_deadline(GOSSIP) == math.inf
    feed(a, Alive("m1", addr("m1"), 0), now=1.0)
    assert a.next_deadline(GOSSIP) < math.inf


def test_an_early_gossip_round_comes_at_most_once_between_regular_ones() -> None:
    (a, _, _), net = cluster("abc")
    interval = a.config.gossip_interval
    now = a.next_deadline(GOSSIP)  # the first, regular round
    a.handle_timer(GOSSIP, now)
    net.run(now)
    drain_broadcasts(a)
    # Fresh news may go early: a quarter interval after the regular round.
    feed(a, Alive("m1", addr("m1"), 0), now=now)
    assert a.next_deadline(GOSSIP) == pytest.approx(now + interval / 4)
    now = a.next_deadline(GOSSIP)
    a.handle_timer(GOSSIP, now)
    sent = [s for s in net.run(now) if s.source == a.address]
    assert sent and all(Alive("m1", addr("m1"), 0) in messages(s) for s in sent)
    # More fresh news right after the early round waits for a regular one.
    feed(a, Alive("m2", addr("m2"), 0), now=now)
    a.take_output()
    assert a.broadcasts.fresh
    assert a.next_deadline(GOSSIP) == pytest.approx(now + interval)
    a.handle_timer(GOSSIP, now + interval / 4)  # too early: nothing
    assert a.take_output() == Output()
    now += interval
    a.handle_timer(GOSSIP, now)
    net.run(now)
    # After that regular round an early one may come again.
    feed(a, Alive("m3", addr("m3"), 0), now=now)
    assert a.next_deadline(GOSSIP) == pytest.approx(now + interval / 4)


def test_join_finishes_with_the_number_of_seeds_that_answered() -> None:
    a, b, c = (make_core(n, seed=i + 1) for i, n in enumerate("abc"))
    net = Net([a, b, c])
    assert a.join([a.address], 1.0) is None  # nobody to ask
    join_id = a.join([a.address, b.address, c.address], 1.0)
    assert join_id is not None
    out = a.take_output()
    assert sorted(dest for _, dest, _ in out.streams) == [b.address, c.address]
    sends = [Send(a.address, dest, data, True, t) for t, dest, data in out.streams]
    net.run(1.0, pending=sends)
    assert net.take_signals("a") == [JoinFinished(join_id, 2, None)]
    assert a.n_live == 3


def test_join_fails_when_no_seed_answers_within_join_timeout() -> None:
    a = make_core("a", push_pull_interval=10_000.0)
    a.take_output()
    join_id = a.join([addr("mute")], 1.0)
    assert join_id is not None
    [(ticket, dest, _)] = a.take_output().streams
    assert dest == addr("mute")
    a.handle_stream_result(ticket, True, 1.0)  # it went out, but no answer comes
    signals: list[Signal] = []
    now = 1.0
    while not signals:
        now = a.next_deadline(SYNC)
        assert now <= 1.0 + a.config.join_timeout
        a.handle_timer(SYNC, now)
        signals = a.take_output().signals
    assert now == pytest.approx(11.0)
    assert signals == [JoinFinished(join_id, 0, "no seed answered within 10 s")]
    # A seed that cannot even be reached ends the join at once.
    join_id = a.join([addr("down")], now)
    [(ticket, _, _)] = a.take_output().streams
    a.handle_stream_result(ticket, False, now)
    assert a.take_output().signals == [JoinFinished(join_id or 0, 0, "no seed could be reached")]


def test_leave_finishes_at_once_when_alone_and_at_the_leave_timeout() -> None:
    alone = make_core("a")
    alone.leave(1.0)
    assert alone.take_output().signals == [LeaveFinished()]
    # Gossip that never gets its rounds (say, nobody runs the timer in time): the
    # leave ends anyway once leave_timeout has passed.
    (a, _), _ = cluster("ab")
    a.leave(1.0)
    assert a.take_output().signals == []
    assert a.next_deadline(GOSSIP) <= 1.0 + a.config.leave_timeout
    a.handle_timer(GOSSIP, 1.0 + a.config.leave_timeout)
    assert a.take_output().signals == [LeaveFinished()]
