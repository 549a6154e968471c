"""The transmit-limited broadcast queue (memberlist's `TransmitLimitedQueue`).

Membership news is encoded once and piggybacked on outgoing packets until it has been
sent `retransmit_mult * ceil(log10(N + 1))` times. Items sent fewer times go first, so
fresh news spreads before old news is repeated; queuing news about a member replaces
whatever was queued about it before, so stale news is never sent after newer news.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass


def log_scale(n_members: int) -> int:
    """`max(1, ceil(log10(N + 1)))`: the number of gossip hops, give or take, that news
    takes to reach `n_members` (memberlist scales retransmits by it, Serf query
    timeouts)."""
    return max(1, math.ceil(math.log10(n_members + 1)))


def retransmit_limit(retransmit_mult: int, n_members: int) -> int:
    """How many times one broadcast is sent in a cluster of `n_members`."""
    return retransmit_mult * log_scale(n_members)


BroadcastKey = Hashable
"""What a broadcast is about: a member's name for membership news; other kinds of
broadcast (queries) use tuples, which can never equal a name."""


@dataclass(slots=True)
class _Item:
    key: BroadcastKey
    data: bytes
    transmits: int


_MAX_MISSES = 16
"""Items that did not fit before `take` stops looking: with a thousand queued, a full
scan for every packet would cost more than the few bytes it could still fill."""


class BroadcastQueue:
    """Encoded broadcasts keyed by what they are about (a member's name, mostly)."""

    def __init__(self, retransmit_mult: int) -> None:
        self._mult = retransmit_mult
        self._items: dict[BroadcastKey, _Item] = {}
        self.size = 0
        """Bytes of news queued."""
        # transmit count -> items with that count, in queuing order
        self._levels: dict[int, dict[BroadcastKey, _Item]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: BroadcastKey, data: bytes, transmits: int = 0) -> None:
        """Queue `data` as the news about `key`, replacing older news about it.
        `transmits` counts sends already spent (for news that is not fresh)."""
        self.discard(key)
        item = _Item(key, data, transmits)
        self._items[key] = item
        self._levels.setdefault(transmits, {})[key] = item
        self.size += len(data)

    def discard(self, key: BroadcastKey) -> None:
        """Forget queued news about `key`, if any."""
        old = self._items.pop(key, None)
        if old is not None:
            self._unlevel(old)
            self.size -= len(old.data)

    def _unlevel(self, item: _Item) -> None:
        level = self._levels[item.transmits]
        del level[item.key]
        if not level:
            del self._levels[item.transmits]

    def take(
        self, budget: int, n_members: int, per_item_overhead: int = 0, max_items: int = 1 << 30
    ) -> list[bytes]:
        """Pick at most `max_items` broadcasts whose sizes (plus `per_item_overhead`
        each) fit in `budget` bytes, least-sent first, and count one transmission for
        each picked item."""
        if not self._items or budget <= 0 or max_items <= 0:
            return []
        # Pick first, move after: an item moved up a level must not be met again
        # when the scan reaches that level.
        picked = self._pick(budget, per_item_overhead, max_items)
        return self._advance(picked, retransmit_limit(self._mult, n_members))

    def _pick(
        self, budget: int, per_item_overhead: int, max_items: int
    ) -> list[tuple[int, list[_Item]]]:
        levels = self._levels
        picked: list[tuple[int, list[_Item]]] = []
        count = misses = 0
        for transmits in sorted(levels):
            chosen: list[_Item] = []
            for item in levels[transmits].values():
                cost = len(item.data) + per_item_overhead
                if cost <= budget:
                    chosen.append(item)
                    budget -= cost
                    count += 1
                    if budget < 16 or count >= max_items:
                        break
                else:
                    misses += 1
                    if misses >= _MAX_MISSES:
                        break
            if chosen:
                picked.append((transmits, chosen))
            if budget < 16 or count >= max_items or misses >= _MAX_MISSES:
                break
        return picked

    def _advance(self, picked: list[tuple[int, list[_Item]]], limit: int) -> list[bytes]:
        # Count one transmission for each picked item: up a level, or out at `limit`.
        levels, items = self._levels, self._items
        out: list[bytes] = []
        for transmits, chosen in picked:
            level = levels[transmits]
            sent = transmits + 1
            above = levels.setdefault(sent, {}) if sent < limit else None
            for item in chosen:
                key = item.key
                del level[key]
                out.append(item.data)
                if above is not None:
                    item.transmits = sent
                    above[key] = item
                else:
                    del items[key]
                    self.size -= len(item.data)
            if not level:
                del levels[transmits]
        return out

    @property
    def fresh(self) -> bool:
        """Whether some queued news has not been sent at all yet."""
        return 0 in self._levels

    def pending(self, key: BroadcastKey) -> bool:
        """Whether news about `key` is still queued."""
        return key in self._items
