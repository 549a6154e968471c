"""Consistent-hash ring benchmark: build time, lookup rate and balance.

Builds a ring of N members with V derived vnodes each (best of R repeats), then times
`owner` and `preference_list` over K random keys.

    python tools/bench_ring.py --members 1000 --vnodes 100 --keys 200000 --repeats 3

Prints a table, then one JSON line: members, vnodes, tokens, build_s,
owner_per_s, token_owner_per_s, preflist3_per_s, and ownership max/min relative to the
mean (how far the most and least loaded members are from a fair share).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable

from swimnode.ring import HashRing, token_of


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls: the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--vnodes", type=int, default=100)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    names = [f"node-{i}" for i in range(args.members)]
    members: list[tuple[str, list[int] | None]] = [(n, None) for n in names]
    build_s = best_of(args.repeats, lambda: HashRing.build(members, vnodes=args.vnodes))
    ring = HashRing.build(members, vnodes=args.vnodes)

    rng = random.Random(args.seed)
    keys = [f"key-{rng.getrandbits(64):x}" for _ in range(args.keys)]
    tokens = [token_of(k) for k in keys]

    def owners() -> None:
        for k in keys:
            ring.owner(k)

    def token_owners() -> None:
        for t in tokens:
            ring.token_owner(t)

    def preflists() -> None:
        for k in keys:
            ring.preference_list(k, 3)

    owner_s = best_of(args.repeats, owners)
    token_owner_s = best_of(args.repeats, token_owners)
    preflist_s = best_of(args.repeats, preflists)

    shares = ring.ownership().values()
    mean = 1 / len(ring.members)
    result = {
        "members": args.members,
        "vnodes": args.vnodes,
        "tokens": len(ring),
        "build_s": round(build_s, 4),
        "owner_per_s": round(args.keys / owner_s),
        "token_owner_per_s": round(args.keys / token_owner_s),
        "preflist3_per_s": round(args.keys / preflist_s),
        "ownership_max_rel": round(max(shares) / mean, 3),
        "ownership_min_rel": round(min(shares) / mean, 3),
    }

    print(f"ring: {args.members} members x {args.vnodes} vnodes = {len(ring)} tokens")
    rows = [
        ("build", f"{build_s * 1000:.1f} ms"),
        ("owner(key) (hash + bisect)", f"{result['owner_per_s']:,} /s"),
        ("token_owner(token) (bisect)", f"{result['token_owner_per_s']:,} /s"),
        ("preference_list(key, 3)", f"{result['preflist3_per_s']:,} /s"),
        ("max share / fair share", f"{result['ownership_max_rel']}"),
        ("min share / fair share", f"{result['ownership_min_rel']}"),
    ]
    for label, value in rows:
        print(f"{label:<32}{value:>16}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
