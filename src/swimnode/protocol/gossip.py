"""Infection-style dissemination: the gossip rounds that carry queued broadcasts.

Every `gossip_interval` a node with news sends it to `gossip_nodes` random members
(and sometimes to a recently dead one, so a healed partition hears about it). News
nobody has been sent yet cuts the wait short, to a quarter interval, so it crosses
the cluster without waiting up to a whole interval at every hop; repeats keep the
interval. At most one early round comes between regular ones (a storm of news then
costs at most twice the packets, not four times), and none while the queue
overflows a datagram (early rounds would only split the same news over more
packets). With nothing to send, or nobody to send it to, there is no deadline at all.

A graceful leave ends here too: once our `Left` has been sent its full count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .contract import LeaveFinished
from .member import MemberState

if TYPE_CHECKING:
    from .core import SwimCore

DEAD = MemberState.DEAD


class Gossip:
    """The gossip schedule, and the end of a leave."""

    def __init__(self, core: SwimCore, now: float) -> None:
        self._core = core
        self._interval = core.config.gossip_interval
        # Stagger the first round so nodes started together do not gossip in lockstep.
        self._regular_at = now + core.rng.uniform(0, self._interval)
        self._early_from = math.inf  # no early round allowed before the next regular one
        self._leave_deadline = math.inf

    def next_deadline(self) -> float:
        return min(self._leave_deadline, self._round_due())

    def _round_due(self) -> float:
        core = self._core
        broadcasts = core.broadcasts
        # `size` first: the common case, a quiet node, then costs no call.
        if not broadcasts.size or core.membership.n_live == 1:
            return math.inf
        if broadcasts.fresh and broadcasts.size <= core.payload_budget:
            return min(self._regular_at, self._early_from)
        return self._regular_at

    def run_timers(self, now: float) -> None:
        if now >= self._leave_deadline:
            self.leave_finished()
        if now < self._round_due():
            return
        if now < self._regular_at:
            self._regular_at = now + self._interval
            self._early_from = math.inf
        else:
            self._regular_at = now + self._interval
            self._early_from = now + self._interval / 4
        self._round(now)

    def _round(self, now: float) -> None:
        """Send queued broadcasts to `gossip_nodes` random members (and sometimes to
        a recently dead one, so a healed partition hears about us)."""
        core = self._core
        membership = core.membership
        if not core.broadcasts:
            return
        table = membership.table
        targets = [table[n] for n in membership.peers.sample(core.rng, core.config.gossip_nodes)]
        horizon = now - core.config.gossip_to_the_dead_time
        recent_dead = [
            n for n, t in membership.departed.items() if t >= horizon and table[n].state is DEAD
        ]
        if recent_dead and core.rng.random() < len(recent_dead) / (len(membership.peers) + 1):
            targets.append(table[core.rng.choice(recent_dead)])
        for member in targets:
            if not core.broadcasts:
                break
            core.send(member.address, [])

    # ----- leave -------------------------------------------------------------------

    def leave_started(self, now: float) -> None:
        self._leave_deadline = now + self._core.config.leave_timeout
        self.check_leave()

    def check_leave(self) -> None:
        """End the leave once our `Left` has no transmissions to go, or nobody is
        left to tell."""
        core = self._core
        if self._leave_deadline < math.inf and (
            not core.broadcasts.pending(core.name) or core.membership.n_live == 1
        ):
            self.leave_finished()

    def leave_finished(self) -> None:
        self._leave_deadline = math.inf
        self._core.signal(LeaveFinished())
