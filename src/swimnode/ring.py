"""A consistent-hash ring over cluster members (pure, no I/O, no Trio).

The token space is the unsigned 64-bit integers, arranged in a circle. Each member
holds one or more tokens; a key belongs to the member holding the first token
clockwise at or after the key's own token (wrapping from ``2**64 - 1`` to ``0``).
So a token ``t`` with predecessor ``p`` covers the half-open range ``(p, t]``.

Members either advertise their own tokens (for example from their application
state, so an operator or an allocator can place them) or get ``vnodes`` tokens
derived from their name. Derived tokens depend only on the member's name and
``vnodes``, never on who else is in the ring, which is what makes the ring
*consistent*: adding a member only moves keys to that member, and removing one
only moves that member's keys.

Token collisions (two members claiming the same token) are resolved in favour of
the member whose name sorts first (plain ``str`` order). The rule depends only on
the two names, so every node builds the same ring from the same membership, and
the consistency property above still holds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .protocol.hash64 import blake2b, hash64

__all__ = [
    "TOKEN_SPACE",
    "HashRing",
    "RingMember",
    "advertised_tokens",
    "derived_tokens",
    "range_contains",
    "range_size",
    "token_of",
]

TOKEN_SPACE = 1 << 64
"""Number of distinct tokens; tokens are ints in ``[0, TOKEN_SPACE)``."""


def token_of(key: str | bytes) -> int:
    """The ring token of `key`: the first 8 bytes of its BLAKE2b digest, big-endian.

    Strings are hashed as UTF-8. The result is stable across processes, machines and
    Python versions (unlike ``hash()``, which is salted per process).
    """
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return hash64(data)


def derived_tokens(name: str, vnodes: int) -> list[int]:
    """The `vnodes` tokens a member called `name` gets when it advertises none.

    The ring is cut into `vnodes` equal strata and the member gets exactly one token
    in each, at the offset ``token_of(f"{name}#{i}")`` modulo the stratum width.
    Every node computes the same tokens from the name alone.
    """
    if vnodes < 1:
        raise ValueError(f"vnodes must be at least 1, got {vnodes}")
    # Why strata rather than v independent hashes: with independent hashes a member's
    # share also varies with how many of its tokens happen to clump together; giving
    # each member exactly one token per 1/vnodes of the ring removes that part of the
    # variance (measured over random 10-member sets at 100 vnodes: relative spread of
    # ownership 9.5% -> 9.0%, sets with someone beyond +-20% of the mean: 30% -> 23%).
    # The rest, ~1/sqrt(vnodes), comes from where the other members' tokens fall and
    # cannot be removed by any scheme that looks only at this member's name; members
    # that need tighter balance should advertise allocated tokens instead.
    # Hashing a copy of a hasher primed with "name#" gives exactly token_of(f"{name}#{i}")
    # without re-encoding the name each time; it roughly halves ring build time.
    prefix = blake2b(f"{name}#".encode(), digest_size=8)
    tokens = []
    for i in range(vnodes):
        low = i * TOKEN_SPACE // vnodes
        width = (i + 1) * TOKEN_SPACE // vnodes - low
        hasher = prefix.copy()
        hasher.update(str(i).encode())
        tokens.append(low + int.from_bytes(hasher.digest(), "big") % width)
    return tokens


def range_size(rng: tuple[int, int]) -> int:
    """How many tokens the half-open range ``(start, end]`` covers, wrapping.

    ``start == end`` is the whole ring (``TOKEN_SPACE`` tokens); see `HashRing.ranges`.
    """
    start, end = rng
    return (end - start) % TOKEN_SPACE or TOKEN_SPACE


def range_contains(rng: tuple[int, int], token: int) -> bool:
    """Whether `token` lies in the half-open, possibly wrapping range ``(start, end]``."""
    start, end = rng
    if start < end:
        return start < token <= end
    # start >= end: the range runs from start up through 2**64 - 1, wraps to 0, and on
    # to end; start == end is the degenerate case of a single token owning everything.
    return token > start or token <= end


class RingMember(Protocol):
    """What `HashRing.from_members` reads from a member (``swimnode.Member`` fits)."""

    @property
    def name(self) -> str:
        """The member's unique name."""
        ...

    @property
    def is_live(self) -> bool:
        """Whether the member is alive or suspect, i.e. should own keys."""
        ...


def _is_token(value: object) -> bool:
    # bool is an int subclass; True as a token is almost certainly a decoding mistake.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < TOKEN_SPACE


def advertised_tokens(member: object, tokens_key: str) -> list[int] | None:
    """The tokens `member` advertises under `tokens_key` in its application state: a
    non-empty list of ints in ``[0, 2**64)``, or None if it advertises none (or an
    invalid list), in which case `HashRing.from_members` derives its tokens."""
    # Application state lives in `Member.app_state` (`Member.state` is the liveness
    # enum); a `state` mapping is accepted too for member-like objects that use that
    # name. Anything that is not a mapping simply advertises nothing.
    state = getattr(member, "app_state", None)
    if not isinstance(state, Mapping):
        state = getattr(member, "state", None)
    if not isinstance(state, Mapping):
        return None
    raw: Any = state.get(tokens_key)
    # msgpack may decode arrays as lists or tuples depending on its options.
    if not isinstance(raw, list | tuple) or not raw or not all(_is_token(t) for t in raw):
        return None
    return list(raw)


class HashRing:
    """An immutable consistent-hash ring. Build it with `build` or `from_members`.

    Lookups are a binary search over the sorted tokens. Two rings are equal when they
    map every token to the same member (the same tokens with the same owners).
    """

    __slots__ = ("_members", "_owners", "_tokens")

    def __init__(self, tokens: Mapping[int, str] | None = None) -> None:
        """A ring from an explicit ``{token: member}`` map (empty if omitted).

        Usually you want `build`, which derives tokens and resolves collisions.
        """
        claims = dict(tokens or {})
        bad = next((t for t in claims if not _is_token(t)), None)
        if bad is not None:
            raise ValueError(f"token out of range [0, 2**64): {bad!r}")
        self._set(claims)

    def _set(self, claims: Mapping[int, str]) -> None:
        self._tokens: tuple[int, ...] = tuple(sorted(claims))
        self._owners: tuple[str, ...] = tuple(claims[t] for t in self._tokens)
        self._members: tuple[str, ...] = tuple(sorted(set(self._owners)))

    @classmethod
    def build(
        cls,
        members: Iterable[tuple[str, Sequence[int] | None]],
        *,
        vnodes: int = 100,
    ) -> HashRing:
        """A ring from ``(name, tokens)`` pairs.

        `tokens` are the member's advertised tokens, or None to use
        ``derived_tokens(name, vnodes)``. A token claimed by several members goes to
        the name that sorts first; a member that loses every token this way owns
        nothing and is absent from `members`. Raises ValueError on a repeated name, an
        empty advertised token list, an advertised token outside ``[0, 2**64)``, or
        ``vnodes < 1``.
        """
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        claims: dict[int, str] = {}
        seen: set[str] = set()
        for name, advertised in members:
            if name in seen:
                raise ValueError(f"member {name!r} listed twice")
            seen.add(name)
            if advertised is None:
                tokens: Iterable[int] = derived_tokens(name, vnodes)
            else:
                if not advertised:
                    raise ValueError(f"member {name!r} advertises an empty token list")
                bad = next((t for t in advertised if not _is_token(t)), None)
                if bad is not None:
                    raise ValueError(f"member {name!r} advertises invalid token {bad!r}")
                tokens = advertised
            for token in tokens:
                holder = claims.get(token)
                if holder is None or name < holder:
                    claims[token] = name
        # build() has already validated every token, so skip __init__'s second check.
        ring = cls.__new__(cls)
        ring._set(claims)
        return ring

    @classmethod
    def from_members(
        cls,
        members: Iterable[RingMember],
        *,
        tokens_key: str = "tokens",
        vnodes: int = 100,
    ) -> HashRing:
        """A ring of the live members (``m.is_live``) among `members`.

        A member's tokens come from its application state, ``m.app_state[tokens_key]``
        (or ``m.state[tokens_key]`` if `m` has no ``app_state`` mapping but its
        ``state`` is one), when that holds a non-empty list of ints in ``[0, 2**64)``;
        otherwise (no such state or key, or anything malformed) they are derived from
        the member's name.
        """
        return cls.build(
            ((m.name, advertised_tokens(m, tokens_key)) for m in members if m.is_live),
            vnodes=vnodes,
        )

    # ----- lookups -----------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        """Names of the members owning at least one token, sorted."""
        return self._members

    @property
    def tokens(self) -> tuple[int, ...]:
        """All tokens on the ring, ascending."""
        return self._tokens

    def __len__(self) -> int:
        """Number of tokens on the ring (after collisions are resolved)."""
        return len(self._tokens)

    def _index_at_or_after(self, token: int) -> int:
        if not self._tokens:
            raise LookupError("the hash ring is empty: no member owns any token")
        i = bisect_left(self._tokens, token)
        # Past the last token the search wraps round to the first one.
        return 0 if i == len(self._tokens) else i

    def token_owner(self, token: int) -> str:
        """The member owning `token` (the first ring token at or after it, wrapping).

        Raises LookupError if the ring is empty.
        """
        return self._owners[self._index_at_or_after(token)]

    def owner(self, key: str | bytes) -> str:
        """The member owning `key`, i.e. ``token_owner(token_of(key))``.

        Raises LookupError if the ring is empty.
        """
        return self.token_owner(token_of(key))

    def preference_list(self, key: str | bytes, n: int) -> list[str]:
        """The first `n` distinct members clockwise from `key`, starting with its owner.

        Returns every member (in ring order) if `n` exceeds their number, and an empty
        list on an empty ring. Raises ValueError if `n` is negative.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        want = min(n, len(self._members))
        if want == 0:
            return []
        i = self._index_at_or_after(token_of(key))
        result: list[str] = []
        seen: set[str] = set()
        count = len(self._owners)
        # Terminates: every member in _members owns at least one token on the ring.
        while len(result) < want:
            name = self._owners[i]
            if name not in seen:
                seen.add(name)
                result.append(name)
            i = (i + 1) % count
        return result

    def ranges(self, member: str) -> list[tuple[int, int]]:
        """The token ranges `member` owns, as half-open ``(start, end]`` pairs.

        Adjacent ranges are merged, and the list is sorted by `end`. A range with
        ``start < end`` is the plain interval; ``start > end`` wraps round zero, i.e.
        it is ``(start, 2**64 - 1]`` plus ``[0, end]`` (at most one range wraps, and if
        one does it comes first); ``start == end`` means the whole ring, which happens
        only when `member` owns every token. Use `range_contains` and `range_size`
        rather than comparing by hand. An unknown member owns ``[]``.
        """
        owners = self._owners
        count = len(owners)
        mine = [i for i in range(count) if owners[i] == member]
        if not mine:
            return []
        if len(mine) == count:
            return [(self._tokens[-1], self._tokens[-1])]
        result: list[tuple[int, int]] = []
        for i in mine:
            # Token i covers (token[i-1], token[i]]; index -1 is the wrap-around case.
            start, end = self._tokens[i - 1], self._tokens[i]
            if owners[i - 1] == member and result and i > 0:
                # Same owner as the previous token: extend that range instead.
                result[-1] = (result[-1][0], end)
            else:
                result.append((start, end))
        # The range ending at the first token may continue the one ending at the last.
        if len(result) > 1 and owners[0] == member and owners[-1] == member:
            last_start = result.pop()[0]
            result[0] = (last_start, result[0][1])
        return result

    def ownership(self) -> dict[str, float]:
        """The fraction of the token space each member owns; the values sum to 1.

        Keys are in `members` order. An empty ring gives an empty dict.
        """
        totals = dict.fromkeys(self._members, 0)
        if len(self._tokens) == 1:
            totals[self._owners[0]] = TOKEN_SPACE
        elif self._tokens:
            previous = self._tokens[-1] - TOKEN_SPACE  # the wrap-around predecessor
            for token, name in zip(self._tokens, self._owners, strict=True):
                totals[name] += token - previous
                previous = token
        return {name: size / TOKEN_SPACE for name, size in totals.items()}

    # ----- value semantics ---------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self._tokens == other._tokens and self._owners == other._owners

    def __hash__(self) -> int:
        return hash((self._tokens, self._owners))

    def __repr__(self) -> str:
        return f"HashRing(members={len(self._members)}, tokens={len(self._tokens)})"
