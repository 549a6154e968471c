"""The transmit-limited broadcast queue."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimnode.protocol.broadcasts import BroadcastQueue, retransmit_limit

BIG = 1 << 20


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, 4),  # ceil(log10(2)) = ceil(0.30) = 1
        (9, 4),  # ceil(log10(10)) = 1
        (10, 8),  # ceil(log10(11)) = ceil(1.04) = 2
        (99, 8),  # ceil(log10(100)) = 2
        (100, 12),  # ceil(log10(101)) = ceil(2.004) = 3
        (1000, 16),  # ceil(log10(1001)) = 4
    ],
)
def test_retransmit_limit(n: int, expected: int) -> None:
    assert retransmit_limit(4, n) == expected


def test_retransmit_limit_scales_with_mult_and_is_at_least_mult() -> None:
    assert retransmit_limit(3, 10) == 6
    assert retransmit_limit(1, 1) == 1
    assert retransmit_limit(2, 0) == 2  # log10(1) = 0 is raised to 1


@pytest.mark.parametrize(("n", "limit"), [(1, 4), (10, 8), (100, 12)])
def test_each_item_sent_exactly_limit_times(n: int, limit: int) -> None:
    q = BroadcastQueue(4)
    q.queue("a", b"news-a")
    q.queue("b", b"news-b")
    sent: Counter[bytes] = Counter()
    rounds = 0
    while len(q):
        for data in q.take(BIG, n):
            sent[data] += 1
        rounds += 1
        assert rounds <= limit
    assert sent == {b"news-a": limit, b"news-b": limit}
    assert not q.pending("a") and not q.pending("b")
    assert q.take(BIG, n) == []


def test_pending_tracks_the_queue() -> None:
    q = BroadcastQueue(1)
    assert not q.pending("a")
    q.queue("a", b"x")
    assert q.pending("a") and not q.pending("b")
    assert len(q) == 1
    assert q.take(BIG, 1) == [b"x"]  # limit 1: gone after one send
    assert not q.pending("a")
    assert len(q) == 0
    q.queue("b", b"y")
    q.discard("b")
    assert not q.pending("b")
    q.discard("never-queued")  # no error


def test_least_sent_first() -> None:
    q = BroadcastQueue(4)
    q.queue("old", b"O" * 20)
    assert q.take(BIG, 9) == [b"O" * 20]
    assert q.take(BIG, 9) == [b"O" * 20]
    q.queue("new", b"N" * 20)
    # Room for just one item: the never-sent one goes first.
    assert q.take(25, 9) == [b"N" * 20]
    # Now both were sent... new once, old twice: new again.
    assert q.take(25, 9) == [b"N" * 20]
    # Both at two sends: queuing order breaks the tie (old was queued first).
    assert q.take(25, 9) == [b"O" * 20]
    # With room for both, the less-sent one comes first in the output.
    assert q.take(BIG, 9) == [b"N" * 20, b"O" * 20]


def test_equal_counts_keep_queuing_order() -> None:
    q = BroadcastQueue(4)
    for key in "cab":
        q.queue(key, key.encode() * 20)
    assert q.take(BIG, 9) == [b"c" * 20, b"a" * 20, b"b" * 20]


def test_newer_news_replaces_older_and_resets_count() -> None:
    q = BroadcastQueue(4)  # limit 4 with n=9
    q.queue("a", b"old-news")
    for _ in range(3):
        assert q.take(BIG, 9) == [b"old-news"]
    q.queue("a", b"new-news")
    assert len(q) == 1
    sent = []
    while len(q):
        sent += q.take(BIG, 9)
    # The old news is never sent again; the new one gets the full four sends.
    assert sent == [b"new-news"] * 4


def test_replacement_gets_priority_as_fresh_news() -> None:
    q = BroadcastQueue(4)
    q.queue("a", b"A" * 20)
    q.queue("b", b"B" * 20)
    q.take(BIG, 9)
    q.take(BIG, 9)
    q.queue("b", b"b" * 20)  # count reset to zero
    assert q.take(25, 9) == [b"b" * 20]


def test_big_item_skipped_small_one_fits() -> None:
    q = BroadcastQueue(4)
    q.queue("big", b"x" * 1000)
    q.queue("small", b"y" * 30)
    assert q.take(100, 9) == [b"y" * 30]
    assert q.pending("big")


def test_zero_or_negative_budget_takes_nothing() -> None:
    q = BroadcastQueue(4)
    q.queue("a", b"x")
    assert q.take(0, 9) == []
    assert q.take(-5, 9) == []
    assert q.take(BIG, 9) == [b"x"]  # nothing was counted by the empty takes
    assert sum(len(q.take(BIG, 9)) for _ in range(10)) == 3


@settings(max_examples=80, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=0, max_size=30),
    budget=st.integers(-10, 2000),
    overhead=st.integers(0, 5),
)
def test_budget_respected(sizes: list[int], budget: int, overhead: int) -> None:
    q = BroadcastQueue(3)
    for i, size in enumerate(sizes):
        q.queue(f"k{i}", bytes([i]) * size)
    picked = q.take(budget, 5, overhead)
    assert sum(len(p) + overhead for p in picked) <= max(budget, 0)
    assert len(set(picked)) == len(picked)  # no item twice in one take
    if sizes and budget >= max(sizes) + overhead:
        assert picked  # something always fits when the largest item does


def test_size_and_freshness_follow_the_queue() -> None:
    q = BroadcastQueue(retransmit_mult=1)  # limit 1 for 1..9 members
    assert q.size == 0 and not q.fresh
    q.queue("a", b"xxxx")
    q.queue("b", b"yy", transmits=1)  # not fresh: counted as sent once already
    assert q.size == 6 and q.fresh
    q.queue("a", b"zzz")  # replaces the older news about a
    assert q.size == 5
    q.discard("b")
    assert q.size == 3
    assert q.take(BIG, 5) == [b"zzz"]  # its one transmission: gone
    assert q.size == 0 and not q.fresh
