"""Chores on a fixed grid that may run early on another wakeup (`swimnode.protocol.periodic`)."""

from __future__ import annotations

import pytest

from swimnode.protocol.periodic import Periodic


def test_ripe_within_slack_before_due_and_deadline_slack_after() -> None:
    chore = Periodic(1.0, 0.25, first_due=10.0)
    assert not chore.ripe(9.74)
    assert chore.ripe(9.75)
    assert chore.deadline == pytest.approx(10.25)


def test_runs_stay_on_the_grid_whether_early_or_late() -> None:
    chore = Periodic(1.0, 0.5, first_due=10.0)
    chore.done(9.6)  # early
    assert chore.due == pytest.approx(11.0)
    chore.done(11.5)  # at its deadline
    assert chore.due == pytest.approx(12.0)
    # Over many periods the runs average one per interval, wherever they fall.
    runs = 0
    now = 12.0
    while now < 112.0:
        if chore.ripe(now):
            chore.done(now)
            runs += 1
        now += 1.003  # a tick that drifts slowly against the grid
    assert runs in (99, 100, 101)


def test_a_stall_restarts_the_grid_instead_of_catching_up() -> None:
    chore = Periodic(1.0, 0.5, first_due=10.0)
    chore.done(60.0)  # the process was paused for 50 s
    assert chore.due == pytest.approx(61.0)
    assert not chore.ripe(60.4)


@pytest.mark.parametrize(("interval", "slack"), [(0.0, 0.0), (1.0, -0.1), (1.0, 0.6)])
def test_rejects_a_bad_interval_or_slack(interval: float, slack: float) -> None:
    with pytest.raises(ValueError):
        Periodic(interval, slack, first_due=0.0)
