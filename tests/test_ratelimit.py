import pytest

from swimnode.protocol.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("a", 0.5)  # one token refilled in half a second
    assert not limiter.allow("a", 0.5)
    assert limiter.allow("b", 0.5)  # sources are independent


def test_refill_is_capped_at_the_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=2)
    limiter.allow("a", 0.0)
    assert [limiter.allow("a", 100.0) for _ in range(3)] == [True, True, False]


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_sources=100)
    for i in range(10_000):
        limiter.allow(i, 0.0)
    assert len(limiter) == 100


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)


def test_core_rate_limits_expensive_requests_per_host() -> None:
    import random

    from swimnode import Config
    from swimnode.protocol import codec
    from swimnode.protocol.core import SwimCore
    from swimnode.protocol.messages import PingReq

    core = SwimCore(
        Config.lan("a", bind=("a", 1), request_rate=1.0, request_burst=5),
        now=0.0,
        rng=random.Random(1),
    )
    core.take_output()
    for seq in range(20):
        req = codec.encode_packet([codec.encode_message(PingReq(seq, "t", ("t", 1), "x"))])
        core.handle_packet(0.0, ("evil", 1000 + seq), req)
    out = core.take_output()
    assert out.streams == []
    assert len(out.datagrams) == 5  # only the burst was relayed
    assert core.stats["dropped_rate_limited"] == 15
