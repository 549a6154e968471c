"""Rate-limited links for the simulated networks (`LinkModel.limit_rate`).

A rate-limited address has two queues. What it sends leaves in the order it was
sent (`SendQueue`, one FIFO, as a host's own queue of outgoing packets). What it
receives shares the link (`SharedLink`): every packet crossing it at the same time
gets an equal part of the rate, which is how TCP flows through one bottleneck
settle. The difference matters: with one FIFO, of several bulk transfers that
arrive together the first finishes quickly and the later ones wait; sharing the
link, all of them finish late together, and when that is later than a stream's
timeout none finishes at all (the collapse `docs/gossip.md` §3 describes).

A packet's arrival through a `SharedLink` is not known when it is sent: packets
that come after it slow it down. The simulators therefore schedule it at the
earliest time it could be through (as if nothing else came), and ask again when
that time comes (`LinkModel._due`): it is then delivered, scheduled again, or
dropped (a stream message past its timeout).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Crossing", "RateLimit", "SendQueue", "SharedLink", "parse_rate"]

_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def parse_rate(text: str) -> float:
    """Bytes per second of a rate written as `tc` writes them ("64kbit": bit, kbit,
    mbit or gbit per second); `ValueError` naming `text` otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", text.strip().lower())
    rate = 0.0 if match is None else float(match.group(1)) * _UNITS[match.group(2)] / 8
    if rate <= 0:
        raise ValueError(f"rate {text!r} is not a positive rate like 64kbit")
    return rate


_DONE_BYTES = 1e-6
"""Remaining bytes below which a packet counts as through (float rounding)."""


@dataclass(slots=True)
class SendQueue:
    """The sending direction of a rate-limited link: one FIFO at `rate` bytes per
    second, and the time it is next idle."""

    rate: float
    free: float = -math.inf

    def crossing(self, at: float, size: int) -> tuple[float, float]:
        """When `size` bytes that reach the queue at `at` start and finish leaving
        (the queue is not changed: see `take`)."""
        start = self.free if self.free > at else at
        return start, start + size / self.rate

    def take(self, until: float) -> None:
        """Keep the link busy until `until` (if it is not already longer)."""
        if until > self.free:
            self.free = until


@dataclass(slots=True)
class SharedLink:
    """The receiving direction of a rate-limited link, shared equally by every
    packet crossing it (processor sharing at `rate` bytes per second).

    `left` holds each packet's bytes still to cross, as of `clock`; `streams`
    which of them are stream messages.
    """

    rate: float
    clock: float = -math.inf
    left: dict[int, float] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    _next: int = 0

    def backlog(self, now: float) -> float:
        """Datagram bytes still to cross at `now`: what fills a real link's queue.
        A stream's bytes do not count: its sender holds back what the link cannot
        take yet (TCP's congestion control), so they wait at the sender."""
        self.advance(now)
        streams = self.streams
        return sum(left for packet, left in self.left.items() if packet not in streams)

    def add(self, now: float, size: int, stream: bool) -> int:
        """A packet of `size` bytes (a stream message or not) starts crossing at
        `now`; its number."""
        self.advance(now)
        self._next += 1
        self.left[self._next] = float(size)
        if stream:
            self.streams.add(self._next)
        return self._next

    def advance(self, now: float) -> None:
        """Move `clock` to `now`, serving the packets crossing meanwhile (a clock
        already later stays: arrivals are registered up to one latency early)."""
        left = self.left
        clock = self.clock
        while left and clock < now:
            smallest = min(left.values())
            step = smallest * len(left) / self.rate
            if clock + step > now:
                served = (now - clock) * self.rate / len(left)
                for packet in left:
                    left[packet] -= served
                clock = now
                break
            clock += step
            for packet in list(left):
                rest = left[packet] - smallest
                if rest <= _DONE_BYTES:
                    self._forget(packet)
                else:
                    left[packet] = rest
        self.clock = max(clock, now)

    def through(self, packet: int, now: float) -> float:
        """When `packet` is through if nothing else comes: `now` or earlier if it
        is (it is then forgotten), else a later time."""
        self.advance(now)
        mine = self.left.get(packet)
        if mine is None:
            return now
        if mine <= _DONE_BYTES:
            self._forget(packet)
            return now
        ahead = sum(min(other, mine) for other in self.left.values())
        return self.clock + ahead / self.rate

    def drop(self, packet: int) -> None:
        """Stop carrying `packet` (a stream message that timed out)."""
        self._forget(packet)

    def _forget(self, packet: int) -> None:
        self.left.pop(packet, None)
        self.streams.discard(packet)


@dataclass(slots=True)
class RateLimit:
    """One address's rate-limited link (see `LinkModel.limit_rate`)."""

    out: SendQueue
    into: SharedLink
    queue_delay: float
    stream_timeout: float


@dataclass(slots=True)
class Crossing:
    """A packet on its way through a `SharedLink`: which, its number there, what
    the receiver's slow delay adds after it, and when a stream message gives up
    (infinity for a datagram)."""

    link: SharedLink
    packet: int
    slow: float
    deadline: float
