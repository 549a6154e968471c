"""Values computed once per key and shared by every core in the process.

Every node meets the same names, addresses and news over and over, and a simulation
runs thousands of nodes in one process. Sharing one copy of each (an address
tuple, an encoding, a hash) saves both the work and the memory of each node holding
its own (docs/scale.md). Values must be immutable, so sharing them changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedCache(dict[K, V]):
    """`cache[key]` is `make(key)`, computed on first use. A hit is one dict lookup.
    Past `limit` entries the cache starts over, so that hostile input or a long
    life with churn cannot grow it for ever."""

    __slots__ = ("_limit", "_make")

    def __init__(self, make: Callable[[K], V], limit: int) -> None:
        super().__init__()
        self._make = make
        self._limit = limit

    def __missing__(self, key: K) -> V:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._make(key)
        return value
