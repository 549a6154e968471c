"""How fast a join storm converges, with and without the newcomers' direct
announcement (in-memory network, MockClock).

    python tools/bench_join.py --nodes 10 --seeds 1-8 --announce 16,0

For each N, each `join_announce_nodes` value and each seed: start N nodes (lan profile)
10 ms apart, all joining through n0, and time from the last start until every node
lists all N alive, in simulated seconds, checked every 5 ms. Also counts the
datagrams sent per node until then, and the membership mismatches (push-pulls
started because two quiet members' views differed, docs/protocol.md §6.3) by then
and over the 30 s after. Prints a table of medians (with min and max),
then one JSON line (a list with one object per N and announce value).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import trio
import trio.testing

from swimnode.testing import open_sim_cluster

STAGGER = 0.01
STEP = 0.005


QUIET = 30.0


async def storm(n: int, seed: int, announce: int) -> tuple[float, float, int]:
    """(seconds from the last start to convergence, packets sent per node by then,
    membership mismatches until `QUIET` seconds later)."""
    last_start = trio.current_time() + (n - 1) * STAGGER
    async with open_sim_cluster(
        n, seed=seed, stagger=STAGGER, record=False, join_announce_nodes=announce
    ) as cluster:
        if await cluster.wait_for(cluster.converged, timeout=60 + n, step=STEP) is None:
            raise SystemExit(f"{n} nodes (seed {seed}, announce {announce}) did not converge")
        took = trio.current_time() - last_start
        packets = sum(node.stats().get("packets_sent", 0) for node in cluster.nodes.values())
        await trio.sleep(QUIET)
        mismatches = sum(
            node.stats().get("membership_mismatches", 0) for node in cluster.nodes.values()
        )
    return took, packets / n, mismatches


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=_ints, default=[10], help="cluster sizes, e.g. 10,100")
    p.add_argument("--seeds", type=_ints, default=list(range(1, 9)), help="e.g. 1-8")
    p.add_argument(
        "--announce", type=_ints, default=[16, 0], help="join_announce_nodes values to compare"
    )
    args = p.parse_args()

    results: list[dict[str, object]] = []

    async def run() -> None:
        for n in args.nodes:
            for announce in args.announce:
                runs = [await storm(n, seed, announce) for seed in args.seeds]
                took = [t for t, _, _ in runs]
                results.append(
                    {
                        "nodes": n,
                        "announce": announce,
                        "seeds": len(args.seeds),
                        "join_s_median": round(statistics.median(took), 3),
                        "join_s_min": round(min(took), 3),
                        "join_s_max": round(max(took), 3),
                        "packets_per_node": round(statistics.median(p for _, p, _ in runs), 1),
                        "mismatches": sum(m for _, _, m in runs),
                    }
                )

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    print(
        f"{'nodes':>6} {'announce':>8} {'median s':>9} {'min s':>7} {'max s':>7} "
        f"{'pkts/node':>9} {'mismatches':>10}"
    )
    for r in results:
        print(
            f"{r['nodes']:>6} {r['announce']:>8} {r['join_s_median']:>9} "
            f"{r['join_s_min']:>7} {r['join_s_max']:>7} {r['packets_per_node']:>9} "
            f"{r['mismatches']:>10}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
