"""The simulated network's model, without any scheduler: what happens to a packet.

Both simulators share it, so they cannot disagree on the network: `Network` (the
in-memory transports for Trio under `MockClock`) and `FastSim` (the discrete-event
simulator, no Trio). `LinkModel` holds the knobs (latency, jitter, loss,
duplication, reordering, per-link overrides, partitions, chosen drops, pauses, slow
receivers, rate-limited links), the counters, and the decision for each packet:
dropped (and why), or when it arrives. The caller supplies the clock and the
sender's random generator and does the delivering.

Determinism: every draw comes from the *sending* endpoint's generator, and a draw is
made only for a feature that is on, so turning one on does not shift the random
stream of a run that never used it.
"""

from __future__ import annotations

import errno
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TypedDict

from ..net.transport import Address
from .linkrate import Crossing, RateLimit, SendQueue, SharedLink

__all__ = ["DropFilter", "LinkKnobs", "LinkModel", "LinkParams", "NetworkStats"]

MAX_RELIABLE_SIZE = 64 * 1024 * 1024
"""Largest message a simulated stream accepts."""

REORDER_FACTOR = 10.0
"""A reordered datagram is held back by up to this many times the latency."""

DropFilter = Callable[[Address, Address, bytes], bool]
"""`(source, dest, data) -> drop?`, see `LinkModel.drop_datagrams`."""


@dataclass(slots=True)
class NetworkStats:
    """Counters for everything that happened on a simulated network.

    `sent` and `bytes_sent` count datagrams and stream messages sent (duplicates
    are not counted again); `delivered` counts packets handed to a receiver. The
    remaining fields count dropped packets by reason, and `duplicated` counts extra
    copies made. `congestion` counts what a rate-limited link (`limit_rate`) lost:
    datagrams its full queue dropped and stream messages that timed out on it.
    """

    sent: int = 0
    delivered: int = 0
    bytes_sent: int = 0
    duplicated: int = 0
    loss: int = 0
    partition: int = 0
    unreachable: int = 0
    overflow: int = 0
    oversize: int = 0
    filtered: int = 0
    congestion: int = 0

    @property
    def dropped(self) -> int:
        """Total packets dropped for any reason."""
        return (
            self.loss
            + self.partition
            + self.unreachable
            + self.overflow
            + self.oversize
            + self.filtered
            + self.congestion
        )

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (handy for logging and comparisons)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Per-link overrides; `None` means "use the network default"."""

    latency: float | None = None
    jitter: float | None = None
    loss: float | None = None


@dataclass(frozen=True, slots=True)
class _Partition:
    side_a: frozenset[Address]
    side_b: frozenset[Address]
    one_way: bool

    def blocks(self, src: Address, dst: Address) -> bool:
        if src in self.side_a and dst in self.side_b:
            return True
        return not self.one_way and src in self.side_b and dst in self.side_a


class LinkKnobs(TypedDict, total=False):
    """`LinkModel`'s keyword arguments, for the subclasses that pass them on."""

    latency: float
    jitter: float
    loss: float
    duplicate: float
    reorder: float
    max_datagram: int
    queue_limit: int


def check_probability(name: str, value: float) -> None:
    """Raise `ValueError` unless `value` is in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def check_delay(name: str, value: float) -> None:
    """Raise `ValueError` unless `value` is a finite, non-negative number of seconds."""
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite, non-negative number of seconds, got {value!r}")


def endpoint_rng(seed: int, address: Address) -> random.Random:
    """The generator an endpoint at `address` draws its packets' fates from (the same
    for an endpoint attached again there after a crash)."""
    return random.Random(f"{seed}/{address[0]}:{address[1]}")


class LinkModel:
    """The knobs of a simulated network and the fate of each packet.

    Datagrams take `latency + uniform(0, jitter)` seconds (plus the receiver's slow
    delay, see `set_slow`), are dropped with probability `loss`, duplicated with
    probability `duplicate` (the copy gets its own jitter) and, with probability
    `reorder`, held back by an extra `uniform(0, 10 * latency)` so they swap places
    with neighbours. Datagrams over `max_datagram` bytes are dropped. A receiver
    holding `queue_limit` undelivered packets drops further ones. The defaults
    (`latency`, `jitter`, `loss`, `duplicate`, `reorder`) are plain attributes and
    may be changed at any time; they apply to packets sent afterwards.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float = 0.001,
        jitter: float = 0.0005,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        max_datagram: int = 65507,
        queue_limit: int = 4096,
    ) -> None:
        check_delay("latency", latency)
        check_delay("jitter", jitter)
        check_probability("loss", loss)
        check_probability("duplicate", duplicate)
        check_probability("reorder", reorder)
        if max_datagram < 0:
            raise ValueError(f"max_datagram must be >= 0, got {max_datagram!r}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be >= 1, got {queue_limit!r}")
        self.seed = seed
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.max_datagram = max_datagram
        self.queue_limit = queue_limit
        self.stats = NetworkStats()
        self._links: dict[tuple[Address, Address], LinkParams] = {}
        self._partitions: list[_Partition] = []
        self._drop_when: DropFilter | None = None
        self._paused: set[Address] = set()
        self._slow: dict[Address, float] = {}
        self._rates: dict[Address, RateLimit] = {}
        # Arrivals through a SharedLink: made by `_datagram_arrivals` and
        # `_stream_arrival`, tied by `_hold` to what the caller schedules (by id,
        # the object kept alive beside it), asked after by `_due`.
        self._joining: list[Crossing] = []
        self._crossings: dict[int, tuple[object, Crossing]] = {}
        # Lists rather than tuples so the hot send path can bump them in place.
        self._sent_by: dict[Address, list[int]] = {}

    # -- fault injection ---------------------------------------------------

    def set_link(
        self,
        a: Address,
        b: Address,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        symmetric: bool = True,
    ) -> None:
        """Override latency, jitter and/or loss for traffic from `a` to `b`
        (and `b` to `a` when `symmetric`).

        Arguments left as `None` keep any earlier override for that link, else
        the network default. A link's `loss` replaces the default loss.
        """
        if latency is not None:
            check_delay("latency", latency)
        if jitter is not None:
            check_delay("jitter", jitter)
        if loss is not None:
            check_probability("loss", loss)
        pairs = [(a, b), (b, a)] if symmetric else [(a, b)]
        for pair in pairs:
            old = self._links.get(pair, LinkParams())
            self._links[pair] = LinkParams(
                latency=old.latency if latency is None else latency,
                jitter=old.jitter if jitter is None else jitter,
                loss=old.loss if loss is None else loss,
            )

    def clear_links(self) -> None:
        """Remove every per-link override."""
        self._links.clear()

    def partition(
        self,
        side_a: Iterable[Address],
        side_b: Iterable[Address],
        *,
        one_way: bool = False,
    ) -> None:
        """Block traffic between two groups of addresses.

        With `one_way=True` only traffic from `side_a` to `side_b` is blocked.
        Blocked datagrams are dropped (counted as `partition`), both when sent
        and when they would be delivered, so packets in flight when the
        partition starts are lost as well (a reliable message in flight is
        lost too, as a broken connection would lose it). A stream send across
        a partition fails with `ConnectionRefusedError`. Partitions add up
        until `heal()`.
        """
        self._partitions.append(_Partition(frozenset(side_a), frozenset(side_b), one_way))

    def drop_datagrams(self, predicate: DropFilter | None) -> None:
        """Drop every datagram for which `predicate(source, dest, data)` is true
        (counted as `filtered`), until called again with None. Reliable messages
        pass: this models a peer that misses particular gossip, not a broken link."""
        self._drop_when = predicate

    def heal(self) -> None:
        """Remove all partitions."""
        self._partitions.clear()

    def is_blocked(self, src: Address, dst: Address) -> bool:
        """Whether a partition currently blocks traffic from `src` to `dst`."""
        return any(p.blocks(src, dst) for p in self._partitions)

    def is_paused(self, address: Address) -> bool:
        """Whether `address` is currently paused."""
        return address in self._paused

    def set_slow(self, address: Address, delay: float) -> None:
        """Add `delay` seconds to everything `address` receives from now on;
        `0` clears it. Models a CPU-starved process that reads late."""
        check_delay("delay", delay)
        if delay:
            self._slow[address] = delay
        else:
            self._slow.pop(address, None)

    def limit_rate(
        self,
        address: Address,
        rate: float | None,
        *,
        queue_delay: float = 0.5,
        stream_timeout: float = 10.0,
    ) -> None:
        """Limit the link of `address` to `rate` bytes per second each way, from
        packets sent now on; None removes the limit. Models a slow access link, as
        `tbf` on both ends of it does in `swimnode.testing.netlab`.

        What `address` sends leaves in the order it was sent, `size / rate`
        seconds each, before the latency. What it receives shares the link
        equally with everything else arriving (`swimnode.testing.linkrate`), after
        the latency. A datagram that would wait more than `queue_delay` seconds
        to leave, or arrive while more than `queue_delay` seconds' worth of
        datagram bytes are still arriving, is dropped, as by a full `tbf`
        (counted as `congestion`). A stream message is never dropped that way (its
        bytes wait at its sender, as TCP's do), but one that is not through
        within `stream_timeout` seconds of being sent (the real transports'
        default) fails, as a real send that timed out part way does, having used
        the link until then (counted as `congestion`): on the sending side the
        send raises `TimeoutError` at once (a real sender learns it only after
        the timeout); on the receiving side the message is lost at the timeout and
        the sender, which was told it went, is not told otherwise (a real
        sender is told of success once its kernel holds the bytes). Stream
        messages through a shared link may overtake each other, as the real
        transports' messages, each on its own connection, can.
        """
        if rate is None:
            self._rates.pop(address, None)
            return
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of bytes per second, got {rate!r}")
        check_delay("queue_delay", queue_delay)
        check_delay("stream_timeout", stream_timeout)
        self._rates[address] = RateLimit(
            SendQueue(rate), SharedLink(rate), queue_delay, stream_timeout
        )

    # -- accounting --------------------------------------------------------

    def sent_by(self, address: Address) -> tuple[int, int]:
        """`(messages, bytes)` sent from `address` so far, over all the
        endpoints ever attached there."""
        counts = self._sent_by.get(address)
        return (0, 0) if counts is None else (counts[0], counts[1])

    def _sent_counts(self, address: Address) -> list[int]:
        """The `[messages, bytes]` counters of `address`, bumped in place by senders."""
        return self._sent_by.setdefault(address, [0, 0])

    def _record_sent(self, counts: list[int], size: int) -> None:
        """Count a message of `size` bytes sent from the address whose counters are
        `counts` (from `_sent_counts`), in `stats` and there."""
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += size
        counts[0] += 1
        counts[1] += size

    # -- the fate of a packet ------------------------------------------------

    def _link_params(self, src: Address, dst: Address) -> tuple[float, float, float]:
        """Latency, jitter and loss from `src` to `dst`: the network's, or the
        link's where `set_link` overrides them."""
        latency, jitter, loss = self.latency, self.jitter, self.loss
        link = self._links.get((src, dst)) if self._links else None
        if link is not None:
            latency = link.latency if link.latency is not None else latency
            jitter = link.jitter if link.jitter is not None else jitter
            loss = link.loss if link.loss is not None else loss
        return latency, jitter, loss

    def _datagram_arrivals(
        self, rng: random.Random, src: Address, dst: Address, data: bytes, now: float
    ) -> tuple[float, ...]:
        """When a datagram sent now from `src` to an attached `dst` arrives: no time
        (dropped, counted by reason), one, or two (duplicated, counted). The caller
        has checked its size and that `dst` is attached."""
        stats = self.stats
        if self._partitions and self.is_blocked(src, dst):
            stats.partition += 1
            return ()
        if self._drop_when is not None and self._drop_when(src, dst, data):
            stats.filtered += 1
            return ()
        latency, jitter, loss = self._link_params(src, dst)
        if loss and rng.random() < loss:
            stats.loss += 1
            return ()
        if self._rates:
            return self._shaped_arrivals(rng, src, dst, len(data), now, latency, jitter)
        base = now + latency + self._slow.get(dst, 0.0)
        at = base + rng.uniform(0.0, jitter) if jitter else base
        if self.reorder and rng.random() < self.reorder:
            at += rng.uniform(0.0, REORDER_FACTOR * latency)
        if self.duplicate and rng.random() < self.duplicate:
            stats.duplicated += 1
            copy_at = base + rng.uniform(0.0, jitter) if jitter else base
            return (at, copy_at)
        return (at,)

    def _shaped_arrivals(
        self,
        rng: random.Random,
        src: Address,
        dst: Address,
        size: int,
        now: float,
        latency: float,
        jitter: float,
    ) -> tuple[float, ...]:
        """`_datagram_arrivals` past the loss draw, when some link is rate-limited:
        each copy crosses the sender's and the receiver's queues (see `limit_rate`),
        and its wire time is drawn as without limits."""
        out, into = self._rates.get(src), self._rates.get(dst)
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            self.stats.duplicated += 1
            copies = 2
        slow = self._slow.get(dst, 0.0)
        arrivals: list[float] = []
        for copy in range(copies):
            at = now
            if out is not None:
                start, left = out.out.crossing(now, size)
                if start - now > out.queue_delay:
                    self.stats.congestion += 1
                    continue
                out.out.take(left)
                at = left
            at += latency + (rng.uniform(0.0, jitter) if jitter else 0.0)
            if copy == 0 and self.reorder and rng.random() < self.reorder:
                at += rng.uniform(0.0, REORDER_FACTOR * latency)
            if into is not None:
                link = into.into
                if link.backlog(at) > link.rate * into.queue_delay:
                    self.stats.congestion += 1
                    continue
                at = self._join(link, at, size, slow, math.inf)
            arrivals.append(at + slow)
        return tuple(arrivals)

    def _join(self, link: SharedLink, at: float, size: int, slow: float, deadline: float) -> float:
        """Start `size` bytes through `link` at `at` (for the caller's next `_hold`),
        a stream message if `deadline` is finite; the earliest they can be through."""
        packet = link.add(at, size, deadline < math.inf)
        self._joining.append(Crossing(link, packet, slow, deadline))
        return min(link.through(packet, at), deadline)

    def _hold(self, key: object | None) -> None:
        """Tie the oldest arrival through a shared link that `_datagram_arrivals`
        or `_stream_arrival` made to `key`, the object the caller schedules for
        delivery (None: the caller dropped it; its bytes still cross the link).
        Callers call it once per arrival time they got, while any are waiting."""
        if self._joining:
            crossing = self._joining.pop(0)
            if key is not None:
                self._crossings[id(key)] = (key, crossing)

    def _forget(self, key: object) -> None:
        """`key` will not be delivered (its receiver is gone): stop asking after it."""
        if self._crossings:
            self._crossings.pop(id(key), None)

    def _due(self, key: object, now: float) -> float:
        """How much longer `key` (scheduled for delivery now) waits on a shared
        link: 0.0 to deliver it now, more to schedule it again, or -1.0 if it is
        lost there (a stream message past its timeout, counted)."""
        held = self._crossings.pop(id(key), None)
        if held is None:
            return 0.0
        crossing = held[1]
        at = now - crossing.slow
        through = crossing.link.through(crossing.packet, at)
        if through <= at:
            return 0.0
        if at >= crossing.deadline:
            crossing.link.drop(crossing.packet)
            self.stats.congestion += 1
            return -1.0
        self._crossings[id(key)] = held
        return min(through, crossing.deadline) - at

    def _arrives(self, src: Address, dst: Address) -> bool:
        """Whether a packet from `src` that is due at `dst` now is delivered: not if
        a partition started while it was in flight. Counted either way."""
        if self._partitions and self.is_blocked(src, dst):
            self.stats.partition += 1
            return False
        self.stats.delivered += 1
        return True

    def _check_stream(self, src: Address, dst: Address, size: int, attached: bool) -> None:
        """Raise as a failed stream send would: too large, nobody at `dst`, or a
        partition in the way (each counted)."""
        stats = self.stats
        if size > MAX_RELIABLE_SIZE:
            stats.oversize += 1
            raise OSError(errno.EMSGSIZE, f"reliable message of {size} bytes is too large")
        if not attached:
            stats.unreachable += 1
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"nothing attached at {dst[0]}:{dst[1]}"
            )
        if self._partitions and self.is_blocked(src, dst):
            stats.partition += 1
            raise ConnectionRefusedError(
                errno.ECONNREFUSED,
                f"{dst[0]}:{dst[1]} is partitioned from {src[0]}:{src[1]}",
            )

    def _stream_arrival(
        self,
        rng: random.Random,
        src: Address,
        dst: Address,
        size: int,
        now: float,
        tail: float | None,
    ) -> float:
        """When a stream message of `size` bytes sent now arrives; never before
        `tail`, the arrival of the previous message on the same stream (a stream
        never reorders). Raises `TimeoutError` (counted) if a rate-limited link
        holds it past its stream timeout (see `limit_rate`)."""
        latency, jitter, _ = self._link_params(src, dst)
        slow = self._slow.get(dst, 0.0)
        at = now + latency + slow
        if jitter:
            at += rng.uniform(0.0, jitter)
        if self._rates:
            out, into = self._rates.get(src), self._rates.get(dst)
            if out is not None:
                at += self._stream_out(out, now, size, dst) - now
            if into is not None:
                deadline = now + into.stream_timeout
                at = self._join(into.into, at - slow, size, slow, deadline) + slow
        return at if tail is None else max(at, tail)

    def _stream_out(self, limit: RateLimit, now: float, size: int, dst: Address) -> float:
        """When a stream message of `size` bytes sent now has left through the
        sender's rate-limited link `limit`; raises `TimeoutError` (counted) if
        that is past the stream timeout, keeping the link busy until then."""
        _, done = limit.out.crossing(now, size)
        deadline = now + limit.stream_timeout
        if done > deadline:
            limit.out.take(deadline)
            self.stats.congestion += 1
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"stream to {dst[0]}:{dst[1]} timed out after {limit.stream_timeout} s"
                " on a rate-limited link",
            )
        limit.out.take(done)
        return done

    def _overflow(self, dst: Address) -> OSError:
        """Count a stream message refused by a full receive queue; the error to raise
        (a real stream would apply back-pressure; failing loudly keeps memory
        bounded without silently losing a "reliable" message)."""
        self.stats.overflow += 1
        return OSError(errno.ENOBUFS, f"receive queue of {dst[0]}:{dst[1]} is full")
