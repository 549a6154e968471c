"""The simulated network's model, without any scheduler: what happens to a packet.

Both simulators share it, so they cannot disagree on the network: `Network` (the
in-memory transports for Trio under `MockClock`) and `FastSim` (the discrete-event
simulator, no Trio). `LinkModel` holds the knobs (latency, jitter, loss,
duplication, reordering, per-link overrides, partitions, chosen drops, pauses, slow
receivers), the counters, and the decision for each packet: dropped (and why), or
when it arrives. The caller supplies the clock and the sender's random generator and
does the delivering.

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
    copies made.
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
        base = now + latency + self._slow.get(dst, 0.0)
        at = base + rng.uniform(0.0, jitter) if jitter else base
        if self.reorder and rng.random() < self.reorder:
            at += rng.uniform(0.0, REORDER_FACTOR * latency)
        if self.duplicate and rng.random() < self.duplicate:
            stats.duplicated += 1
            copy_at = base + rng.uniform(0.0, jitter) if jitter else base
            return (at, copy_at)
        return (at,)

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
        self, rng: random.Random, src: Address, dst: Address, now: float, tail: float | None
    ) -> float:
        """When a stream message sent now arrives; never before `tail`, the arrival of
        the previous message on the same stream (a stream never reorders)."""
        latency, jitter, _ = self._link_params(src, dst)
        at = now + latency + self._slow.get(dst, 0.0)
        if jitter:
            at += rng.uniform(0.0, jitter)
        return at if tail is None else max(at, tail)

    def _overflow(self, dst: Address) -> OSError:
        """Count a stream message refused by a full receive queue; the error to raise
        (a real stream would apply back-pressure; failing loudly keeps memory
        bounded without silently losing a "reliable" message)."""
        self.stats.overflow += 1
        return OSError(errno.ENOBUFS, f"receive queue of {dst[0]}:{dst[1]} is full")
