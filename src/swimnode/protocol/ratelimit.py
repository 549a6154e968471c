"""Per-source token buckets for requests that cost the receiver more than the sender.

A full-state `Sync`, a digest reply and a relayed probe each make a node do work or
send bytes on a stranger's say-so; without a limit, one source could turn a node into
an amplifier or keep it busy. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class RateLimiter:
    """Allows `rate` requests per second per source, in bursts of up to `burst`.

    Remembers at most `max_sources` sources (least recently seen forgotten first), so
    a flood of spoofed sources costs bounded memory: a forgotten source simply starts
    again with a full bucket.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("need rate > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, source: Hashable, now: float) -> bool:
        """Spend one token of `source`'s bucket if it has one."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
