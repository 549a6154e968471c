"""A discrete-event simulator that drives real protocol cores without Trio.

`FastSim` is a network (`LinkModel`'s knobs and packet fates, the same as the Trio
`Network`'s) and an event loop in one: a single heap of timed events (packet
deliveries, each node's next core deadline, scripted calls), popped in time order
with the clock jumping to each. Each node is a `SwimCore` driven exactly as the Trio
driver (`swimnode.node`) drives one: `handle_packet` on delivery, `handle_timer` for
each concern whose `next_deadline` has come, `handle_stream_result` after a stream
send, then `take_output()`, whose datagrams and streams go through the model. The
core's bytes are its real encodings and nothing is skipped, so the simulator can
only differ from a real node where the network does.

What makes it faster than Trio under `MockClock` is what it leaves out: no tasks,
cancel scopes or scheduler round trips per packet, and one wakeup per node per
deadline rather than one per concern. A run is reproducible from its seed: there is
no scheduler to shuffle same-instant work, ties are broken by insertion order.

Faults as on `Network`: loss, jitter, duplication, reordering, per-link overrides,
partitions, chosen drops, slow receivers (all `LinkModel`), plus `pause`/`resume`
(SIGSTOP: the node's timers run but nothing reaches it and what it sends is held,
as on `Network`) and `crash` (kill -9).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import Any, Unpack

from ..net.transport import Address
from ..protocol.config import Config
from ..protocol.contract import Output, Signal, Timer
from ..protocol.core import SwimCore
from ..protocol.events import MemberEvent
from .linkmodel import LinkKnobs, LinkModel, endpoint_rng

__all__ = ["FastSim", "SimNode"]

GENERATION_EPOCH = 1_700_000_000_000_000
"""Generations are microseconds since 1970 on a real node (`node.new_generation`);
simulated ones start here, so their encodings are as long as a real node's."""

_DELIVER, _TIMER, _CALL = 0, 1, 2
_TIMERS = tuple(Timer)

EventHook = Callable[[float, str, MemberEvent], None]
"""`(time, observer, event)`: called for every membership event a node emits."""
SignalHook = Callable[[float, str, Signal], None]
"""`(time, node, signal)`: called for every signal a node emits."""


class SimNode:
    """One simulated process: a core, and what its transport would hold."""

    __slots__ = (
        "address",
        "alive",
        "core",
        "deadlines",
        "held_in",
        "held_out",
        "held_streams",
        "name",
        "paused",
        "pending",
        "rng",
        "sent",
        "tails",
        "wake",
    )

    def __init__(self, core: SwimCore, rng: random.Random, sent: list[int]) -> None:
        self.core = core
        self.name = core.name
        self.address: Address = core.address
        self.rng = rng
        """Draws the fate of every packet this node sends (as `SimTransport`'s)."""
        self.sent = sent
        self.alive = True
        self.paused = False
        self.pending = 0
        """Packets on their way to this node or waiting for it (the queue limit)."""
        self.wake = math.inf
        """The time of this node's one valid timer entry in the heap."""
        self.deadlines = (math.inf, math.inf, math.inf)
        """The core's deadline per `Timer` concern, as read after the last call."""
        self.held_in: list[tuple[SimNode, Address, bytes, bool]] = []
        self.held_out: list[tuple[Address, bytes]] = []
        self.held_streams: list[tuple[int, Address, bytes]] = []
        self.tails: dict[Address, float] = {}


class FastSim(LinkModel):
    """A network of simulated nodes and the event loop that runs them.

    Build one with the network knobs (`LinkModel`'s arguments), add nodes with
    `start`, then advance the clock with `run_until` / `run_for`; `call_at`
    schedules your own code (faults, measurements) at a simulated time.
    """

    def __init__(self, seed: int = 0, **knobs: Unpack[LinkKnobs]) -> None:
        super().__init__(seed, **knobs)
        self.now = 0.0
        self.nodes: dict[Address, SimNode] = {}
        self.on_event: EventHook | None = None
        self.on_signal: SignalHook | None = None
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._generation = 0

    # -- nodes --------------------------------------------------------------

    def start(self, config: Config) -> SimNode:
        """Start a node with `config` at the current time (its `bind` is its address;
        a restart after `crash` reuses it). Raises `ValueError` if a node runs there."""
        address = config.bind
        if address in self.nodes:
            raise ValueError(f"address {address[0]}:{address[1]} is already attached")
        if config.advertise is None:
            config = config.replace(advertise=address)
        # As the Trio driver seeds its core: from the config's seed (else from ours,
        # so that a run stays reproducible).
        seed = config.seed if config.seed is not None else f"{self.seed}/core/{address}"
        core_rng = random.Random(random.Random(seed).getrandbits(64))
        self._generation = max(GENERATION_EPOCH + int(self.now * 1e6), self._generation + 1)
        core = SwimCore(config, now=self.now, rng=core_rng, generation=self._generation)
        node = SimNode(core, endpoint_rng(self.seed, address), self._sent_counts(address))
        node.paused = address in self._paused
        self.nodes[address] = node
        self._pump(node)
        return node

    def crash(self, address: Address) -> None:
        """Kill the node at `address` at once: no goodbye, and what was on its way to
        it or held by it is lost (counted as `unreachable`)."""
        node = self.nodes.pop(address, None)
        self._paused.discard(address)
        if node is None:
            return
        node.alive = False
        self.stats.unreachable += len(node.held_in)
        node.held_in.clear()
        node.held_out.clear()
        node.held_streams.clear()

    def pause(self, address: Address) -> None:
        """Freeze the process at `address`, as with SIGSTOP: nothing reaches it until
        `resume` (arrivals wait, within `queue_limit`), and what it sends is held
        and sent at `resume` with fresh fates. Its timers still run, as they do
        under the Trio `Network`, whose pause also stops only the transport."""
        self._paused.add(address)
        node = self.nodes.get(address)
        if node is not None:
            node.paused = True

    def resume(self, address: Address) -> None:
        """Unfreeze `address`: send what it held back and let it receive."""
        self._paused.discard(address)
        node = self.nodes.get(address)
        if node is None or not node.paused:
            return
        node.paused = False
        held, node.held_out = node.held_out, []
        for dest, data in held:
            self._dispatch(node, dest, data)
        streams, node.held_streams = node.held_streams, []
        for ticket, dest, data in streams:
            node.core.handle_stream_result(ticket, self._stream(node, dest, data), self.now)
        arrived, node.held_in = node.held_in, []
        for item in arrived:
            self._schedule(self.now, _DELIVER, item)
        self._pump(node)

    def pump(self, address: Address) -> None:
        """Carry out what the node at `address` was asked for by a command called on
        its core (`set_state`, `leave`, `join`, ...), as the Trio node does after one."""
        node = self.nodes.get(address)
        if node is not None:
            self._pump(node)

    # -- the clock ----------------------------------------------------------

    def call_at(self, at: float, fn: Callable[[], object]) -> None:
        """Run `fn()` when the clock reaches `at` (after what is already due then)."""
        self._schedule(max(at, self.now), _CALL, fn)

    def run_for(self, seconds: float) -> None:
        """Advance the clock by `seconds`."""
        self.run_until(self.now + seconds)

    def run_until(self, at: float) -> None:
        """Process every event due up to `at`, then set the clock to `at`."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= at:
            when, _, kind, item = pop(heap)
            self.now = when
            if kind == _DELIVER:
                self._deliver(item)
            elif kind == _TIMER:
                if item.wake == when and item.alive:
                    self._fire(item, when)
            else:
                item()
        self.now = max(self.now, at)

    @property
    def pending_events(self) -> int:
        """Entries in the event heap (stale timer entries included)."""
        return len(self._heap)

    def _schedule(self, at: float, kind: int, item: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, item))

    # -- driving a core -------------------------------------------------------

    def _fire(self, node: SimNode, now: float) -> None:
        node.wake = math.inf
        core = node.core
        # The deadlines read at the last pump still hold: a core's deadlines move
        # only when a call changes its state, and every call is followed by a pump.
        for timer, deadline in zip(_TIMERS, node.deadlines, strict=True):
            if deadline <= now:
                core.handle_timer(timer, now)
        self._pump(node)

    def _deliver(self, item: tuple[SimNode, Address, bytes, bool]) -> None:
        node, source, data, reliable = item
        if not node.alive:
            self.stats.unreachable += 1
            self._forget(item)
            return
        if node.paused:
            node.held_in.append(item)
            return
        if self._crossings:
            wait = self._due(item, self.now)
            if wait > 0:
                self._schedule(self.now + wait, _DELIVER, item)
                return
            if wait < 0:
                node.pending -= 1
                return
        node.pending -= 1
        if not self._arrives(source, node.address):
            return
        node.core.handle_packet(self.now, source, data, reliable)
        self._pump(node)

    def _pump(self, node: SimNode) -> None:
        """Carry out what the core asked for, as the Trio driver's pump does, and
        put the node's next deadline on the heap."""
        core = node.core
        now = self.now
        # A stream's result is new input, whose output is carried out in turn.
        while self._carry_out(node, core.take_output(), now):
            pass
        deadlines = node.deadlines = core.next_deadlines()
        deadline = min(deadlines)
        # A deadline already past is due now (as `trio.move_on_at` would fire).
        if deadline < now:
            deadline = now
        if deadline != node.wake and node.alive:
            node.wake = deadline
            if deadline != math.inf:
                self._schedule(deadline, _TIMER, node)

    def _carry_out(self, node: SimNode, out: Output, now: float) -> bool:
        """Hand on events and signals, send datagrams and streams; whether a stream
        result was reported to the core."""
        if out.events and self.on_event is not None:
            for event in out.events:
                self.on_event(now, node.name, event)
        if out.signals and self.on_signal is not None:
            for signal in out.signals:
                self.on_signal(now, node.name, signal)
        for dest, data in out.datagrams:
            self._send(node, dest, data)
        reported = False
        for ticket, dest, data in out.streams:
            self._record_sent(node.sent, len(data))
            if node.paused:
                node.held_streams.append((ticket, dest, data))
            else:
                node.core.handle_stream_result(ticket, self._stream(node, dest, data), now)
                reported = True
        return reported

    # -- the network ------------------------------------------------------------

    def _send(self, node: SimNode, dest: Address, data: bytes) -> None:
        self._record_sent(node.sent, len(data))
        if node.paused:
            node.held_out.append((dest, data))
        else:
            self._dispatch(node, dest, data)

    def _dispatch(self, node: SimNode, dest_addr: Address, data: bytes) -> None:
        if len(data) > self.max_datagram:
            self.stats.oversize += 1
            return
        dest = self.nodes.get(dest_addr)
        if dest is None:
            self.stats.unreachable += 1
            return
        src = node.address
        for at in self._datagram_arrivals(node.rng, src, dest_addr, data, self.now):
            self._arrive(dest, at, (dest, src, data, False))

    def _arrive(self, dest: SimNode, at: float, item: tuple[SimNode, Address, bytes, bool]) -> bool:
        """Schedule `item`'s delivery at `at`, unless `dest`'s queue is full."""
        if dest.pending >= self.queue_limit:
            self.stats.overflow += 1
            self._hold(None)
            return False
        self._hold(item)
        dest.pending += 1
        self._schedule(at, _DELIVER, item)
        return True

    def _stream(self, node: SimNode, dest_addr: Address, data: bytes) -> bool:
        """Send one stream message; whether it went (as `send_reliable` not raising)."""
        dest = self.nodes.get(dest_addr)
        src = node.address
        try:
            self._check_stream(src, dest_addr, len(data), dest is not None)
            at = self._stream_arrival(
                node.rng, src, dest_addr, len(data), self.now, node.tails.get(dest_addr)
            )
        except OSError:
            return False
        assert dest is not None
        if dest.pending >= self.queue_limit:
            self._hold(None)
            self._overflow(dest_addr)
            return False
        node.tails[dest_addr] = at
        return self._arrive(dest, at, (dest, src, data, True))
