"""How often idle nodes wake up on their own, counted on the simulated network.

An idle agent's CPU goes mostly to waking up (docs/agent.md, "Idle cost"), so the
number of wakeups per idle second is the figure to keep down. This builds an N-node
cluster under MockClock, lets the join news die down, then counts for each node the
instants at which any of its tasks ran without it having received anything (its own
timers), and the instants at which it ran at all.

    python tools/bench_idle_wakeups.py --nodes 10 --window 120 --seed 1

Prints a table, then one JSON line: own and total wakeups per node per second
(mean, min, max over the nodes).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

import trio
import trio.testing

from swimnode.node import Node
from swimnode.testing import open_sim_cluster


class WakeupLog(trio.abc.Instrument):
    """For each node, the names of its tasks that ran at each instant of mock time."""

    def __init__(self) -> None:
        self.steps: dict[Node, dict[float, set[str]]] = defaultdict(lambda: defaultdict(set))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        owner = frame.f_locals.get("self") if frame is not None else None
        if isinstance(owner, Node):
            self.steps[owner][trio.current_time()].add(task.name)


async def measure(nodes: int, window: float, seed: int) -> dict[str, list[float]]:
    async with open_sim_cluster(nodes, seed=seed, record=False) as cluster:
        if await cluster.wait_for(cluster.converged, timeout=60) is None:
            raise SystemExit(f"cluster of {nodes} did not converge (seed {seed})")
        await trio.sleep(30)  # let the join news run out of retransmissions
        log = WakeupLog()
        trio.lowlevel.add_instrument(log)
        try:
            await trio.sleep(window)
        finally:
            trio.lowlevel.remove_instrument(log)
        own, total = [], []
        for node in cluster.nodes.values():
            instants = log.steps[node].values()
            own.append(sum(not any("_receive_loop" in n for n in names) for names in instants))
            total.append(len(instants))
    return {
        "own": [w / window for w in own],
        "total": [w / window for w in total],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--window", type=float, default=120.0, help="idle seconds counted")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    clock = trio.testing.MockClock(autojump_threshold=0)
    rates = trio.run(measure, args.nodes, args.window, args.seed, clock=clock)
    print(f"{args.nodes} idle nodes, {args.window:g} simulated s, seed {args.seed}")
    print(f"{'wakeups per node per s':<28}{'mean':>8}{'min':>8}{'max':>8}")
    result: dict[str, object] = {"nodes": args.nodes, "window": args.window, "seed": args.seed}
    for kind, label in (("own", "own timers"), ("total", "all (receiving too)")):
        values = rates[kind]
        row = {
            "mean": round(statistics.fmean(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }
        print(f"{label:<28}{row['mean']:>8}{row['min']:>8}{row['max']:>8}")
        result[f"{kind}_per_node_s"] = row
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
