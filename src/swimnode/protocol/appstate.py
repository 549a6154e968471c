"""Versioned application state and its reconciliation (pure, no I/O).

Every node owns a small map of keys to values (its *application state*: the tokens it
owns on a hash ring, its load, its role...). Each write gets the next number of the
owner's version counter; a node's state is identified by `(generation, version)`,
after Cassandra's HeartBeatState, where the generation is fixed when the node starts
so a restarted node's fresh counter still wins over its previous life's.

Reconciliation is Scuttlebutt's (van Renesse, Dumitriu, Gough, Thomas, "Efficient
Reconciliation and Flow Control for Anti-Entropy Protocols", 2008): peers compare
digests (node -> generation, highest version) and send each other the entries the
other lacks, oldest version first, within a byte budget. Because entries travel in
version order and a receiver only ever keeps the newest version of a key, whatever
prefix of a delta arrives leaves the receiver consistent, and the next round resumes
where this one stopped. A 64-bit summary of all digests lets two peers that already
agree find out with one tiny message.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgpack

from .hash64 import hash64

if TYPE_CHECKING:
    from .config import Config

EMPTY_STATE: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One key of one node's state at one version. A deletion is a tombstone entry
    (`deleted=True`, `value=None`) so that it travels like any other write."""

    key: str
    version: int
    value: Any
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Digest:
    """What a peer holds of one node's state: its generation and highest version."""

    name: str
    generation: int
    max_version: int


@dataclass(frozen=True, slots=True)
class NodeDelta:
    """Entries of one node's state, in increasing version order."""

    name: str
    generation: int
    entries: tuple[StateEntry, ...]


@dataclass(frozen=True, slots=True)
class StateLimits:
    """Size limits on one node's state (documented in docs/gossip.md)."""

    max_key_bytes: int = 128
    max_value_bytes: int = 4096
    max_node_bytes: int = 64 * 1024
    tombstone_ttl: float = 3600.0
    """Seconds a deletion is remembered. A node cut off for longer than this may keep
    a deleted key (Cassandra's gc_grace has the same trade-off)."""

    @classmethod
    def from_config(cls, config: Config) -> StateLimits:
        """The limits a node with `config` applies (its `state_max_*` and
        `state_tombstone_ttl` fields)."""
        return cls(
            max_key_bytes=config.state_max_key_bytes,
            max_value_bytes=config.state_max_value_bytes,
            max_node_bytes=config.state_max_bytes,
            tombstone_ttl=config.state_tombstone_ttl,
        )


def entry_size(entry: StateEntry) -> int:
    """Bytes an entry takes on the wire (a close upper bound)."""
    return len(entry.key.encode()) + len(_pack(entry.value)) + 12


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def _digest_hash(name: str, generation: int, max_version: int) -> int:
    raw = f"{name}\0{generation}\0{max_version}".encode()
    return hash64(raw)


def _weight(name: str, generation: int, max_version: int) -> int:
    # A node that never wrote anything adds nothing: a thousand fresh members must
    # not make every summary differ.
    return _digest_hash(name, generation, max_version) if max_version else 0


class _NodeState:
    __slots__ = ("entries", "generation", "max_version", "tombstones")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.max_version = 0
        self.entries: dict[str, StateEntry] = {}
        self.tombstones: dict[str, float] = {}  # key -> when we learned of the delete

    def live_values(self) -> dict[str, Any]:
        return {k: e.value for k, e in self.entries.items() if not e.deleted}


class StateStore:
    """Every node's application state as known here, `owner`'s own included."""

    def __init__(self, owner: str, generation: int, limits: StateLimits | None = None) -> None:
        self.owner = owner
        self.limits = limits or StateLimits()
        self._nodes: dict[str, _NodeState] = {}
        self._summary = 0
        self._own_bytes = 0
        self._ensure(owner, generation)

    # ----- local writes ---------------------------------------------------------------

    @property
    def own(self) -> _NodeState:
        return self._nodes[self.owner]

    def set(self, key: str, value: Any, now: float) -> StateEntry:
        """Write one of our own keys. Raises `ValueError` (nothing changes) if the key
        or value is not allowed or the state would exceed its limits."""
        self._check_key(key)
        try:
            packed = _pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"state value for {key!r} is not msgpack-serializable: {exc}"
            ) from None
        if len(packed) > self.limits.max_value_bytes:
            raise ValueError(
                f"state value for {key!r} is {len(packed)} bytes; the limit "
                f"is {self.limits.max_value_bytes}"
            )
        # Read back what peers will see (tuples become lists, and so on).
        value = msgpack.unpackb(packed, raw=False)
        entry = StateEntry(key, self.own.max_version + 1, value)
        old = self.own.entries.get(key)
        new_total = self._own_bytes - (entry_size(old) if old else 0) + entry_size(entry)
        if new_total > self.limits.max_node_bytes:
            raise ValueError(
                f"state would be {new_total} bytes; the limit per node is "
                f"{self.limits.max_node_bytes}"
            )
        self._write_own(entry, now)
        return entry

    def delete(self, key: str, now: float) -> StateEntry | None:
        """Delete one of our own keys; returns the tombstone, or None if absent."""
        self._check_key(key)
        old = self.own.entries.get(key)
        if old is None or old.deleted:
            return None
        entry = StateEntry(key, self.own.max_version + 1, None, True)
        self._write_own(entry, now)
        return entry

    def _check_key(self, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("state keys must be non-empty strings")
        if len(key.encode()) > self.limits.max_key_bytes:
            raise ValueError(
                f"state key {key[:40]!r}... is longer than {self.limits.max_key_bytes} bytes"
            )

    def _write_own(self, entry: StateEntry, now: float) -> None:
        node = self.own
        old = node.entries.get(entry.key)
        self._own_bytes += entry_size(entry) - (entry_size(old) if old else 0)
        self._store(self.owner, node, entry, now)
        self._set_max(self.owner, node, entry.version)

    # ----- views --------------------------------------------------------------------

    def values(self, name: str) -> Mapping[str, Any]:
        """A read-only copy of `name`'s live keys (empty if unknown)."""
        node = self._nodes.get(name)
        return MappingProxyType(node.live_values()) if node else EMPTY_STATE

    def digest(self, name: str) -> Digest | None:
        """Our digest for one node."""
        node = self._nodes.get(name)
        return Digest(name, node.generation, node.max_version) if node else None

    def digests(self) -> list[Digest]:
        """Our digest for every node that has written state, and always our own (so a
        restarted node with nothing written yet still voids its previous life's
        state). Nodes that never wrote anything cost nothing, however many."""
        own = self.own
        out = [Digest(self.owner, own.generation, own.max_version)]
        out += [
            Digest(n, s.generation, s.max_version)
            for n, s in self._nodes.items()
            if s.max_version and n != self.owner
        ]
        return out

    @property
    def summary(self) -> int:
        """A 64-bit fingerprint of the digests of every node that has written state;
        equal summaries mean there is nothing to exchange."""
        return self._summary

    def names(self) -> list[str]:
        """Nodes we hold state of."""
        return list(self._nodes)

    # ----- reconciliation ---------------------------------------------------------------

    def compare(
        self, theirs: Iterable[Digest], accept: Mapping[str, object] | None = None
    ) -> tuple[list[Digest], list[Digest]]:
        """Given a peer's digests, return `(they_lack, we_lack)`: requests the peer
        would make of us (what to send it), and requests to make of it. Only nodes in
        `accept` (if given) are considered, so state of forgotten members stays
        forgotten."""
        they_lack: list[Digest] = []
        we_lack: list[Digest] = []
        seen: set[str] = set()
        for d in theirs:
            seen.add(d.name)
            if accept is not None and d.name not in accept:
                continue
            mine = self._nodes.get(d.name)
            if mine is None or d.generation > mine.generation:
                we_lack.append(
                    Digest(d.name, mine.generation if mine else 0, mine.max_version if mine else 0)
                )
            elif d.generation < mine.generation:
                they_lack.append(Digest(d.name, d.generation, 0))
            elif d.max_version > mine.max_version:
                we_lack.append(Digest(d.name, mine.generation, mine.max_version))
            elif d.max_version < mine.max_version:
                they_lack.append(d)
        for name, node in self._nodes.items():
            if node.max_version and name not in seen and (accept is None or name in accept):
                they_lack.append(Digest(name, 0, 0))
        return they_lack, we_lack

    def deltas(self, requests: Iterable[Digest], budget: int) -> list[NodeDelta]:
        """What to send for `requests` (as made by `compare`): entries newer than each
        request, oldest version first across all nodes, within `budget` bytes. A
        request from an older generation gets our whole current generation."""
        per_node: list[tuple[str, int, list[StateEntry]]] = []
        for req in requests:
            node = self._nodes.get(req.name)
            if node is None or req.generation > node.generation:
                continue
            since = req.max_version if req.generation == node.generation else 0
            entries = sorted(
                (e for e in node.entries.values() if e.version > since), key=lambda e: e.version
            )
            per_node.append((req.name, node.generation, entries))
        # Merge by version so every node's prefix is taken in order, and the budget is
        # shared oldest-first (Scuttlebutt's precise reconciliation).
        picked: dict[str, list[StateEntry]] = {name: [] for name, _, _ in per_node}
        heap = [(entries[0].version, i, 0) for i, (_, _, entries) in enumerate(per_node) if entries]
        heapq.heapify(heap)
        left = budget
        while heap:
            _, i, j = heapq.heappop(heap)
            name, _, entries = per_node[i]
            cost = entry_size(entries[j])
            if cost > left:
                break
            left -= cost
            picked[name].append(entries[j])
            if j + 1 < len(entries):
                heapq.heappush(heap, (entries[j + 1].version, i, j + 1))
        out = []
        for name, generation, entries in per_node:
            if picked[name] or not entries:
                # An empty delta still tells a peer the generation (a node with no keys).
                out.append(NodeDelta(name, generation, tuple(picked[name])))
        return out

    def apply(self, delta: NodeDelta, now: float) -> list[str] | None:
        """Merge a delta from a peer. Returns the keys whose visible value changed,
        or None if the delta was stale or about us (we are the authority on our own
        state). Entries are applied only if newer than what we hold for their key."""
        if delta.name == self.owner:
            return None
        node = self._nodes.get(delta.name)
        changed: set[str] = set()
        if node is None or delta.generation > node.generation:
            if node is not None:
                # A restart: the previous life's state is void.
                changed.update(k for k, e in node.entries.items() if not e.deleted)
                self._drop(delta.name)
            node = self._ensure(delta.name, delta.generation)
        elif delta.generation < node.generation:
            return None
        top = node.max_version
        for entry in delta.entries:
            old = node.entries.get(entry.key)
            if old is None or entry.version > old.version:
                # Tombstones are kept even for keys we never saw: we pass them on.
                self._store(delta.name, node, entry, now)
                visible_before = old is not None and not old.deleted
                if visible_before or not entry.deleted:
                    changed.add(entry.key)
            top = max(top, entry.version)
        self._set_max(delta.name, node, top)
        return sorted(changed)

    def forget(self, name: str) -> None:
        """Drop a node's state (it was reclaimed from membership)."""
        if name != self.owner and name in self._nodes:
            self._drop(name)

    def collect_tombstones(self, now: float) -> int:
        """Forget deletions older than `tombstone_ttl`; returns how many."""
        horizon = now - self.limits.tombstone_ttl
        count = 0
        for node in self._nodes.values():
            for key in [k for k, t in node.tombstones.items() if t <= horizon]:
                del node.tombstones[key]
                entry = node.entries.pop(key)
                if node is self.own:
                    self._own_bytes -= entry_size(entry)
                count += 1
        return count

    # ----- internals --------------------------------------------------------------------

    def _ensure(self, name: str, generation: int) -> _NodeState:
        node = _NodeState(generation)  # nothing written yet: no weight in the summary
        self._nodes[name] = node
        return node

    def _drop(self, name: str) -> None:
        node = self._nodes.pop(name)
        self._summary ^= _weight(name, node.generation, node.max_version)

    def _set_max(self, name: str, node: _NodeState, version: int) -> None:
        if version != node.max_version:
            self._summary ^= _weight(name, node.generation, node.max_version)
            node.max_version = version
            self._summary ^= _weight(name, node.generation, version)

    @staticmethod
    def _store(name: str, node: _NodeState, entry: StateEntry, now: float) -> None:
        node.entries[entry.key] = entry
        if entry.deleted:
            node.tombstones[entry.key] = now
        else:
            node.tombstones.pop(entry.key, None)
