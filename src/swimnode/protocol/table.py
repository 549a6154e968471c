"""The member table: every record a node holds, with what the protocol reads often
kept up to date on each write (the live peers, the departed, the fingerprint)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from .hash64 import hash64
from .member import Member, MemberState
from .sharedcache import SharedCache

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT


class NameSet:
    """A set of names with O(1) add/remove and O(k) random sampling."""

    __slots__ = ("_index", "_names")

    def __init__(self) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def add(self, name: str) -> None:
        if name not in self._index:
            self._index[name] = len(self._names)
            self._names.append(name)

    def discard(self, name: str) -> None:
        i = self._index.pop(name, None)
        if i is None:
            return
        last = self._names.pop()
        if i < len(self._names):
            self._names[i] = last
            self._index[last] = i

    def add_all(self, names: list[str]) -> None:
        """Add `names`, none of which may be held yet (one pass, for a preload)."""
        start = len(self._names)
        self._names.extend(names)
        self._index.update(zip(names, range(start, start + len(names)), strict=True))

    def sample(self, rng: random.Random, k: int, exclude: tuple[str, ...] = ()) -> list[str]:
        n = len(self._names)
        want = min(k + len(exclude), n)
        picked = rng.sample(self._names, want) if want else []
        return [p for p in picked if p not in exclude][:k]


_LIVE_HASHES: SharedCache[tuple[str, int], int] = SharedCache(
    lambda key: hash64(f"{key[0]}\0{key[1]}".encode()), 1 << 14
)
"""The hash of each (name, incarnation): every node hashes every member it learns
of, the same pairs over and over in a simulation. At most about 2 MB, enough for
ten thousand nodes' preloads."""


def _live_hash(member: Member) -> int:
    """A member's share of the membership fingerprint: a hash of its name and
    incarnation while it is alive or suspect, else 0 (so records of departed members,
    which every node forgets at its own time, never make views differ)."""
    if member.state is not ALIVE and member.state is not SUSPECT:
        return 0
    return _LIVE_HASHES[member.name, member.incarnation]


class MemberTable(dict[str, Member]):
    """The member records, and the XOR of their `_live_hash`es kept up to date on
    every write, so reading the membership fingerprint costs nothing. Only item
    assignment and `del` are used on it; other mutators would bypass the fingerprint."""

    __slots__ = ("fingerprint",)

    def __init__(self) -> None:
        super().__init__()
        self.fingerprint = 0

    def __setitem__(self, name: str, member: Member) -> None:
        old = self.get(name)
        if old is None:
            self.fingerprint ^= _live_hash(member)
        elif old.incarnation != member.incarnation or old.state is not member.state:
            self.fingerprint ^= _live_hash(old) ^ _live_hash(member)
        super().__setitem__(name, member)

    def add_all(self, members: list[Member]) -> None:
        """Hold `members`, none of which may be held yet (one pass, for a preload)."""
        fingerprint = self.fingerprint
        for member in members:
            fingerprint ^= _live_hash(member)
        super().update(zip([m.name for m in members], members, strict=True))
        self.fingerprint = fingerprint

    def __delitem__(self, name: str) -> None:
        self.fingerprint ^= _live_hash(self[name])
        super().__delitem__(name)
