"""Suspicion timeouts with Lifeguard's dynamic shortening."""

from __future__ import annotations

import itertools
import math

import pytest

from swimnode.protocol.suspicion import (
    Suspicion,
    confirmations_needed,
    suspicion_bounds,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("n", "lo", "hi"),
    [
        (0, 4.0, 24.0),  # log10(max(1, 0)) = 0, raised to 1
        (1, 4.0, 24.0),  # log10(1) = 0, raised to 1
        (5, 4.0, 24.0),  # log10(5) = 0.7, raised to 1
        (10, 4.0, 24.0),  # log10(10) = 1
        (100, 8.0, 48.0),  # log10(100) = 2
        (1000, 12.0, 72.0),  # log10(1000) = 3
    ],
)
def test_bounds_by_hand(n: int, lo: float, hi: float) -> None:
    assert suspicion_bounds(4, 6, n, 1.0) == pytest.approx((lo, hi))


def test_bounds_scale_with_interval_and_mults() -> None:
    assert suspicion_bounds(5, 3, 100, 0.5) == pytest.approx((5.0, 15.0))  # 5*2*0.5
    assert suspicion_bounds(4, 1, 10, 2.0) == pytest.approx((8.0, 8.0))
    lo, hi = suspicion_bounds(4, 6, 50, 1.0)
    assert lo == pytest.approx(4 * 1.69897, rel=1e-5)  # log10(50) = 1.69897
    assert hi == pytest.approx(6 * lo)


@pytest.mark.parametrize(
    ("mult", "n", "k"),
    [
        (4, 1, 0),
        (4, 3, 0),
        (4, 4, 2),
        (4, 10, 2),
        (4, 1000, 2),
        (6, 5, 0),
        (6, 6, 4),
        (6, 100, 4),
        (3, 2, 0),
        (3, 3, 1),
        (2, 100, 0),
        (1, 100, 0),
    ],
)
def test_confirmations_needed(mult: int, n: int, k: int) -> None:
    assert confirmations_needed(mult, n) == k


# mult 4, max mult 6, N = 10, interval 1 s: min = 4, max = 24, K = 2.
CONCRETE = [
    (0, 24.0),
    (1, 24.0 - 20.0 * math.log(2) / math.log(3)),  # 11.381405...
    (2, 4.0),
    (3, 4.0),
    (4, 4.0),
]


@pytest.mark.parametrize(("c", "expected"), CONCRETE)
def test_timeout_concrete_case(c: int, expected: float) -> None:
    lo, hi = suspicion_bounds(4, 6, 10, 1.0)
    k = confirmations_needed(4, 10)
    assert (lo, hi, k) == (4.0, 24.0, 2)
    assert suspicion_timeout(lo, hi, k, c) == pytest.approx(expected)


def test_timeout_c1_value() -> None:
    assert suspicion_timeout(4.0, 24.0, 2, 1) == pytest.approx(11.381405, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_timeout_formula_for_every_c(k: int) -> None:
    lo, hi = 2.5, 15.0
    values = []
    for c in range(k + 3):
        expected = max(lo, hi - (hi - lo) * math.log(min(c, k) + 1) / math.log(k + 1))
        got = suspicion_timeout(lo, hi, k, c)
        assert got == pytest.approx(expected)
        values.append(got)
    assert values[0] == pytest.approx(hi)
    assert values[k] == pytest.approx(lo)
    assert all(a > b for a, b in itertools.pairwise(values[: k + 1]))  # shrinking
    assert all(v == pytest.approx(lo) for v in values[k:])


def test_timeout_with_k_zero_is_min() -> None:
    for c in range(4):
        assert suspicion_timeout(4.0, 24.0, 0, c) == 4.0


def make(k: int = 2, started_at: float = 100.0) -> Suspicion:
    return Suspicion(started_at=started_at, incarnation=3, accuser="a", lo=4.0, hi=24.0, k=k)


def test_suspicion_confirm_counts_distinct_other_accusers() -> None:
    s = make()
    assert s.incarnation == 3
    assert s.confirmations == 0
    assert s.deadline == pytest.approx(124.0)
    assert s.confirm("a") is False  # the first accuser is not a confirmation
    assert s.confirmations == 0
    assert s.deadline == pytest.approx(124.0)
    assert s.confirm("b") is True
    assert s.confirmations == 1
    assert s.deadline == pytest.approx(100.0 + 24.0 - 20.0 * math.log(2) / math.log(3))
    assert s.confirm("b") is False  # duplicate
    assert s.confirmations == 1
    assert s.confirm("c") is True
    assert s.confirmations == 2
    assert s.deadline == pytest.approx(104.0)
    assert s.confirm("d") is False  # capped at K
    assert s.confirmations == 2
    assert s.deadline == pytest.approx(104.0)


def test_suspicion_with_k_zero() -> None:
    s = make(k=0, started_at=7.5)
    assert s.deadline == pytest.approx(11.5)
    assert s.confirm("b") is False
    assert s.confirmations == 0


def test_deadline_is_measured_from_start() -> None:
    assert make(started_at=0.0).deadline == pytest.approx(24.0)
    assert make(started_at=1000.25).deadline == pytest.approx(1024.25)
    s = make(started_at=50.0)
    s.confirm("x")
    s.confirm("y")
    assert s.deadline == pytest.approx(54.0)
