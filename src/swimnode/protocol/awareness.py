"""Local health awareness (Lifeguard §IV-A, memberlist's `awareness.go`).

A score in `[0, max_multiplier)`: a node that misses acks and nacks it should have got
is probably the slow one, so it stretches its own probe interval and timeout by
`score + 1` instead of accusing healthy peers.
"""

from __future__ import annotations


class Awareness:
    """The local health score; `enabled=False` pins it at 0 (plain SWIM)."""

    __slots__ = ("_max", "enabled", "score")

    def __init__(self, max_multiplier: int, *, enabled: bool = True) -> None:
        self._max = max_multiplier
        self.enabled = enabled
        self.score = 0

    def apply(self, delta: int) -> None:
        """Add `delta`, clamped to `[0, max_multiplier - 1]`."""
        if self.enabled:
            self.score = min(self._max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """`seconds` stretched by the current health multiplier."""
        return seconds * (self.score + 1)
