"""SWIM §4.2 precedence rules for membership news (`member.supersedes`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimnode.protocol.member import Member, MemberState, supersedes

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def rec(state: MemberState, inc: int) -> Member:
    return Member("m", ("10.0.0.1", 7946), inc, state, 0.0)


def wins(news_state: MemberState, news_inc: int, cur_state: MemberState, cur_inc: int) -> bool:
    return supersedes(news_state, news_inc, rec(cur_state, cur_inc))


# ----- explicit rules, spelled out one by one ------------------------------------------


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_alive_beats_alive_iff_higher(i: int, j: int) -> None:
    assert wins(ALIVE, i, ALIVE, j) is (i > j)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_alive_beats_suspect_iff_higher(i: int, j: int) -> None:
    assert wins(ALIVE, i, SUSPECT, j) is (i > j)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_suspect_beats_alive_iff_same_or_higher(i: int, j: int) -> None:
    assert wins(SUSPECT, i, ALIVE, j) is (i >= j)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_suspect_beats_suspect_iff_higher(i: int, j: int) -> None:
    assert wins(SUSPECT, i, SUSPECT, j) is (i > j)


@pytest.mark.parametrize("cur", [ALIVE, SUSPECT])
@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_dead_beats_alive_and_suspect_iff_same_or_higher(cur: MemberState, i: int, j: int) -> None:
    assert wins(DEAD, i, cur, j) is (i >= j)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_dead_beats_dead_iff_higher(i: int, j: int) -> None:
    assert wins(DEAD, i, DEAD, j) is (i > j)


@pytest.mark.parametrize("news", [ALIVE, SUSPECT])
@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_alive_or_suspect_beats_dead_only_with_higher_incarnation(
    news: MemberState, i: int, j: int
) -> None:
    assert wins(news, i, DEAD, j) is (i > j)


@pytest.mark.parametrize("cur", [ALIVE, SUSPECT, DEAD])
@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_left_beats_everything_else_iff_same_or_higher(cur: MemberState, i: int, j: int) -> None:
    assert wins(LEFT, i, cur, j) is (i >= j)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_left_beats_left_iff_higher(i: int, j: int) -> None:
    assert wins(LEFT, i, LEFT, j) is (i > j)


@pytest.mark.parametrize("news", [ALIVE, SUSPECT, DEAD])
@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(4)])
def test_left_is_final_for_its_incarnation(news: MemberState, i: int, j: int) -> None:
    assert wins(news, i, LEFT, j) is (i > j)


def test_named_examples() -> None:
    # A refutation: the member raised its incarnation.
    assert wins(ALIVE, 6, SUSPECT, 5)
    # A stale alive does not clear a suspicion at the same incarnation.
    assert not wins(ALIVE, 5, SUSPECT, 5)
    # A suspicion about an old incarnation is ignored.
    assert not wins(SUSPECT, 4, ALIVE, 5)
    # Death at a lower incarnation does not kill a restarted member.
    assert not wins(DEAD, 4, ALIVE, 5)
    # A restart (higher incarnation) brings a dead member back.
    assert wins(ALIVE, 3, DEAD, 2)
    # Same news twice is not news.
    for s in MemberState:
        assert not wins(s, 7, s, 7)
    # Huge incarnations compare as integers, not wrapped.
    assert wins(ALIVE, 2**64 - 1, DEAD, 2**64 - 2)
    assert not wins(DEAD, 2**64 - 2, ALIVE, 2**64 - 1)


def test_state_order_and_labels() -> None:
    assert [s.label for s in MemberState] == ["alive", "suspect", "dead", "left"]
    assert rec(ALIVE, 0).is_live and rec(SUSPECT, 0).is_live
    assert not rec(DEAD, 0).is_live and not rec(LEFT, 0).is_live


# ----- properties of merging ----------------------------------------------------------

RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}

news_st = st.tuples(st.sampled_from(list(MemberState)), st.integers(0, 5))
news_lists = st.lists(news_st, min_size=1, max_size=8)


def fold(start: Member, news: list[tuple[MemberState, int]]) -> Member:
    cur = start
    for state, inc in news:
        if supersedes(state, inc, cur):
            cur = Member(cur.name, cur.address, inc, state, 0.0)
    return cur


START = rec(ALIVE, 0)


@settings(max_examples=80, derandomize=True)
@given(st.data(), news_lists)
def test_merge_is_commutative(data: st.DataObject, news: list[tuple[MemberState, int]]) -> None:
    perm = data.draw(st.permutations(news))
    assert fold(START, perm) == fold(START, news)


@settings(max_examples=80, derandomize=True)
@given(news_lists)
def test_merge_result_is_the_greatest_news(news: list[tuple[MemberState, int]]) -> None:
    # Computed independently of `supersedes`: highest incarnation, then most final state.
    candidates = [(ALIVE, 0), *news]
    top_inc = max(i for _, i in candidates)
    top_state = max((s for s, i in candidates if i == top_inc), key=RANK.__getitem__)
    final = fold(START, news)
    assert (final.state, final.incarnation) == (top_state, top_inc)


@settings(max_examples=80, derandomize=True)
@given(news_lists)
def test_merge_is_idempotent(news: list[tuple[MemberState, int]]) -> None:
    once = fold(START, news)
    assert fold(once, news) == once
    doubled = [n for item in news for n in (item, item)]
    assert fold(START, doubled) == once
    for state, inc in news:
        after = fold(START, [(state, inc)])
        assert fold(after, [(state, inc)]) == after


@settings(max_examples=80, derandomize=True)
@given(news_lists)
def test_merge_is_monotone(news: list[tuple[MemberState, int]]) -> None:
    cur = START
    seen = [(ALIVE, 0)]
    for state, inc in news:
        nxt = fold(cur, [(state, inc)])
        # Never backwards: incarnation never falls, and at equal incarnation the state
        # never becomes less final.
        assert nxt.incarnation >= cur.incarnation
        if nxt.incarnation == cur.incarnation:
            assert RANK[nxt.state] >= RANK[cur.state]
        cur = nxt
        seen.append((state, inc))
        # Old news never overrides what is now known.
        for old_state, old_inc in seen:
            assert fold(cur, [(old_state, old_inc)]) == cur
