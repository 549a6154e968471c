"""Application state and Scuttlebutt reconciliation, on the pure store."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swimnode.protocol.appstate import Digest, NodeDelta, StateEntry, StateLimits, StateStore


def exchange(
    a: StateStore,
    b: StateStore,
    budget: int = 1 << 20,
    now: float = 0.0,
    lose: frozenset[int] = frozenset(),
) -> None:
    """One anti-entropy round a -> b as the core runs it: syn, digests, ack, ack.
    `lose` names the steps (1..3) whose message is lost."""
    if a.summary == b.summary or 1 in lose:
        return
    they_lack, we_lack = a.compare(b.digests())
    deltas = a.deltas(they_lack, budget)
    if 2 in lose:
        return
    for d in deltas:
        b.apply(d, now)
    answer = b.deltas(we_lack, budget)
    if 3 in lose:
        return
    for d in answer:
        a.apply(d, now)


def test_set_and_read_back() -> None:
    s = StateStore("a", 1)
    s.set("tokens", [1, 2, 3], 0.0)
    s.set("role", "db", 0.0)
    assert dict(s.values("a")) == {"tokens": [1, 2, 3], "role": "db"}
    assert s.digest("a") == Digest("a", 1, 2)


def test_tuples_read_back_as_lists() -> None:
    s = StateStore("a", 1)
    s.set("t", (1, (2, 3)), 0.0)
    assert s.values("a")["t"] == [1, [2, 3]]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("", 1, "non-empty"),
        ("k" * 129, 1, "longer than 128"),
        ("k", object(), "not msgpack"),
        ("k", "x" * 5000, "limit is 4096"),
    ],
)
def test_bad_writes_raise_and_change_nothing(key: str, value: object, message: str) -> None:
    s = StateStore("a", 1)
    s.set("keep", 1, 0.0)
    with pytest.raises(ValueError, match=message):
        s.set(key, value, 0.0)
    assert dict(s.values("a")) == {"keep": 1}
    assert s.digest("a") == Digest("a", 1, 1)


def test_node_size_limit() -> None:
    s = StateStore("a", 1, StateLimits(max_value_bytes=1000, max_node_bytes=2500))
    s.set("a", "x" * 990, 0.0)
    s.set("b", "x" * 990, 0.0)
    with pytest.raises(ValueError, match="limit per node"):
        s.set("c", "x" * 990, 0.0)
    s.set("a", "small", 0.0)  # replacing frees room
    s.set("c", "x" * 990, 0.0)


def test_delta_applies_only_newer_versions() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    a.set("k", 1, 0.0)
    a.set("k", 2, 0.0)
    exchange(a, b)
    assert b.values("a")["k"] == 2
    old = NodeDelta("a", 1, (StateEntry("k", 1, 1),))
    assert b.apply(old, 0.0) == []
    assert b.values("a")["k"] == 2


def test_new_generation_replaces_old_state() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    a.set("old", 1, 0.0)
    exchange(a, b)
    restarted = StateStore("a", 2)
    restarted.set("new", 1, 0.0)
    exchange(restarted, b)
    assert dict(b.values("a")) == {"new": 1}
    # The previous life's deltas are now stale.
    assert b.apply(NodeDelta("a", 1, (StateEntry("old", 5, 9),)), 0.0) is None


def test_nobody_overwrites_our_own_state() -> None:
    a = StateStore("a", 1)
    a.set("k", "mine", 0.0)
    assert a.apply(NodeDelta("a", 1, (StateEntry("k", 99, "forged"),)), 0.0) is None
    assert a.values("a")["k"] == "mine"


def test_budget_sends_oldest_first_and_resumes() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    for i in range(50):
        a.set(f"k{i}", "v" * 50, 0.0)
    rounds = 0
    while a.summary != b.summary:
        exchange(a, b, budget=400)
        rounds += 1
        # Whatever arrived is a prefix in version order: keys k0..k(n-1).
        have = sorted(int(k[1:]) for k in b.values("a"))
        assert have == list(range(len(have)))
        assert rounds < 50
    assert rounds > 5
    assert dict(b.values("a")) == dict(a.values("a"))


def test_equal_summaries_mean_equal_digests() -> None:
    a, b = StateStore("a", 1), StateStore("b", 7)
    a.set("x", 1, 0.0)
    b.set("y", 2, 0.0)
    assert a.summary != b.summary
    exchange(a, b)
    assert a.summary == b.summary
    assert sorted(a.digests(), key=str) == sorted(b.digests(), key=str)


def test_delete_propagates_and_tombstone_is_collected_without_resurrection() -> None:
    a, b, c = StateStore("a", 1), StateStore("b", 1), StateStore("c", 1)
    a.set("k", "v", 0.0)
    exchange(a, b)
    exchange(b, c)
    assert c.values("a")["k"] == "v"
    a.delete("k", 10.0)
    exchange(a, b, now=10.0)
    exchange(b, c, now=10.0)
    assert "k" not in c.values("a") and "k" not in b.values("a")
    ttl = StateLimits().tombstone_ttl
    for store in (a, b, c):
        assert store.collect_tombstones(10.0 + ttl + 1) == 1
    # Everyone agrees the key is gone, and rounds do not bring it back.
    for x, y in ((a, b), (b, c), (c, a)):
        exchange(x, y, now=10.0 + ttl + 2)
    assert all("k" not in s.values("a") for s in (a, b, c))


def test_forgotten_members_stay_forgotten() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    z = StateStore("z", 1)
    z.set("k", 1, 0.0)
    exchange(z, a)
    # b does not know z as a member: it neither asks for nor offers z's state.
    _, we_lack = b.compare(a.digests(), accept={"a": None, "b": None})
    assert all(d.name != "z" for d in we_lack)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_any_interleaving_converges_to_the_latest_values(data: st.DataObject) -> None:
    names = ["a", "b", "c", "d"]
    stores = {n: StateStore(n, 1) for n in names}
    truth: dict[str, dict[str, int]] = {n: {} for n in names}
    ops = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(["set", "delete", "round"]),
                st.sampled_from(names),
                st.sampled_from(names),
                st.sampled_from(["k1", "k2", "k3"]),
                st.integers(0, 99),
                st.frozensets(st.integers(1, 3), max_size=2),
                st.sampled_from([80, 200, 1 << 20]),
            ),
            max_size=60,
        )
    )
    for i, (op, x, y, key, value, lose, budget) in enumerate(ops):
        now = float(i)
        if op == "set":
            stores[x].set(key, value, now)
            truth[x][key] = value
        elif op == "delete":
            stores[x].delete(key, now)
            truth[x].pop(key, None)
        elif x != y:
            exchange(stores[x], stores[y], budget=budget, now=now, lose=lose)
    # Loss stops: rounds in a fixed ring order until nothing changes.
    rng = random.Random(0)
    for _ in range(200):
        x, y = rng.sample(names, 2)
        exchange(stores[x], stores[y], budget=200, now=1000.0)
        if len({s.summary for s in stores.values()}) == 1:
            break
    for holder in names:
        for owner in names:
            assert dict(stores[holder].values(owner)) == truth[owner]


def test_restart_with_nothing_written_still_voids_old_state() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    a.set("old", 1, 0.0)
    exchange(a, b)
    restarted = StateStore("a", 2)  # writes nothing in its new life
    exchange(restarted, b)  # the restarted node starts the round
    assert dict(b.values("a")) == {}
    assert restarted.summary == b.summary


def test_restart_with_nothing_written_voids_old_state_when_asked_too() -> None:
    a, b = StateStore("a", 1), StateStore("b", 1)
    a.set("old", 1, 0.0)
    exchange(a, b)
    restarted = StateStore("a", 2)
    exchange(b, restarted)  # the old holder starts the round
    assert dict(b.values("a")) == {}
    assert restarted.summary == b.summary


def test_members_that_never_wrote_cost_no_exchange() -> None:
    # Equal summaries end a round after one tiny message; fresh members all agree.
    stores = [StateStore(f"n{i}", 1000 + i) for i in range(50)]
    assert {s.summary for s in stores} == {0}
    stores[7].set("k", 1, 0.0)
    assert stores[7].summary != stores[8].summary
