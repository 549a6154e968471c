"""Lifeguard (Dadgar, Phillips, Currey 2017) end to end: dynamic suspicion timeouts,
local health awareness and the buddy system, each also switched off.

Protocol-level cases drive a pure `SwimCore` with hand-made packets; node-level cases
run real nodes on the in-memory network under `MockClock`, next to "puppet" peers: bare
`SimTransport`s that answer pings (or not) exactly as a test tells them to.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from swimnode import MemberState
from swimnode.node import Node
from swimnode.protocol import codec
from swimnode.protocol.config import Config
from swimnode.protocol.contract import Timer
from swimnode.protocol.core import SwimCore
from swimnode.protocol.events import MemberFailed
from swimnode.protocol.messages import Ack, Alive, Message, Nack, Ping, PingReq, Suspect
from swimnode.protocol.suspicion import suspicion_bounds
from swimnode.testing import Network, SimTransport, open_sim_cluster

ALIVE, SUSPECT, DEAD, LEFT = MemberState

ALL_OFF = dict(lifeguard_awareness=False, lifeguard_dynamic_suspicion=False, lifeguard_buddy=False)


def addr(name: str) -> tuple[str, int]:
    return (name, 7946)


def packet(*msgs: Message) -> bytes:
    return codec.encode_packet([codec.encode_message(m) for m in msgs])


def sent_messages(core: SwimCore, dest: str | None = None) -> list[Message]:
    """Decode (and consume) everything `core` queued to send, optionally to one peer."""
    out = core.take_output()
    sends = [*out.datagrams, *((d, data) for _, d, data in out.streams)]
    return [
        m for d, data in sends if dest is None or d == addr(dest) for m in codec.decode_packet(data)
    ]


def make_core(name: str = "me", peers: int = 10, now: float = 0.0, **overrides: Any) -> SwimCore:
    """A core that knows `peers` alive members p0..p{peers-1}, incarnation 0."""
    core = SwimCore(Config.lan(name, bind=addr(name), **overrides), now=now, rng=random.Random(7))
    for i in range(peers):
        core.handle_packet(now, addr(f"p{i}"), packet(Alive(f"p{i}", addr(f"p{i}"), 0)))
    core.take_output()
    return core


def deliver(core: SwimCore, source: str, *msgs: Message, now: float) -> None:
    core.handle_packet(now, addr(source), packet(*msgs))


def state_of(core: SwimCore, name: str) -> MemberState:
    member = core.member(name)
    assert member is not None, name
    return member.state


def suspicion_deadline(core: SwimCore) -> float:
    """When the earliest suspicion expires: the suspicion part of the PROBE deadline
    (the probe cycle's own phases come every period besides)."""
    deadline = core.membership.next_deadline()
    assert core.next_deadline(Timer.PROBE) <= deadline
    return deadline


def run_timers(core: SwimCore, now: float) -> None:
    core.handle_timer(Timer.PROBE, now)


# ----- dynamic suspicion: the timer ----------------------------------------------------


def test_suspicion_timer_follows_the_formula() -> None:
    core = make_core(peers=10)  # N = 11 live members
    n = core.n_live
    assert n == 11
    lo = 4 * math.log10(n) * 1.0
    hi = 6 * lo
    k = 2  # SuspicionMult - 2
    t0 = 100.0
    deliver(core, "p1", Suspect("p0", 0, "p1"), now=t0)
    assert state_of(core, "p0") is SUSPECT
    assert core.active_suspicions == 1
    assert suspicion_deadline(core) == pytest.approx(t0 + hi)  # starts at max

    # The first accuser again is no confirmation.
    deliver(core, "p1", Suspect("p0", 0, "p1"), now=t0 + 1)
    assert suspicion_deadline(core) == pytest.approx(t0 + hi)
    assert core.stats["suspicion_confirmations"] == 0

    # One independent confirmation: max - (max - min) * log(2) / log(K + 1), still
    # measured from when the suspicion started, not from the confirmation.
    deliver(core, "p2", Suspect("p0", 0, "p2"), now=t0 + 2)
    one = t0 + hi - (hi - lo) * math.log(2) / math.log(k + 1)
    assert suspicion_deadline(core) == pytest.approx(one)
    assert core.stats["suspicion_confirmations"] == 1
    # A duplicate of that confirmation changes nothing.
    deliver(core, "p2", Suspect("p0", 0, "p2"), now=t0 + 3)
    assert suspicion_deadline(core) == pytest.approx(one)
    assert core.stats["suspicion_confirmations"] == 1

    run_timers(core, one - 1e-6)
    assert state_of(core, "p0") is SUSPECT
    run_timers(core, one)
    assert state_of(core, "p0") is DEAD
    assert core.stats["deaths_declared"] == 1


def test_k_confirmations_bring_it_to_min_and_fire_at_once_if_past() -> None:
    core = make_core(peers=10)
    lo, hi = suspicion_bounds(4, 6, core.n_live, 1.0)
    t0 = 50.0
    deliver(core, "p1", Suspect("p0", 0, "p1"), now=t0)
    deliver(core, "p2", Suspect("p0", 0, "p2"), now=t0 + 1)
    # The K-th (second) confirmation arrives after min has already passed.
    late = t0 + lo + 3
    run_timers(core, late - 0.01)
    assert state_of(core, "p0") is SUSPECT
    deliver(core, "p3", Suspect("p0", 0, "p3"), now=late)
    assert suspicion_deadline(core) == pytest.approx(t0 + lo)
    # A confirmation beyond K is not counted.
    deliver(core, "p4", Suspect("p0", 0, "p4"), now=late)
    assert core.stats["suspicion_confirmations"] == 2
    run_timers(core, late)
    assert state_of(core, "p0") is DEAD
    assert hi > lo


def test_refutation_cancels_the_timer() -> None:
    core = make_core(peers=10)
    _, hi = suspicion_bounds(4, 6, core.n_live, 1.0)
    deliver(core, "p1", Suspect("p0", 0, "p1"), now=10.0)
    deliver(core, "p2", Suspect("p0", 0, "p2"), now=11.0)
    deliver(core, "p0", Alive("p0", addr("p0"), 1), now=12.0)
    assert state_of(core, "p0") is ALIVE
    assert core.active_suspicions == 0
    run_timers(core, 10.0 + hi + 100)
    assert state_of(core, "p0") is ALIVE
    assert core.stats["deaths_declared"] == 0


def test_dynamic_suspicion_off_uses_min_and_ignores_confirmations() -> None:
    core = make_core(peers=10, lifeguard_dynamic_suspicion=False)
    lo, _ = suspicion_bounds(4, 6, core.n_live, 1.0)
    deliver(core, "p1", Suspect("p0", 0, "p1"), now=0.0)
    assert suspicion_deadline(core) == pytest.approx(lo)
    deliver(core, "p2", Suspect("p0", 0, "p2"), now=1.0)
    assert core.stats["suspicion_confirmations"] == 0
    assert suspicion_deadline(core) == pytest.approx(lo)


# ----- puppets: bare transports next to a real node --------------------------------------


class Puppet:
    """A fake member: records what it receives and answers pings when `answer()`."""

    def __init__(self, net: Network, name: str, answer: Callable[[], bool]) -> None:
        self.name = name
        self.transport: SimTransport = net.attach(addr(name))
        self.answer = answer
        self.pings: list[float] = []  # when a direct ping (not a relay) arrived
        self.received: list[tuple[float, Message]] = []

    async def run(self) -> None:
        while True:
            pkt = await self.transport.receive()
            if pkt.reliable:
                continue
            now = trio.current_time()
            for msg in codec.decode_packet(pkt.data):
                self.received.append((now, msg))
                if isinstance(msg, Ping) and msg.target == self.name:
                    self.pings.append(now)
                    if self.answer():
                        await self.transport.send(pkt.source, packet(Ack(msg.seq, self.name)))

    async def introduce(self, to: str) -> None:
        await self.transport.send(addr(to), packet(Alive(self.name, addr(self.name), 0)))


async def node_with_puppets(
    nursery: trio.Nursery,
    net: Network,
    n: int,
    answer: Callable[[], bool] = lambda: True,
    **overrides: Any,
) -> tuple[Node, list[Puppet]]:
    config = Config.lan("me", bind=addr("me"), seed=3, push_pull_interval=10_000.0, **overrides)
    node = Node(config, net.attach(addr("me")))
    await nursery.start(node.run)
    puppets = [Puppet(net, f"p{i}", answer) for i in range(n)]
    for p in puppets:
        nursery.start_soon(p.run)
        await p.introduce("me")
    await trio.sleep(0.01)
    assert node.core.n_live == n + 1
    return node, puppets


def probe_gaps(puppets: list[Puppet]) -> list[float]:
    times = sorted(t for p in puppets for t in p.pings)
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_node_suspicion_timer_confirmation_and_refutation(
    mock_clock: trio.testing.MockClock,
) -> None:
    net = Network(seed=1, jitter=0.0)
    async with trio.open_nursery() as nursery:
        node, puppets = await node_with_puppets(nursery, net, 5)
        events = node.events()
        lo, hi = suspicion_bounds(4, 6, 6, 1.0)  # N = 6: log10(6) < 1 counts as 1
        assert (lo, hi) == (4.0, 24.0)
        p1, p2 = puppets[1], puppets[2]
        # p1 accuses p0, then p2 confirms (twice): deadline = start + one-confirmation.
        started = trio.current_time() + net.latency  # when the accusation arrives
        await p1.transport.send(addr("me"), packet(Suspect("p0", 0, "p1")))
        await trio.sleep(0.5)
        assert state_of(node.core, "p0") is SUSPECT
        await p2.transport.send(addr("me"), packet(Suspect("p0", 0, "p2")))
        await p2.transport.send(addr("me"), packet(Suspect("p0", 0, "p2")))  # duplicate
        expected = started + hi - (hi - lo) * math.log(2) / math.log(3)
        failed_at = None
        with trio.move_on_after(hi + 5):
            async for ev in events:
                if isinstance(ev, MemberFailed) and ev.member.name == "p0":
                    failed_at = trio.current_time()
                    break
        assert failed_at == pytest.approx(expected, abs=1e-6)
        assert node.stats()["suspicion_confirmations"] == 1

        # Refutation: p3 is accused and refutes before any timer could fire.
        await p1.transport.send(addr("me"), packet(Suspect("p3", 0, "p1")))
        await trio.sleep(1.0)
        assert node.stats()["suspicions_active"] == 1
        await puppets[3].transport.send(addr("me"), packet(Alive("p3", addr("p3"), 1)))
        await trio.sleep(hi + 5)
        assert state_of(node.core, "p3") is ALIVE
        assert node.stats()["suspicions_active"] == 0
        assert node.stats()["deaths_declared"] == 1  # p0 only
        nursery.cancel_scope.cancel()


# ----- awareness -------------------------------------------------------------------------


def run_probe(core: SwimCore, start: float, *, ack: bool = False, nacks: int = 0) -> float:
    """One protocol period through the probe timer, for the probe that began at
    `start` (the ping is in the output): an ack, or the indirect phase at the probe
    timeout and then `nacks` nacks from distinct helpers; then the period's end, which
    also begins the next probe (counted in `probes`). Returns when that was."""
    [ping] = [m for m in sent_messages(core) if isinstance(m, Ping)]
    if ack:
        deliver(core, ping.target, Ack(ping.seq, ping.target), now=start + 0.1)
    else:
        asked = core.stats["indirect_probes"]
        while core.stats["indirect_probes"] == asked:
            timeout_at = core.next_deadline(Timer.PROBE)
            core.handle_timer(Timer.PROBE, timeout_at)
        helpers = [
            d[0]
            for d, data in core.take_output().datagrams
            if any(isinstance(m, PingReq) for m in codec.decode_packet(data))
        ]
        assert len(helpers) == 3
        for name in helpers[:nacks]:
            deliver(core, name, Nack(ping.seq, name), now=timeout_at + 0.1)
    # The period's end is the probe timer's next deadline but for suspicions (of the
    # targets of failed probes) that expire first.
    probes = core.stats["probes"]
    while core.stats["probes"] == probes:
        end = core.next_deadline(Timer.PROBE)
        core.handle_timer(Timer.PROBE, end)
    return end


def start_probing(core: SwimCore, now: float) -> float:
    """Run the first probe tick at `now` (late, if its staggered deadline is sooner)."""
    assert core.next_deadline(Timer.PROBE) <= now
    core.handle_timer(Timer.PROBE, now)
    return now


def test_awareness_rises_with_missing_nacks_and_falls_on_success() -> None:
    core = make_core(peers=10)
    awareness = core.prober.awareness
    assert awareness.score == 0
    t = start_probing(core, 1.0)
    t = run_probe(core, t, nacks=0)  # 3 helpers, no nack: our own network is suspect
    assert awareness.score == 3
    t = run_probe(core, t, nacks=3)  # every helper nacked: the target's fault, +0
    assert awareness.score == 3
    t = run_probe(core, t, nacks=1)  # +2
    assert awareness.score == 5
    t = run_probe(core, t, nacks=0)
    assert awareness.score == 7  # clamped at AwarenessMaxMultiplier - 1
    # The probe that began then has an 8 s period and a 4 s probe timeout.
    assert core.next_deadline(Timer.PROBE) == pytest.approx(t + 4.0)
    end = run_probe(core, t, ack=True)
    assert end == pytest.approx(t + 8.0)
    assert awareness.score == 6
    # The next period lasts 7 s.
    assert run_probe(core, end, ack=True) == pytest.approx(end + 7.0)


def test_awareness_rises_on_refuting_a_suspicion_about_us() -> None:
    core = make_core(peers=10)
    deliver(core, "p1", Suspect("me", 0, "p1"), now=1.0)
    assert core.incarnation == 1
    assert core.stats["suspicions_refuted"] == 1
    assert core.prober.awareness.score == 1
    assert core.broadcasts.pending("me")  # the refutation is queued for gossip


def test_awareness_off_stays_zero_and_helpers_send_no_nacks() -> None:
    core = make_core(peers=10, lifeguard_awareness=False)
    t = run_probe(core, start_probing(core, 1.0))
    deliver(core, "p1", Suspect("me", 0, "p1"), now=t)
    assert core.prober.awareness.score == 0
    # Periods keep their length: 0.5 s to the probe timeout, 1 s in all.
    assert core.next_deadline(Timer.PROBE) == pytest.approx(t + 0.5)
    assert run_probe(core, t, ack=True) == pytest.approx(t + 1.0)
    # As a ping-req helper whose target stays silent: no nack.
    helper = make_core(peers=10, lifeguard_awareness=False)
    deliver(helper, "p1", PingReq(77, "p2", addr("p2"), "p1"), now=0.0)
    run_timers(helper, 5.0)
    assert not [m for m in sent_messages(helper) if isinstance(m, Nack)]
    on = make_core(peers=10)
    deliver(on, "p1", PingReq(77, "p2", addr("p2"), "p1"), now=0.0)
    sent_messages(on)
    run_timers(on, 5.0)
    assert [m for m in sent_messages(on, "p1") if isinstance(m, Nack)] == [Nack(77, "me")]


@pytest.mark.parametrize("aware", [True, False])
async def test_awareness_scales_probe_interval_in_a_node(
    mock_clock: trio.testing.MockClock, aware: bool
) -> None:
    net = Network(seed=2, jitter=0.0)
    async with trio.open_nursery() as nursery:
        node, puppets = await node_with_puppets(nursery, net, 4, lifeguard_awareness=aware)
        await trio.sleep(3.0)
        node.core.prober.awareness.apply(3)  # as if three nacks had gone missing
        for p in puppets:
            p.pings.clear()
        await trio.sleep(16.0)
        gaps = probe_gaps(puppets)
        nursery.cancel_scope.cancel()
    if aware:
        # The period in progress keeps its 1 s length and its ack takes one off the
        # score (3 -> 2); every later period lasts (score + 1) s and its successful
        # probe takes one more off: 3 s, 2 s, then 1 s for good.
        assert gaps[:3] == [3.0, 2.0, 1.0]
        assert set(gaps[3:]) == {1.0}
        assert len(gaps) >= 10
        assert node.stats()["awareness"] == 0
    else:
        assert set(gaps) == {1.0}
        assert len(gaps) >= 14


async def test_awareness_rises_when_our_acks_and_nacks_are_lost(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node whose incoming traffic is lost sees no acks *and* no nacks: its score
    climbs to the cap and it probes eight times less often; healed, it recovers."""
    # A long suspicion timeout keeps n1 from declaring everyone dead meanwhile.
    async with open_sim_cluster(5, seed=11, suspicion_mult=60) as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        me = cluster.nodes["n1"]
        others = [cluster.address_of(n) for n in cluster.names if n != "n1"]
        cluster.network.partition(others, [cluster.address_of("n1")], one_way=True)
        took = await cluster.wait_for(lambda: me.stats()["awareness"] == 7, timeout=20)
        assert took is not None
        assert me.stats()["members_live"] == 5  # still probing everyone
        probes = me.stats()["probes"]
        await trio.sleep(16.0)
        # Periods of 8 s: at most 2 probes began in 16 s (a healthy node makes 16).
        assert me.stats()["probes"] - probes <= 2
        cluster.network.heal()
        assert await cluster.wait_for(lambda: me.stats()["awareness"] == 0, timeout=60) is not None


async def test_nacks_keep_a_healthy_prober_at_zero(mock_clock: trio.testing.MockClock) -> None:
    """Probing a crashed member fails, but the helpers' nacks show the prober is
    fine: with nacks its score stays 0; without Lifeguard there are no nacks."""
    for aware in (True, False):
        async with open_sim_cluster(6, seed=12, lifeguard_awareness=aware) as cluster:
            assert await cluster.wait_for(cluster.converged, timeout=10) is not None
            cluster.crash("n5")
            assert (
                await cluster.wait_for(lambda: cluster.all_see("n5", {DEAD}), timeout=60)
                is not None
            )
            stats = [cluster.nodes[n].stats() for n in cluster.names]
            assert sum(s.get("probe_failures", 0) for s in stats) > 0
            assert all(s["awareness"] == 0 for s in stats)
            nacks = sum(s.get("received_nack", 0) for s in stats)
            assert (nacks > 0) is aware


# ----- buddy system ----------------------------------------------------------------------


def test_buddy_ping_carries_the_suspicion_and_the_suspect_refutes_at_once() -> None:
    prober = make_core("a", peers=0)
    suspect = make_core("b", peers=0)
    deliver(prober, "b", Alive("b", addr("b"), 0), now=0.0)
    deliver(suspect, "a", Alive("a", addr("a"), 0), now=0.0)
    # c accuses b at the prober only (b never heard the rumour).
    deliver(prober, "c", Alive("c", addr("c"), 0), Suspect("b", 0, "c"), now=1.0)
    sent_messages(prober)
    sent_messages(suspect)
    t = 2.0
    while True:
        run_timers(prober, t)
        out = prober.take_output()
        to_b = [data for d, data in out.datagrams if d == addr("b")]
        if to_b:
            break
        [(_, data)] = out.datagrams  # the probe of c: answered
        [ping] = [m for m in codec.decode_packet(data) if isinstance(m, Ping)]
        deliver(prober, "c", Ack(ping.seq, "c"), now=t)
        t += 1.0
    msgs = codec.decode_packet(to_b[0])
    [seq] = [m.seq for m in msgs if isinstance(m, Ping)]
    assert Ping(seq, "b", "a") in msgs
    assert Suspect("b", 0, "a") in msgs
    # The suspect gets the probe one network hop later and refutes then and there;
    # the refutation rides on whatever it sends next (here: the next gossip).
    suspect.handle_packet(t + 0.001, addr("a"), to_b[0])
    assert suspect.incarnation == 1
    assert suspect.stats["suspicions_refuted"] == 1
    # The refutation rides on the ack: one round trip and the prober knows.
    out = suspect.take_output()
    replies = [data for d, data in out.datagrams if d == addr("a")]
    assert len(replies) == 1
    assert Ack(seq, "b") in codec.decode_packet(replies[0])
    assert Alive("b", addr("b"), 1) in codec.decode_packet(replies[0])
    prober.handle_packet(t + 0.002, addr("b"), replies[0])
    # Acked: the probe ends with its period.
    assert prober.next_deadline(Timer.PROBE) == pytest.approx(t + 1.0)
    run_timers(prober, t + 1.0)
    assert prober.stats["probe_failures"] == 0
    b = prober.member("b")
    assert b is not None and b.state is ALIVE
    assert b.incarnation == 1


def test_buddy_off_ping_carries_no_suspicion() -> None:
    prober = make_core("a", peers=0, lifeguard_buddy=False)
    deliver(prober, "b", Alive("b", addr("b"), 0), Suspect("b", 0, "b2"), now=0.0)
    sent_messages(prober)
    prober.broadcasts.discard("b")  # the rumour itself is not what is tested here
    start_probing(prober, 1.0)
    msgs = sent_messages(prober, "b")
    [seq] = [m.seq for m in msgs if isinstance(m, Ping)]
    assert Ping(seq, "b", "a") in msgs
    assert not [m for m in msgs if isinstance(m, Suspect)]


def test_ack_to_a_probing_suspect_carries_the_suspicion() -> None:
    for buddy in (True, False):
        core = make_core("a", peers=0, lifeguard_buddy=buddy)
        deliver(core, "b", Alive("b", addr("b"), 0), now=0.0)
        deliver(core, "c", Alive("c", addr("c"), 0), Suspect("b", 0, "c"), now=0.0)
        sent_messages(core)
        core.broadcasts.discard("b")
        deliver(core, "b", Ping(5, "a", "b"), now=1.0)
        msgs = sent_messages(core, "b")
        assert Ack(5, "a") in msgs
        assert (Suspect("b", 0, "a") in msgs) is buddy


@pytest.mark.parametrize("answered", [True, False])
def test_relayed_answer_to_a_suspect_carries_the_suspicion(answered: bool) -> None:
    """A suspect that probes through us (ping-req) learns of the suspicion from the
    ack we pass on, or from our nack."""
    core = make_core("a", peers=0)
    deliver(core, "b", Alive("b", addr("b"), 0), now=0.0)
    deliver(core, "c", Alive("c", addr("c"), 0), Suspect("b", 0, "c"), now=0.0)
    # Our own probe tick, out of the way (its next phase comes after the relay's).
    start_probing(core, 1.0)
    sent_messages(core)
    core.broadcasts.discard("b")
    deliver(core, "b", PingReq(7, "c", addr("c"), "b", 300), now=1.0)
    [relayed] = [m for m in sent_messages(core, "c") if isinstance(m, Ping)]
    if answered:
        deliver(core, "c", Ack(relayed.seq, "c"), now=1.1)
    else:
        run_timers(core, 1.3)
    msgs = sent_messages(core, "b")
    assert (Ack(7, "c") if answered else Nack(7, "a")) in msgs
    assert Suspect("b", 0, "a") in msgs


@pytest.mark.parametrize("buddy", [True, False])
async def test_suspect_refutes_within_a_probe_round_trip(
    mock_clock: trio.testing.MockClock, buddy: bool
) -> None:
    """n2 is cut off just long enough to be suspected and for the rumour to run out
    of retransmissions. After healing, the buddy system tells it at the next ping."""
    # Only pings and acks may tell n2: no seeds (so no seed syncs), no push-pull; the
    # nodes join n0 explicitly.
    async with open_sim_cluster(
        3,
        seed=5,
        suspicion_mult=10,
        push_pull_interval=10_000.0,
        lifeguard_buddy=buddy,
        seeds=(),
    ) as cluster:
        for name in ("n1", "n2"):
            await cluster.nodes[name].join([cluster.address_of("n0")])
        assert await cluster.wait_for(cluster.converged, timeout=10) is not None
        n2 = cluster.address_of("n2")
        others = [cluster.address_of("n0"), cluster.address_of("n1")]
        cluster.network.partition([n2], others)
        took = await cluster.wait_for(
            lambda: (
                cluster.view("n0")["n2"] is SUSPECT
                and cluster.view("n1")["n2"] is SUSPECT
                and not cluster.nodes["n0"].core.broadcasts.pending("n2")
                and not cluster.nodes["n1"].core.broadcasts.pending("n2")
            ),
            timeout=8,
        )
        assert took is not None
        cluster.network.heal()
        node = cluster.nodes["n2"]

        def exchanges() -> int:  # pings n2 got from peers, and acks to its own
            stats = node.stats()
            return stats.get("received_ping", 0) + stats.get("received_ack", 0)

        def refuted() -> bool:
            return node.stats().get("suspicions_refuted", 0) > 0

        assert not refuted()
        before = exchanges()
        assert (
            await cluster.wait_for(lambda: exchanges() > before, timeout=5, step=0.001) is not None
        )
        if buddy:
            # The first ping to n2 carries the suspicion, and so does the first ack
            # to n2's own ping (the reverse buddy): it refutes at once.
            assert refuted()
            assert await cluster.wait_for(cluster.converged, timeout=5) is not None
            assert not cluster.events_of("failed", "n2")
        else:
            # Nothing in the pings or acks: n2 stays unaware while they flow (it
            # would learn later, by push-pull or seed sync, or be declared dead).
            assert await cluster.wait_for(refuted, timeout=2.0, step=0.01) is None
            assert exchanges() > before + 2
