"""Periodic chores that share the probe tick instead of waking the node themselves.

An idle agent's CPU goes mostly to waking up, not to work: on the machines measured
(docs/agent.md, "Idle cost") one Trio wakeup from idle costs a few hundred
microseconds however little it then does. So a chore with its own period, such as an
anti-entropy round or reaping the dead, runs early when the probe tick is awake anyway,
and only falls back to a wakeup of its own when no tick comes in time.
"""

from __future__ import annotations


class Periodic:
    """A chore due every `interval` seconds on a fixed grid starting at `first_due`.

    It is `ripe` from `slack` seconds before it is due, and `deadline` (`slack` after
    it is due) is when it must run even if nothing else woke the node. Windows of
    consecutive runs tile the time line, so on average it still runs once per
    `interval`, wherever in its window each run falls.
    """

    __slots__ = ("due", "interval", "slack")

    def __init__(self, interval: float, slack: float, first_due: float) -> None:
        if interval <= 0 or not 0 <= slack <= interval / 2:
            raise ValueError("need interval > 0 and 0 <= slack <= interval / 2")
        self.interval = interval
        self.slack = slack
        self.due = first_due

    def ripe(self, now: float) -> bool:
        """Whether running it now counts as this period's run."""
        return now >= self.due - self.slack

    @property
    def deadline(self) -> float:
        """When it must run at the latest."""
        return self.due + self.slack

    def done(self, now: float) -> None:
        """Record a run at `now`; the next is due one interval later on the grid, or
        one interval from now after a stall (a paused process) left the grid behind."""
        self.due += self.interval
        if self.due + self.slack <= now:
            self.due = now + self.interval
