"""How fast application state spreads by anti-entropy gossip (in-memory network,
MockClock), next to the epidemic expectations.

    python tools/bench_dissemination.py --nodes 10,100,1000 --loss 0 --seed 1

For each N: build the cluster (lan profile), set one key on one node and time until
50%, 99% and 100% of the nodes hold it, in anti-entropy rounds (one round per node per
`state_gossip_interval`); then spread 1000 updates over all nodes and time full
convergence; and measure anti-entropy bytes per node per second while nothing changes.
Prints a table, then one JSON line (a list with one object per N).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import trio
import trio.testing

from swimnode.protocol.events import MemberUpdated
from swimnode.testing import Network, SimCluster, open_sim_cluster

STATE_MESSAGES = ("statesyn", "statedigests", "stateack")


def antientropy_bytes(cluster: SimCluster) -> int:
    return sum(
        node.stats().get(f"sent_bytes_{m}", 0)
        for node in cluster.nodes.values()
        for m in STATE_MESSAGES
    )


async def measure(n: int, loss: float, seed: int, updates: int) -> dict[str, object]:
    net = Network(seed=seed)
    async with open_sim_cluster(n, seed=seed, network=net) as cluster:
        if await cluster.wait_for(cluster.converged, timeout=120 + n * 0.3, step=1.0) is None:
            raise SystemExit(f"{n} nodes did not converge")
        interval = cluster.nodes["n0"].config.state_gossip_interval
        await trio.sleep(30)  # let join traffic settle
        # Steady state: nothing changes.
        before, t0 = antientropy_bytes(cluster), trio.current_time()
        await trio.sleep(20)
        idle = (antientropy_bytes(cluster) - before) / n / (trio.current_time() - t0)

        net.loss = loss
        rng = random.Random(seed)
        origin = rng.choice(cluster.names)
        mark = len(cluster.log)
        start = trio.current_time()
        cluster.nodes[origin].set_state("probe", 1)
        holders = {origin: 0.0}

        seen = mark

        def spread() -> bool:
            nonlocal seen
            for obs in cluster.log[seen:]:
                ev = obs.event
                if (
                    isinstance(ev, MemberUpdated)
                    and ev.member.name == origin
                    and "probe" in ev.changed_keys
                    and obs.observer not in holders
                ):
                    holders[obs.observer] = obs.time - start
            seen = len(cluster.log)
            return len(holders) >= n

        await cluster.wait_for(spread, timeout=120, step=0.1)
        times = sorted(holders.values())

        def at(fraction: float) -> float | None:
            k = math.ceil(fraction * n)
            return round(times[k - 1], 3) if len(times) >= k else None

        # Many updates spread over every node.
        burst_start = trio.current_time()
        written = write_burst(cluster, updates)
        burst = await cluster.wait_for(lambda: holds(cluster, written), timeout=600, step=1.0)
        s100 = at(1.0)
        return {
            "nodes": n,
            "loss": loss,
            "origin": origin,
            "rounds_50": _rounds(at(0.5), interval),
            "rounds_99": _rounds(at(0.99), interval),
            "rounds_100": _rounds(s100, interval),
            "seconds_100": s100,
            "expect_push_rounds": round(math.log2(n) + math.log(n), 2),
            "expect_pushpull_rounds": round(math.log(n, 3) + math.log(math.log(n)), 2),
            "antientropy_bytes_per_node_s": round(idle, 1),
            "burst_updates": updates,
            "burst_seconds_100": None if burst is None else round(burst, 2),
            "burst_start": round(burst_start, 1),
        }


def write_burst(cluster: SimCluster, updates: int) -> dict[str, int]:
    """Write `updates` keys, one after another round the members; returns each
    writer's highest version. A member that wrote nothing has nothing to spread
    (and costs no exchange), so it is left out."""
    names = cluster.names
    for i in range(updates):
        cluster.nodes[names[i % len(names)]].set_state(f"k{i}", i)
    written: dict[str, int] = {}
    for owner in names:
        digest = cluster.nodes[owner].core.state_digest(owner)
        assert digest is not None
        if digest.max_version:
            written[owner] = digest.max_version
    return written


def holds(cluster: SimCluster, written: dict[str, int]) -> bool:
    """Whether every node holds every writer's state up to its highest version."""
    for node in cluster.nodes.values():
        for owner, top in written.items():
            d = node.core.state_digest(owner)
            if d is None or d.max_version < top:
                return False
    return True


def _rounds(seconds: float | None, interval: float) -> float | None:
    return None if seconds is None else round(seconds / interval, 2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", default="10,100,1000", help="comma-separated cluster sizes (default 10,100,1000)"
    )
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--updates",
        type=int,
        default=1000,
        help="updates in the burst, spread over all nodes (default 1000)",
    )
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.nodes.split(",")]
    except ValueError:
        parser.error("--nodes takes comma-separated integers")
    if any(s < 3 for s in sizes) or not 0 <= args.loss < 1:
        parser.error("need sizes >= 3 and 0 <= --loss < 1")
    results = []
    for n in sizes:
        wall = time.perf_counter()
        clock = trio.testing.MockClock(autojump_threshold=0)
        result = trio.run(measure, n, args.loss, args.seed, args.updates, clock=clock)
        result["wall_s"] = round(time.perf_counter() - wall, 1)
        results.append(result)
        print(f"N={n} done in {result['wall_s']} s wall", file=sys.stderr)
    cols = [
        "nodes",
        "rounds_50",
        "rounds_99",
        "rounds_100",
        "expect_push_rounds",
        "expect_pushpull_rounds",
        "burst_seconds_100",
        "antientropy_bytes_per_node_s",
    ]
    heads = [
        "N",
        "r50",
        "r99",
        "r100",
        "push exp",
        "push-pull exp",
        f"{args.updates} upd (s)",
        "idle B/node/s",
    ]
    print(f"loss {args.loss}, one round = one state_gossip_interval per node")
    print("".join(f"{h:>14}" for h in heads))
    for r in results:
        print("".join(f"{r[c]!s:>14}" for c in cols))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
