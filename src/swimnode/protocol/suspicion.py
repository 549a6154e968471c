"""Suspicion timeouts, with Lifeguard's dynamic shortening (pure arithmetic).

Formulas from Dadgar, Phillips and Currey, "Lifeguard: Local Health Awareness for More
Accurate Failure Detection" (2017), §IV-B, as memberlist implements them:

    min = SuspicionMult * max(1, log10(max(1, N))) * ProbeInterval
    max = SuspicionMaxTimeoutMult * min
    K   = SuspicionMult - 2, or 0 when N - 2 < K
    timeout(C) = max(min, max - (max - min) * log(C + 1) / log(K + 1))

where N counts live members and C is the number of independent confirmations: distinct
members other than the first accuser, at most K. The timeout is measured from when the
suspicion started. With K = 0 (too few members to confirm) the timer is `min` at once.
"""

from __future__ import annotations

import math


def suspicion_bounds(
    suspicion_mult: int, max_timeout_mult: int, n_live: int, probe_interval: float
) -> tuple[float, float]:
    """`(min, max)` suspicion timeouts for a cluster with `n_live` live members."""
    scale = max(1.0, math.log10(max(1, n_live)))
    lo = suspicion_mult * scale * probe_interval
    return lo, max_timeout_mult * lo


def confirmations_needed(suspicion_mult: int, n_live: int) -> int:
    """K: the confirmations that bring the timeout down to `min`."""
    k = suspicion_mult - 2
    return 0 if n_live - 2 < k else max(0, k)


def suspicion_timeout(lo: float, hi: float, k: int, confirmations: int) -> float:
    """The timeout after `confirmations` independent confirmations."""
    if k < 1:
        return lo
    c = min(confirmations, k)
    return max(lo, hi - (hi - lo) * math.log(c + 1) / math.log(k + 1))


class Suspicion:
    """One running suspicion about a member: who confirmed it and when it expires."""

    __slots__ = ("_accusers", "_hi", "_k", "_lo", "incarnation", "started_at")

    def __init__(
        self, *, started_at: float, incarnation: int, accuser: str, lo: float, hi: float, k: int
    ) -> None:
        self.started_at = started_at
        self.incarnation = incarnation
        self._lo = lo
        self._hi = hi
        self._k = k
        self._accusers = {accuser}

    @property
    def confirmations(self) -> int:
        """Independent confirmations so far (the first accuser is not one)."""
        return len(self._accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Count `accuser`'s confirmation; true if it was new and shortened the timer."""
        if self.confirmations >= self._k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        return True

    @property
    def deadline(self) -> float:
        """Absolute time at which the member is declared dead."""
        return self.started_at + suspicion_timeout(self._lo, self._hi, self._k, self.confirmations)
