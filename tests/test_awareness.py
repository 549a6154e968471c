"""Lifeguard local health awareness."""

from __future__ import annotations

import pytest

from swimnode.protocol.awareness import Awareness


def test_starts_at_zero() -> None:
    a = Awareness(8)
    assert a.score == 0
    assert a.enabled
    assert a.scale(0.5) == 0.5


def test_apply_accumulates() -> None:
    a = Awareness(8)
    a.apply(1)
    a.apply(2)
    assert a.score == 3
    a.apply(-1)
    assert a.score == 2


def test_clamped_to_max_minus_one() -> None:
    a = Awareness(8)
    a.apply(100)
    assert a.score == 7
    a.apply(1)
    assert a.score == 7
    a.apply(-1)
    assert a.score == 6


def test_clamped_at_zero() -> None:
    a = Awareness(8)
    a.apply(-1)
    assert a.score == 0
    a.apply(3)
    a.apply(-100)
    assert a.score == 0


def test_max_one_always_zero() -> None:
    a = Awareness(1)
    a.apply(5)
    assert a.score == 0
    assert a.scale(2.0) == 2.0


@pytest.mark.parametrize(
    ("score", "seconds", "expected"),
    [
        (0, 1.0, 1.0),
        (1, 1.0, 2.0),
        (3, 0.5, 2.0),
        (7, 0.2, 1.6),
    ],
)
def test_scale(score: int, seconds: float, expected: float) -> None:
    a = Awareness(8)
    a.apply(score)
    assert a.score == score
    assert a.scale(seconds) == pytest.approx(expected)


def test_disabled_stays_zero() -> None:
    a = Awareness(8, enabled=False)
    a.apply(5)
    assert a.score == 0
    a.apply(-5)
    assert a.score == 0
    assert a.scale(1.5) == 1.5
